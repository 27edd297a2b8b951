//! Is it pausing? Stop-the-world GC pauses normalised across runtimes (JVM, Node, .NET, Go) from the
//! runtime metrics picked out of the app's OTLP exports and, with no agent at all, from JVM hsperfdata;
//! JVM safepoints; ready-work delay (Node's event-loop delay, Go's scheduling latency); the longest pause
//! of the last minute.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::catalogue;
use crate::language::{is_concurrent_cycle, Runtime};
use crate::model::{Collector, Metric, Value};
use crate::probe::hsperf::{GcCollector, JvmSample};
use crate::probe::jvm_watch::JvmFast;
use crate::signal::runtime_metrics::{DelayReading, DelayValue, PauseReading, PauseValue};

/// How long `vitals_gc_pause_max_seconds` looks back.
pub const MAX_WINDOW: Duration = Duration::from_secs(60);

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
        // Pauses found on a first reading are placed back at when they happened, so entries are not
        // always in order: the age is checked for each.
        self.seen
            .iter()
            .filter(|(t, _)| now.saturating_duration_since(*t) <= MAX_WINDOW)
            .map(|(_, b)| *b)
            .reduce(f64::max)
    }
}

/// A series' last reading: cumulative buckets, sum (or counter total) and count.
type CumulativeReading = (Vec<(f64, u64)>, f64, u64);

/// The pause signal's books, under one lock: totals per collector and source, the readings new pauses
/// are found against, the max windows, the ready-work delay, and the JVM's last counters and clock.
#[derive(Default)]
struct PauseLedger {
    /// (runtime, collector, source) → totals.
    totals: HashMap<(&'static str, String, &'static str), Totals>,
    /// Previous cumulative readings, to find what happened since (by series identity).
    previous: HashMap<String, CumulativeReading>,
    max: HashMap<(&'static str, &'static str), MaxWindow>,
    safepoints: Option<(u64, f64)>,
    /// (runtime, statistic, seconds) of the ready-work delay.
    delay: Vec<(&'static str, &'static str, f64)>,
    /// Last reading per hsperfdata collector index (below 16, so at most 16 entries).
    jvm_previous: HashMap<usize, GcCollector>,
    jvm_clock: JvmClock,
    /// Pause metrics (OpenTelemetry names, from the runtime table) that have had series.
    metrics_seen: HashSet<&'static str>,
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

/// The pauses a collector's counters show on the first reading of a JVM (nothing to compare with yet), as
/// (seconds ago, length in seconds), for those that may fall inside the max's window: a pause still
/// running with its elapsed time; the last finished one exactly (entry and exit times), placed at its
/// exit; and, for a JVM younger than the window, the others' mean (total time less the last, over their
/// count: exact when there is one other, a lower bound of their longest otherwise), placed at the JVM's
/// start so it never outlives its window. Without a JVM clock nothing is known about when they happened.
fn pauses_on_first_reading(c: &GcCollector, hz: f64, jvm_now: Option<f64>) -> Vec<(f64, f64)> {
    let (Some(now), Some(entry), Some(exit)) = (jvm_now, c.last_entry_ticks, c.last_exit_ticks)
    else {
        return Vec::new();
    };
    let window = MAX_WINDOW.as_secs_f64();
    let mut out = Vec::new();
    let running = c.in_pause();
    let (finished, others_ticks) = if running {
        out.push((0.0, (now - entry as f64).max(0.0) / hz));
        // The last finished pause's entry time was overwritten: all finished ones are "others".
        (c.invocations.saturating_sub(1), c.time_ticks)
    } else if c.invocations > 0 && exit > 0 {
        let last = exit.saturating_sub(entry);
        out.push(((now - exit as f64).max(0.0) / hz, last as f64 / hz));
        (
            c.invocations.saturating_sub(1),
            c.time_ticks.saturating_sub(last),
        )
    } else {
        (0, 0)
    };
    let uptime = now / hz;
    if finished > 0 && others_ticks > 0 && uptime <= window {
        out.push((uptime, others_ticks as f64 / hz / finished as f64));
    }
    out.retain(|(ago, len)| *ago <= window && *len > 0.0);
    out
}

/// The pause signal.
pub struct PauseSignal {
    /// When this signal began watching, Unix ns: OTLP series that started later hold only new pauses.
    started_unix_nano: u64,
    ledger: Mutex<PauseLedger>,
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
    /// A signal that has seen nothing yet.
    pub fn new() -> Self {
        PauseSignal {
            started_unix_nano: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            ledger: Mutex::new(PauseLedger::default()),
        }
    }

