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
fn missing_command_is_a_clear_error() {
    let out = vitals_run(&[], &["/nonexistent/app"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/app"), "{err}");
}
