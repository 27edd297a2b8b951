//! `vitals run -- CMD`: the child gets the OTLP environment, signals are forwarded, the exit code is the
//! child's.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::vitals_bin;

fn vitals_run(extra: &[&str], cmd: &[&str]) -> Command {
    let mut c = Command::new(vitals_bin());
    c.args([
        "--metrics-addr",
        "127.0.0.1:0",
        "--otlp-grpc-addr",
        "127.0.0.1:0",
        "--otlp-http-addr",
        "127.0.0.1:0",
    ])
    .args(extra)
    .arg("run")
    .arg("--")
    .args(cmd);
    c
}

/// The receiver addresses vitals logged (`OTLP receiver listening grpc=… http=…`).
fn receiver_addrs(stderr: &[u8]) -> (String, String) {
    let log = String::from_utf8_lossy(stderr);
    let line = log
        .lines()
        .find(|l| l.contains("OTLP receiver listening"))
        .unwrap_or_else(|| panic!("no receiver line in:\n{log}"));
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .unwrap()
            .to_owned()
    };
    (field("grpc="), field("http="))
}

#[test]
fn exit_code_and_environment_of_the_child() {
    let dir = tempfile::tempdir().unwrap();
    let envfile = dir.path().join("env");
    let script = format!("env > {}; exit 7", envfile.display());
    let out = vitals_run(&[], &["sh", "-c", &script]).output().unwrap();
    assert_eq!(out.status.code(), Some(7));
    let (_, http) = receiver_addrs(&out.stderr);
    let env = std::fs::read_to_string(&envfile).unwrap();
    assert!(
        env.lines()
            .any(|l| l == format!("OTEL_EXPORTER_OTLP_ENDPOINT=http://{http}")),
        "{env}"
    );
    assert!(
        env.lines()
            .any(|l| l == format!("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http://{http}/v1/traces")),
        "{env}"
    );
    assert!(
        env.lines()
            .any(|l| l == "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf"),
        "{env}"
    );

    let out = Command::new(vitals_bin())
        .args([
            "--metrics-addr",
            "127.0.0.1:0",
            "--otlp-grpc-addr",
            "127.0.0.1:0",
            "--otlp-http-addr",
            "127.0.0.1:0",
        ])
        .args(["run", "--child-otlp-protocol", "grpc", "--"])
        .args(["sh", "-c", &format!("env > {}", envfile.display())])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let (grpc, _) = receiver_addrs(&out.stderr);
    let env = std::fs::read_to_string(&envfile).unwrap();
    assert!(
        env.lines()
            .any(|l| l == format!("OTEL_EXPORTER_OTLP_ENDPOINT=http://{grpc}")),
        "{env}"
    );
    assert!(
        env.lines().any(|l| l == "OTEL_EXPORTER_OTLP_PROTOCOL=grpc"),
        "{env}"
    );
}

#[test]
fn sigterm_is_forwarded_and_the_child_decides_the_exit_code() {
    let mut v = vitals_run(
        &[],
        &[
            "sh",
            "-c",
            "trap 'echo got-term; exit 42' TERM; echo started; while true; do sleep 0.05; done",
        ],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut out = BufReader::new(v.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "started");
    let t = Instant::now();
    common::unsafe_kill(v.id(), "TERM");
    let status = v.wait().unwrap();
    assert_eq!(status.code(), Some(42));
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "got-term");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn child_killed_by_signal_maps_to_128_plus_signal() {
    let status = vitals_run(&[], &["sh", "-c", "kill -KILL $$"])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(137));
}

#[test]
fn missing_command_is_127_and_not_executable_is_126() {
    let out = vitals_run(&[], &["/nonexistent/app"]).output().unwrap();
    assert_eq!(out.status.code(), Some(127), "like env and timeout");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/app") && err.contains("PATH"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("app.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    let out = vitals_run(&[], &[script.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(126), "exists but lacks the x bit");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("app.sh") && err.contains("chmod +x"), "{err}");
}