    /// Reads the runtime metrics picked from the app's OTLP exports: GC pause series and ready-work delays.
    pub fn update_from_otlp(&self, pauses: &[PauseReading], delays: &[DelayReading], now: Instant) {
        let mut st = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        let st = &mut *st;
        st.totals.retain(|k, _| k.2 != "otlp");
        let mut current: HashMap<String, CumulativeReading> = HashMap::with_capacity(pauses.len());
        let mut seen: HashSet<&'static str> = HashSet::new();
        for r in pauses {
            seen.insert(r.metric);
            // Every observation since its start is new when the series is known to hold no history:
            // it appeared after others of its metric while vitals watched, or began counting after.
            let all_new =
                st.metrics_seen.contains(r.metric) || r.start_unix_nano >= self.started_unix_nano;
            let runtime = r.runtime.label();
            let key = (runtime, r.collector.clone(), "otlp");
            let previous = st.previous.get(&r.series);
            let bound = match &r.value {
                PauseValue::Histogram {
                    cumulative,
                    sum,
                    count,
                } => {
                    let (sum, count) = (*sum, *count);
                    let t = st.totals.entry(key).or_default();
                    t.seconds += sum;
                    *t.count.get_or_insert(0) += count;
                    let bound = match previous {
                        Some(p) if p.2 == count => None,
                        Some(p) if p.2 < count => largest_new_bound(&p.0, cumulative),
                        // New to vitals, or restarted (its count went down): every observation
                        // since its start is new when that start is known to be after vitals began
                        // watching; otherwise it may hold hours of history, not the last minute.
                        _ if all_new || previous.is_some() => largest_new_bound(&[], cumulative),
                        _ => None,
                    };
                    current.insert(r.series.clone(), (cumulative.clone(), sum, count));
                    bound
                }
                PauseValue::Total(total) => {
                    let total = *total;
                    st.totals.entry(key).or_default().seconds += total;
                    // A counter of pause time: the growth since the last reading bounds the longest
                    // pause. A first reading (or one after a reset) counts from zero only when it
                    // holds no history, as for histograms above.
                    let before = match previous {
                        Some(p) if p.1 <= total => Some(p.1),
                        _ if all_new || previous.is_some() => Some(0.0),
                        _ => None,
                    };
                    current.insert(r.series.clone(), (Vec::new(), total, 0));
                    before.filter(|b| total > *b).map(|b| total - b)
                }
            };
            if let Some(b) = bound {
                st.max.entry((runtime, "otlp")).or_default().push(now, b);
            }
        }
        st.metrics_seen.extend(seen);
        // Only series still picked are remembered: bounded and expired with them.
        st.previous = current;
        st.delay.clear();
        let mut worst = |runtime: Runtime, statistic: &'static str, v: f64| {
            let runtime = runtime.label();
            match st
                .delay
                .iter_mut()
                .find(|(r, s, _)| *r == runtime && *s == statistic)
            {
                Some((_, _, w)) => *w = w.max(v),
                None => st.delay.push((runtime, statistic, v)),
            }
        };
        for d in delays {
            match &d.value {
                DelayValue::Statistic(statistic, v) => worst(d.runtime, statistic, *v),
                DelayValue::Interval(buckets) => {
                    for (statistic, v) in interval_statistics(buckets) {
                        worst(d.runtime, statistic, v);
                    }
                }
            }
        }
    }

    /// Reads a JVM's hsperfdata counters at a tick with nothing from the fast watch.
    pub fn update_from_hsperf(&self, jvm: Option<&JvmSample>, now: Instant) {
        self.update_from_hsperf_with(jvm, None, now);
    }

