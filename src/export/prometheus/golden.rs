//! Golden expositions: one fixed scenario (app metrics of every kind, exponential histograms converted,
//! label values that need escaping, UTF-8 names, an overflow series, vitals' own metrics with exemplars)
//! rendered in every format under every escaping scheme, compared with the files under
//! `tests/fixtures/exposition/`. A change to how the encoder or the app store writes a series shows up
//! here as a byte difference.
//!
//! The app store iterates its series in hash-table order, which differs between processes, so before
//! comparing, the sample lines (text) or `Metric` messages (protobuf) of each gauge or counter family are
//! sorted; histogram and summary families hold one series (plus the overflow series, written last), so
//! their samples are compared in the order written.
//!
//! `VITALS_BLESS=1 cargo test --lib golden` rewrites the files from the current encoder.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    exponential_histogram_data_point::Buckets, metric::Data, number_data_point,
    summary_data_point::ValueAtQuantile, AggregationTemporality, ExponentialHistogram,
    ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint, Metric as OtlpMetric,
    NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::naming::PrometheusNames;
use super::{Encoder, Escaping, Exposition, Format};
use crate::bounded::OverflowCounter;
use crate::export::http::render_with;
use crate::model::{Collector, Exemplar, Metric, MetricKind, Registry, Value};
use crate::store::app_metrics::{AppMetrics, AppMetricsConfig};

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

fn int_kv(k: &str, v: i64) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(v)),
        }),
        ..Default::default()
    }
}

fn number(attributes: Vec<KeyValue>, start: u64, v: f64) -> NumberDataPoint {
    NumberDataPoint {
        attributes,
        start_time_unix_nano: start,
        time_unix_nano: 2_000_000_000_000_000_000,
        value: Some(number_data_point::Value::AsDouble(v)),
        ..Default::default()
    }
}

fn metric(name: &str, unit: &str, description: &str, data: Data) -> OtlpMetric {
    OtlpMetric {
        name: name.into(),
        unit: unit.into(),
        description: description.into(),
        data: Some(data),
        ..Default::default()
    }
}

/// Floats whose text forms differ most: specials, signed zero, tiny, huge, past 2^53, fractions.
const AWKWARD: [f64; 16] = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.1,
    1.5e-7,
    123_456_789.123,
    1e21,
    -2.5e300,
    9_007_199_254_740_993.0,
    18_446_744_073_709_551_616.0,
    f64::MIN_POSITIVE,
    f64::NAN,
    f64::INFINITY,
    f64::NEG_INFINITY,
    1.0 / 3.0,
];

