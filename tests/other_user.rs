//! vitals running as another user than its target: the ptrace-protected files (`io`, the `fd` listing,
//! `root`) cannot be read. One warning names them, the reason and the fix; what can be read is exported and
//! what cannot is left out. Needs root, to start the two processes as two users (`.ci/run` runs as root).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{require_tool, vitals_bin, Exposition, TestChild};

#[test]
fn another_users_target_gets_one_warning_naming_what_is_unreadable() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    assert!(
        status.lines().any(|l| l.starts_with("Uid:\t0\t")),
        "this test needs root to run the target and vitals as two users"
    );
    let setpriv = require_tool("setpriv", "apt-get install util-linux");
    // The target runs as root; vitals as nobody (65534), without CAP_SYS_PTRACE.
    let target = TestChild::hold(&["--threads", "2", "--fds", "3"]);
    let pid = target.pid().to_string();
    let mut vitals = Command::new(setpriv)
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(vitals_bin())
        .args([
            "--pid",
            &pid,
            "--interval",
            "100ms",
            "--metrics-addr",
            "127.0.0.1:0",
            "--otlp-grpc-addr",
            "off",
            "--otlp-http-addr",
            "off",
            "--log-level",
            "info",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = vitals.stderr.take().unwrap();
    let log2 = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(a) = line.split("serving /metrics addr=").nth(1) {
                let _ = tx.send(a.trim().to_owned());
            }
            let mut l = log2.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    let scrape = || {
        Exposition::parse(
            &ureq::get(&format!("http://{addr}/metrics"))
                .call()
                .unwrap()
                .into_string()
                .unwrap(),
        )
    };
    // Ten ticks of 100 ms make the slow tier run (and retry the unreadable files) at least once more;
    // 5 s allows for a loaded machine.
    let deadline = Instant::now() + Duration::from_secs(5);
    let e = loop {
        let e = scrape();
        if e.get(
            "vitals_exporter_read_errors_total",
            &[("source", "proc_io")],
        )
        .unwrap_or(0.0)
            >= 2.0
            || Instant::now() > deadline
        {
            break e;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = vitals.kill();
    let _ = vitals.wait();
    let log = log.lock().unwrap().clone();

    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("permission denied"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning per attach:\n{log}");
    let w = warnings[0];
    for part in [
        format!("/proc/{pid}/io"),
        format!("/proc/{pid}/fd"),
        format!("/proc/{pid}/root"),
        "vitals runs as uid 65534, the target as uid 0".to_owned(),
        "CAP_SYS_PTRACE".to_owned(),
        "process_disk_io_bytes_total".to_owned(),
    ] {
        assert!(w.contains(&part), "warning lacks {part:?}: {w}");
    }
    // What can be read is there; what cannot is left out, not a 0.
    assert_eq!(e.get("vitals_target_up", &[]), Some(1.0));
    assert_eq!(e.get("process_threads", &[]), Some(2.0));
    assert!(e.get("process_open_file_descriptors", &[]).is_some());
    assert!(!e.has("process_disk_io_bytes_total"), "{}", e.text);
}
