//! The live page's heap row and every tuning hint show values on real apps, read from the page's own
//! stream (`/live/stream`), each equal to what the hint's rule computes from ground truth the test knows:
//! a JVM's GC log and `-Xmx` beside a cgroup memory limit, a busy process under a CPU quota and a lowered
//! open-file limit (the kernel's `/proc` and `cpu.stat`), and a SQLAlchemy pool against a real PostgreSQL
//! that reports its own figures through the Python SDK. The cgroup tests need root (cgroup v1 or v2).
//!
//! Already proven elsewhere and not repeated: the Node heap row (`node_runtime.rs`,
//! `live_page_heap_row_shows_the_sdk_heap`), and on `/metrics` the CPU, memory and OOM hints
//! (`tuning_hints.rs`); here the CPU and memory hints are checked again on the page.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Jvm, Killed, TestCgroup, Vitals};
use serde_json::Value;

/// The first `event: frame` of the live stream that meets `cond`; panics with the last one after `within`.
fn live_frame(v: &Vitals, within: Duration, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    let resp = ureq::get(&format!("http://{}/live/stream", v.metrics))
        .timeout(within + Duration::from_secs(2))
        .call()
        .expect("GET /live/stream");
    let mut last = Value::Null;
    let mut frame = false;
    for line in BufReader::new(resp.into_reader())
        .lines()
        .map_while(Result::ok)
    {
        if line == "event: frame" {
            frame = true;
        } else if let Some(data) = line.strip_prefix("data:").filter(|_| frame) {
            if let Ok(f) = serde_json::from_str::<Value>(data.trim()) {
                if cond(&f) {
                    return f;
                }
                last = f;
            }
            frame = false;
        }
        if Instant::now() > deadline {
            break;
        }
    }
    panic!("no matching frame within {within:?}; the last: {last}")
}

/// The page's hint for `resource` (and `pool`), if it has a value.
fn hint(f: &Value, resource: &str, pool: Option<&str>) -> Option<f64> {
    f["hints"]
        .as_array()?
        .iter()
        .find(|h| h["resource"] == resource && pool.is_none_or(|p| h["pool"] == p))?["value"]
        .as_f64()
}

/// The `Tenured: …K(…K)->AFTERK(…K)` of the last full collection in a Serial GC log, in bytes.
fn tenured_after_last_full_gc(log: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(log).ok()?;
    let full: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("Pause Full (System.gc())") && l.contains("->"))
        .collect();
    let id = full
        .last()?
        .split("GC(")
        .nth(1)?
        .split(')')
        .next()?
        .to_owned();
    let line = text
        .lines()
        .find(|l| l.contains(&format!("GC({id}) Tenured: ")))?;
    let after = line.split("->").nth(1)?.split('K').next()?;
    Some(after.parse::<f64>().ok()? * 1024.0)
}

/// `Heap Max Capacity: 128M` of the GC log's start-up lines, in bytes.
fn logged_heap_max(log: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(log).ok()?;
    let v = text
        .lines()
        .find_map(|l| l.split("Heap Max Capacity: ").nth(1))?
        .trim();
    let (n, unit) = v.split_at(v.len() - 1);
    let scale = match unit {
        "K" => 1024.0,
        "M" => 1048576.0,
        "G" => 1073741824.0,
        _ => return None,
    };
    Some(n.parse::<f64>().ok()? * scale)
}

