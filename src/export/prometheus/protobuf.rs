//! The Prometheus protobuf exposition (`io.prometheus.client.MetricFamily`, length-delimited): the message
//! types, and the conversion of one point into a `Metric` message with its native histogram, classic
//! buckets, start (created) timestamp and exemplars.
//!
//! The messages are written here with prost's derive rather than generated from `metrics.proto`: the
//! schema is small and stable, and generating it would need protoc at build time. Field numbers follow
//! the current `client_model` schema (created timestamps 3/4/15, native exemplars 16); an older reader
//! skips the fields it does not know. `tests/prometheus_native.rs` holds the decoding to the official
//! Go decoder and to Prometheus itself.

use prost::Message;

use crate::model::{Exemplar, Exponential, MetricKind, ValueRef};

/// `io.prometheus.client.LabelPair`.
#[derive(Clone, PartialEq, Message)]
pub struct LabelPair {
    /// Label name.
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// Label value.
    #[prost(string, optional, tag = "2")]
    pub value: Option<String>,
}

/// `io.prometheus.client.Gauge`.
#[derive(Clone, PartialEq, Message)]
pub struct Gauge {
    /// Value.
    #[prost(double, optional, tag = "1")]
    pub value: Option<f64>,
}

/// `io.prometheus.client.Counter`.
#[derive(Clone, PartialEq, Message)]
pub struct Counter {
    /// Value.
    #[prost(double, optional, tag = "1")]
    pub value: Option<f64>,
    /// Exemplar.
    #[prost(message, optional, tag = "2")]
    pub exemplar: Option<PbExemplar>,
    /// When the counter started counting.
    #[prost(message, optional, tag = "3")]
    pub created_timestamp: Option<prost_types::Timestamp>,
}

/// `io.prometheus.client.Quantile`.
#[derive(Clone, PartialEq, Message)]
pub struct Quantile {
    /// Quantile.
    #[prost(double, optional, tag = "1")]
    pub quantile: Option<f64>,
    /// Value.
    #[prost(double, optional, tag = "2")]
    pub value: Option<f64>,
}

/// `io.prometheus.client.Summary`.
#[derive(Clone, PartialEq, Message)]
pub struct Summary {
    /// Count.
    #[prost(uint64, optional, tag = "1")]
    pub sample_count: Option<u64>,
    /// Sum.
    #[prost(double, optional, tag = "2")]
    pub sample_sum: Option<f64>,
    /// Quantiles.
    #[prost(message, repeated, tag = "3")]
    pub quantile: Vec<Quantile>,
    /// When the summary started.
    #[prost(message, optional, tag = "4")]
    pub created_timestamp: Option<prost_types::Timestamp>,
}

/// `io.prometheus.client.Bucket` (classic).
#[derive(Clone, PartialEq, Message)]
pub struct Bucket {
    /// Cumulative count.
    #[prost(uint64, optional, tag = "1")]
    pub cumulative_count: Option<u64>,
    /// Inclusive upper bound.
    #[prost(double, optional, tag = "2")]
    pub upper_bound: Option<f64>,
    /// Exemplar.
    #[prost(message, optional, tag = "3")]
    pub exemplar: Option<PbExemplar>,
}

/// `io.prometheus.client.BucketSpan`.
#[derive(Clone, PartialEq, Message)]
pub struct BucketSpan {
    /// Gap to the previous span, or the first bucket's index.
    #[prost(sint32, optional, tag = "1")]
    pub offset: Option<i32>,
    /// Consecutive buckets.
    #[prost(uint32, optional, tag = "2")]
    pub length: Option<u32>,
}

/// `io.prometheus.client.Histogram`: classic buckets and the native (exponential) form side by side.
#[derive(Clone, PartialEq, Message)]
pub struct Histogram {
    /// Count.
    #[prost(uint64, optional, tag = "1")]
    pub sample_count: Option<u64>,
    /// Sum.
    #[prost(double, optional, tag = "2")]
    pub sample_sum: Option<f64>,
    /// Classic buckets.
    #[prost(message, repeated, tag = "3")]
    pub bucket: Vec<Bucket>,
    /// Native schema (-4..=8).
    #[prost(sint32, optional, tag = "5")]
    pub schema: Option<i32>,
    /// Width of the zero bucket.
    #[prost(double, optional, tag = "6")]
    pub zero_threshold: Option<f64>,
    /// Count of the zero bucket.
    #[prost(uint64, optional, tag = "7")]
    pub zero_count: Option<u64>,
    /// Negative spans.
    #[prost(message, repeated, tag = "9")]
    pub negative_span: Vec<BucketSpan>,
    /// Negative bucket count deltas.
    #[prost(sint64, repeated, packed = "false", tag = "10")]
    pub negative_delta: Vec<i64>,
    /// Positive spans.
    #[prost(message, repeated, tag = "12")]
    pub positive_span: Vec<BucketSpan>,
    /// Positive bucket count deltas.
    #[prost(sint64, repeated, packed = "false", tag = "13")]
    pub positive_delta: Vec<i64>,
    /// When the histogram started.
    #[prost(message, optional, tag = "15")]
    pub created_timestamp: Option<prost_types::Timestamp>,
    /// Exemplars of the native histogram (each with a timestamp).
    #[prost(message, repeated, tag = "16")]
    pub exemplars: Vec<PbExemplar>,
}

