//! The neutral model of what vitals holds: metrics with their OpenTelemetry identity (name, unit, kind,
//! temporality, start time), attributes and points. Every producer writes it and every exporter reads it;
//! Prometheus naming (suffixes, `_total`, label-name rules) is applied only by the Prometheus exporter, and
//! an OTLP exporter reads the same values without reversing anything.

use std::borrow::Cow;
use std::sync::{Arc, RwLock};

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
    /// OpenTelemetry name (`vitals.gc.pause`, `process.cpu.time`, or the app's own).
    pub name: String,
    /// One line describing it.
    pub description: String,
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
        name: impl Into<String>,
        description: impl Into<String>,
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

/// Anything that contributes metrics to what exporters read.
pub trait Collector: Send + Sync {
    /// Appends this collector's current metrics to `out`.
    fn collect(&self, out: &mut Vec<Metric>);
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

    /// Every collector's metrics. Metrics of the same name and origin from two collectors are merged, so a
    /// name appears once in any exposition; a kind clash between two collectors keeps the first.
    pub fn gather(&self) -> Vec<Metric> {
        let collectors = self
            .collectors
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut out = Vec::new();
        for c in &collectors {
            c.collect(&mut out);
        }
        merge_same_names(out)
    }
}

fn merge_same_names(metrics: Vec<Metric>) -> Vec<Metric> {
    let mut merged: Vec<Metric> = Vec::with_capacity(metrics.len());
    let mut index = std::collections::HashMap::with_capacity(metrics.len());
    for m in metrics {
        match index.get(&(m.origin, m.name.clone())) {
            Some(&i) => {
                let target: &mut Metric = &mut merged[i];
                if target.kind == m.kind {
                    target.points.extend(m.points);
                }
            }
            None => {
                index.insert((m.origin, m.name.clone()), merged.len());
                merged.push(m);
            }
        }
    }
    merged
}

/// Counts points across metrics, the figure `vitals_exporter_series` reports.
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
