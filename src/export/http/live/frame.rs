//! One live frame per second from the families a scrape would show: the four questions' numbers, their
//! verdicts, the alerts the shipped rules would raise and the tuning hints. Plain synchronous code; the
//! caller passes the time.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::view::{
    AlertRow, DbPanel, DbPoolRow, Frame, MemoryPanel, NPlusOneRow, OperationRow, PausePanel,
    PoolView, PressurePanel, QueryRow, RedPanel, TargetPanel, TargetRow, Verdicts,
};

use super::history::{History, HistoryPoint};
use super::thresholds::{threshold, AlertRule, Measure, RULES};
use crate::catalogue::{self, label, scalar, Families};
use crate::model::{Exponential, Metric, Value};
use crate::signal::hints::Hint;

/// Operations kept per RED snapshot and shown per list; operation names come from the app.
const OPERATION_LIMIT: usize = 64;
/// Operations shown in each of the "slowest" and "most failing" lists.
const TOP_OPERATIONS: usize = 5;
/// Pools shown.
const POOL_LIMIT: usize = 32;
/// Seconds between RED snapshots, and how many are kept: quantiles and rates cover the last 60..70 s.
const RED_SNAPSHOT_EVERY: f64 = 10.0;
const RED_SNAPSHOTS: usize = 7;

/// Cumulative latency histogram of one operation (or of all), summed over outcomes.
#[derive(Debug, Clone, Default, PartialEq)]
struct Hist {
    bounds: Vec<f64>,
    counts: Vec<f64>,
    count: f64,
    errors: f64,
    /// The exponential buckets of every series summed, while every series has them: the precise source
    /// of the quantiles (the classic buckets only bound them).
    native: Option<Exponential>,
}

/// Most exponential buckets a summed histogram keeps, as RED keeps per series.
const NATIVE_MAX_BUCKETS: usize = 160;

impl Hist {
    fn add(
        &mut self,
        buckets: &[(f64, u64)],
        count: u64,
        error: bool,
        native: Option<&Exponential>,
    ) {
        let first = self.bounds.is_empty() && self.count == 0.0;
        self.native = match (first, self.native.take(), native) {
            (true, _, n) => n.cloned(),
            (false, Some(mut held), Some(n)) => {
                held.merge(n, NATIVE_MAX_BUCKETS);
                Some(held)
            }
            _ => None,
        };
        if self.bounds.is_empty() {
            self.bounds = buckets.iter().map(|b| b.0).collect();
            self.counts = vec![0.0; buckets.len()];
        }
        // Series with other bounds cannot be summed bucket by bucket; they still count.
        if self.bounds.len() == buckets.len()
            && self.bounds.iter().zip(buckets).all(|(a, b)| *a == b.0)
        {
            for (c, b) in self.counts.iter_mut().zip(buckets) {
                *c += b.1 as f64;
            }
        }
        self.count += count as f64;
        if error {
            self.errors += count as f64;
        }
    }

    /// `self - base`, treating a base that is larger (a reset) as zero.
    fn since(&self, base: Option<&Hist>) -> Hist {
        match base {
            Some(b) if b.count <= self.count && b.bounds == self.bounds => Hist {
                bounds: self.bounds.clone(),
                counts: self
                    .counts
                    .iter()
                    .zip(&b.counts)
                    .map(|(a, b)| (a - b).max(0.0))
                    .collect(),
                count: self.count - b.count,
                errors: (self.errors - b.errors).max(0.0),
                native: match (&self.native, &b.native) {
                    (Some(now), Some(then)) => Some(now.minus(then)),
                    (now, _) => now.clone(),
                },
            },
            _ => self.clone(),
        }
    }

    /// The `q` quantile: from the exponential buckets where every series has them, else interpolated in
    /// the classic buckets as Prometheus does.
    fn quantile(&self, q: f64) -> Option<f64> {
        match &self.native {
            Some(n) if n.total() > 0 => n.quantile(q),
            _ => bucket_quantile(q, &self.bounds, &self.counts),
        }
    }
}

/// The quantile of cumulative buckets the way Prometheus' `histogram_quantile` computes it: linear
/// interpolation inside the bucket holding the rank, the highest finite bound when it falls in `+Inf`.
pub fn bucket_quantile(q: f64, bounds: &[f64], cumulative: &[f64]) -> Option<f64> {
    let total = *cumulative.last()?;
    if total <= 0.0 || bounds.len() != cumulative.len() {
        return None;
    }
    let rank = q * total;
    let i = cumulative.iter().position(|c| *c >= rank)?;
    if bounds[i].is_infinite() {
        return bounds.iter().rev().find(|b| b.is_finite()).copied();
    }
    let (lower, below) = if i == 0 {
        (0.0_f64.min(bounds[0]), 0.0)
    } else {
        (bounds[i - 1], cumulative[i - 1])
    };
    let in_bucket = cumulative[i] - below;
    if in_bucket <= 0.0 {
        return Some(bounds[i]);
    }
    Some(lower + (bounds[i] - lower) * (rank - below) / in_bucket)
}

#[derive(Debug, Clone, Default)]
struct RedSnapshot {
    t: f64,
    all: Hist,
    ops: HashMap<(String, String), Hist>,
    /// Query latency per (service, query), at most [`OPERATION_LIMIT`].
    queries: HashMap<(String, String), Hist>,
    /// N+1 runs counted per (service, operation, query), at most [`OPERATION_LIMIT`].
    n_plus_one: HashMap<(String, String, String), f64>,
}