/// `io.prometheus.client.Exemplar`.
#[derive(Clone, PartialEq, Message)]
pub struct PbExemplar {
    /// Labels (`trace_id`, `span_id`).
    #[prost(message, repeated, tag = "1")]
    pub label: Vec<LabelPair>,
    /// Observed value.
    #[prost(double, optional, tag = "2")]
    pub value: Option<f64>,
    /// When it was observed.
    #[prost(message, optional, tag = "3")]
    pub timestamp: Option<prost_types::Timestamp>,
}

/// `io.prometheus.client.Metric`.
#[derive(Clone, PartialEq, Message)]
pub struct PbMetric {
    /// Labels.
    #[prost(message, repeated, tag = "1")]
    pub label: Vec<LabelPair>,
    /// Gauge value.
    #[prost(message, optional, tag = "2")]
    pub gauge: Option<Gauge>,
    /// Counter value.
    #[prost(message, optional, tag = "3")]
    pub counter: Option<Counter>,
    /// Summary value.
    #[prost(message, optional, tag = "4")]
    pub summary: Option<Summary>,
    /// Histogram value.
    #[prost(message, optional, tag = "7")]
    pub histogram: Option<Histogram>,
}

/// `io.prometheus.client.MetricFamily`.
#[derive(Clone, PartialEq, Message)]
pub struct MetricFamily {
    /// Name (a counter's with `_total`).
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// Help text.
    #[prost(string, optional, tag = "2")]
    pub help: Option<String>,
    /// Type: COUNTER 0, GAUGE 1, SUMMARY 2, UNTYPED 3, HISTOGRAM 4.
    #[prost(int32, optional, tag = "3")]
    pub r#type: Option<i32>,
    /// Metrics.
    #[prost(message, repeated, tag = "4")]
    pub metric: Vec<PbMetric>,
}

/// The `MetricType` number of a kind.
pub fn type_number(kind: MetricKind) -> i32 {
    match kind {
        MetricKind::Counter => 0,
        MetricKind::UpDownCounter | MetricKind::Gauge => 1,
        MetricKind::Summary => 2,
        MetricKind::Histogram => 4,
    }
}

/// Highest native schema Prometheus reads; finer exponential buckets are merged down to it.
const MAX_SCHEMA: i32 = 8;
/// Lowest native schema Prometheus reads; coarser buckets are served as classic buckets only.
const MIN_SCHEMA: i32 = -4;

fn timestamp_of_nanos(nanos: u64) -> Option<prost_types::Timestamp> {
    (nanos > 0).then_some(prost_types::Timestamp {
        seconds: (nanos / 1_000_000_000) as i64,
        nanos: (nanos % 1_000_000_000) as i32,
    })
}

fn timestamp_of_seconds(s: f64) -> Option<prost_types::Timestamp> {
    (s.is_finite() && s > 0.0).then(|| prost_types::Timestamp {
        seconds: s.floor() as i64,
        nanos: ((s - s.floor()) * 1e9) as i32,
    })
}

fn exemplar(e: &Exemplar) -> PbExemplar {
    PbExemplar {
        label: e
            .attributes
            .iter()
            .map(|(k, v)| LabelPair {
                name: Some(k.clone()),
                value: Some(v.clone()),
            })
            .collect(),
        value: Some(e.value),
        timestamp: e.timestamp.and_then(timestamp_of_seconds),
    }
}

/// Spans and count deltas of one side of an exponential histogram, in Prometheus' indexing (OTel index
/// + 1). A run of more than two empty buckets starts a new span, as client_golang does.
fn spans_and_deltas(side: &crate::model::exponential::ExpBuckets) -> (Vec<BucketSpan>, Vec<i64>) {
    let mut spans: Vec<BucketSpan> = Vec::new();
    let mut deltas = Vec::new();
    let mut prev_count = 0i64;
    // Index just past the last bucket written, Prometheus indexing.
    let mut next: Option<i32> = None;
    for (i, c) in side.iter() {
        let idx = i.saturating_add(1);
        if c == 0 {
            continue;
        }
        match (next, spans.last_mut()) {
            (Some(n), Some(span)) if idx - n <= 2 => {
                for _ in 0..(idx - n) {
                    deltas.push(-prev_count);
                    prev_count = 0;
                }
                span.length = Some(span.length.unwrap_or(0) + (idx - n) as u32 + 1);
            }
            (Some(n), Some(_)) => spans.push(BucketSpan {
                offset: Some(idx - n),
                length: Some(1),
            }),
            _ => spans.push(BucketSpan {
                offset: Some(idx),
                length: Some(1),
            }),
        }
        let c = c.min(i64::MAX as u64) as i64;
        deltas.push(c - prev_count);
        prev_count = c;
        next = Some(idx + 1);
    }
    (spans, deltas)
}

