//! The app's own OTLP metrics in the neutral model, under their own names and attribute keys: delta
//! temporality accumulated to cumulative (duplicates and out-of-order points tolerated), exponential
//! histograms as classic buckets, resource attributes as `target.info`, a `service` attribute on every
//! series. Bounded in metric names, series per metric, attributes per series and value length; idle
//! series expire. Whatever the app sends, every exposition stays valid: the exporters' [`NameRules`] are
//! asked when a metric or attribute is first seen, and a metric whose written names would collide with
//! another's (or with vitals' own) is refused, attributes written alike are joined, and inconsistent
//! points are refused.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{
    metric::Data, ExponentialHistogramDataPoint, NumberDataPoint, SummaryDataPoint,
};

use crate::bounded::{LimitedMap, OverflowCounter};
use crate::catalogue::OVERFLOW_LABEL;
use crate::model::{
    BucketCounts, Collector, Exponential, Metric, MetricInfo, MetricKind, MetricSink, NameRules,
    Origin, Point, Value, ValueRef,
};
use crate::pipeline::attributes::{any_value_string, cut_string, cut_to, service_name};
use crate::pipeline::points::{
    ended, is_delta, native_buckets, number, DataPoint, DeltaWindows, Histogram, PointError,
    Summary, MAX_BUCKETS,
};

/// Limits and options of the app metric store.
#[derive(Debug, Clone)]
pub struct AppMetricsConfig {
    /// Label sets per metric before observations go to the overflow series.
    pub series_limit: usize,
    /// Distinct metric names kept; points of further names are rejected.
    pub family_limit: usize,
    /// A series not updated for this long is dropped.
    pub ttl: Duration,
    /// Resource attributes copied onto every series as labels.
    pub promote: Vec<String>,
}

/// Longest attribute key kept (bytes); a longer key is cut.
pub const MAX_ATTRIBUTE_KEY: usize = 128;
/// Most labels kept on one series.
pub const MAX_LABELS: usize = 64;
/// Bytes all app series may take together (labels and values, estimated as [`series_bytes`] does);
/// beyond it new label sets go to their metric's overflow series.
pub const MAX_STORE_BYTES: usize = 24 << 20;

/// What one series may take at most: its labels, the map entry, and its value at its largest (a
/// histogram or summary is charged for [`MAX_BUCKETS`] from the start, since deltas can grow it).
fn series_bytes(labels: &Labels, kind: MetricKind) -> usize {
    let label_bytes: usize = labels.iter().map(|(k, v)| k.len() + v.len() + 80).sum();
    let value = match kind {
        MetricKind::Counter | MetricKind::UpDownCounter | MetricKind::Gauge => 0,
        MetricKind::Histogram | MetricKind::Summary => MAX_BUCKETS * 16,
    };
    200 + label_bytes + value
}
const TARGET_INFO_LIMIT: usize = 256;

/// What one request's metrics did: items are data points.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IngestOutcome {
    /// Data points applied.
    pub accepted: u64,
    /// Data points refused, with the first reason in `message`.
    pub rejected: u64,
    /// Why points were refused (empty when none were).
    pub message: String,
}

impl IngestOutcome {
    fn reject(&mut self, n: u64, why: impl FnOnce() -> String) {
        if n == 0 {
            return;
        }
        self.rejected += n;
        if self.message.is_empty() {
            self.message = why();
        }
    }
}

type Labels = Vec<(String, String)>;

/// A series' attributes packed into one allocation: per attribute its key then its value, each its
/// length (ASCII digits of 6 bits, low first, `0x40` marking that more follow) followed by its text, in
/// the canonical order [`build_labels`] gives. One allocation per series instead of two per attribute
/// keeps a stored series near 150 bytes; being all text, it is read back by slicing, without decoding.
type SeriesKey = Box<str>;

/// Packs `labels` into `out` (cleared first) as [`SeriesKey`] lays them out.
fn pack_labels(labels: &Labels, out: &mut String) {
    out.clear();
    for (k, v) in labels {
        put_str(out, k);
        put_str(out, v);
    }
}

fn put_str(out: &mut String, s: &str) {
    let mut n = s.len();
    loop {
        let low = (n & 0x3f) as u8;
        n >>= 6;
        if n == 0 {
            out.push(char::from(low));
            break;
        }
        out.push(char::from(low | 0x40));
    }
    out.push_str(s);
}

/// The `(key, value)` pairs of a packed series key.
struct Unpacked<'a>(&'a str);

impl<'a> Unpacked<'a> {
    fn take_str(&mut self) -> Option<&'a str> {
        let bytes = self.0.as_bytes();
        let (mut n, mut at, mut shift) = (0usize, 0usize, 0);
        // Most texts are under 64 bytes: one length digit.
        if let Some(&b) = bytes.first().filter(|b| **b < 0x40) {
            let s = self.0.get(1..1 + b as usize)?;
            self.0 = self.0.get(1 + b as usize..)?;
            return Some(s);
        }
        loop {
            let b = *bytes.get(at)?;
            at += 1;
            n |= ((b & 0x3f) as usize) << shift;
            if b & 0x40 == 0 {
                break;
            }
            shift += 6;
            if shift > 30 {
                return None;
            }
        }
        // Lengths are ASCII and texts whole, so these are character boundaries; `get` checks it anyway
        // and a damaged key ends the iteration.
        let s = self.0.get(at..at + n)?;
        self.0 = self.0.get(at + n..)?;
        Some(s)
    }
}

impl<'a> Iterator for Unpacked<'a> {
    type Item = (&'a str, &'a str);
    fn next(&mut self) -> Option<Self::Item> {
        let k = self.take_str()?;
        let v = self.take_str()?;
        Some((k, v))
    }
}