/// The database panel: the slowest queries and the N+1 runs over the RED window, and the database
/// pools beside them.
fn db_panel(
    snap: &RedSnapshot,
    base: Option<&RedSnapshot>,
    window: f64,
    pools: &[PoolView],
) -> DbPanel {
    let mut queries: Vec<(&(String, String), Hist)> = snap
        .queries
        .iter()
        .map(|(k, h)| (k, h.since(base.and_then(|b| b.queries.get(k)))))
        .filter(|(_, d)| d.count > 0.0)
        .collect();
    let p = |q: f64, h: &Hist| bucket_quantile(q, &h.bounds, &h.counts);
    queries.sort_by(|a, b| {
        p(0.99, &b.1)
            .partial_cmp(&p(0.99, &a.1))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let slowest_queries = queries
        .iter()
        .take(TOP_OPERATIONS)
        .map(|((service, query), d)| QueryRow {
            service: service.clone(),
            query: query.clone(),
            rate: if window > 0.0 { d.count / window } else { 0.0 },
            error_ratio: if d.count > 0.0 {
                d.errors / d.count
            } else {
                0.0
            },
            p50: p(0.5, d),
            p99: p(0.99, d),
        })
        .collect();
    let mut runs: Vec<(&(String, String, String), f64, f64)> = snap
        .n_plus_one
        .iter()
        .map(|(k, total)| {
            let before = base.and_then(|b| b.n_plus_one.get(k)).copied();
            let recent = match before {
                Some(b) if b <= *total => total - b,
                _ => *total,
            };
            (k, recent, *total)
        })
        .filter(|(_, recent, _)| *recent > 0.0)
        .collect();
    runs.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal));
    let n_plus_one = runs
        .iter()
        .take(TOP_OPERATIONS)
        .map(|((service, operation, query), recent, total)| NPlusOneRow {
            service: service.clone(),
            operation: operation.clone(),
            query: query.clone(),
            runs: *recent,
            runs_total: *total,
        })
        .collect();
    let db_pools = pools
        .iter()
        .filter(|p| p.kind == "db")
        .map(|p| DbPoolRow {
            pool: p.pool.clone(),
            utilization: p.utilization,
            used: p.used,
            max: p.max,
            pending: p.pending,
        })
        .collect();
    DbPanel {
        slowest_queries,
        n_plus_one,
        pools: db_pools,
        has_data: !snap.queries.is_empty(),
    }
}

/// Cumulative counters whose per-second rate the page shows.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    t: f64,
    requests: Option<f64>,
    gc: Option<f64>,
    safepoint: Option<f64>,
    throttled: Option<f64>,
    throttled_periods: Option<f64>,
    periods: Option<f64>,
    cpu: Option<f64>,
    psi: [Option<f64>; 3],
}

fn per_second(now: Option<f64>, prev: Option<f64>, dt: f64) -> Option<f64> {
    match (now, prev) {
        (Some(n), Some(p)) if dt > 0.0 && n >= p => Some((n - p) / dt),
        _ => None,
    }
}

/// Turns gathers into frames and keeps what frames need from the past: the per-second history, the RED
/// snapshots for windowed quantiles and how long each alert condition has held. It only reads: the
/// hints it shows are the hints derivation's ([`crate::signal::hints::HintSignal`]).
pub struct LiveFrames {
    history: History,
    prev: Option<Counters>,
    red: VecDeque<RedSnapshot>,
    alert_since: Vec<Option<f64>>,
    onsets: Vec<Onset>,
    target_key: Option<catalogue::TargetInstance>,
    selected_by: String,
    listen_hint: String,
    /// Per named target: (frame time, CPU seconds) of the last frame, for its CPU rate. As many entries
    /// as targets with a `target` label (a bounded set: the named ones and at most 16 containers).
    target_cpu: HashMap<String, (f64, f64)>,
}

/// An alert condition of the shipped rules that began to hold.
#[derive(Debug, Clone, Copy)]
pub struct Onset {
    /// The rule.
    pub rule: AlertRule,
    /// The value that met it.
    pub value: Option<f64>,
    /// When, unix seconds.
    pub t: f64,
}

/// At most this many targets are listed on the page.
const TARGETS_SHOWN: usize = 32;

/// Every family the history point reads ([`LiveFrames::observe`]); the frame reads them all.
pub const HISTORY_READS: &[&catalogue::MetricDef] = &[
    &catalogue::TARGET_UP,
    &catalogue::TARGET_INFO,
    &catalogue::PROCESS_START_TIME,
    &catalogue::PROCESS_CPU_TIME,
    &catalogue::PROCESS_MEMORY_USAGE,
    &catalogue::PRESSURE_STALLED,
    &catalogue::REQUEST_DURATION,
    &catalogue::DB_QUERY_DURATION,
    &catalogue::DB_N_PLUS_ONE,
    &catalogue::GC_PAUSE,
    &catalogue::GC_PAUSE_MAX,
    &catalogue::SAFEPOINT,
    &catalogue::CGROUP_CPU_THROTTLED,
    &catalogue::CGROUP_CPU_THROTTLED_PERIODS,
    &catalogue::CGROUP_CPU_PERIODS,
    &catalogue::CGROUP_MEMORY_USAGE,
    &catalogue::CGROUP_MEMORY_LIMIT,
    &catalogue::MEMORY_HEAP,
    &catalogue::MEMORY_HEAP_LIMIT,
    &catalogue::POOL_UTILIZATION,
    &catalogue::POOL_USED,
    &catalogue::POOL_MAX,
    &catalogue::POOL_PENDING,
];

impl LiveFrames {
    /// Frames keeping `capacity` seconds of history. `selected_by` says how the target was chosen;
    /// `otlp_hint` is a sentence telling how an app's SDK reaches the receivers, or that it cannot.
    pub fn new(capacity: usize, selected_by: String, otlp_hint: String) -> Self {
        LiveFrames {
            history: History::new(capacity),
            prev: None,
            red: VecDeque::with_capacity(RED_SNAPSHOTS + 1),
            alert_since: vec![None; RULES.len()],
            onsets: Vec::new(),
            target_key: None,
            selected_by,
            listen_hint: otlp_hint,
            target_cpu: HashMap::new(),
        }
    }