fn native_part(h: &mut Histogram, native: &Exponential) {
    if native.scale < MIN_SCHEMA {
        return;
    }
    let mut n;
    let native = if native.scale > MAX_SCHEMA {
        n = native.clone();
        n.downscale((native.scale - MAX_SCHEMA) as u32);
        &n
    } else {
        native
    };
    h.schema = Some(native.scale);
    h.zero_threshold = Some(native.zero_threshold);
    h.zero_count = Some(native.zero_count);
    let (ps, pd) = spans_and_deltas(&native.positive);
    let (ns, nd) = spans_and_deltas(&native.negative);
    h.positive_span = ps;
    h.positive_delta = pd;
    h.negative_span = ns;
    h.negative_delta = nd;
    if h.positive_span.is_empty() && h.negative_span.is_empty() {
        // The no-op span that marks an empty histogram as native.
        h.positive_span.push(BucketSpan {
            offset: Some(0),
            length: Some(0),
        });
    }
}

/// The value part of one point as a `Metric` message (labels are added by the caller).
pub fn metric_value(kind: MetricKind, start_unix_nanos: u64, value: ValueRef<'_>) -> PbMetric {
    let mut m = PbMetric::default();
    let created = timestamp_of_nanos(start_unix_nanos);
    match value {
        ValueRef::Sum(v) if kind == MetricKind::Counter => {
            m.counter = Some(Counter {
                value: Some(v),
                exemplar: None,
                created_timestamp: created,
            })
        }
        ValueRef::SumWithExemplar(v, e) if kind == MetricKind::Counter => {
            m.counter = Some(Counter {
                value: Some(v),
                exemplar: Some(exemplar(e)),
                created_timestamp: created,
            })
        }
        ValueRef::Sum(v) | ValueRef::Gauge(v) | ValueRef::SumWithExemplar(v, _) => {
            m.gauge = Some(Gauge { value: Some(v) })
        }
        ValueRef::Histogram {
            buckets,
            sum,
            count,
            exemplars,
            native,
        } => {
            let mut h = Histogram {
                sample_count: Some(count),
                sample_sum: Some(sum),
                created_timestamp: created,
                ..Histogram::default()
            };
            buckets.for_each_cumulative(|i, le, c| {
                let ex = exemplars.get(i).and_then(|e| e.as_ref());
                h.bucket.push(Bucket {
                    cumulative_count: Some(c),
                    upper_bound: Some(le),
                    exemplar: ex.map(exemplar),
                });
            });
            if let Some(native) = native {
                native_part(&mut h, native);
                h.exemplars = exemplars
                    .iter()
                    .flatten()
                    .filter(|e| e.timestamp.is_some())
                    .map(exemplar)
                    .collect();
            }
            m.histogram = Some(h);
        }
        ValueRef::Summary {
            quantiles,
            sum,
            count,
        } => {
            m.summary = Some(Summary {
                sample_count: Some(count),
                sample_sum: Some(sum),
                quantile: quantiles
                    .iter()
                    .map(|(q, v)| Quantile {
                        quantile: Some(*q),
                        value: Some(*v),
                    })
                    .collect(),
                created_timestamp: created,
            })
        }
    }
    m
}

/// Writes one family, length-delimited, from its header fields and its already encoded `Metric`
/// fields (`metrics`, each a field 4).
pub fn write_family(out: &mut Vec<u8>, name: &str, help: &str, kind: MetricKind, metrics: &[u8]) {
    let header = MetricFamily {
        name: Some(name.to_owned()),
        help: Some(help.to_owned()),
        r#type: Some(type_number(kind)),
        metric: Vec::new(),
    };
    let len = header.encoded_len() + metrics.len();
    prost::encoding::encode_varint(len as u64, out);
    // Encoding into a Vec cannot run out of room.
    let _ = header.encode(out);
    out.extend_from_slice(metrics);
}

/// Appends one `LabelPair` (field 1 of a `Metric`) to `out`, encoded as prost would encode it.
pub fn write_label_pair(out: &mut Vec<u8>, name: &str, value: &str) {
    use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
    let field = |len: usize| 1 + encoded_len_varint(len as u64) + len;
    encode_key(1, WireType::LengthDelimited, out);
    encode_varint((field(name.len()) + field(value.len())) as u64, out);
    for (tag, s) in [(1, name), (2, value)] {
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(s.len() as u64, out);
        out.extend_from_slice(s.as_bytes());
    }
}

