//! The real OpenTelemetry Node SDK exports spans (OTLP/HTTP JSON, OTLP/HTTP protobuf, OTLP/gRPC), metrics
//! and logs (OTLP/HTTP JSON) to the real binary; the counts in /metrics equal what was sent.

mod common;

use std::time::Duration;

use common::{node_send, Vitals};

fn run(transport: &str) {
    let v = Vitals::start(&[]);
    let (grpc, http) = v.otlp_addrs();
    let service = format!("node-{transport}");
    let endpoint = if transport == "grpc" {
        format!("http://{grpc}")
    } else {
        format!("http://{http}")
    };
    let http_base = format!("http://{http}");
    let truth = node_send(&[
        "--transport",
        transport,
        "--endpoint",
        &endpoint,
        "--http",
        &http_base,
        "--service",
        &service,
        "--spans",
        "60",
    ]);
    let total = truth["count"].as_f64().unwrap();
    let e = v.wait_until(Duration::from_secs(10), "all spans", |e| {
        e.sum(
            "vitals_request_duration_seconds_count",
            &[("service", &service)],
        ) == total
    });
    for (key, n) in truth["requests"].as_object().unwrap() {
        let parts: Vec<&str> = key.split('|').collect();
        let labels = [
            ("service", service.as_str()),
            ("operation", parts[0]),
            ("kind", parts[1]),
            ("outcome", parts[2]),
        ];
        assert_eq!(
            e.get("vitals_request_duration_seconds_count", &labels),
            n.as_f64(),
            "{key}"
        );
    }
    let e = v.wait_until(Duration::from_secs(10), "metrics and logs", |e| {
        e.get(
            "vitals_log_records_total",
            &[("service", &service), ("severity", "error")],
        )
        .is_some()
    });
    assert_eq!(
        e.get(
            "carts_created_total",
            &[("service", &service), ("region", "eu")]
        ),
        truth["counter"].as_f64()
    );
    assert_eq!(
        e.get("cart_size_bytes_count", &[("service", &service)]),
        truth["hist"]["count"].as_f64()
    );
    assert_eq!(
        e.get("cart_size_bytes_sum", &[("service", &service)]),
        truth["hist"]["sum"].as_f64()
    );
    assert_eq!(
        e.get(
            "cart_size_bytes_bucket",
            &[("service", &service), ("le", "100")]
        ),
        Some(1.0)
    );
    assert_eq!(
        e.get(
            "vitals_log_records_total",
            &[("service", &service), ("severity", "info")]
        ),
        truth["logs"]["info"].as_f64()
    );
    assert_eq!(
        e.get(
            "vitals_log_records_total",
            &[("service", &service), ("severity", "error")]
        ),
        truth["logs"]["error"].as_f64()
    );
}

#[test]
fn http_json() {
    run("json");
}

#[test]
fn http_protobuf() {
    run("proto");
}

#[test]
fn grpc() {
    run("grpc");
}
