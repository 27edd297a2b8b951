//! Runtimes through the runtime table, end to end: the real OpenTelemetry Python SDK sends metrics as the
//! Go, .NET and Java instrumentations name them, under resources whose `telemetry.sdk.language` claims
//! those runtimes, to the real vitals binary watching a process whose executable names no runtime.
//! Asserted exactly: Go's scheduling latency (`go.schedule.duration`, cumulative) as statistics of the last
//! export interval only; Go GC pauses; .NET pauses from its pause-time counter (no count; the max from its
//! growth); the .NET thread pool; a `jvm.gc.duration` sent in milliseconds read as milliseconds; the
//! target's `runtime` label from the first SDK language seen; and no Go statistic for an export interval
//! that observed nothing.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use common::{sdk_python, Vitals};

/// The script, its stdin (a line starts the next phase) and its stdout lines.
struct Script {
    child: Child,
    stdin: ChildStdin,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Script {
    fn start(endpoint: &str) -> Script {
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/runtimes.py");
        let mut child = Command::new(sdk_python())
            .arg(script)
            .args(["--endpoint", endpoint])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run runtimes.py");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Script {
            child,
            stdin,
            lines,
        }
    }

    fn expect(&mut self, line: &str) {
        let got = self.lines.next().map(|l| l.unwrap());
        assert_eq!(got.as_deref(), Some(line), "runtimes.py");
    }

