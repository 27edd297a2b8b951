//! The real OpenTelemetry Python SDK exports spans, metrics and logs to the real binary over gRPC,
//! HTTP/protobuf and HTTP/JSON (plain and gzip); every count in /metrics equals what was sent.

mod common;

use std::time::Duration;

use common::{promtool_check_metrics, sdk_send, Vitals};

fn check_red(v: &Vitals, service: &str, truth: &serde_json::Value) {
    let requests = truth["requests"].as_object().unwrap();
    let total: u64 = requests.values().map(|n| n.as_u64().unwrap()).sum();
    let e = v.wait_until(Duration::from_secs(10), "all spans", |e| {
        e.sum(
            "vitals_request_duration_seconds_count",
            &[("service", service)],
        ) == total as f64
    });
    for (key, n) in requests {
        let (route, outcome) = key.split_once('|').unwrap();
        let got = e.get(
            "vitals_request_duration_seconds_count",
            &[
                ("service", service),
                ("operation", route),
                ("kind", "server"),
                ("outcome", outcome),
            ],
        );
        assert_eq!(
            got,
            Some(n.as_f64().unwrap()),
            "{service} {route} {outcome}"
        );
    }
    // Sum of durations per route, to the nanosecond rounding of the SDK.
    for (route, durs) in truth["durations"].as_object().unwrap() {
        let want: f64 = durs
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_f64().unwrap())
            .sum();
        let got = e.sum(
            "vitals_request_duration_seconds_sum",
            &[("service", service), ("operation", route)],
        );
        assert!((got - want).abs() < 1e-6, "{route}: sum {got} vs {want}");
        // Bucket placement: le=0.1 counts exactly the spans of at most 0.1 s.
        let at_most: usize = durs
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d.as_f64().unwrap() <= 0.1)
            .count();
        let got = e.sum(
            "vitals_request_duration_seconds_bucket",
            &[("service", service), ("operation", route), ("le", "0.1")],
        );
        assert_eq!(got as usize, at_most, "{route}: le=0.1");
    }
}

fn check_metrics(v: &Vitals, service: &str, truth: &serde_json::Value) {
    let e = v.wait_until(Duration::from_secs(10), "metrics", |e| {
        e.get("orders_total", &[("service", service), ("route", "/a")])
            == truth["orders_a"].as_f64()
    });
    let hostile = truth["hostile"].as_str().unwrap();
    assert_eq!(
        e.get("orders_total", &[("service", service), ("route", hostile)]),
        truth["orders_hostile"].as_f64()
    );
    assert_eq!(
        e.get("queue_size", &[("service", service)]),
        truth["queue"].as_f64()
    );
    assert_eq!(
        e.get(
            "db_client_connection_usage_ratio",
            &[("service", service), ("pool", hostile)]
        ),
        truth["gauge"].as_f64()
    );
    let hs = [("service", service), ("http_route", "/a")];
    assert_eq!(
        e.get("http_server_request_duration_seconds_count", &hs),
        truth["hist_count"].as_f64()
    );
    let sum = e
        .get("http_server_request_duration_seconds_sum", &hs)
        .unwrap();
    assert!((sum - truth["hist_sum"].as_f64().unwrap()).abs() < 1e-9);
    for (le, n) in truth["hist_le"].as_object().unwrap() {
        let labels = [
            ("service", service),
            ("http_route", "/a"),
            ("le", le.as_str()),
        ];
        assert_eq!(
            e.get("http_server_request_duration_seconds_bucket", &labels),
            n.as_f64(),
            "le={le}"
        );
    }
    assert_eq!(
        e.get("latency_exp_seconds_count", &[("service", service)]),
        truth["exp_count"].as_f64()
    );
    assert_eq!(
        e.get("latency_exp_seconds_sum", &[("service", service)]),
        truth["exp_sum"].as_f64()
    );
    assert_eq!(
        e.get(
            "latency_exp_seconds_bucket",
            &[("service", service), ("le", "+Inf")]
        ),
        truth["exp_count"].as_f64()
    );
    assert!(e
        .find(
            "target_info",
            &[("service_name", service), ("service_instance_id", "i-1")]
        )
        .is_some());
}

fn check_logs(v: &Vitals, service: &str, truth: &serde_json::Value) {
    let e = v.wait_until(Duration::from_secs(10), "logs", |e| {
        e.get(
            "vitals_log_records_total",
            &[("service", service), ("severity", "info")],
        ) == truth["info"].as_f64()
    });
    assert_eq!(
        e.get(
            "vitals_log_records_total",
            &[("service", service), ("severity", "warn")]
        ),
        truth["warn"].as_f64()
    );
    assert_eq!(
        e.get(
            "vitals_log_records_total",
            &[("service", service), ("severity", "error")]
        ),
        truth["error"].as_f64()
    );
}

fn run_transport(transport: &str, gzip: bool) {
    let v = Vitals::start(&[]);
    let (grpc, http) = v.otlp_addrs();
    let endpoint = if transport == "grpc" {
        format!("http://{grpc}")
    } else {
        format!("http://{http}")
    };
    let service = format!("svc-{transport}{}", if gzip { "-gz" } else { "" });
    let extra: &[&str] = if gzip { &["--gzip"] } else { &[] };
    let red = sdk_send(
        transport,
        &endpoint,
        "red",
        &service,
        &[extra, &["--spans", "150"]].concat(),
    );
    check_red(&v, &service, &red);
    let metrics = sdk_send(transport, &endpoint, "metrics", &service, extra);
    check_metrics(&v, &service, &metrics);
    let logs = sdk_send(transport, &endpoint, "logs", &service, extra);
    check_logs(&v, &service, &logs);

    let e = v.scrape();
    // 150 server spans + 300 client/internal spans, all valid: every one accepted, none rejected.
    assert_eq!(
        e.get(
            "vitals_exporter_otlp_items_total",
            &[("signal", "traces"), ("outcome", "accepted")]
        ),
        Some(450.0)
    );
    assert_eq!(
        e.get(
            "vitals_exporter_otlp_items_total",
            &[("signal", "traces"), ("outcome", "rejected")]
        ),
        Some(0.0)
    );
    assert_eq!(
        e.get(
            "vitals_exporter_otlp_items_total",
            &[("signal", "logs"), ("outcome", "accepted")]
        ),
        Some(6.0)
    );
    assert_eq!(
        e.get(
            "vitals_exporter_otlp_items_total",
            &[("signal", "metrics"), ("outcome", "rejected")]
        ),
        Some(0.0)
    );
    promtool_check_metrics(&e.text).unwrap_or_else(|err| panic!("promtool: {err}\n{}", e.text));
}

#[test]
fn grpc() {
    run_transport("grpc", false);
}

#[test]
fn grpc_gzip() {
    run_transport("grpc", true);
}

#[test]
fn http_protobuf() {
    run_transport("http", false);
}

#[test]
fn http_protobuf_gzip() {
    run_transport("http", true);
}

#[test]
fn http_json() {
    run_transport("json", false);
}

#[test]
fn http_json_gzip() {
    run_transport("json", true);
}
