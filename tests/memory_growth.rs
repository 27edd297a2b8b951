//! Memory growth against real processes whose RSS follows a known shape (tests/children/grow.py, anonymous
//! mmaps): a 1 MiB/s grower with a 16 MiB sawtooth on top, a steady one and a sawtooth-only one, with
//! short windows set by flag. The grower's slope is within 10% of the truth and it is flagged as a leak;
//! the steady and sawtooth ones are never flagged.

mod common;

use std::time::{Duration, Instant};

use common::{Jvm, TestChild, Vitals};

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
        // The default windows (15m, 1h) scaled by 45, so the 10 MB/h threshold scales the same way: at
        // 10 MB/h, 40 s of a sawtooth's allocator drift (7-10 kB/s seen on a loaded machine) would
        // already count as a leak.
        "--leak-threshold-bytes-per-hour",
        "450000000",
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

/// The leak verdict on real processes over a whole run, scraped every 250 ms: windows of 20 s and 40 s
/// (15 min and 1 h scaled by 45) and the 10 MB/h threshold scaled the same way (450 MB/h). A steady
/// leaker and a leaker under a 16 MiB sawtooth are flagged once the 40 s window is ready; a cache warming
/// up for 6 s at 3 MiB/s then holding, a 24 MiB slow sawtooth (10 s ramps) and a 32 MiB square wave (10 s
/// period) are never flagged, not even for one scrape, though each grows far faster than the threshold
/// while only the 20 s window is ready.
#[test]
fn leak_verdict_waits_for_two_windows_and_ignores_warm_up_and_waves() {
    let cases: [(&str, &[&str], bool); 5] = [
        ("steady leaker", &["--rate", "1"], true),
        (
            "leaker under sawtooth",
            &["--rate", "1", "--saw", "16"],
            true,
        ),
        (
            "warm-up then plateau",
            &["--rate", "3", "--warmup", "6"],
            false,
        ),
        ("slow sawtooth", &["--ramp", "24", "--period", "10"], false),
        ("square wave", &["--square", "32", "--period", "10"], false),
    ];
    let watched: Vec<(TestChild, Vitals)> = cases
        .iter()
        .map(|(_, args, _)| {
            let (child, _) = TestChild::script("grow.py", args);
            let v = Vitals::start(&[
                "--pid",
                &child.pid().to_string(),
                "--interval",
                "250ms",
                "--growth-windows",
                "20s,40s",
                "--leak-threshold-bytes-per-hour",
                "450000000",
            ]);
            (child, v)
        })
        .collect();
    let started = Instant::now();
    let mut first_flag: Vec<Option<Duration>> = vec![None; cases.len()];
    let mut flagged_scrapes = vec![0usize; cases.len()];
    // 40 s window ready at ~27 s; 45 s leaves room for a loaded machine and shows the waves twice more.
    while started.elapsed() < Duration::from_secs(45) {
        for (i, (_, v)) in watched.iter().enumerate() {
            if v.scrape()
                .get("vitals_memory_leak_suspected", &[("signal", "rss")])
                == Some(1.0)
            {
                flagged_scrapes[i] += 1;
                first_flag[i].get_or_insert(started.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    for (i, (name, _, leaks)) in cases.iter().enumerate() {
        eprintln!(
            "figure: {name}: first flagged at {:?}, flagged in {} scrapes",
            first_flag[i], flagged_scrapes[i]
        );
        if *leaks {
            let at = first_flag[i].unwrap_or_else(|| panic!("{name} never flagged"));
            // The 40 s window is ready once 20 of its 30 buckets (1.33 s each, the first one partial)
            // hold data: 25-27 s after vitals started, a little less after this clock started. Not
            // while only the 20 s window is ready (from ~13 s), and within the 40 s window plus slack.
            assert!(
                at >= Duration::from_secs(20) && at <= Duration::from_secs(40),
                "{name} flagged at {at:?}"
            );
        } else {
            assert_eq!(first_flag[i], None, "{name} called a leak");
        }
    }
}

/// Starts tests/children/LiveSet.java under `gc` with a 32 MiB live set and a 16 MiB ring of chunks
/// replaced at 32 MiB/s (promoted, then dead in the old generation), leaking `leak_kib_per_s`.
fn live_set_jvm(classes: &std::path::Path, gc: &str, leak_kib_per_s: u32) -> Jvm {
    Jvm::ready(
        std::process::Command::new(common::java())
            .args([
                gc,
                "-Xmx256m",
                "-Xmn32m",
                "-XX:InitialTenuringThreshold=1",
                "-XX:MaxTenuringThreshold=1",
                "-XX:+UsePerfData",
                "-cp",
            ])
            .arg(classes)
            .args(["LiveSet", "32", "16", "32", &leak_kib_per_s.to_string()]),
    )
}

/// The heap signal from hsperfdata is the live set after old collections, not current old occupancy:
/// JVMs whose old generation fills with promoted garbage between collections but whose live set is
/// constant (Parallel and G1; ZGC, whose every cycle cleans the one generation) show no growth and are never
/// flagged; the same JVMs leaking 1 MiB/s into a static list are flagged with the leak's slope.
///
/// Windows 20s,40s. Threshold 450 MB/h (see above) for Parallel and ZGC, 1.44 GB/h = 400 kB/s for G1.
/// G1's live set after its old collections carries garbage left in mostly-live regions, varying by 5.6 MiB
/// from one collection (every ~7 s) to the next; four readings in a row can rise by 5 MiB over 18 s
/// (270 kB/s), which 20-40 s windows cannot tell from a leak at 450 MB/h (it was flagged in two full-suite
/// runs and a run of its own). A window must be long against that spread over the threshold
/// (`g1_garbage_noise_is_not_a_leak_but_a_leak_through_it_is` in src/signal/memory.rs); the leak
/// (1.05 MB/s) is still 2.6x G1's threshold. ZGC keeps 450 MB/h: its 20 s slope of the same leak dips to
/// 0.42 MB/s at times (a fresh-clone CI run), which at 400 kB/s delayed its flag to 47.6 s.
#[test]
fn jvm_heap_is_the_live_set_after_old_collections() {
    let classes = common::compile_java("LiveSet");
    let cases = [
        ("Parallel, constant live set", "-XX:+UseParallelGC", 0),
        ("G1, constant live set", "-XX:+UseG1GC", 0),
        ("Parallel, leaking 1 MiB/s", "-XX:+UseParallelGC", 1024),
        ("G1, leaking 1 MiB/s", "-XX:+UseG1GC", 1024),
        ("ZGC, constant live set", "-XX:+UseZGC", 0),
        ("ZGC, leaking 1 MiB/s", "-XX:+UseZGC", 1024),
    ];
    let watched: Vec<(Jvm, Vitals)> = cases
        .iter()
        .map(|(_, gc, leak)| {
            let jvm = live_set_jvm(classes.path(), gc, *leak);
            let v = Vitals::start(&[
                "--pid",
                &jvm.0.id().to_string(),
                "--interval",
                "250ms",
                "--growth-windows",
                "20s,40s",
                "--leak-threshold-bytes-per-hour",
                if *gc == "-XX:+UseG1GC" {
                    "1440000000"
                } else {
                    "450000000"
                },
            ]);
            (jvm, v)
        })
        .collect();
    let started = Instant::now();
    let mut first_flag: Vec<Option<Duration>> = vec![None; cases.len()];
    let mut last = Vec::new();
    while started.elapsed() < Duration::from_secs(48) {
        last.clear();
        for (i, (_, v)) in watched.iter().enumerate() {
            let e = v.scrape();
            if e.get("vitals_memory_leak_suspected", &[("signal", "heap")]) == Some(1.0) {
                first_flag[i].get_or_insert(started.elapsed());
            }
            last.push(e);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    // 64 KiB arrays carry a 16-byte header: the leak is 1 MiB/s of payload plus 0.02%.
    let truth = MIB * (1.0 + 16.0 / 65536.0);
    for (i, (name, _, leak)) in cases.iter().enumerate() {
        let slope = |w: &str| {
            last[i].get(
                "vitals_memory_growth_bytes_per_second",
                &[("signal", "heap"), ("window", w)],
            )
        };
        let (s20, s40) = (slope("20s"), slope("40s"));
        eprintln!(
            "figure: {name}: heap slope 20s {s20:?} 40s {s40:?} B/s, first flagged {:?}",
            first_flag[i]
        );
        let s40 = s40.unwrap_or_else(|| panic!("{name}: no 40s heap slope\n{}", last[i].text));
        if *leak > 0 {
            // Parallel's full collections leave exactly the live set: within 20% of the truth. G1 cleans
            // the old generation at Remark (fully empty regions) and in mixed collections, so what is left
            // holds a varying share of garbage; over 40 s with one Remark every ~7 s, within a factor 2.
            // ZGC's occupancy after a cycle includes what was allocated while the cycle ran (this workload
            // churns 32 MiB/s), so the floor moves with how long each concurrent cycle took, which a loaded
            // machine stretches: measured 1.22-1.40 MB/s for a 1.05 MB/s leak, within 50%.
            let tolerance = if name.starts_with("G1") {
                1.0
            } else if name.starts_with("ZGC") {
                0.5
            } else {
                0.2
            };
            assert!(
                (s40 - truth).abs() / truth < tolerance,
                "{name}: {s40:.0} B/s vs {truth:.0}"
            );
            let at = first_flag[i].unwrap_or_else(|| panic!("{name} never flagged"));
            // Within the 40 s window, plus the spacing of old collections (a Parallel full collection
            // every ~7 s, a G1 Remark every ~6 s): the heap windows need two measured buckets.
            assert!(at <= Duration::from_secs(46), "{name} flagged at {at:?}");
        } else {
            // Truth 0; the live set moves only by what the ring holds at the instant of collection.
            // G1's reading also carries the garbage left in mostly-live regions, up to 5.6 MiB apart
            // from one Remark to the next (see above): its 40 s slope read +111 kB/s in one clean-clone
            // run (−223 kB/s at 20 s), so a quarter of a MiB a second there, under its 400 kB/s
            // threshold and a quarter of the leak; never flagged is asserted below for every collector.
            let bound = if name.starts_with("G1") { 0.25 } else { 0.1 };
            assert!(s40.abs() < bound * MIB, "{name}: {s40:.0} B/s");
            assert_eq!(first_flag[i], None, "{name} called a leak");
        }
    }
}

/// A LiveSet JVM on a fixed 128 MiB heap with an 8 MiB young generation (so the ring's chunks are
/// promoted and die in the old generation), replacing `churn` MiB/s of its 16 MiB ring and leaking
/// `leak_kib_per_s`; GC log at `log`.
fn rare_collections_jvm(
    classes: &std::path::Path,
    gc: &str,
    churn: &str,
    leak_kib_per_s: u32,
    log: &std::path::Path,
) -> Jvm {
    Jvm::ready(
        std::process::Command::new(common::java())
            .args([
                gc,
                "-Xms128m",
                "-Xmx128m",
                "-Xmn8m",
                "-XX:InitialTenuringThreshold=1",
                "-XX:MaxTenuringThreshold=1",
                "-XX:+UsePerfData",
            ])
            .arg(format!("-Xlog:gc:file={}", log.display()))
            .arg("-cp")
            .arg(classes)
            .args(["LiveSet", "32", "16", churn, &leak_kib_per_s.to_string()]),
    )
}

/// Old collections rarer than the shortest window, and every collector with a constant live set.
///
/// Parallel with a 210 kB/s leak whose full collections come every ~35 s (the GC log says when), with
/// windows 20s,45s: the 20 s window can never hold two live-set readings and says `few_readings`
/// instead of a slope of 0; the 45 s window fits a slope to the readings themselves and the leak is
/// flagged at the second full collection. Serial, Parallel, G1, ZGC and Shenandoah holding a constant
/// live set under the same churn are never flagged. G1 with no churn has no old collection at all: no
/// heap value, and every heap window says `no_reading`.
///
/// Threshold 450 MB/h (the default 10 MB/h scaled like the windows, see `watch`); G1 1.44 GB/h for the
/// garbage its old collections leave behind (see `jvm_heap_is_the_live_set_after_old_collections`).
#[test]
fn rare_old_collections_and_every_collector() {
    let classes = common::compile_java("LiveSet");
    let logs = tempfile::tempdir().unwrap();
    let cases: [(&str, &str, &str, u32); 7] = [
        (
            "Parallel, leaking 210 kB/s",
            "-XX:+UseParallelGC",
            "2.3",
            205,
        ),
        ("Serial, constant", "-XX:+UseSerialGC", "2.5", 0),
        ("Parallel, constant", "-XX:+UseParallelGC", "2.5", 0),
        ("G1, constant", "-XX:+UseG1GC", "2.5", 0),
        ("ZGC, constant", "-XX:+UseZGC", "2.5", 0),
        ("Shenandoah, constant", "-XX:+UseShenandoahGC", "2.5", 0),
        ("G1, no old collection", "-XX:+UseG1GC", "0", 0),
    ];
    let watched: Vec<(Jvm, Vitals)> = cases
        .iter()
        .enumerate()
        .map(|(i, (_, gc, churn, leak))| {
            let log = logs.path().join(format!("{i}.log"));
            let jvm = rare_collections_jvm(classes.path(), gc, churn, *leak, &log);
            let v = Vitals::start(&[
                "--pid",
                &jvm.0.id().to_string(),
                "--interval",
                "500ms",
                "--growth-windows",
                "20s,45s",
                "--leak-threshold-bytes-per-hour",
                if gc.contains("G1") {
                    "1440000000"
                } else {
                    "450000000"
                },
            ]);
            (jvm, v)
        })
        .collect();
    let started = Instant::now();
    let mut first_flag: Vec<Option<Duration>> = vec![None; cases.len()];
    let mut few_readings_20s = vec![0usize; cases.len()];
    let mut zero_slope_20s = vec![0usize; cases.len()];
    // The last 45 s slope seen: a window of a source read every ~35 s holds two readings only part of
    // the time, and says few_readings in between (the verdict stands meanwhile).
    let mut slope_45s: Vec<Option<f64>> = vec![None; cases.len()];
    // Each case's heap value whenever it changed (s into the run, MiB): the live-set readings a slope is
    // fitted on, for the figure line.
    let mut readings: Vec<Vec<(f64, f64)>> = vec![Vec::new(); cases.len()];
    // The lowest and highest 45 s slope seen, for the figure line.
    let mut range_45s: Vec<Option<(f64, f64)>> = vec![None; cases.len()];
    let mut last = Vec::new();
    while started.elapsed() < Duration::from_secs(85) {
        last.clear();
        for (i, (_, v)) in watched.iter().enumerate() {
            let e = v.scrape();
            if e.get("vitals_memory_leak_suspected", &[("signal", "heap")]) == Some(1.0) {
                first_flag[i].get_or_insert(started.elapsed());
            }
            let status20 = |s: &str| {
                e.get(
                    "vitals_memory_growth_status",
                    &[("signal", "heap"), ("window", "20s"), ("status", s)],
                ) == Some(1.0)
            };
            if status20("few_readings") {
                few_readings_20s[i] += 1;
            }
            if e.get(
                "vitals_memory_growth_bytes_per_second",
                &[("signal", "heap"), ("window", "20s")],
            ) == Some(0.0)
            {
                zero_slope_20s[i] += 1;
            }
            if let Some(s) = e.get(
                "vitals_memory_growth_bytes_per_second",
                &[("signal", "heap"), ("window", "45s")],
            ) {
                slope_45s[i] = Some(s);
                let r = range_45s[i].get_or_insert((s, s));
                *r = (r.0.min(s), r.1.max(s));
            }
            if let Some(h) = e.get("vitals_memory_heap_bytes", &[("runtime", "jvm")]) {
                let mib = (h / MIB * 10.0).round() / 10.0;
                if readings[i].last().is_none_or(|r| r.1 != mib) {
                    readings[i].push(((started.elapsed().as_secs_f64()).round(), mib));
                }
            }
            last.push(e);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let full_collections = |i: usize| -> Vec<f64> {
        std::fs::read_to_string(logs.path().join(format!("{i}.log")))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("Pause Full"))
            .filter_map(|l| l.split(['[', 's']).nth(1)?.parse().ok())
            .collect()
    };
    // G1's Remark pauses (each frees the old generation's empty regions), beside its readings.
    let remarks = |i: usize| {
        std::fs::read_to_string(logs.path().join(format!("{i}.log")))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("Pause Remark"))
            .count()
    };
    for (i, (name, ..)) in cases.iter().enumerate() {
        eprintln!(
            "figure: {name}: last 45s heap slope {:?} B/s (lowest, highest: {:?}), first flagged {:?}, \
             20s few_readings in {} scrapes, full collections at {:?} s (JVM clock), heap {:?} B; heap \
             as it changed (s, MiB) {:?}; {} Remark pauses in the GC log",
            slope_45s[i],
            range_45s[i],
            first_flag[i],
            few_readings_20s[i],
            full_collections(i),
            last[i].get("vitals_memory_heap_bytes", &[("runtime", "jvm")]),
            readings[i],
            remarks(i)
        );
    }
    for (i, (name, _, _, leak)) in cases.iter().enumerate() {
        let e = &last[i];
        if *leak > 0 {
            // A staircase of held values read as a slope of 0 before; a constant live set can read 0
            // legitimately (equal readings, G1's whole regions), a leak cannot.
            assert_eq!(zero_slope_20s[i], 0, "{name}: a 20 s slope of exactly 0");
            let fulls = full_collections(i);
            assert!(
                fulls.len() >= 2 && fulls.windows(2).all(|w| w[1] - w[0] > 20.0),
                "{name}: full collections rarer than the 20 s window: {fulls:?}"
            );
            assert!(few_readings_20s[i] > 0, "{name}: the 20 s window said why");
            let s = slope_45s[i].unwrap_or_else(|| panic!("{name}: no 45 s slope\n{}", e.text));
            // 205 KiB/s of 64 KiB arrays: 210 kB/s. Two readings of the live set after full
            // collections: what the ring holds at each differs by a chunk or two (64-128 KiB over
            // ~35 s, 2-4 kB/s), so 10%.
            let truth = 205.0 * 1024.0 * (1.0 + 16.0 / 65536.0);
            assert!(
                (s - truth).abs() / truth < 0.1,
                "{name}: {s:.0} B/s vs {truth:.0}"
            );
            let at = first_flag[i].unwrap_or_else(|| panic!("{name} never flagged"));
            // The second full collection, plus a tick and a scrape.
            assert!(at <= Duration::from_secs(84), "{name} flagged at {at:?}");
        } else if name.contains("no old collection") {
            assert!(!e.has("vitals_memory_heap_bytes"), "{name}\n{}", e.text);
            for w in ["20s", "45s"] {
                assert_eq!(
                    e.get(
                        "vitals_memory_growth_status",
                        &[("signal", "heap"), ("window", w), ("status", "no_reading")]
                    ),
                    Some(1.0),
                    "{name} {w}"
                );
            }
            assert_eq!(first_flag[i], None);
        } else {
            assert_eq!(first_flag[i], None, "{name} called a leak");
            // Serial's and Parallel's readings are the live set right after a full collection: flat
            // within 0.1 MiB/s. The others' carry garbage beside the live set, so a slope fitted on a
            // few of them scatters, and the exported slope shows it. ZGC's and Shenandoah's end-of-cycle
            // occupancy carries what each cycle allocated (-127 kB/s for ZGC with a release build
            // compiling beside it); the verdict discounts it (docs/memory-growth.md). G1's Remark frees
            // only empty regions, and its mixed collections skip regions still mostly live (its log
            // mostly says "candidate old regions not available"), so its readings (the old generation
            // right after each Remark: one for every Remark, within a MiB of the GC log's heap after it)
            // are the live set plus up to 4 MiB of whole regions, changing from one Remark to the next;
            // its leak threshold here is raised for that. On a loaded machine its Remarks came every
            // 8-18 s rather than 5 s, a 45 s window held 3-5 readings, and its 45 s slope went from
            // -198 to +175 kB/s over two runs (a clean-clone CI run ended at -117 kB/s).
            let bound = if name.starts_with("Serial") || name.starts_with("Parallel") {
                0.1 * MIB
            } else {
                0.5 * MIB
            };
            if let Some(s) = slope_45s[i] {
                assert!(s.abs() < bound, "{name}: {s:.0} B/s");
            }
            // A collector that ran no cycle that cleaned the heap yet (ZGC's first cycle can take
            // longer than the run at this allocation rate) has no value, and says so.
            if !e.has("vitals_memory_heap_bytes") {
                assert_eq!(
                    e.get(
                        "vitals_memory_growth_status",
                        &[
                            ("signal", "heap"),
                            ("window", "45s"),
                            ("status", "no_reading")
                        ]
                    ),
                    Some(1.0),
                    "{name}"
                );
            }
        }
    }
}
