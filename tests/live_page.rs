//! The live page in a real headless Chromium (DevTools protocol over --remote-debugging-pipe): against a
//! live vitals with a real target and spans from the real OpenTelemetry Python SDK, the four panels show
//! what /metrics shows at the same moment, the stream reconnects after vitals restarts, and a screenshot
//! is saved to target/test-artefacts/live_page.png.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use common::{free_port, require_tool, sdk_python, sdk_send, Exposition, TestChild};
use serde_json::{json, Value};

/// A vitals on a fixed port (so a restart keeps the address the page connects to).
struct FixedVitals {
    child: Child,
    addr: String,
}

impl FixedVitals {
    fn start(port: u16, grpc: u16, http: u16, target_pid: u32) -> FixedVitals {
        let child = Command::new(common::vitals_bin())
            .args([
                "--metrics-addr",
                &format!("127.0.0.1:{port}"),
                "--otlp-grpc-addr",
                &format!("127.0.0.1:{grpc}"),
                "--otlp-http-addr",
                &format!("127.0.0.1:{http}"),
                "--pid",
                &target_pid.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start vitals");
        let v = FixedVitals {
            child,
            addr: format!("127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while v.get("/readyz").map(|r| r.0) != Some(200) {
            assert!(Instant::now() < deadline, "vitals did not become ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        v
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        match ureq::get(&format!("http://{}{path}", self.addr))
            .timeout(Duration::from_secs(5))
            .call()
        {
            Ok(r) => Some((r.status(), r.into_string().unwrap_or_default())),
            Err(ureq::Error::Status(c, r)) => Some((c, r.into_string().unwrap_or_default())),
            Err(_) => None,
        }
    }

    fn scrape(&self) -> Exposition {
        let (status, body) = self.get("/metrics").expect("scrape");
        assert_eq!(status, 200);
        Exposition::parse(&body)
    }

    fn stop(mut self) {
        common::unsafe_kill(self.child.id(), "TERM");
        let _ = self.child.wait();
    }
}

impl Drop for FixedVitals {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Headless Chromium driven over the DevTools protocol on a pipe: NUL-separated JSON messages.
struct Browser {
    child: Child,
    to: ChildStdin,
    from: Receiver<Value>,
    next: u64,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start(chromium: &Path) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        // The shell hands the pipe to Chromium on fds 3 (commands in) and 4 (answers out).
        let cmd = format!(
            "exec '{}' --headless --no-sandbox --disable-gpu --disable-background-networking \
             --disable-component-update --disable-sync --no-first-run --disable-dev-shm-usage \
             --user-data-dir='{}' --remote-debugging-pipe about:blank 3<&0 4>&1 0</dev/null 1>&2",
            chromium.display(),
            profile.path().display()
        );
        let mut child = Command::new("sh")
            .args(["-c", &cmd])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        let to = child.stdin.take().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let (tx, from) = channel();
        std::thread::spawn(move || loop {
            let mut buf = Vec::new();
            match out.read_until(0, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    buf.pop();
                    if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                        if tx.send(v).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let mut b = Browser {
            child,
            to,
            from,
            next: 0,
            session: String::new(),
            _profile: profile,
        };
        let target = b.call("Target.createTarget", json!({"url": "about:blank"}));
        let target_id = target["targetId"].as_str().unwrap().to_owned();
        let attached = b.call(
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        );
        b.session = attached["sessionId"].as_str().unwrap().to_owned();
        b
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).expect("write to chromium");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = self
                .from
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("chromium did not answer {method}"));
            if m["id"].as_u64() == Some(id) {
                assert!(m.get("error").is_none(), "{method}: {m}");
                return m["result"].clone();
            }
        }
    }

    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        r["result"]["value"].clone()
    }

    /// Polls `expression` until it returns true.
    fn wait_for(&mut self, expression: &str, timeout: Duration, what: &str) {
        let deadline = Instant::now() + timeout;
        while self.eval(expression) != json!(true) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; page text:\n{}",
                self.eval("document.body.innerText")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = s
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, c)| n | (u32::from(val(*c)) << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// The quantile Prometheus' histogram_quantile gives for cumulative buckets summed over series.
fn quantile_from_exposition(e: &Exposition, name: &str, q: f64) -> f64 {
    let mut by_le: Vec<(f64, f64)> = Vec::new();
    for s in e.all(&format!("{name}_bucket")) {
        let le = s
            .labels
            .iter()
            .find(|(k, _)| k == "le")
            .map(|(_, v)| v.parse::<f64>().unwrap_or(f64::INFINITY))
            .unwrap();
        match by_le.iter_mut().find(|(b, _)| *b == le) {
            Some(x) => x.1 += s.value,
            None => by_le.push((le, s.value)),
        }
    }
    by_le.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    let total = by_le.last().unwrap().1;
    let rank = q * total;
    let i = by_le.iter().position(|(_, c)| *c >= rank).unwrap();
    if by_le[i].0.is_infinite() {
        return by_le[i - 1].0;
    }
    let (lower, below) = if i == 0 { (0.0, 0.0) } else { by_le[i - 1] };
    lower + (by_le[i].0 - lower) * (rank - below) / (by_le[i].1 - below)
}

fn raw(values: &Value, id: &str) -> f64 {
    values[id]
        .as_str()
        .unwrap_or_else(|| panic!("the page shows no value for {id}: {values}"))
        .parse()
        .unwrap()
}

fn artefact_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artefacts");
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn live_page_in_chromium_matches_metrics_and_reconnects() {
    let chromium = require_tool("chromium", "apt-get install chromium");
    let _ = sdk_python();
    let target = TestChild::hold(&["--alloc-mib", "24", "--fds", "12", "--threads", "3"]);
    let (port, grpc, http) = (free_port(), free_port(), free_port());
    let v = FixedVitals::start(port, grpc, http, target.pid());

    let mut browser = Browser::start(&chromium);
    browser.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1400, "height": 1500, "deviceScaleFactor": 1, "mobile": false}),
    );
    browser.call(
        "Page.navigate",
        json!({"url": format!("http://{}/", v.addr)}),
    );
    browser.wait_for(
        "document.body.dataset.frameT !== '' && document.getElementById('target').dataset.up === '1'",
        Duration::from_secs(20),
        "the first frame with the target attached",
    );
    // Before any span: the RED panel says how to point an SDK at vitals.
    let slow = browser.eval("document.getElementById('panel-slow').innerText");
    assert!(
        slow.as_str()
            .unwrap()
            .contains("OTEL_EXPORTER_OTLP_ENDPOINT"),
        "{slow}"
    );
    let header = browser.eval("document.getElementById('target').innerText");
    let header = header.as_str().unwrap();
    assert!(
        header.contains(&format!("pid {}", target.pid())) && header.contains("--pid"),
        "{header}"
    );

    // Real spans from the real SDK over OTLP/HTTP.
    let truth = sdk_send(
        "http",
        &format!("http://127.0.0.1:{http}"),
        "red",
        "shop",
        &["--spans", "200"],
    );
    let requests = truth["requests"].as_object().unwrap();
    let total: f64 = requests.values().map(|n| n.as_f64().unwrap()).sum();
    let errors: f64 = requests
        .iter()
        .filter(|(k, _)| k.ends_with("|error"))
        .map(|(_, n)| n.as_f64().unwrap())
        .sum();
    assert_eq!(total, 200.0);
    browser.wait_for(
        &format!("document.getElementById('v-requests')?.dataset.raw === '{total}'"),
        Duration::from_secs(20),
        "the spans on the page",
    );

    // Read the page and /metrics at the same moment: the frame tick and the scrape are within a second,
    // and the target holds its memory and fds still, the spans have all arrived.
    let read_page =
        "JSON.stringify(Object.fromEntries([...document.querySelectorAll('[data-raw]')]\
        .map(e => [e.id, e.dataset.raw]).concat([...document.querySelectorAll('[data-used]')]\
        .map(e => [e.id + '/used', e.dataset.used]))))";
    let page: Value = serde_json::from_str(browser.eval(read_page).as_str().unwrap()).unwrap();
    let m = v.scrape();

    // RED: the window began before the first span, so it holds exactly what /metrics counts since start.
    let metric_total = m.sum("vitals_request_duration_seconds_count", &[]);
    let metric_errors = m.sum(
        "vitals_request_duration_seconds_count",
        &[("outcome", "error")],
    );
    assert_eq!(metric_total, total);
    assert_eq!(metric_errors, errors);
    assert_eq!(raw(&page, "v-requests"), metric_total);
    assert!((raw(&page, "v-error_ratio") - metric_errors / metric_total).abs() < 1e-12);
    // The page's percentiles come from RED's exponential buckets (schema 4: each bucket 4.4% wider than the
    // last), so they fall between the spans' order statistics around the quantile, give or take a bucket.
    let mut durations: Vec<f64> = truth["durations"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|v| v.as_array().unwrap().iter().map(|d| d.as_f64().unwrap()))
        .collect();
    durations.sort_by(|a, b| a.total_cmp(b));
    assert_eq!(durations.len() as f64, total);
    for (id, q) in [("v-p50", 0.5), ("v-p99", 0.99)] {
        let rank = q * (durations.len() - 1) as f64;
        let (lo, hi) = (
            durations[rank.floor() as usize] / 1.045,
            durations[rank.ceil() as usize] * 1.045,
        );
        let got = raw(&page, id);
        let classic = quantile_from_exposition(&m, "vitals_request_duration_seconds", q);
        assert!(
            (lo..=hi).contains(&got),
            "{id}: page {got}, spans' order statistics {lo}..{hi} (classic buckets: {classic})"
        );
    }
    let verdict = browser.eval("document.getElementById('verdict-slow').dataset.level");
    // 10% marked errors plus HTTP 503s put the error ratio above the shipped 10% critical threshold.
    assert!(errors / total > 0.10);
    assert_eq!(verdict, json!("critical"));
    let alerts = browser.eval("document.getElementById('alerts').innerText");
    assert!(
        alerts
            .as_str()
            .unwrap()
            .contains("VitalsErrorRatioCritical"),
        "{alerts}"
    );

    // Memory: RSS of an idle process that touched its 24 MiB; 1% covers a page or two between tick and scrape.
    let rss = m.sum("process_memory_usage_bytes", &[]);
    let page_rss = raw(&page, "v-rss");
    assert!(rss > 24.0 * 1048576.0, "{rss}");
    assert!(
        (page_rss - rss).abs() <= 0.01 * rss,
        "page {page_rss}, /metrics {rss}"
    );

    // Saturation: the fd pool of an idle process is exact.
    let fds_used = m.get("vitals_pool_used", &[("kind", "fds")]).unwrap();
    let fds_util = m
        .get("vitals_pool_utilization_ratio", &[("kind", "fds")])
        .unwrap();
    let pool_id = page
        .as_object()
        .unwrap()
        .keys()
        .find(|k| k.starts_with("pool-fds-") && !k.ends_with("/used"))
        .cloned()
        .expect("an fd pool row");
    assert_eq!(raw(&page, &pool_id), fds_util);
    assert_eq!(raw(&page, &format!("{pool_id}/used")), fds_used);
    assert!(fds_used >= 12.0);

    // Pauses: the throttled-time rate of one tick cannot exceed what the counter grew between two scrapes
    // that enclose two ticks (0 when the target is not under a quota).
    let before = v
        .scrape()
        .sum("vitals_cgroup_cpu_throttled_seconds_total", &[]);
    let t0 = browser
        .eval("document.body.dataset.frameT")
        .as_str()
        .unwrap()
        .parse::<f64>()
        .unwrap();
    browser.wait_for(
        &format!("Number(document.body.dataset.frameT) >= {}", t0 + 1.9),
        Duration::from_secs(10),
        "two more frames",
    );
    let page2: Value = serde_json::from_str(browser.eval(read_page).as_str().unwrap()).unwrap();
    let after = v
        .scrape()
        .sum("vitals_cgroup_cpu_throttled_seconds_total", &[]);
    if let Some(t) = page2["v-throttled"].as_str() {
        let t: f64 = t.parse().unwrap();
        assert!(
            t >= 0.0 && t <= (after - before) / 0.9 + 1e-9,
            "page {t}/s, counter grew {}",
            after - before
        );
    }
    let pausing = browser.eval("document.getElementById('verdict-pausing').dataset.level");
    assert_eq!(pausing, json!("ok"), "an idle Python process has no pauses");
    let leaking = browser.eval("document.getElementById('verdict-leaking').dataset.level");
    assert_eq!(leaking, json!("ok"));

    // The screenshot artefact.
    let shot = browser.call("Page.captureScreenshot", json!({"format": "png"}));
    let png = base64_decode(shot["data"].as_str().unwrap());
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let path = artefact_dir().join("live_page.png");
    std::fs::write(&path, &png).unwrap();
    eprintln!("screenshot: {} ({} bytes)", path.display(), png.len());

    // Restart vitals on the same address: the page notices and reconnects by itself.
    assert_eq!(browser.eval("document.body.dataset.connects"), json!("1"));
    v.stop();
    browser.wait_for(
        "document.getElementById('conn').textContent.startsWith('disconnected')",
        Duration::from_secs(10),
        "the page to notice the stream ended",
    );
    let restarted_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let v2 = FixedVitals::start(port, grpc, http, target.pid());
    browser.wait_for(
        &format!(
            "document.body.dataset.connects === '2' && Number(document.body.dataset.frameT) > {restarted_at}"
        ),
        Duration::from_secs(20),
        "the stream to reconnect to the restarted vitals",
    );
    // The new vitals has seen no spans: the page shows its state, not the old one.
    let slow = browser.eval("document.getElementById('panel-slow').innerText");
    assert!(
        slow.as_str()
            .unwrap()
            .contains("OTEL_EXPORTER_OTLP_ENDPOINT"),
        "{slow}"
    );
    v2.stop();
}

/// Sends one DB pool with a long name through the real Python SDK (OTLP/HTTP).
fn send_long_pool(http: u16, name: &str) {
    let code = r#"
import sys
from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
endpoint, name = sys.argv[1], sys.argv[2]
reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=endpoint + "/v1/metrics"), export_interval_millis=3_600_000)
mp = MeterProvider(metric_readers=[reader])
m = mp.get_meter("long-pool")
pool = {"db.client.connection.pool.name": name}
m.create_observable_up_down_counter("db.client.connection.count", unit="{connection}", callbacks=[lambda o: [
    Observation(9, {**pool, "db.client.connection.state": "used"}), Observation(1, {**pool, "db.client.connection.state": "idle"})]])
m.create_observable_up_down_counter("db.client.connection.max", unit="{connection}", callbacks=[lambda o: [Observation(10, pool)]])
m.create_observable_up_down_counter("db.client.connection.pending_requests", unit="{request}", callbacks=[lambda o: [Observation(4, pool)]])
assert mp.force_flush(30_000)
mp.shutdown()
"#;
    let out = Command::new(sdk_python())
        .args(["-c", code, &format!("http://127.0.0.1:{http}"), name])
        .output()
        .expect("run the Python SDK");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A pool name of 160 characters without a break: at 1400 px (three panels a row) and 900 px (two)
/// the pool table stays inside its panel, and every panel inside the window. The RED panel's sentence
/// reads as one sentence naming the HTTP receiver.
#[test]
fn long_pool_names_fit_their_panel_at_1400_and_900_px() {
    let chromium = require_tool("chromium", "apt-get install chromium");
    let target = TestChild::hold(&["--fds", "4"]);
    let (port, grpc, http) = (free_port(), free_port(), free_port());
    let v = FixedVitals::start(port, grpc, http, target.pid());
    let name = format!(
        "jdbc:postgresql://orders-primary.db.internal:5432/orders_{}",
        "x".repeat(100)
    );
    send_long_pool(http, &name);
    let mut browser = Browser::start(&chromium);
    for width in [1400, 900] {
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": 1200, "deviceScaleFactor": 1, "mobile": false}),
        );
        browser.call(
            "Page.navigate",
            json!({"url": format!("http://{}/", v.addr)}),
        );
        browser.wait_for(
            "[...document.querySelectorAll('#pools td')].some(td => td.textContent.length > 150)",
            Duration::from_secs(20),
            "the long pool on the page",
        );
        let fit = browser.eval(
            "(() => { const p = document.getElementById('panel-saturated').getBoundingClientRect(); \
             const t = document.querySelector('#pools table').getBoundingClientRect(); \
             const panels = [...document.querySelectorAll('section')].map(s => s.getBoundingClientRect().right); \
             return JSON.stringify({panel_left: p.left, panel_right: p.right, table_left: t.left, \
             table_right: t.right, widest: Math.max(...panels), window: document.documentElement.clientWidth, \
             scroll: document.documentElement.scrollWidth}); })()",
        );
        let fit: Value = serde_json::from_str(fit.as_str().unwrap()).unwrap();
        let f = |k: &str| fit[k].as_f64().unwrap();
        assert!(
            f("table_right") <= f("panel_right") && f("table_left") >= f("panel_left"),
            "{width} px: the pool table leaves its panel: {fit}"
        );
        assert!(
            f("widest") <= f("window") && f("scroll") <= f("window"),
            "{width} px: a panel leaves the window: {fit}"
        );
        // The utilization cell is the pool's, 9 of 10.
        let util = browser.eval(&format!(
            "document.getElementById({:?}).dataset.raw",
            format!("pool-db-{name}")
        ));
        assert_eq!(util, json!("0.9"), "{width} px");
    }
    let slow = browser.eval("document.getElementById('panel-slow').innerText");
    let slow = slow.as_str().unwrap();
    assert!(
        slow.contains(&format!(
            "No OTLP spans have arrived. Start the app with OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:{http} (for gRPC: OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:{grpc} OTEL_EXPORTER_OTLP_PROTOCOL=grpc), or use \"vitals run -- CMD\", which sets it."
        )),
        "{slow}"
    );
    let shot = browser.call("Page.captureScreenshot", json!({"format": "png"}));
    let png = base64_decode(shot["data"].as_str().unwrap());
    std::fs::write(artefact_dir().join("live_page_900px.png"), &png).unwrap();
}