    /// Reads a JVM's hsperfdata counters; None when the target has none. `fast` is what the fast JVM watch
    /// read between ticks, all of it before `jvm`: every pause that ended more than one poll after the
    /// previous one is timed on its own, exactly.
    pub fn update_from_hsperf_with(
        &self,
        jvm: Option<&JvmSample>,
        fast: Option<&JvmFast>,
        now: Instant,
    ) {
        let mut st = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        let st = &mut *st;
        st.totals.retain(|k, _| k.2 != "hsperfdata");
        let Some(j) = jvm else {
            st.safepoints = None;
            st.jvm_previous.clear();
            st.jvm_clock = JvmClock::default();
            return;
        };
        let hz = j.frequency as f64;
        if let Some(fast) = fast {
            if let Some((at, base)) = &fast.baseline {
                // The watch opened this JVM's file: its whole image then is the first reading.
                st.jvm_previous.clear();
                st.jvm_clock = JvmClock::default();
                let jvm_then = st.jvm_clock.observe(*at, base);
                let window = st
                    .max
                    .entry((Runtime::Jvm.label(), "hsperfdata"))
                    .or_default();
                for c in &base.collectors {
                    if is_concurrent_cycle(&c.name) {
                        continue;
                    }
                    st.jvm_previous.insert(c.index, c.clone());
                    for (ago, len) in pauses_on_first_reading(c, hz, jvm_then) {
                        let t = at.checked_sub(Duration::from_secs_f64(ago)).unwrap_or(*at);
                        window.push(t, len);
                    }
                }
            }
            for poll in &fast.polls {
                let mut longest: Option<f64> = None;
                for (i, fc) in poll.collectors.iter().enumerate() {
                    let (Some(fc), Some(prev)) = (fc, st.jvm_previous.get_mut(&i)) else {
                        continue;
                    };
                    let cur = GcCollector {
                        index: i,
                        name: String::new(),
                        invocations: fc.invocations,
                        time_ticks: fc.time_ticks,
                        last_entry_ticks: Some(fc.last_entry_ticks),
                        last_exit_ticks: Some(fc.last_exit_ticks),
                    };
                    // A pause still running at a poll is timed when it ends (or by the tick's reading).
                    if let Some(p) = longest_pause_since(prev, &cur, hz, None) {
                        longest = Some(longest.map_or(p, |x: f64| x.max(p)));
                    }
                    prev.invocations = cur.invocations;
                    prev.time_ticks = cur.time_ticks;
                    prev.last_entry_ticks = cur.last_entry_ticks;
                    prev.last_exit_ticks = cur.last_exit_ticks;
                }
                if let Some(b) = longest {
                    st.max
                        .entry((Runtime::Jvm.label(), "hsperfdata"))
                        .or_default()
                        .push(poll.at, b);
                }
            }
        }
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
                (Runtime::Jvm.label(), c.name.clone(), "hsperfdata"),
                Totals {
                    seconds,
                    count: Some(c.invocations),
                },
            );
            match st.jvm_previous.insert(c.index, c.clone()) {
                Some(prev) => {
                    if let Some(p) = longest_pause_since(&prev, c, hz, jvm_now) {
                        longest = Some(longest.map_or(p, |x: f64| x.max(p)));
                    }
                }
                // First reading (vitals attached, or the JVM is new): what the counters already show
                // counts where it falls in the window, so no pause since the JVM started is lost.
                None => {
                    let window = st
                        .max
                        .entry((Runtime::Jvm.label(), "hsperfdata"))
                        .or_default();
                    for (ago, len) in pauses_on_first_reading(c, hz, jvm_now) {
                        let at = now.checked_sub(Duration::from_secs_f64(ago)).unwrap_or(now);
                        window.push(at, len);
                    }
                }
            }
        }
        if let Some(b) = longest {
            st.max
                .entry((Runtime::Jvm.label(), "hsperfdata"))
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
        let mut st = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        st.hsperf_status = reason;
    }
}

