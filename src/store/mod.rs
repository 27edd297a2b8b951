//! The series store: the metric model every source fills and every exporter reads.
//!
//! Sources that sample on a timer (procfs, cgroups) keep their latest snapshot and turn it into families
//! when asked ([`Collector`]), so a tick costs no allocation and an exited target's series vanish with its
//! snapshot. Sources keyed by outside data (OTLP) keep bounded maps of their own and implement the same
//! trait. Exporters only ever see [`Family`] values.

pub mod app_metrics;
pub mod limited;
pub mod logs;

use std::sync::{Arc, RwLock};

/// What kind of metric a family is, as the exposition formats know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Monotonic total; sample name gets `_total`.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// Cumulative buckets with sum and count.
    Histogram,
    /// Quantiles with sum and count.
    Summary,
}

/// One exemplar: a labelled observation that points at a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Exemplar {
    /// Exemplar labels (trace_id, span_id).
    pub labels: Vec<(String, String)>,
    /// The observed value.
    pub value: f64,
    /// Unix time of the observation, in seconds.
    pub timestamp: Option<f64>,
}

/// The value of one series.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A counter total.
    Counter(f64),
    /// A gauge reading.
    Gauge(f64),
    /// Cumulative histogram: `(upper bound, cumulative count)` ascending, the last bound `+Inf`.
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
    /// Summary with `(quantile, value)` pairs.
    Summary {
        /// Quantile values.
        quantiles: Vec<(f64, f64)>,
        /// Sum of observations.
        sum: f64,
        /// Count of observations.
        count: u64,
    },
}

/// One labelled series of a family.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Label pairs, names already valid Prometheus label names; values raw (encoders escape them).
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: Value,
}

/// A metric family: name, help, unit, kind and its series.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// Family name; for counters without the `_total` suffix.
    pub name: String,
    /// One line of help text.
    pub help: String,
    /// Unit word (`seconds`, `bytes`, `ratio`) when the name ends with it, else empty.
    pub unit: &'static str,
    /// Kind of metric.
    pub kind: MetricKind,
    /// The series.
    pub series: Vec<Series>,
}

impl Family {
    /// A new family with no series.
    pub fn new(
        name: impl Into<String>,
        help: impl Into<String>,
        unit: &'static str,
        kind: MetricKind,
    ) -> Self {
        Family {
            name: name.into(),
            help: help.into(),
            unit,
            kind,
            series: Vec::new(),
        }
    }

    /// Adds a series with the given labels and value, returning self for chaining.
    pub fn with(mut self, labels: &[(&str, &str)], value: Value) -> Self {
        self.push(labels, value);
        self
    }

    /// Adds a series with the given labels and value.
    pub fn push(&mut self, labels: &[(&str, &str)], value: Value) {
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.series.push(Series { labels, value });
    }
}

/// Anything that contributes families to a scrape.
pub trait Collector: Send + Sync {
    /// Appends this collector's current families to `out`.
    fn collect(&self, out: &mut Vec<Family>);
}

/// The set of collectors a scrape reads, in registration order.
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

    /// Gathers every collector's families. Families of the same name from two collectors are merged so a
    /// name appears once in the exposition, as the formats require.
    pub fn gather(&self) -> Vec<Family> {
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

fn merge_same_names(families: Vec<Family>) -> Vec<Family> {
    let mut merged: Vec<Family> = Vec::with_capacity(families.len());
    let mut index = std::collections::HashMap::with_capacity(families.len());
    for fam in families {
        match index.get(&fam.name) {
            Some(&i) => {
                let target: &mut Family = &mut merged[i];
                if target.kind == fam.kind {
                    target.series.extend(fam.series);
                }
                // A kind clash between two sources is dropped rather than emitted as an invalid exposition.
            }
            None => {
                index.insert(fam.name.clone(), merged.len());
                merged.push(fam);
            }
        }
    }
    merged
}

/// Counts series across families, the figure `vitals_exporter_series` reports.
pub fn series_count(families: &[Family]) -> usize {
    families.iter().map(|f| f.series.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Vec<Family>);
    impl Collector for Fixed {
        fn collect(&self, out: &mut Vec<Family>) {
            out.extend(self.0.iter().cloned());
        }
    }

    #[test]
    fn gather_merges_families_of_one_name() {
        let r = Registry::new();
        let a = Family::new("x", "h", "", MetricKind::Gauge).with(&[("a", "1")], Value::Gauge(1.0));
        let b = Family::new("x", "h", "", MetricKind::Gauge).with(&[("a", "2")], Value::Gauge(2.0));
        let clash = Family::new("x", "h", "", MetricKind::Counter).with(&[], Value::Counter(3.0));
        r.register(Arc::new(Fixed(vec![a])));
        r.register(Arc::new(Fixed(vec![b, clash])));
        let got = r.gather();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].series.len(), 2);
        assert_eq!(series_count(&got), 2);
    }
}
