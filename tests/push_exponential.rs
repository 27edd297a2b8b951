//! Push keeps exponential histograms exponential: spans of known durations sent by the real OpenTelemetry
//! Python SDK become RED, which vitals pushes as an OTLP ExponentialHistogram to a real receiver
//! (tests/python/upstream.py); the app's own exponential histogram reaches the same receiver through
//! forwarding. Both are decoded by the official opentelemetry-proto Python classes, and their quantiles,
//! computed there from the buckets alone, are checked against the exact quantiles of the durations.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{sdk_python, sdk_send, PyUpstream, Vitals};
use serde_json::Value;

const SPANS: usize = 20_000;
const QUANTILES: [f64; 3] = [0.5, 0.95, 0.99];

/// The exact `q` quantile of `sorted`: the value of rank ⌈q·n⌉, the rank the bucket walk looks for.
fn exact(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank - 1]
}

/// What tests/python/read_pushed_histograms.py reads from the receiver's recorded requests.
fn read(up: &PyUpstream, metrics: &[&str]) -> Value {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/read_pushed_histograms.py");
    let out = Command::new(sdk_python())
        .arg(script)
        .arg(up.dir.path())
        .args(metrics)
        .args(["--quantiles", &QUANTILES.map(|q| q.to_string()).join(",")])
        .output()
        .expect("run read_pushed_histograms.py");
    assert!(
        out.status.success(),
        "read_pushed_histograms.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// The point of `metric` whose attributes hold `/checkout` (and `outcome=ok` where there is one).
fn checkout<'a>(got: &'a Value, metric: &str) -> Option<&'a Value> {
    got[metric].as_array()?.iter().find(|p| {
        let a = &p["attributes"];
        a.as_object()
            .is_some_and(|o| o.values().any(|v| v == "/checkout"))
            && a.get("outcome").is_none_or(|o| o == "ok")
    })
}

fn assert_quantiles(what: &str, p: &Value, sorted: &[f64]) {
    for q in QUANTILES {
        let want = exact(sorted, q);
        let got = p["quantiles"][q.to_string()].as_f64().unwrap_or(f64::NAN);
        let err = got / want - 1.0;
        eprintln!(
            "{what} p{}: exact {want:.5} s, from the pushed buckets {got:.5} s ({:+.3}%)",
            q * 100.0,
            err * 100.0
        );
        assert!(err.abs() < 0.02, "{what} p{q}: {got} vs exact {want}");
    }
}

#[test]
fn red_is_pushed_as_an_exponential_histogram_within_two_percent() {
    let up = PyUpstream::start("http", "ok");
    let v = Vitals::start(&[
        "--push-endpoint",
        &up.url(),
        "--push-interval",
        "1s",
        "--forward-endpoint",
        &up.url(),
    ]);
    let (grpc, _) = v.otlp_addrs();
    let truth = sdk_send(
        "grpc",
        &format!("http://{grpc}"),
        "latency",
        "shop",
        &["--spans", &SPANS.to_string()],
    );
    let durations = common::sorted_durations(&truth, SPANS);

    // Wait for a push that holds every span (pushes are cumulative, one a second).
    let names = ["vitals.request.duration", "checkout.duration"];
    let deadline = Instant::now() + Duration::from_secs(30);
    let got = loop {
        let got = read(&up, &names);
        let done = checkout(&got, names[0]).is_some_and(|p| p["bucket_total"] == SPANS)
            && checkout(&got, names[1]).is_some();
        if done {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "no push with all {SPANS} spans: {got}\nvitals log:\n{}",
            v.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(300));
    };

    // RED, pushed by vitals.
    let red = checkout(&got, names[0]).expect("RED point");
    assert_eq!(red["service"], "vitals", "pushed under vitals' resource");
    assert_eq!(red["type"], "exponential_histogram", "{red}");
    assert_eq!(red["temporality"], 2, "cumulative");
    assert_eq!(red["count"], SPANS);
    assert_eq!(
        red["bucket_total"], red["count"],
        "bucket counts add up to the count"
    );
    assert_eq!(red["scale"], 4, "16 buckets per doubling fit this spread");
    assert!(
        red["positive_buckets"].as_u64().unwrap_or(999) <= 160,
        "{red}"
    );
    assert_eq!(red["zero_threshold"], 1.0 / 1_048_576.0);
    // The durations come from integer nanoseconds: min, max and sum as vitals computed them from spans.
    let (lo, hi) = (durations[0], durations[SPANS - 1]);
    let close = |a: &Value, b: f64, tol: f64| (a.as_f64().unwrap_or(f64::NAN) - b).abs() <= tol;
    assert!(close(&red["min"], lo, 1e-9), "min {} vs {lo}", red["min"]);
    assert!(close(&red["max"], hi, 1e-9), "max {} vs {hi}", red["max"]);
    let sum: f64 = durations.iter().sum();
    assert!(
        close(&red["sum"], sum, sum * 1e-9),
        "sum {} vs {sum}",
        red["sum"]
    );
    let (start, time) = (
        red["start"].as_u64().unwrap(),
        red["time"].as_u64().unwrap(),
    );
    assert!(start > 0 && start < time, "start {start}, time {time}");
    assert_quantiles("RED (pushed)", red, &durations);

    // The app's exponential histogram, forwarded as the SDK sent it.
    let app = checkout(&got, names[1]).expect("app point");
    assert_eq!(app["service"], "shop", "forwarded under the app's resource");
    assert_eq!(app["type"], "exponential_histogram", "{app}");
    assert_eq!(app["count"], SPANS);
    assert_eq!(app["bucket_total"], SPANS);
    assert_quantiles("app histogram (forwarded)", app, &durations);

    // The next push continues the same stream: same start, later time, same counts.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let again = read(&up, &names);
        let p = checkout(&again, names[0]).expect("RED point");
        if p["time"].as_u64().unwrap_or(0) > time {
            assert_eq!(p["start"].as_u64(), Some(start), "start time stable");
            assert_eq!(p["count"], SPANS);
            assert_eq!(p["quantiles"], red["quantiles"]);
            break;
        }
        assert!(Instant::now() < deadline, "no later push");
        std::thread::sleep(Duration::from_millis(300));
    }
}
