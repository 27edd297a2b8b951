//! vitals' neutral metrics as OTLP export requests: the mapping of each [`MetricKind`] to an OTLP data
//! type, and the start times that make every cumulative series a well-formed OTLP stream (stable while a
//! series counts on, moved forward when its value goes down).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1 as otlp;
use opentelemetry_proto::tonic::metrics::v1::{
    exemplar, exponential_histogram_data_point, metric, number_data_point, summary_data_point,
    AggregationTemporality,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use crate::config::otlp::Histograms;
use crate::model::exponential::ExpBuckets;
use crate::model::{Exemplar, Exponential, Metric, MetricKind, Origin, Point, Value};

/// Series whose start time is remembered; beyond it a new series gets the pusher's first start time and
/// no reset detection (logged once).
pub const START_TIMES_LIMIT: usize = 100_000;

/// How long a series that left the registry keeps its start time, so one that comes back with its
/// value counting on is not mistaken for a new stream. At least this, and at least three push intervals.
pub const FORGET_AFTER_NANOS: u64 = 300 * 1_000_000_000;

/// What is remembered of one series between pushes.
#[derive(Debug, Clone, Copy)]
struct SeriesStart {
    /// Start time last sent.
    sent: u64,
    /// The producer's own start time last seen (0: none).
    producer: u64,
    /// Last cumulative value (count for histograms and summaries), for reset detection.
    last: f64,
    /// Time of the last point sent.
    last_seen: u64,
}

/// The start time of every cumulative series, kept across pushes.
///
/// A point that carries its own start time keeps it. A point without one gets the time of the previous
/// gather (the series did not exist then, so it started counting after it), or the pusher's start for
/// series present at the first gather. A monotonic value that goes down is a reset: its stream restarts at
/// the time of the last point that saw the old value, so start times only move forward.
pub struct StartTimes {
    series: HashMap<u64, SeriesStart>,
    /// Random keys: attribute values come from outside, so colliding keys cannot be chosen.
    hasher: std::collections::hash_map::RandomState,
    limit: usize,
    forget_after: u64,
    /// Start given to series first seen at the first gather, and to series beyond the limit.
    first: u64,
    /// Time of the previous gather; 0 before the first.
    previous: u64,
    overflowed: bool,
}

impl StartTimes {
    /// A tracker whose first series start at `first_unix_nanos` (when vitals began counting); series are
    /// forgotten `forget_after_nanos` after they were last seen.
    pub fn new(first_unix_nanos: u64, limit: usize, forget_after_nanos: u64) -> Self {
        StartTimes {
            series: HashMap::new(),
            hasher: std::collections::hash_map::RandomState::new(),
            limit,
            forget_after: forget_after_nanos,
            first: first_unix_nanos,
            previous: 0,
            overflowed: false,
        }
    }

    /// Series remembered.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// True when no series is remembered.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    fn key(&self, name: &str, attributes: &[(String, String)]) -> u64 {
        let mut h = self.hasher.build_hasher();
        name.hash(&mut h);
        // Order-independent: the same attribute set in another order is the same series. Producers
        // usually give attributes in one order, so the sorted copy is rarely needed.
        if attributes.windows(2).all(|w| w[0] <= w[1]) {
            for (k, v) in attributes {
                k.hash(&mut h);
                v.hash(&mut h);
            }
        } else {
            let mut sorted: Vec<&(String, String)> = attributes.iter().collect();
            sorted.sort();
            for (k, v) in sorted {
                k.hash(&mut h);
                v.hash(&mut h);
            }
        }
        h.finish()
    }

    /// The start time to send for one point at `now`. `cumulative` is the value compared for resets, None
    /// for sums that may go down.
    fn start_of(&mut self, name: &str, point: &Point, cumulative: Option<f64>, now: u64) -> u64 {
        let key = self.key(name, &point.attributes);
        let producer = point.start_unix_nanos;
        let value = cumulative.unwrap_or(0.0);
        let fresh = if self.previous == 0 {
            self.first
        } else {
            self.previous
        };
        match self.series.get_mut(&key) {
            None => {
                let sent = if producer != 0 { producer } else { fresh };
                if self.series.len() < self.limit {
                    self.series.insert(
                        key,
                        SeriesStart {
                            sent,
                            producer,
                            last: value,
                            last_seen: now,
                        },
                    );
                    sent
                } else {
                    if !self.overflowed {
                        self.overflowed = true;
                        tracing::warn!(
                            limit = self.limit,
                            "push: more series than start times kept; the rest get vitals' start time \
                             and no reset detection"
                        );
                    }
                    if producer != 0 {
                        producer
                    } else {
                        self.first
                    }
                }
            }
            Some(s) => {
                let announced = producer != 0 && producer != s.producer && producer > s.sent;
                let mut start = if announced { producer } else { s.sent };
                let went_down = cumulative.is_some() && value < s.last;
                if went_down && !announced {
                    start = s.last_seen.max(s.sent + 1);
                }
                s.sent = start;
                s.producer = producer;
                s.last = value;
                s.last_seen = now;
                start
            }
        }
    }

    /// Ends a gather at `now`: forgets series unseen for the forget time.
    fn finish(&mut self, now: u64) {
        let forget_after = self.forget_after;
        self.series
            .retain(|_, s| now.saturating_sub(s.last_seen) <= forget_after);
        self.previous = now;
    }
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

fn attributes(pairs: &[(String, String)]) -> Vec<KeyValue> {
    pairs.iter().map(|(k, v)| kv(k, v)).collect()
}

/// The OTLP resource for `pairs` (already ordered and unique).
pub fn resource(pairs: &[(String, String)]) -> Resource {
    Resource {
        attributes: attributes(pairs),
        ..Default::default()
    }
}

/// Decodes a hex trace or span id of exactly `len` bytes.
fn hex_id(s: &str, len: usize) -> Option<Vec<u8>> {
    if s.len() != len * 2 {
        return None;
    }
    (0..len)
        .map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

fn exemplar(e: &Exemplar, now: u64) -> otlp::Exemplar {
    let mut out = otlp::Exemplar {
        time_unix_nano: e
            .timestamp
            .filter(|t| t.is_finite() && *t > 0.0)
            .map_or(now, |t| (t * 1e9) as u64),
        value: Some(exemplar::Value::AsDouble(e.value)),
        ..Default::default()
    };
    for (k, v) in &e.attributes {
        let id = match k.as_str() {
            "trace_id" => hex_id(v, 16).map(|b| out.trace_id = b),
            "span_id" => hex_id(v, 8).map(|b| out.span_id = b),
            _ => None,
        };
        // An id that is not hex of the right length stays an attribute rather than being lost.
        if id.is_none() {
            out.filtered_attributes.push(kv(k, v));
        }
    }
    out
}

/// Per-bucket counts and finite bounds from cumulative `(bound, count)` buckets; the `+Inf` bound is
/// implied by OTLP. Counts that go down (malformed input) give 0 for that bucket.
fn explicit_buckets(buckets: &[(f64, u64)], count: u64) -> (Vec<f64>, Vec<u64>) {
    let mut bounds = Vec::with_capacity(buckets.len());
    let mut counts = Vec::with_capacity(buckets.len() + 1);
    let mut below = 0u64;
    for &(bound, cum) in buckets {
        if bound.is_infinite() && bound > 0.0 {
            break;
        }
        if bound.is_nan() || bounds.last().is_some_and(|b| *b >= bound) {
            continue;
        }
        bounds.push(bound);
        counts.push(cum.saturating_sub(below));
        below = below.max(cum);
    }
    counts.push(count.saturating_sub(below));
    (bounds, counts)
}

fn exp_buckets(b: &ExpBuckets) -> Option<exponential_histogram_data_point::Buckets> {
    (!b.counts.is_empty()).then(|| exponential_histogram_data_point::Buckets {
        offset: b.offset,
        bucket_counts: b.counts.clone(),
    })
}

/// One exponential point. Its count is the buckets' total (zero bucket included), so the counts always
/// add up as OTLP requires, whatever the classic count said.
fn exponential_point(
    p: &Point,
    e: &Exponential,
    sum: f64,
    exemplars: &[Option<Exemplar>],
    start: u64,
    now: u64,
) -> otlp::ExponentialHistogramDataPoint {
    otlp::ExponentialHistogramDataPoint {
        attributes: attributes(&p.attributes),
        start_time_unix_nano: start,
        time_unix_nano: now,
        count: e.total(),
        sum: sum.is_finite().then_some(sum),
        scale: e.scale,
        zero_count: e.zero_count,
        zero_threshold: e.zero_threshold,
        positive: exp_buckets(&e.positive),
        negative: exp_buckets(&e.negative),
        min: e.min_max.map(|(lo, _)| lo),
        max: e.min_max.map(|(_, hi)| hi),
        exemplars: exemplars
            .iter()
            .flatten()
            .map(|x| exemplar(x, now))
            .collect(),
        ..Default::default()
    }
}

/// True when every point of `m` is a histogram with exponential buckets (an OTLP metric has one type).
fn all_exponential(m: &Metric) -> bool {
    !m.points.is_empty()
        && m.points.iter().all(|p| {
            matches!(
                &p.value,
                Value::Histogram {
                    native: Some(_),
                    ..
                }
            )
        })
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Sum(x) | Value::Gauge(x) | Value::SumWithExemplar(x, _) => Some(*x),
        _ => None,
    }
}

/// One metric converted; points whose value does not fit the metric's kind are skipped and counted.
fn convert_metric(
    m: &Metric,
    histograms: Histograms,
    starts: &mut StartTimes,
    now: u64,
    skipped: &mut u64,
) -> otlp::Metric {
    let cumulative = AggregationTemporality::Cumulative as i32;
    let data = match m.kind {
        MetricKind::Histogram if histograms == Histograms::Exponential && all_exponential(m) => {
            let mut data_points = Vec::with_capacity(m.points.len());
            for p in &m.points {
                let Value::Histogram {
                    sum,
                    exemplars,
                    native: Some(e),
                    ..
                } = &p.value
                else {
                    *skipped += 1;
                    continue;
                };
                let start = starts.start_of(&m.name, p, Some(e.total() as f64), now);
                data_points.push(exponential_point(p, e, *sum, exemplars, start, now));
            }
            metric::Data::ExponentialHistogram(otlp::ExponentialHistogram {
                data_points,
                aggregation_temporality: cumulative,
            })
        }
        MetricKind::Counter | MetricKind::UpDownCounter => {
            let monotonic = m.kind == MetricKind::Counter;
            let mut data_points = Vec::with_capacity(m.points.len());
            for p in &m.points {
                let Some(x) = number(&p.value) else {
                    *skipped += 1;
                    continue;
                };
                let start = starts.start_of(&m.name, p, monotonic.then_some(x), now);
                let exemplars = match &p.value {
                    Value::SumWithExemplar(_, e) => vec![exemplar(e, now)],
                    _ => Vec::new(),
                };
                data_points.push(otlp::NumberDataPoint {
                    attributes: attributes(&p.attributes),
                    start_time_unix_nano: start,
                    time_unix_nano: now,
                    value: Some(number_data_point::Value::AsDouble(x)),
                    exemplars,
                    ..Default::default()
                });
            }
            metric::Data::Sum(otlp::Sum {
                data_points,
                aggregation_temporality: cumulative,
                is_monotonic: monotonic,
            })
        }
        MetricKind::Gauge => {
            let mut data_points = Vec::with_capacity(m.points.len());
            for p in &m.points {
                let Some(x) = number(&p.value) else {
                    *skipped += 1;
                    continue;
                };
                data_points.push(otlp::NumberDataPoint {
                    attributes: attributes(&p.attributes),
                    start_time_unix_nano: p.start_unix_nanos,
                    time_unix_nano: now,
                    value: Some(number_data_point::Value::AsDouble(x)),
                    ..Default::default()
                });
            }
            metric::Data::Gauge(otlp::Gauge { data_points })
        }
        MetricKind::Histogram => {
            let mut data_points = Vec::with_capacity(m.points.len());
            for p in &m.points {
                let Value::Histogram {
                    buckets,
                    sum,
                    count,
                    exemplars,
                    ..
                } = &p.value
                else {
                    *skipped += 1;
                    continue;
                };
                let start = starts.start_of(&m.name, p, Some(*count as f64), now);
                let (explicit_bounds, bucket_counts) = explicit_buckets(buckets, *count);
                data_points.push(otlp::HistogramDataPoint {
                    attributes: attributes(&p.attributes),
                    start_time_unix_nano: start,
                    time_unix_nano: now,
                    count: *count,
                    sum: sum.is_finite().then_some(*sum),
                    bucket_counts,
                    explicit_bounds,
                    exemplars: exemplars
                        .iter()
                        .flatten()
                        .map(|e| exemplar(e, now))
                        .collect(),
                    ..Default::default()
                });
            }
            metric::Data::Histogram(otlp::Histogram {
                data_points,
                aggregation_temporality: cumulative,
            })
        }
        MetricKind::Summary => {
            let mut data_points = Vec::with_capacity(m.points.len());
            for p in &m.points {
                let Value::Summary {
                    quantiles,
                    sum,
                    count,
                } = &p.value
                else {
                    *skipped += 1;
                    continue;
                };
                let start = starts.start_of(&m.name, p, Some(*count as f64), now);
                data_points.push(otlp::SummaryDataPoint {
                    attributes: attributes(&p.attributes),
                    start_time_unix_nano: start,
                    time_unix_nano: now,
                    count: *count,
                    sum: *sum,
                    quantile_values: quantiles
                        .iter()
                        .map(|(q, v)| summary_data_point::ValueAtQuantile {
                            quantile: *q,
                            value: *v,
                        })
                        .collect(),
                    ..Default::default()
                });
            }
            metric::Data::Summary(otlp::Summary { data_points })
        }
    };
    otlp::Metric {
        name: m.name.to_string(),
        description: m.description.to_string(),
        unit: m.unit.to_string(),
        data: Some(data),
        ..Default::default()
    }
}

/// One export request ready to send, with the data points it carries.
#[derive(Debug, Clone)]
pub struct PushRequest {
    /// The encoded `ExportMetricsServiceRequest`.
    pub body: bytes::Bytes,
    /// Data points in it.
    pub points: u64,
}

/// What one gather became.
#[derive(Debug, Default)]
pub struct Converted {
    /// Requests in sending order, each at most the size limit unless one metric alone is larger.
    pub requests: Vec<PushRequest>,
    /// Points whose value did not fit their metric's kind (not sent).
    pub skipped: u64,
}

/// Converts one gather taken at `now_unix_nanos` into export requests of at most `max_bytes` each
/// (metrics are never split, so one larger than that goes alone), advancing the start times; histograms
/// as `histograms` says. Metrics passed through from the app ([`Origin::App`]) are left out.
pub fn convert(
    metrics: &[Metric],
    histograms: Histograms,
    resource: &Resource,
    scope: &InstrumentationScope,
    starts: &mut StartTimes,
    now_unix_nanos: u64,
    max_bytes: usize,
) -> Converted {
    let mut out = Converted::default();
    let mut batch: Vec<otlp::Metric> = Vec::new();
    let mut batch_bytes = 0usize;
    let mut batch_points = 0u64;
    let flush = |batch: &mut Vec<otlp::Metric>, points: &mut u64, out: &mut Converted| {
        if batch.is_empty() {
            return;
        }
        let req = ExportMetricsServiceRequest {
            resource_metrics: vec![otlp::ResourceMetrics {
                resource: Some(resource.clone()),
                scope_metrics: vec![otlp::ScopeMetrics {
                    scope: Some(scope.clone()),
                    metrics: std::mem::take(batch),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        out.requests.push(PushRequest {
            body: req.encode_to_vec().into(),
            points: *points,
        });
        *points = 0;
    };
    for m in metrics {
        // The app's own metrics are not vitals' to push: they reach OTLP backends through forwarding,
        // under the app's resource.
        if m.origin == Origin::App {
            continue;
        }
        let converted = convert_metric(m, histograms, starts, now_unix_nanos, &mut out.skipped);
        let points = crate::pipeline::data_points(&converted).unwrap_or(0) as u64;
        if points == 0 {
            continue;
        }
        // Field tag and length prefix add a few bytes per metric.
        let len = converted.encoded_len() + 8;
        if batch_bytes + len > max_bytes && !batch.is_empty() {
            flush(&mut batch, &mut batch_points, &mut out);
            batch_bytes = 0;
        }
        batch_bytes += len;
        batch_points += points;
        batch.push(converted);
    }
    flush(&mut batch, &mut batch_points, &mut out);
    starts.finish(now_unix_nanos);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;

    const S: u64 = 1_000_000_000;

    fn scope() -> InstrumentationScope {
        InstrumentationScope {
            name: "vitals".into(),
            version: "test".into(),
            ..Default::default()
        }
    }

    /// Converts and decodes back: what an upstream would see.
    fn push(metrics: &[Metric], starts: &mut StartTimes, now: u64) -> Vec<otlp::Metric> {
        let c = convert(
            metrics,
            Histograms::Exponential,
            &resource(&[("service.name".into(), "vitals".into())]),
            &scope(),
            starts,
            now,
            4 << 20,
        );
        assert_eq!(c.skipped, 0);
        c.requests
            .iter()
            .flat_map(|r| {
                let req = ExportMetricsServiceRequest::decode(r.body.as_ref()).unwrap();
                let rm = req.resource_metrics.into_iter().next().unwrap();
                assert_eq!(rm.resource.unwrap().attributes[0].key, "service.name");
                let sm = rm.scope_metrics.into_iter().next().unwrap();
                assert_eq!(sm.scope.unwrap().name, "vitals");
                sm.metrics
            })
            .collect()
    }

    fn counter(v: f64) -> Metric {
        Metric::new("vitals.gc.pause", "pause time", "s", MetricKind::Counter)
            .with(&[("runtime", "jvm")], Value::Sum(v))
    }

    fn sum_point(m: &otlp::Metric) -> (&otlp::Sum, &otlp::NumberDataPoint) {
        match &m.data {
            Some(Data::Sum(s)) => (s, &s.data_points[0]),
            other => panic!("not a sum: {other:?}"),
        }
    }

    #[test]
    fn kinds_map_to_otlp_types_with_temporality() {
        let mut st = StartTimes::new(100 * S, 10, FORGET_AFTER_NANOS);
        let metrics = vec![
            counter(1.5),
            Metric::new(
                "vitals.pool.pending",
                "p",
                "{request}",
                MetricKind::UpDownCounter,
            )
            .with(&[], Value::Sum(3.0)),
            Metric::new("vitals.target.up", "up", "1", MetricKind::Gauge)
                .with(&[], Value::Gauge(1.0)),
            Metric::new("vitals.event_loop.delay", "d", "s", MetricKind::Summary).with(
                &[],
                Value::Summary {
                    quantiles: vec![(0.5, 0.01), (0.99, 0.2)],
                    sum: 4.0,
                    count: 100,
                },
            ),
        ];
        let got = push(&metrics, &mut st, 200 * S);
        assert_eq!(got.len(), 4);
        let (s, p) = sum_point(&got[0]);
        assert!(s.is_monotonic);
        assert_eq!(
            s.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        assert_eq!(got[0].unit, "s");
        assert_eq!(p.value, Some(number_data_point::Value::AsDouble(1.5)));
        // Present at the first gather: started when the pusher did.
        assert_eq!(p.start_time_unix_nano, 100 * S);
        assert_eq!(p.time_unix_nano, 200 * S);
        assert_eq!(p.attributes[0].key, "runtime");
        let (s, _) = sum_point(&got[1]);
        assert!(!s.is_monotonic);
        assert_eq!(
            s.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        match &got[2].data {
            Some(Data::Gauge(g)) => assert_eq!(g.data_points[0].start_time_unix_nano, 0),
            other => panic!("{other:?}"),
        }
        match &got[3].data {
            Some(Data::Summary(s)) => {
                let p = &s.data_points[0];
                assert_eq!((p.count, p.sum), (100, 4.0));
                assert_eq!(p.quantile_values[1].quantile, 0.99);
                assert_eq!(p.quantile_values[1].value, 0.2);
                assert_eq!(p.start_time_unix_nano, 100 * S);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn histogram_buckets_become_per_bucket_counts_without_inf() {
        let mut st = StartTimes::new(S, 10, FORGET_AFTER_NANOS);
        let e = Exemplar {
            attributes: vec![
                ("trace_id".into(), "0af7651916cd43dd8448eb211c80319c".into()),
                ("span_id".into(), "b7ad6b7169203331".into()),
            ],
            value: 0.3,
            timestamp: Some(1_700_000_000.5),
        };
        let bad = Exemplar {
            attributes: vec![("trace_id".into(), "not-hex".into())],
            value: 0.05,
            timestamp: None,
        };
        let m = Metric::new("vitals.request.duration", "d", "s", MetricKind::Histogram).with(
            &[("operation", "/orders")],
            Value::Histogram {
                buckets: vec![(0.1, 4), (0.4, 9), (1.0, 9), (f64::INFINITY, 10)],
                sum: 3.25,
                count: 10,
                exemplars: vec![Some(bad), Some(e), None, None],
                native: None,
            },
        );
        let got = push(&[m], &mut st, 2 * S);
        let Some(Data::Histogram(h)) = &got[0].data else {
            panic!("{got:?}")
        };
        assert_eq!(
            h.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let p = &h.data_points[0];
        assert_eq!(p.explicit_bounds, vec![0.1, 0.4, 1.0]);
        assert_eq!(p.bucket_counts, vec![4, 5, 0, 1]);
        assert_eq!(p.bucket_counts.iter().sum::<u64>(), p.count);
        assert_eq!((p.count, p.sum), (10, Some(3.25)));
        assert_eq!(p.exemplars.len(), 2);
        assert!(p.exemplars[0].trace_id.is_empty());
        assert_eq!(p.exemplars[0].filtered_attributes[0].key, "trace_id");
        assert_eq!(p.exemplars[0].time_unix_nano, 2 * S);
        let x = &p.exemplars[1];
        assert_eq!(
            x.trace_id,
            hex_id("0af7651916cd43dd8448eb211c80319c", 16).unwrap()
        );
        assert_eq!(x.trace_id.len(), 16);
        assert_eq!(
            x.span_id,
            vec![0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31]
        );
        assert!(x.filtered_attributes.is_empty());
        assert_eq!(x.time_unix_nano, 1_700_000_000_500_000_000);
        assert_eq!(x.value, Some(exemplar::Value::AsDouble(0.3)));
    }

    /// A histogram with both forms, from `values`, as RED keeps it.
    fn both_forms(values: &[f64]) -> Value {
        let mut e = Exponential::new(4, 1.0 / 1_048_576.0);
        for v in values {
            e.record(*v, 160);
        }
        let bounds = [0.1, 0.4, f64::INFINITY];
        let buckets = bounds
            .iter()
            .map(|b| (*b, values.iter().filter(|v| *v <= b).count() as u64))
            .collect();
        Value::Histogram {
            buckets,
            sum: values.iter().sum(),
            count: values.len() as u64,
            exemplars: vec![],
            native: Some(Box::new(e)),
        }
    }

    #[test]
    fn exponential_sources_are_pushed_exponential_and_classic_ones_classic() {
        let values = [0.0, 0.004, 0.02, 0.021, 0.35, 0.9, 3.0];
        let red = Metric::new("vitals.request.duration", "d", "s", MetricKind::Histogram)
            .with(&[("operation", "/a")], both_forms(&values))
            .with(&[("operation", "/b")], both_forms(&[0.5, 0.25]));
        let classic = Metric::new("vitals.db.query.duration", "q", "s", MetricKind::Histogram)
            .with(
                &[],
                Value::Histogram {
                    buckets: vec![(0.1, 1), (f64::INFINITY, 2)],
                    sum: 0.6,
                    count: 2,
                    exemplars: vec![],
                    native: None,
                },
            );
        // One point without exponential buckets makes the whole metric explicit: an OTLP metric has one type.
        let mixed = Metric::new("mixed", "m", "s", MetricKind::Histogram)
            .with(&[("a", "1")], both_forms(&[0.5]))
            .with(
                &[("a", "2")],
                Value::Histogram {
                    buckets: vec![(f64::INFINITY, 1)],
                    sum: 0.5,
                    count: 1,
                    exemplars: vec![],
                    native: None,
                },
            );
        let mut st = StartTimes::new(5 * S, 10, FORGET_AFTER_NANOS);
        let got = push(&[red.clone(), classic.clone(), mixed], &mut st, 9 * S);
        let Some(Data::ExponentialHistogram(h)) = &got[0].data else {
            panic!("RED is not exponential: {:?}", got[0].data)
        };
        assert_eq!(
            h.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let p = &h.data_points[0];
        assert_eq!((p.scale, p.count), (4, 7));
        assert_eq!((p.start_time_unix_nano, p.time_unix_nano), (5 * S, 9 * S));
        assert_eq!(p.zero_count, 1, "0 s is in the zero bucket");
        assert_eq!(p.zero_threshold, 1.0 / 1_048_576.0);
        assert_eq!((p.min, p.max), (Some(0.0), Some(3.0)));
        assert_eq!(p.sum, Some(values.iter().sum()));
        assert!(p.negative.is_none());
        let pos = p.positive.as_ref().expect("positive buckets");
        assert_eq!(
            p.zero_count + pos.bucket_counts.iter().sum::<u64>(),
            p.count
        );
        // Each value sits in the bucket its OTLP index names: (base^i, base^(i+1)], base = 2^(1/16).
        let base = 2f64.powf(1.0 / 16.0);
        for v in &values[1..] {
            let at = (0..pos.bucket_counts.len())
                .find(|k| {
                    let i = pos.offset + *k as i32;
                    base.powi(i) < *v && *v <= base.powi(i + 1) * (1.0 + 1e-12)
                })
                .expect("a bucket for each value");
            assert!(pos.bucket_counts[at] >= 1, "{v}");
        }
        assert_eq!(h.data_points[1].count, 2);
        assert!(
            matches!(&got[1].data, Some(Data::Histogram(_))),
            "classic source stays classic"
        );
        assert!(
            matches!(&got[2].data, Some(Data::Histogram(_))),
            "mixed metric stays classic"
        );
        // --push-histograms explicit: RED as its classic buckets.
        let c = convert(
            &[red, classic],
            Histograms::Explicit,
            &resource(&[]),
            &scope(),
            &mut st,
            10 * S,
            1 << 20,
        );
        let req = ExportMetricsServiceRequest::decode(c.requests[0].body.as_ref()).unwrap();
        let m = &req.resource_metrics[0].scope_metrics[0].metrics;
        let Some(Data::Histogram(h)) = &m[0].data else {
            panic!("{:?}", m[0].data)
        };
        assert_eq!(h.data_points[0].explicit_bounds, vec![0.1, 0.4]);
        assert_eq!(h.data_points[0].bucket_counts, vec![4, 1, 2]);
        assert_eq!(
            h.data_points[0].start_time_unix_nano,
            5 * S,
            "same stream either way"
        );
    }

    #[test]
    fn start_times_are_stable_and_move_forward_on_reset() {
        let mut st = StartTimes::new(10 * S, 10, FORGET_AFTER_NANOS);
        let start = |got: &[otlp::Metric]| sum_point(&got[0]).1.start_time_unix_nano;
        assert_eq!(start(&push(&[counter(5.0)], &mut st, 20 * S)), 10 * S);
        assert_eq!(start(&push(&[counter(7.0)], &mut st, 35 * S)), 10 * S);
        // Went down: a new run that began after the last point that saw the old one.
        assert_eq!(start(&push(&[counter(1.0)], &mut st, 50 * S)), 35 * S);
        assert_eq!(start(&push(&[counter(4.0)], &mut st, 65 * S)), 35 * S);
        // A series that appears later started after the previous gather.
        let later = Metric::new("vitals.gc.pauses", "n", "{pause}", MetricKind::Counter)
            .with(&[], Value::Sum(2.0));
        let got = push(&[counter(4.0), later], &mut st, 80 * S);
        assert_eq!(sum_point(&got[1]).1.start_time_unix_nano, 65 * S);
        // An up-down counter that goes down is not a reset.
        let ud = |v| {
            Metric::new(
                "vitals.pool.used",
                "u",
                "{connection}",
                MetricKind::UpDownCounter,
            )
            .with(&[], Value::Sum(v))
        };
        push(&[ud(9.0)], &mut st, 90 * S);
        assert_eq!(start(&push(&[ud(2.0)], &mut st, 95 * S)), 80 * S);
    }

    #[test]
    fn producer_start_times_win_and_a_new_one_is_a_new_run() {
        let mut st = StartTimes::new(10 * S, 10, FORGET_AFTER_NANOS);
        let at = |start: u64, v: f64| {
            let mut m = Metric::new("process.cpu.time", "cpu", "s", MetricKind::Counter);
            m.push_started(&[("cpu.mode", "user")], start, Value::Sum(v));
            m
        };
        let start = |got: &[otlp::Metric]| sum_point(&got[0]).1.start_time_unix_nano;
        assert_eq!(start(&push(&[at(3 * S, 1.0)], &mut st, 20 * S)), 3 * S);
        // The target restarted and had already used more CPU than the old one: the producer's start says so.
        assert_eq!(start(&push(&[at(25 * S, 2.0)], &mut st, 30 * S)), 25 * S);
        // Same producer start, value down: still a reset.
        assert_eq!(start(&push(&[at(25 * S, 0.5)], &mut st, 40 * S)), 30 * S);
    }

    #[test]
    fn attribute_order_does_not_make_a_new_series_and_gone_series_are_forgotten() {
        let mut st = StartTimes::new(S, 10, 100 * S);
        let m = |attrs: &[(&str, &str)], v| {
            Metric::new("c", "c", "1", MetricKind::Counter).with(attrs, Value::Sum(v))
        };
        push(&[m(&[("a", "1"), ("b", "2")], 5.0)], &mut st, 10 * S);
        let got = push(&[m(&[("b", "2"), ("a", "1")], 6.0)], &mut st, 20 * S);
        assert_eq!(sum_point(&got[0]).1.start_time_unix_nano, S);
        assert_eq!(st.len(), 1);
        push(&[], &mut st, 110 * S);
        assert_eq!(st.len(), 1, "kept within the forget time");
        push(&[], &mut st, 121 * S);
        assert!(st.is_empty(), "forgotten after it");
    }

    #[test]
    fn the_limit_bounds_memory_and_keeps_later_starts_stable() {
        let mut st = StartTimes::new(7 * S, 2, FORGET_AFTER_NANOS);
        let many = |v: f64| -> Vec<Metric> {
            (0..5)
                .map(|i| {
                    Metric::new(format!("c{i}"), "c", "1", MetricKind::Counter)
                        .with(&[], Value::Sum(v))
                })
                .collect()
        };
        push(&many(1.0), &mut st, 10 * S);
        let got = push(&many(2.0), &mut st, 20 * S);
        assert_eq!(st.len(), 2);
        for m in &got[2..] {
            assert_eq!(sum_point(m).1.start_time_unix_nano, 7 * S);
        }
    }

    #[test]
    fn large_gathers_split_into_requests_under_the_limit() {
        let mut st = StartTimes::new(S, 1000, FORGET_AFTER_NANOS);
        let metrics: Vec<Metric> = (0..50)
            .map(|i| {
                let mut m = Metric::new(format!("vitals.m{i}"), "d", "1", MetricKind::Gauge);
                for j in 0..20 {
                    m.push(&[("k", &format!("{j:0>40}"))], Value::Gauge(j as f64));
                }
                m
            })
            .collect();
        let c = convert(
            &metrics,
            Histograms::Exponential,
            &resource(&[]),
            &scope(),
            &mut st,
            2 * S,
            16 << 10,
        );
        assert!(c.requests.len() > 1, "{}", c.requests.len());
        assert!(c.requests.iter().all(|r| r.body.len() <= 16 << 10));
        assert_eq!(c.requests.iter().map(|r| r.points).sum::<u64>(), 1000);
        let decoded: usize = c
            .requests
            .iter()
            .map(|r| {
                ExportMetricsServiceRequest::decode(r.body.as_ref())
                    .unwrap()
                    .resource_metrics[0]
                    .scope_metrics[0]
                    .metrics
                    .len()
            })
            .sum();
        assert_eq!(decoded, 50);
    }

    #[test]
    fn the_apps_own_metrics_are_not_pushed() {
        let mut st = StartTimes::new(S, 10, FORGET_AFTER_NANOS);
        let app = Metric::new("process.cpu.time", "app's", "s", MetricKind::Counter)
            .from_app()
            .with(&[], Value::Sum(9.0));
        let got = push(&[app, counter(1.0)], &mut st, 2 * S);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].name, "vitals.gc.pause");
        assert_eq!(st.len(), 1);
    }

    #[test]
    fn a_value_that_does_not_fit_the_kind_is_skipped() {
        let mut st = StartTimes::new(S, 10, FORGET_AFTER_NANOS);
        let m = Metric::new("h", "h", "s", MetricKind::Histogram)
            .with(&[], Value::Gauge(1.0))
            .with(
                &[("a", "b")],
                Value::Histogram {
                    buckets: vec![(1.0, 1), (f64::INFINITY, 1)],
                    sum: 0.5,
                    count: 1,
                    exemplars: vec![],
                    native: None,
                },
            );
        let c = convert(
            &[m],
            Histograms::Exponential,
            &resource(&[]),
            &scope(),
            &mut st,
            2 * S,
            1 << 20,
        );
        assert_eq!(c.skipped, 1);
        assert_eq!(c.requests[0].points, 1);
    }
}
