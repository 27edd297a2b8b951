//! A real Prometheus scrapes vitals on loopback; its HTTP API returns the target's RSS as /proc has it.

mod common;

use std::time::{Duration, Instant};

use common::{query, start_prometheus, TestChild, Vitals};

#[test]
fn prometheus_scrapes_the_targets_rss() {
    let child = TestChild::hold(&["--alloc-mib", "48"]);
    let v = Vitals::start(&["--pid", &child.pid().to_string(), "--interval", "500ms"]);
    let prom = start_prometheus(&v.metrics.to_string(), &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let got = loop {
        if let Some(x) = query(&prom, "process_memory_usage_bytes{job=\"vitals\"}") {
            break x;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never stored process_memory_usage_bytes"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let stat = procfs::process::Process::new(child.pid() as i32)
        .unwrap()
        .stat()
        .unwrap();
    let rss = (stat.rss * procfs::page_size()) as f64;
    assert!(
        (got - rss).abs() / rss < 0.01,
        "Prometheus has {got}, /proc has {rss}"
    );
    assert_eq!(query(&prom, "up{job=\"vitals\"}"), Some(1.0));
    assert_eq!(query(&prom, "vitals_target_up{job=\"vitals\"}"), Some(1.0));
}
