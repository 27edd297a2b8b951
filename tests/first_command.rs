//! The README's first command, `cargo run --release -- run -- sleep 300`, run the same way (same
//! arguments, default ports, an empty working directory, no VITALS_* settings) with the binary cargo
//! built for the tests, produces a scrape with the target's metrics on 127.0.0.1:19464.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{vitals_bin, Exposition};

const README_COMMAND: &str = "cargo run --release -- run -- sleep 300";

#[test]
fn readme_first_command_serves_the_targets_metrics() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(
        readme.contains(README_COMMAND),
        "README's first command changed; update this test"
    );
    // The default ports may be held for a moment by another test's vitals on a shared machine: wait up to
    // 60 s for them, then fail naming the port.
    for port in [19464, 4317, 4318] {
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Err(e) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            assert!(
                Instant::now() < deadline,
                "127.0.0.1:{port} is taken ({e}); the README command needs its default ports: \
                 stop what holds them (`ss -ltnp 'sport = :{port}'`)"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let mut vitals = Command::new(vitals_bin())
        .args(["run", "--", "sleep", "300"])
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = vitals.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let serving = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("vitals logged nothing");
    assert!(
        serving.starts_with("[vitals] ")
            && serving.contains("serving /metrics addr=127.0.0.1:19464"),
        "run mode serves on loopback by default: {serving}"
    );

    // The first sample comes within one default interval (1 s); 10 s allows for a loaded machine.
    let deadline = Instant::now() + Duration::from_secs(10);
    let exposition = loop {
        let body = ureq::get("http://localhost:19464/metrics")
            .timeout(Duration::from_secs(5))
            .call()
            .ok()
            .and_then(|r| r.into_string().ok())
            .unwrap_or_default();
        let e = Exposition::parse(&body);
        if e.get("process_memory_usage_bytes", &[]).is_some() || Instant::now() > deadline {
            break e;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let pid = vitals.id();
    let info = exposition
        .find(
            "vitals_target_info",
            &[("comm", "sleep"), ("selected_by", "run")],
        )
        .unwrap_or_else(|| panic!("no sleep target in:\n{}", exposition.text));
    let child_pid: u32 = info
        .labels
        .iter()
        .find(|(k, _)| k == "pid")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap();
    let ppid = std::fs::read_to_string(format!("/proc/{child_pid}/stat"))
        .unwrap()
        .rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().nth(1).map(str::to_owned))
        .unwrap();
    assert_eq!(ppid, pid.to_string(), "the target is vitals' child");
    assert_eq!(exposition.get("vitals_target_up", &[]), Some(1.0));
    // sleep's RSS is a few hundred KiB to a few MiB.
    let rss = exposition.get("process_memory_usage_bytes", &[]).unwrap();
    assert!((64e3..64e6).contains(&rss), "rss {rss}");
    let ready = ureq::get("http://127.0.0.1:19464/readyz").call().unwrap();
    assert_eq!(ready.status(), 200);

    // SIGTERM to vitals is forwarded; sleep dies of it and vitals returns 128 + 15.
    common::unsafe_kill(pid, "TERM");
    let t = Instant::now();
    let status = vitals.wait().unwrap();
    assert_eq!(status.code(), Some(143));
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
}
