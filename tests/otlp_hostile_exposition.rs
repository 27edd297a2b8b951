//! Legal but hostile OTLP never breaks the exposition: after each input from issue 9 the scrape passes
//! `promtool check metrics`, the protobuf exposition decodes with the official Go decoder (its native
//! histograms adding up), real Prometheus servers scraping every second (one as text, one natively over
//! protobuf) keep `up` at 1 with no duplicate samples, and vitals' own series stay visible. The receiver answers each input with a partial
//! success counting what it refused.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{
    go_decode_exposition, prom_api, promtool_check_metrics, query, start_prometheus, Vitals,
    PROTOBUF_ACCEPT,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    exponential_histogram_data_point::Buckets, metric::Data, number_data_point,
    summary_data_point::ValueAtQuantile, ExponentialHistogram, ExponentialHistogramDataPoint,
    Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
    Sum, Summary, SummaryDataPoint,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, ResourceSpans, ScopeSpans, Span};
use prost::Message;

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn metrics(resource: Vec<KeyValue>, metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
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

fn gauge(name: &str, attrs: Vec<KeyValue>) -> Metric {
    Metric {
        name: name.into(),
        data: Some(Data::Gauge(Gauge {
            data_points: vec![NumberDataPoint {
                attributes: attrs,
                time_unix_nano: now_ns(),
                value: Some(number_data_point::Value::AsDouble(1.0)),
                ..Default::default()
            }],
        })),
        ..Default::default()
    }
}

fn histogram(name: &str, count: u64, buckets: Vec<u64>, bounds: Vec<f64>, delta: bool) -> Metric {
    let t = now_ns();
    Metric {
        name: name.into(),
        data: Some(Data::Histogram(Histogram {
            data_points: vec![HistogramDataPoint {
                count,
                bucket_counts: buckets,
                explicit_bounds: bounds,
                start_time_unix_nano: t - 1000,
                time_unix_nano: t,
                ..Default::default()
            }],
            aggregation_temporality: if delta { 1 } else { 2 },
        })),
        ..Default::default()
    }
}

fn exponential(name: &str, scale: i32, zero_threshold: f64, offset: i32) -> Metric {
    Metric {
        name: name.into(),
        data: Some(Data::ExponentialHistogram(ExponentialHistogram {
            data_points: vec![ExponentialHistogramDataPoint {
                scale,
                count: 4,
                zero_count: 1,
                zero_threshold,
                positive: Some(Buckets {
                    offset,
                    bucket_counts: vec![1, 1, 1],
                }),
                time_unix_nano: now_ns(),
                ..Default::default()
            }],
            aggregation_temporality: 2,
        })),
        ..Default::default()
    }
}

fn post(addr: std::net::SocketAddr, path: &str, body: Vec<u8>) -> Vec<u8> {
    let resp = ureq::post(&format!("http://{addr}{path}"))
        .set("Content-Type", "application/x-protobuf")
        .timeout(Duration::from_secs(10))
        .send_bytes(&body)
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_reader(), &mut out).unwrap();
    out
}

fn rejected_points(addr: std::net::SocketAddr, req: ExportMetricsServiceRequest) -> i64 {
    let r =
        ExportMetricsServiceResponse::decode(&post(addr, "/v1/metrics", req.encode_to_vec())[..])
            .unwrap();
    r.partial_success.map_or(0, |p| p.rejected_data_points)
}

