//! Settings from each source (flag, `VITALS_*` variable, YAML file): a bad value is reported under the
//! name of the place it came from, with exit code 2; host names and `off` are accepted where documented.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::vitals_bin;

/// Runs vitals with `args` and `env` (no target, loopback listeners) and returns (code, stderr) when it
/// exits on its own within 10 s; a bad setting makes it exit at once.
fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new("timeout")
        .arg("10")
        .arg(vitals_bin())
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Flags, environment variables, and the start of the expected error.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], String);

#[test]
fn a_bad_value_names_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vitals.yaml");
    let f = file.to_str().unwrap();
    std::fs::write(&file, "interval: 0s\nlog-level: warning\n").unwrap();
    let cases: [Case; 7] = [
        (
            &["--interval", "0s"],
            &[],
            "error: --interval: 0s is outside 100ms..1h".into(),
        ),
        (
            &[],
            &[("VITALS_INTERVAL", "0s")],
            "error: environment variable VITALS_INTERVAL: 0s is outside 100ms..1h".into(),
        ),
        (
            &["--config", f, "--log-level", "info"],
            &[],
            format!("error: config file {f}: field interval (line 1): 0s is outside 100ms..1h"),
        ),
        (
            &["--log-level", "inf"],
            &[],
            "error: --log-level: \"inf\" is not a log level".into(),
        ),
        (
            &[],
            &[("VITALS_LOG_LEVEL", "warning")],
            "error: environment variable VITALS_LOG_LEVEL: \"warning\" is not a log level".into(),
        ),
        (
            &["--config", f, "--interval", "1s"],
            &[],
            format!(
                "error: config file {f}: field log-level (line 2): \"warning\" is not a log level"
            ),
        ),
        (
            &[],
            &[("VITALS_INTERVAL", "soon")],
            "error: environment variable VITALS_INTERVAL: invalid value \"soon\"".into(),
        ),
    ];
    for (args, env, want) in cases {
        let (code, stderr) = run_to_exit(args, env);
        assert_eq!(code, Some(2), "{args:?} {env:?}: {stderr}");
        assert!(
            stderr.starts_with(&want),
            "{args:?} {env:?}:\nwant {want}\ngot  {stderr}"
        );
    }
}

/// Starts vitals and returns it with the /metrics address it logged.
fn start(args: &[&str]) -> (std::process::Child, String, String) {
    let mut child = Command::new(vitals_bin())
        .args(args)
        .env("VITALS_LOG_LEVEL", "info")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut metrics = String::new();
    let mut log = String::new();
    for line in lines.by_ref().map_while(Result::ok) {
        log.push_str(&line);
        log.push('\n');
        if let Some(a) = line.split("addr=").nth(1) {
            metrics = a.trim().to_owned();
        }
        if line.contains("OTLP receiver listening") {
            break;
        }
    }
    // Keep draining so vitals never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, metrics, log)
}

#[test]
fn host_names_resolve_and_receivers_can_be_turned_off() {
    // A local collector already holds the OTLP port: with the receiver off vitals still starts.
    let collector = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = collector.local_addr().unwrap().to_string();
    let (code, stderr) = run_to_exit(
        &[
            "--metrics-addr",
            "127.0.0.1:0",
            "--otlp-grpc-addr",
            &taken,
            "--otlp-http-addr",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on --otlp-grpc-addr {taken}")),
        "{stderr}"
    );

    let (mut v, metrics, log) = start(&[
        "--metrics-addr",
        "localhost:0",
        "--otlp-grpc-addr",
        "off",
        "--otlp-http-addr",
        "off",
    ]);
    assert!(log.contains("grpc=off http=off"), "{log}");
    let addr: std::net::SocketAddr = metrics.parse().unwrap_or_else(|e| panic!("{e}: {log}"));
    assert!(addr.ip().is_loopback(), "localhost resolved to {addr}");
    let body = ureq::get(&format!("http://{addr}/healthz"))
        .timeout(Duration::from_secs(5))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert_eq!(body, "ok\n");
    let _ = v.kill();
    let _ = v.wait();
}
