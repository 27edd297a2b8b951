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