impl Collector for PauseSignal {
    fn collect(&self, out: &mut Vec<Metric>) {
        let now = Instant::now();
        let mut st = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        let mut rows: Vec<_> = st
            .totals
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        let mut time = catalogue::GC_PAUSE.metric();
        let mut count = catalogue::GC_PAUSES.metric();
        for ((runtime, collector, source), t) in &rows {
            let labels = [
                ("runtime", *runtime),
                ("collector", collector.as_str()),
                ("source", *source),
            ];
            time.push(&labels, Value::Sum(t.seconds));
            if let Some(n) = t.count {
                count.push(&labels, Value::Sum(n as f64));
            }
        }
        let mut max = catalogue::GC_PAUSE_MAX.metric();
        let mut keys: Vec<(&'static str, &'static str)> = st.max.keys().copied().collect();
        keys.sort();
        for k in keys {
            if let Some(m) = st.max.get_mut(&k).and_then(|w| w.max(now)) {
                max.push(&[("runtime", k.0), ("source", k.1)], Value::Gauge(m));
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
                catalogue::EXPORTER_HSPERFDATA_STATUS
                    .metric()
                    .with(&[("reason", reason)], Value::Gauge(1.0)),
            );
        }
        if let Some((n, secs)) = st.safepoints {
            out.push(catalogue::SAFEPOINT.metric().with(&[], Value::Sum(secs)));
            out.push(
                catalogue::SAFEPOINTS
                    .metric()
                    .with(&[], Value::Sum(n as f64)),
            );
        }
        if !st.delay.is_empty() {
            let mut f = catalogue::EVENT_LOOP_DELAY.metric();
            for (runtime, statistic, v) in &st.delay {
                // Not `quantile`: that label belongs to summaries, and a gauge carrying it is invalid.
                f.push(
                    &[("runtime", runtime), ("statistic", statistic)],
                    Value::Gauge(*v),
                );
            }
            out.push(f);
        }
    }
}