fn unpack_owned(key: &str) -> Labels {
    Unpacked(key)
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A histogram series: its classic buckets, and the exponential buckets an exponential histogram came
/// with, kept for exporters that carry them.
#[derive(Debug, Clone)]
struct HistogramValue {
    classic: Histogram,
    native: Option<Box<Exponential>>,
}

/// A series' value; the larger shapes are boxed so a number series stays small.
#[derive(Debug, Clone)]
enum SeriesValue {
    Number(f64),
    Histogram(Box<HistogramValue>),
    Summary(Box<Summary>),
}

/// A series as stored: its latest value (accumulated, for a delta series), when it started and was last
/// written, and the delta windows applied.
#[derive(Debug, Clone)]
struct StoredPoint {
    value: SeriesValue,
    /// Start time of the series (cumulative) or of its first delta, Unix ns; 0 when the SDK sent none.
    start: u64,
    last_time: u64,
    /// Delta windows applied (only delta series have them; boxed so other series pay one word).
    deltas: Option<Box<DeltaWindows>>,
}

struct AppFamily {
    help: String,
    unit: String,
    kind: MetricKind,
    series: LimitedMap<SeriesKey, StoredPoint>,
    /// Set when expiry took the family out of the store: a writer holding it looks it up again.
    removed: bool,
}

/// [`series_bytes`] of a stored series, from its packed key.
fn packed_series_bytes(key: &str, kind: MetricKind) -> usize {
    let label_bytes: usize = Unpacked(key).map(|(k, v)| k.len() + v.len() + 80).sum();
    let value = match kind {
        MetricKind::Counter | MetricKind::UpDownCounter | MetricKind::Gauge => 0,
        MetricKind::Histogram | MetricKind::Summary => MAX_BUCKETS * 16,
    };
    200 + label_bytes + value
}

/// A metric's series behind its own lock, so a scrape streaming one metric holds up only ingest of
/// that metric, and only while it is written.
type SharedFamily = Arc<Mutex<AppFamily>>;

/// The store's index of metrics, locked only to find, add, list or expire one: each metric's family, the
/// exposition names each one claims, and the resource attribute sets seen (`target_info`).
struct MetricIndex {
    families: HashMap<String, SharedFamily>,
    /// Every sample name the families write in an exposition (`x_total`, `x_bucket`, …) → the metric
    /// that owns it.
    claims: HashMap<String, String>,
    targets: LimitedMap<Labels, ()>,
}

/// Longest metric name taken (bytes), the OpenTelemetry instrument name limit.
pub const MAX_NAME: usize = 255;
/// Longest unit kept (bytes); a longer one is cut.
const MAX_UNIT: usize = 63;

/// The app metric store.
pub struct AppMetrics {
    cfg: AppMetricsConfig,
    names: Arc<dyn NameRules>,
    overflow: OverflowCounter,
    /// Sum of [`series_bytes`] over the stored series; space is reserved before a series is stored.
    store_bytes: AtomicUsize,
    index: Mutex<MetricIndex>,
}

/// Canonical attributes of one series: the point's attributes (a key that the resource-derived attributes
/// already use moved aside to `exported_…`), then the fixed ones; attributes whose keys the exporters write
/// alike are joined with `;` (as Prometheus' OTLP translation does) under the first key; ordered by the
/// written key; bounded.
fn build_labels(
    attrs: &[KeyValue],
    fixed: &[(String, String)],
    rules: &dyn NameRules,
    kind: MetricKind,
) -> Labels {
    let written = |k: &str| rules.attribute_key(k, kind).into_owned();
    let fixed_written: Vec<String> = fixed.iter().map(|(k, _)| written(k)).collect();
    let mut keyed: Vec<(String, String, String)> = Vec::with_capacity(attrs.len() + fixed.len());
    for kv in attrs.iter().take(MAX_LABELS) {
        let mut key: String = cut_to(&kv.key, MAX_ATTRIBUTE_KEY).to_owned();
        let mut w = written(&key);
        if fixed_written.contains(&w) {
            key.insert_str(0, "exported_");
            w = written(&key);
        }
        keyed.push((w, key, cut_string(any_value_string(kv.value.as_ref()))));
    }
    for ((k, v), w) in fixed.iter().zip(fixed_written) {
        keyed.push((w, k.clone(), v.clone()));
    }
    // Stable: of attributes written alike, the point's come first in their order, then the fixed one.
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    let mut merged: Vec<(String, String, String)> = Vec::with_capacity(keyed.len());
    for (w, k, v) in keyed {
        match merged.last_mut() {
            Some((lw, _, lv)) if *lw == w => {
                lv.push(';');
                lv.push_str(&v);
            }
            _ => merged.push((w, k, v)),
        }
    }
    merged.into_iter().map(|(_, k, v)| (k, v)).collect()
}

/// Most exponential buckets kept per side of a series; finer points are merged down to fit.
const NATIVE_MAX_BUCKETS: usize = 160;

impl SeriesValue {
    /// An empty value of the same shape, which a first delta is added to.
    fn zero_like(&self) -> SeriesValue {
        match self {
            SeriesValue::Number(_) => SeriesValue::Number(0.0),
            SeriesValue::Histogram(h) => SeriesValue::Histogram(Box::new(HistogramValue {
                classic: Histogram::empty(),
                native: h
                    .native
                    .as_ref()
                    .map(|n| Box::new(Exponential::new(n.scale, n.zero_threshold))),
            })),
            SeriesValue::Summary(_) => SeriesValue::Summary(Box::new(Summary {
                quantiles: Vec::new(),
                sum: 0.0,
                count: 0,
            })),
        }
    }
}

impl StoredPoint {
    fn new(value: SeriesValue) -> Self {
        StoredPoint {
            value,
            start: 0,
            last_time: 0,
            deltas: None,
        }
    }

    /// Applies a cumulative or gauge reading unless it is older than what is held.
    fn set(&mut self, start: u64, time: u64, state: SeriesValue) {
        if time >= self.last_time {
            self.start = start;
            self.last_time = time;
            self.value = state;
        }
    }

    /// Applies a delta once per (start, end) window, in any order.
    fn add(&mut self, start: u64, time: u64, state: SeriesValue) {
        let deltas = self.deltas.get_or_insert_with(Default::default);
        let first = deltas.is_empty() && self.last_time == 0;
        if !deltas.admit(start, time) {
            return;
        }
        if first {
            self.start = start;
        }
        self.last_time = self.last_time.max(time);
        match (&mut self.value, state) {
            (SeriesValue::Number(v), SeriesValue::Number(d)) => *v += d,
            (SeriesValue::Histogram(held), SeriesValue::Histogram(add)) => {
                let HistogramValue { classic, native } = *add;
                // Exponential deltas merge at the lower of their scales; a point without them leaves
                // the series classic only; a series started again from the delta takes its buckets.
                held.native = if held.classic.add(classic) {
                    match (held.native.take(), &native) {
                        (Some(mut n), Some(a)) => {
                            n.merge(a, NATIVE_MAX_BUCKETS);
                            Some(n)
                        }
                        _ => None,
                    }
                } else {
                    native
                };
            }
            (held, new) => *held = new,
        }
    }
}

impl AppMetrics {
    /// An empty store.
    pub fn new(
        cfg: AppMetricsConfig,
        overflow: OverflowCounter,
        names: Arc<dyn NameRules>,
    ) -> Self {
        let targets = LimitedMap::new(TARGET_INFO_LIMIT, overflow.clone());
        AppMetrics {
            cfg,
            names,
            overflow,
            store_bytes: AtomicUsize::new(0),
            index: Mutex::new(MetricIndex {
                families: HashMap::new(),
                claims: HashMap::new(),
                targets,
            }),
        }
    }

    /// Applies one export request.
    pub fn ingest(&self, req: &ExportMetricsServiceRequest) -> IngestOutcome {
        let now = Instant::now();
        let mut out = IngestOutcome::default();
        for rm in &req.resource_metrics {
            let attrs = rm
                .resource
                .as_ref()
                .map(|r| r.attributes.as_slice())
                .unwrap_or(&[]);
            let service = service_name(attrs);
            let mut fixed: Labels = vec![("service".to_owned(), service.clone())];
            for key in &self.cfg.promote {
                if let Some(kv) = attrs.iter().find(|kv| &kv.key == key) {
                    fixed.push((key.clone(), cut_string(any_value_string(kv.value.as_ref()))));
                }
            }
            let info = build_labels(attrs, &[], &*self.names, MetricKind::Gauge);
            self.lock_index()
                .targets
                .entry(&info, || info.clone(), || (), now);
            for sm in &rm.scope_metrics {
                for m in &sm.metrics {
                    self.ingest_metric(m, &fixed, now, &mut out);
                }
            }
        }
        out
    }

    fn lock_index(&self) -> MutexGuard<'_, MetricIndex> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The family of metric `m` (created when its names are free and there is room), or why its points
    /// are refused.
    fn family_for(
        &self,
        m: &opentelemetry_proto::tonic::metrics::v1::Metric,
        kind: MetricKind,
    ) -> Result<SharedFamily, String> {
        let name = m.name.as_str();
        let mut index = self.lock_index();
        if let Some(f) = index.families.get(name) {
            return Ok(f.clone());
        }
        if index.families.len() >= self.cfg.family_limit {
            return Err(format!(
                "more than {} metric names; {name} dropped",
                self.cfg.family_limit
            ));
        }
        let samples = self.names.metric_names(name, &m.unit, kind, Origin::App)?;
        if let Some((sample, owner)) = samples
            .iter()
            .find_map(|s| index.claims.get(s).map(|o| (s, o)))
        {
            return Err(format!(
                "metric {name:?} would write samples named {sample}, which metric {owner:?} already writes"
            ));
        }
        for s in samples {
            index.claims.insert(s, name.to_owned());
        }
        let family = Arc::new(Mutex::new(AppFamily {
            help: help_text(m),
            unit: cut_to(&m.unit, MAX_UNIT).to_owned(),
            kind,
            series: LimitedMap::new(self.cfg.series_limit, self.overflow.clone()),
            removed: false,
        }));
        index.families.insert(name.to_owned(), family.clone());
        Ok(family)
    }

    /// Takes `cost` bytes of the store budget if they fit.
    fn reserve(&self, cost: usize) -> bool {
        self.store_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b + cost <= MAX_STORE_BYTES).then_some(b + cost)
            })
            .is_ok()
    }

    fn release(&self, cost: usize) {
        let _ = self
            .store_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(cost))
            });
    }

    fn ingest_metric(
        &self,
        m: &opentelemetry_proto::tonic::metrics::v1::Metric,
        fixed: &Labels,
        now: Instant,
        out: &mut IngestOutcome,
    ) {
        let Some(data) = &m.data else {
            out.reject(1, || format!("metric {:?} has no data", m.name));
            return;
        };
        let (kind, points) = match data {
            Data::Gauge(g) => (MetricKind::Gauge, g.data_points.len()),
            Data::Sum(s) if s.is_monotonic => (MetricKind::Counter, s.data_points.len()),
            Data::Sum(s) => (MetricKind::UpDownCounter, s.data_points.len()),
            Data::Histogram(h) => (MetricKind::Histogram, h.data_points.len()),
            Data::ExponentialHistogram(h) => (MetricKind::Histogram, h.data_points.len()),
            Data::Summary(s) => (MetricKind::Summary, s.data_points.len()),
        };
        if m.name.is_empty() || m.name.len() > MAX_NAME {
            out.reject(points as u64, || {
                format!(
                    "metric name of {} bytes (1 to {MAX_NAME} are taken)",
                    m.name.len()
                )
            });
            return;
        }
        let name = m.name.as_str();
        // Expiry may take the family out between the lookup and the lock: then look again.
        let shared = loop {
            let shared = match self.family_for(m, kind) {
                Ok(f) => f,
                Err(why) => return out.reject(points as u64, || why),
            };
            if !shared.lock().unwrap_or_else(|p| p.into_inner()).removed {
                break shared;
            }
        };
        let mut guard = shared.lock().unwrap_or_else(|p| p.into_inner());
        let fam = &mut *guard;
        if fam.kind != kind {
            out.reject(points as u64, || format!("metric {name:?} changed type"));
            return;
        }
        let rules = &*self.names;
        let mut packed = String::new();
        let mut apply = |attrs: &[KeyValue],
                         flags: u32,
                         start: u64,
                         time: u64,
                         delta: bool,
                         state: Result<SeriesValue, String>| {
            let state = match state {
                Ok(s) => s,
                Err(why) => return out.reject(1, || format!("metric {:?}: {why}", m.name)),
            };
            let labels = build_labels(attrs, fixed, rules, kind);
            pack_labels(&labels, &mut packed);
            if ended(flags) {
                if fam.series.remove(packed.as_str()) {
                    self.release(series_bytes(&labels, kind));
                }
                out.accepted += 1;
                return;
            }
            let init = state.zero_like();
            let cost = series_bytes(&labels, kind);
            let before = fam.series.len();
            let reserved = !fam.series.contains_key(packed.as_str()) && self.reserve(cost);
            let (p, _) = fam.series.entry_if(
                packed.as_str(),
                || packed.as_str().into(),
                || StoredPoint::new(init),
                now,
                reserved,
            );
            if delta {
                p.add(start, time, state);
            } else {
                p.set(start, time, state);
            }
            if reserved && fam.series.len() == before {
                // The series limit sent it to the overflow series: give the space back.
                self.release(cost);
            }
            out.accepted += 1;
        };
        let number_state = |dp: &NumberDataPoint| {
            number(dp)
                .map(SeriesValue::Number)
                .ok_or_else(|| PointError::NoValue.to_string())
        };
        let histogram = |classic: Result<Histogram, PointError>, native: Option<Exponential>| {
            classic.map_err(|e| e.to_string()).map(|classic| {
                SeriesValue::Histogram(Box::new(HistogramValue {
                    classic,
                    native: native.map(Box::new),
                }))
            })
        };
        let exponential = |dp: &ExponentialHistogramDataPoint| {
            let classic = Histogram::exponential(dp);
            let native = classic
                .is_ok()
                .then(|| native_buckets(dp, NATIVE_MAX_BUCKETS));
            histogram(classic, native)
        };
        let summary = |dp: &SummaryDataPoint| {
            Summary::read(dp)
                .map(|s| SeriesValue::Summary(Box::new(s)))
                .map_err(|e| e.to_string())
        };
        match data {
            Data::Gauge(g) => for_points(&g.data_points, false, number_state, &mut apply),
            Data::Sum(s) => for_points(
                &s.data_points,
                is_delta(s.aggregation_temporality),
                number_state,
                &mut apply,
            ),
            Data::Histogram(h) => for_points(
                &h.data_points,
                is_delta(h.aggregation_temporality),
                |dp| histogram(Histogram::explicit(dp), None),
                &mut apply,
            ),
            Data::ExponentialHistogram(h) => for_points(
                &h.data_points,
                is_delta(h.aggregation_temporality),
                exponential,
                &mut apply,
            ),
            Data::Summary(s) => for_points(&s.data_points, false, summary, &mut apply),
        }
    }
}

