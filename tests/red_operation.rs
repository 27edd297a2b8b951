//! The RED operation of server spans without `http.route`: a URL scan traced by the real OpenTelemetry
//! Python SDK must not fill the series limit, and a real route keeps its own series afterwards.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{sdk_python, Vitals};

#[test]
fn routeless_404_scan_is_one_series_and_real_route_keeps_its_own() {
    let v = Vitals::start(&[]);
    let (_, http) = v.otlp_addrs();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/scan_404.py");
    let out = Command::new(sdk_python())
        .arg(script)
        .args(["--endpoint", &format!("http://{http}")])
        .args(["--scans", "2100", "--routed", "50"])
        .output()
        .expect("run scan_404.py");
    assert!(
        out.status.success(),
        "scan_404.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let truth: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ground truth JSON");
    // More distinct paths than the default 2,000-series limit: before, these filled it.
    assert!(truth["distinct_paths"].as_u64().unwrap() > 2000, "{truth}");
    let count = "vitals_request_duration_seconds_count";
    let e = v.wait_until(Duration::from_secs(15), "all spans counted", |e| {
        e.sum(count, &[("service", "scanned")]) >= 2150.0
    });
    // Exact: every span is one request, in exactly two series, none in overflow.
    assert_eq!(
        e.get(
            count,
            &[
                ("service", "scanned"),
                ("operation", "GET"),
                ("outcome", "ok")
            ]
        ),
        Some(2100.0)
    );
    assert_eq!(
        e.get(
            count,
            &[
                ("service", "scanned"),
                ("operation", "/users/{id}"),
                ("outcome", "ok")
            ]
        ),
        Some(50.0)
    );
    assert_eq!(e.all(count).len(), 2, "{:?}", e.all(count));
    assert_eq!(
        e.get("vitals_exporter_series_overflow_total", &[]),
        Some(0.0)
    );
}