    /// The per-second history, column-wise, for a newly connected viewer.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Bytes the history ring holds when full (the stated memory bound).
    pub fn history_bytes(&self) -> usize {
        self.history.capacity_bytes()
    }

    /// The alert conditions that began to hold since the last call.
    pub fn take_onsets(&mut self) -> Vec<Onset> {
        std::mem::take(&mut self.onsets)
    }

    fn red_snapshot(f: &Families<'_>, t: f64) -> RedSnapshot {
        let mut snap = RedSnapshot {
            t,
            ..Default::default()
        };
        for s in f.series(&catalogue::REQUEST_DURATION) {
            let Value::Histogram {
                buckets,
                count,
                native,
                ..
            } = &s.value
            else {
                continue;
            };
            let native = native.as_deref();
            let error = label(s, "outcome") == Some("error");
            snap.all.add(buckets, *count, error, native);
            let key = (
                label(s, "service").unwrap_or("").to_owned(),
                label(s, "operation").unwrap_or("").to_owned(),
            );
            if snap.ops.len() < OPERATION_LIMIT || snap.ops.contains_key(&key) {
                snap.ops
                    .entry(key)
                    .or_default()
                    .add(buckets, *count, error, native);
            }
        }
        for s in f.series(&catalogue::DB_QUERY_DURATION) {
            let Value::Histogram { buckets, count, .. } = &s.value else {
                continue;
            };
            let error = label(s, "outcome") == Some("error");
            let key = (
                label(s, "service").unwrap_or("").to_owned(),
                label(s, "query").unwrap_or("").to_owned(),
            );
            if snap.queries.len() < OPERATION_LIMIT || snap.queries.contains_key(&key) {
                snap.queries
                    .entry(key)
                    .or_default()
                    .add(buckets, *count, error, None);
            }
        }
        for s in f.series(&catalogue::DB_N_PLUS_ONE) {
            let Some(v) = scalar(s) else { continue };
            let key = (
                label(s, "service").unwrap_or("").to_owned(),
                label(s, "operation").unwrap_or("").to_owned(),
                label(s, "query").unwrap_or("").to_owned(),
            );
            if snap.n_plus_one.len() < OPERATION_LIMIT {
                snap.n_plus_one.insert(key, v);
            }
        }
        snap
    }

    /// One row per named target (`target` label: several targets, or a pod's containers), from its own
    /// series: up, pid, program, runtime, processes, memory, CPU cores, restarts.
    fn targets(&mut self, f: &Families, t: f64) -> Vec<TargetRow> {
        let mut names: Vec<&str> = f
            .series(&catalogue::TARGET_UP)
            .filter_map(|s| label(s, "target"))
            .collect();
        names.sort_unstable();
        names.dedup();
        names.truncate(TARGETS_SHOWN);
        let mut rows = Vec::with_capacity(names.len());
        let mut cpu_now = HashMap::with_capacity(names.len());
        for name in names {
            let of = [("target", name)];
            let info = f
                .series(&catalogue::TARGET_INFO)
                .find(|s| label(s, "target") == Some(name));
            let cpu = f.sum(&catalogue::PROCESS_CPU_TIME, &of);
            let cores = match (cpu, self.target_cpu.get(name)) {
                (Some(c), Some(&(t0, c0))) if t > t0 && c >= c0 => Some((c - c0) / (t - t0)),
                _ => None,
            };
            if let Some(c) = cpu {
                cpu_now.insert(name.to_owned(), (t, c));
            }
            let text = |key| info.and_then(|s| label(s, key)).map(str::to_owned);
            rows.push(TargetRow {
                name: name.to_owned(),
                up: f.sum(&catalogue::TARGET_UP, &of).unwrap_or(0.0) > 0.0,
                pid: text("pid"),
                comm: text("comm"),
                runtime: text("runtime"),
                processes: f.sum(&catalogue::TARGET_PROCESSES, &of),
                rss_bytes: f.sum(&catalogue::PROCESS_MEMORY_USAGE, &of),
                cpu_cores: cores,
                restarts: f.sum(&catalogue::TARGET_RESTARTS, &of),
            });
        }
        self.target_cpu = cpu_now;
        rows
    }

    /// Builds the frame for time `t` (unix seconds) from one gather, showing `hints` (the hints
    /// derivation's latest advice).
    pub fn tick(&mut self, t: f64, families: &[Metric], hints: Vec<Hint>) -> Option<Frame> {
        self.advance(t, families, Some(hints))
    }

    /// What a tick keeps when nobody watches: the history point, without the frame (nor the alert
    /// conditions, which only the frame and the continuous profiler read, and the profiler keeps the
    /// page watched).
    pub fn observe(&mut self, t: f64, families: &[Metric]) {
        self.advance(t, families, None);
    }