/// Waits until Prometheus has scraped after `since` and returns `up` of that scrape.
fn up_after(prom: &common::Prometheus, since: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(t) = query(prom, "timestamp(up)") {
            if t > since {
                return query(prom, "up").unwrap();
            }
        }
        assert!(Instant::now() < deadline, "Prometheus did not scrape");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn prometheus_counter(prom: &common::Prometheus, name: &str) -> f64 {
    let text = ureq::get(&format!("http://{}/metrics", prom.addr))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The protobuf exposition decodes with the official Go decoder, every family, and each histogram's
/// native buckets add up to its count and its classic buckets are cumulative.
fn protobuf_decodes(v: &Vitals, what: &str) {
    let (status, _, body) = v.get_bytes("/metrics", PROTOBUF_ACCEPT);
    assert_eq!(status, 200, "{what}");
    let families =
        go_decode_exposition(&body).unwrap_or_else(|e| panic!("{what}: Go decoder: {e}"));
    assert!(
        families
            .iter()
            .any(|f| f["name"] == "vitals_exporter_series"),
        "{what}"
    );
    for f in &families {
        for h in f["histograms"].as_array().into_iter().flatten() {
            assert!(h["classic_ok"] == true, "{what}: {f}");
            if h["native"] == true {
                assert!(h["negative_ok"] == true, "{what}: {f}");
                assert_eq!(h["native_total"], h["count"], "{what}: {f}");
            }
        }
    }
}

#[test]
fn hostile_otlp_never_breaks_a_scrape() {
    let v = Vitals::start(&[]);
    let (_, http) = v.otlp_addrs();
    let prom = start_prometheus(&v.metrics.to_string(), &[]);
    let native = start_prometheus(
        &v.metrics.to_string(),
        &["--enable-feature=native-histograms"],
    );
    let big = 1u64 << 63;
    // (what, request, points the receiver must refuse)
    let cases: Vec<(&str, ExportMetricsServiceRequest, i64)> = vec![
        (
            "__name__ as a point and a resource attribute",
            metrics(
                vec![kv("service.name", "shop"), kv("__name__", "forged")],
                vec![gauge("g", vec![kv("__name__", "forged"), kv("__x", "y")])],
            ),
            0,
        ),
        (
            "counter `collide` and gauge `collide total`",
            metrics(
                vec![],
                vec![
                    Metric {
                        name: "collide".into(),
                        data: Some(Data::Sum(Sum {
                            data_points: vec![NumberDataPoint {
                                time_unix_nano: now_ns(),
                                value: Some(number_data_point::Value::AsInt(1)),
                                ..Default::default()
                            }],
                            aggregation_temporality: 2,
                            is_monotonic: true,
                        })),
                        ..Default::default()
                    },
                    gauge("collide total", vec![]),
                ],
            ),
            1,
        ),
        (
            "gauges forging the series of histogram hcol",
            metrics(
                vec![],
                vec![
                    histogram("hcol", 3, vec![1, 2], vec![1.0], false),
                    gauge("hcol.count", vec![]),
                    gauge("hcol bucket", vec![kv("le", "1")]),
                ],
            ),
            2,
        ),
        (
            "exponential histograms with underflowing offsets and a zero threshold on a bound",
            metrics(
                vec![],
                vec![
                    exponential("under", 20, 0.0, -1_500_000_000),
                    exponential("zth", 0, 1.0, -2),
                ],
            ),
            0,
        ),
        (
            "summary with a repeated quantile",
            metrics(
                vec![],
                vec![Metric {
                    name: "summ".into(),
                    data: Some(Data::Summary(Summary {
                        data_points: vec![SummaryDataPoint {
                            quantile_values: vec![
                                ValueAtQuantile {
                                    quantile: 0.5,
                                    value: 1.0,
                                },
                                ValueAtQuantile {
                                    quantile: 0.5,
                                    value: 2.0,
                                },
                            ],
                            time_unix_nano: now_ns(),
                            ..Default::default()
                        }],
                    })),
                    ..Default::default()
                }],
            ),
            1,
        ),
        (
            "bucket counts that wrap u64 and a count that differs from its buckets",
            metrics(
                vec![],
                vec![
                    histogram("wrap", 2, vec![big, big + 2], vec![1.0], false),
                    histogram("odd", 5, vec![1, 2], vec![1.0], false),
                ],
            ),
            2,
        ),
        (
            "delta windows whose sum passes u64::MAX",
            metrics(
                vec![],
                (0..3)
                    .map(|_| {
                        std::thread::sleep(Duration::from_millis(2));
                        histogram("sat", big, vec![big, 0], vec![1.0], true)
                    })
                    .collect(),
            ),
            0,
        ),
        (
            "the app's own process.memory.usage",
            metrics(
                vec![],
                vec![Metric {
                    unit: "By".into(),
                    ..gauge("process.memory.usage", vec![])
                }],
            ),
            0,
        ),
    ];
    let mut since = 0.0;
    for (what, req, refused) in cases {
        assert_eq!(rejected_points(http, req), refused, "{what}");
        let text = v.get("/metrics", None).2;
        if let Err(e) = promtool_check_metrics(&text) {
            panic!("{what}: promtool rejects the scrape:\n{e}");
        }
        protobuf_decodes(&v, what);
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert_eq!(up_after(&prom, t.max(since)), 1.0, "{what}: up");
        assert_eq!(up_after(&native, t.max(since)), 1.0, "{what}: up (native)");
        since = t;
    }
    // RED: a separator inside a service name, and a 1 MiB route.
    let span = |route: &str| Span {
        trace_id: vec![1; 16],
        span_id: vec![2; 8],
        name: "GET".into(),
        kind: SpanKind::Server as i32,
        start_time_unix_nano: now_ns() - 1_000_000,
        end_time_unix_nano: now_ns(),
        attributes: vec![kv("http.route", route)],
        ..Default::default()
    };
    let traces = |service: &str, route: &str| ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![span(route)],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    for (service, route) in [
        ("a\u{1f}b", "c".to_owned()),
        ("a", "b\u{1f}c".to_owned()),
        ("long", "r".repeat(1 << 20)),
    ] {
        let r = ExportTraceServiceResponse::decode(
            &post(http, "/v1/traces", traces(service, &route).encode_to_vec())[..],
        )
        .unwrap();
        assert_eq!(r.partial_success, None);
    }
    let e = v.scrape();
    let red = e.all("vitals_request_duration_seconds_count");
    assert_eq!(red.len(), 3, "three services, three series");
    assert_eq!(
        e.sum("vitals_request_duration_seconds_count", &[("service", "a")]),
        1.0
    );
    let text = v.get("/metrics", None).2;
    promtool_check_metrics(&text).unwrap();
    assert!(
        text.len() < 64 << 10,
        "route cut: scrape is {} bytes",
        text.len()
    );
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert_eq!(up_after(&prom, t), 1.0, "RED inputs: up");
    protobuf_decodes(&v, "RED inputs");
    assert_eq!(up_after(&native, t), 1.0, "RED inputs: up (native)");

    // The forged names never reached Prometheus, the renamed ones did, and vitals' own series are there.
    let names = prom_api(&prom, "/api/v1/label/__name__/values", &[]);
    let names: Vec<&str> = names["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n.as_str())
        .collect();
    assert!(!names.contains(&"forged"), "{names:?}");
    assert!(
        names.contains(&"app_process_memory_usage_bytes"),
        "{names:?}"
    );
    assert!(
        !names.contains(&"process_memory_usage_bytes"),
        "no target: {names:?}"
    );
    assert!(
        names.contains(&"vitals_exporter_otlp_items_total"),
        "{names:?}"
    );
    assert_eq!(
        query(&prom, "count(g{key__name__=\"forged\", service=\"shop\"})"),
        Some(1.0)
    );
    assert_eq!(
        query(&prom, "max(wrap_count) or max(sat_count)"),
        Some(u64::MAX as f64)
    );
    for c in [
        "prometheus_target_scrapes_sample_duplicate_timestamp_total",
        "prometheus_target_scrapes_sample_out_of_order_total",
        "prometheus_target_scrapes_exceeded_sample_limit_total",
    ] {
        assert_eq!(prometheus_counter(&prom, c), 0.0, "{c}");
        assert_eq!(prometheus_counter(&native, c), 0.0, "{c} (native)");
    }
    // Natively: the app's exponential histograms and RED arrived as native histograms.
    assert_eq!(
        query(&native, "histogram_count(sum(under))"),
        Some(4.0),
        "underflowing offsets"
    );
    assert_eq!(
        query(
            &native,
            "histogram_count(sum(vitals_request_duration_seconds))"
        ),
        Some(3.0)
    );
}