/// A Serial-GC JVM with `-Xms128m -Xmx128m` holding about 24 MiB of small objects, in a cgroup with a
/// 160 MiB memory limit. After vitals attached, the test makes it call System.gc() (a full collection):
/// the heap row equals the old generation the GC log reports after that collection (to the KiB the log
/// prints), the heap limit equals -Xmx to the byte (Serial splits it between a 42.6 MiB young and an
/// 85.4 MiB old generation; the heap is both), and since 128 MiB is more than 75% of 160 MiB the
/// jvm_heap_max hint is 75% of the limit, 120 MiB.
#[test]
fn jvm_heap_row_and_heap_hint() {
    let limit = 160u64 << 20;
    let xmx = 128u64 << 20;
    let cg = TestCgroup::memory_limit(limit);
    let classes = common::compile_java("LongPauses");
    let gc_log = classes.path().join("gc.log");
    let mut child = Command::new(common::java())
        .args([
            "-XX:+UseSerialGC",
            "-Xms128m",
            "-Xmx128m",
            "-XX:+UsePerfData",
        ])
        .arg(format!("-Xlog:gc*:file={}", gc_log.display()))
        .arg("-cp")
        .arg(classes.path())
        .args(["LongPauses", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the JVM");
    let mut stdin = child.stdin.take().expect("its stdin");
    let mut out = BufReader::new(child.stdout.take().expect("its stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("ready");
    assert_eq!(line.trim(), "ready");
    let jvm = Jvm(child);
    let pid = jvm.0.id();
    cg.adopt(pid);
    let v = Vitals::start(&[
        "--pid",
        &pid.to_string(),
        "--interval",
        "200ms",
        "--hints-min-history",
        "1s",
    ]);
    // vitals has read hsperfdata once: the collection that follows is new to it.
    v.wait_until(Duration::from_secs(15), "hsperfdata read", |e| {
        e.find("vitals_gc_pauses_total", &[("source", "hsperfdata")])
            .is_some()
    });
    writeln!(stdin, "gc").expect("ask for System.gc()");
    line.clear();
    out.read_line(&mut line).expect("done");
    assert!(line.starts_with("done"), "{line}");
    let live = tenured_after_last_full_gc(&gc_log).expect("a full collection in the GC log");
    let f = live_frame(&v, Duration::from_secs(10), |f| {
        f["memory"]["heap_after_gc_bytes"].is_number() && hint(f, "jvm_heap_max", None).is_some()
    });
    let heap = f["memory"]["heap_after_gc_bytes"].as_f64().unwrap();
    let heap_limit = f["memory"]["heap_limit_bytes"].as_f64();
    let cg_limit = cg.memory_limit_read();
    eprintln!(
        "figure: GC log old generation after the full GC {live} B, page heap row {heap} B; heap limit \
         {heap_limit:?} (-Xmx {xmx}); jvm_heap_max {:?} for a {cg_limit} B limit",
        hint(&f, "jvm_heap_max", None)
    );
    // The log prints KiB, rounded down; the app allocates nothing after the collection.
    assert!(
        heap >= live && heap < live + 1024.0,
        "page {heap} vs GC log {live}"
    );
    assert!(heap > 20.0 * 1048576.0, "a million small objects: {heap}");
    assert_eq!(heap_limit, Some(xmx as f64));
    assert_eq!(
        logged_heap_max(&gc_log),
        Some(xmx as f64),
        "the JVM's own max"
    );
    assert_eq!(f["memory"]["cgroup_limit_bytes"].as_f64(), Some(cg_limit));
    assert_eq!(cg_limit, limit as f64);
    assert_eq!(hint(&f, "jvm_heap_max", None), Some(cg_limit * 0.75));
    drop(jvm);
}

/// A process that burns a core under a 0.5-core quota, holds 32 MiB and 56 extra fds under a soft open-file
/// limit of 64. On the page: cpu_request is p90 + 15% of its per-second use (at least its mean use, at most
/// the quota plus a 20% allowance for samples straddling CFS periods), cpu_limit is the cgroup's throttled
/// share of periods (within 0.1), memory_request is its peak RSS + 15% (`VmHWM`, within 2%), memory_limit
/// equals it (no OOM kill), and fd_limit is twice the fds it holds (the 56, stdio and Python's own: 61 of
/// 64 here, past 80%).
#[test]
fn busy_process_hints_on_the_page() {
    let cg = TestCgroup::cpu_quota(50_000, 100_000);
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import os, resource\n\
             resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))\n\
             fds = [os.open('/dev/null', os.O_RDONLY) for _ in range(56)]\n\
             b = bytearray(32 << 20)\n\
             for i in range(0, len(b), 4096): b[i] = 1\n\
             print('ready', flush=True)\n\
             while True: pass",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("its stdout"))
        .read_line(&mut line)
        .expect("ready");
    let child = Killed(child);
    assert_eq!(line.trim(), "ready");
    let pid = child.0.id();
    cg.adopt(pid);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as f64;
    let cpu = |pid: u32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<f64> = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0.0))
            .collect();
        (f[11] + f[12]) / 100.0
    };
    let (cpu0, t0) = (cpu(pid), Instant::now());
    let (periods0, throttled0) = (
        cg.stat("cpu.stat", "nr_periods"),
        cg.stat("cpu.stat", "nr_throttled"),
    );
    let v = Vitals::start(&[
        "--pid",
        &pid.to_string(),
        "--interval",
        "250ms",
        "--hints-min-history",
        "3s",
    ]);
    let all = [
        "cpu_request",
        "cpu_limit",
        "memory_request",
        "memory_limit",
        "fd_limit",
    ];
    let f = live_frame(&v, Duration::from_secs(20), |f| {
        all.iter().all(|r| hint(f, r, None).is_some())
    });
    let used = (cpu(pid) - cpu0) / t0.elapsed().as_secs_f64();
    let throttled_truth = (cg.stat("cpu.stat", "nr_throttled") - throttled0)
        / (cg.stat("cpu.stat", "nr_periods") - periods0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap()
        * 1024.0;
    let h = |r| hint(&f, r, None).unwrap();
    eprintln!(
        "figure: mean use {used:.3} cores (quota 0.5), cpu_request {:.3}; throttled {:.3} (cgroup \
         {throttled_truth:.3}); VmHWM {hwm} B, memory_request {} B, memory_limit {} B; {fds} fds of 64, \
         fd_limit {}",
        h("cpu_request"),
        h("cpu_limit"),
        h("memory_request"),
        h("memory_limit"),
        h("fd_limit")
    );
    let p90 = h("cpu_request") / 1.15;
    assert!(
        p90 >= used * 0.95 - 0.005,
        "p90 {p90} below the mean use {used}"
    );
    assert!(p90 <= 0.5 * 1.2, "p90 {p90} above the 0.5-core quota");
    assert!(
        (h("cpu_limit") - throttled_truth).abs() < 0.1,
        "page {} vs cgroup {throttled_truth}",
        h("cpu_limit")
    );
    let peak = h("memory_request") / 1.15;
    assert!(
        peak <= hwm + 4096.0 && peak >= hwm * 0.98,
        "peak {peak} vs VmHWM {hwm}"
    );
    assert_eq!(h("memory_limit"), h("memory_request"));
    assert!((59.0..=64.0).contains(&fds), "{fds}");
    assert_eq!(h("fd_limit"), 2.0 * fds);
    drop(child);
}

