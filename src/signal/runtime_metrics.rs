//! The runtime metrics derivation needs, picked out of the app's OTLP metrics as they arrive, by the
//! OpenTelemetry names and units of the runtime table ([`crate::language`]): cumulative GC pause histograms
//! and pause-time counters with their start times, heap and pool figures, ready-work delays, and each
//! exporting app's SDK language. Values are scaled to base units at ingest (a `jvm.gc.duration` in `ms` is
//! read as milliseconds) and delta exports are accumulated, so derivation reads typed, cumulative readings
//! and depends on neither the app metric store's naming, nor its overflow series, nor its expiry.
//!
//! Bounded: at most [`MAX_SERIES`] series of each kind (pauses, heap, pools, delays) and [`MAX_APPS`]
//! exporting apps; a series not updated for the series TTL is dropped.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, Metric, NumberDataPoint};

use crate::language::{
    DelayMetric, DelayShape, HeapMetric, Instrument, PauseMetric, PoolFigure, PoolFigures,
    PoolMetric, Quantity, Runtime, LIBRARY_POOLS, PROFILES,
};
use crate::pipeline::attributes::{cut_to as cut, scalar_text};
use crate::pipeline::points::{ended, is_delta, number, DataPoint, DeltaWindows, Histogram};

/// Most series kept of each kind (pauses, heap, pools, delays); further series are not picked.
pub const MAX_SERIES: usize = 1024;
/// Most exporting apps whose SDK language is remembered.
pub const MAX_APPS: usize = 64;
/// Longest attribute value kept in a label or series identity (bytes).
const MAX_VALUE: usize = 256;
/// Longest attribute key kept in a series identity (bytes).
const MAX_KEY: usize = 128;
/// Most point attributes that make a series' identity.
const MAX_ATTRIBUTES: usize = 64;

/// Cumulative pause figures of one series, in seconds.
#[derive(Debug, Clone, PartialEq)]
pub enum PauseValue {
    /// A histogram of pause durations.
    Histogram {
        /// Cumulative counts per upper bound (seconds, ascending, the last `+Inf`).
        cumulative: Vec<(f64, u64)>,
        /// Sum of the pauses, seconds.
        sum: f64,
        /// Number of pauses.
        count: u64,
    },
    /// A counter of total pause time, seconds (no count).
    Total(f64),
}

/// One pause series as derivation reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct PauseReading {
    /// The runtime whose row the metric is in.
    pub runtime: Runtime,
    /// The metric's OpenTelemetry name.
    pub metric: &'static str,
    /// The collector (`all` for a runtime-wide metric, `unknown` when the attribute is missing).
    pub collector: String,
    /// The series' identity (metric, service and point attributes).
    pub series: String,
    /// When the series began counting, Unix ns (0 when the SDK sent none).
    pub start_unix_nano: u64,
    /// Its cumulative figures.
    pub value: PauseValue,
}

/// One heap series: a used or limit figure of a heap row, bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct HeapReading {
    /// Position of the row among all heap rows of the table (lower is preferred).
    pub order: usize,
    /// The limit, not the used figure.
    pub limit: bool,
    /// Bytes.
    pub value: f64,
}

/// One pool series.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolReading {
    /// The `kind` label (`db`, `thread`).
    pub kind: &'static str,
    /// The pool's name.
    pub pool: String,
    /// Which figure.
    pub figure: PoolFigure,
    /// Its value.
    pub value: f64,
}

/// What one ready-work delay series holds.
#[derive(Debug, Clone, PartialEq)]
pub enum DelayValue {
    /// A statistic the runtime computed over its last export interval, seconds.
    Statistic(&'static str, f64),
    /// The observations of the last export interval: counts per upper bound (seconds, ascending, the
    /// last `+Inf`), not cumulative.
    Interval(Vec<(f64, u64)>),
}

/// One ready-work delay series.
#[derive(Debug, Clone, PartialEq)]
pub struct DelayReading {
    /// The runtime.
    pub runtime: Runtime,
    /// Its value.
    pub value: DelayValue,
}

/// Every picked series at one moment, sorted by series identity.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RuntimeReadings {
    /// GC pause series.
    pub pauses: Vec<PauseReading>,
    /// Heap series.
    pub heap: Vec<HeapReading>,
    /// Pool series.
    pub pools: Vec<PoolReading>,
    /// Ready-work delay series.
    pub delays: Vec<DelayReading>,
}

