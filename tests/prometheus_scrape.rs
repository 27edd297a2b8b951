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

/// The server-side ends of established loopback TCP connections on local `port`, as the peers' ports
/// (from /proc/net/tcp: `local rem st` with hex ports, state 01 = ESTABLISHED).
fn established_peers(port: u16) -> Vec<u16> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            let remote = u16::from_str_radix(f.get(2)?.rsplit(':').next()?, 16).ok()?;
            (local == port && *f.get(3)? == "01").then_some(remote)
        })
        .collect()
}

/// Prometheus keeps its connection to a target open between scrapes. At an interval longer than the 10 s
/// a request head may take, vitals used to close that connection 10 s after each answer (the head
/// deadline ran from the answer, not from the next request's first byte), so every scrape paid a new
/// connection and raced the close. Now one connection carries every scrape.
#[test]
fn prometheus_keeps_one_connection_across_scrapes_longer_apart_than_the_head_deadline() {
    let v = Vitals::start(&[]);
    let prom = common::start_prometheus_config(&format!(
        "global:\n  scrape_interval: 11s\n  scrape_timeout: 5s\nscrape_configs:\n  - job_name: vitals\n    static_configs:\n      - targets: ['{}']\n",
        v.metrics
    ));
    let mut peers = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(75);
    let scrapes = loop {
        peers.extend(established_peers(v.metrics.port()));
        let n = query(&prom, "count_over_time(up{job=\"vitals\"}[5m])").unwrap_or(0.0);
        if n >= 3.0 {
            break n;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus scraped {n} times in 75 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        query(&prom, "min_over_time(up{job=\"vitals\"}[5m])"),
        Some(1.0),
        "every scrape succeeded"
    );
    assert_eq!(
        peers.len(),
        1,
        "{scrapes} scrapes 11 s apart came over {} connections (peer ports {peers:?})",
        peers.len()
    );
}

/// A kept-alive connection may wait between requests, but the next request's head must arrive whole
/// within 10 s of its first byte: one trickled a byte every half second is cut then, not at the
/// listener's 300 s idle deadline.
#[test]
fn a_kept_alive_connection_waits_between_requests_but_a_trickled_head_is_cut() {
    use std::io::{Read, Write};
    let v = Vitals::start(&[]);
    let mut s = std::net::TcpStream::connect(v.metrics).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let ask = b"GET /healthz HTTP/1.1\r\nHost: vitals\r\n\r\n";
    s.write_all(ask).unwrap();
    assert_eq!(common::read_response(&mut s).unwrap(), 200);
    std::thread::sleep(Duration::from_secs(12));
    s.write_all(ask).unwrap();
    assert_eq!(
        common::read_response(&mut s).expect("an answer on the connection kept 12 s"),
        200
    );

    // The next head, trickled: vitals must close the connection about 10 s after its first byte.
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let trickle =
        b"GET /metrics HTTP/1.1\r\nHost: vitals-with-a-rather-long-name-sent-slowly.example\r\n";
    let started = Instant::now();
    let mut closed_after = None;
    for b in trickle {
        if s.write_all(&[*b]).is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        let mut buf = [0u8; 256];
        match s.read(&mut buf) {
            Ok(0) => {
                closed_after = Some(started.elapsed());
                break;
            }
            Ok(n) => panic!(
                "answered a head that never ended: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                closed_after = Some(started.elapsed());
                break;
            }
        }
    }
    let closed_after = closed_after.expect("the trickled head was never cut");
    assert!(
        closed_after >= Duration::from_secs(9) && closed_after < Duration::from_secs(20),
        "cut after {closed_after:?}; the deadline is 10 s from the head's first byte"
    );
}
