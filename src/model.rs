//! The neutral model of what vitals holds: metrics with their OpenTelemetry identity (name, unit, kind,
//! temporality, start time), attributes and points. Every producer writes it and every exporter reads it;
//! Prometheus naming (suffixes, `_total`, label-name rules) is applied only by the Prometheus exporter, and
//! an OTLP exporter reads the same values without reversing anything.

use std::borrow::Cow;
use std::sync::{Arc, RwLock};

pub mod exponential;

pub use self::exponential::Exponential;

/// What kind of instrument a metric is, in OpenTelemetry terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricKind {
    /// A monotonic cumulative sum (OTLP `Sum`, `is_monotonic`).
    Counter,
    /// A sum that may go down (OTLP `Sum`, not monotonic); exposed as a gauge where only gauges exist.
    UpDownCounter,
    /// The latest reading of a value.
    Gauge,
    /// Cumulative explicit-bucket histogram with sum and count.
    Histogram,
    /// Quantiles with sum and count.
    Summary,
}

/// Aggregation temporality of a metric's points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Temporality {
    /// Each point covers the time from its start time to its time.
    Cumulative,
}

impl MetricKind {
    /// The temporality points of this kind carry; `None` for gauges and summaries, which have none. vitals
    /// accumulates the app's delta points at ingest, so what it holds is always cumulative.
    pub fn temporality(self) -> Option<Temporality> {
        match self {
            MetricKind::Counter | MetricKind::UpDownCounter | MetricKind::Histogram => {
                Some(Temporality::Cumulative)
            }
            MetricKind::Gauge | MetricKind::Summary => None,
        }
    }
}

/// One exemplar: an observation that points at a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Exemplar {
    /// Exemplar attributes (`trace_id`, `span_id`).
    pub attributes: Vec<(String, String)>,
    /// The observed value.
    pub value: f64,
    /// Unix time of the observation, in seconds.
    pub timestamp: Option<f64>,
}

/// The value of one point.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A cumulative sum (monotonic or not).
    Sum(f64),
    /// A monotonic cumulative sum with the exemplar of its latest increment (the trace of the latest
    /// N+1 run); exporters that carry no exemplars read it as [`Value::Sum`].
    SumWithExemplar(f64, Exemplar),
    /// A gauge reading.
    Gauge(f64),
    /// Cumulative buckets: `(upper bound, cumulative count)` ascending, the last bound `+Inf`.
    Histogram {
        /// Cumulative buckets.
        buckets: Vec<(f64, u64)>,
        /// Sum of observations.
        sum: f64,
        /// Count of observations.
        count: u64,
        /// One optional exemplar per bucket, same order as `buckets` (may be empty).
        exemplars: Vec<Option<Exemplar>>,
        /// The same observations in exponential buckets, where the source keeps them (RED, the app's
        /// exponential histograms): exporters that carry them (Prometheus native histograms, OTLP
        /// exponential histograms) prefer them to `buckets`.
        native: Option<Box<Exponential>>,
    },
    /// `(quantile, value)` pairs with sum and count.
    Summary {
        /// Quantile values.
        quantiles: Vec<(f64, f64)>,
        /// Sum of observations.
        sum: f64,
        /// Count of observations.
        count: u64,
    },
}

/// One point of a metric: its attributes, when its cumulative value started, and the value.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Attribute pairs as OpenTelemetry spells them (`http.route`); values raw, exporters escape them.
    pub attributes: Vec<(String, String)>,
    /// Start of the cumulative value, Unix nanoseconds; 0 when unknown (gauges, or an SDK that sent none).
    pub start_unix_nanos: u64,
    /// The value.
    pub value: Value,
}

/// Where a metric comes from. The app's metrics keep their own names, so the app's `process.cpu.time` and
/// the one vitals reads from procfs are two metrics of one name; exporters keep them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Origin {
    /// Written by vitals: the target's readings, derived signals, vitals' own health.
    #[default]
    Vitals,
    /// Passed through from the app's OTLP metrics.
    App,
}

/// How an exporter will write metric and attribute names. Stores that take names from outside ask it when
/// a metric or attribute is first seen, so a metric whose written names would collide with another's is
/// refused at ingest (with a partial success) rather than breaking an exposition later. Implemented by the
/// exporters; nothing else knows their naming.
pub trait NameRules: Send + Sync {
    /// The sample names a metric writes, or why it may not be written.
    fn metric_names(
        &self,
        name: &str,
        unit: &str,
        kind: MetricKind,
        origin: Origin,
    ) -> Result<Vec<String>, String>;

    /// The key an attribute is written under on a metric of `kind`; two attributes of one point whose keys
    /// are written alike are one attribute to the store.
    fn attribute_key<'a>(&self, key: &'a str, kind: MetricKind) -> Cow<'a, str>;
}

/// A metric: its identity and its points.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// OpenTelemetry name (`vitals.gc.pause`, `process.cpu.time`, or the app's own); borrowed for
    /// vitals' own metrics, whose names and descriptions are the catalogue's (no copy per gather).
    pub name: Cow<'static, str>,
    /// One line describing it.
    pub description: Cow<'static, str>,
    /// UCUM unit (`s`, `By`, `1`, `{pause}`), empty when it has none.
    pub unit: Cow<'static, str>,
    /// Kind of instrument.
    pub kind: MetricKind,
    /// Who wrote it.
    pub origin: Origin,
    /// The points.
    pub points: Vec<Point>,
}

