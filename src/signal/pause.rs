//! Is it pausing? Stop-the-world GC pauses normalised across runtimes (JVM, Node, .NET, Go) from the
//! app's OTLP runtime metrics and, with no agent at all, from JVM hsperfdata; JVM safepoints; Node's
//! event-loop delay; the longest pause of the last minute.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::model::{Collector, Metric, MetricKind, Value};
use crate::probe::hsperf::{Collector as GcCollector, JvmSample};
use crate::store::app_metrics::{AppMetrics, Reading};

/// How long `vitals_gc_pause_max_seconds` looks back.
pub const MAX_WINDOW: Duration = Duration::from_secs(60);

/// Concurrent collector cycles run beside the application and are not pauses: "G1 Concurrent GC",
/// "ZGC Cycles", "ZGC Major Cycles", "Shenandoah Cycles" (JMX/OTLP names) and hsperfdata's "Shenandoah
/// concurrent phases". Their "… Pauses" twins are pauses, and so is hsperfdata's "Z concurrent cycle
/// pauses" (JDK 17 ZGC). Case does not matter: hsperfdata writes these names in lower case.
pub fn is_concurrent_cycle(jvm_gc_name: &str) -> bool {
    let n = jvm_gc_name.to_ascii_lowercase();
    !n.contains("pauses") && (n.contains("concurrent") || n.ends_with("cycles"))
}

/// An OTLP runtime metric that carries GC pauses.
struct PauseMetric {
    /// OpenTelemetry name of the metric.
    name: String,
    runtime: &'static str,
    /// Label holding the collector name, or None for a runtime-wide figure.
    collector_label: Option<String>,
    /// Multiplier to seconds (1e-9 for the legacy Go metric in ns).
    scale: f64,
}

fn pause_metrics() -> Vec<PauseMetric> {
    vec![
        PauseMetric {
            name: "jvm.gc.duration".to_owned(),
            runtime: "jvm",
            collector_label: Some("jvm.gc.name".to_owned()),
            scale: 1.0,
        },
        PauseMetric {
            name: "v8js.gc.duration".to_owned(),
            runtime: "node",
            collector_label: Some("v8js.gc.type".to_owned()),
            scale: 1.0,
        },
        PauseMetric {
            name: "go.memory.gc.pause.duration".to_owned(),
            runtime: "go",
            collector_label: None,
            scale: 1.0,
        },
        PauseMetric {
            name: "process.runtime.go.gc.pause_ns".to_owned(),
            runtime: "go",
            collector_label: None,
            scale: 1e-9,
        },
        PauseMetric {
            name: "dotnet.gc.pause.time".to_owned(),
            runtime: "dotnet",
            collector_label: None,
            scale: 1.0,
        },
    ]
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Totals {
    seconds: f64,
    count: Option<u64>,
}

/// Upper bounds of pauses seen recently, per (runtime, source).
#[derive(Default)]
struct MaxWindow {
    seen: VecDeque<(Instant, f64)>,
}

impl MaxWindow {
    fn push(&mut self, at: Instant, bound: f64) {
        self.seen.push_back((at, bound));
        // At most one entry per tick per key: bounded by the window's length in ticks.
        while self.seen.len() > 4096 {
            self.seen.pop_front();
        }
    }

    fn max(&mut self, now: Instant) -> Option<f64> {
        while self
            .seen
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > MAX_WINDOW)
        {
            self.seen.pop_front();
        }
        self.seen.iter().map(|(_, b)| *b).reduce(f64::max)
    }
}

/// A series' last reading: cumulative buckets, sum (or counter total) and count.
type Previous = (Vec<(f64, u64)>, f64, u64);

