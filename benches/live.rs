//! Prints what the live page costs: µs per frame (gather, derive, serialise once for every viewer) on a
//! realistic set of families, the bytes of a frame and of a new viewer's opening message with a full
//! 15-minute history, and the history ring's size.
//!
//! `cargo bench --bench live`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use vitals::export::http::live::{LiveHub, HISTORY_SECONDS};
use vitals::model::{Collector, Metric, MetricKind, Registry, Value};
use vitals::signal::hints::{HintPolicy, HintSignal};

/// Families shaped like a scrape of a JVM service: target and process series, cgroup counters, 20
/// operations × 2 outcomes of RED histograms with 20 buckets, pauses, growth windows and six pools.
struct Synthetic {
    tick: AtomicU64,
}

impl Collector for Synthetic {
    fn collect(&self, out: &mut Vec<Metric>) {
        let n = self.tick.fetch_add(1, Ordering::Relaxed) as f64;
        let g = |name: &'static str, v: f64| {
            Metric::new(name, "h", "", MetricKind::Gauge).with(&[], Value::Gauge(v))
        };
        let c = |name: &'static str, v: f64| {
            Metric::new(name, "h", "", MetricKind::Counter).with(&[], Value::Sum(v))
        };
        out.push(g("vitals.target.up", 1.0));
        out.push(
            Metric::new("vitals.target.info", "h", "", MetricKind::Gauge).with(
                &[("pid", "42"), ("comm", "java"), ("runtime", "jvm")],
                Value::Gauge(1.0),
            ),
        );
        out.push(g("vitals.process.start_time", 1.7e9));
        out.push(c("vitals.target.restarts", 0.0));
        out.push(
            Metric::new("process.cpu.time", "h", "seconds", MetricKind::Counter)
                .with(&[("cpu.mode", "user")], Value::Sum(n * 0.3))
                .with(&[("cpu.mode", "system")], Value::Sum(n * 0.05)),
        );
        out.push(g("process.memory.usage", 5e8 + n));
        out.push(g("vitals.cgroup.memory.usage", 6e8));
        out.push(g("vitals.cgroup.memory.limit", 1e9));
        out.push(c("vitals.cgroup.cpu.throttled", n * 0.01));
        out.push(c("vitals.cgroup.cpu.throttled_periods", n));
        out.push(c("vitals.cgroup.cpu.periods", n * 10.0));
        let mut gc = Metric::new("vitals.gc.pause", "h", "seconds", MetricKind::Counter);
        gc.push(
            &[
                ("runtime", "jvm"),
                ("collector", "G1 Young"),
                ("source", "hsperfdata"),
            ],
            Value::Sum(n * 0.002),
        );
        out.push(gc);
        out.push(g("vitals.gc.pause.max", 0.02));
        let mut growth = Metric::new("vitals.memory.growth", "h", "", MetricKind::Gauge);
        for s in ["rss", "heap", "cgroup"] {
            for w in ["15m", "1h", "6h"] {
                growth.push(&[("signal", s), ("window", w)], Value::Gauge(100.0));
            }
        }
        out.push(growth);
        let mut util = Metric::new("vitals.pool.utilization", "h", "ratio", MetricKind::Gauge);
        let mut used = Metric::new("vitals.pool.used", "h", "", MetricKind::Gauge);
        let mut max = Metric::new("vitals.pool.max", "h", "", MetricKind::Gauge);
        for (kind, pool) in [
            ("db", "main"),
            ("fds", "fds"),
            ("threads", "threads"),
            ("cpu", "cpu"),
            ("thread", "http"),
            ("accept_queue", "8080"),
        ] {
            util.push(&[("pool", pool), ("kind", kind)], Value::Gauge(0.5));
            used.push(&[("pool", pool), ("kind", kind)], Value::Gauge(5.0));
            max.push(&[("pool", pool), ("kind", kind)], Value::Gauge(10.0));
        }
        out.extend([util, used, max]);
        let mut red = Metric::new(
            "vitals.request.duration",
            "h",
            "seconds",
            MetricKind::Histogram,
        );
        let bounds: Vec<f64> = (0..19)
            .map(|i| 0.0005 * 2f64.powi(i))
            .chain([f64::INFINITY])
            .collect();
        for op in 0..20 {
            for outcome in ["ok", "error"] {
                let count = (n as u64 + 1) * (op + 1) * if outcome == "ok" { 10 } else { 1 };
                let buckets = bounds
                    .iter()
                    .enumerate()
                    .map(|(i, b)| (*b, count * (i as u64 + 1) / bounds.len() as u64))
                    .collect();
                let operation = format!("/api/v1/resource{op}");
                red.push(
                    &[
                        ("service", "shop"),
                        ("operation", &operation),
                        ("kind", "server"),
                        ("outcome", outcome),
                    ],
                    Value::Histogram {
                        buckets,
                        sum: 1.0,
                        count,
                        exemplars: vec![],
                        native: None,
                    },
                );
            }
        }
        out.push(red);
    }
}

fn main() {
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let registry = Registry::new();
    registry.register(Arc::new(Synthetic {
        tick: AtomicU64::new(0),
    }));
    let hints = Arc::new(HintSignal::new(HintPolicy::default()));
    registry.register(hints.clone());
    let hub = LiveHub::new(
        hints.clone(),
        "--pid 42".into(),
        "http://127.0.0.1:4318".into(),
        CancellationToken::new(),
    );
    // What vitals does after each reading: one gather, the hints, the page.
    let mut gathered = vitals::model::Gathered::default();
    let mut after_reading =
        |t: f64| vitals::app::after_reading(&registry, &hints, &hub, t, &mut gathered);
    // Fill the history as 15 minutes would.
    for i in 0..HISTORY_SECONDS {
        after_reading(1.7e9 + i as f64);
    }
    let mut times = Vec::new();
    for i in 0..2000 {
        let t0 = Instant::now();
        after_reading(1.7e9 + (HISTORY_SECONDS + i) as f64);
        times.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    println!(
        "live frame (gather + derive + serialise, 40 RED series, 6 pools): median {:.1} µs, p90 {:.1} µs per second of wall time",
        times[times.len() / 2],
        times[times.len() * 9 / 10]
    );
    println!(
        "frame message: {} bytes; opening message with 15 min of history: {} bytes",
        hub.latest().len(),
        hub.opening().len()
    );
    println!(
        "history ring: {} bytes ({} points)",
        hub.history_bytes(),
        HISTORY_SECONDS
    );
}