fn app_metrics() -> Vec<OtlpMetric> {
    let gauges = AWKWARD
        .iter()
        .enumerate()
        .map(|(i, v)| {
            number(
                vec![
                    kv("http.route", &format!("/orders/{i}")),
                    kv("quote\"back\\slash\nnewline", "a\"b\\c\nd}{,="),
                    kv("café.région", "crème brûlée"),
                    kv("empty", ""),
                ],
                0,
                *v,
            )
        })
        .collect();
    let counters = (0..6)
        .map(|i| {
            number(
                vec![
                    kv("route", &format!("/r/{i}")),
                    int_kv("http.status_code", 200),
                ],
                1_700_000_000_123_456_789,
                (i as f64) * 1.25 + 1e9,
            )
        })
        .collect();
    vec![
        metric(
            "http.server.active_requests",
            "{request}",
            "Requests in flight, with \"quotes\", a back\\slash\nand a second line",
            Data::Gauge(Gauge {
                data_points: gauges,
            }),
        ),
        metric(
            "orders.placed",
            "{order}",
            "Orders placed",
            Data::Sum(Sum {
                data_points: counters,
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            }),
        ),
        metric(
            "queue.depth",
            "By",
            "",
            Data::Sum(Sum {
                data_points: vec![
                    number(vec![kv("queue", "a")], 0, -3.0),
                    number(vec![kv("queue", "b")], 0, 4096.5),
                    // Keys written alike are joined under the first.
                    number(vec![kv("a.b", "x"), kv("a_b", "y")], 0, 7.0),
                ],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: false,
            }),
        ),
        metric(
            "process.cpu.time",
            "s",
            "The app's own CPU time",
            Data::Sum(Sum {
                data_points: vec![number(vec![kv("cpu.mode", "user")], 5, 12.75)],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            }),
        ),
        metric(
            "jobs.done",
            "1",
            "Delta counter accumulated",
            Data::Sum(Sum {
                data_points: vec![
                    NumberDataPoint {
                        start_time_unix_nano: 10,
                        time_unix_nano: 20,
                        ..number(vec![kv("le", "not a bound")], 10, 2.0)
                    },
                    NumberDataPoint {
                        start_time_unix_nano: 20,
                        time_unix_nano: 30,
                        ..number(vec![kv("le", "not a bound")], 20, 3.5)
                    },
                ],
                aggregation_temporality: AggregationTemporality::Delta as i32,
                is_monotonic: true,
            }),
        ),
        metric(
            "http.server.request.duration",
            "s",
            "Duration of HTTP server requests",
            Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    attributes: vec![kv("http.route", "/a\"b"), kv("quantile", "q")],
                    start_time_unix_nano: 1_600_000_000_000_000_001,
                    time_unix_nano: 2_000_000_000_000_000_000,
                    count: 10,
                    sum: Some(1.234_567_890_123_4),
                    bucket_counts: vec![1, 2, 3, 0, 4],
                    explicit_bounds: vec![0.005, 0.1, 1.0, 2.5],
                    ..Default::default()
                }],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            }),
        ),
        metric(
            "db.client.operation.duration",
            "ms",
            "Exponential histogram",
            Data::ExponentialHistogram(ExponentialHistogram {
                data_points: vec![ExponentialHistogramDataPoint {
                    attributes: vec![kv("db.system", "postgresql")],
                    start_time_unix_nano: 1_700_000_000_000_000_000,
                    time_unix_nano: 2_000_000_000_000_000_000,
                    scale: 2,
                    count: 17,
                    sum: Some(321.5),
                    zero_count: 1,
                    zero_threshold: 0.001,
                    positive: Some(Buckets {
                        offset: -3,
                        bucket_counts: vec![1, 0, 0, 0, 5, 2, 0, 3],
                    }),
                    negative: Some(Buckets {
                        offset: 1,
                        bucket_counts: vec![2, 0, 3],
                    }),
                    min: Some(-4.0),
                    max: Some(90.0),
                    ..Default::default()
                }],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            }),
        ),
        metric(
            "rpc.latency.fine",
            "s",
            "Exponential histogram finer than schema 8",
            Data::ExponentialHistogram(ExponentialHistogram {
                data_points: vec![ExponentialHistogramDataPoint {
                    attributes: vec![],
                    time_unix_nano: 2_000_000_000_000_000_000,
                    scale: 10,
                    count: 3,
                    sum: Some(3.0),
                    positive: Some(Buckets {
                        offset: 1000,
                        bucket_counts: vec![1, 1, 1],
                    }),
                    ..Default::default()
                }],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            }),
        ),
        metric(
            "gc.pause",
            "ms",
            "Summary",
            Data::Summary(Summary {
                data_points: vec![SummaryDataPoint {
                    attributes: vec![kv("gc", "G1 Young")],
                    start_time_unix_nano: 3,
                    time_unix_nano: 2_000_000_000_000_000_000,
                    count: 42,
                    sum: 99.125,
                    quantile_values: vec![
                        ValueAtQuantile {
                            quantile: 0.5,
                            value: 1.5,
                        },
                        ValueAtQuantile {
                            quantile: 0.99,
                            value: f64::INFINITY,
                        },
                        ValueAtQuantile {
                            quantile: 1.0,
                            value: 3e-9,
                        },
                    ],
                    ..Default::default()
                }],
            }),
        ),
        metric(
            "über.metric:with/odd-chars",
            "",
            "A name outside the legacy character set",
            Data::Gauge(Gauge {
                data_points: vec![number(vec![kv("ключ", "значение")], 0, 2.0)],
            }),
        ),
        // More series than the limit: the rest go to the overflow series.
        metric(
            "many.series",
            "",
            "Overflows",
            Data::Gauge(Gauge {
                data_points: (0..(SERIES_LIMIT + 3))
                    .map(|i| number(vec![kv("i", &i.to_string())], 0, i as f64))
                    .collect(),
            }),
        ),
    ]
}

const SERIES_LIMIT: usize = 20;

fn request() -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", "shop \"eu\""),
                    kv("k8s.pod.name", "shop-1"),
                    kv("service", "clash"),
                ],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics: app_metrics(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// vitals' own metrics, as a small collector writes them: exemplars, vitals naming.
struct Own;

impl Collector for Own {
    fn collect(&self, out: &mut Vec<Metric>) {
        let ex = Exemplar {
            attributes: vec![
                ("trace_id".into(), "0af7651916cd43dd8448eb211c80319c".into()),
                ("span_id".into(), "b7ad6b7169203331".into()),
            ],
            value: 0.07,
            timestamp: Some(1_700_000_000.5),
        };
        out.push(
            Metric::new(
                "vitals.db.n_plus_one",
                "N+1 runs",
                "{run}",
                MetricKind::Counter,
            )
            .with(&[("route", "/a")], Value::SumWithExemplar(3.0, ex.clone())),
        );
        out.push(
            Metric::new("vitals.gc.pause", "Pauses", "s", MetricKind::Histogram).with(
                &[("gc", "young")],
                Value::Histogram {
                    buckets: vec![(0.001, 1), (0.5, 4), (f64::INFINITY, 5)],
                    sum: 0.75,
                    count: 5,
                    exemplars: vec![None, Some(ex), None],
                    native: None,
                },
            ),
        );
        out.push(
            Metric::new("process.memory.usage", "RSS", "By", MetricKind::Gauge)
                .with(&[], Value::Gauge(123_456_789.0)),
        );
    }
}

fn registry() -> Registry {
    let store = Arc::new(AppMetrics::new(
        AppMetricsConfig {
            series_limit: SERIES_LIMIT,
            family_limit: 100,
            ttl: Duration::from_secs(3600),
            promote: vec!["k8s.pod.name".into()],
        },
        OverflowCounter::default(),
        Arc::new(PrometheusNames),
    ));
    let out = store.ingest(&request());
    assert_eq!(out.rejected, 0, "{}", out.message);
    let registry = Registry::new();
    registry.register(Arc::new(Own));
    registry.register(store);
    registry
}

/// Text: each gauge/counter family's sample lines sorted; other lines in order.
fn canonical_text(text: &str) -> String {
    let mut out = Vec::new();
    let mut samples: Vec<&str> = Vec::new();
    let mut sortable = false;
    let flush = |out: &mut Vec<String>, samples: &mut Vec<&str>, sortable: bool| {
        if sortable {
            samples.sort_unstable();
        }
        out.extend(samples.drain(..).map(str::to_owned));
    };
    for line in text.lines() {
        if line.starts_with("# HELP") {
            flush(&mut out, &mut samples, sortable);
            sortable = false;
        }
        if line.starts_with('#') {
            if line.starts_with("# TYPE") {
                sortable = line.ends_with(" gauge") || line.ends_with(" counter");
            }
            out.push(line.to_owned());
        } else {
            samples.push(line);
        }
    }
    flush(&mut out, &mut samples, sortable);
    out.join("\n") + "\n"
}

fn varint(b: &[u8], at: &mut usize) -> u64 {
    let (mut v, mut shift) = (0u64, 0);
    loop {
        let byte = b[*at];
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return v;
        }
        shift += 7;
    }
}