/// Applies each point's value (or its reason for being unusable) to its series.
fn for_points<P: DataPoint>(
    points: &[P],
    delta: bool,
    state: impl Fn(&P) -> Result<SeriesValue, String>,
    apply: &mut impl FnMut(&[KeyValue], u32, u64, u64, bool, Result<SeriesValue, String>),
) {
    for dp in points {
        apply(
            dp.attributes(),
            dp.flags(),
            dp.start(),
            dp.time(),
            delta,
            state(dp),
        );
    }
}

/// The description's first line, or (since Prometheus wants help on every metric) where it came from.
fn help_text(m: &opentelemetry_proto::tonic::metrics::v1::Metric) -> String {
    let first: String = m
        .description
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(200)
        .collect();
    if first.trim().is_empty() {
        format!(
            "OTLP metric {} from the app",
            m.name.chars().take(200).collect::<String>()
        )
    } else {
        first
    }
}

fn to_value(kind: MetricKind, p: &SeriesValue) -> Value {
    match (kind, p) {
        (MetricKind::Counter | MetricKind::UpDownCounter, SeriesValue::Number(v)) => Value::Sum(*v),
        (_, SeriesValue::Number(v)) => Value::Gauge(*v),
        (_, SeriesValue::Histogram(h)) => Value::Histogram {
            buckets: h.classic.cumulative(),
            sum: h.classic.sum,
            count: h.classic.count,
            exemplars: Vec::new(),
            native: h.native.clone(),
        },
        (_, SeriesValue::Summary(q)) => Value::Summary {
            quantiles: q.quantiles.clone(),
            sum: q.sum,
            count: q.count,
        },
    }
}

