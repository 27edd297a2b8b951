//! A real Prometheus scrapes vitals on loopback; its HTTP API returns the target's RSS as /proc has it.

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{require_tool, TestChild, Vitals};

struct Prometheus {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_prometheus(target: &str) -> Prometheus {
    let bin = require_tool("prometheus", "apt-get install -y prometheus");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!("global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n  - job_name: vitals\n    static_configs:\n      - targets: ['{target}']\n"),
    )
    .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(bin)
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    Prometheus {
        child,
        addr,
        _dir: dir,
    }
}

fn query(prom: &Prometheus, q: &str) -> Option<f64> {
    let url = format!("http://{}/api/v1/query", prom.addr);
    let body = ureq::get(&url)
        .query("query", q)
        .timeout(Duration::from_secs(5))
        .call()
        .ok()?
        .into_string()
        .ok()?;
    // {"status":"success","data":{"resultType":"vector","result":[{"metric":{...},"value":[ts,"123"]}]}}
    let at = body.find("\"value\":[")?;
    let rest = &body[at..];
    let q1 = rest.find(",\"")? + 2;
    let q2 = rest[q1..].find('"')? + q1;
    rest[q1..q2].parse().ok()
}

#[test]
fn prometheus_scrapes_the_targets_rss() {
    let child = TestChild::hold(&["--alloc-mib", "48"]);
    let v = Vitals::start(&["--pid", &child.pid().to_string(), "--interval", "500ms"]);
    let prom = start_prometheus(&v.metrics.to_string());
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