/// Protobuf: each delimited family as hex, its header fields in order, the `Metric` fields (4) of a
/// gauge or counter family sorted.
fn canonical_protobuf(b: &[u8]) -> String {
    let mut out = String::new();
    let mut at = 0;
    while at < b.len() {
        let len = varint(b, &mut at) as usize;
        let family = &b[at..at + len];
        at += len;
        let (mut header, mut metrics, mut kind) = (Vec::new(), Vec::new(), None);
        let mut f = 0;
        while f < family.len() {
            let from = f;
            let key = varint(family, &mut f);
            match key & 7 {
                0 => {
                    let v = varint(family, &mut f);
                    if key >> 3 == 3 {
                        kind = Some(v);
                    }
                }
                2 => {
                    let n = varint(family, &mut f) as usize;
                    f += n;
                }
                w => panic!("wire type {w} in a family"),
            }
            if key >> 3 == 4 {
                metrics.push(hex(&family[from..f]));
            } else {
                header.push(hex(&family[from..f]));
            }
        }
        // COUNTER 0, GAUGE 1.
        if matches!(kind, Some(0 | 1)) {
            metrics.sort_unstable();
        }
        out.push_str(&format!(
            "family {}\n{}\n",
            header.join(" "),
            metrics.join("\n")
        ));
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/exposition")
        .join(name)
}

#[test]
fn every_exposition_matches_its_golden_file() {
    let registry = registry();
    let bless = std::env::var_os("VITALS_BLESS").is_some();
    let mut differ = Vec::new();
    for format in [Format::Text, Format::OpenMetrics, Format::Protobuf] {
        for escaping in Escaping::ALL {
            let exposition = Exposition { format, escaping };
            let mut encoder = Encoder::for_exposition(exposition).remembering();
            // Twice with one encoder: what it keeps between scrapes (translations, and the lines the
            // second copies from the first) must not change the second.
            let first = render_with(&mut encoder, &registry, 0);
            let second = render_with(&mut encoder, &registry, first.len());
            if format != Format::Protobuf {
                assert_eq!(
                    first, second,
                    "{format:?} {escaping:?}: second scrape differs"
                );
                assert!(
                    encoder.reused_lines() > 10,
                    "{format:?} {escaping:?}: the second scrape copied {} lines",
                    encoder.reused_lines()
                );
            }
            let (got, again) = match format {
                Format::Protobuf => (canonical_protobuf(&first), canonical_protobuf(&second)),
                _ => (
                    canonical_text(&String::from_utf8(first).expect("text is UTF-8")),
                    canonical_text(&String::from_utf8(second).expect("text is UTF-8")),
                ),
            };
            assert_eq!(got, again, "{format:?} {escaping:?}: second scrape differs");
            let name = format!(
                "{}.{}.txt",
                match format {
                    Format::Text => "text",
                    Format::OpenMetrics => "openmetrics",
                    Format::Protobuf => "protobuf",
                },
                escaping.as_str()
            );
            let path = fixture(&name);
            if bless {
                std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
                std::fs::write(&path, &got).expect("write the golden file");
                continue;
            }
            let want = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e} (VITALS_BLESS=1 writes it)", path.display()));
            if got != want {
                let line = got
                    .lines()
                    .zip(want.lines())
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                differ.push(format!(
                    "{name}: first difference at line {}:\n  got  {:?}\n  want {:?}",
                    line + 1,
                    got.lines().nth(line),
                    want.lines().nth(line)
                ));
            }
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}