impl Metric {
    /// A new metric with no points.
    pub fn new(
        name: impl Into<Cow<'static, str>>,
        description: impl Into<Cow<'static, str>>,
        unit: impl Into<Cow<'static, str>>,
        kind: MetricKind,
    ) -> Self {
        Metric {
            name: name.into(),
            description: description.into(),
            unit: unit.into(),
            kind,
            origin: Origin::Vitals,
            points: Vec::new(),
        }
    }

    /// The same metric marked as passed through from the app.
    pub fn from_app(mut self) -> Self {
        self.origin = Origin::App;
        self
    }

    /// Adds a point with the given attributes and value (start unknown), returning self for chaining.
    pub fn with(mut self, attributes: &[(&str, &str)], value: Value) -> Self {
        self.push(attributes, value);
        self
    }

    /// Adds a point with the given attributes and value (start unknown).
    pub fn push(&mut self, attributes: &[(&str, &str)], value: Value) {
        self.push_started(attributes, 0, value);
    }

    /// Adds a point whose cumulative value started at `start_unix_nanos`.
    pub fn push_started(
        &mut self,
        attributes: &[(&str, &str)],
        start_unix_nanos: u64,
        value: Value,
    ) {
        let attributes = attributes
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.points.push(Point {
            attributes,
            start_unix_nanos,
            value,
        });
    }
}

/// A metric's identity as a [`MetricSink`] sees it, borrowed from wherever it is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricInfo<'a> {
    /// OpenTelemetry name.
    pub name: &'a str,
    /// One line describing it.
    pub description: &'a str,
    /// UCUM unit, empty when it has none.
    pub unit: &'a str,
    /// Kind of instrument.
    pub kind: MetricKind,
    /// Who wrote it.
    pub origin: Origin,
}

impl MetricInfo<'_> {
    /// A new metric of this identity with no points, its names copied.
    pub fn to_metric(&self) -> Metric {
        let mut m = Metric::new(
            self.name.to_owned(),
            self.description.to_owned(),
            self.unit.to_owned(),
            self.kind,
        );
        m.origin = self.origin;
        m
    }
}

impl MetricInfo<'static> {
    /// A new metric of this identity with no points, its names borrowed (a catalogue entry's).
    pub fn borrowed_metric(&self) -> Metric {
        let mut m = Metric::new(self.name, self.description, self.unit, self.kind);
        m.origin = self.origin;
        m
    }
}

impl Metric {
    /// This metric's identity, borrowed.
    pub fn info(&self) -> MetricInfo<'_> {
        MetricInfo {
            name: &self.name,
            description: &self.description,
            unit: &self.unit,
            kind: self.kind,
            origin: self.origin,
        }
    }
}

/// Histogram bucket counts as a store holds them: `(upper bound, count)` ascending, the last bound `+Inf`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BucketCounts<'a> {
    /// Each count includes every lower bucket's (the exposition form).
    Cumulative(&'a [(f64, u64)]),
    /// Each count is its bucket's alone; readers accumulate them, saturating rather than wrapping.
    PerBucket(&'a [(f64, u64)]),
}

impl BucketCounts<'_> {
    /// Calls `f(index, upper bound, cumulative count)` for each bucket in order.
    pub fn for_each_cumulative(self, mut f: impl FnMut(usize, f64, u64)) {
        match self {
            BucketCounts::Cumulative(b) => {
                for (i, (le, c)) in b.iter().enumerate() {
                    f(i, *le, *c)
                }
            }
            BucketCounts::PerBucket(b) => {
                let mut cum = 0u64;
                for (i, (le, c)) in b.iter().enumerate() {
                    cum = cum.saturating_add(*c);
                    f(i, *le, cum)
                }
            }
        }
    }
}

/// A point's value borrowed from where it is held, as a [`MetricSink`] receives it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    /// A cumulative sum (monotonic or not).
    Sum(f64),
    /// A monotonic cumulative sum with the exemplar of its latest increment.
    SumWithExemplar(f64, &'a Exemplar),
    /// A gauge reading.
    Gauge(f64),
    /// Buckets with sum, count and one optional exemplar per bucket (may be empty).
    Histogram {
        /// The buckets.
        buckets: BucketCounts<'a>,
        /// Sum of observations.
        sum: f64,
        /// Count of observations.
        count: u64,
        /// One optional exemplar per bucket, same order as `buckets` (may be empty).
        exemplars: &'a [Option<Exemplar>],
        /// The same observations in exponential buckets, where the source keeps them.
        native: Option<&'a Exponential>,
    },
    /// `(quantile, value)` pairs with sum and count.
    Summary {
        /// Quantile values.
        quantiles: &'a [(f64, f64)],
        /// Sum of observations.
        sum: f64,
        /// Count of observations.
        count: u64,
    },
}

impl<'a> From<&'a Value> for ValueRef<'a> {
    fn from(v: &'a Value) -> Self {
        match v {
            Value::Sum(x) => ValueRef::Sum(*x),
            Value::SumWithExemplar(x, e) => ValueRef::SumWithExemplar(*x, e),
            Value::Gauge(x) => ValueRef::Gauge(*x),
            Value::Histogram {
                buckets,
                sum,
                count,
                exemplars,
                native,
            } => ValueRef::Histogram {
                buckets: BucketCounts::Cumulative(buckets),
                sum: *sum,
                count: *count,
                exemplars,
                native: native.as_deref(),
            },
            Value::Summary {
                quantiles,
                sum,
                count,
            } => ValueRef::Summary {
                quantiles,
                sum: *sum,
                count: *count,
            },
        }
    }
}