impl AppMetrics {
    /// Drops series, metrics and resource sets not updated within the TTL, frees their names for reuse
    /// and recounts the bytes held. Runs on a timer (not inside a scrape, which only reads).
    pub fn expire(&self, now: Instant) {
        let ttl = self.cfg.ttl;
        let mut guard = self.lock_index();
        let MetricIndex {
            families,
            claims,
            targets,
        } = &mut *guard;
        targets.expire(now, ttl);
        let before = families.len();
        families.retain(|_, shared| {
            let mut f = shared.lock().unwrap_or_else(|p| p.into_inner());
            let kind = f.kind;
            f.series.expire_with(now, ttl, |k| {
                self.release(packed_series_bytes(k, kind));
            });
            f.removed = f.series.is_empty();
            !f.removed
        });
        if families.len() < before {
            claims.retain(|_, owner| families.contains_key(owner));
        }
    }

    /// True while any metric or resource set is held: expiry has work to come.
    pub fn holds(&self) -> bool {
        let index = self.lock_index();
        !index.families.is_empty() || !index.targets.is_empty()
    }

    /// The metrics held, sorted by name, each to be read under its own lock.
    fn sorted_families(&self) -> Vec<(String, SharedFamily)> {
        let mut all: Vec<(String, SharedFamily)> = self
            .lock_index()
            .families
            .iter()
            .map(|(n, f)| (n.clone(), f.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The resource attribute sets live at `now`, sorted.
    fn live_targets(&self, now: Instant) -> Vec<Labels> {
        let index = self.lock_index();
        let mut t: Vec<Labels> = index
            .targets
            .iter_live(now, self.cfg.ttl)
            .map(|(l, _)| l.clone())
            .collect();
        t.sort();
        t
    }
}

fn target_info_metric() -> MetricInfo<'static> {
    MetricInfo {
        name: "target.info",
        description: "Resource attributes of each app exporting to vitals",
        unit: "",
        kind: MetricKind::Gauge,
        origin: Origin::App,
    }
}

impl Collector for AppMetrics {
    /// Owned copies, series in attribute order (for readers that keep them, like the live page).
    fn collect(&self, out: &mut Vec<Metric>) {
        let now = Instant::now();
        let ttl = self.cfg.ttl;
        for (name, shared) in self.sorted_families() {
            let f = shared.lock().unwrap_or_else(|p| p.into_inner());
            if !f.series.any_live(now, ttl) {
                continue;
            }
            let mut fam = Metric::new(name, f.help.clone(), f.unit.clone(), f.kind).from_app();
            let mut rows: Vec<(Labels, &StoredPoint)> = f
                .series
                .iter_live(now, ttl)
                .map(|(k, p)| (unpack_owned(k), p))
                .collect();
            rows.sort_by(|a, b| a.0.cmp(&b.0));
            fam.points.reserve(rows.len() + 1);
            for (labels, p) in rows {
                fam.points.push(Point {
                    attributes: labels,
                    start_unix_nanos: p.start,
                    value: to_value(f.kind, &p.value),
                });
            }
            if let Some(p) = f.series.overflow_live(now, ttl) {
                fam.push_started(&[OVERFLOW_LABEL], p.start, to_value(f.kind, &p.value));
            }
            out.push(fam);
        }
        let info = target_info_metric();
        let mut fam = Metric::new(info.name, info.description, "", info.kind).from_app();
        for labels in self.live_targets(now) {
            fam.points.push(Point {
                attributes: labels,
                start_unix_nanos: 0,
                value: Value::Gauge(1.0),
            });
        }
        if !fam.points.is_empty() {
            out.push(fam);
        }
    }

    fn streams(&self) -> bool {
        true
    }

    fn origin(&self) -> Option<Origin> {
        Some(Origin::App)
    }

    /// Streams borrowed views, each metric under its own lock held only while it is written: metric
    /// names sorted, series in table order (sorting 30,000 series per scrape cost more than the rest of
    /// the encoding), nothing cloned.
    fn encode_into(&self, sink: &mut dyn MetricSink) {
        let now = Instant::now();
        let ttl = self.cfg.ttl;
        for (name, shared) in self.sorted_families() {
            let f = shared.lock().unwrap_or_else(|p| p.into_inner());
            if !f.series.any_live(now, ttl) {
                continue;
            }
            let info = MetricInfo {
                name: &name,
                description: &f.help,
                unit: &f.unit,
                kind: f.kind,
                origin: Origin::App,
            };
            if !sink.wants(&info) {
                continue;
            }
            let mut attrs: Vec<(&str, &str)> = Vec::with_capacity(8);
            sink.begin(&info);
            for (key, p) in f.series.iter_live(now, ttl) {
                attrs.clear();
                attrs.extend(Unpacked(key));
                sink.point(&attrs, p.start, value_ref(f.kind, &p.value));
            }
            if let Some(p) = f.series.overflow_live(now, ttl) {
                sink.point(&[OVERFLOW_LABEL], p.start, value_ref(f.kind, &p.value));
            }
            sink.end();
        }
        let targets = self.live_targets(now);
        if !targets.is_empty() {
            sink.begin(&target_info_metric());
            let mut attrs: Vec<(&str, &str)> = Vec::new();
            for labels in &targets {
                attrs.clear();
                attrs.extend(labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                sink.point(&attrs, 0, ValueRef::Gauge(1.0));
            }
            sink.end();
        }
    }
}

/// A held value as a sink reads it, borrowed.
fn value_ref(kind: MetricKind, state: &SeriesValue) -> ValueRef<'_> {
    match (kind, state) {
        (MetricKind::Counter | MetricKind::UpDownCounter, SeriesValue::Number(v)) => {
            ValueRef::Sum(*v)
        }
        (_, SeriesValue::Number(v)) => ValueRef::Gauge(*v),
        (_, SeriesValue::Histogram(h)) => ValueRef::Histogram {
            buckets: BucketCounts::PerBucket(&h.classic.buckets),
            sum: h.classic.sum,
            count: h.classic.count,
            exemplars: &[],
            native: h.native.as_deref(),
        },
        (_, SeriesValue::Summary(q)) => ValueRef::Summary {
            quantiles: &q.quantiles,
            sum: q.sum,
            count: q.count,
        },
    }
}

/// The app metric store as a consumer of the receiver's metric exports.
impl crate::pipeline::Consumer<ExportMetricsServiceRequest> for AppMetrics {
    fn consume(&self, request: &ExportMetricsServiceRequest) -> crate::pipeline::PartialSuccess {
        let out = self.ingest(request);
        crate::pipeline::PartialSuccess::rejecting(out.rejected, out.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::exponential::ExpBuckets;
    use crate::pipeline::attributes::MAX_LABEL_VALUE;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue};
    use opentelemetry_proto::tonic::metrics::v1::{
        exponential_histogram_data_point::Buckets, number_data_point, AggregationTemporality,
        ExponentialHistogram, Gauge, Histogram, HistogramDataPoint, Metric, ResourceMetrics,
        ScopeMetrics, Sum,
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

    fn request(metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", "shop"), kv("k8s.pod.name", "shop-1")],
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

    fn sum(
        name: &str,
        monotonic: bool,
        temporality: AggregationTemporality,
        points: Vec<(u64, u64, f64)>,
    ) -> Metric {
        Metric {
            name: name.into(),
            data: Some(Data::Sum(Sum {
                data_points: points
                    .into_iter()
                    .map(|(start, t, v)| NumberDataPoint {
                        attributes: vec![kv("route", "/a")],
                        start_time_unix_nano: start,
                        time_unix_nano: t,
                        value: Some(number_data_point::Value::AsDouble(v)),
                        ..Default::default()
                    })
                    .collect(),
                aggregation_temporality: temporality as i32,
                is_monotonic: monotonic,
            })),
            ..Default::default()
        }
    }

    fn store() -> AppMetrics {
        AppMetrics::new(
            AppMetricsConfig {
                series_limit: 10,
                family_limit: 10,
                ttl: Duration::from_secs(60),
                promote: vec!["k8s.pod.name".into()],
            },
            OverflowCounter::default(),
            Arc::new(crate::export::prometheus::naming::PrometheusNames),
        )
    }

    /// The store's metrics as the Prometheus exposition names them (metric names and attribute keys
    /// translated), so these tests state what a scrape shows.
    fn collect(s: &AppMetrics) -> Vec<crate::model::Metric> {
        use crate::export::prometheus::naming::{exposition_label, exposition_name};
        let mut out = vec![];
        s.collect(&mut out);
        for m in &mut out {
            let kind = m.kind;
            m.name = exposition_name(&m.name, &m.unit, kind, m.origin).into();
            for p in &mut m.points {
                for (k, _) in &mut p.attributes {
                    *k = exposition_label(k, kind).into_owned();
                }
            }
        }
        out
    }

    #[test]
    fn streaming_encodes_what_collect_holds_and_expiry_runs_apart() {
        use crate::export::prometheus::{encode, Encoder, Format};
        let s = store();
        let d = AggregationTemporality::Delta;
        let mut h = Metric {
            name: "lat".into(),
            unit: "s".into(),
            data: Some(Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    count: 3,
                    sum: Some(1.0),
                    bucket_counts: vec![1, 2],
                    explicit_bounds: vec![0.5],
                    time_unix_nano: 1,
                    ..Default::default()
                }],
                aggregation_temporality: 2,
            })),
            ..Default::default()
        };
        if let Some(Data::Histogram(x)) = &mut h.data {
            x.data_points[0].attributes = vec![kv("http.route", "/a\"b")];
        }
        s.ingest(&request(vec![
            sum("orders", true, d, vec![(0, 10, 2.0)]),
            h,
            gauge("temp", vec![kv("room", "x")]),
        ]));
        let mut held = vec![];
        s.collect(&mut held);
        for format in [Format::Text, Format::OpenMetrics] {
            let mut e = Encoder::new(format);
            e.start(0);
            s.encode_into(&mut e);
            assert_eq!(e.points(), 4);
            // One series per metric here, so table order and sorted order agree.
            assert_eq!(e.finish(), encode(&held, format).into_bytes());
        }
        // Reading does not expire; the timer's `expire` does, and frees the name and the bytes.
        let later = Instant::now() + Duration::from_secs(61);
        s.expire(later);
        let mut after = vec![];
        s.collect(&mut after);
        assert!(after.is_empty(), "{after:?}");
        assert_eq!(s.store_bytes.load(Ordering::Relaxed), 0);
        let index = s.index.lock().unwrap();
        assert!(index.claims.is_empty() && index.families.is_empty());
    }

    /// A sink that, inside the first metric, has another thread ingest into a second metric and
    /// records whether that ingest finished while the scrape was still inside the first.
    struct IngestDuringScrape {
        store: Arc<AppMetrics>,
        finished_inside: Option<bool>,
    }

    impl MetricSink for IngestDuringScrape {
        fn begin(&mut self, _: &MetricInfo<'_>) {}
        fn point(&mut self, _: &[(&str, &str)], _: u64, _: ValueRef<'_>) {
            if self.finished_inside.is_some() {
                return;
            }
            let (done, wait) = std::sync::mpsc::channel();
            let store = self.store.clone();
            std::thread::spawn(move || {
                let g = gauge("other", vec![kv("k", "v")]);
                let _ = done.send(store.ingest(&request(vec![g])).accepted);
            });
            // A loaded machine may be slow to run the thread; a blocked ingest would never finish.
            self.finished_inside = Some(wait.recv_timeout(Duration::from_secs(20)) == Ok(1));
        }
        fn end(&mut self) {}
    }

    #[test]
    fn a_scrape_inside_one_metric_does_not_hold_up_ingest_of_another() {
        let s = Arc::new(store());
        s.ingest(&request(vec![gauge("first", vec![kv("k", "v")])]));
        let mut sink = IngestDuringScrape {
            store: s.clone(),
            finished_inside: None,
        };
        s.encode_into(&mut sink);
        assert_eq!(sink.finished_inside, Some(true));
        let names: Vec<String> = collect(&s)
            .into_iter()
            .map(|m| m.name.into_owned())
            .collect();
        assert_eq!(names, ["first", "other", "target_info"]);
    }

    #[test]
    fn packed_series_keys_round_trip() {
        let labels: Labels = vec![
            ("a".into(), "".into()),
            ("k".into(), "v".repeat(300)),
            ("é".into(), "\u{0}\n\"".into()),
        ];
        let mut buf = String::new();
        pack_labels(&labels, &mut buf);
        assert_eq!(unpack_owned(&buf), labels);
        assert_eq!(
            packed_series_bytes(&buf, MetricKind::Gauge),
            series_bytes(&labels, MetricKind::Gauge)
        );
    }

    #[test]
    fn delta_sums_accumulate_once_per_window_in_any_order() {
        let s = store();
        let d = AggregationTemporality::Delta;
        s.ingest(&request(vec![sum("orders", true, d, vec![(0, 10, 2.0)])]));
        s.ingest(&request(vec![sum("orders", true, d, vec![(20, 30, 5.0)])]));
        s.ingest(&request(vec![sum("orders", true, d, vec![(10, 20, 3.0)])])); // late
        s.ingest(&request(vec![sum("orders", true, d, vec![(20, 30, 5.0)])])); // retried duplicate
        let f = collect(&s);
        let orders = f.iter().find(|f| f.name == "orders").unwrap();
        assert_eq!(orders.kind, MetricKind::Counter);
        assert_eq!(orders.points[0].value, Value::Sum(10.0));
        assert_eq!(
            orders.points[0].attributes,
            vec![
                ("k8s_pod_name".into(), "shop-1".into()),
                ("route".into(), "/a".into()),
                ("service".into(), "shop".into())
            ]
        );
    }

    #[test]
    fn cumulative_keeps_newest_and_follows_resets() {
        let s = store();
        let c = AggregationTemporality::Cumulative;
        s.ingest(&request(vec![sum("orders", true, c, vec![(0, 10, 7.0)])]));
        s.ingest(&request(vec![sum("orders", true, c, vec![(0, 5, 3.0)])])); // out of order: ignored
        assert_eq!(collect(&s)[0].points[0].value, Value::Sum(7.0));
        s.ingest(&request(vec![sum(
            "orders",
            true,
            c,
            vec![(100, 110, 1.0)],
        )])); // restart
        assert_eq!(collect(&s)[0].points[0].value, Value::Sum(1.0));
    }

    #[test]
    fn names_and_types() {
        let s = store();
        let gauge = Metric {
            name: "pool.usage".into(),
            unit: "1".into(),
            data: Some(Data::Gauge(Gauge {
                data_points: vec![NumberDataPoint {
                    value: Some(number_data_point::Value::AsInt(3)),
                    ..Default::default()
                }],
            })),
            ..Default::default()
        };
        let updown = sum(
            "queue.size",
            false,
            AggregationTemporality::Cumulative,
            vec![(0, 1, 4.0)],
        );
        let out = s.ingest(&request(vec![gauge, updown]));
        assert_eq!(
            out,
            IngestOutcome {
                accepted: 2,
                rejected: 0,
                message: String::new()
            }
        );
        let f = collect(&s);
        assert!(f
            .iter()
            .any(|f| f.name == "pool_usage_ratio" && f.kind == MetricKind::Gauge));
        assert!(f
            .iter()
            .any(|f| f.name == "queue_size" && f.kind == MetricKind::UpDownCounter));
        let info = f.iter().find(|f| f.name == "target_info").unwrap();
        assert_eq!(
            info.points[0].attributes,
            vec![
                ("k8s_pod_name".into(), "shop-1".into()),
                ("service_name".into(), "shop".into())
            ]
        );
    }

    #[test]
    fn histograms_explicit_and_exponential() {
        let s = store();
        let h = Metric {
            name: "http.server.request.duration".into(),
            unit: "s".into(),
            data: Some(Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    count: 6,
                    sum: Some(1.5),
                    bucket_counts: vec![1, 2, 3],
                    explicit_bounds: vec![0.1, 0.5],
                    time_unix_nano: 5,
                    ..Default::default()
                }],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            })),
            ..Default::default()
        };
        let e = Metric {
            name: "latency".into(),
            unit: "ms".into(),
            data: Some(Data::ExponentialHistogram(ExponentialHistogram {
                data_points: vec![ExponentialHistogramDataPoint {
                    scale: 0,
                    count: 7,
                    sum: Some(20.0),
                    zero_count: 1,
                    positive: Some(Buckets {
                        offset: 0,
                        bucket_counts: vec![2, 4],
                    }),
                    min: Some(0.0),
                    max: Some(3.5),
                    ..Default::default()
                }],
                aggregation_temporality: AggregationTemporality::Delta as i32,
            })),
            ..Default::default()
        };
        let out = s.ingest(&request(vec![h, e]));
        assert_eq!(out.rejected, 0, "{}", out.message);
        let f = collect(&s);
        let h = f
            .iter()
            .find(|f| f.name == "http_server_request_duration_seconds")
            .unwrap();
        assert_eq!(
            h.points[0].value,
            Value::Histogram {
                buckets: vec![(0.1, 1), (0.5, 3), (f64::INFINITY, 6)],
                sum: 1.5,
                count: 6,
                exemplars: vec![],
                native: None
            }
        );
        let e = f.iter().find(|f| f.name == "latency_milliseconds").unwrap();
        // scale 0: base 2; bucket 0 is (1,2], bucket 1 is (2,4]; the zero bucket ends at 0.
        assert_eq!(
            e.points[0].value,
            Value::Histogram {
                buckets: vec![(0.0, 1), (2.0, 3), (4.0, 7), (f64::INFINITY, 7)],
                sum: 20.0,
                count: 7,
                exemplars: vec![],
                // Kept exponential beside the classic form, for the protobuf exposition and the push.
                native: Some(Box::new(Exponential {
                    scale: 0,
                    zero_threshold: 0.0,
                    zero_count: 1,
                    positive: ExpBuckets {
                        offset: 0,
                        counts: vec![2, 4]
                    },
                    negative: ExpBuckets::default(),
                    min_max: Some((0.0, 3.5)),
                }))
            }
        );
    }

    #[test]
    fn bad_points_are_rejected_with_a_reason() {
        let s = store();
        let bad = Metric {
            name: "h".into(),
            data: Some(Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    count: 1,
                    bucket_counts: vec![1],
                    explicit_bounds: vec![1.0],
                    ..Default::default()
                }],
                aggregation_temporality: 2,
            })),
            ..Default::default()
        };
        let reserved = sum(
            "vitals.target.up",
            false,
            AggregationTemporality::Cumulative,
            vec![(0, 1, 1.0)],
        );
        let empty = Metric {
            name: "nothing".into(),
            ..Default::default()
        };
        let out = s.ingest(&request(vec![bad, reserved, empty]));
        assert_eq!(out.accepted, 0);
        assert_eq!(out.rejected, 3);
        assert!(out.message.contains("bucket counts"), "{}", out.message);
    }

    #[test]
    fn series_limit_overflows_and_long_values_are_cut() {
        let s = AppMetrics::new(
            AppMetricsConfig {
                series_limit: 2,
                family_limit: 10,
                ttl: Duration::from_secs(60),
                promote: vec![],
            },
            OverflowCounter::default(),
            Arc::new(crate::export::prometheus::naming::PrometheusNames),
        );
        for i in 0..5 {
            let mut m = sum(
                "hits",
                true,
                AggregationTemporality::Cumulative,
                vec![(0, 1, 1.0)],
            );
            if let Some(Data::Sum(s)) = &mut m.data {
                s.data_points[0].attributes = vec![kv("user", &format!("{i}{}", "x".repeat(5000)))];
            }
            s.ingest(&request(vec![m]));
        }
        let f = collect(&s);
        let hits = f.iter().find(|f| f.name == "hits").unwrap();
        assert_eq!(hits.points.len(), 3);
        assert!(hits.points.iter().any(
            |s| s.attributes == vec![("otel_metric_overflow".to_string(), "true".to_string())]
        ));
        assert!(hits.points[0]
            .attributes
            .iter()
            .all(|(_, v)| v.len() <= MAX_LABEL_VALUE));
    }

    #[test]
    fn reserved_and_colliding_label_names() {
        let labels = build_labels(
            &[
                kv("le", "x"),
                kv("service", "other"),
                kv("a.b", "1"),
                kv("a_b", "2"),
            ],
            &[("service".into(), "shop".into())],
            &crate::export::prometheus::naming::PrometheusNames,
            MetricKind::Histogram,
        );
        // Attributes keep their OpenTelemetry keys, ordered by the label the exposition writes (`a_b`,
        // `exported_le`, `exported_service`, `service`); the two written alike are joined under the first.
        assert_eq!(
            labels,
            vec![
                ("a.b".into(), "1;2".into()),
                ("le".into(), "x".into()),
                ("exported_service".into(), "other".into()),
                ("service".into(), "shop".into())
            ]
        );
    }

    fn gauge(name: &str, attrs: Vec<KeyValue>) -> Metric {
        Metric {
            name: name.into(),
            data: Some(Data::Gauge(Gauge {
                data_points: vec![NumberDataPoint {
                    attributes: attrs,
                    value: Some(number_data_point::Value::AsDouble(1.0)),
                    time_unix_nano: 1,
                    ..Default::default()
                }],
            })),
            ..Default::default()
        }
    }

    fn exp_point(scale: i32, zero_threshold: f64, offset: i32, counts: Vec<u64>) -> Metric {
        let count = counts.iter().sum::<u64>() + 1;
        Metric {
            name: "exp".into(),
            data: Some(Data::ExponentialHistogram(ExponentialHistogram {
                data_points: vec![ExponentialHistogramDataPoint {
                    scale,
                    count,
                    zero_count: 1,
                    zero_threshold,
                    positive: Some(Buckets {
                        offset,
                        bucket_counts: counts,
                    }),
                    time_unix_nano: 1,
                    ..Default::default()
                }],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            })),
            ..Default::default()
        }
    }

    /// The `le` bounds of a family's first series.
    fn bucket_bounds(f: &crate::model::Metric) -> Vec<f64> {
        match &f.points[0].value {
            Value::Histogram { buckets, .. } => buckets.iter().map(|(b, _)| *b).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn colliding_names_are_refused_with_a_partial_success() {
        let s = store();
        let out = s.ingest(&request(vec![
            sum(
                "collide",
                true,
                AggregationTemporality::Cumulative,
                vec![(0, 1, 1.0)],
            ),
            gauge("collide total", vec![]),
        ]));
        assert_eq!((out.accepted, out.rejected), (1, 1), "{}", out.message);
        assert!(out.message.contains("collide_total"), "{}", out.message);
        // A gauge that would forge the `_count` series of histogram `hcol`, and the other order.
        let h = |name: &str| Metric {
            name: name.into(),
            data: Some(Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    count: 1,
                    bucket_counts: vec![1],
                    time_unix_nano: 1,
                    ..Default::default()
                }],
                aggregation_temporality: 2,
            })),
            ..Default::default()
        };
        let out = s.ingest(&request(vec![
            h("hcol"),
            gauge("hcol.count", vec![]),
            gauge("hcol bucket", vec![kv("le", "1")]),
        ]));
        assert_eq!((out.accepted, out.rejected), (1, 2), "{}", out.message);
        let s2 = store();
        let out = s2.ingest(&request(vec![gauge("h2.sum", vec![]), h("h2")]));
        assert_eq!((out.accepted, out.rejected), (1, 1), "{}", out.message);
        // Reserved names: vitals' own families and target_info.
        let out = s2.ingest(&request(vec![
            gauge("vitals.x", vec![]),
            gauge("target.info", vec![]),
        ]));
        assert_eq!(out.rejected, 2);
        let names: Vec<String> = collect(&s).iter().map(|f| f.name.to_string()).collect();
        assert_eq!(names, ["collide", "hcol", "target_info"]);
    }

    #[test]
    fn app_process_metrics_stay_out_of_the_target_families() {
        let s = store();
        let out = s.ingest(&request(vec![
            Metric {
                unit: "By".into(),
                ..gauge("process.memory.usage", vec![])
            },
            sum(
                "process.runtime.go.gc.count",
                true,
                AggregationTemporality::Cumulative,
                vec![(0, 1, 1.0)],
            ),
        ]));
        assert_eq!(out.rejected, 0, "{}", out.message);
        let names: Vec<String> = collect(&s).iter().map(|f| f.name.to_string()).collect();
        assert_eq!(
            names,
            [
                "app_process_memory_usage_bytes",
                "process_runtime_go_gc_count",
                "target_info"
            ]
        );
    }

    #[test]
    fn reserved_label_names_from_points_and_resources_are_renamed() {
        let s = store();
        let mut req = request(vec![gauge(
            "g",
            vec![kv("__name__", "x"), kv("__meta", "y")],
        )]);
        if let Some(r) = req.resource_metrics[0].resource.as_mut() {
            r.attributes.push(kv("__name__", "z"));
        }
        assert_eq!(s.ingest(&req).rejected, 0);
        for f in collect(&s) {
            for series in &f.points {
                assert!(
                    series.attributes.iter().all(|(k, _)| !k.starts_with("__")),
                    "{}: {:?}",
                    f.name,
                    series.attributes
                );
            }
        }
    }

    #[test]
    fn exponential_buckets_never_repeat_a_bound() {
        // Offsets so far out that the bounds underflow to 0 (and repeat), then a zero threshold equal
        // to a bucket bound (1.0 is the upper bound of bucket -1 at scale 0).
        for m in [
            exp_point(20, 0.0, -1_500_000_000, vec![1, 1, 1]),
            exp_point(0, 1.0, -2, vec![1, 1, 1]),
            exp_point(0, 0.0, 2000, vec![1, 1]),
        ] {
            let s = store();
            let out = s.ingest(&request(vec![m]));
            assert_eq!(out.rejected, 0, "{}", out.message);
            let f = collect(&s);
            let bounds = bucket_bounds(&f[0]);
            let mut sorted = bounds.clone();
            sorted.dedup();
            assert_eq!(bounds, sorted, "repeated le in {bounds:?}");
            match &f[0].points[0].value {
                Value::Histogram { buckets, count, .. } => {
                    assert_eq!(
                        buckets.last().map(|b| b.1),
                        Some(*count),
                        "+Inf holds the count"
                    )
                }
                _ => unreachable!(),
            }
        }
    }

    #[test]
    fn inconsistent_points_and_wrapping_counts_are_refused() {
        let s = store();
        let h = |count: u64, buckets: Vec<u64>| Metric {
            name: "h".into(),
            data: Some(Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    count,
                    bucket_counts: buckets,
                    explicit_bounds: vec![1.0],
                    time_unix_nano: 1,
                    ..Default::default()
                }],
                aggregation_temporality: 2,
            })),
            ..Default::default()
        };
        // Count differs from the buckets; buckets whose sum wraps u64 (9.2e18 + 9.2e18 + 2).
        let big = 1u64 << 63;
        let out = s.ingest(&request(vec![h(5, vec![1, 2]), h(2, vec![big, big + 2])]));
        assert_eq!(out.rejected, 2, "{}", out.message);
        assert!(out.message.contains("differs"), "{}", out.message);
        // Delta windows that add up past u64::MAX saturate rather than wrap.
        let d = |start: u64| Metric {
            data: Some(Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    count: big,
                    bucket_counts: vec![big, 0],
                    explicit_bounds: vec![1.0],
                    start_time_unix_nano: start,
                    time_unix_nano: start + 1,
                    ..Default::default()
                }],
                aggregation_temporality: AggregationTemporality::Delta as i32,
            })),
            ..h(0, vec![])
        };
        let out = s.ingest(&request(vec![d(1), d(2), d(3)]));
        assert_eq!(out.rejected, 0, "{}", out.message);
        match &collect(&s)[0].points[0].value {
            Value::Histogram { buckets, count, .. } => {
                assert_eq!(*count, u64::MAX);
                assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
                assert_eq!(buckets.last().map(|b| b.1), Some(u64::MAX));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn repeated_or_invalid_quantiles_are_refused() {
        use opentelemetry_proto::tonic::metrics::v1::{
            summary_data_point::ValueAtQuantile, Summary,
        };
        let q = |qs: &[f64]| Metric {
            name: "s".into(),
            data: Some(Data::Summary(Summary {
                data_points: vec![SummaryDataPoint {
                    quantile_values: qs
                        .iter()
                        .map(|q| ValueAtQuantile {
                            quantile: *q,
                            value: 1.0,
                        })
                        .collect(),
                    time_unix_nano: 1,
                    ..Default::default()
                }],
            })),
            ..Default::default()
        };
        let s = store();
        let out = s.ingest(&request(vec![
            q(&[0.5, 0.5]),
            q(&[1.5]),
            q(&[f64::NAN]),
            q(&[0.9, 0.5]),
        ]));
        assert_eq!((out.accepted, out.rejected), (1, 3), "{}", out.message);
    }

    #[test]
    fn store_bytes_are_bounded_across_label_sets() {
        let s = AppMetrics::new(
            AppMetricsConfig {
                series_limit: 5000,
                family_limit: 100,
                ttl: Duration::from_secs(60),
                promote: vec![],
            },
            OverflowCounter::default(),
            Arc::new(crate::export::prometheus::naming::PrometheusNames),
        );
        let value = "v".repeat(1000);
        for i in 0..1000 {
            let mut attrs: Vec<KeyValue> = (0..60).map(|k| kv(&format!("k{k}"), &value)).collect();
            attrs.push(kv("i", &i.to_string()));
            assert_eq!(s.ingest(&request(vec![gauge("wide", attrs)])).rejected, 0);
        }
        let f = collect(&s);
        let wide = f.iter().find(|f| f.name == "wide").unwrap();
        let stored = wide.points.len() - 1;
        let per_series = 60 * (1000 + 3 + 80) + 200;
        assert!(
            stored * per_series <= MAX_STORE_BYTES && stored > 300,
            "{stored} series of ~{per_series} bytes"
        );
        assert!(wide
            .points
            .iter()
            .any(|x| x.attributes.iter().any(|(k, _)| k == OVERFLOW_LABEL.0)));
    }
}
