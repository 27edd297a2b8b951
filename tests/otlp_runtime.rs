//! GC pauses from the app's OTLP runtime metrics (the real Python SDK sending jvm.gc.duration with known
//! values): totals exact, concurrent collector cycles left out, and the first export of each series (new
//! since vitals started) counted toward the last minute's max; and all of it whatever the app metric store
//! keeps (its overflow series do not blur the collectors).

mod common;

use std::time::Duration;

use common::{sdk_send, Vitals};

#[test]
fn jvm_gc_duration_becomes_pauses_without_concurrent_cycles() {
    let v = Vitals::start(&[]);
    let (grpc, _) = v.otlp_addrs();
    let truth = sdk_send("grpc", &format!("http://{grpc}"), "runtime", "jvm-app", &[]);
    let e = v.wait_until(Duration::from_secs(10), "pauses", |e| {
        e.find("vitals_gc_pauses_total", &[("source", "otlp")])
            .is_some()
    });
    for (collector, v) in truth["pauses"].as_object().unwrap() {
        let labels = [
            ("runtime", "jvm"),
            ("collector", collector.as_str()),
            ("source", "otlp"),
        ];
        let secs = e.get("vitals_gc_pause_seconds_total", &labels).unwrap();
        assert!(
            (secs - v[0].as_f64().unwrap()).abs() < 1e-9,
            "{collector}: {secs}"
        );
        assert_eq!(
            e.get("vitals_gc_pauses_total", &labels),
            v[1].as_f64(),
            "{collector}"
        );
    }
    for c in truth["concurrent"].as_array().unwrap() {
        assert!(
            e.find(
                "vitals_gc_pauses_total",
                &[("collector", c.as_str().unwrap())]
            )
            .is_none(),
            "{c} is not a pause"
        );
    }
    assert_eq!(e.all("vitals_gc_pauses_total").len(), 2);
    // The series began after vitals did, so its first reading's pauses are new: the 0.5 s old-generation
    // pause lies in the (0.1, 1] bucket and the max is that bound; the 2-3 s concurrent cycles are not
    // pauses and stay out.
    assert_eq!(
        e.get(
            "vitals_gc_pause_max_seconds",
            &[("runtime", "jvm"), ("source", "otlp")]
        ),
        Some(1.0)
    );
}

/// Derivation reads the runtime metrics picked at ingest, not the app metric store: with the store held
/// to one label set per metric, the other collectors' series land in the store's overflow series, yet
/// every collector's pause totals stay exact and under its own name.
#[test]
fn pauses_do_not_depend_on_the_app_metric_store() {
    let v = Vitals::start(&["--series-limit", "1"]);
    let (grpc, _) = v.otlp_addrs();
    let truth = sdk_send("grpc", &format!("http://{grpc}"), "runtime", "jvm-app", &[]);
    let e = v.wait_until(Duration::from_secs(10), "pauses", |e| {
        e.all("vitals_gc_pauses_total").len() == 2
    });
    assert!(
        e.find(
            "jvm_gc_duration_seconds_count",
            &[("otel_metric_overflow", "true")]
        )
        .is_some(),
        "the store overflowed:\n{}",
        e.text
    );
    for (collector, v) in truth["pauses"].as_object().unwrap() {
        let labels = [
            ("runtime", "jvm"),
            ("collector", collector.as_str()),
            ("source", "otlp"),
        ];
        let secs = e.get("vitals_gc_pause_seconds_total", &labels).unwrap();
        assert!(
            (secs - v[0].as_f64().unwrap()).abs() < 1e-9,
            "{collector}: {secs}"
        );
        assert_eq!(
            e.get("vitals_gc_pauses_total", &labels),
            v[1].as_f64(),
            "{collector}"
        );
    }
    assert!(e
        .find("vitals_gc_pauses_total", &[("collector", "unknown")])
        .is_none());
}
