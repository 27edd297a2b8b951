//! The target's process metrics against /proc read independently (the procfs crate), on a real child
//! that holds known memory, fds and threads.

mod common;

use std::time::Duration;

use common::{promtool_check_metrics, TestChild, Vitals};

fn independent(pid: u32) -> (u64, u64, u64, f64, f64) {
    let p = procfs::process::Process::new(pid as i32).expect("child in /proc");
    let stat = p.stat().expect("stat");
    let page = procfs::page_size();
    let hz = procfs::ticks_per_second() as f64;
    let rss = stat.rss * page;
    let fds = p.fd_count().expect("fd count") as u64;
    // A target is its process tree: its CPU includes the children it reaped (cutime, cstime).
    let cpu = (stat.utime + stat.stime + stat.cutime as u64 + stat.cstime as u64) as f64 / hz;
    (rss, fds, stat.num_threads as u64, cpu, 1.0 / hz)
}

#[test]
fn rss_fds_threads_and_cpu_match_proc() {
    let child = TestChild::hold(&[
        "--alloc-mib",
        "64",
        "--fds",
        "40",
        "--threads",
        "6",
        "--spin",
        "0.4",
    ]);
    let pid = child.pid().to_string();
    let v = Vitals::start(&["--pid", &pid, "--interval", "200ms"]);
    // Two intervals after the child settled, every reading is of the settled state.
    std::thread::sleep(Duration::from_millis(500));
    let e = v.wait_until(Duration::from_secs(10), "process metrics", |e| {
        e.has("process_memory_usage_bytes")
    });
    let (rss, fds, threads, cpu, tick) = independent(child.pid());

    let got_rss = e.get("process_memory_usage_bytes", &[]).unwrap();
    assert!(rss > 64 << 20, "child should hold 64 MiB, has {rss}");
    let err = (got_rss - rss as f64).abs() / rss as f64;
    assert!(
        err < 0.01,
        "rss {got_rss} vs /proc {rss}: {:.3}% off",
        err * 100.0
    );

    assert_eq!(
        e.get("process_open_file_descriptors", &[]),
        Some(fds as f64)
    );
    assert!(fds >= 43, "40 extra fds plus stdio, got {fds}");
    assert_eq!(e.get("process_threads", &[]), Some(threads as f64));
    assert_eq!(threads, 6);

    let user = e
        .get("process_cpu_time_seconds_total", &[("cpu_mode", "user")])
        .unwrap();
    let system = e
        .get("process_cpu_time_seconds_total", &[("cpu_mode", "system")])
        .unwrap();
    assert!(
        (user + system - cpu).abs() <= tick + 1e-9,
        "cpu {} vs /proc {cpu} (one tick = {tick})",
        user + system
    );
    // The child spun for 0.4 s of wall time; on a loaded machine it gets less CPU than that. The floor
    // only makes sure the comparison above is between non-trivial values (many ticks).
    assert!(
        cpu >= 0.05,
        "the child spun for 0.4 s, /proc says only {cpu} s of CPU"
    );

    let info = e
        .find("vitals_target_info", &[("pid", &pid)])
        .expect("target info");
    assert!(
        info.labels
            .iter()
            .any(|(k, v)| k == "comm" && v.starts_with("python")),
        "{info:?}"
    );
    assert_eq!(e.get("vitals_target_up", &[]), Some(1.0));

    let limit = procfs::process::Process::new(child.pid() as i32)
        .unwrap()
        .limits()
        .unwrap()
        .max_open_files
        .soft_limit;
    if let procfs::process::LimitValue::Value(n) = limit {
        assert_eq!(e.get("vitals_process_max_fds", &[]), Some(n as f64));
    }
    let start = e.get("vitals_process_start_time_seconds", &[]).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        now - start > 0.3 && now - start < 60.0,
        "start time {start}, now {now}"
    );
    assert!(e.has("vitals_process_scheduler_wait_seconds_total"));
    assert!(e.get("process_memory_virtual_bytes", &[]).unwrap() >= got_rss);
}

#[test]
fn live_scrape_passes_promtool_in_both_formats() {
    let child = TestChild::hold(&["--fds", "3"]);
    let v = Vitals::start(&["--pid", &child.pid().to_string(), "--interval", "200ms"]);
    let e = v.wait_until(Duration::from_secs(10), "a sample", |e| {
        e.has("process_threads")
    });
    promtool_check_metrics(&e.text)
        .unwrap_or_else(|err| panic!("promtool check metrics failed:\n{err}\n{}", e.text));

    let (status, ctype, om) = v.get(
        "/metrics",
        Some("application/openmetrics-text; version=1.0.0"),
    );
    assert_eq!(status, 200);
    assert_eq!(ctype, "application/openmetrics-text");
    assert!(om.ends_with("# EOF\n"));
    assert!(
        om.contains(
            "# TYPE process_cpu_time_seconds counter\n# UNIT process_cpu_time_seconds seconds\n"
        ),
        "{om}"
    );
    let (_, ctype, _) = v.get("/metrics", None);
    assert_eq!(ctype, "text/plain");
}

#[test]
fn health_endpoints_and_landing_page() {
    let child = TestChild::hold(&[]);
    let v = Vitals::start(&["--pid", &child.pid().to_string(), "--interval", "200ms"]);
    v.wait_until(Duration::from_secs(10), "a sample", |e| {
        e.has("process_threads")
    });
    assert_eq!(v.get("/healthz", None).0, 200);
    assert_eq!(v.get("/readyz", None).0, 200);
    let (status, ctype, body) = v.get("/", None);
    assert_eq!((status, ctype.as_str()), (200, "text/html"));
    assert!(
        body.contains("href=\"metrics\"") && body.contains("healthz") && body.contains("readyz")
    );
    assert_eq!(v.get("/nope", None).0, 404);
    let r = ureq::post(&format!("http://{}/metrics", v.metrics)).call();
    assert!(
        matches!(r, Err(ureq::Error::Status(405, _))),
        "POST /metrics should be 405"
    );
}