/// A metric the runtime table names, keyed by its OpenTelemetry name: the row that names it and what
/// it measures there (a pause, a heap figure, a pool figure, a ready-work delay).
#[derive(Debug, Clone, Copy)]
enum TableMetric {
    Pause(Runtime, &'static PauseMetric),
    Heap {
        order: usize,
        metric: &'static HeapMetric,
        limit: bool,
    },
    Pool(&'static PoolMetric),
    Delay(Runtime, &'static DelayMetric),
}

impl TableMetric {
    fn map(self) -> usize {
        match self {
            TableMetric::Pause(..) => 0,
            TableMetric::Heap { .. } => 1,
            TableMetric::Pool(_) => 2,
            TableMetric::Delay(..) => 3,
        }
    }

    fn quantity(self) -> Quantity {
        match self {
            TableMetric::Pause(..) | TableMetric::Delay(..) => Quantity::Time,
            TableMetric::Heap { .. } => Quantity::Bytes,
            TableMetric::Pool(_) => Quantity::Count,
        }
    }

    fn instrument(self) -> Instrument {
        match self {
            TableMetric::Pause(_, m) => m.instrument,
            TableMetric::Delay(_, d) => match d.shape {
                DelayShape::Histogram => Instrument::Histogram,
                DelayShape::Statistic(_) => Instrument::Number,
            },
            TableMetric::Heap { .. } | TableMetric::Pool(_) => Instrument::Number,
        }
    }
}

/// What a picked series stands for in derivation, from its row and its attributes (which collector,
/// which pool and figure, used or limit).
#[derive(Debug, Clone)]
enum SeriesRole {
    Pause {
        runtime: Runtime,
        metric: &'static str,
        collector: String,
    },
    Heap {
        order: usize,
        limit: bool,
    },
    Pool {
        kind: &'static str,
        pool: String,
        figure: PoolFigure,
    },
    Delay {
        runtime: Runtime,
        shape: DelayShape,
    },
}

/// A picked value scaled to base units (seconds, bytes): a number, or a histogram.
#[derive(Debug, Clone, PartialEq)]
enum ScaledValue {
    Number(f64),
    Histogram(Histogram),
}

impl ScaledValue {
    fn count(&self) -> u64 {
        match self {
            ScaledValue::Number(_) => 0,
            ScaledValue::Histogram(h) => h.count,
        }
    }
}

struct Series {
    role: SeriesRole,
    held: Option<ScaledValue>,
    start: u64,
    last_time: u64,
    deltas: DeltaWindows,
    seen: Instant,
    /// Histogram delays: the observations of the last export interval.
    interval: Option<Vec<(f64, u64)>>,
}

#[derive(Default)]
struct SeriesMap {
    series: HashMap<String, Series>,
    /// Series not picked because the map was full.
    dropped: u64,
}

/// Everything picked so far, under one lock: the series of each kind and the exporting apps' languages.
#[derive(Default)]
struct PickedSeries {
    maps: [SeriesMap; 4],
    /// service → (runtime named by its SDK language, when last seen).
    apps: HashMap<String, (Runtime, Instant)>,
}

/// The consumer of OTLP metrics that picks the runtime table's metrics.
pub struct RuntimeMetrics {
    /// The table's metrics by OpenTelemetry name.
    picks: HashMap<&'static str, TableMetric>,
    ttl: Duration,
    started_unix_nano: u64,
    picked: Mutex<PickedSeries>,
}

fn unix_nano_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// An attribute value as text (strings, booleans and numbers; other shapes say nothing here).
fn text(v: Option<&AnyValue>) -> Option<String> {
    let text = scalar_text(v?.value.as_ref()?)?;
    Some(cut(&text, MAX_VALUE).to_owned())
}

/// A string attribute, borrowed.
fn string_attribute<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attrs
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?
    {
        any_value::Value::StringValue(s) => Some(s),
        _ => None,
    }
}

fn attribute(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| text(kv.value.as_ref()))
}

/// The identity of a series: metric, service and its point attributes in key order.
fn series_key(metric: &str, service: &str, attrs: &[KeyValue]) -> String {
    let mut pairs: Vec<(&str, String)> = attrs
        .iter()
        .take(MAX_ATTRIBUTES)
        .map(|kv| {
            (
                cut(&kv.key, MAX_KEY),
                text(kv.value.as_ref()).unwrap_or_default(),
            )
        })
        .collect();
    pairs.sort();
    let mut key = format!("{metric}\u{0}{service}");
    for (k, v) in pairs {
        key.push('\u{0}');
        key.push_str(k);
        key.push('=');
        key.push_str(&v);
    }
    key
}

/// What happened between two cumulative histogram readings of a series: `after` less `before` per bound
/// when they have the same bounds and nothing went down; None otherwise.
fn difference(before: &[(f64, u64)], after: &[(f64, u64)]) -> Option<Vec<(f64, u64)>> {
    if before.len() != after.len() || before.iter().zip(after).any(|(b, a)| b.0 != a.0) {
        return None;
    }
    before
        .iter()
        .zip(after)
        .map(|(b, a)| a.1.checked_sub(b.1).map(|d| (a.0, d)))
        .collect()
}

impl Series {
    fn new(role: SeriesRole, now: Instant) -> Self {
        Series {
            role,
            held: None,
            start: 0,
            last_time: 0,
            deltas: DeltaWindows::default(),
            seen: now,
            interval: None,
        }
    }

    /// Applies a cumulative or gauge reading unless it is older than what is held; returns the reading
    /// it replaced when it was applied.
    fn set(&mut self, start: u64, time: u64, held: ScaledValue) -> Option<Option<ScaledValue>> {
        if time < self.last_time {
            return None;
        }
        let before = self.held.replace(held);
        let restarted = start != self.start;
        self.start = start;
        self.last_time = time;
        Some(before.filter(|_| !restarted))
    }