    /// The history point for time `t`; the frame too when there are `hints` to show (a frame is
    /// rendered).
    fn advance(&mut self, t: f64, families: &[Metric], hints: Option<Vec<Hint>>) -> Option<Frame> {
        // The history point reads only HISTORY_READS (a gather for nobody watching holds only those);
        // the frame reads everything.
        let f = match hints {
            None => Families::declared(families, HISTORY_READS),
            Some(_) => Families::new(families),
        };
        let up = f.sum(&catalogue::TARGET_UP, &[]).unwrap_or(0.0);
        let info = f.series(&catalogue::TARGET_INFO).next();
        let pid = info.and_then(|s| label(s, "pid")).map(str::to_owned);
        let start = f.sum(&catalogue::PROCESS_START_TIME, &[]);
        if f.follow_instance(&mut self.target_key) {
            // Another process: its counters start again.
            self.prev = None;
        }

        // Counters and their per-second rates.
        let psi = |res: &str| {
            f.sum(
                &catalogue::PRESSURE_STALLED,
                &[("resource", res), ("kind", "some"), ("scope", "cgroup")],
            )
            .or_else(|| {
                f.sum(
                    &catalogue::PRESSURE_STALLED,
                    &[("resource", res), ("kind", "some"), ("scope", "system")],
                )
            })
        };
        let now = Counters {
            t,
            requests: f
                .series(&catalogue::REQUEST_DURATION)
                .filter_map(|s| match s.value {
                    Value::Histogram { count, .. } => Some(count as f64),
                    _ => None,
                })
                .fold(None, |n, c| Some(n.unwrap_or(0.0) + c)),
            gc: f.max_of_sums(&catalogue::GC_PAUSE, "source"),
            safepoint: f.sum(&catalogue::SAFEPOINT, &[]),
            throttled: f.sum(&catalogue::CGROUP_CPU_THROTTLED, &[]),
            throttled_periods: f.sum(&catalogue::CGROUP_CPU_THROTTLED_PERIODS, &[]),
            periods: f.sum(&catalogue::CGROUP_CPU_PERIODS, &[]),
            cpu: f.sum(&catalogue::PROCESS_CPU_TIME, &[]),
            psi: [psi("cpu"), psi("memory"), psi("io")],
        };
        let prev = self.prev.unwrap_or_default();
        let dt = if self.prev.is_some() { t - prev.t } else { 0.0 };
        let rate = |n: Option<f64>, p: Option<f64>| per_second(n, p, dt);
        // Time per second of wall time that can be at most all of it (the app stood still, some task
        // stalled): two counter reads a tick apart are taken a few ms away from the tick's clock, so
        // the quotient jitters above 1 under load (100.4% was seen) and is clamped to what it measures.
        let share = |n: Option<f64>, p: Option<f64>| rate(n, p).map(|r| r.clamp(0.0, 1.0));
        let req_rate = rate(now.requests, prev.requests);
        let gc_rate = share(now.gc, prev.gc);
        let safepoint_rate = share(now.safepoint, prev.safepoint);
        let throttled_rate = rate(now.throttled, prev.throttled);
        let throttled_ratio = match (
            rate(now.throttled_periods, prev.throttled_periods),
            rate(now.periods, prev.periods),
        ) {
            (Some(a), Some(b)) if b > 0.0 => Some((a / b).clamp(0.0, 1.0)),
            _ => None,
        };
        let cpu_cores = rate(now.cpu, prev.cpu);
        let psi_rates: Vec<Option<f64>> = (0..3).map(|i| share(now.psi[i], prev.psi[i])).collect();
        self.prev = Some(now);

        // RED over the snapshot window.
        let snap = Self::red_snapshot(&f, t);
        let base = self.red.front().cloned();
        if self
            .red
            .back()
            .is_none_or(|b| t - b.t >= RED_SNAPSHOT_EVERY - 0.5)
        {
            self.red.push_back(snap.clone());
            while self.red.len() > RED_SNAPSHOTS {
                self.red.pop_front();
            }
        }
        let window = base.as_ref().map_or(0.0, |b| t - b.t);
        let all = snap.all.since(base.as_ref().map(|b| &b.all));
        let p50 = all.quantile(0.5);
        let p99 = all.quantile(0.99);
        let error_ratio = (all.count > 0.0).then(|| all.errors / all.count);
        let window_rate = (window > 0.0).then(|| all.count / window);
        let mut ops: Vec<OperationRow> = snap
            .ops
            .iter()
            .map(|(k, h)| {
                let d = h.since(base.as_ref().and_then(|b| b.ops.get(k)));
                OperationRow {
                    service: k.0.clone(),
                    operation: k.1.clone(),
                    rate: if window > 0.0 { d.count / window } else { 0.0 },
                    error_ratio: if d.count > 0.0 {
                        d.errors / d.count
                    } else {
                        0.0
                    },
                    p99: d.quantile(0.99),
                }
            })
            .filter(|o| o.p99.is_some())
            .collect();
        ops.sort_by(|a, b| {
            b.p99
                .partial_cmp(&a.p99)
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let slowest: Vec<OperationRow> = ops.iter().take(TOP_OPERATIONS).cloned().collect();
        ops.sort_by(|a, b| {
            b.error_ratio
                .partial_cmp(&a.error_ratio)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(
                    b.rate
                        .partial_cmp(&a.rate)
                        .unwrap_or(std::cmp::Ordering::Equal),
                )
        });
        let failing: Vec<OperationRow> = ops
            .iter()
            .filter(|o| o.error_ratio > 0.0)
            .take(TOP_OPERATIONS)
            .cloned()
            .collect();
        let has_red = snap.all.count > 0.0;
        // The latency rule is per operation with more than 0.1 requests per second, as in the rule file.
        let busiest_p99 = ops
            .iter()
            .filter(|o| o.rate > 0.1)
            .filter_map(|o| o.p99)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));

        // Pauses.
        let gc_max = f.max(&catalogue::GC_PAUSE_MAX, &[]);

        // Memory.
        let rss = f.sum(&catalogue::PROCESS_MEMORY_USAGE, &[]);
        // The heap the memory signal reads (runtime metrics or the JVM's live set), by its typed family.
        let heap = f.sum(&catalogue::MEMORY_HEAP, &[]);
        let heap_limit = f.sum(&catalogue::MEMORY_HEAP_LIMIT, &[]);
        let cgroup = f.sum(&catalogue::CGROUP_MEMORY_USAGE, &[]);
        let cgroup_limit = f.sum(&catalogue::CGROUP_MEMORY_LIMIT, &[]);

        // Pools.
        let mut pools: Vec<PoolView> = Vec::new();
        for s in f.series(&catalogue::POOL_UTILIZATION) {
            if pools.len() >= POOL_LIMIT {
                break;
            }
            let (Some(pool), Some(kind)) = (label(s, "pool"), label(s, "kind")) else {
                continue;
            };
            let l = [("pool", pool), ("kind", kind)];
            pools.push(PoolView {
                pool: pool.to_owned(),
                kind: kind.to_owned(),
                utilization: scalar(s),
                used: f.sum(&catalogue::POOL_USED, &l),
                max: f.sum(&catalogue::POOL_MAX, &l),
                pending: f.sum(&catalogue::POOL_PENDING, &l),
            });
        }
        pools.sort_by(|a, b| {
            b.utilization
                .partial_cmp(&a.utilization)
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let cpu_quota = pools
            .iter()
            .find(|p| p.kind == "cpu")
            .and_then(|p| p.utilization);
        let pool_max_util = pools
            .iter()
            .filter(|p| p.kind != "cpu")
            .filter_map(|p| p.utilization)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));

        let point = HistoryPoint {
            t,
            values: [
                req_rate,
                error_ratio,
                p99,
                gc_rate,
                gc_max,
                throttled_rate,
                rss,
                heap,
                cgroup,
                pool_max_util,
                cpu_cores,
                psi_rates[0],
            ]
            .map(|v| v.map_or(f32::NAN, |x| x as f32)),
        };
        self.history.push(point);
        let hints = hints?;

        // What only the frame shows: the event loop, the memory windows, their slopes and verdicts.
        let event_loop_p99 = f.max(&catalogue::EVENT_LOOP_DELAY, &[("statistic", "p99")]);
        let heap_status = f
            .series(&catalogue::MEMORY_GROWTH_STATUS)
            .filter(|s| label(s, "signal") == Some("heap") && scalar(s) == Some(1.0))
            .filter_map(|s| label(s, "status"))
            .next();
        let mut growth: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
        for s in f.series(&catalogue::MEMORY_GROWTH) {
            let (Some(sig), Some(w), Some(v)) = (label(s, "signal"), label(s, "window"), scalar(s))
            else {
                continue;
            };
            growth
                .entry(sig.to_owned())
                .or_default()
                .insert(w.to_owned(), v);
        }
        let ttl = f.max(&catalogue::MEMORY_TIME_TO_LIMIT, &[]).map(|_| {
            f.series(&catalogue::MEMORY_TIME_TO_LIMIT)
                .filter_map(scalar)
                .fold(f64::INFINITY, f64::min)
        });
        let leak: Vec<String> = f
            .series(&catalogue::MEMORY_LEAK_SUSPECTED)
            .filter(|s| scalar(s) == Some(1.0))
            .filter_map(|s| label(s, "signal").map(str::to_owned))
            .collect();
        let leak_flag = f.max(&catalogue::MEMORY_LEAK_SUSPECTED, &[]);

        // Alerts, evaluated on the same thresholds as the shipped rules (instant condition, plus how long
        // it has held against the rule's `for:`).
        let memory_ratio = match (cgroup, cgroup_limit) {
            (Some(u), Some(l)) if l > 0.0 => Some(u / l),
            _ => None,
        };
        let measure = |m: Measure| -> Option<f64> {
            match m {
                Measure::TargetUp => Some(up),
                Measure::LatencyP99 => busiest_p99,
                Measure::ErrorRatio => {
                    error_ratio.filter(|_| window_rate.is_some_and(|r| r > 0.05))
                }
                Measure::GcPauseMax => gc_max,
                Measure::PauseTimeRatio => gc_rate,
                Measure::ThrottledRatio => throttled_ratio,
                Measure::LeakSuspected => leak_flag,
                Measure::TimeToLimit => ttl,
                Measure::MemoryUsedRatio => memory_ratio,
                Measure::CpuQuotaRatio => cpu_quota,
                Measure::PoolUtilization => pool_max_util,
                Measure::EventLoopP99 => event_loop_p99,
            }
        };
        let mut alerts = Vec::new();
        for (i, r) in RULES.iter().enumerate() {
            let v = measure(r.measure);
            let holds = v.is_some_and(|v| r.holds(v));
            if !holds {
                self.alert_since[i] = None;
                continue;
            }
            if self.alert_since[i].is_none() && self.onsets.len() < RULES.len() {
                self.onsets.push(Onset {
                    rule: *r,
                    value: v,
                    t,
                });
            }
            let since = *self.alert_since[i].get_or_insert(t);
            let held = t - since;
            alerts.push(AlertRow {
                alert: r.alert,
                severity: r.severity,
                value: v,
                threshold: r.threshold,
                held_seconds: held,
                for_seconds: r.for_seconds,
                state: if held >= r.for_seconds {
                    "firing"
                } else {
                    "pending"
                },
            });
        }

        // Verdicts, on the alerts' numbers.
        let pct = |v: f64| format!("{:.1}%", v * 100.0);
        let ms = |v: f64| format!("{:.0} ms", v * 1000.0);
        let slow = if !has_red {
            (
                "none",
                format!("no request spans yet. {}", self.listen_hint),
            )
        } else if error_ratio.is_some_and(|e| e > threshold(Measure::ErrorRatio, "critical")) {
            (
                "critical",
                format!(
                    "failing: {} of requests are errors",
                    pct(error_ratio.unwrap_or(0.0))
                ),
            )
        } else if error_ratio.is_some_and(|e| e > threshold(Measure::ErrorRatio, "warning"))
            || p99.is_some_and(|p| p > threshold(Measure::LatencyP99, "warning"))
        {
            (
                "warning",
                format!(
                    "slow or failing: p99 {}, {} errors",
                    p99.map_or("-".into(), ms),
                    pct(error_ratio.unwrap_or(0.0))
                ),
            )
        } else if window_rate.unwrap_or(0.0) == 0.0 && req_rate.unwrap_or(0.0) == 0.0 {
            ("ok", "no requests in the last minute".to_owned())
        } else {
            (
                "ok",
                format!(
                    "fine: p99 {}, {} errors",
                    p99.map_or("-".into(), ms),
                    pct(error_ratio.unwrap_or(0.0))
                ),
            )
        };
        let pausing = if gc_max.is_some_and(|g| g > threshold(Measure::GcPauseMax, "warning")) {
            (
                "warning",
                format!("GC pauses up to {}", ms(gc_max.unwrap_or(0.0))),
            )
        } else if gc_rate.is_some_and(|g| g > threshold(Measure::PauseTimeRatio, "warning")) {
            (
                "warning",
                format!("{} of the time in GC pauses", pct(gc_rate.unwrap_or(0.0))),
            )
        } else if throttled_ratio.is_some_and(|r| r > threshold(Measure::ThrottledRatio, "warning"))
        {
            (
                "warning",
                format!(
                    "CPU-throttled in {} of periods",
                    pct(throttled_ratio.unwrap_or(0.0))
                ),
            )
        } else if up == 0.0 {
            ("none", "no target attached".to_owned())
        } else {
            ("ok", "no long pauses".to_owned())
        };
        let leaking = if ttl.is_some_and(|v| v < threshold(Measure::TimeToLimit, "critical")) {
            (
                "critical",
                format!(
                    "memory limit reached in {:.1} h at the current growth",
                    ttl.unwrap_or(0.0) / 3600.0
                ),
            )
        } else if !leak.is_empty() {
            (
                "warning",
                format!("sustained growth of {}", leak.join(", ")),
            )
        } else if memory_ratio.is_some_and(|r| r > threshold(Measure::MemoryUsedRatio, "warning")) {
            (
                "warning",
                format!(
                    "{} of the memory limit in use",
                    pct(memory_ratio.unwrap_or(0.0))
                ),
            )
        } else if up == 0.0 {
            ("none", "no target attached".to_owned())
        } else {
            ("ok", "no sustained growth".to_owned())
        };
        let saturated =
            if cpu_quota.is_some_and(|c| c > threshold(Measure::CpuQuotaRatio, "critical")) {
                (
                    "critical",
                    format!("CPU at {} of its quota", pct(cpu_quota.unwrap_or(0.0))),
                )
            } else if let Some(p) = pools.iter().find(|p| {
                p.kind != "cpu"
                    && p.utilization
                        .is_some_and(|u| u > threshold(Measure::PoolUtilization, "warning"))
            }) {
                (
                    "warning",
                    format!(
                        "{} pool {} at {}",
                        p.kind,
                        p.pool,
                        pct(p.utilization.unwrap_or(0.0))
                    ),
                )
            } else if cpu_quota.is_some_and(|c| c > threshold(Measure::CpuQuotaRatio, "warning")) {
                (
                    "warning",
                    format!("CPU at {} of its quota", pct(cpu_quota.unwrap_or(0.0))),
                )
            } else if pools.is_empty() {
                ("none", "no pools known yet".to_owned())
            } else {
                (
                    "ok",
                    format!(
                        "fullest pool at {}",
                        pct(pools
                            .iter()
                            .filter_map(|p| p.utilization)
                            .fold(0.0, f64::max))
                    ),
                )
            };

        let uptime = start.filter(|_| up > 0.0).map(|s| t - s);
        let targets = self.targets(&f, t);
        Some(Frame {
            t,
            point,
            targets,
            target: TargetPanel {
                up: up > 0.0,
                pid,
                comm: info.and_then(|s| label(s, "comm")).map(str::to_owned),
                runtime: info.and_then(|s| label(s, "runtime")).map(str::to_owned),
                uptime_seconds: uptime,
                restarts: f.sum(&catalogue::TARGET_RESTARTS, &[]),
                selected_by: self.selected_by.clone(),
            },
            red: RedPanel {
                has_data: has_red,
                window_seconds: window,
                rate: window_rate,
                rate_now: req_rate,
                error_ratio,
                p50,
                p99,
                requests: all.count,
                requests_total: snap.all.count,
                errors: all.errors,
                slowest,
                failing,
                otlp_hint: self.listen_hint.clone(),
            },
            pauses: PausePanel {
                gc_seconds_per_second: gc_rate,
                gc_max_seconds: gc_max,
                safepoint_seconds_per_second: safepoint_rate,
                throttled_seconds_per_second: throttled_rate,
                throttled_ratio,
                psi_some: PressurePanel {
                    cpu: psi_rates[0],
                    memory: psi_rates[1],
                    io: psi_rates[2],
                },
                event_loop_p99_seconds: event_loop_p99,
            },
            memory: MemoryPanel {
                rss_bytes: rss,
                heap_after_gc_bytes: heap,
                heap_limit_bytes: heap_limit,
                heap_status: heap_status.map(str::to_owned),
                cgroup_bytes: cgroup,
                cgroup_limit_bytes: cgroup_limit,
                growth_bytes_per_second: growth,
                time_to_limit_seconds: ttl,
                leak_suspected: leak,
            },
            db: db_panel(&snap, base.as_ref(), window, &pools),
            pools,
            verdicts: Verdicts {
                slow: slow.into(),
                pausing: pausing.into(),
                leaking: leaking.into(),
                saturated: saturated.into(),
            },
            alerts,
            hints,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Point as ModelPoint;

    /// The frame as the page receives it.
    trait TickJson {
        fn tick_json(&mut self, t: f64, families: &[Metric]) -> serde_json::Value;
    }

    impl TickJson for LiveFrames {
        fn tick_json(&mut self, t: f64, families: &[Metric]) -> serde_json::Value {
            serde_json::to_value(self.tick(t, families, Vec::new())).unwrap()
        }
    }

    #[test]
    fn quantile_matches_prometheus_interpolation() {
        let b = [0.1, 0.5, 1.0, f64::INFINITY];
        // 10 in (0,0.1], 10 in (0.1,0.5]: p50 is the top of the first bucket, p75 halfway in the second.
        let c = [10.0, 20.0, 20.0, 20.0];
        assert_eq!(bucket_quantile(0.5, &b, &c), Some(0.1));
        assert!((bucket_quantile(0.75, &b, &c).unwrap() - 0.3).abs() < 1e-12);
        // Rank in +Inf: the highest finite bound.
        assert_eq!(bucket_quantile(0.99, &b, &[0.0, 0.0, 0.0, 5.0]), Some(1.0));
        assert_eq!(bucket_quantile(0.5, &b, &[0.0; 4]), None);
    }

    fn hist(op: &str, outcome: &str, counts: [u64; 3]) -> ModelPoint {
        let c = counts;
        ModelPoint {
            start_unix_nanos: 0,
            attributes: vec![
                ("service".into(), "svc".into()),
                ("operation".into(), op.into()),
                ("kind".into(), "server".into()),
                ("outcome".into(), outcome.into()),
            ],
            value: Value::Histogram {
                buckets: vec![(0.1, c[0]), (1.0, c[1]), (f64::INFINITY, c[2])],
                sum: 0.0,
                count: c[2],
                exemplars: vec![],
                native: None,
            },
        }
    }

    /// A RED series with exponential buckets holding `values` beside classic buckets of 0.1 s and 1 s.
    fn native_hist(op: &str, values: &[f64]) -> ModelPoint {
        let mut n = Exponential::new(4, 1e-6);
        for v in values {
            n.record(*v, 160);
        }
        let below = |b: f64| values.iter().filter(|v| **v <= b).count() as u64;
        let mut p = hist(op, "ok", [below(0.1), below(1.0), values.len() as u64]);
        if let Value::Histogram { native, .. } = &mut p.value {
            *native = Some(Box::new(n));
        }
        p
    }

    #[test]
    fn percentiles_come_from_the_exponential_buckets_when_there_are_any() {
        let mut s = LiveFrames::new(900, "pid".into(), "http://127.0.0.1:4318".into());
        // Before the window: 100 fast requests. In it: 100 more at 0.2..0.6 s, p99 0.596 s, which the
        // classic buckets could only place between 0.1 s and 1 s.
        let fast: Vec<f64> = vec![0.01; 100];
        s.tick_json(1000.0, &families(vec![native_hist("/a", &fast)], 1.0));
        let slow: Vec<f64> = (0..100).map(|i| 0.2 + 0.004 * f64::from(i)).collect();
        let both: Vec<f64> = fast.iter().chain(&slow).copied().collect();
        let f = s.tick_json(1010.0, &families(vec![native_hist("/a", &both)], 1.0));
        let p99 = f["red"]["p99"].as_f64().unwrap_or(0.0);
        assert!((p99 / 0.596 - 1.0).abs() < 0.045, "{f}");
        let p50 = f["red"]["p50"].as_f64().unwrap_or(0.0);
        assert!((p50 / 0.4 - 1.0).abs() < 0.045, "{f}");
    }

    fn families(series: Vec<ModelPoint>, up: f64) -> Vec<Metric> {
        let mut red = catalogue::REQUEST_DURATION.metric();
        red.points = series;
        vec![
            catalogue::TARGET_UP.metric().with(&[], Value::Gauge(up)),
            red,
        ]
    }

    #[test]
    fn red_window_rates_quantiles_and_verdicts() {
        let mut s = LiveFrames::new(900, "pid".into(), "http://127.0.0.1:4318".into());
        let f0 = s.tick_json(1000.0, &families(vec![], 1.0));
        assert_eq!(f0["verdicts"]["slow"]["level"], "none");
        assert!(f0["verdicts"]["slow"]["text"]
            .as_str()
            .unwrap()
            .contains("4318"));
        let f1 = s.tick_json(
            1010.0,
            &families(
                vec![
                    hist("/a", "ok", [80, 90, 90]),
                    hist("/b", "error", [0, 5, 10]),
                ],
                1.0,
            ),
        );
        assert_eq!(f1["red"]["requests"], 100.0);
        assert!((f1["red"]["rate"].as_f64().unwrap() - 10.0).abs() < 1e-9);
        assert!((f1["red"]["error_ratio"].as_f64().unwrap() - 0.1).abs() < 1e-9);
        assert_eq!(f1["verdicts"]["slow"]["level"], "warning");
        assert_eq!(f1["red"]["failing"][0]["operation"], "/b");
        assert_eq!(f1["red"]["slowest"][0]["operation"], "/b");
        // The error-ratio rule holds (ratio 0.1 is not above the critical 0.10, but above 0.05).
        let alerts: Vec<&str> = f1["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["alert"].as_str().unwrap())
            .collect();
        assert!(alerts.contains(&"VitalsErrorRatioHigh"), "{alerts:?}");
        assert!(!alerts.contains(&"VitalsErrorRatioCritical"), "{alerts:?}");
        assert_eq!(f1["alerts"][0]["state"], "pending");
        // Latency is judged per operation: /b's p99 falls in +Inf, so the highest finite bound, 1 s.
        let p99 = f1["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["alert"] == "VitalsLatencyP99High")
            .expect("p99 alert");
        assert_eq!(p99["value"], 1.0);
    }

    #[test]
    fn target_down_raises_the_rule_after_its_for() {
        let mut s = LiveFrames::new(10, "pid".into(), String::new());
        let mut last = serde_json::Value::Null;
        for i in 0..=121 {
            last = s.tick_json(i as f64, &families(vec![], 0.0));
        }
        let a = &last["alerts"][0];
        assert_eq!(a["alert"], "VitalsTargetDown");
        assert_eq!(a["state"], "firing");
        assert_eq!(last["verdicts"]["pausing"]["level"], "none");
    }

    #[test]
    fn event_loop_p99_is_the_worst_runtime_s_p99_statistic() {
        let mut s = LiveFrames::new(10, "pid".into(), String::new());
        let mut m = families(vec![], 1.0);
        let mut delay = catalogue::EVENT_LOOP_DELAY.metric();
        delay.push(
            &[("runtime", "node"), ("statistic", "p50")],
            Value::Gauge(0.011),
        );
        delay.push(
            &[("runtime", "node"), ("statistic", "p99")],
            Value::Gauge(0.042),
        );
        delay.push(
            &[("runtime", "go"), ("statistic", "p99")],
            Value::Gauge(0.003),
        );
        m.push(delay);
        let f = s.tick_json(1.0, &m);
        assert_eq!(f["pauses"]["event_loop_p99_seconds"], 0.042, "{f}");
    }

    #[test]
    fn db_panel_lists_slow_queries_n_plus_one_runs_and_db_pools_beside_them() {
        let mut s = LiveFrames::new(10, "pid".into(), String::new());
        let frame = |s: &mut LiveFrames, t: f64, fast: u64, slow: u64, runs: f64| {
            let mut q = catalogue::DB_QUERY_DURATION.metric();
            for (query, le_fast, n) in [("SELECT a", true, fast), ("SELECT b", false, slow)] {
                let buckets = if le_fast {
                    vec![(0.001, n), (0.1, n), (f64::INFINITY, n)]
                } else {
                    vec![(0.001, 0), (0.1, n), (f64::INFINITY, n)]
                };
                q.push(
                    &[
                        ("service", "shop"),
                        ("db_system", "postgresql"),
                        ("query", query),
                        ("outcome", "ok"),
                    ],
                    Value::Histogram {
                        buckets,
                        sum: 0.0,
                        count: n,
                        exemplars: vec![],
                        native: None,
                    },
                );
            }
            let n1 = catalogue::DB_N_PLUS_ONE.metric().with(
                &[
                    ("service", "shop"),
                    ("operation", "/authors"),
                    ("query", "SELECT b"),
                ],
                Value::Sum(runs),
            );
            let l = [("pool", "shop-db"), ("kind", "db")];
            let mut m = families(vec![], 1.0);
            m.extend([
                q,
                n1,
                catalogue::POOL_UTILIZATION
                    .metric()
                    .with(&l, Value::Gauge(1.0)),
                catalogue::POOL_USED.metric().with(&l, Value::Gauge(10.0)),
                catalogue::POOL_MAX.metric().with(&l, Value::Gauge(10.0)),
                catalogue::POOL_PENDING.metric().with(&l, Value::Gauge(3.0)),
            ]);
            s.tick_json(t, &m)
        };
        frame(&mut s, 1000.0, 100, 5, 4.0);
        let f = frame(&mut s, 1010.0, 200, 25, 6.0);
        let db = &f["db"];
        assert_eq!(db["slowest_queries"][0]["query"], "SELECT b", "{db}");
        assert!((db["slowest_queries"][0]["rate"].as_f64().unwrap() - 2.0).abs() < 1e-9);
        assert_eq!(db["n_plus_one"][0]["operation"], "/authors");
        assert_eq!(
            db["n_plus_one"][0]["runs"], 2.0,
            "runs in the window, not since start"
        );
        assert_eq!(db["n_plus_one"][0]["runs_total"], 6.0);
        assert_eq!(db["pools"][0]["pool"], "shop-db");
        assert_eq!(db["pools"][0]["pending"], 3.0);
    }

    #[test]
    fn the_history_point_reads_only_the_families_it_declares() {
        // A gather for nobody watching copies only HISTORY_READS (and the hints' READS): the history
        // from it equals the history from everything, and reading anything else panics (debug builds).
        let needed = [crate::signal::hints::READS, HISTORY_READS];
        let mut full = LiveFrames::new(10, "pid".into(), String::new());
        let mut kept = LiveFrames::new(10, "pid".into(), String::new());
        for i in 0..6 {
            let all = catalogue::every_family(f64::from(i));
            let only = catalogue::gathered_for(&needed, &all);
            assert!(
                only.len() < all.len() / 2,
                "{} of {}",
                only.len(),
                all.len()
            );
            full.observe(1000.0 + 10.0 * f64::from(i), &all);
            kept.observe(1000.0 + 10.0 * f64::from(i), &only);
        }
        let bits = |s: &LiveFrames| -> Vec<Vec<u32>> {
            s.history()
                .points()
                .map(|p| p.values.iter().map(|v| v.to_bits()).collect())
                .collect()
        };
        assert_eq!(bits(&full), bits(&kept));
        let last = full.history().points().last().copied().expect("points");
        let known = last.values.iter().filter(|v| !v.is_nan()).count();
        assert!(known >= 10, "the history saw the families: {last:?}");
    }
}
