//! Memory growth against real processes whose RSS follows a known shape (tests/children/grow.py, anonymous
//! mmaps): a 1 MiB/s grower with a 16 MiB sawtooth on top, a steady one and a sawtooth-only one, with
//! short windows set by flag. The grower's slope is within 10% of the truth and it is flagged as a leak;
//! the steady and sawtooth ones are never flagged.

mod common;

use std::time::{Duration, Instant};

use common::{TestChild, Vitals};

const MIB: f64 = 1048576.0;

fn watch(args: &[&str]) -> (TestChild, Vitals) {
    let (child, _) = TestChild::script("grow.py", args);
    let v = Vitals::start(&[
        "--pid",
        &child.pid().to_string(),
        "--interval",
        "250ms",
        "--growth-windows",
        "20s,40s",
    ]);
    (child, v)
}

#[test]
fn grower_is_measured_and_flagged_steady_and_sawtooth_are_not() {
    let grower = watch(&["--rate", "1", "--saw", "16"]);
    let steady = watch(&["--rate", "0"]);
    let sawtooth = watch(&["--rate", "0", "--saw", "16"]);
    let started = Instant::now();
    fn rss_window(w: &str) -> [(&'static str, &str); 2] {
        [("signal", "rss"), ("window", w)]
    }
    // The 40 s window is ready once two thirds of it hold data; until then it says nothing.
    let e = grower.1.scrape();
    assert!(
        e.get("vitals_memory_growth_bytes_per_second", &rss_window("40s"))
            .is_none(),
        "no slope before the window has data"
    );
    let e = grower
        .1
        .wait_until(Duration::from_secs(60), "40s window ready", |e| {
            e.get("vitals_memory_growth_bytes_per_second", &rss_window("40s"))
                .is_some()
        });
    assert!(
        started.elapsed() >= Duration::from_secs(20),
        "ready too early: {:?}",
        started.elapsed()
    );
    for w in ["20s", "40s"] {
        let slope = e
            .get("vitals_memory_growth_bytes_per_second", &rss_window(w))
            .unwrap();
        eprintln!(
            "figure: grower window {w}: {slope:.0} B/s (truth {MIB} B/s, {:+.1}%)",
            (slope - MIB) / MIB * 100.0
        );
        assert!(
            (slope - MIB).abs() / MIB < 0.10,
            "grower {w}: {slope:.0} B/s vs {MIB} B/s"
        );
    }
    assert_eq!(
        e.get("vitals_memory_leak_suspected", &[("signal", "rss")]),
        Some(1.0)
    );

    for (name, v) in [("steady", &steady.1), ("sawtooth", &sawtooth.1)] {
        let e = v.wait_until(Duration::from_secs(20), "40s window ready", |e| {
            e.get("vitals_memory_growth_bytes_per_second", &rss_window("40s"))
                .is_some()
        });
        for w in ["20s", "40s"] {
            let slope = e
                .get("vitals_memory_growth_bytes_per_second", &rss_window(w))
                .unwrap();
            eprintln!("figure: {name} window {w}: {slope:.0} B/s (truth 0)");
            assert!(
                slope.abs() < 0.05 * MIB,
                "{name} {w}: {slope:.0} B/s should be about 0"
            );
        }
        assert_eq!(
            e.get("vitals_memory_leak_suspected", &[("signal", "rss")]),
            Some(0.0),
            "{name} flagged as a leak"
        );
    }
}