#[derive(Default)]
struct State {
    /// (runtime, collector, source) → totals.
    totals: HashMap<(String, String, &'static str), Totals>,
    /// Previous cumulative readings, to find what happened since (key includes the series labels).
    previous: HashMap<String, Previous>,
    max: HashMap<(String, &'static str), MaxWindow>,
    safepoints: Option<(u64, f64)>,
    event_loop: Vec<(&'static str, f64)>,
    /// Last reading per hsperfdata collector index (below 16, so at most 16 entries).
    jvm_previous: HashMap<usize, GcCollector>,
    jvm_clock: JvmClock,
    /// Pause metrics (Prometheus names, from the fixed table) that have had series.
    metrics_seen: HashSet<String>,
    hsperf_status: Option<&'static str>,
}

/// The JVM's clock (hsperfdata ticks since the JVM started) read from vitals' monotonic clock, to time a
/// pause that is still running. HotSpot's ticks and `Instant` both count CLOCK_MONOTONIC, so they differ
/// by a constant; every tick value the JVM has already written (its statistics sample, pause entry and
/// exit) is at or before the moment vitals reads it, so the smallest `vitals − jvm` difference seen is
/// the constant to within the JVM's 50 ms statistics period, and it only gets better with more samples.
#[derive(Default)]
struct JvmClock {
    origin: Option<Instant>,
    /// min(vitals seconds − JVM seconds) over the samples of this JVM.
    offset: Option<f64>,
}

impl JvmClock {
    /// Calibrates with sample `j` read at `now`; returns the JVM clock at `now`, in ticks.
    fn observe(&mut self, now: Instant, j: &JvmSample) -> Option<f64> {
        let hz = j.frequency as f64;
        let origin = *self.origin.get_or_insert(now);
        let ours = now.saturating_duration_since(origin).as_secs_f64();
        let latest = j
            .collectors
            .iter()
            .flat_map(|c| [c.last_entry_ticks, c.last_exit_ticks])
            .chain([j.hrt_ticks])
            .flatten()
            .max()?;
        let diff = ours - latest as f64 / hz;
        let offset = self.offset.map_or(diff, |o| o.min(diff));
        self.offset = Some(offset);
        Some((ours - offset) * hz)
    }
}

/// The longest pause of collector `cur` that hsperfdata shows since the reading `prev`, in seconds: a
/// pause still running counts with its elapsed time (JVM clock `jvm_now`, ticks); a finished one with its
/// exact length from its entry and exit times. The counters keep only the last pause's entry and exit,
/// so when several ended since `prev`, the others' exact lengths are known only when there is one of them
/// (total time minus the last); for more, their mean is used, which is exact for equal pauses and a lower
/// bound of their longest. Without entry/exit times (very old JVMs), the same from counts and times.
fn longest_pause_since(
    prev: &GcCollector,
    cur: &GcCollector,
    hz: f64,
    jvm_now: Option<f64>,
) -> Option<f64> {
    let started = cur.invocations.saturating_sub(prev.invocations);
    let ticks = cur.time_ticks.saturating_sub(prev.time_ticks);
    let time = ticks as f64 / hz;
    let (Some(entry), Some(exit), Some(prev_exit)) = (
        cur.last_entry_ticks,
        cur.last_exit_ticks,
        prev.last_exit_ticks,
    ) else {
        return match started {
            0 => None,
            n => Some(time / n as f64),
        }
        .filter(|t| *t > 0.0);
    };
    let mut longest: Option<f64> = None;
    let mut consider = |d: f64| longest = Some(longest.map_or(d, |x: f64| x.max(d)));
    let running = cur.in_pause();
    if running {
        if let Some(now) = jvm_now {
            consider((now - entry as f64).max(0.0) / hz);
        }
    }
    if exit > prev_exit {
        // Pauses that ended since `prev`: those that began since, plus one that was running then, less
        // one running now; at least one since the exit time moved.
        let ended = (started + u64::from(prev.in_pause()))
            .saturating_sub(u64::from(running))
            .max(1);
        let (others, others_time) = if running {
            // The last ended pause's entry time was overwritten by the running one's.
            (ended, time)
        } else {
            let last = exit.saturating_sub(entry);
            consider(last as f64 / hz);
            // The time is added just after the exit time is written: never let it go negative.
            (ended - 1, ticks.saturating_sub(last) as f64 / hz)
        };
        if others > 0 {
            consider(others_time / others as f64);
        }
    }
    longest
}

/// The pause signal.
pub struct PauseSignal {
    metrics: Vec<PauseMetric>,
    event_loop: Vec<(String, &'static str)>,
    /// When this signal began watching, Unix ns: OTLP series that started later hold only new pauses.
    started_unix_nano: u64,
    state: Mutex<State>,
}

impl Default for PauseSignal {
    fn default() -> Self {
        Self::new()
    }
}

/// The upper bound of the highest bucket that received new observations between two cumulative
/// histogram readings: an upper bound of the longest new observation. Cumulative counts grow in every
/// bucket at and above a new observation, so buckets are compared by their own (non-cumulative) counts.
/// Growth only in `+Inf` gives the highest finite bound (a lower bound: all the buckets can say).
pub fn largest_new_bound(before: &[(f64, u64)], after: &[(f64, u64)]) -> Option<f64> {
    let own = |cum: &[(f64, u64)], i: usize| {
        cum[i]
            .1
            .saturating_sub(if i == 0 { 0 } else { cum[i - 1].1 })
    };
    let same_bounds =
        before.len() == after.len() && before.iter().zip(after).all(|(a, b)| a.0 == b.0);
    let top = (0..after.len()).rev().find(|&i| {
        let now = own(after, i);
        if same_bounds {
            now > own(before, i)
        } else {
            now > 0
        }
    })?;
    let bound = after[top].0;
    if bound.is_finite() {
        Some(bound)
    } else {
        after.iter().rev().map(|(b, _)| *b).find(|b| b.is_finite())
    }
}

impl PauseSignal {
    /// A signal reading the standard runtime metric names.
    pub fn new() -> Self {
        let event_loop = vec![
            ("nodejs.eventloop.delay.min".to_owned(), "min"),
            ("nodejs.eventloop.delay.p50".to_owned(), "p50"),
            ("nodejs.eventloop.delay.p90".to_owned(), "p90"),
            ("nodejs.eventloop.delay.p99".to_owned(), "p99"),
            ("nodejs.eventloop.delay.max".to_owned(), "max"),
        ];
        PauseSignal {
            metrics: pause_metrics(),
            event_loop,
            started_unix_nano: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            state: Mutex::new(State::default()),
        }
    }

    /// Reads the OTLP runtime metrics from the app store.
    pub fn update_from_otlp(&self, app: &AppMetrics, now: Instant) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let st = &mut *st;
        st.totals.retain(|k, _| k.2 != "otlp");
        let mut current: HashMap<String, Previous> = HashMap::new();
        for m in &self.metrics {
            // A series first seen after others of its metric began while vitals watched: all it holds is new.
            let metric_known = st.metrics_seen.contains(&m.name);
            let mut any = false;
            app.visit_with_start(&m.name, |labels, reading, start_unix_nano| {
                any = true;
                // Every observation since its start is new when the series is known to hold no history:
                // it appeared after others of its metric while vitals watched, or began counting after.
                let all_new = metric_known || start_unix_nano >= self.started_unix_nano;
                let collector = match &m.collector_label {
                    Some(l) => labels
                        .iter()
                        .find(|(k, _)| k == l)
                        .map(|(_, v)| v.as_str())
                        .unwrap_or("unknown"),
                    None => "all",
                };
                if m.runtime == "jvm" && is_concurrent_cycle(collector) {
                    return;
                }
                let key = (m.runtime.to_owned(), collector.to_owned(), "otlp");
                let series_key = format!("{}{:?}", m.name, labels);
                let previous = st.previous.get(&series_key);
                let bound = match reading {
                    Reading::Histogram {
                        buckets,
                        sum,
                        count,
                        ..
                    } => {
                        let t = st.totals.entry(key).or_default();
                        t.seconds += sum * m.scale;
                        *t.count.get_or_insert(0) += count;
                        let mut cumulative = Vec::with_capacity(buckets.len());
                        let mut acc = 0;
                        for (b, c) in buckets {
                            acc += c;
                            cumulative.push((b * m.scale, acc));
                        }
                        let bound = match previous {
                            Some(p) if p.2 == count => None,
                            Some(p) if p.2 < count => largest_new_bound(&p.0, &cumulative),
                            // New to vitals, or restarted (its count went down): every observation
                            // since its start is new when that start is known to be after vitals began
                            // watching; otherwise it may hold hours of history, not the last minute.
                            _ if all_new || previous.is_some() => {
                                largest_new_bound(&[], &cumulative)
                            }
                            _ => None,
                        };
                        current.insert(series_key, (cumulative, sum, count));
                        bound
                    }
                    Reading::Number(total) => {
                        st.totals.entry(key).or_default().seconds += total * m.scale;
                        // A counter of pause time: the growth since the last reading bounds the longest
                        // pause. A first reading (or one after a reset) counts from zero only when it
                        // holds no history, as for histograms above.
                        let before = match previous {
                            Some(p) if p.1 <= total => Some(p.1),
                            _ if all_new || previous.is_some() => Some(0.0),
                            _ => None,
                        };
                        current.insert(series_key, (Vec::new(), total, 0));
                        before.filter(|b| total > *b).map(|b| (total - b) * m.scale)
                    }
                };
                if let Some(b) = bound {
                    st.max
                        .entry((m.runtime.to_owned(), "otlp"))
                        .or_default()
                        .push(now, b);
                }
            });
            if any {
                st.metrics_seen.insert(m.name.clone());
            }
        }
        // Only series the store still holds are remembered: bounded and expired with the store's series.
        st.previous = current;
        st.event_loop.clear();
        for (name, q) in &self.event_loop {
            let mut worst: Option<f64> = None;
            app.visit(name, |_, r| {
                if let Reading::Number(v) = r {
                    worst = Some(worst.map_or(v, |w: f64| w.max(v)));
                }
            });
            if let Some(v) = worst {
                st.event_loop.push((q, v));
            }
        }
    }

    /// Reads a JVM's hsperfdata counters; None when the target has none.
    pub fn update_from_hsperf(&self, jvm: Option<&JvmSample>, now: Instant) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let st = &mut *st;
        st.totals.retain(|k, _| k.2 != "hsperfdata");
        let Some(j) = jvm else {
            st.safepoints = None;
            st.jvm_previous.clear();
            st.jvm_clock = JvmClock::default();
            return;
        };
        let hz = j.frequency as f64;
        let jvm_now = st.jvm_clock.observe(now, j);
        let mut longest: Option<f64> = None;
        for c in &j.collectors {
            // Time in concurrent phases (Shenandoah's "concurrent phases") is not pause time: like the
            // OTLP path, neither the totals nor the longest pause count it.
            if is_concurrent_cycle(&c.name) {
                continue;
            }
            let seconds = c.time_ticks as f64 / hz;
            st.totals.insert(
                ("jvm".into(), c.name.clone(), "hsperfdata"),
                Totals {
                    seconds,
                    count: Some(c.invocations),
                },
            );
            if let Some(prev) = st.jvm_previous.insert(c.index, c.clone()) {
                if let Some(p) = longest_pause_since(&prev, c, hz, jvm_now) {
                    longest = Some(longest.map_or(p, |x: f64| x.max(p)));
                }
            }
        }
        if let Some(b) = longest {
            st.max
                .entry(("jvm".into(), "hsperfdata"))
                .or_default()
                .push(now, b);
        }
        st.safepoints = match (j.safepoints, j.safepoint_ticks) {
            (Some(n), Some(t)) => Some((n, t as f64 / hz)),
            _ => None,
        };
    }

    /// Forgets everything of a target that went away.
    pub fn reset_target(&self) {
        self.update_from_hsperf(None, Instant::now());
        self.set_hsperf_status(None);
    }

    /// Why the target's hsperfdata is or is not read (an [`crate::probe::hsperf::HsperfStatus`]
    /// reason), or None when there is nothing to say (no target, or not a JVM).
    pub fn set_hsperf_status(&self, reason: Option<&'static str>) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.hsperf_status = reason;
    }
}

impl Collector for PauseSignal {
    fn collect(&self, out: &mut Vec<Metric>) {
        let now = Instant::now();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut rows: Vec<_> = st
            .totals
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        let mut time = Metric::new(
            "vitals.gc.pause",
            "Time the target stood still in GC pauses",
            "s",
            MetricKind::Counter,
        );
        let mut count = Metric::new(
            "vitals.gc.pauses",
            "GC pauses of the target",
            "{pause}",
            MetricKind::Counter,
        );
        for ((runtime, collector, source), t) in &rows {
            let labels = [
                ("runtime", runtime.as_str()),
                ("collector", collector.as_str()),
                ("source", *source),
            ];
            time.push(&labels, Value::Sum(t.seconds));
            if let Some(n) = t.count {
                count.push(&labels, Value::Sum(n as f64));
            }
        }
        let mut max = Metric::new(
            "vitals.gc.pause.max",
            "Longest GC pause in the last minute (an upper bound when only buckets or totals are known)",
            "s",
            MetricKind::Gauge,
        );
        let mut keys: Vec<(String, &'static str)> = st.max.keys().cloned().collect();
        keys.sort();
        for k in keys {
            if let Some(m) = st.max.get_mut(&k).and_then(|w| w.max(now)) {
                max.push(&[("runtime", &k.0), ("source", k.1)], Value::Gauge(m));
            }
        }
        // With pauses known but none in the window, the longest recent pause is 0, not unknown.
        for ((runtime, _, source), _) in &rows {
            if !max
                .points
                .iter()
                .any(|s| s.attributes[0].1 == *runtime && s.attributes[1].1 == *source)
            {
                max.push(
                    &[("runtime", runtime), ("source", source)],
                    Value::Gauge(0.0),
                );
            }
        }
        out.extend([time, count, max]);
        if let Some(reason) = st.hsperf_status {
            out.push(
                Metric::new(
                    "vitals.exporter.hsperfdata.status",
                    "1 with the reason the target JVM's hsperfdata is or is not read: reading, absent, \
                     disabled (-XX:-UsePerfData or -XX:+PerfDisableSharedMem), permission_denied, stale \
                     (another user's or a dead JVM's file under the target's pid), unreadable",
                    "",
                    MetricKind::Gauge,
                )
                .with(&[("reason", reason)], Value::Gauge(1.0)),
            );
        }
        if let Some((n, secs)) = st.safepoints {
            out.push(
                Metric::new(
                    "vitals.safepoint",
                    "Time JVM threads spent at safepoints",
                    "s",
                    MetricKind::Counter,
                )
                .with(&[], Value::Sum(secs)),
            );
            out.push(
                Metric::new(
                    "vitals.safepoints",
                    "JVM safepoints",
                    "{safepoint}",
                    MetricKind::Counter,
                )
                .with(&[], Value::Sum(n as f64)),
            );
        }
        if !st.event_loop.is_empty() {
            let mut f = Metric::new(
                "vitals.event_loop.delay",
                "Node.js event-loop delay over the app's last export interval by statistic (min, p50, p90, \
                 p99, max), as Node measures it: each sample includes the sampling resolution (10 ms by \
                 default), so an idle loop reads about 10 ms",
                "s",
                MetricKind::Gauge,
            );
            for (statistic, v) in &st.event_loop {
                // Not `quantile`: that label belongs to summaries, and a gauge carrying it is invalid.
                f.push(&[("statistic", statistic)], Value::Gauge(*v));
            }
            out.push(f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_cycles_are_not_pauses() {
        for n in [
            "G1 Concurrent GC",
            "ZGC Cycles",
            "ZGC Major Cycles",
            "Shenandoah Cycles",
            "Shenandoah concurrent phases",
        ] {
            assert!(is_concurrent_cycle(n), "{n}");
        }
        for n in [
            "G1 Young Generation",
            "G1 Old Generation",
            "ZGC Pauses",
            "ZGC Major Pauses",
            "Shenandoah Pauses",
            "PS MarkSweep",
            "Z concurrent cycle pauses",
            "Shenandoah pauses",
            "Shenandoah full",
            "G1 stop-the-world full collections",
        ] {
            assert!(!is_concurrent_cycle(n), "{n}");
        }
    }

    #[test]
    fn largest_new_bound_from_bucket_growth() {
        let before = [(0.01, 5), (0.1, 7), (10.0, 7), (f64::INFINITY, 7)];
        // Two new pauses of at most 10 ms: every cumulative bucket grows, the answer is still 0.01.
        assert_eq!(
            largest_new_bound(
                &before,
                &[(0.01, 7), (0.1, 9), (10.0, 9), (f64::INFINITY, 9)]
            ),
            Some(0.01)
        );
        // One new pause between 10 ms and 100 ms.
        assert_eq!(
            largest_new_bound(
                &before,
                &[(0.01, 5), (0.1, 8), (10.0, 8), (f64::INFINITY, 8)]
            ),
            Some(0.1)
        );
        // One above the last finite bound: all that can be said is "more than 10 s".
        assert_eq!(
            largest_new_bound(
                &before,
                &[(0.01, 5), (0.1, 7), (10.0, 7), (f64::INFINITY, 8)]
            ),
            Some(10.0)
        );
        assert_eq!(largest_new_bound(&before, &before), None);
        assert_eq!(
            largest_new_bound(&[], &[(0.5, 2), (f64::INFINITY, 2)]),
            Some(0.5)
        );
    }

    #[test]
    fn hsperf_pauses_and_max_window() {
        let p = PauseSignal::new();
        let t0 = Instant::now();
        let sample = |n: u64, ticks: u64| JvmSample {
            frequency: 1000,
            collectors: vec![GcCollector {
                index: 0,
                name: "G1 young collection pauses".into(),
                invocations: n,
                time_ticks: ticks,
                ..Default::default()
            }],
            safepoints: Some(10),
            safepoint_ticks: Some(500),
            ..Default::default()
        };
        p.update_from_hsperf(Some(&sample(3, 30)), t0);
        p.update_from_hsperf(Some(&sample(4, 75)), t0 + Duration::from_secs(1));
        let mut out = vec![];
        p.collect(&mut out);
        let get = |name: &str| {
            out.iter().find(|f| f.name == name).unwrap().points[0]
                .value
                .clone()
        };
        assert_eq!(get("vitals.gc.pause"), Value::Sum(0.075));
        assert_eq!(get("vitals.gc.pauses"), Value::Sum(4.0));
        assert_eq!(
            get("vitals.gc.pause.max"),
            Value::Gauge(0.045),
            "one pause of 45 ticks at 1 kHz"
        );
        assert_eq!(get("vitals.safepoints"), Value::Sum(10.0));
        assert_eq!(get("vitals.safepoint"), Value::Sum(0.5));
        p.reset_target();
        let mut out = vec![];
        p.collect(&mut out);
        assert!(out
            .iter()
            .all(|f| f.points.is_empty() || f.name != "vitals.gc.pause"));
    }

    /// A Shenandoah concurrent phase running for 3 s beside a 2 ms pause: the pause max and totals show the
    /// pause only; ZGC's "Z concurrent cycle pauses" are pauses and count.
    #[test]
    fn running_concurrent_phase_is_not_a_pause() {
        let p = PauseSignal::new();
        let t0 = Instant::now();
        let at = |index: usize, name: &str, n: u64, time: u64, entry: u64, exit: u64| GcCollector {
            index,
            name: name.into(),
            invocations: n,
            time_ticks: time,
            last_entry_ticks: Some(entry),
            last_exit_ticks: Some(exit),
        };
        let sample = |hrt: u64, phase: GcCollector, pause: GcCollector| JvmSample {
            frequency: 1000,
            hrt_ticks: Some(hrt),
            collectors: vec![phase, pause],
            ..Default::default()
        };
        p.update_from_hsperf(
            Some(&sample(
                1_000,
                at(0, "Shenandoah concurrent phases", 4, 400, 900, 950),
                at(1, "Shenandoah pauses", 8, 8, 960, 961),
            )),
            t0,
        );
        // 3 s later the phase that began at 1_000 still runs; one pause of 2 ms ended.
        p.update_from_hsperf(
            Some(&sample(
                4_000,
                at(0, "Shenandoah concurrent phases", 5, 400, 1_000, 950),
                at(1, "Shenandoah pauses", 9, 10, 3_000, 3_002),
            )),
            t0 + Duration::from_secs(3),
        );
        let mut out = Vec::new();
        p.collect(&mut out);
        let get = |name: &str| {
            out.iter()
                .find(|f| f.name == name)
                .map(|f| f.points.iter().map(|s| s.value.clone()).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        assert_eq!(get("vitals.gc.pause.max"), [Value::Gauge(0.002)]);
        assert_eq!(get("vitals.gc.pause"), [Value::Sum(0.010)]);

        let z = PauseSignal::new();
        let zgc = |n: u64, time: u64, entry: u64, exit: u64| JvmSample {
            frequency: 1000,
            hrt_ticks: Some(exit.max(entry)),
            collectors: vec![at(2, "Z concurrent cycle pauses", n, time, entry, exit)],
            ..Default::default()
        };
        z.update_from_hsperf(Some(&zgc(3, 3, 100, 101)), t0);
        z.update_from_hsperf(Some(&zgc(4, 7, 200, 204)), t0 + Duration::from_secs(1));
        let mut out = Vec::new();
        z.collect(&mut out);
        let max = out
            .iter()
            .find(|f| f.name == "vitals.gc.pause.max")
            .map(|f| f.points.iter().map(|s| s.value.clone()).collect::<Vec<_>>());
        assert_eq!(max, Some(vec![Value::Gauge(0.004)]));
    }

    fn gc(n: u64, time: u64, entry: u64, exit: u64) -> GcCollector {
        GcCollector {
            index: 0,
            name: "Serial full collection pauses".into(),
            invocations: n,
            time_ticks: time,
            last_entry_ticks: Some(entry),
            last_exit_ticks: Some(exit),
        }
    }

    /// Ticks at 1 kHz: 1 tick = 1 ms.
    #[test]
    fn running_pause_shows_its_elapsed_time_and_then_its_exact_length() {
        let before = gc(3, 300, 1_000, 1_100);
        // A pause began at 2_000 and runs at 3_200: 1.2 s so far.
        let running = gc(4, 300, 2_000, 1_100);
        assert_eq!(
            longest_pause_since(&before, &running, 1000.0, Some(3_200.0)),
            Some(1.2)
        );
        // Still running a second later: no new pause, 2.2 s so far.
        assert_eq!(
            longest_pause_since(&running, &running, 1000.0, Some(4_200.0)),
            Some(2.2)
        );
        // It ended at 4_400: 2.4 s exactly, whatever the clock estimate.
        let done = gc(4, 2_700, 2_000, 4_400);
        assert_eq!(
            longest_pause_since(&running, &done, 1000.0, Some(9_999.0)),
            Some(2.4)
        );
        // Nothing new: nothing to say.
        assert_eq!(
            longest_pause_since(&done, &done, 1000.0, Some(10_000.0)),
            None
        );
    }

    #[test]
    fn several_pauses_between_readings() {
        let before = gc(3, 300, 1_000, 1_100);
        // Two ended: 50 ms then the last, 4_000..4_300 = 300 ms exactly; the other is 350 − 300 = 50 ms.
        let two = gc(5, 650, 4_000, 4_300);
        assert_eq!(longest_pause_since(&before, &two, 1000.0, None), Some(0.3));
        // Three ended, the last 20 ms: the other two share 400 ms, mean 200 ms.
        let three = gc(6, 720, 5_000, 5_020);
        assert_eq!(
            longest_pause_since(&before, &three, 1000.0, None),
            Some(0.2)
        );
        // One ended (500 ms) and another is running since 6_000, now 6_100.
        let ended_and_running = gc(5, 800, 6_000, 5_900);
        assert_eq!(
            longest_pause_since(&before, &ended_and_running, 1000.0, Some(6_100.0)),
            Some(0.5)
        );
        // The counter was bumped but the entry time not written yet: no stale repeat of the last pause.
        let bumped = gc(4, 300, 1_000, 1_100);
        assert_eq!(longest_pause_since(&before, &bumped, 1000.0, None), None);
    }

    #[test]
    fn jvm_clock_converges_on_the_smallest_lag() {
        let mut clock = JvmClock::default();
        let t0 = Instant::now();
        let at = |hrt: u64| JvmSample {
            frequency: 1000,
            hrt_ticks: Some(hrt),
            ..Default::default()
        };
        // First read 40 ms after the JVM's sample at 10_000 ms, later one 5 ms after its sample.
        assert_eq!(clock.observe(t0, &at(10_000)), Some(10_000.0));
        let now = clock
            .observe(t0 + Duration::from_millis(1_000), &at(10_995))
            .unwrap();
        assert!((now - 11_000.0).abs() < 1e-6, "{now}");
        // A stale statistics sample (the JVM's sampler paused) does not move the estimate.
        let now = clock
            .observe(t0 + Duration::from_millis(3_000), &at(10_995))
            .unwrap();
        assert!((now - 13_000.0).abs() < 1e-6, "{now}");
    }

    fn app_with(metrics: Vec<opentelemetry_proto::tonic::metrics::v1::Metric>) -> AppMetrics {
        use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
        use opentelemetry_proto::tonic::metrics::v1::{ResourceMetrics, ScopeMetrics};
        let app = AppMetrics::for_tests(10);
        let req = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        assert_eq!(app.ingest(&req).rejected, 0);
        app
    }

    fn jvm_gc_histogram(
        collector: &str,
        start: u64,
        bounds: &[f64],
        counts: &[u64],
    ) -> opentelemetry_proto::tonic::metrics::v1::Metric {
        use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
        use opentelemetry_proto::tonic::metrics::v1::{
            metric::Data, Histogram, HistogramDataPoint,
        };
        opentelemetry_proto::tonic::metrics::v1::Metric {
            name: "jvm.gc.duration".into(),
            unit: "s".into(),
            data: Some(Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    attributes: vec![KeyValue {
                        key: "jvm.gc.name".into(),
                        value: Some(AnyValue {
                            value: Some(any_value::Value::StringValue(collector.into())),
                        }),
                        ..Default::default()
                    }],
                    start_time_unix_nano: start,
                    time_unix_nano: start + 1,
                    count: counts.iter().sum(),
                    sum: Some(0.2),
                    bucket_counts: counts.to_vec(),
                    explicit_bounds: bounds.to_vec(),
                    ..Default::default()
                }],
                aggregation_temporality: 2,
            })),
            ..Default::default()
        }
    }

    fn otlp_max(p: &PauseSignal) -> Option<f64> {
        let mut out = vec![];
        p.collect(&mut out);
        out.iter()
            .find(|f| f.name == "vitals.gc.pause.max")?
            .points
            .iter()
            .find(|s| s.attributes[1].1 == "otlp")
            .map(|s| match s.value {
                Value::Gauge(v) => v,
                _ => f64::NAN,
            })
    }

    #[test]
    fn first_reading_of_a_new_histogram_counts_toward_the_max() {
        let bounds = [0.1, 0.25, 0.5];
        // A series that began after vitals did: its one 215 ms pause is new, bound 0.25 s.
        let p = PauseSignal::new();
        let after = p.started_unix_nano + 1_000;
        let app = app_with(vec![jvm_gc_histogram(
            "G1 Old Generation",
            after,
            &bounds,
            &[0, 1, 0, 0],
        )]);
        p.update_from_otlp(&app, Instant::now());
        assert_eq!(otlp_max(&p), Some(0.25));

        // A series that began before vitals: its history may be hours old, not the last minute.
        let p = PauseSignal::new();
        let app = app_with(vec![jvm_gc_histogram(
            "G1 Young Generation",
            1,
            &bounds,
            &[5, 0, 0, 0],
        )]);
        p.update_from_otlp(&app, Instant::now());
        assert_eq!(otlp_max(&p), Some(0.0), "known pauses, none new");
        // A collector series appearing later in an app vitals already watches: all of it is new.
        let old = jvm_gc_histogram("G1 Old Generation", 1, &bounds, &[0, 0, 1, 0]);
        app.ingest(
            &opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest {
                resource_metrics: vec![opentelemetry_proto::tonic::metrics::v1::ResourceMetrics {
                    scope_metrics: vec![opentelemetry_proto::tonic::metrics::v1::ScopeMetrics {
                        metrics: vec![old],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            },
        );
        p.update_from_otlp(&app, Instant::now());
        assert_eq!(otlp_max(&p), Some(0.5));
    }

    fn dotnet_pause_time(start: u64, total: f64) -> AppMetrics {
        use opentelemetry_proto::tonic::metrics::v1::{
            metric::Data, number_data_point, Metric, NumberDataPoint, Sum,
        };
        app_with(vec![Metric {
            name: "dotnet.gc.pause.time".into(),
            unit: "s".into(),
            data: Some(Data::Sum(Sum {
                data_points: vec![NumberDataPoint {
                    start_time_unix_nano: start,
                    time_unix_nano: start + 1,
                    value: Some(number_data_point::Value::AsDouble(total)),
                    ..Default::default()
                }],
                aggregation_temporality: 2,
                is_monotonic: true,
            })),
            ..Default::default()
        }])
    }

    /// A pause-time counter follows the histograms' rule: its first reading is history (nothing in the
    /// max) when it began before vitals, and all new (its whole total bounds the longest pause) when after.
    #[test]
    fn first_reading_of_a_pause_time_counter() {
        let p = PauseSignal::new();
        p.update_from_otlp(&dotnet_pause_time(1, 7200.0), Instant::now());
        assert_eq!(
            otlp_max(&p),
            Some(0.0),
            "two hours of pauses are not one pause"
        );
        p.update_from_otlp(&dotnet_pause_time(1, 7200.3), Instant::now());
        let got = otlp_max(&p).unwrap();
        assert!(
            (got - 0.3).abs() < 1e-6,
            "growth since the last reading: {got}"
        );

        let p = PauseSignal::new();
        let after = p.started_unix_nano + 1_000;
        p.update_from_otlp(&dotnet_pause_time(after, 0.04), Instant::now());
        assert_eq!(otlp_max(&p), Some(0.04));
    }

    #[test]
    fn dotnet_counter_and_go_histograms() {
        use opentelemetry_proto::tonic::metrics::v1::{
            metric::Data, number_data_point, Histogram, HistogramDataPoint, Metric,
            NumberDataPoint, Sum,
        };
        let dotnet = Metric {
            name: "dotnet.gc.pause.time".into(),
            unit: "s".into(),
            data: Some(Data::Sum(Sum {
                data_points: vec![NumberDataPoint {
                    time_unix_nano: 1,
                    value: Some(number_data_point::Value::AsDouble(1.25)),
                    ..Default::default()
                }],
                aggregation_temporality: 2,
                is_monotonic: true,
            })),
            ..Default::default()
        };
        let go_ns = Metric {
            name: "process.runtime.go.gc.pause_ns".into(),
            unit: "ns".into(),
            data: Some(Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    count: 4,
                    sum: Some(2_000_000.0),
                    bucket_counts: vec![3, 1, 0],
                    explicit_bounds: vec![100_000.0, 1_000_000.0],
                    time_unix_nano: 1,
                    ..Default::default()
                }],
                aggregation_temporality: 2,
            })),
            ..Default::default()
        };
        let p = PauseSignal::new();
        p.update_from_otlp(&app_with(vec![dotnet, go_ns]), Instant::now());
        let mut out = vec![];
        p.collect(&mut out);
        let time = out.iter().find(|f| f.name == "vitals.gc.pause").unwrap();
        let get = |runtime: &str| {
            time.points
                .iter()
                .find(|s| s.attributes[0].1 == runtime)
                .map(|s| s.value.clone())
        };
        assert_eq!(get("dotnet"), Some(Value::Sum(1.25)));
        assert_eq!(
            get("go"),
            Some(Value::Sum(0.002)),
            "nanoseconds scaled to seconds"
        );
        let count = out.iter().find(|f| f.name == "vitals.gc.pauses").unwrap();
        assert_eq!(count.points.len(), 1, ".NET's pause time has no count");
        assert_eq!(count.points[0].value, Value::Sum(4.0));
    }
}
