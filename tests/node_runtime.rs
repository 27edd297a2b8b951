//! A real Node process with @opentelemetry/instrumentation-runtime-node, forced to collect garbage,
//! exporting to vitals: vitals_gc_pause_seconds_total{runtime="node"} rises and equals the histogram sums
//! the SDK sent; the event-loop delay arrives per statistic, equal to the SDK's figures, in a family
//! `promtool check metrics` accepts; the last-minute max pause is a bucket bound, not the top.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{require_tool, Vitals};

#[test]
fn v8_gc_pauses_and_event_loop_delay() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    assert!(
        dir.join("node_modules/@opentelemetry/instrumentation-runtime-node")
            .is_dir(),
        "npm ci --prefix tests/node (.ci/run does)"
    );
    let v = Vitals::start(&["--interval", "200ms"]);
    let (_, http) = v.otlp_addrs();
    let out = Command::new(require_tool("node", "apt-get install -y nodejs npm"))
        .arg("--expose-gc")
        .arg(dir.join("runtime.mjs"))
        .args(["--endpoint", &format!("http://{http}"), "--seconds", "3"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The SDK's last export is in; vitals' derived totals follow on its next tick.
    let e = v.wait_until(Duration::from_secs(10), "pauses caught up", |e| {
        let sent = e.sum("v8js_gc_duration_seconds_count", &[]);
        sent > 0.0 && e.sum("vitals_gc_pauses_total", &[]) == sent
    });
    let sent_secs = e.sum("v8js_gc_duration_seconds_sum", &[]);
    let got_secs = e.sum("vitals_gc_pause_seconds_total", &[]);
    assert!(
        (got_secs - sent_secs).abs() < 1e-9,
        "vitals {got_secs} s vs sent {sent_secs} s"
    );
    assert!(
        e.sum("vitals_gc_pauses_total", &[]) >= 20.0,
        "forced GCs every 20 ms for 3 s"
    );
    assert!(e
        .all("vitals_gc_pauses_total")
        .iter()
        .all(|s| s.labels.iter().any(|(k, v)| k == "runtime" && v == "node")));
    let max = e
        .get(
            "vitals_gc_pause_max_seconds",
            &[("runtime", "node"), ("source", "otlp")],
        )
        .unwrap();
    // V8 collects this tiny heap in milliseconds: the bound is one of the small buckets, never the top one.
    assert!(max > 0.0 && max <= 0.1, "max pause bound {max}");
    // The event-loop delay is a valid family (no `quantile` label on a gauge) holding what the SDK sent:
    // the worst of each statistic over the app's last export. Node's figures include its 10 ms sampling
    // resolution (monitoringPrecision 10), so even p50 is at least 10 ms.
    for (statistic, app_name) in [
        ("min", "nodejs_eventloop_delay_min_seconds"),
        ("p50", "nodejs_eventloop_delay_p50_seconds"),
        ("p99", "nodejs_eventloop_delay_p99_seconds"),
        ("max", "nodejs_eventloop_delay_max_seconds"),
    ] {
        let ours = e
            .get(
                "vitals_event_loop_delay_seconds",
                &[("statistic", statistic)],
            )
            .unwrap_or_else(|| panic!("no {statistic} in\n{}", e.text));
        let sent = e
            .all(app_name)
            .iter()
            .map(|s| s.value)
            .fold(f64::NEG_INFINITY, f64::max);
        assert_eq!(ours, sent, "{statistic}: vitals {ours} vs SDK {sent}");
    }
    let p50 = e
        .get("vitals_event_loop_delay_seconds", &[("statistic", "p50")])
        .unwrap();
    let p99 = e
        .get("vitals_event_loop_delay_seconds", &[("statistic", "p99")])
        .unwrap();
    assert!(p99 >= p50 && p50 >= 0.009, "p50 {p50} p99 {p99}");
    assert!(
        e.all("vitals_event_loop_delay_seconds")
            .iter()
            .all(|s| s.labels.iter().all(|(k, _)| k != "quantile")),
        "no quantile label on a gauge"
    );
    common::promtool_check_metrics(&e.text).expect("promtool check metrics");
}

/// The first `event: frame` of the live page's stream that meets `cond` (frames come once a tick);
/// panics with the last one after 10 s.
fn live_frame(v: &Vitals, cond: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut last = serde_json::Value::Null;
    use std::io::BufRead;
    let url = format!("http://{}/live/stream", v.metrics);
    let resp = ureq::get(&url)
        .timeout(Duration::from_secs(10))
        .call()
        .expect("GET /live/stream");
    let mut frame = false;
    for line in std::io::BufReader::new(resp.into_reader())
        .lines()
        .map_while(Result::ok)
    {
        if line == "event: frame" {
            frame = true;
        } else if let Some(data) = line.strip_prefix("data:").filter(|_| frame) {
            if let Ok(f) = serde_json::from_str(data.trim()) {
                if cond(&f) {
                    return f;
                }
                last = f;
            }
            frame = false;
        }
        if std::time::Instant::now() > deadline {
            break;
        }
    }
    panic!("no matching frame in the live stream; the last: {last}")
}

/// The live page's heap row reads vitals' typed heap family, which holds what the Node SDK sent as
/// v8js.memory.heap.used (summed over heap spaces): the row shows the SDK's value, not a dash.
#[test]
fn live_page_heap_row_shows_the_sdk_heap() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    let v = Vitals::start(&["--interval", "200ms"]);
    let (_, http) = v.otlp_addrs();
    let out = Command::new(require_tool("node", "apt-get install -y nodejs npm"))
        .arg("--expose-gc")
        .arg(dir.join("runtime.mjs"))
        .args(["--endpoint", &format!("http://{http}"), "--seconds", "2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The SDK's own figure, as vitals passes it through: heap used per V8 heap space.
    // The app has exited after its last export: both figures settle, vitals' on its next tick.
    let e = v.wait_until(Duration::from_secs(10), "heap family", |e| {
        let sent = e.sum("v8js_memory_heap_used_bytes", &[]);
        sent > 0.0 && e.get("vitals_memory_heap_bytes", &[("runtime", "node")]) == Some(sent)
    });
    let sent = e.sum("v8js_memory_heap_used_bytes", &[]);
    let ours = e
        .get("vitals_memory_heap_bytes", &[("runtime", "node")])
        .unwrap();
    assert_eq!(
        ours, sent,
        "vitals_memory_heap_bytes vs the SDK's sum over heap spaces"
    );
    // instrumentation-runtime-node sends no v8js.memory.heap.limit: no limit is made up.
    assert!(!e.has("v8js_memory_heap_limit_bytes"));
    assert!(!e.has("vitals_memory_heap_limit_bytes"));
    // The stream starts with the frame of the tick before; the next ones carry the last export.
    let frame = live_frame(&v, |f| {
        f["memory"]["heap_after_gc_bytes"].as_f64() == Some(sent)
    });
    assert!(frame["memory"]["heap_limit_bytes"].is_null());
    eprintln!("figure: Node heap used {sent} B (SDK, summed over spaces); page heap row {ours} B");
}
