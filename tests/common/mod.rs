//! Helpers shared by the integration tests: start the real `vitals` binary and real child processes,
//! scrape and parse the exposition, wait for conditions with a deadline.
#![allow(dead_code)]

pub mod tree;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The vitals binary built by cargo for this test run, or `VITALS_TEST_BIN` when set (to measure
/// another build, e.g. a release binary, with a test's figures).
pub fn vitals_bin() -> PathBuf {
    std::env::var_os("VITALS_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_vitals")))
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
        .envs(env.iter().copied());
        Self::spawn(cmd)
    }

    /// Starts vitals with a command line of the caller's (vitals itself, or a launcher that ends by
    /// running it: its log is read from the command's stderr) and waits until /metrics is served.
    pub fn spawn(mut cmd: Command) -> Vitals {
        if !cmd.get_envs().any(|(k, _)| k == "VITALS_LOG_LEVEL") {
            cmd.env("VITALS_LOG_LEVEL", "info");
        }
        cmd.stdin(Stdio::null())
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
        let e = Exposition::parse(&body);
        let wrong = catalogue_disagreements(&e);
        assert!(
            wrong.is_empty(),
            "the exposition disagrees with src/catalogue.rs:\n{}",
            wrong.join("\n")
        );
        e
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
    /// SIGTERM first, so a `vitals run` passes it on to its child's process group and the test leaves no
    /// process of its own behind (a pool or a JVM would outlive a SIGKILLed vitals); SIGKILL after 3 s.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            unsafe_kill(self.child.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
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

impl Sample {
    /// True for a sample of `name` whose labels include every pair of `labels`.
    pub fn matches(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.name == name
            && labels
                .iter()
                .all(|(k, v)| self.labels.iter().any(|(lk, lv)| lk == k && lv == v))
    }
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
        self.samples.iter().find(|s| s.matches(name, labels))
    }

    /// The sum over every sample of `name` whose labels include every pair of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.matches(name, labels))
            .map(|s| s.value)
            .sum()
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
        Self::script("hold.py", args).0
    }

    /// Starts a tests/children script and waits for "ready"; returns the lines printed before it.
    pub fn script(name: &str, args: &[&str]) -> (TestChild, Vec<String>) {
        let mut child = Command::new("python3")
            .arg(child_script(name))
            .args(args)
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("python3 is needed for the test children");
        let out = child.stdout.take().expect("stdout");
        let mut before = Vec::new();
        for line in BufReader::new(out).lines() {
            let line = line.expect("read child output");
            if line.trim() == "ready" {
                return (TestChild { child }, before);
            }
            before.push(line);
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("child {name} exited before getting ready: {before:?}");
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

/// The Python with the OpenTelemetry SDK (`.venv`, made by .ci/run from tests/python/requirements.txt).
pub fn sdk_python() -> PathBuf {
    if let Ok(p) = std::env::var("VITALS_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    if !p.is_file() {
        panic!(
            "this test needs the OpenTelemetry Python SDK: python3 -m venv .venv && \
             .venv/bin/pip install -r tests/python/requirements.txt (.ci/run does)"
        );
    }
    p
}

/// Runs tests/python/send.py and returns its ground truth (parsed JSON).
pub fn sdk_send(
    transport: &str,
    endpoint: &str,
    scenario: &str,
    service: &str,
    extra: &[&str],
) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/send.py");
    let out = Command::new(sdk_python())
        .arg(script)
        .args([
            "--transport",
            transport,
            "--endpoint",
            endpoint,
            "--scenario",
            scenario,
            "--service",
            service,
        ])
        .args(extra)
        .output()
        .expect("run send.py");
    assert!(
        out.status.success(),
        "send.py {transport} {scenario} failed ({:?}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ground truth JSON")
}

impl Vitals {
    /// The OTLP receiver addresses from the log: (grpc, http).
    pub fn otlp_addrs(&self) -> (SocketAddr, SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log.lock().unwrap().clone();
            if let Some(line) = log.lines().find(|l| l.contains("OTLP receiver listening")) {
                let grpc = addr_after(line, "grpc=")
                    .or_else(|| addr_after(line, "\"grpc\":"))
                    .expect("grpc addr");
                let http = addr_after(line, "http=")
                    .or_else(|| addr_after(line, "\"http\":"))
                    .expect("http addr");
                return (grpc, http);
            }
            assert!(
                Instant::now() < deadline,
                "no OTLP receiver line in log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A real Prometheus on loopback, scraping one target every second; killed on drop.
pub struct Prometheus {
    child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Reads one HTTP/1.1 response (headers and a Content-Length body); returns its status.
pub fn read_response(s: &mut std::net::TcpStream) -> std::io::Result<u16> {
    let mut buf = Vec::with_capacity(1024);
    let mut byte = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = std::io::Read::read(s, &mut byte)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&byte[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or(std::io::ErrorKind::InvalidData)?;
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut have = buf.len() - head_end;
    while have < len {
        let n = std::io::Read::read(s, &mut byte)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        have += n;
    }
    Ok(status)
}

/// Starts Prometheus scraping `target` with extra flags (e.g. feature flags).
pub fn start_prometheus(target: &str, flags: &[&str]) -> Prometheus {
    start_prometheus_with_rules(target, flags, &[])
}

/// Starts Prometheus scraping `target` every second and evaluating `rules` every second.
pub fn start_prometheus_with_rules(target: &str, flags: &[&str], rules: &[&Path]) -> Prometheus {
    let rules = rules
        .iter()
        .map(|r| format!("'{}'", r.display()))
        .collect::<Vec<_>>()
        .join(", ");
    start_prometheus_config_with(
        &format!("global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\nrule_files: [{rules}]\nscrape_configs:\n  - job_name: vitals\n    static_configs:\n      - targets: ['{target}']\n"),
        flags,
    )
}

/// The first value of an instant query, if any.
pub fn query(prom: &Prometheus, q: &str) -> Option<f64> {
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

/// GET a Prometheus API path with query parameters; returns the parsed JSON.
pub fn prom_api(prom: &Prometheus, path: &str, params: &[(&str, &str)]) -> serde_json::Value {
    let mut req =
        ureq::get(&format!("http://{}{}", prom.addr, path)).timeout(Duration::from_secs(5));
    for (k, v) in params {
        req = req.query(k, v);
    }
    let body = req.call().expect("Prometheus API").into_string().unwrap();
    serde_json::from_str(&body).expect("Prometheus JSON")
}

/// Runs tests/node/send.mjs (the real Node SDK) and returns its ground truth.
pub fn node_send(args: &[&str]) -> serde_json::Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    if !dir.join("node_modules/@opentelemetry/sdk-trace").is_dir() {
        panic!(
            "this test needs the OpenTelemetry Node SDK: npm ci --prefix tests/node (.ci/run does)"
        );
    }
    let out = Command::new(require_tool("node", "apt-get install -y nodejs npm"))
        .arg(dir.join("send.mjs"))
        .args(args)
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "send.mjs failed ({:?}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ground truth JSON")
}

/// Starts Prometheus with a whole configuration file's text (for scrape jobs the helpers above do not
/// write: TLS, basic auth, several jobs).
pub fn start_prometheus_config(config: &str) -> Prometheus {
    start_prometheus_config_with(config, &[])
}

/// Starts Prometheus with `config` as its whole configuration file and extra command-line `flags`.
pub fn start_prometheus_config_with(config: &str, flags: &[&str]) -> Prometheus {
    let bin = require_tool("prometheus", "apt-get install -y prometheus");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(&cfg, config).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(bin)
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .args(flags)
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

/// Compiles `tests/children/<class>.java` with the JDK's javac into a fresh temporary directory (the class
/// path to run it from).
pub fn compile_java(class: &str) -> tempfile::TempDir {
    let javac = require_tool("javac", "apt-get install -y openjdk-17-jdk-headless");
    let classes = tempfile::tempdir().expect("temporary directory");
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/children")
        .join(format!("{class}.java"));
    let ok = Command::new(javac)
        .arg("-d")
        .arg(classes.path())
        .arg(&src)
        .status()
        .expect("run javac");
    assert!(ok.success(), "javac {}", src.display());
    classes
}

/// The span durations (seconds) a `send.py` run reports in `durations`, sorted; exactly `n` of them.
pub fn sorted_durations(truth: &serde_json::Value, n: usize) -> Vec<f64> {
    let mut durations: Vec<f64> = truth["durations"]
        .as_array()
        .expect("durations")
        .iter()
        .filter_map(|d| d.as_f64())
        .collect();
    assert_eq!(durations.len(), n);
    durations.sort_by(f64::total_cmp);
    durations
}

/// Pauses of the JVM's own GC log (`-Xlog:gc*`): the summary lines `GC(n) Pause … a->b(c) 1234.567ms`,
/// in seconds, in log order.
pub fn logged_pauses(log: &Path) -> Vec<f64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" Pause ") && l.contains("->") && l.ends_with("ms"))
        .filter_map(|l| l.rsplit(' ').next()?.trim_end_matches("ms").parse().ok())
        .map(|ms: f64| ms / 1000.0)
        .collect()
}

/// A JVM child process, killed and reaped on drop.
pub struct Jvm(pub Child);

impl Jvm {
    /// Starts `cmd` (a test child under `tests/children` that prints "ready" once set up) with its
    /// standard output piped, and returns once it said so.
    pub fn ready(cmd: &mut Command) -> Jvm {
        let mut child = cmd.stdout(Stdio::piped()).spawn().expect("start the JVM");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("its stdout"))
            .read_line(&mut line)
            .expect("its first line");
        let jvm = Jvm(child);
        assert_eq!(line.trim(), "ready");
        jvm
    }
}

impl Jvm {
    /// Like [`Jvm::ready`], for a child that waits for a line on its standard input before it starts
    /// (`LiveSet` with `-Dstart=stdin`): once the JVM runs, `until` is called with its pid (to wait, say,
    /// until vitals has its hsperfdata file), then the line is written, and this returns once the child
    /// said "ready".
    pub fn ready_after(cmd: &mut Command, until: impl FnOnce(u32)) -> Jvm {
        use std::io::Write;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the JVM");
        let mut stdin = child.stdin.take().expect("its stdin");
        let stdout = child.stdout.take().expect("its stdout");
        let jvm = Jvm(child);
        until(jvm.0.id());
        stdin.write_all(b"start\n").expect("start the child");
        drop(stdin);
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("its first line");
        assert_eq!(line.trim(), "ready");
        jvm
    }
}

/// The JDK's `java`.
pub fn java() -> PathBuf {
    require_tool("java", "apt-get install -y openjdk-17-jdk-headless")
}

impl Drop for Jvm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The exposition names (counters without `_total`) of every metric vitals declares: the entries of its
/// catalogue (`src/catalogue.rs`), translated by the Prometheus exporter's own rules.
pub fn source_exposition_names() -> std::collections::BTreeSet<String> {
    use vitals::export::prometheus::naming::exposition_name;
    use vitals::model::Origin;
    vitals::catalogue::ALL
        .iter()
        .map(|d| exposition_name(d.name, d.unit, d.kind, Origin::Vitals))
        .collect()
}

/// Makes, with openssl, in `dir`: a CA (`ca.pem`, `ca.key`), a server certificate for 127.0.0.1 and
/// localhost (`server.pem`, `server.key`) and a client certificate (`client.pem`, `client.key`), all
/// signed by the CA, for mutual TLS.
pub fn make_certificates(dir: &Path) {
    let openssl = require_tool("openssl", "apt-get install -y openssl");
    let run = |args: &[&str]| {
        let out = Command::new(&openssl)
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=vitals-test-ca",
        ],
    ]
    .concat());
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        let (key, csr, pem, extf) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        run(&[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
            ],
        ]
        .concat());
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &extf,
        ]);
    }
}

