//! Following the target: a pid file whose process restarts, a regex that waits for its process, a fixed
//! pid that exits, SIGTERM, and bad flags.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{vitals_bin, TestChild, Vitals};

#[test]
fn pid_file_target_restart_is_followed_and_old_series_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("app.pid");
    let first = TestChild::hold(&["--threads", "3"]);
    std::fs::write(&pidfile, format!("{}\n", first.pid())).unwrap();
    let v = Vitals::start(&[
        "--pid-file",
        pidfile.to_str().unwrap(),
        "--interval",
        "200ms",
    ]);
    let first_pid = first.pid().to_string();
    v.wait_until(Duration::from_secs(10), "first target", |e| {
        e.find("vitals_target_info", &[("pid", &first_pid)])
            .is_some()
    });

    drop(first);
    let killed = Instant::now();
    let e = v.wait_until(Duration::from_secs(5), "target down", |e| {
        e.get("vitals_target_up", &[]) == Some(0.0)
    });
    // Within one interval (200 ms) plus scrape polling (50 ms) and scheduling slack.
    assert!(
        killed.elapsed() < Duration::from_millis(1000),
        "down after {:?}",
        killed.elapsed()
    );
    assert!(!e.has("vitals_target_info"), "old target's info must go");
    assert!(!e.has("process_threads"), "old target's series must go");
    assert_eq!(e.get("vitals_target_restarts_total", &[]), Some(0.0));

    let second = TestChild::hold(&["--threads", "2"]);
    std::fs::write(&pidfile, format!("{}\n", second.pid())).unwrap();
    let second_pid = second.pid().to_string();
    let e = v.wait_until(Duration::from_secs(5), "second target", |e| {
        e.find("vitals_target_info", &[("pid", &second_pid)])
            .is_some()
    });
    let e = if e.has("process_threads") {
        e
    } else {
        v.wait_until(Duration::from_secs(5), "sample", |e| {
            e.has("process_threads")
        })
    };
    assert_eq!(e.get("vitals_target_up", &[]), Some(1.0));
    assert_eq!(e.get("vitals_target_restarts_total", &[]), Some(1.0));
    assert_eq!(e.get("process_threads", &[]), Some(2.0));
    assert!(e
        .find("vitals_target_info", &[("pid", &first_pid)])
        .is_none());
}

#[test]
fn process_regex_waits_for_the_target_to_appear() {
    let v = Vitals::start(&[
        "--process",
        &format!(
            "hold\\.py --threads 4 --fds 1 --spin 0.0{}",
            std::process::id()
        ),
        "--interval",
        "200ms",
    ]);
    // Nothing matches yet: not ready (503 naming what is missing) once the first tick has run, target
    // down, vitals keeps running.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (code, _, body) = v.get("/readyz", None);
        if body.contains("no target") {
            assert_eq!(code, 503, "{body}");
            assert!(body.contains("hold\\.py"), "names the regex: {body}");
            break;
        }
        assert!(Instant::now() < deadline, "no reason given: {code} {body}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let e = v.scrape();
    assert_eq!(e.get("vitals_target_up", &[]), Some(0.0));
    assert!(!e.has("vitals_target_info"));
    let spin = format!("0.0{}", std::process::id());
    let child = TestChild::hold(&["--threads", "4", "--fds", "1", "--spin", &spin]);
    let pid = child.pid().to_string();
    // vitals may attach while the child is still starting its threads; the settled count follows.
    v.wait_until(Duration::from_secs(5), "target found", |e| {
        e.find("vitals_target_info", &[("pid", &pid)]).is_some()
    });
    v.wait_until(Duration::from_secs(5), "4 threads", |e| {
        e.get("process_threads", &[]) == Some(4.0)
    });
    assert_eq!(v.get("/readyz", None).0, 200);
}

#[test]
fn fixed_pid_exit_sets_down_and_vitals_keeps_running() {
    let child = TestChild::hold(&["--exit-after", "0.6"]);
    let pid = child.pid().to_string();
    let v = Vitals::start(&["--pid", &pid, "--interval", "100ms"]);
    v.wait_until(Duration::from_secs(5), "attached", |e| {
        e.get("vitals_target_up", &[]) == Some(1.0)
    });
    let e = v.wait_until(Duration::from_secs(5), "down after exit", |e| {
        e.get("vitals_target_up", &[]) == Some(0.0)
    });
    assert!(!e.has("process_memory_usage_bytes"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        v.get("/healthz", None).0,
        200,
        "vitals must outlive its target"
    );
}

#[test]
fn sigterm_stops_within_a_second() {
    let child = TestChild::hold(&[]);
    let v = Vitals::start(&["--pid", &child.pid().to_string(), "--interval", "200ms"]);
    v.wait_until(Duration::from_secs(5), "attached", |e| {
        e.has("process_threads")
    });
    let (code, took) = v.terminate();
    assert_eq!(code, Some(0));
    // vitals' own deadline is 1 s; the bound leaves room for process teardown on a loaded machine.
    assert!(took < Duration::from_millis(1500), "stopped after {took:?}");
}

fn run_vitals(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(vitals_bin())
        .args(args)
        .output()
        .expect("run vitals");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_and_config_exit_2_naming_the_culprit() {
    let (code, err) = run_vitals(&["--interval", "5ms", "--pid", "1"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--interval"), "{err}");
    let (code, err) = run_vitals(&["--metrics-addr", "nowhere"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--metrics-addr"), "{err}");
    let (code, err) = run_vitals(&["--pid", "1", "--process", "x"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--process") || err.contains("--pid"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vitals.yaml");
    std::fs::write(&cfg, "metrics-adr: 1.2.3.4:5\n").unwrap();
    let (code, err) = run_vitals(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("metrics-adr") && err.contains("vitals.yaml"),
        "{err}"
    );
    // The culprit is the variable, not the flag nobody typed.
    let (code, err) = run_vitals_env(&[("VITALS_INTERVAL", "often")]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("environment variable VITALS_INTERVAL"),
        "{err}"
    );
}

fn run_vitals_env(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(vitals_bin())
        .envs(env.iter().copied())
        .output()
        .expect("run vitals");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn environment_and_config_file_are_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vitals.yaml");
    let child = TestChild::hold(&[]);
    std::fs::write(&cfg, format!("pid: {}\ninterval: 100ms\n", child.pid())).unwrap();
    let v = Vitals::start_with(
        &["--config", cfg.to_str().unwrap()],
        &[("VITALS_LOG_FORMAT", "json")],
    );
    let pid = child.pid().to_string();
    v.wait_until(Duration::from_secs(5), "attached from file", |e| {
        e.find("vitals_target_info", &[("pid", &pid)]).is_some()
    });
    let log = v.log.lock().unwrap().clone();
    assert!(
        log.lines()
            .any(|l| l.starts_with('{') && l.contains("\"attached to target\"")),
        "json log expected:\n{log}"
    );
}
