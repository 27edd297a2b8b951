//! No instance is missed: crash loops whose instances live 0.2-0.4 s, with 0.1 s, 1 s and 2 s between them,
//! are counted exactly under `--process` at `--interval 1s` and `10s`, from before the first attach on; a pid
//! file that names a process whose pid was reused after the file was written is not trusted.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{child_script, Vitals};

#[test]
fn crash_loops_are_counted_exactly_before_and_after_the_first_attach() {
    // The instances' command lines end in these digits: `sleep 0.2000<tag>` and so on.
    let tag = format!("000{}", std::process::id());
    let pattern = format!(r"^sleep 0\.[234]{tag}$");
    // Two sidecars, started before any instance exists, at a short and a long interval.
    let fast = Vitals::start(&["--process", &pattern, "--interval", "1s"]);
    let slow = Vitals::start(&["--process", &pattern, "--interval", "10s"]);
    std::thread::sleep(Duration::from_millis(500));
    let mut sup = Command::new("python3")
        .arg(child_script("crash_cycle.py"))
        .args([&tag, "0.2,0.3,0.4", "0.1,1,2"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut out = BufReader::new(sup.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    line.clear();
    out.read_line(&mut line).unwrap();
    let _ = sup.wait();
    let truth: serde_json::Value = serde_json::from_str(&line).expect("supervisor's JSON");
    let instances = truth["pids"].as_array().unwrap().len();
    assert_eq!(instances, 9);
    // The last exit is seen within 100 ms; leave a margin for a loaded machine.
    std::thread::sleep(Duration::from_millis(1500));
    for (name, v) in [("1s", &fast), ("10s", &slow)] {
        let e = v.scrape();
        let restarts = e.get("vitals_target_restarts_total", &[]).unwrap();
        let exits = e.sum("vitals_target_exits_total", &[]);
        eprintln!(
            "figure: interval {name}: {instances} instances, restarts {restarts}, exits {exits}"
        );
        assert_eq!(
            restarts,
            (instances - 1) as f64,
            "interval {name}: every instance after the first is a restart\nlog:\n{}",
            v.log.lock().unwrap()
        );
        assert_eq!(
            exits, instances as f64,
            "interval {name}: every instance ended"
        );
    }
}

/// Starts `sleep` until one gets `pid` (the kernel hands out the pid after the one written to
/// ns_last_pid); needs root, as CI and the development machines are.
fn sleep_with_pid(pid: u32) -> std::process::Child {
    for _ in 0..50 {
        if std::fs::write("/proc/sys/kernel/ns_last_pid", format!("{}", pid - 1)).is_err() {
            panic!("this test needs root to reuse a pid (writes /proc/sys/kernel/ns_last_pid); CI runs as root");
        }
        let mut c = Command::new("sleep").arg("60").spawn().unwrap();
        if c.id() == pid {
            return c;
        }
        let _ = c.kill();
        let _ = c.wait();
    }
    panic!("could not get pid {pid} again after 50 tries (a busy machine takes pids too fast)");
}

#[test]
fn a_pid_file_naming_a_reused_pid_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("app.pid");
    let mut first = Command::new("sleep").arg("60").spawn().unwrap();
    let pid = first.id();
    std::fs::write(&pidfile, format!("{pid}\n")).unwrap();
    let _ = first.kill();
    let _ = first.wait();
    // Written, then its process died; a second later an unrelated process gets the same pid.
    std::thread::sleep(Duration::from_millis(1100 + 1000));
    let mut reused = sleep_with_pid(pid);
    let v = Vitals::start(&[
        "--pid-file",
        pidfile.to_str().unwrap(),
        "--interval",
        "200ms",
    ]);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        let e = v.scrape();
        assert_eq!(e.get("vitals_target_up", &[]), Some(0.0), "{}", e.text);
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, _, body) = v.get("/readyz", None);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("after the file was last written"), "{body}");
    // The service writes its pid file again (same pid, newer file): now it is trusted.
    std::fs::write(&pidfile, format!("{pid}\n")).unwrap();
    let e = v.wait_until(Duration::from_secs(5), "adopted", |e| {
        e.get("vitals_target_up", &[]) == Some(1.0)
    });
    assert_eq!(e.get("vitals_target_restarts_total", &[]), Some(0.0));
    let _ = reused.kill();
    let _ = reused.wait();
}