/// Where a collector streams its metrics: an exporter's encoder, reading borrowed views under the
/// collector's own short lock, so nothing is cloned. Calls come as `begin`, any number of `point`s,
/// `end`, per metric; each metric name (per origin) at most once per collector.
pub trait MetricSink {
    /// Whether this sink keeps a metric of this identity: a collector may leave out (or not compute) one
    /// it does not, and must still call `begin` for those it writes. A filtering gather says no to
    /// most of vitals' own families, so the collectors streaming them skip their work.
    fn wants(&self, _metric: &MetricInfo<'_>) -> bool {
        true
    }
    /// A metric starts; its points follow.
    fn begin(&mut self, metric: &MetricInfo<'_>);
    /// [`MetricSink::begin`] for an identity that lives for the whole run (a catalogue entry's): a
    /// sink that keeps the names can borrow them instead of copying.
    fn begin_static(&mut self, metric: &MetricInfo<'static>) {
        self.begin(metric);
    }
    /// One point of the current metric: attributes as `(OpenTelemetry key, raw value)`.
    fn point(&mut self, attributes: &[(&str, &str)], start_unix_nanos: u64, value: ValueRef<'_>);
    /// The current metric has no more points.
    fn end(&mut self);
}

/// Builds owned metrics from what a collector streams: [`Collector::collect`] for collectors that
/// stream, so [`Registry::gather`] and wrappers such as [`Attributed`] read them as before.
pub struct Collecting<'a>(pub &'a mut Vec<Metric>);

impl MetricSink for Collecting<'_> {
    fn begin(&mut self, m: &MetricInfo<'_>) {
        self.0.push(m.to_metric());
    }

    fn begin_static(&mut self, m: &MetricInfo<'static>) {
        self.0.push(m.borrowed_metric());
    }

    fn point(&mut self, attributes: &[(&str, &str)], start_unix_nanos: u64, value: ValueRef<'_>) {
        if let Some(m) = self.0.last_mut() {
            m.push_started(attributes, start_unix_nanos, value.to_owned());
        }
    }

    fn end(&mut self) {}
}

/// A collector that streams its metrics from what it holds (borrowed views under its own short lock,
/// nothing built per scrape): it writes them once, in [`Streaming::write`], and is a [`Collector`]
/// whose `collect` builds owned copies from the same writing ([`Collecting`]), so [`Registry::gather`]
/// and wrappers such as [`Attributed`] read it as before.
pub trait Streaming: Send + Sync {
    /// Writes this collector's current metrics into `sink`, each through [`write_metric`].
    fn write(&self, sink: &mut dyn MetricSink);
}

impl<T: Streaming> Collector for T {
    fn collect(&self, out: &mut Vec<Metric>) {
        self.write(&mut Collecting(out));
    }

    fn streams(&self) -> bool {
        true
    }

    fn encode_into(&self, sink: &mut dyn MetricSink) {
        self.write(sink);
    }
}

/// Writes one metric of a streaming collector into `sink` when the sink wants it: `begin`, the points
/// `points` writes, `end`.
pub fn write_metric(
    sink: &mut dyn MetricSink,
    info: &MetricInfo<'static>,
    points: impl FnOnce(&mut dyn MetricSink),
) {
    if sink.wants(info) {
        sink.begin_static(info);
        points(sink);
        sink.end();
    }
}

/// Streams owned metrics into `sink`, the default for collectors that build them.
pub fn stream_metrics(metrics: &[Metric], sink: &mut dyn MetricSink) {
    let mut attrs: Vec<(&str, &str)> = Vec::new();
    for m in metrics {
        sink.begin(&m.info());
        stream_points(&m.points, &mut attrs, sink);
        sink.end();
    }
}