/// tests/python/upstream.py, an OTLP receiver built from the official `opentelemetry-proto` package's
/// generated services, on a loopback port; it answers `answer` (`ok`, `400`, `503`, `partial`) and is
/// killed on drop.
pub struct PyUpstream {
    child: Child,
    /// The loopback port it listens on.
    pub port: u16,
    /// Where it writes each request it receives: `<signal>-<n>.bin`, then `<signal>-<n>.meta`.
    pub dir: tempfile::TempDir,
}

impl PyUpstream {
    pub fn start(protocol: &str, answer: &str) -> PyUpstream {
        Self::start_on(protocol, answer, free_port())
    }

    pub fn start_on(protocol: &str, answer: &str, port: u16) -> PyUpstream {
        Self::start_with(protocol, answer, port, &[])
    }

    pub fn start_with(protocol: &str, answer: &str, port: u16, extra: &[&str]) -> PyUpstream {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/upstream.py");
        let mut child = Command::new(sdk_python())
            .arg(script)
            .args(["--protocol", protocol, "--port", &port.to_string()])
            .arg("--dir")
            .arg(dir.path())
            .args(["--answer", answer])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start upstream.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "upstream.py did not start");
        PyUpstream { child, port, dir }
    }

    /// Starts it answering `ok` over TLS with the server certificate `make_certificates` wrote in `certs`,
    /// asking clients for a certificate signed by that directory's CA (mutual TLS).
    pub fn start_mutual_tls(protocol: &str, certs: &Path) -> PyUpstream {
        let p = |f: &str| certs.join(f).to_string_lossy().into_owned();
        Self::start_with(
            protocol,
            "ok",
            free_port(),
            &[
                "--cert",
                &p("server.pem"),
                "--key",
                &p("server.key"),
                "--client-ca",
                &p("ca.pem"),
            ],
        )
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Bodies received for `signal`, in arrival order.
    pub fn bodies(&self, signal: &str) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for n in 0.. {
            let p = self.dir.path().join(format!("{signal}-{n}.bin"));
            match std::fs::read(&p) {
                Ok(b) => out.push(b),
                Err(_) => break,
            }
        }
        out
    }

    pub fn meta(&self, signal: &str, n: usize) -> serde_json::Value {
        let p = self.dir.path().join(format!("{signal}-{n}.meta"));
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    }

    pub fn wait_bodies(&self, signal: &str, n: usize, within: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + within;
        loop {
            let b = self.bodies(signal);
            // The .meta file is written after the .bin: wait for it so the body is complete.
            let complete = b.len() >= n
                && (n == 0
                    || self
                        .dir
                        .path()
                        .join(format!("{signal}-{}.meta", n - 1))
                        .is_file());
            if complete {
                return b;
            }
            assert!(
                Instant::now() < deadline,
                "upstream received {} {signal} requests, expected {n}",
                b.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PyUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A throwaway PostgreSQL server on a loopback port chosen at run time, in a temporary data directory;
/// stopped and removed on drop. As root it runs as the `postgres` user (the server refuses root).
pub struct Postgres {
    child: Child,
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    /// The data directory; the server's log is `log` inside it.
    pub dir: tempfile::TempDir,
}

impl Postgres {
    /// A libpq connection URL for database `postgres` as user `postgres` (trust authentication).
    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The server's log so far (statements too when started with `log_statement=all`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT is PostgreSQL's fast shutdown: open sessions are ended, the data directory is left clean.
        unsafe_kill(self.child.id(), "INT");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The directory of Debian's PostgreSQL server binaries (`initdb`, `postgres`), newest version first.
fn postgres_bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    dirs.retain(|d| d.join("initdb").is_file() && d.join("postgres").is_file());
    dirs.sort();
    dirs.pop().unwrap_or_else(|| {
        panic!("this test needs a PostgreSQL server: install it with `apt-get install postgresql` (.ci/run does)")
    })
}

/// Starts a fresh PostgreSQL cluster on 127.0.0.1 with extra `-c name=value` settings (for example
/// `log_statement=all`), and waits until it accepts connections.
pub fn start_postgres(settings: &[&str]) -> Postgres {
    let bin = postgres_bin_dir();
    let dir = tempfile::tempdir().expect("temp dir");
    // SAFETY: geteuid has no preconditions and cannot fail.
    let as_root = unsafe { libc::geteuid() } == 0;
    let run_as = |program: &Path, args: &[String]| -> Command {
        if as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program).args(args);
            c
        } else {
            let mut c = Command::new(program);
            c.args(args);
            c
        }
    };
    if as_root {
        let ok = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "chown of the PostgreSQL data directory failed");
    }
    let data = dir.path().join("data");
    let out = run_as(
        &bin.join("initdb"),
        &[
            "-D".into(),
            data.display().to_string(),
            "-A".into(),
            "trust".into(),
            "-U".into(),
            "postgres".into(),
            "--no-sync".into(),
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .output()
    .expect("run initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    let mut args: Vec<String> = vec![
        "-D".into(),
        data.display().to_string(),
        "-p".into(),
        port.to_string(),
        "-k".into(),
        dir.path().display().to_string(),
        "-c".into(),
        "listen_addresses=127.0.0.1".into(),
        "-c".into(),
        "fsync=off".into(),
    ];
    for s in settings {
        args.push("-c".into());
        args.push((*s).to_owned());
    }
    let log = std::fs::File::create(dir.path().join("log")).expect("log file");
    if as_root {
        let _ = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path().join("log"))
            .status();
    }
    let child = run_as(&bin.join("postgres"), &args)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start postgres");
    let pg = Postgres { child, port, dir };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "PostgreSQL did not listen within 30 s:\n{}",
            pg.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Listening comes before the end of recovery: wait until a query is answered.
    let psql = require_tool("psql", "apt-get install postgresql-client");
    loop {
        let ok = Command::new(&psql)
            .args([pg.url().as_str(), "-tAc", "select 1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return pg;
        }
        assert!(
            Instant::now() < deadline,
            "PostgreSQL answered no query within 30 s:\n{}",
            pg.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Vitals {
    /// GET a path with an `Accept` header; returns (status, content-type, body bytes).
    pub fn get_bytes(&self, path: &str, accept: &str) -> (u16, String, Vec<u8>) {
        let url = format!("http://{}{}", self.metrics, path);
        let resp = match ureq::get(&url)
            .set("Accept", accept)
            .timeout(Duration::from_secs(10))
            .call()
        {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("GET {url}: {e}"),
        };
        let status = resp.status();
        let ct = resp.header("Content-Type").unwrap_or("").to_owned();
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut resp.into_reader(), &mut body).expect("read body");
        (status, ct, body)
    }
}

/// The Accept header Prometheus sends when it scrapes native histograms (protobuf first).
pub const PROTOBUF_ACCEPT: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.1";

/// Decodes a delimited protobuf exposition with the official Go decoder (tests/go/decode_exposition.go,
/// built once per test binary from Debian's prometheus/common and client_model sources): one JSON
/// summary per family, or the decoder's error.
pub fn go_decode_exposition(body: &[u8]) -> Result<Vec<serde_json::Value>, String> {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let bin = BUILT.get_or_init(|| {
        const INSTALL: &str = "apt-get install -y golang-go golang-github-prometheus-common-dev \
                               golang-github-prometheus-client-model-dev";
        let go = require_tool("go", INSTALL);
        let gopath = Path::new("/usr/share/gocode");
        assert!(
            gopath
                .join("src/github.com/prometheus/common/expfmt")
                .is_dir(),
            "the Go decoder needs prometheus/common's sources: {INSTALL}"
        );
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("decode_exposition");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/go/decode_exposition.go");
        let built = Command::new(go)
            .args(["build", "-o"])
            .arg(&out)
            .arg(&src)
            .env("GO111MODULE", "off")
            .env("GOPATH", gopath)
            .output()
            .expect("run go build");
        assert!(
            built.status.success(),
            "go build {}: {}",
            src.display(),
            String::from_utf8_lossy(&built.stderr)
        );
        out
    });
    let mut child = Command::new(bin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the Go decoder");
    let mut stdin = child.stdin.take().expect("stdin");
    let body = body.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = std::io::Write::write_all(&mut stdin, &body);
    });
    let out = child.wait_with_output().expect("Go decoder output");
    let _ = writer.join();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("decoder JSON"))
        .collect())
}

/// Catalogue entries by their family name in the text format (counters with `_total`).
fn catalogue_families(
) -> &'static std::collections::BTreeMap<String, &'static vitals::catalogue::MetricDef> {
    use vitals::export::prometheus::naming::exposition_name;
    use vitals::model::{MetricKind, Origin};
    static FAMILIES: std::sync::OnceLock<
        std::collections::BTreeMap<String, &'static vitals::catalogue::MetricDef>,
    > = std::sync::OnceLock::new();
    FAMILIES.get_or_init(|| {
        vitals::catalogue::ALL
            .iter()
            .map(|d| {
                let name = exposition_name(d.name, d.unit, d.kind, Origin::Vitals);
                let name = if d.kind == MetricKind::Counter {
                    format!("{name}_total")
                } else {
                    name
                };
                (name, *d)
            })
            .collect()
    })
}

/// What in an exposition disagrees with vitals' catalogue (`src/catalogue.rs`): a sample of one of its
/// families with a label the entry does not declare, or with a value outside the entry's fixed set.
/// [`Vitals::scrape`] asserts there is none, so every test that scrapes checks the producers it drives.
pub fn catalogue_disagreements(e: &Exposition) -> Vec<String> {
    use vitals::export::prometheus::naming::label_name;
    let families = catalogue_families();
    let mut wrong = Vec::new();
    for s in &e.samples {
        let entry = families.get(&s.name).or_else(|| {
            ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|x| families.get(s.name.strip_suffix(x)?))
        });
        let Some(d) = entry else { continue };
        for (k, v) in &s.labels {
            if k == "le" || vitals::catalogue::SHARED_LABELS.contains(&k.as_str()) {
                continue;
            }
            match d.labels.iter().find(|l| label_name(l.key) == *k) {
                None => wrong.push(format!(
                    "{}: label {k} is not declared by {}",
                    s.name, d.name
                )),
                Some(l) if l.values.is_some_and(|vs| !vs.contains(&v.as_str())) => wrong.push(
                    format!("{}: {k}=\"{v}\" is not one of {:?}", s.name, l.values),
                ),
                Some(_) => {}
            }
        }
    }
    wrong
}