/// Processes (other than zombies) whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(marker) {
            found.push(pid);
        }
    }
    found
}

/// A pipe whose reading end is already closed: every write to the other end fails with EPIPE.
fn closed_pipe() -> std::fs::File {
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    std::fs::File::from(write)
}

#[test]
fn closed_stdout_and_stderr_neither_kill_vitals_nor_orphan_the_child() {
    // As `vitals run -- … 2>&1 | head -0`: vitals' first log line hits a closed pipe. It must carry on,
    // reap the child and return its status.
    let marker = format!("closed-pipe-{}", std::process::id());
    let t = Instant::now();
    let status = vitals_run(&[], &["sh", "-c", "sleep 1; exit 3", &marker])
        .stdin(Stdio::null())
        .stdout(closed_pipe())
        .stderr(closed_pipe())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(3), "the child's status, not an abort");
    assert!(
        t.elapsed() >= Duration::from_secs(1),
        "vitals waited for the child"
    );
    assert_eq!(processes_with(&marker), Vec::<u32>::new(), "no orphan left");
}

#[test]
fn a_signal_at_start_up_reaches_the_child_or_stops_vitals_before_it_spawns() {
    // SIGTERM at increasing delays after exec, across the moment the child is spawned. Each time: either
    // vitals died before starting the child, or the child got the signal and vitals returned its status;
    // never an orphan. Delays go up in 2 ms steps to 38 ms (the spawn happens ~5-20 ms after exec on an
    // idle machine), then double up to 2.56 s until at least 3 runs crossed the spawn (a loaded machine).
    let delays = (0..20u64)
        .map(|i| 2 * i)
        .chain([40, 80, 160, 320, 640, 1280, 2560]);
    let mut forwarded = 0;
    for (step, delay) in delays.enumerate() {
        if step >= 20 && forwarded >= 3 {
            break;
        }
        // The duration is the marker: 30.<test pid><step> seconds, unique to this run.
        let marker = format!("30.{}{step:02}", std::process::id());
        let mut v = vitals_run(&["--log-level", "off"], &["sleep", &marker])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        common::unsafe_kill(v.id(), "TERM");
        let status = v.wait().unwrap();
        match status.code() {
            // The child (sleep) died of the forwarded SIGTERM: 128 + 15.
            Some(143) => forwarded += 1,
            None => {}
            other => panic!("delay {delay} ms: unexpected status {other:?}"),
        }
        assert_eq!(
            processes_with(&marker),
            Vec::<u32>::new(),
            "delay {delay} ms: orphan"
        );
    }
    assert!(
        forwarded > 0,
        "no run crossed the spawn; the test did not test anything"
    );
}

#[test]
fn a_child_that_ignores_sigterm_is_waited_for_and_the_log_says_so() {
    let mut v = vitals_run(
        &["--log-format", "text"],
        &["sh", "-c", "trap '' TERM; echo started; sleep 2; exit 5"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut out = BufReader::new(v.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    common::unsafe_kill(v.id(), "TERM");
    let out = v.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(5));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.lines()
            .any(|l| l.contains("forwarded signal to the child") && l.contains("SIGTERM")),
        "{log}"
    );
    assert!(
        !log.contains("searching again"),
        "run mode has nothing to search for:\n{log}"
    );
    assert!(
        log.lines().all(|l| l.starts_with("[vitals] ")),
        "every vitals line is marked in run mode:\n{log}"
    );
}

#[test]
fn log_file_keeps_the_terminal_for_the_child() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("vitals.log");
    let out = vitals_run(
        &["--log-format", "json", "--log-file", log.to_str().unwrap()],
        &["sh", "-c", "echo child-out; echo child-err >&2"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "child-err\n");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "child-out\n");
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 3, "{text}");
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v.get("level").is_some(), "{l}");
    }
}
