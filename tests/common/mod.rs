//! Helpers shared by the integration tests: start the real `vitals` binary and real child processes,
//! scrape and parse the exposition, wait for conditions with a deadline.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The vitals binary built by cargo for this test run.
pub fn vitals_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vitals"))
}

/// Path of a helper script under tests/children.
pub fn child_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/children")
        .join(name)
}

/// A tool the test needs; a missing one fails the test with the install command, never a silent pass.
pub fn require_tool(tool: &str, install: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join(tool);
        if p.is_file() {
            return p;
        }
    }
    panic!("this test needs `{tool}`: install it with `{install}` (.ci/run does)");
}

/// A running vitals process; killed on drop.
pub struct Vitals {
    pub child: Child,
    pub metrics: SocketAddr,
    pub log: Arc<Mutex<String>>,
}

fn addr_after(line: &str, marker: &str) -> Option<SocketAddr> {
    let at = line.find(marker)? + marker.len();
    line[at..]
        .split([' ', ',', '}'])
        .next()?
        .trim_matches('"')
        .parse()
        .ok()
}

impl Vitals {
    /// Starts vitals with `args` plus loopback listeners on ports chosen by the kernel, and waits until
    /// /metrics is served.
    pub fn start(args: &[&str]) -> Vitals {
        Self::start_with(args, &[])
    }

    /// Like [`Vitals::start`], with extra environment variables.
    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Vitals {
        let mut cmd = Command::new(vitals_bin());
        cmd.args([
            "--metrics-addr",
            "127.0.0.1:0",
            "--otlp-grpc-addr",
            "127.0.0.1:0",
            "--otlp-http-addr",
            "127.0.0.1:0",
        ])
        .args(args)
        .env("VITALS_LOG_LEVEL", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start vitals");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("serving /metrics") {
                    if let Some(a) =
                        addr_after(&line, "addr=").or_else(|| addr_after(&line, "\"addr\":"))
                    {
                        let _ = tx.send(a);
                    }
                }
                log2.lock().unwrap().push_str(&line);
                log2.lock().unwrap().push('\n');
            }
        });
        let metrics = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "vitals did not start serving; log:\n{}",
                    log.lock().unwrap()
                );
            }
        };
        Vitals {
            child,
            metrics,
            log,
        }
    }

    /// GET a path; returns (status, content-type, body).
    pub fn get(&self, path: &str, accept: Option<&str>) -> (u16, String, String) {
        let url = format!("http://{}{}", self.metrics, path);
        let mut req = ureq::get(&url).timeout(Duration::from_secs(5));
        if let Some(a) = accept {
            req = req.set("Accept", a);
        }
        match req.call() {
            Ok(r) => (
                r.status(),
                r.content_type().to_owned(),
                r.into_string().unwrap_or_default(),
            ),
            Err(ureq::Error::Status(code, r)) => (
                code,
                r.content_type().to_owned(),
                r.into_string().unwrap_or_default(),
            ),
            Err(e) => panic!("GET {url}: {e}"),
        }
    }

    /// The current exposition, parsed.
    pub fn scrape(&self) -> Exposition {
        let (status, _, body) = self.get("/metrics", None);
        assert_eq!(status, 200, "{body}");
        Exposition::parse(&body)
    }

    /// Polls the exposition until `cond` holds or `timeout` passes; returns the last exposition.
    pub fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        cond: impl Fn(&Exposition) -> bool,
    ) -> Exposition {
        let deadline = Instant::now() + timeout;
        loop {
            let e = self.scrape();
            if cond(&e) {
                return e;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; last scrape:\n{}\nlog:\n{}",
                    e.text,
                    self.log.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits for the exit code.
    pub fn terminate(mut self) -> (Option<i32>, Duration) {
        let started = Instant::now();
        unsafe_kill(self.child.id(), "TERM");
        let status = self.child.wait().expect("wait vitals");
        (status.code(), started.elapsed())
    }
}

impl Drop for Vitals {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a signal with kill(1), keeping the tests free of unsafe code.
pub fn unsafe_kill(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// One sample line.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// A parsed exposition (text format).
#[derive(Debug, Clone)]
pub struct Exposition {
    pub text: String,
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// Parses the text format, including escaped label values.
    pub fn parse(text: &str) -> Exposition {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            samples.push(parse_line(line).unwrap_or_else(|| panic!("unparsable line {line:?}")));
        }
        Exposition {
            text: text.to_owned(),
            samples,
        }
    }

    /// The value of `name` whose labels include every pair of `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.find(name, labels).map(|s| s.value)
    }

    /// The sample of `name` whose labels include every pair of `labels`.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<&Sample> {
        self.samples.iter().find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
    }

    /// Every sample of `name`.
    pub fn all(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }

    /// True when any sample has this name.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if rest.starts_with('{') {
        let mut chars = rest[1..].char_indices();
        let mut key = String::new();
        loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => {
                    rest = &rest[i + 2..];
                    break;
                }
                ',' => {}
                '=' => {
                    chars.next()?; // opening quote
                    let mut val = String::new();
                    loop {
                        let (_, c) = chars.next()?;
                        match c {
                            '\\' => match chars.next()?.1 {
                                'n' => val.push('\n'),
                                other => val.push(other),
                            },
                            '"' => break,
                            c => val.push(c),
                        }
                    }
                    labels.push((std::mem::take(&mut key), val));
                }
                c => key.push(c),
            }
        }
    }
    let value_str = rest.split_whitespace().next()?;
    let value = match value_str {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// A child process started for a test; killed on drop.
pub struct TestChild {
    pub child: Child,
}

impl TestChild {
    /// Starts tests/children/hold.py with `args` and waits for its "ready" line.
    pub fn hold(args: &[&str]) -> TestChild {
        let mut child = Command::new("python3")
            .arg(child_script("hold.py"))
            .args(args)
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("python3 is needed for the test children");
        let out = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(out)
            .read_line(&mut line)
            .expect("read ready line");
        assert_eq!(line.trim(), "ready", "child did not get ready");
        TestChild { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for TestChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `promtool check metrics` on an exposition and returns its combined output on failure.
pub fn promtool_check_metrics(text: &str) -> Result<(), String> {
    use std::io::Write;
    let promtool = require_tool("promtool", "apt-get install -y prometheus");
    let mut p = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