/// A cgroup made for one test (cgroup v2, or the controller's v1 hierarchy), removed on drop after its
/// processes are gone. Creating one needs root; the panic says so.
pub struct TestCgroup(pub PathBuf);

impl TestCgroup {
    /// True on the unified (v2) hierarchy.
    pub fn unified() -> bool {
        Path::new("/sys/fs/cgroup/cgroup.controllers").is_file()
    }

    /// A new group under `controller`'s hierarchy with `settings` written into its files.
    pub fn create(controller: &str, settings: &[(&str, String)]) -> TestCgroup {
        let root = if Self::unified() {
            PathBuf::from("/sys/fs/cgroup")
        } else {
            Path::new("/sys/fs/cgroup").join(controller)
        };
        assert!(
            root.join("cgroup.procs").is_file(),
            "this test needs a cgroup {controller} hierarchy at {} (and root)",
            root.display()
        );
        if Self::unified() {
            // The controller must be delegated to the root's children.
            let _ = std::fs::write(
                root.join("cgroup.subtree_control"),
                format!("+{controller}"),
            );
        }
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = root.join(format!(
            "vitals-test-{}-{n}-{controller}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir)
            .unwrap_or_else(|e| panic!("this test needs root to create {}: {e}", dir.display()));
        let cg = TestCgroup(dir);
        for (file, value) in settings {
            std::fs::write(cg.0.join(file), value)
                .unwrap_or_else(|e| panic!("write {value} to {file}: {e}"));
        }
        cg
    }

    /// A group whose CPU quota is `quota_us` per `period_us`.
    pub fn cpu_quota(quota_us: u64, period_us: u64) -> TestCgroup {
        if Self::unified() {
            Self::create("cpu", &[("cpu.max", format!("{quota_us} {period_us}"))])
        } else {
            Self::create(
                "cpu",
                &[
                    ("cpu.cfs_period_us", period_us.to_string()),
                    ("cpu.cfs_quota_us", quota_us.to_string()),
                ],
            )
        }
    }

    /// A group whose memory limit is `bytes` (and no swap, where swap is accounted).
    pub fn memory_limit(bytes: u64) -> TestCgroup {
        if Self::unified() {
            let cg = Self::create("memory", &[("memory.max", bytes.to_string())]);
            // Without swap accounting the file is absent and there is nothing to swap to anyway.
            let _ = std::fs::write(cg.0.join("memory.swap.max"), "0");
            cg
        } else {
            Self::create("memory", &[("memory.limit_in_bytes", bytes.to_string())])
        }
    }

    /// The memory limit the kernel holds (it may round what was written).
    pub fn memory_limit_read(&self) -> f64 {
        let file = if Self::unified() {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        std::fs::read_to_string(self.0.join(file))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// OOM kills the group counted (`memory.events` on v2, `memory.oom_control` on v1).
    pub fn oom_kills(&self) -> f64 {
        if Self::unified() {
            self.stat("memory.events", "oom_kill")
        } else {
            self.stat("memory.oom_control", "oom_kill")
        }
    }

    /// Moves `pid` into the group.
    pub fn adopt(&self, pid: u32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).expect("move into the cgroup");
    }

    /// The value of `key` in a flat-keyed file (`cpu.stat` has the same keys on v1 and v2).
    pub fn stat(&self, file: &str, key: &str) -> f64 {
        let text = std::fs::read_to_string(self.0.join(file)).unwrap();
        text.lines()
            .find_map(|l| {
                let mut parts = l.split_whitespace();
                (parts.next()? == key.trim()).then_some(())?;
                parts.next()?.parse().ok()
            })
            .unwrap_or_else(|| panic!("{key} in {file}: {text}"))
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Processes must have left (the tests kill them first); retry while the kernel reaps them.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A child killed and reaped when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run counts (schedstat's third field) of vitals' threads, summed by thread name.
pub fn runs_by_thread(pid: u32) -> std::collections::HashMap<String, u64> {
    let mut out = std::collections::HashMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let p = task.path();
        let (Ok(comm), Ok(sched)) = (
            std::fs::read_to_string(p.join("comm")),
            std::fs::read_to_string(p.join("schedstat")),
        ) else {
            continue;
        };
        let runs: u64 = sched
            .split_whitespace()
            .nth(2)
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        *out.entry(comm.trim().to_owned()).or_insert(0) += runs;
    }
    out
}