    fn next_phase(&mut self) {
        self.stdin.write_all(b"\n").unwrap();
        self.stdin.flush().unwrap();
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn delay(e: &common::Exposition, runtime: &str, statistic: &str) -> Option<f64> {
    e.get(
        "vitals_event_loop_delay_seconds",
        &[("runtime", runtime), ("statistic", statistic)],
    )
}

#[test]
fn go_dotnet_and_millisecond_jvm_metrics_through_the_runtime_table() {
    // A target whose executable names no runtime: only the SDK language can say which it is.
    let mut target = Command::new("sleep").arg("600").spawn().unwrap();
    let v = Vitals::start(&["--pid", &target.id().to_string(), "--interval", "100ms"]);
    let (grpc, _) = v.otlp_addrs();
    let mut s = Script::start(&format!("http://{grpc}"));

    // Phase 1: Go's first round. The series began after vitals did, so all of it is the first interval:
    // 50 delays of 50 ms, every statistic the 0.1 s bound.
    s.expect("phase 1");
    let e = v.wait_until(Duration::from_secs(15), "Go's first interval", |e| {
        delay(e, "go", "max").is_some()
            && e.find("vitals_target_info", &[("runtime", "go")]).is_some()
    });
    for statistic in ["p50", "p90", "p99", "max"] {
        assert_eq!(delay(&e, "go", statistic), Some(0.1), "{statistic}");
    }
    assert!(
        delay(&e, "go", "min").is_none(),
        "no min from buckets: a bucket's upper bound is not a minimum"
    );
    let go = [("runtime", "go"), ("collector", "all"), ("source", "otlp")];
    assert_eq!(e.get("vitals_gc_pauses_total", &go), Some(3.0));

    // Phase 2: .NET's first round and the JVM app in milliseconds. The target's runtime stays go.
    s.next_phase();
    s.expect("phase 2");
    let dotnet = [
        ("runtime", "dotnet"),
        ("collector", "all"),
        ("source", "otlp"),
    ];
    let e = v.wait_until(Duration::from_secs(15), ".NET and JVM pauses", |e| {
        e.get("vitals_gc_pause_seconds_total", &dotnet).is_some()
            && e.find("vitals_gc_pauses_total", &[("runtime", "jvm")])
                .is_some()
    });
    assert_eq!(e.get("vitals_gc_pause_seconds_total", &dotnet), Some(0.25));
    assert_eq!(
        e.get(
            "vitals_gc_pause_max_seconds",
            &[("runtime", "dotnet"), ("source", "otlp")]
        ),
        Some(0.25),
        "a new counter's whole first reading bounds its longest pause"
    );
    assert!(e.find("vitals_target_info", &[("runtime", "go")]).is_some());

    // Phase 3: the second rounds.
    s.next_phase();
    s.expect("phase 3");
    let truth: serde_json::Value =
        serde_json::from_str(&s.lines.next().expect("truth").unwrap()).unwrap();
    let t = |k: &str| truth[k].as_f64().unwrap();
    let e = v.wait_until(Duration::from_secs(15), "second rounds", |e| {
        e.get("vitals_gc_pause_seconds_total", &dotnet) == Some(t("dotnet_pause_total"))
            && delay(e, "go", "p50") == truth["sched_round2"]["p50"].as_f64()
    });

    // Go scheduling latency: the second interval's statistics, not those of everything since start.
    for statistic in ["p50", "p90", "p99", "max"] {
        let want = truth["sched_round2"][statistic].as_f64().unwrap();
        assert_eq!(delay(&e, "go", statistic), Some(want), "{statistic}");
    }
    assert_ne!(
        truth["sched_round2"], truth["sched_cumulative"],
        "the rounds are chosen so that cumulative statistics would differ"
    );
    assert_eq!(
        (delay(&e, "go", "p50"), delay(&e, "go", "p99")),
        (Some(0.0001), Some(0.01))
    );

    // Go GC pauses.
    let secs = e.get("vitals_gc_pause_seconds_total", &go).unwrap();
    assert!((secs - t("go_pause_seconds")).abs() < 1e-12, "{secs}");
    assert_eq!(e.get("vitals_gc_pauses_total", &go), Some(t("go_pauses")));
    assert_eq!(
        e.get(
            "vitals_gc_pause_max_seconds",
            &[("runtime", "go"), ("source", "otlp")]
        ),
        Some(t("go_max_bound"))
    );

    // .NET: total time exact, no pause count (the counter has none), max still the first 0.25 s growth.
    assert_eq!(
        e.get("vitals_gc_pause_seconds_total", &dotnet),
        Some(t("dotnet_pause_total"))
    );
    assert!(e.find("vitals_gc_pauses_total", &dotnet).is_none());
    assert_eq!(
        e.get(
            "vitals_gc_pause_max_seconds",
            &[("runtime", "dotnet"), ("source", "otlp")]
        ),
        Some(t("dotnet_pause_round1"))
    );
    let pool = [("pool", "dotnet"), ("kind", "thread")];
    assert_eq!(e.get("vitals_pool_used", &pool), Some(t("dotnet_threads")));
    assert_eq!(e.get("vitals_pool_pending", &pool), Some(t("dotnet_queue")));

    // The JVM's milliseconds read as milliseconds: 25 ms and 500 ms, not 25 s and 500 s.
    for (collector, want) in truth["jvm_ms"].as_object().unwrap() {
        let labels = [
            ("runtime", "jvm"),
            ("collector", collector.as_str()),
            ("source", "otlp"),
        ];
        let secs = e.get("vitals_gc_pause_seconds_total", &labels).unwrap();
        assert!(
            (secs - want[0].as_f64().unwrap()).abs() < 1e-12,
            "{collector}: {secs}"
        );
        assert_eq!(e.get("vitals_gc_pauses_total", &labels), want[1].as_f64());
    }
    assert_eq!(
        e.get(
            "vitals_gc_pause_max_seconds",
            &[("runtime", "jvm"), ("source", "otlp")]
        ),
        Some(t("jvm_max_bound")),
        "the 500 ms pause's bucket ends at 1000 ms"
    );
    // vitals' own families pass promtool's checks. The app's families are left out: promtool lints the
    // names the app chose (`dotnet.thread_pool.thread.count` ends in `_count`, a histogram in `ms`).
    let own: String = e
        .text
        .lines()
        .filter(|l| {
            l.starts_with("vitals_")
                || l.starts_with("# HELP vitals_")
                || l.starts_with("# TYPE vitals_")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    common::promtool_check_metrics(&own).expect("promtool check metrics");

    // Phase 4: the SDKs' last export repeats Go's histogram with nothing new: no delay was observed in
    // that interval, so no statistic is shown (rather than the previous interval's, held as if current).
    s.next_phase();
    s.expect("phase 4");
    let e = v.wait_until(Duration::from_secs(15), "an empty interval", |e| {
        delay(e, "go", "max").is_none()
    });
    assert_eq!(
        e.get("vitals_gc_pause_seconds_total", &dotnet),
        Some(t("dotnet_pause_total")),
        "the pause totals stay"
    );
    let _ = target.kill();
    let _ = target.wait();
}
