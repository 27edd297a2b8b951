//! The receiver's cost estimate is an upper bound of what decoding really allocates: a counting
//! allocator measures the peak heap of decoding each body, protobuf and OTLP/JSON, for the shapes that
//! amplify most (empty items, empty attributes, nested values, packed buckets, `{}` in JSON, metric
//! data points that serde buffers) and for bodies the real Python and Node SDKs sent.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, ArrayValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric::Data, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics,
    ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use vitals::receiver::cost::cost;
use vitals::receiver::decode::{decode, Encoding};
use vitals::receiver::Signal;

struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = NOW.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        grew(l.size());
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        NOW.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // Old and new block both live during the copy.
        grew(new);
        NOW.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Peak heap bytes above the starting point while decoding `body`.
fn decoded_peak(signal: Signal, body: &[u8], enc: Encoding) -> usize {
    let base = NOW.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    match signal {
        Signal::Traces => drop(decode::<ExportTraceServiceRequest>(body, enc).unwrap()),
        Signal::Metrics => drop(decode::<ExportMetricsServiceRequest>(body, enc).unwrap()),
        Signal::Logs => drop(decode::<ExportLogsServiceRequest>(body, enc).unwrap()),
    }
    PEAK.load(Ordering::Relaxed) - base
}

fn check(what: &str, signal: Signal, body: &[u8], enc: Encoding) {
    let c = cost(signal, body, enc).unwrap();
    let real = decoded_peak(signal, body, enc);
    eprintln!(
        "{what}: {} bytes on the wire, {real} decoded, {} estimated ({:.1}x)",
        body.len(),
        c.bytes,
        c.bytes as f64 / real.max(1) as f64
    );
    assert!(
        c.bytes as usize >= real,
        "{what}: estimate {} is below the real {real}",
        c.bytes
    );
    // Not so loose that legitimate batches are refused: within 4x of the real cost for shapes that
    // carry data.
    if body.len() > 10_000 {
        assert!(
            (c.bytes as usize) < 6 * real + 4096,
            "{what}: estimate {} is far above the real {real}",
            c.bytes
        );
    }
}

fn traces(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn metrics(metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            scope_metrics: vec![ScopeMetrics {
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/otlp")
            .join(name),
    )
    .unwrap()
}

#[test]
fn estimate_bounds_the_real_decoded_heap() {
    let pb = Encoding::Protobuf;
    let empty = traces(vec![Span::default(); 100_000]);
    check(
        "100k empty spans",
        Signal::Traces,
        &empty.encode_to_vec(),
        pb,
    );
    check(
        "100k empty spans, JSON",
        Signal::Traces,
        &serde_json::to_vec(&empty).unwrap(),
        Encoding::Json,
    );
    let attrs = traces(vec![Span {
        attributes: vec![KeyValue::default(); 200_000],
        ..Default::default()
    }]);
    check(
        "200k empty attributes",
        Signal::Traces,
        &attrs.encode_to_vec(),
        pb,
    );
    let mut nested = AnyValue::default();
    for _ in 0..45 {
        nested = AnyValue {
            value: Some(any_value::Value::ArrayValue(ArrayValue {
                values: vec![nested, AnyValue::default()],
            })),
        };
    }
    let deep = traces(vec![Span {
        attributes: vec![KeyValue {
            key: "k".into(),
            value: Some(nested),
            ..Default::default()
        }],
        ..Default::default()
    }]);
    check("nested arrays", Signal::Traces, &deep.encode_to_vec(), pb);
    let real_spans = traces(
        (0..5000)
            .map(|i| Span {
                trace_id: vec![1; 16],
                span_id: vec![2; 8],
                name: format!("GET /orders/{i}"),
                kind: 2,
                attributes: vec![
                    kv("http.route", "/orders/{id}"),
                    kv("http.request.method", "GET"),
                    kv("url.path", &format!("/orders/{i}")),
                ],
                ..Default::default()
            })
            .collect(),
    );
    check(
        "5000 real-looking spans",
        Signal::Traces,
        &real_spans.encode_to_vec(),
        pb,
    );
    check(
        "5000 real-looking spans, JSON",
        Signal::Traces,
        &serde_json::to_vec(&real_spans).unwrap(),
        Encoding::Json,
    );
    let hist = metrics(vec![Metric {
        name: "h".into(),
        data: Some(Data::Histogram(Histogram {
            data_points: vec![
                HistogramDataPoint {
                    bucket_counts: vec![1; 2000],
                    explicit_bounds: (0..1999).map(f64::from).collect(),
                    attributes: vec![kv("a", "b")],
                    ..Default::default()
                };
                200
            ],
            aggregation_temporality: 2,
        })),
        ..Default::default()
    }]);
    check(
        "histograms with 2000 buckets",
        Signal::Metrics,
        &hist.encode_to_vec(),
        pb,
    );
    check(
        "histograms with 2000 buckets, JSON",
        Signal::Metrics,
        &serde_json::to_vec(&hist).unwrap(),
        Encoding::Json,
    );
    let points = metrics(vec![Metric {
        name: "s".into(),
        data: Some(Data::Sum(Sum {
            data_points: vec![NumberDataPoint::default(); 50_000],
            aggregation_temporality: 2,
            is_monotonic: true,
        })),
        ..Default::default()
    }]);
    check(
        "50k empty points",
        Signal::Metrics,
        &points.encode_to_vec(),
        pb,
    );
    check(
        "50k empty points, JSON",
        Signal::Metrics,
        &serde_json::to_vec(&points).unwrap(),
        Encoding::Json,
    );
    for (name, signal) in [
        ("sdk-python-traces.json", Signal::Traces),
        ("sdk-python-metrics-1.json", Signal::Metrics),
        ("sdk-python-metrics-2.json", Signal::Metrics),
        ("sdk-python-logs.json", Signal::Logs),
        ("sdk-node-traces.json", Signal::Traces),
        ("sdk-node-metrics.json", Signal::Metrics),
        ("sdk-node-logs.json", Signal::Logs),
    ] {
        check(name, signal, &fixture(name), Encoding::Json);
    }
}
