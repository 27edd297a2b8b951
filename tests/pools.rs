//! Pool saturation against real processes: a listener with backlog B and K unaccepted connections, a
//! process holding fds under a lowered RLIMIT_NOFILE, threads, and pools reported by the Python SDK.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::{sdk_send, TestChild, Vitals};

#[test]
fn accept_queue_fds_and_threads() {
    let (child, lines) = TestChild::script(
        "hold.py",
        &[
            "--listen",
            "8",
            "--nofile",
            "64",
            "--fds",
            "40",
            "--threads",
            "5",
        ],
    );
    let port = lines
        .iter()
        .find_map(|l| l.strip_prefix("port "))
        .expect("port line")
        .trim()
        .to_owned();
    // Five connections the child never accepts: the kernel completes them into the accept queue.
    let clients: Vec<TcpStream> = (0..5)
        .map(|_| TcpStream::connect(format!("127.0.0.1:{port}")).unwrap())
        .collect();
    let v = Vitals::start(&["--pid", &child.pid().to_string(), "--interval", "200ms"]);
    let pool = [("pool", port.as_str()), ("kind", "accept_queue")];
    let e = v.wait_until(Duration::from_secs(10), "accept queue", |e| {
        e.get("vitals_pool_used", &pool) == Some(5.0)
    });
    assert_eq!(
        e.get("vitals_pool_max", &pool),
        Some(8.0),
        "backlog from sock_diag"
    );
    assert_eq!(
        e.get("vitals_pool_utilization_ratio", &pool),
        Some(5.0 / 8.0)
    );
    assert_eq!(
        e.get(
            "vitals_pool_accept_queue_backlog_source",
            &[("source", "netlink")]
        ),
        Some(1.0)
    );

    let fds = procfs::process::Process::new(child.pid() as i32)
        .unwrap()
        .fd_count()
        .unwrap() as f64;
    let f = [("pool", "fds"), ("kind", "fds")];
    let e = v.wait_until(Duration::from_secs(10), "fds", |e| {
        e.get("vitals_pool_max", &f) == Some(64.0)
    });
    assert_eq!(e.get("vitals_pool_used", &f), Some(fds));
    assert!(
        fds >= 40.0 + 3.0 + 1.0,
        "40 fds, stdio and the listener: {fds}"
    );
    assert_eq!(e.get("vitals_pool_utilization_ratio", &f), Some(fds / 64.0));
    assert_eq!(
        e.get(
            "vitals_pool_used",
            &[("pool", "threads"), ("kind", "threads")]
        ),
        Some(5.0)
    );
    assert!(
        e.get(
            "vitals_pool_max",
            &[("pool", "threads"), ("kind", "threads")]
        )
        .unwrap()
            > 5.0
    );
    drop(clients);
}

#[test]
fn db_pools_from_the_python_sdk() {
    let v = Vitals::start(&[]);
    let (_, http) = v.otlp_addrs();
    let truth = sdk_send("http", &format!("http://{http}"), "runtime", "pools", &[]);
    let db = [("pool", "orders-db"), ("kind", "db")];
    let e = v.wait_until(Duration::from_secs(10), "db pool", |e| {
        e.get("vitals_pool_used", &db).is_some()
    });
    assert_eq!(e.get("vitals_pool_used", &db), truth["db_used"].as_f64());
    assert_eq!(e.get("vitals_pool_max", &db), truth["db_max"].as_f64());
    assert_eq!(
        e.get("vitals_pool_pending", &db),
        truth["db_pending"].as_f64()
    );
    assert_eq!(e.get("vitals_pool_utilization_ratio", &db), Some(0.7));
    let legacy = [("pool", "legacy"), ("kind", "db")];
    assert_eq!(
        e.get("vitals_pool_utilization_ratio", &legacy),
        Some(0.5),
        "deprecated db.client.connections.* names"
    );
}

/// SQLAlchemy's own OpenTelemetry instrumentation sends `db.client.connections.usage` in unit
/// `connections` (no braces) and no max: a real pool of 5 under 8 workers, against a real PostgreSQL,
/// must show as full.
#[test]
fn sqlalchemy_pool_at_capacity_from_its_instrumentation() {
    let pg = common::start_postgres(&[]);
    let v = Vitals::start(&["--interval", "200ms"]);
    let (_, http) = v.otlp_addrs();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/sqlalchemy_pool.py");
    let app = std::process::Command::new(common::sdk_python())
        .arg(script)
        .args(["--endpoint", &format!("http://{http}"), "--db", &pg.url()])
        .args(["--seconds", "8", "--workers", "8"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the SQLAlchemy app");
    let db = [("pool", "orders"), ("kind", "db")];
    // Scrapes while the app runs: (used, utilization).
    let mut seen: Vec<(Option<f64>, Option<f64>)> = Vec::new();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        let e = v.scrape();
        if e.get("vitals_pool_used", &db).is_some() {
            seen.push((
                e.get("vitals_pool_used", &db),
                e.get("vitals_pool_utilization_ratio", &db),
            ));
            assert_eq!(
                e.get("vitals_pool_max", &db),
                None,
                "the instrumentation reports no max; vitals must not invent one"
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let out = app.wait_with_output().expect("app output");
    assert!(
        out.status.success(),
        "app failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let truth: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ground truth JSON");
    assert_eq!(truth["max_used"].as_f64(), Some(5.0), "{truth}");
    let full_share = truth["full_share"].as_f64().unwrap();
    assert!(
        full_share > 0.8,
        "the pool was full most of the run: {truth}"
    );
    assert!(truth["mean_waiting"].as_f64().unwrap() >= 2.0, "{truth}");
    // The first export comes 0.5 s after start, before the workers have all five connections: skip
    // the first second of readings.
    let settled: Vec<_> = seen.iter().skip(4).collect();
    assert!(settled.len() >= 15, "readings while the app ran: {seen:?}");
    let full = settled
        .iter()
        .filter(|(u, r)| *u == Some(5.0) && *r == Some(1.0))
        .count();
    // The pool's own counters read 5/5 in `full_share` of the 100 ms samples; a connection handed back
    // and taken again between two samples is a gap of microseconds, so vitals' 250 ms readings of the
    // 500 ms exports see a full pool at least as often, with slack of 20 points for export timing.
    let share = full as f64 / settled.len() as f64;
    eprintln!(
        "figure: SQLAlchemy pool 5/5 in {:.0}% of the pool's own 100 ms samples, {:.1} workers waiting on \
         average; vitals 5/5 at utilization 1 in {full} of {} readings",
        full_share * 100.0,
        truth["mean_waiting"].as_f64().unwrap_or(f64::NAN),
        settled.len()
    );
    assert!(
        share >= full_share - 0.2,
        "vitals saw 5/5 at ratio 1 in {full} of {} readings, the pool's counters {full_share}: {seen:?}",
        settled.len()
    );
    // VitalsPoolSaturated fires on utilization above 0.9 held for its `for:`.
    assert!(
        settled.iter().all(|(_, r)| r.is_some_and(|r| r > 0.9)),
        "{seen:?}"
    );
}