/// Appends string field `tag` (`len` wire type) to `out`.
pub fn write_string_field(out: &mut Vec<u8>, tag: u32, s: &str) {
    use prost::encoding::{encode_key, encode_varint, WireType};
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(s.len() as u64, out);
    out.extend_from_slice(s.as_bytes());
}

/// [`write_label_pair`] with the name already written as field 1 by [`write_string_field`], as an
/// encoder keeps it per label name.
pub fn write_label_pair_named(out: &mut Vec<u8>, name_field: &[u8], value: &str) {
    use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
    encode_key(1, WireType::LengthDelimited, out);
    let value_field = 1 + encoded_len_varint(value.len() as u64) + value.len();
    encode_varint((name_field.len() + value_field) as u64, out);
    out.extend_from_slice(name_field);
    write_string_field(out, 2, value);
}

/// Appends a `Metric` as field 4 of a family under construction: its label pairs, already encoded by
/// [`write_label_pair`], then `metric`'s other fields.
pub fn push_metric(metrics: &mut Vec<u8>, labels: &[u8], metric: &PbMetric) {
    use prost::encoding::{encode_key, encode_varint, WireType};
    encode_key(4, WireType::LengthDelimited, metrics);
    encode_varint((labels.len() + metric.encoded_len()) as u64, metrics);
    metrics.extend_from_slice(labels);
    metric.encode_raw(metrics);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::exponential::ExpBuckets;
    use crate::model::BucketCounts;

    #[test]
    fn hand_written_labels_decode_as_prost_writes_them() {
        let long = "v".repeat(300);
        let pairs = [("service", "shop"), ("", ""), ("route", long.as_str())];
        let mut labels = Vec::new();
        for (k, v) in pairs {
            write_label_pair(&mut labels, k, v);
        }
        let mut named = Vec::new();
        for (k, v) in pairs {
            let mut name = Vec::new();
            write_string_field(&mut name, 1, k);
            write_label_pair_named(&mut named, &name, v);
        }
        assert_eq!(named, labels);
        let value = PbMetric {
            gauge: Some(Gauge { value: Some(2.5) }),
            ..Default::default()
        };
        let mut ours = Vec::new();
        push_metric(&mut ours, &labels, &value);
        let want = PbMetric {
            label: pairs
                .iter()
                .map(|(k, v)| LabelPair {
                    name: Some((*k).to_owned()),
                    value: Some((*v).to_owned()),
                })
                .collect(),
            ..value
        };
        let mut theirs = Vec::new();
        prost::encoding::message::encode(4, &want, &mut theirs);
        assert_eq!(ours, theirs, "byte for byte what prost writes");
    }

    #[test]
    fn spans_skip_long_gaps_and_fill_short_ones() {
        // OTel indices 3,4 then a gap of one, then 6, then a gap of 5, then 12.
        let side = ExpBuckets {
            offset: 3,
            counts: vec![2, 5, 0, 1, 0, 0, 0, 0, 0, 4],
        };
        let (spans, deltas) = spans_and_deltas(&side);
        let s: Vec<(i32, u32)> = spans
            .iter()
            .map(|s| (s.offset.unwrap_or(0), s.length.unwrap_or(0)))
            .collect();
        // Prometheus indices 4,5,(6 empty),7 then 13: the second span starts 5 past the end of the first.
        assert_eq!(s, [(4, 4), (5, 1)]);
        assert_eq!(deltas, [2, 3, -5, 1, 3]);
    }

    #[test]
    fn an_empty_native_histogram_carries_the_no_op_span() {
        let e = Exponential::new(4, 1e-6);
        let m = metric_value(
            MetricKind::Histogram,
            1_700_000_000_500_000_000,
            ValueRef::Histogram {
                buckets: BucketCounts::Cumulative(&[(f64::INFINITY, 0)]),
                sum: 0.0,
                count: 0,
                exemplars: &[],
                native: Some(&e),
            },
        );
        let h = m.histogram.unwrap_or_default();
        assert_eq!(h.schema, Some(4));
        assert_eq!(
            h.positive_span,
            [BucketSpan {
                offset: Some(0),
                length: Some(0)
            }]
        );
        let ct = h.created_timestamp.unwrap_or_default();
        assert_eq!((ct.seconds, ct.nanos), (1_700_000_000, 500_000_000));
    }

    #[test]
    fn too_fine_scales_are_merged_down_to_schema_8() {
        let mut e = Exponential::new(20, 0.0);
        e.record(1.5, 160);
        e.record(1.5001, 160);
        let mut h = Histogram::default();
        native_part(&mut h, &e);
        assert_eq!(h.schema, Some(8));
        assert_eq!(h.positive_delta, [2]);
    }
}