fn stream_points<'a>(
    points: &'a [Point],
    attrs: &mut Vec<(&'a str, &'a str)>,
    sink: &mut dyn MetricSink,
) {
    for p in points {
        attrs.clear();
        attrs.extend(p.attributes.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        sink.point(attrs, p.start_unix_nanos, ValueRef::from(&p.value));
    }
}

/// Anything that contributes metrics to what exporters read.
pub trait Collector: Send + Sync {
    /// Appends this collector's current metrics to `out` (owned copies). Reading does not change what is
    /// held: expiry runs on its own clock.
    fn collect(&self, out: &mut Vec<Metric>);

    /// True when [`Collector::encode_into`] streams from the held data rather than collecting: the
    /// registry then streams this collector's metrics instead of merging copies of them.
    fn streams(&self) -> bool {
        false
    }

    /// Streams this collector's current metrics into `sink`. The default collects and streams the copies;
    /// collectors holding many points override it (and [`Collector::streams`]) to stream borrowed views.
    fn encode_into(&self, sink: &mut dyn MetricSink) {
        let mut out = Vec::new();
        self.collect(&mut out);
        stream_metrics(&out, sink);
    }

    /// The origin every metric of this collector has, when they share one: a gather of the other
    /// origin passes it by without reading it (or taking its locks).
    fn origin(&self) -> Option<Origin> {
        None
    }
}

/// A collector whose every point carries one more attribute first: each target of a sidecar watching
/// several labels its families with `target="NAME"`, so one family holds every target's series.
pub struct Attributed {
    inner: Arc<dyn Collector>,
    key: &'static str,
    value: String,
}

impl Attributed {
    /// Wraps `inner`, adding `key="value"` to each of its points.
    pub fn new(inner: Arc<dyn Collector>, key: &'static str, value: &str) -> Self {
        Attributed {
            inner,
            key,
            value: value.to_owned(),
        }
    }
}

impl Collector for Attributed {
    fn collect(&self, out: &mut Vec<Metric>) {
        let from = out.len();
        self.inner.collect(out);
        for m in &mut out[from..] {
            for p in &mut m.points {
                p.attributes
                    .insert(0, (self.key.to_owned(), self.value.clone()));
            }
        }
    }

    fn origin(&self) -> Option<Origin> {
        self.inner.origin()
    }
}

/// The set of collectors exporters read, in registration order.
#[derive(Default, Clone)]
pub struct Registry {
    collectors: Arc<RwLock<Vec<Arc<dyn Collector>>>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a collector.
    pub fn register(&self, collector: Arc<dyn Collector>) {
        let mut guard = self.collectors.write().unwrap_or_else(|p| p.into_inner());
        guard.push(collector);
    }

    fn collectors(&self) -> Vec<Arc<dyn Collector>> {
        self.collectors
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Every collector's metrics. Metrics of the same name and origin from two collectors are merged, so a
    /// name appears once in any exposition; a kind clash between two collectors keeps the first.
    pub fn gather(&self) -> Vec<Metric> {
        let mut out = Vec::new();
        for c in &self.collectors() {
            c.collect(&mut out);
        }
        merge_same_names(out)
    }

    /// The metrics `keep` accepts, in [`Registry::gather`]'s order, merged by [`Kept`]'s rules, without
    /// building the rest: a small collector's metrics are collected and the kept ones moved (no name
    /// index over all of them, no copy), a streaming collector's kept ones copied as they stream (the live
    /// page reads vitals' own metrics without copying the app's tens of thousands of series).
    pub fn gather_where(&self, keep: impl Fn(&MetricInfo<'_>) -> bool) -> Vec<Metric> {
        let mut gathered = Gathered::default();
        self.gather_where_into(&mut gathered, None, keep);
        gathered.metrics
    }

    /// [`Registry::gather_where`] into the last gather's families: a family and a point that come again
    /// (same identity, same attributes, in the same order) are written over in place, so a gather of
    /// an unchanged set of series allocates nothing for the streamed ones (the gather after each
    /// reading copied every point's attribute strings, and freed the last copy: two thirds of its
    /// instructions). With `origin`, only metrics of that origin are kept, and a collector whose metrics
    /// are all of the other ([`Collector::origin`]) is not read at all: the gather after each reading
    /// takes none of the app store's locks, which a render of its tens of thousands of series holds in
    /// turn on a thread of lower priority.
    pub fn gather_where_into(
        &self,
        into: &mut Gathered,
        origin: Option<Origin>,
        keep: impl Fn(&MetricInfo<'_>) -> bool,
    ) {
        for index in &mut into.index {
            index.clear();
        }
        let mut kept = Kept {
            keep: |m: &MetricInfo<'_>| origin.is_none_or(|o| o == m.origin) && keep(m),
            out: &mut into.metrics,
            len: 0,
            index: &mut into.index,
            copying: None,
        };
        let mut small = Vec::new();
        for c in &self.collectors() {
            if origin.is_some_and(|o| c.origin().is_some_and(|mine| mine != o)) {
                continue;
            }
            if c.streams() {
                c.encode_into(&mut kept);
            } else {
                c.collect(&mut small);
                for m in small.drain(..) {
                    if (kept.keep)(&m.info()) {
                        kept.add(m);
                    }
                }
            }
        }
        kept.finish_copy();
        let len = kept.len;
        into.metrics.truncate(len);
    }

    /// Streams every collector's metrics into `sink`, in the order [`Registry::gather`] returns them and
    /// with the same guarantee: a name (per origin) is begun once. Small collectors' metrics are collected
    /// and merged first; a streaming collector's metric of a name they also hold gets their points
    /// appended (same kind) before it ends; a streamed name already written is left out, as a kind clash is.
    pub fn encode_into(&self, sink: &mut dyn MetricSink) {
        let collectors = self.collectors();
        let mut small = Vec::new();
        let mut owner = Vec::new();
        for (i, c) in collectors.iter().enumerate() {
            if !c.streams() {
                c.collect(&mut small);
                owner.resize(small.len(), i);
            }
        }
        let (merged, first_owner) = merge_with_owners(small, owner);
        let mut merger = Merger {
            sink,
            small: &merged,
            index: merged
                .iter()
                .enumerate()
                .map(|(i, m)| ((m.origin, &*m.name), i))
                .collect(),
            written: vec![false; merged.len()],
            // Vitals' own families number about a hundred: no regrowth on the way.
            streamed: [
                FastSet::with_capacity_and_hasher(128, Default::default()),
                FastSet::default(),
            ],
            current: None,
            skipping: false,
        };
        for (i, c) in collectors.iter().enumerate() {
            if c.streams() {
                c.encode_into(&mut merger);
            } else {
                for (j, _) in first_owner.iter().enumerate().filter(|(_, o)| **o == i) {
                    merger.write_small(j);
                }
            }
        }
    }
}

/// A hash map for short keys built and read on every scrape or reading (family names): foldhash, the
/// hasher hashbrown picks by default, costs a fraction of std's SipHash per name, and its random
/// per-map seed keeps colliding names unguessable from outside.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The set of [`FastMap`].
pub type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// The families a repeated [`Registry::gather_where_into`] keeps, and what it reuses from one gather to
/// the next.
#[derive(Default)]
pub struct Gathered {
    /// The families the last gather kept, in [`Registry::gather`]'s order.
    pub metrics: Vec<Metric>,
    /// Where each name is in `metrics`: vitals' own, then the app's.
    index: [FastMap<Cow<'static, str>, usize>; 2],
}

/// Builds the metrics a filter keeps. The first of a name (per origin) stays; a collected one of the same
/// kind adds its points to it, one of another kind is left out; a streamed one of a name already held is
/// left out (as [`Registry::encode_into`] leaves out a second streamer's repeat). Where collectors clash
/// on a name's kind, the first one's kind decides, as in [`Registry::gather`]. `out` holds the last
/// gather's families past `len`: a family or point that comes again in the same place is written over.
struct Kept<'g, F> {
    keep: F,
    out: &'g mut Vec<Metric>,
    /// How many families of `out` this gather has written.
    len: usize,
    /// Where each name held is in `out`: vitals' own, then the app's (a catalogue entry's name
    /// borrowed).
    index: &'g mut [FastMap<Cow<'static, str>, usize>; 2],
    /// The streamed metric being copied, and how many of its points this gather has written.
    copying: Option<(usize, usize)>,
}

/// Whether a held point's attributes are `attributes`.
fn same_attributes(held: &[(String, String)], attributes: &[(&str, &str)]) -> bool {
    held.len() == attributes.len()
        && held
            .iter()
            .zip(attributes)
            .all(|((k, v), (k2, v2))| k == k2 && v == v2)
}

impl<F> Kept<'_, F> {
    /// Ends the copy of a streamed metric: points of the last gather it did not write again go.
    fn finish_copy(&mut self) {
        if let Some((i, k)) = self.copying.take() {
            if let Some(m) = self.out.get_mut(i) {
                m.points.truncate(k);
            }
        }
    }

    /// Places a family at `len`: a `new` one before the last gather's there (so the rest still line
    /// up when a family came), else the one there (the same family, reused).
    fn place(&mut self, new: Option<Metric>) -> usize {
        let i = self.len;
        if let Some(m) = new {
            self.out.insert(i, m);
        }
        self.index[origin_slot(self.out[i].origin)].insert(self.out[i].name.clone(), i);
        self.len += 1;
        i
    }

    /// Whether the last gather's family at `len` has this identity.
    fn comes_again(&self, info: &MetricInfo<'_>) -> bool {
        self.out.get(self.len).is_some_and(|m| m.info() == *info)
    }

    /// Holds a streamed metric, its points to follow (the previous one's copy finished by the caller).
    fn hold(&mut self, info: &MetricInfo<'_>, m: impl FnOnce() -> Metric) {
        let new = (!self.comes_again(info)).then(m);
        let i = self.place(new);
        self.copying = Some((i, 0));
    }

    /// Adds a collected metric, or its points to the held one of its name (same kind only).
    fn add(&mut self, m: Metric) {
        self.finish_copy();
        match self.index[origin_slot(m.origin)].get(&*m.name) {
            Some(&i) => {
                let held = &mut self.out[i];
                if held.kind == m.kind {
                    held.points.extend(m.points);
                }
            }
            None => {
                if self.comes_again(&m.info()) {
                    self.out[self.len] = m;
                    self.place(None);
                } else {
                    self.place(Some(m));
                }
            }
        }
    }
}

impl<F: Fn(&MetricInfo<'_>) -> bool> MetricSink for Kept<'_, F> {
    fn wants(&self, m: &MetricInfo<'_>) -> bool {
        (self.keep)(m) && !self.index[origin_slot(m.origin)].contains_key(m.name)
    }

    fn begin(&mut self, m: &MetricInfo<'_>) {
        self.finish_copy();
        if self.wants(m) {
            self.hold(m, || m.to_metric());
        }
    }

    fn begin_static(&mut self, m: &MetricInfo<'static>) {
        self.finish_copy();
        if self.wants(m) {
            self.hold(m, || m.borrowed_metric());
        }
    }

    fn point(&mut self, attributes: &[(&str, &str)], start_unix_nanos: u64, value: ValueRef<'_>) {
        let Some((i, k)) = self.copying.as_mut() else {
            return;
        };
        let Some(m) = self.out.get_mut(*i) else {
            return;
        };
        match m.points.get_mut(*k) {
            Some(p) if same_attributes(&p.attributes, attributes) => {
                p.start_unix_nanos = start_unix_nanos;
                value.write_to(&mut p.value);
            }
            _ => {
                let attributes = attributes
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect();
                m.points.insert(
                    *k,
                    Point {
                        attributes,
                        start_unix_nanos,
                        value: value.to_owned(),
                    },
                );
            }
        }
        *k += 1;
    }

    fn end(&mut self) {
        self.finish_copy();
    }
}

impl ValueRef<'_> {
    /// Writes this value over `into`, reusing its buffers where it holds a histogram already.
    pub fn write_to(self, into: &mut Value) {
        if let (
            ValueRef::Histogram {
                buckets,
                sum,
                count,
                exemplars,
                native,
            },
            Value::Histogram {
                buckets: b,
                sum: s,
                count: c,
                exemplars: e,
                native: n,
            },
        ) = (self, &mut *into)
        {
            b.clear();
            buckets.for_each_cumulative(|_, le, cumulative| b.push((le, cumulative)));
            *s = sum;
            *c = count;
            e.clear();
            e.extend_from_slice(exemplars);
            match (native, n.as_mut()) {
                (Some(x), Some(held)) => (**held).clone_from(x),
                (x, _) => *n = x.map(|x| Box::new(x.clone())),
            }
            return;
        }
        *into = self.to_owned();
    }

    /// An owned copy of the value (histogram buckets cumulative).
    pub fn to_owned(self) -> Value {
        match self {
            ValueRef::Sum(v) => Value::Sum(v),
            ValueRef::SumWithExemplar(v, e) => Value::SumWithExemplar(v, e.clone()),
            ValueRef::Gauge(v) => Value::Gauge(v),
            ValueRef::Histogram { .. } => {
                // Filled by write_to, the one place that copies a histogram's buffers.
                let mut h = Value::Histogram {
                    buckets: Vec::new(),
                    sum: 0.0,
                    count: 0,
                    exemplars: Vec::new(),
                    native: None,
                };
                self.write_to(&mut h);
                h
            }
            ValueRef::Summary {
                quantiles,
                sum,
                count,
            } => Value::Summary {
                quantiles: quantiles.to_vec(),
                sum,
                count,
            },
        }
    }
}

/// The slot of `origin` in the per-origin name sets of [`Merger`] and [`Kept`].
fn origin_slot(origin: Origin) -> usize {
    match origin {
        Origin::Vitals => 0,
        Origin::App => 1,
    }
}

/// Joins streamed metrics with the merged small ones so each name is begun once.
struct Merger<'s, 'm> {
    sink: &'s mut dyn MetricSink,
    small: &'m [Metric],
    index: FastMap<(Origin, &'m str), usize>,
    written: Vec<bool>,
    /// Names begun by streaming collectors: vitals' own, then the app's (a catalogue entry's name
    /// borrowed).
    streamed: [FastSet<Cow<'static, str>>; 2],
    /// The small metric whose points join the streamed one being written.
    current: Option<usize>,
    skipping: bool,
}

impl Merger<'_, '_> {
    fn write_small(&mut self, j: usize) {
        if self.written[j] {
            return;
        }
        self.written[j] = true;
        let m = &self.small[j];
        if self.streamed[origin_slot(m.origin)].contains(&*m.name) {
            return;
        }
        stream_metrics(std::slice::from_ref(m), self.sink);
    }
}

impl Merger<'_, '_> {
    /// Whether a streamed metric is written (not a repeat of a name already written); records its
    /// name (`name()`) and the small metric whose points join it.
    fn open(&mut self, metric: &MetricInfo<'_>, name: impl FnOnce() -> Cow<'static, str>) -> bool {
        let small = self.index.get(&(metric.origin, metric.name)).copied();
        // A name written before is not written again: one hash for the look-up and the insert (a
        // repeated streamed name, rare, builds its key for nothing).
        self.skipping = small.is_some_and(|j| self.written[j])
            || !self.streamed[origin_slot(metric.origin)].insert(name());
        if self.skipping {
            return false;
        }
        self.current = small.filter(|&j| self.small[j].kind == metric.kind);
        if let Some(j) = small {
            self.written[j] = true;
        }
        true
    }
}

impl MetricSink for Merger<'_, '_> {
    fn begin(&mut self, metric: &MetricInfo<'_>) {
        if self.open(metric, || Cow::Owned(metric.name.to_owned())) {
            self.sink.begin(metric);
        }
    }

    fn begin_static(&mut self, metric: &MetricInfo<'static>) {
        if self.open(metric, || Cow::Borrowed(metric.name)) {
            self.sink.begin_static(metric);
        }
    }

    fn point(&mut self, attributes: &[(&str, &str)], start_unix_nanos: u64, value: ValueRef<'_>) {
        if !self.skipping {
            self.sink.point(attributes, start_unix_nanos, value);
        }
    }

    fn end(&mut self) {
        if self.skipping {
            self.skipping = false;
            return;
        }
        if let Some(j) = self.current.take() {
            let mut attrs = Vec::new();
            stream_points(&self.small[j].points, &mut attrs, self.sink);
        }
        self.sink.end();
    }
}

fn merge_with_owners(metrics: Vec<Metric>, owners: Vec<usize>) -> (Vec<Metric>, Vec<usize>) {
    // Each metric's first of its name and origin, found on borrowed names (no copy of a name).
    let mut first = Vec::with_capacity(metrics.len());
    {
        let mut seen = FastMap::with_capacity_and_hasher(metrics.len(), Default::default());
        for (i, m) in metrics.iter().enumerate() {
            first.push(*seen.entry((m.origin, &*m.name)).or_insert(i));
        }
    }
    let mut merged: Vec<Metric> = Vec::with_capacity(metrics.len());
    let mut first_owner = Vec::with_capacity(metrics.len());
    // Where each first one went in `merged`.
    let mut slot = vec![usize::MAX; metrics.len()];
    for (i, (m, o)) in metrics.into_iter().zip(owners).enumerate() {
        let f = first[i];
        if f == i {
            slot[i] = merged.len();
            merged.push(m);
            first_owner.push(o);
        } else {
            let target: &mut Metric = &mut merged[slot[f]];
            if target.kind == m.kind {
                target.points.extend(m.points);
            }
        }
    }
    (merged, first_owner)
}

fn merge_same_names(metrics: Vec<Metric>) -> Vec<Metric> {
    let n = metrics.len();
    merge_with_owners(metrics, vec![0; n]).0
}

/// Counts points across metrics.
pub fn point_count(metrics: &[Metric]) -> usize {
    metrics.iter().map(|m| m.points.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Vec<Metric>);
    impl Collector for Fixed {
        fn collect(&self, out: &mut Vec<Metric>) {
            out.extend(self.0.iter().cloned());
        }
    }

    /// A collector that streams its one metric from a held copy.
    struct Streamed(Metric);
    impl Collector for Streamed {
        fn collect(&self, out: &mut Vec<Metric>) {
            out.push(self.0.clone());
        }
        fn streams(&self) -> bool {
            true
        }
        fn encode_into(&self, sink: &mut dyn MetricSink) {
            stream_metrics(std::slice::from_ref(&self.0), sink);
        }
    }

    /// Records what a sink is given, as `name` per begin and `name{attrs}` per point.
    #[derive(Default)]
    struct Recorder(Vec<String>, String);
    impl MetricSink for Recorder {
        fn begin(&mut self, m: &MetricInfo<'_>) {
            self.1 = m.name.to_owned();
            self.0.push(format!("begin {}", m.name));
        }
        fn point(&mut self, attributes: &[(&str, &str)], _: u64, _: ValueRef<'_>) {
            let a: Vec<String> = attributes.iter().map(|(k, v)| format!("{k}={v}")).collect();
            self.0.push(format!("{}{{{}}}", self.1, a.join(",")));
        }
        fn end(&mut self) {
            self.0.push("end".into());
        }
    }

    #[test]
    fn streaming_keeps_one_family_per_name_and_registration_order() {
        let g = |name: &'static str, a: &str| {
            Metric::new(name, "h", "", MetricKind::Gauge).with(&[("a", a)], Value::Gauge(1.0))
        };
        let r = Registry::new();
        r.register(Arc::new(Fixed(vec![g("first", "1")])));
        r.register(Arc::new(Streamed(g("x", "s"))));
        // Merged into the streamed `x`; then a clash of kind and a repeat by another streamer, left out.
        r.register(Arc::new(Fixed(vec![g("x", "small"), g("last", "1")])));
        r.register(Arc::new(Fixed(vec![Metric::new(
            "first",
            "h",
            "",
            MetricKind::Counter,
        )
        .with(&[], Value::Sum(1.0))])));
        r.register(Arc::new(Streamed(g("x", "again"))));
        let mut rec = Recorder::default();
        r.encode_into(&mut rec);
        assert_eq!(
            rec.0,
            [
                "begin first",
                "first{a=1}",
                "end",
                "begin x",
                "x{a=s}",
                "x{a=small}",
                "end",
                "begin last",
                "last{a=1}",
                "end"
            ]
        );
        // gather() names the same families in the same order; gather_where copies what it keeps.
        let names: Vec<String> = r
            .gather()
            .into_iter()
            .map(|m| m.name.into_owned())
            .collect();
        assert_eq!(names, ["first", "x", "last"]);
        let kept = r.gather_where(|m| m.name != "first");
        let kept: Vec<(String, usize)> = kept
            .into_iter()
            .map(|m| (m.name.into_owned(), m.points.len()))
            .collect();
        assert_eq!(kept, [("x".to_owned(), 2), ("last".to_owned(), 1)]);
    }

    /// A streaming collector of the app's metrics that counts how often it is read.
    struct AppOnly(Metric, std::sync::atomic::AtomicUsize);
    impl Collector for AppOnly {
        fn collect(&self, out: &mut Vec<Metric>) {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            out.push(self.0.clone());
        }
        fn streams(&self) -> bool {
            true
        }
        fn encode_into(&self, sink: &mut dyn MetricSink) {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            stream_metrics(std::slice::from_ref(&self.0), sink);
        }
        fn origin(&self) -> Option<Origin> {
            Some(Origin::App)
        }
    }

    #[test]
    fn a_gather_of_one_origin_does_not_read_a_collector_of_the_other() {
        let mut app = Metric::new("orders", "h", "", MetricKind::Gauge)
            .with(&[("a", "1")], Value::Gauge(1.0));
        app.origin = Origin::App;
        let own =
            Metric::new("cpu", "h", "", MetricKind::Gauge).with(&[("a", "1")], Value::Gauge(2.0));
        let r = Registry::new();
        // A collector of mixed origins (no `origin`): its app metric is still left out by the filter.
        r.register(Arc::new(Fixed(vec![own.clone(), app.clone()])));
        let store = Arc::new(AppOnly(app.clone(), Default::default()));
        r.register(store.clone());
        // Wrapped, as a second target's collectors are: the wrapper keeps the origin.
        r.register(Arc::new(Attributed::new(store.clone(), "target", "b")));
        let reads = || store.1.load(std::sync::atomic::Ordering::Relaxed);
        let mut g = Gathered::default();
        r.gather_where_into(&mut g, Some(Origin::Vitals), |_| true);
        assert_eq!(
            reads(),
            0,
            "the app store was read by a gather of vitals' own"
        );
        let names: Vec<&str> = g.metrics.iter().map(|m| &*m.name).collect();
        assert_eq!(names, ["cpu"]);
        r.gather_where_into(&mut g, Some(Origin::App), |_| true);
        assert_eq!(reads(), 2);
        assert_eq!(g.metrics.len(), 1);
        assert_eq!(g.metrics[0].name, "orders");
        // One family: the Fixed collector's point and the wrapped store's (the store's own stream of a
        // name already held is left out, as in any gather).
        assert_eq!(g.metrics[0].points.len(), 2);
        r.gather_where_into(&mut g, None, |_| true);
        assert_eq!(reads(), 4);
        assert_eq!(g.metrics.len(), 2);
    }

    /// A streaming collector whose metrics change between gathers.
    struct Changing(std::sync::Mutex<Vec<Metric>>);
    impl Collector for Changing {
        fn collect(&self, out: &mut Vec<Metric>) {
            out.extend(self.0.lock().unwrap().iter().cloned());
        }
        fn streams(&self) -> bool {
            true
        }
        fn encode_into(&self, sink: &mut dyn MetricSink) {
            stream_metrics(&self.0.lock().unwrap(), sink);
        }
    }

    /// A small (collecting) collector whose metrics change between gathers.
    struct ChangingSmall(std::sync::Mutex<Vec<Metric>>);
    impl Collector for ChangingSmall {
        fn collect(&self, out: &mut Vec<Metric>) {
            out.extend(self.0.lock().unwrap().iter().cloned());
        }
    }

    /// Random families from a few names, kinds, attribute sets and values, so that consecutive states
    /// share some families and points and differ in others.
    fn random_metrics(next: &mut impl FnMut() -> u64) -> Vec<Metric> {
        let names = ["a", "b", "c", "d", "e"];
        let mut out = Vec::new();
        for name in names {
            if next() % 4 == 0 {
                continue;
            }
            let kind = if next() % 5 == 0 {
                MetricKind::Counter
            } else {
                MetricKind::Histogram
            };
            let mut m = Metric::new(name, "help", "s", kind);
            for pool in ["p", "q", "r", "s"] {
                if next() % 3 == 0 {
                    continue;
                }
                let value = match kind {
                    MetricKind::Counter => Value::Sum((next() % 7) as f64),
                    _ => {
                        let n = 1 + next() % 4;
                        let mut buckets: Vec<(f64, u64)> =
                            (0..n).map(|i| (i as f64, i * (next() % 3))).collect();
                        buckets.push((f64::INFINITY, 99));
                        Value::Histogram {
                            buckets,
                            sum: (next() % 100) as f64,
                            count: 99,
                            exemplars: Vec::new(),
                            native: None,
                        }
                    }
                };
                let attrs: &[(&str, &str)] = if next() % 2 == 0 {
                    &[("pool", pool)]
                } else {
                    &[("pool", pool), ("kind", "x")]
                };
                m.push_started(attrs, next() % 3, value);
            }
            out.push(m);
        }
        out
    }

    #[test]
    fn a_reused_gather_equals_a_fresh_one_and_an_unchanged_one_allocates_nothing() {
        let r = Registry::new();
        let first = Arc::new(Changing(std::sync::Mutex::new(Vec::new())));
        let small = Arc::new(ChangingSmall(std::sync::Mutex::new(Vec::new())));
        let second = Arc::new(Changing(std::sync::Mutex::new(Vec::new())));
        r.register(first.clone());
        r.register(small.clone());
        r.register(second.clone());
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let keep = |m: &MetricInfo<'_>| m.name != "e";
        let mut g = Gathered::default();
        let mut reused = 0;
        for step in 0..400 {
            *first.0.lock().unwrap() = random_metrics(&mut next);
            *second.0.lock().unwrap() = random_metrics(&mut next);
            *small.0.lock().unwrap() = random_metrics(&mut next);
            r.gather_where_into(&mut g, None, keep);
            assert_eq!(g.metrics, r.gather_where(keep), "step {step}");
            // The same state again: every streamed point is written over in place (the small
            // collector's are collected anew and moved in).
            let small_names: Vec<String> = small
                .0
                .lock()
                .unwrap()
                .iter()
                .map(|m| m.name.to_string())
                .collect();
            let held = |g: &Gathered| -> Vec<*const u8> {
                g.metrics
                    .iter()
                    .filter(|m| !small_names.iter().any(|n| *n == m.name))
                    .flat_map(|m| m.points.iter())
                    .flat_map(|p| p.attributes.iter().map(|(k, _)| k.as_ptr()))
                    .collect()
            };
            let before = held(&g);
            r.gather_where_into(&mut g, None, keep);
            assert_eq!(g.metrics, r.gather_where(keep), "step {step}, again");
            assert_eq!(
                before,
                held(&g),
                "step {step}: an unchanged gather reallocated"
            );
            reused += before.len();
        }
        assert!(reused > 1000, "{reused} points reused");
    }

    #[test]
    fn gather_merges_metrics_of_one_name() {
        let r = Registry::new();
        let a = Metric::new("x", "h", "", MetricKind::Gauge).with(&[("a", "1")], Value::Gauge(1.0));
        let b = Metric::new("x", "h", "", MetricKind::Gauge).with(&[("a", "2")], Value::Gauge(2.0));
        let clash = Metric::new("x", "h", "", MetricKind::Counter).with(&[], Value::Sum(3.0));
        r.register(Arc::new(Fixed(vec![a])));
        r.register(Arc::new(Fixed(vec![b, clash])));
        let got = r.gather();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].points.len(), 2);
        assert_eq!(point_count(&got), 2);
    }
}