/// Statistics of one interval's delays from its histogram (counts per upper bound, ascending, the last
/// `+Inf`): `p50`, `p90`, `p99` and `max` as the upper bound of the bucket holding that rank (an upper
/// bound of the true figure; the highest finite bound, a lower bound, when the rank falls in `+Inf`).
/// Nothing when the interval holds no observation.
pub fn interval_statistics(buckets: &[(f64, u64)]) -> Vec<(&'static str, f64)> {
    let total: u64 = buckets.iter().map(|(_, c)| *c).sum();
    if total == 0 {
        return Vec::new();
    }
    let top_finite = buckets
        .iter()
        .rev()
        .map(|(b, _)| *b)
        .find(|b| b.is_finite());
    let bound_at = |rank: u64| {
        let mut acc = 0u64;
        let b = buckets
            .iter()
            .find(|(_, c)| {
                acc += c;
                acc >= rank
            })
            .map(|(b, _)| *b)?;
        if b.is_finite() {
            Some(b)
        } else {
            top_finite
        }
    };
    // Ranks in integers (per mille), so 90% of 10 is 9, not 9.000000000000002 rounded up to 10.
    [("p50", 500u64), ("p90", 900), ("p99", 990), ("max", 1000)]
        .into_iter()
        .filter_map(|(name, per_mille)| {
            let rank = (per_mille.saturating_mul(total).div_ceil(1000)).clamp(1, total);
            bound_at(rank).map(|b| (name, b))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::runtime_metrics::RuntimeMetrics;

    /// Statistics of an interval are the upper bounds of the buckets holding their ranks.
    #[test]
    fn interval_statistics_from_buckets() {
        // 100 observations: 50 at most 1 ms, 40 at most 10 ms, 9 at most 100 ms, 1 above.
        let b = [(0.001, 50), (0.01, 40), (0.1, 9), (f64::INFINITY, 1)];
        assert_eq!(
            interval_statistics(&b),
            [("p50", 0.001), ("p90", 0.01), ("p99", 0.1), ("max", 0.1)],
            "the 100th is above 100 ms: its bound says only that (the highest finite bound)"
        );
        // 10 observations: the 9th (p90) is in the second bucket, not rounded up to the 10th.
        let b = [(0.001, 8), (0.01, 1), (0.1, 1), (f64::INFINITY, 0)];
        assert_eq!(
            interval_statistics(&b),
            [("p50", 0.001), ("p90", 0.01), ("p99", 0.1), ("max", 0.1)]
        );
        assert!(interval_statistics(&[(0.1, 0), (f64::INFINITY, 0)]).is_empty());
    }

    #[test]
    fn delay_statistics_by_runtime_worst_across_series() {
        use crate::signal::runtime_metrics::{DelayReading, DelayValue};
        let p = PauseSignal::new();
        let delays = [
            DelayReading {
                runtime: Runtime::Node,
                value: DelayValue::Statistic("p99", 0.012),
            },
            DelayReading {
                runtime: Runtime::Node,
                value: DelayValue::Statistic("p99", 0.02),
            },
            DelayReading {
                runtime: Runtime::Go,
                value: DelayValue::Interval(vec![(0.0001, 99), (0.001, 1), (f64::INFINITY, 0)]),
            },
        ];
        p.update_from_otlp(&[], &delays, Instant::now());
        let mut out = vec![];
        p.collect(&mut out);
        crate::catalogue::assert_agrees(&out);
        let f = out
            .iter()
            .find(|f| f.name == catalogue::EVENT_LOOP_DELAY.name)
            .unwrap();
        let got: Vec<(String, String, Value)> = f
            .points
            .iter()
            .map(|s| {
                (
                    s.attributes[0].1.clone(),
                    s.attributes[1].1.clone(),
                    s.value.clone(),
                )
            })
            .collect();
        let row = |r: &str, s: &str, v: f64| (r.to_owned(), s.to_owned(), Value::Gauge(v));
        assert_eq!(
            got,
            [
                row("node", "p99", 0.02),
                row("go", "p50", 0.0001),
                row("go", "p90", 0.0001),
                row("go", "p99", 0.0001),
                row("go", "max", 0.001),
            ]
        );
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
        crate::catalogue::assert_agrees(&out);
        let get = |name: &str| {
            out.iter().find(|f| f.name == name).unwrap().points[0]
                .value
                .clone()
        };
        assert_eq!(get(catalogue::GC_PAUSE.name), Value::Sum(0.075));
        assert_eq!(get(catalogue::GC_PAUSES.name), Value::Sum(4.0));
        assert_eq!(
            get(catalogue::GC_PAUSE_MAX.name),
            Value::Gauge(0.045),
            "one pause of 45 ticks at 1 kHz"
        );
        assert_eq!(get(catalogue::SAFEPOINTS.name), Value::Sum(10.0));
        assert_eq!(get(catalogue::SAFEPOINT.name), Value::Sum(0.5));
        p.reset_target();
        let mut out = vec![];
        p.collect(&mut out);
        crate::catalogue::assert_agrees(&out);
        assert!(out
            .iter()
            .all(|f| f.points.is_empty() || f.name != catalogue::GC_PAUSE.name));
    }

    /// Three young pauses of 5, 13 and 4 ms end within one 1 s interval: the tick alone sees the last
    /// exactly and the others' mean (9 ms); with the fast watch's polls between, each is timed on its
    /// own and the max is the 13 ms one. A pause running at a poll is timed when it ends.
    #[test]
    fn polls_between_ticks_time_each_pause() {
        use crate::probe::jvm_watch::{FastCollector, JvmFast, JvmPoll, FAST_COLLECTORS};
        let young = |invocations, time_ticks, entry, exit| GcCollector {
            index: 0,
            name: "G1 young collection pauses".into(),
            invocations,
            time_ticks,
            last_entry_ticks: Some(entry),
            last_exit_ticks: Some(exit),
        };
        let sample = |c: GcCollector| JvmSample {
            frequency: 1000,
            collectors: vec![c],
            hrt_ticks: Some(10_000),
            ..Default::default()
        };
        let t0 = Instant::now();
        let max = |p: &PauseSignal| {
            let mut out = vec![];
            p.collect(&mut out);
            crate::catalogue::assert_agrees(&out);
            out.iter()
                .find(|f| f.name == catalogue::GC_PAUSE_MAX.name)
                .and_then(|f| f.points.first().map(|p| p.value.clone()))
        };
        let ticks_only = PauseSignal::new();
        ticks_only.update_from_hsperf(Some(&sample(young(1, 2, 9_000, 9_002))), t0);
        let after = sample(young(4, 24, 10_500, 10_504));
        ticks_only.update_from_hsperf(Some(&after), t0 + Duration::from_secs(1));
        assert_eq!(
            max(&ticks_only),
            Some(Value::Gauge(0.009)),
            "4 ms and the mean of 5 and 13"
        );

        let watched = PauseSignal::new();
        watched.update_from_hsperf(Some(&sample(young(1, 2, 9_000, 9_002))), t0);
        let poll = |ms: u64, inv, time, entry, exit| {
            let mut collectors = [None; FAST_COLLECTORS];
            collectors[0] = Some(FastCollector {
                invocations: inv,
                time_ticks: time,
                last_entry_ticks: entry,
                last_exit_ticks: exit,
            });
            JvmPoll {
                at: t0 + Duration::from_millis(ms),
                collectors,
            }
        };
        let fast = JvmFast {
            polls: vec![
                poll(100, 2, 7, 10_100, 10_105),
                // The 13 ms pause is running at this poll, and ended by the next.
                poll(300, 3, 7, 10_300, 10_105),
                poll(320, 3, 20, 10_300, 10_313),
                poll(520, 4, 24, 10_500, 10_504),
            ],
            ..Default::default()
        };
        watched.update_from_hsperf_with(Some(&after), Some(&fast), t0 + Duration::from_secs(1));
        assert_eq!(max(&watched), Some(Value::Gauge(0.013)));
    }

    /// Attaching 10.5 s after a JVM started whose full collections took 0.61 s and then 0.40 s: the
    /// first reading counts both where they fall in the window (the last exactly at its exit, the
    /// other, alone, exactly at the JVM's start), and each leaves the max when its minute is over. A
    /// JVM whose last pause ended more than a minute ago adds nothing.
    #[test]
    fn first_reading_counts_the_pauses_since_the_jvm_started() {
        let full = |invocations, time_ticks, entry, exit| GcCollector {
            index: 1,
            name: "MSC".into(),
            invocations,
            time_ticks,
            last_entry_ticks: Some(entry),
            last_exit_ticks: Some(exit),
        };
        let young = GcCollector {
            index: 0,
            name: "PSScavenge".into(),
            invocations: 10,
            time_ticks: 50,
            last_entry_ticks: Some(9_000),
            last_exit_ticks: Some(9_004),
        };
        let jvm = |collectors: Vec<GcCollector>, hrt: u64| JvmSample {
            frequency: 1000,
            collectors,
            hrt_ticks: Some(hrt),
            ..Default::default()
        };
        let max = |p: &PauseSignal| {
            let mut out = vec![];
            p.collect(&mut out);
            crate::catalogue::assert_agrees(&out);
            out.iter()
                .find(|f| f.name == catalogue::GC_PAUSE_MAX.name)
                .and_then(|f| f.points.first())
                .map(|s| s.value.clone())
        };
        let sample = jvm(vec![young.clone(), full(2, 1010, 7_600, 8_000)], 10_500);
        let p = PauseSignal::new();
        let t0 = Instant::now();
        p.update_from_hsperf(Some(&sample), t0);
        assert_eq!(
            max(&p),
            Some(Value::Gauge(0.61)),
            "the first full collection"
        );
        // Read 50 s ago: the 0.61 s pause (at most 10.5 s before that reading) is past its minute now;
        // the 0.40 s one (2.5 s before) is not. 58 s ago: only the young pause of 4 ms (1.5 s before) is
        // left; 61 s ago: nothing.
        for (ago, want) in [(50, 0.4), (58, 0.004), (61, 0.0)] {
            let Some(then) = t0.checked_sub(Duration::from_secs(ago)) else {
                return; // a machine up for less than a minute
            };
            let p = PauseSignal::new();
            p.update_from_hsperf(Some(&sample), then);
            assert_eq!(max(&p), Some(Value::Gauge(want)), "read {ago} s ago");
        }

        // A JVM up for 10 minutes whose last pause ended 100 s ago.
        let p = PauseSignal::new();
        let old = jvm(vec![full(5, 3000, 499_000, 500_000)], 600_000);
        p.update_from_hsperf(Some(&old), t0);
        assert_eq!(max(&p), Some(Value::Gauge(0.0)));

        // A pause running at attach counts with its elapsed time.
        let p = PauseSignal::new();
        let running = jvm(vec![full(3, 1000, 9_800, 9_000)], 10_000);
        p.update_from_hsperf(Some(&running), t0);
        assert_eq!(
            max(&p),
            Some(Value::Gauge(0.5)),
            "two finished, mean 0.5 s, running 0.2 s"
        );
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
        crate::catalogue::assert_agrees(&out);
        let get = |name: &str| {
            out.iter()
                .find(|f| f.name == name)
                .map(|f| f.points.iter().map(|s| s.value.clone()).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        assert_eq!(get(catalogue::GC_PAUSE_MAX.name), [Value::Gauge(0.002)]);
        assert_eq!(get(catalogue::GC_PAUSE.name), [Value::Sum(0.010)]);

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
        crate::catalogue::assert_agrees(&out);
        let max = out
            .iter()
            .find(|f| f.name == catalogue::GC_PAUSE_MAX.name)
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

    fn request(
        metrics: Vec<opentelemetry_proto::tonic::metrics::v1::Metric>,
    ) -> opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest {
        use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
        use opentelemetry_proto::tonic::metrics::v1::{ResourceMetrics, ScopeMetrics};
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    /// The runtime metrics picked from one export of `metrics`.
    fn app_with(metrics: Vec<opentelemetry_proto::tonic::metrics::v1::Metric>) -> RuntimeMetrics {
        let picked = RuntimeMetrics::new(Duration::from_secs(60));
        picked.ingest(&request(metrics));
        picked
    }

    /// One derivation step from what `picked` holds now.
    fn update(p: &PauseSignal, picked: &RuntimeMetrics) {
        let now = Instant::now();
        let r = picked.readings(now);
        p.update_from_otlp(&r.pauses, &r.delays, now);
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
        crate::catalogue::assert_agrees(&out);
        out.iter()
            .find(|f| f.name == catalogue::GC_PAUSE_MAX.name)?
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
        update(&p, &app);
        assert_eq!(otlp_max(&p), Some(0.25));

        // A series that began before vitals: its history may be hours old, not the last minute.
        let p = PauseSignal::new();
        let app = app_with(vec![jvm_gc_histogram(
            "G1 Young Generation",
            1,
            &bounds,
            &[5, 0, 0, 0],
        )]);
        update(&p, &app);
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
        update(&p, &app);
        assert_eq!(otlp_max(&p), Some(0.5));
    }

    fn dotnet_pause_time(start: u64, total: f64) -> RuntimeMetrics {
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
        update(&p, &dotnet_pause_time(1, 7200.0));
        assert_eq!(
            otlp_max(&p),
            Some(0.0),
            "two hours of pauses are not one pause"
        );
        update(&p, &dotnet_pause_time(1, 7200.3));
        let got = otlp_max(&p).unwrap();
        assert!(
            (got - 0.3).abs() < 1e-6,
            "growth since the last reading: {got}"
        );

        let p = PauseSignal::new();
        let after = p.started_unix_nano + 1_000;
        update(&p, &dotnet_pause_time(after, 0.04));
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
        update(&p, &app_with(vec![dotnet, go_ns]));
        let mut out = vec![];
        p.collect(&mut out);
        crate::catalogue::assert_agrees(&out);
        let time = out
            .iter()
            .find(|f| f.name == catalogue::GC_PAUSE.name)
            .unwrap();
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
        let count = out
            .iter()
            .find(|f| f.name == catalogue::GC_PAUSES.name)
            .unwrap();
        assert_eq!(count.points.len(), 1, ".NET's pause time has no count");
        assert_eq!(count.points[0].value, Value::Sum(4.0));
    }
}