/// A SQLAlchemy pool of 5 connections serving 8 workers against a real PostgreSQL, reporting its own
/// figures (count by state, max, pending) through the Python SDK: full with workers waiting in most
/// samples (the app's own 100 ms samples say how many), so the page's db_pool_max hint is 1.5 × 5 → 8.
#[test]
fn saturated_sqlalchemy_pool_gets_its_hint() {
    let pg = common::start_postgres(&[]);
    // Hints follow a target: the app is vitals' target, named by a pid file written once it runs.
    let dir = tempfile::tempdir().expect("temporary directory");
    let pidfile = dir.path().join("app.pid");
    let v = Vitals::start(&[
        "--pid-file",
        pidfile.to_str().unwrap(),
        "--interval",
        "250ms",
        "--hints-min-history",
        "2s",
    ]);
    let (_, http) = v.otlp_addrs();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/sqlalchemy_pool.py");
    let app = Command::new(common::sdk_python())
        .arg(script)
        .args(["--endpoint", &format!("http://{http}"), "--db", &pg.url()])
        .args([
            "--seconds",
            "6",
            "--workers",
            "8",
            "--report-pool",
            "orders-own",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the SQLAlchemy app");
    std::fs::write(&pidfile, app.id().to_string()).expect("write the pid file");
    let f = live_frame(&v, Duration::from_secs(10), |f| {
        hint(f, "db_pool_max", Some("orders-own")).is_some()
    });
    let out = app.wait_with_output().expect("app output");
    assert!(
        out.status.success(),
        "app failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let truth: Value = serde_json::from_slice(&out.stdout).expect("ground truth JSON");
    let row = f["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pool"] == "orders-own")
        .cloned()
        .unwrap_or(Value::Null);
    eprintln!(
        "figure: pool 5/5 in {:.0}% of the app's samples, {:.1} waiting on average; page row {row}, \
         db_pool_max {:?}",
        truth["full_share"].as_f64().unwrap_or(f64::NAN) * 100.0,
        truth["mean_waiting"].as_f64().unwrap_or(f64::NAN),
        hint(&f, "db_pool_max", Some("orders-own"))
    );
    assert_eq!(truth["pool_size"].as_f64(), Some(5.0));
    assert!(truth["full_share"].as_f64().unwrap() > 0.5, "{truth}");
    assert_eq!(row["max"].as_f64(), Some(5.0), "{row}");
    assert_eq!(
        hint(&f, "db_pool_max", Some("orders-own")),
        Some((5.0f64 * 1.5).ceil())
    );
}