    /// Applies a delta once per (start, end) window, in any order; false for a repeated window.
    fn add(&mut self, start: u64, time: u64, held: ScaledValue) -> bool {
        if !self.deltas.admit(start, time) {
            return false;
        }
        if self.held.is_none() {
            self.start = start;
        }
        self.last_time = self.last_time.max(time);
        match (&mut self.held, held) {
            (Some(ScaledValue::Number(v)), ScaledValue::Number(d)) => *v += d,
            (Some(ScaledValue::Histogram(h)), ScaledValue::Histogram(d)) => {
                h.add(d);
            }
            (slot, new) => *slot = Some(new),
        }
        true
    }
}

/// One point of a picked metric, before it is applied.
struct PointIn<'a> {
    attrs: &'a [KeyValue],
    flags: u32,
    start: u64,
    time: u64,
    delta: bool,
    held: Option<ScaledValue>,
}

impl<'a> PointIn<'a> {
    fn new(dp: &'a impl DataPoint, delta: bool, held: Option<ScaledValue>) -> Self {
        PointIn {
            attrs: dp.attributes(),
            flags: dp.flags(),
            start: dp.start(),
            time: dp.time(),
            delta,
            held,
        }
    }
}

impl RuntimeMetrics {
    /// A consumer picking every metric of the runtime table; series not updated for `ttl` expire.
    pub fn new(ttl: Duration) -> Self {
        let mut picks = HashMap::new();
        let mut heap_order = 0;
        for p in &PROFILES {
            for m in p.pauses {
                picks.insert(m.name, TableMetric::Pause(p.runtime, m));
            }
            for h in p.heap {
                picks.insert(
                    h.used,
                    TableMetric::Heap {
                        order: heap_order,
                        metric: h,
                        limit: false,
                    },
                );
                if let Some(l) = h.limit {
                    picks.insert(
                        l,
                        TableMetric::Heap {
                            order: heap_order,
                            metric: h,
                            limit: true,
                        },
                    );
                }
                heap_order += 1;
            }
            for m in p.pools {
                picks.insert(m.name, TableMetric::Pool(m));
            }
            for d in p.delay {
                picks.insert(d.name, TableMetric::Delay(p.runtime, d));
            }
        }
        for m in LIBRARY_POOLS {
            picks.insert(m.name, TableMetric::Pool(m));
        }
        RuntimeMetrics {
            picks,
            ttl,
            started_unix_nano: unix_nano_now(),
            picked: Mutex::new(PickedSeries::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PickedSeries> {
        self.picked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Picks the runtime table's metrics and the SDK language out of one export request. Metrics the
    /// table does not name cost one map lookup each; the lock is taken only when something is picked.
    pub fn ingest(&self, req: &ExportMetricsServiceRequest) {
        let now = Instant::now();
        let mut picked: Option<MutexGuard<'_, PickedSeries>> = None;
        for rm in &req.resource_metrics {
            let attrs = rm
                .resource
                .as_ref()
                .map_or(&[][..], |r| r.attributes.as_slice());
            // Borrowed, not copied: most requests hold nothing the table names.
            let service = string_attribute(attrs, "service.name")
                .filter(|s| !s.is_empty())
                .map_or("unknown_service", |s| cut(s, MAX_VALUE));
            if let Some(runtime) = string_attribute(attrs, "telemetry.sdk.language")
                .and_then(Runtime::from_sdk_language)
            {
                let st = picked.get_or_insert_with(|| self.lock());
                let ttl = self.ttl;
                match st.apps.get_mut(service) {
                    Some(app) => *app = (runtime, now),
                    None => {
                        if st.apps.len() >= MAX_APPS {
                            st.apps
                                .retain(|_, (_, seen)| now.duration_since(*seen) < ttl);
                        }
                        if st.apps.len() < MAX_APPS {
                            st.apps.insert(service.to_owned(), (runtime, now));
                        }
                    }
                }
            }
            for sm in &rm.scope_metrics {
                for m in &sm.metrics {
                    if let Some(pick) = self.picks.get(m.name.as_str()) {
                        let st = picked.get_or_insert_with(|| self.lock());
                        self.pick(st, *pick, m, service, now);
                    }
                }
            }
        }
    }

    fn pick(
        &self,
        st: &mut PickedSeries,
        pick: TableMetric,
        m: &Metric,
        service: &str,
        now: Instant,
    ) {
        let (Some(data), Some(scale)) = (&m.data, pick.quantity().scale(&m.unit)) else {
            return;
        };
        let mut points: Vec<PointIn<'_>> = Vec::new();
        let histogram =
            |h: Result<Histogram, _>| h.ok().map(|h| ScaledValue::Histogram(h.scaled(scale)));
        match (pick.instrument(), data) {
            (Instrument::Histogram, Data::Histogram(h)) => {
                let delta = is_delta(h.aggregation_temporality);
                for dp in &h.data_points {
                    points.push(PointIn::new(dp, delta, histogram(Histogram::explicit(dp))));
                }
            }
            (Instrument::Histogram, Data::ExponentialHistogram(h)) => {
                let delta = is_delta(h.aggregation_temporality);
                for dp in &h.data_points {
                    points.push(PointIn::new(
                        dp,
                        delta,
                        histogram(Histogram::exponential(dp)),
                    ));
                }
            }
            (Instrument::Counter, Data::Sum(s)) if s.is_monotonic => {
                for dp in &s.data_points {
                    points.push(number_point(dp, is_delta(s.aggregation_temporality), scale));
                }
            }
            (Instrument::Number, Data::Sum(s)) => {
                for dp in &s.data_points {
                    points.push(number_point(dp, is_delta(s.aggregation_temporality), scale));
                }
            }
            (Instrument::Number, Data::Gauge(g)) => {
                for dp in &g.data_points {
                    points.push(number_point(dp, false, scale));
                }
            }
            // The name is the table's but the instrument is not: not what the row describes.
            _ => return,
        }
        for p in points {
            self.apply(st, pick, &m.name, service, p, now);
        }
    }

    fn apply(
        &self,
        st: &mut PickedSeries,
        pick: TableMetric,
        name: &str,
        service: &str,
        p: PointIn<'_>,
        now: Instant,
    ) {
        let get = |key: &str| attribute(p.attrs, key);
        let only =
            |filter: Option<(&str, &str)>| filter.is_none_or(|(k, v)| get(k).as_deref() == Some(v));
        let role = match pick {
            TableMetric::Pause(runtime, m) => {
                let collector = match m.collector_key {
                    Some(k) => get(k).unwrap_or_else(|| "unknown".to_owned()),
                    None => "all".to_owned(),
                };
                if (m.concurrent)(&collector) {
                    return;
                }
                SeriesRole::Pause {
                    runtime,
                    metric: m.name,
                    collector,
                }
            }
            TableMetric::Heap {
                order,
                metric,
                limit,
            } => {
                if !only(metric.only) {
                    return;
                }
                SeriesRole::Heap { order, limit }
            }
            TableMetric::Pool(m) => {
                let first = |keys: &[&str]| keys.iter().find_map(|k| get(k));
                let figure = match m.figure {
                    PoolFigures::One(f) => f,
                    PoolFigures::ByState(keys) => match first(keys).as_deref() {
                        Some("used") => PoolFigure::Used,
                        Some("idle") => PoolFigure::Idle,
                        _ => return,
                    },
                };
                SeriesRole::Pool {
                    kind: m.kind,
                    pool: first(m.pool_keys).unwrap_or_else(|| m.default_pool.to_owned()),
                    figure,
                }
            }
            TableMetric::Delay(runtime, d) => SeriesRole::Delay {
                runtime,
                shape: d.shape,
            },
        };
        let key = series_key(name, service, p.attrs);
        let map = &mut st.maps[pick.map()];
        if ended(p.flags) {
            map.series.remove(&key);
            return;
        }
        let Some(held) = p.held else { return };
        if !map.series.contains_key(&key) && map.series.len() >= MAX_SERIES {
            let ttl = self.ttl;
            map.series.retain(|_, s| now.duration_since(s.seen) < ttl);
            if map.series.len() >= MAX_SERIES {
                if map.dropped == 0 {
                    tracing::warn!(
                        metric = name,
                        limit = MAX_SERIES,
                        "too many runtime metric series; further ones are not read for derived signals"
                    );
                }
                map.dropped += 1;
                return;
            }
        }
        let series = map
            .series
            .entry(key)
            .or_insert_with(|| Series::new(role, now));
        series.seen = now;
        let histogram_delay = matches!(
            series.role,
            SeriesRole::Delay {
                shape: DelayShape::Histogram,
                ..
            }
        );
        let new_buckets = |h: &ScaledValue| match h {
            ScaledValue::Histogram(h) => Some(h.clone()),
            ScaledValue::Number(_) => None,
        };
        if p.delta {
            let interval = histogram_delay.then(|| new_buckets(&held)).flatten();
            if series.add(p.start, p.time, held) && histogram_delay {
                series.interval = interval.map(|h| h.buckets);
            }
            return;
        }
        let first = series.held.is_none();
        let (start, time) = (p.start, p.time);
        let fresh = time > series.last_time || first;
        let after = histogram_delay.then(|| new_buckets(&held)).flatten();
        let Some(before) = series.set(start, time, held) else {
            return;
        };
        if !(histogram_delay && fresh) {
            return;
        }
        let Some(after) = after else { return };
        series.interval = match before {
            // The same series read again: what it gained since.
            Some(ScaledValue::Histogram(before))
                if before.count <= series.held.as_ref().map_or(0, ScaledValue::count) =>
            {
                difference(&before.cumulative(), &after.cumulative()).map(|d| {
                    let mut own = Vec::with_capacity(d.len());
                    let mut prev = 0u64;
                    for (b, c) in d {
                        own.push((b, c.saturating_sub(prev)));
                        prev = c;
                    }
                    own
                })
            }
            // Restarted (its start moved or its count went down): everything since its start is new.
            Some(_) => Some(after.buckets),
            None if !first => Some(after.buckets),
            // First seen: all new only when it began after vitals did (else it may hold hours).
            None if start >= self.started_unix_nano => Some(after.buckets),
            None => None,
        };
    }

    /// Every picked series, after dropping those not updated for the TTL.
    pub fn readings(&self, now: Instant) -> RuntimeReadings {
        let mut st = self.lock();
        let ttl = self.ttl;
        for map in st.maps.iter_mut() {
            map.series.retain(|_, s| now.duration_since(s.seen) < ttl);
        }
        st.apps
            .retain(|_, (_, seen)| now.duration_since(*seen) < ttl);
        let mut out = RuntimeReadings::default();
        for map in &st.maps {
            let mut keys: Vec<&String> = map.series.keys().collect();
            keys.sort();
            for key in keys {
                let s = &map.series[key];
                let Some(held) = &s.held else { continue };
                let number = match held {
                    ScaledValue::Number(v) => Some(*v),
                    ScaledValue::Histogram { .. } => None,
                };
                match (&s.role, held) {
                    (
                        SeriesRole::Pause {
                            runtime,
                            metric,
                            collector,
                        },
                        _,
                    ) => out.pauses.push(PauseReading {
                        runtime: *runtime,
                        metric,
                        collector: collector.clone(),
                        series: key.clone(),
                        start_unix_nano: s.start,
                        value: match held {
                            ScaledValue::Number(v) => PauseValue::Total(*v),
                            ScaledValue::Histogram(h) => PauseValue::Histogram {
                                cumulative: h.cumulative(),
                                sum: h.sum,
                                count: h.count,
                            },
                        },
                    }),
                    (SeriesRole::Heap { order, limit }, _) => {
                        if let Some(value) = number {
                            out.heap.push(HeapReading {
                                order: *order,
                                limit: *limit,
                                value,
                            });
                        }
                    }
                    (SeriesRole::Pool { kind, pool, figure }, _) => {
                        if let Some(value) = number {
                            out.pools.push(PoolReading {
                                kind,
                                pool: pool.clone(),
                                figure: *figure,
                                value,
                            });
                        }
                    }
                    (SeriesRole::Delay { runtime, shape }, _) => {
                        let value = match (shape, number, &s.interval) {
                            (DelayShape::Statistic(stat), Some(v), _) => {
                                DelayValue::Statistic(stat, v)
                            }
                            (DelayShape::Histogram, _, Some(i)) => DelayValue::Interval(i.clone()),
                            _ => continue,
                        };
                        out.delays.push(DelayReading {
                            runtime: *runtime,
                            value,
                        });
                    }
                }
            }
        }
        out
    }

    /// The runtime the most recently seen exporting app's `telemetry.sdk.language` names.
    pub fn sdk_runtime(&self) -> Option<Runtime> {
        let st = self.lock();
        st.apps
            .values()
            .max_by_key(|(_, seen)| *seen)
            .map(|(r, _)| *r)
    }

    /// Series not picked because their kind's map was full.
    pub fn dropped(&self) -> u64 {
        self.lock().maps.iter().map(|m| m.dropped).sum()
    }
}

fn number_point(dp: &NumberDataPoint, delta: bool, scale: f64) -> PointIn<'_> {
    let held = number(dp)
        .filter(|v| v.is_finite())
        .map(|v| ScaledValue::Number(v * scale));
    PointIn::new(dp, delta, held)
}

/// The runtime metrics are picked from every metrics export; nothing is refused here (the app metric store
/// answers for the items).
impl crate::pipeline::Consumer<ExportMetricsServiceRequest> for RuntimeMetrics {
    fn consume(&self, request: &ExportMetricsServiceRequest) -> crate::pipeline::PartialSuccess {
        self.ingest(request);
        crate::pipeline::PartialSuccess::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::metrics::v1::{
        number_data_point, AggregationTemporality, Gauge, Histogram, HistogramDataPoint,
        ResourceMetrics, ScopeMetrics, Sum,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    fn request(resource: Vec<KeyValue>, metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: resource,
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    struct H<'a> {
        attrs: Vec<KeyValue>,
        start: u64,
        time: u64,
        bounds: &'a [f64],
        counts: &'a [u64],
        sum: f64,
    }

    fn histogram(
        name: &str,
        unit: &str,
        temporality: AggregationTemporality,
        points: Vec<H<'_>>,
    ) -> Metric {
        Metric {
            name: name.into(),
            unit: unit.into(),
            data: Some(Data::Histogram(Histogram {
                data_points: points
                    .into_iter()
                    .map(|h| HistogramDataPoint {
                        attributes: h.attrs,
                        start_time_unix_nano: h.start,
                        time_unix_nano: h.time,
                        count: h.counts.iter().sum(),
                        sum: Some(h.sum),
                        bucket_counts: h.counts.to_vec(),
                        explicit_bounds: h.bounds.to_vec(),
                        ..Default::default()
                    })
                    .collect(),
                aggregation_temporality: temporality as i32,
            })),
            ..Default::default()
        }
    }

    fn gauge(name: &str, unit: &str, points: &[(Vec<KeyValue>, f64)]) -> Metric {
        Metric {
            name: name.into(),
            unit: unit.into(),
            data: Some(Data::Gauge(Gauge {
                data_points: points
                    .iter()
                    .map(|(attrs, v)| NumberDataPoint {
                        attributes: attrs.clone(),
                        time_unix_nano: 1,
                        value: Some(number_data_point::Value::AsDouble(*v)),
                        ..Default::default()
                    })
                    .collect(),
            })),
            ..Default::default()
        }
    }

    fn counter(name: &str, unit: &str, delta: bool, windows: &[(u64, u64, f64)]) -> Metric {
        let temporality = if delta {
            AggregationTemporality::Delta
        } else {
            AggregationTemporality::Cumulative
        };
        Metric {
            name: name.into(),
            unit: unit.into(),
            data: Some(Data::Sum(Sum {
                data_points: windows
                    .iter()
                    .map(|(start, time, v)| NumberDataPoint {
                        start_time_unix_nano: *start,
                        time_unix_nano: *time,
                        value: Some(number_data_point::Value::AsDouble(*v)),
                        ..Default::default()
                    })
                    .collect(),
                aggregation_temporality: temporality as i32,
                is_monotonic: true,
            })),
            ..Default::default()
        }
    }

    fn picked(metrics: Vec<Metric>) -> RuntimeReadings {
        let r = RuntimeMetrics::new(Duration::from_secs(60));
        r.ingest(&request(vec![kv("service.name", "app")], metrics));
        r.readings(Instant::now())
    }

    /// The unit is honoured: a jvm.gc.duration sent in milliseconds is read as milliseconds (bounds and
    /// sum scaled to seconds), and one in a unit that is not a time is not a pause metric at all.
    #[test]
    fn a_pause_histogram_in_milliseconds_is_scaled_to_seconds() {
        let h = || H {
            attrs: vec![kv("jvm.gc.name", "G1 Old Generation")],
            start: 1,
            time: 2,
            bounds: &[10.0, 100.0, 1000.0],
            counts: &[1, 0, 2, 0],
            sum: 1205.0,
        };
        let r = picked(vec![histogram(
            "jvm.gc.duration",
            "ms",
            AggregationTemporality::Cumulative,
            vec![h()],
        )]);
        assert_eq!(r.pauses.len(), 1);
        assert_eq!(r.pauses[0].collector, "G1 Old Generation");
        assert_eq!(
            r.pauses[0].value,
            PauseValue::Histogram {
                cumulative: vec![(0.01, 1), (0.1, 1), (1.0, 3), (f64::INFINITY, 3)],
                sum: 1.205,
                count: 3,
            }
        );
        for unit in ["By", "", "{gc}"] {
            let r = picked(vec![histogram(
                "jvm.gc.duration",
                unit,
                AggregationTemporality::Cumulative,
                vec![h()],
            )]);
            assert!(r.pauses.is_empty(), "unit {unit:?} is not a time");
        }
    }

    #[test]
    fn concurrent_cycles_and_wrong_instruments_are_not_picked() {
        let h = |name: &str| H {
            attrs: vec![kv("jvm.gc.name", name)],
            start: 1,
            time: 2,
            bounds: &[1.0],
            counts: &[1, 0],
            sum: 0.5,
        };
        let r = picked(vec![
            histogram(
                "jvm.gc.duration",
                "s",
                AggregationTemporality::Cumulative,
                vec![h("G1 Concurrent GC"), h("ZGC Pauses")],
            ),
            // A gauge under a histogram row's name is not what the row describes.
            gauge("v8js.gc.duration", "s", &[(vec![], 3.0)]),
        ]);
        let collectors: Vec<&str> = r.pauses.iter().map(|p| p.collector.as_str()).collect();
        assert_eq!(collectors, ["ZGC Pauses"]);
    }

    /// Delta exports are accumulated, a repeated window once; a .NET pause-time counter in ms is scaled.
    #[test]
    fn delta_exports_accumulate_once_per_window() {
        let r = RuntimeMetrics::new(Duration::from_secs(60));
        let send = |windows: &[(u64, u64, f64)]| {
            r.ingest(&request(
                vec![],
                vec![counter("dotnet.gc.pause.time", "ms", true, windows)],
            ))
        };
        send(&[(10, 20, 30.0)]);
        send(&[(20, 30, 5.0), (10, 20, 30.0)]);
        let got = r.readings(Instant::now()).pauses;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].collector, "all");
        assert_eq!(got[0].start_unix_nano, 10);
        match got[0].value {
            PauseValue::Total(t) => assert!((t - 0.035).abs() < 1e-12, "{t}"),
            ref v => panic!("{v:?}"),
        }
    }

    /// Series are bounded per kind and expire when not updated for the TTL; an ended series goes at once.
    #[test]
    fn series_are_bounded_and_expire() {
        let r = RuntimeMetrics::new(Duration::from_millis(200));
        let points: Vec<(Vec<KeyValue>, f64)> = (0..MAX_SERIES + 10)
            .map(|i| (vec![kv("pool.name", &i.to_string())], 1.0))
            .collect();
        r.ingest(&request(
            vec![],
            vec![gauge("db.client.connections.max", "{connection}", &points)],
        ));
        assert_eq!(r.readings(Instant::now()).pools.len(), MAX_SERIES);
        assert_eq!(r.dropped(), 10);
        let later = Instant::now() + Duration::from_millis(300);
        assert!(r.readings(later).pools.is_empty(), "expired after the TTL");

        let mut ended = gauge("v8js.memory.heap.used", "By", &[(vec![], 100.0)]);
        r.ingest(&request(vec![], vec![ended.clone()]));
        assert_eq!(r.readings(Instant::now()).heap.len(), 1);
        if let Some(Data::Gauge(g)) = ended.data.as_mut() {
            g.data_points[0].flags = 1;
        }
        r.ingest(&request(vec![], vec![ended]));
        assert!(r.readings(Instant::now()).heap.is_empty());
    }

    #[test]
    fn pools_heap_and_sdk_language() {
        let r = RuntimeMetrics::new(Duration::from_secs(60));
        let pool = kv("db.client.connection.pool.name", "orders");
        r.ingest(&request(
            vec![
                kv("service.name", "shop"),
                kv("telemetry.sdk.language", "java"),
            ],
            vec![
                gauge(
                    "db.client.connection.count",
                    "{connection}",
                    &[
                        (
                            vec![pool.clone(), kv("db.client.connection.state", "used")],
                            7.0,
                        ),
                        (
                            vec![pool.clone(), kv("db.client.connection.state", "idle")],
                            3.0,
                        ),
                    ],
                ),
                gauge(
                    "jvm.memory.used_after_last_gc",
                    "MiBy",
                    &[
                        (vec![kv("jvm.memory.type", "heap")], 2.0),
                        (vec![kv("jvm.memory.type", "non_heap")], 50.0),
                    ],
                ),
            ],
        ));
        let got = r.readings(Instant::now());
        let mut pools = got.pools.clone();
        pools.sort_by(|a, b| a.value.total_cmp(&b.value));
        assert_eq!(
            pools,
            [
                PoolReading {
                    kind: "db",
                    pool: "orders".into(),
                    figure: PoolFigure::Idle,
                    value: 3.0
                },
                PoolReading {
                    kind: "db",
                    pool: "orders".into(),
                    figure: PoolFigure::Used,
                    value: 7.0
                }
            ],
            "idle connections are a figure of their own, not in use"
        );
        assert_eq!(
            got.heap,
            [HeapReading {
                order: 0,
                limit: false,
                value: 2.0 * 1024.0 * 1024.0
            }]
        );
        assert_eq!(r.sdk_runtime(), Some(Runtime::Jvm));
    }

    /// Each instrumentation's pool metrics as its current release sends them (name, unit, attribute keys),
    /// read to the same figures.
    #[test]
    fn pool_metrics_of_each_instrumentation() {
        struct Row {
            who: &'static str,
            used: (&'static str, &'static str),
            max: Option<(&'static str, &'static str)>,
            pending: Option<(&'static str, &'static str)>,
            pool_key: &'static str,
            state_key: &'static str,
        }
        let rows = [
            // opentelemetry-instrumentation-sqlalchemy 0.66b1: usage only, unit without braces.
            Row {
                who: "SQLAlchemy",
                used: ("db.client.connections.usage", "connections"),
                max: None,
                pending: None,
                pool_key: "pool.name",
                state_key: "state",
            },
            // Java agent DbConnectionPoolMetrics (HikariCP, Apache DBCP, c3p0, Vibur, …), default.
            Row {
                who: "Java agent / HikariCP",
                used: ("db.client.connections.usage", "{connections}"),
                max: Some(("db.client.connections.max", "{connections}")),
                pending: Some(("db.client.connections.pending_requests", "{requests}")),
                pool_key: "pool.name",
                state_key: "state",
            },
            // Java agent HikariCP tests of older releases assert the unit without braces.
            Row {
                who: "Java agent, older releases",
                used: ("db.client.connections.usage", "connections"),
                max: Some(("db.client.connections.max", "connections")),
                pending: Some(("db.client.connections.pending_requests", "requests")),
                pool_key: "pool.name",
                state_key: "state",
            },
            // Java agent with OTEL_SEMCONV_STABILITY_OPT_IN=database: new names, old attribute keys.
            Row {
                who: "Java agent, stable database conventions",
                used: ("db.client.connection.count", "{connections}"),
                max: Some(("db.client.connection.max", "{connections}")),
                pending: Some(("db.client.connection.pending_requests", "{requests}")),
                pool_key: "pool.name",
                state_key: "state",
            },
            // @opentelemetry/instrumentation-pg 0.72+: count and pending, no max.
            Row {
                who: "Node pg",
                used: ("db.client.connection.count", "{connection}"),
                max: None,
                pending: Some(("db.client.connection.pending_requests", "{request}")),
                pool_key: "db.client.connection.pool.name",
                state_key: "db.client.connection.state",
            },
            // Npgsql's MetricsReporter (.NET).
            Row {
                who: ".NET Npgsql",
                used: ("db.client.connections.usage", "{connection}"),
                max: Some(("db.client.connections.max", "{connection}")),
                pending: Some(("db.client.connections.pending_requests", "{request}")),
                pool_key: "pool.name",
                state_key: "state",
            },
            // The newest conventions rename .max to .limit.
            Row {
                who: "semantic conventions, newest",
                used: ("db.client.connection.count", "{connection}"),
                max: Some(("db.client.connection.limit", "{connection}")),
                pending: Some(("db.client.connection.pending_requests", "{request}")),
                pool_key: "db.client.connection.pool.name",
                state_key: "db.client.connection.state",
            },
            // Go redisotel and others send no unit at all.
            Row {
                who: "no unit",
                used: ("db.client.connections.usage", ""),
                max: Some(("db.client.connections.max", "")),
                pending: None,
                pool_key: "pool.name",
                state_key: "state",
            },
        ];
        for row in rows {
            let r = RuntimeMetrics::new(Duration::from_secs(60));
            let pool = || kv(row.pool_key, "p1");
            let mut metrics = vec![gauge(
                row.used.0,
                row.used.1,
                &[
                    (vec![pool(), kv(row.state_key, "used")], 5.0),
                    (vec![pool(), kv(row.state_key, "idle")], 1.0),
                ],
            )];
            if let Some((name, unit)) = row.max {
                metrics.push(gauge(name, unit, &[(vec![pool()], 8.0)]));
            }
            if let Some((name, unit)) = row.pending {
                metrics.push(gauge(name, unit, &[(vec![pool()], 3.0)]));
            }
            r.ingest(&request(vec![], metrics));
            let got = r.readings(Instant::now()).pools;
            let figure = |f: PoolFigure| {
                got.iter()
                    .find(|p| p.figure == f && p.pool == "p1" && p.kind == "db")
                    .map(|p| p.value)
            };
            assert_eq!(figure(PoolFigure::Used), Some(5.0), "{}", row.who);
            assert_eq!(figure(PoolFigure::Idle), Some(1.0), "{}", row.who);
            assert_eq!(figure(PoolFigure::Max), row.max.map(|_| 8.0), "{}", row.who);
            assert_eq!(
                figure(PoolFigure::Pending),
                row.pending.map(|_| 3.0),
                "{}",
                row.who
            );
        }
        // A pool count in a unit of another quantity is not a pool count.
        let r = RuntimeMetrics::new(Duration::from_secs(60));
        r.ingest(&request(
            vec![],
            vec![gauge(
                "db.client.connections.max",
                "ms",
                &[(vec![kv("pool.name", "p")], 8.0)],
            )],
        ));
        assert!(r.readings(Instant::now()).pools.is_empty());
    }

    /// go.schedule.duration is cumulative: each export's interval is what it gained since the one before;
    /// a first export holds only new observations when the series began after vitals did.
    #[test]
    fn a_delay_histogram_gives_its_last_interval() {
        let r = RuntimeMetrics::new(Duration::from_secs(60));
        let send = |start: u64, time: u64, counts: &[u64]| {
            r.ingest(&request(
                vec![],
                vec![histogram(
                    "go.schedule.duration",
                    "s",
                    AggregationTemporality::Cumulative,
                    vec![H {
                        attrs: vec![],
                        start,
                        time,
                        bounds: &[0.001, 0.01, 0.1],
                        counts,
                        sum: 0.0,
                    }],
                )],
            ))
        };
        let interval = || match r.readings(Instant::now()).delays.as_slice() {
            [DelayReading {
                runtime: Runtime::Go,
                value: DelayValue::Interval(i),
            }] => Some(i.clone()),
            [] => None,
            other => panic!("{other:?}"),
        };
        send(1, 10, &[100, 5, 0, 0]);
        assert_eq!(interval(), None, "began before vitals: may hold hours");
        send(1, 20, &[150, 9, 1, 0]);
        assert_eq!(
            interval(),
            Some(vec![(0.001, 50), (0.01, 4), (0.1, 1), (f64::INFINITY, 0)])
        );
        // The same export again changes nothing.
        send(1, 20, &[150, 9, 1, 0]);
        assert_eq!(
            interval(),
            Some(vec![(0.001, 50), (0.01, 4), (0.1, 1), (f64::INFINITY, 0)])
        );
        // The app restarted: everything since its new start is the interval.
        send(30, 40, &[3, 0, 0, 0]);
        assert_eq!(
            interval(),
            Some(vec![(0.001, 3), (0.01, 0), (0.1, 0), (f64::INFINITY, 0)])
        );
    }
}
