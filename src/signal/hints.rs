//! Tuning hints: resource requests, limits and pool sizes recommended from vitals' own per-second history
//! of this replica, each with the history it rests on, or "not enough data" until that history is long
//! enough. Plain synchronous code: the caller passes the time with every observation.
//!
//! Method (docs/hints.md compares it with the Kubernetes VPA recommender and KRR):
//! - CPU request: the 90th percentile of per-second CPU use, kept in a fixed histogram of exponential
//!   buckets (5% apart, as the VPA recommender does), plus a 15% margin.
//! - CPU limit: the share of CFS periods that were throttled over the whole history.
//! - Memory request and limit: the peak working set (RSS, else cgroup usage) plus 15%; after an OOM kill
//!   the limit is raised to 1.2 × the larger of the peak and the limit that was hit.
//! - JVM heap: when the heap maximum leaves less than 25% of the container limit for non-heap memory, a
//!   heap of 75% of the limit.
//! - DB pools: a pool that sat at 100% with requests pending in at least half of its samples.
//! - File descriptors: peak use above 80% of the limit; recommends twice the peak.

use std::collections::HashMap;

use crate::catalogue;
use crate::model::{Collector, Metric, Value};

/// Lowest CPU use the histogram resolves, in cores.
const CPU_FIRST_BUCKET: f64 = 0.001;
/// Ratio between consecutive CPU buckets.
const CPU_BUCKET_RATIO: f64 = 1.05;
/// Buckets: 0.001 × 1.05^N reaches above 1000 cores at N = 284.
const CPU_BUCKETS: usize = 286;
/// DB pools tracked; pool names come from the app, so the map is bounded.
const POOL_LIMIT: usize = 32;

/// How the hints are computed; the defaults are the documented method.
#[derive(Debug, Clone, Copy)]
pub struct HintPolicy {
    /// History needed before a hint gives a value, in seconds.
    pub min_history_seconds: f64,
    /// Percentile of CPU use the request covers (0..1).
    pub cpu_percentile: f64,
    /// Safety margin added to CPU and memory recommendations (0.15 = 15%).
    pub margin: f64,
    /// Factor applied to the memory limit after an OOM kill.
    pub oom_bump: f64,
    /// Largest share of the container limit a JVM heap should take.
    pub heap_share: f64,
    /// Throttled-period ratio above which the CPU limit is reported as throttling.
    pub throttled_ratio: f64,
    /// fd use (of the limit) above which a higher limit is recommended.
    pub fd_ratio: f64,
    /// Share of a pool's samples at 100% with pending requests that makes it saturated.
    pub pool_saturated_share: f64,
}

impl Default for HintPolicy {
    fn default() -> Self {
        HintPolicy {
            min_history_seconds: 600.0,
            cpu_percentile: 0.9,
            margin: 0.15,
            oom_bump: 1.2,
            heap_share: 0.75,
            throttled_ratio: 0.1,
            fd_ratio: 0.8,
            pool_saturated_share: 0.5,
        }
    }
}

/// One pool's reading in a tick.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolUse {
    /// Pool name.
    pub pool: String,
    /// In use.
    pub used: f64,
    /// Maximum size.
    pub max: f64,
    /// Requests waiting.
    pub pending: f64,
}

/// What one tick tells the hints. Counters are cumulative; absent readings are `None`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageTick {
    /// Unix time of the tick, seconds.
    pub t: f64,
    /// Cumulative process CPU seconds.
    pub cpu_seconds: Option<f64>,
    /// Cumulative throttled CFS periods and all CFS periods.
    pub cfs_periods: Option<(f64, f64)>,
    /// Working set: the target's RSS, else cgroup memory usage, bytes.
    pub memory_bytes: Option<f64>,
    /// Cgroup memory limit, bytes (absent when unlimited).
    pub memory_limit_bytes: Option<f64>,
    /// Cumulative OOM kills in the cgroup.
    pub oom_kills: Option<f64>,
    /// JVM maximum heap, bytes.
    pub heap_max_bytes: Option<f64>,
    /// Open fds and their limit.
    pub fds: Option<(f64, f64)>,
    /// DB connection pools.
    pub db_pools: Vec<PoolUse>,
}

#[derive(Debug, Clone, Default)]
struct PoolHistory {
    samples: u64,
    saturated: u64,
    max: f64,
    first_t: f64,
}

/// One recommendation, or the reason there is none yet.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Hint {
    /// What it is about: `cpu_request`, `cpu_limit`, `memory_request`, `memory_limit`, `jvm_heap_max`,
    /// `db_pool_max`, `fd_limit`.
    pub resource: &'static str,
    /// The pool it concerns, for pool hints.
    pub pool: Option<String>,
    /// Unit of `value`: `cores`, `bytes`, `ratio`, `connections`, `files`.
    pub unit: &'static str,
    /// The recommended value; `None` while there is not enough data or nothing to change.
    pub value: Option<f64>,
    /// Seconds of history the hint rests on.
    pub history_seconds: f64,
    /// True when the current setting should change.
    pub act: bool,
    /// One line a person can act on.
    pub text: String,
}

/// The history the hints are computed from: fixed-size aggregates, never the raw samples.
#[derive(Debug, Clone)]
pub struct UsageHistory {
    cpu_hist: Vec<u32>,
    cpu_samples: u64,
    first_t: Option<f64>,
    last_t: f64,
    prev_cpu: Option<(f64, f64)>,
    first_periods: Option<(f64, f64)>,
    last_periods: Option<(f64, f64)>,
    memory_peak: Option<f64>,
    memory_limit: Option<f64>,
    last_oom: Option<f64>,
    oom_limit: Option<f64>,
    heap_max: Option<f64>,
    fd_peak: Option<f64>,
    fd_limit: Option<f64>,
    pools: HashMap<String, PoolHistory>,
}

impl Default for UsageHistory {
    fn default() -> Self {
        Self::new()
    }
}

fn cpu_bucket(cores: f64) -> usize {
    if cores <= CPU_FIRST_BUCKET {
        return 0;
    }
    let i = ((cores / CPU_FIRST_BUCKET).ln() / CPU_BUCKET_RATIO.ln()).ceil();
    (i as usize).min(CPU_BUCKETS - 1)
}

fn cpu_bucket_upper(i: usize) -> f64 {
    CPU_FIRST_BUCKET * CPU_BUCKET_RATIO.powi(i as i32)
}

fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

fn fmt_bytes(b: f64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if b >= 1024.0 * MIB {
        format!("{:.2} GiB", b / (1024.0 * MIB))
    } else {
        format!("{:.0} MiB", b / MIB)
    }
}

impl UsageHistory {
    /// An empty history (about 2.3 KiB of CPU histogram plus the bounded pool map).
    pub fn new() -> Self {
        UsageHistory {
            cpu_hist: vec![0; CPU_BUCKETS],
            cpu_samples: 0,
            first_t: None,
            last_t: 0.0,
            prev_cpu: None,
            first_periods: None,
            last_periods: None,
            memory_peak: None,
            memory_limit: None,
            last_oom: None,
            oom_limit: None,
            heap_max: None,
            fd_peak: None,
            fd_limit: None,
            pools: HashMap::new(),
        }
    }

    /// Forgets everything, as when a different target is attached.
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    /// Seconds of history so far.
    pub fn history_seconds(&self) -> f64 {
        self.first_t.map_or(0.0, |f| (self.last_t - f).max(0.0))
    }

    /// Adds one tick.
    pub fn observe(&mut self, u: &UsageTick) {
        if self.first_t.is_none() {
            self.first_t = Some(u.t);
        }
        self.last_t = u.t;
        if let Some(cpu) = u.cpu_seconds {
            if let Some((pt, pc)) = self.prev_cpu {
                let dt = u.t - pt;
                if dt > 0.0 && cpu >= pc {
                    // Readings come every second while someone watches or scrapes that often, every idle
                    // interval otherwise: each counts for the seconds it covers, so the percentile is one
                    // of time, whatever the pace.
                    let cores = (cpu - pc) / dt;
                    let seconds = dt.round().clamp(1.0, 3600.0) as u32;
                    let b = &mut self.cpu_hist[cpu_bucket(cores)];
                    *b = b.saturating_add(seconds);
                    self.cpu_samples += u64::from(seconds);
                }
            }
            self.prev_cpu = Some((u.t, cpu));
        }
        if let Some(p) = u.cfs_periods {
            self.first_periods.get_or_insert(p);
            self.last_periods = Some(p);
        }
        let limit_now = u.memory_limit_bytes;
        if let Some(oom) = u.oom_kills {
            // Any kill the cgroup counts, also one from before vitals attached: the limit in force when
            // the count was first seen or last grew is the one that was hit.
            if oom > 0.0 && self.last_oom.is_none_or(|prev| oom > prev) {
                self.oom_limit = max_opt(self.oom_limit, limit_now.or(self.memory_limit));
            }
            self.last_oom = Some(oom);
        }
        self.memory_peak = max_opt(self.memory_peak, u.memory_bytes);
        if limit_now.is_some() {
            self.memory_limit = limit_now;
        }
        if u.heap_max_bytes.is_some() {
            self.heap_max = u.heap_max_bytes;
        }
        if let Some((used, limit)) = u.fds {
            self.fd_peak = max_opt(self.fd_peak, Some(used));
            self.fd_limit = Some(limit);
        }
        for p in &u.db_pools {
            if !self.pools.contains_key(&p.pool) && self.pools.len() >= POOL_LIMIT {
                continue;
            }
            let h = self.pools.entry(p.pool.clone()).or_insert(PoolHistory {
                first_t: u.t,
                ..Default::default()
            });
            h.samples += 1;
            h.max = p.max;
            if p.max > 0.0 && p.used >= p.max && p.pending > 0.0 {
                h.saturated += 1;
            }
        }
    }

    fn cpu_percentile(&self, q: f64) -> Option<f64> {
        if self.cpu_samples == 0 {
            return None;
        }
        let rank = (q * self.cpu_samples as f64).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (i, c) in self.cpu_hist.iter().enumerate() {
            seen += u64::from(*c);
            if seen >= rank {
                return Some(cpu_bucket_upper(i));
            }
        }
        None
    }

    /// The hints for the history so far.
    pub fn advice(&self, policy: &HintPolicy) -> Vec<Hint> {
        self.advice_with(policy, true)
    }

    /// The hints for the history so far, with their sentences when `texts` (the live page shows them;
    /// `/metrics` exposes only the values and the history, so a scrape formats none).
    pub fn advice_with(&self, policy: &HintPolicy, texts: bool) -> Vec<Hint> {
        macro_rules! text {
            ($($arg:tt)*) => {
                if texts { format!($($arg)*) } else { String::new() }
            };
        }
        let h = self.history_seconds();
        let enough = h >= policy.min_history_seconds;
        let wait = |resource: &'static str, unit: &'static str| Hint {
            resource,
            pool: None,
            unit,
            value: None,
            history_seconds: h,
            act: false,
            text: text!(
                "not enough data: {:.0}s of history, {:.0}s needed",
                h,
                policy.min_history_seconds
            ),
        };
        let mut out = Vec::new();

        // CPU request.
        match self.cpu_percentile(policy.cpu_percentile) {
            Some(p) if enough => {
                let v = p * (1.0 + policy.margin);
                out.push(Hint {
                    resource: "cpu_request",
                    pool: None,
                    unit: "cores",
                    value: Some(v),
                    history_seconds: h,
                    act: true,
                    text: text!(
                        "request {:.3} cores: p{:.0} of per-second use is {:.3} cores, plus {:.0}%",
                        v,
                        policy.cpu_percentile * 100.0,
                        p,
                        policy.margin * 100.0
                    ),
                });
            }
            _ => out.push(wait("cpu_request", "cores")),
        }

        // CPU limit throttling.
        match (self.first_periods, self.last_periods) {
            (Some((t0, p0)), Some((t1, p1))) if enough => {
                let periods = p1 - p0;
                if periods > 0.0 {
                    let ratio = ((t1 - t0) / periods).clamp(0.0, 1.0);
                    let act = ratio > policy.throttled_ratio;
                    out.push(Hint {
                        resource: "cpu_limit",
                        pool: None,
                        unit: "ratio",
                        value: Some(ratio),
                        history_seconds: h,
                        act,
                        text: if act {
                            text!(
                                "the CPU limit throttles {:.0}% of periods: raise or remove it",
                                ratio * 100.0
                            )
                        } else {
                            text!(
                                "the CPU limit throttles {:.1}% of periods: fine",
                                ratio * 100.0
                            )
                        },
                    });
                } else {
                    out.push(Hint {
                        text: text!("no CPU limit enforced (no CFS periods): nothing to throttle"),
                        ..wait("cpu_limit", "ratio")
                    });
                }
            }
            (None, _) if enough => out.push(Hint {
                text: text!("no CPU limit found for the target's cgroup"),
                ..wait("cpu_limit", "ratio")
            }),
            _ => out.push(wait("cpu_limit", "ratio")),
        }

        // Memory request and limit.
        match self.memory_peak {
            Some(peak) if enough => {
                let request = peak * (1.0 + policy.margin);
                let (limit, why) = match self.oom_limit {
                    Some(hit) => (
                        hit.max(peak) * policy.oom_bump,
                        text!(
                            "an OOM kill at a {} limit: {:.0}% above it",
                            fmt_bytes(hit),
                            (policy.oom_bump - 1.0) * 100.0
                        ),
                    ),
                    None => (
                        request,
                        text!(
                            "peak {} plus {:.0}%",
                            fmt_bytes(peak),
                            policy.margin * 100.0
                        ),
                    ),
                };
                out.push(Hint {
                    resource: "memory_request",
                    pool: None,
                    unit: "bytes",
                    value: Some(request),
                    history_seconds: h,
                    act: true,
                    text: text!(
                        "request {}: peak {} plus {:.0}%",
                        fmt_bytes(request),
                        fmt_bytes(peak),
                        policy.margin * 100.0
                    ),
                });
                out.push(Hint {
                    resource: "memory_limit",
                    pool: None,
                    unit: "bytes",
                    value: Some(limit),
                    history_seconds: h,
                    act: self.oom_limit.is_some() || self.memory_limit.is_none_or(|l| l < limit),
                    text: text!("limit {}: {why}", fmt_bytes(limit)),
                });
            }
            _ => {
                out.push(wait("memory_request", "bytes"));
                out.push(wait("memory_limit", "bytes"));
            }
        }

        // JVM heap against the container limit: needs no history, both are settings.
        if let (Some(heap), Some(limit)) = (self.heap_max, self.memory_limit) {
            let fits = heap <= limit * policy.heap_share;
            let v = limit * policy.heap_share;
            out.push(Hint {
                resource: "jvm_heap_max",
                pool: None,
                unit: "bytes",
                value: if fits { None } else { Some(v) },
                history_seconds: h,
                act: !fits,
                text: if fits {
                    text!(
                        "heap max {} leaves {} of the {} limit for non-heap memory: fine",
                        fmt_bytes(heap),
                        fmt_bytes(limit - heap),
                        fmt_bytes(limit)
                    )
                } else {
                    text!(
                        "heap max {} leaves only {} of the {} limit for metaspace, threads and buffers: \
                         use -Xmx{}m (or -XX:MaxRAMPercentage={:.0})",
                        fmt_bytes(heap),
                        fmt_bytes((limit - heap).max(0.0)),
                        fmt_bytes(limit),
                        (v / 1048576.0).floor(),
                        policy.heap_share * 100.0
                    )
                },
            });
        }

        // DB pools.
        let mut pools: Vec<_> = self.pools.iter().collect();
        pools.sort_by(|a, b| a.0.cmp(b.0));
        for (name, p) in pools {
            let ph = self.last_t - p.first_t;
            let share = p.saturated as f64 / p.samples.max(1) as f64;
            let hint = if ph < policy.min_history_seconds {
                Hint {
                    pool: Some(name.clone()),
                    history_seconds: ph,
                    ..wait("db_pool_max", "connections")
                }
            } else {
                let act = share >= policy.pool_saturated_share;
                Hint {
                    resource: "db_pool_max",
                    pool: Some(name.clone()),
                    unit: "connections",
                    value: act.then(|| (p.max * 1.5).ceil()),
                    history_seconds: ph,
                    act,
                    text: if act {
                        text!(
                            "pool {name} was full with requests waiting in {:.0}% of samples: raise it \
                             from {:.0} (e.g. to {:.0}) or find the slow query holding connections",
                            share * 100.0,
                            p.max,
                            (p.max * 1.5).ceil()
                        )
                    } else {
                        text!(
                            "pool {name} was full with requests waiting in {:.0}% of samples: fine",
                            share * 100.0
                        )
                    },
                }
            };
            out.push(hint);
        }

        // File descriptors: a limit about to be hit needs no long history.
        if let (Some(peak), Some(limit)) = (self.fd_peak, self.fd_limit) {
            let act = limit > 0.0 && peak >= limit * policy.fd_ratio;
            out.push(Hint {
                resource: "fd_limit",
                pool: None,
                unit: "files",
                value: act.then_some((peak * 2.0).ceil()),
                history_seconds: h,
                act,
                text: if act {
                    text!(
                        "{peak:.0} of {limit:.0} fds used at peak: raise the limit (ulimit -n) to {:.0} or look for an fd leak",
                        (peak * 2.0).ceil()
                    )
                } else {
                    text!("{peak:.0} of {limit:.0} fds used at peak: fine")
                },
            });
        }
        out
    }
}

/// Families for hints: `vitals_recommendation_*` values (only when there is one) and, for every hint, the
/// history it rests on.
pub fn families(hints: &[Hint]) -> Vec<Metric> {
    let mut history = catalogue::RECOMMENDATION_HISTORY.metric();
    let mut by_name: Vec<Metric> = Vec::new();
    for h in hints {
        let pool = h.pool.as_deref().unwrap_or("");
        let mut labels: Vec<(&str, &str)> = vec![("resource", h.resource)];
        if h.pool.is_some() {
            labels.push(("pool", pool));
        }
        history.push(&labels, Value::Gauge(h.history_seconds));
        let Some(v) = h.value else { continue };
        let def = ADVICE_BY_UNIT
            .iter()
            .find(|(unit, _)| *unit == h.unit)
            .map_or(&catalogue::RECOMMENDATION_FILES, |(_, def)| *def);
        match by_name.iter_mut().find(|f| def.is(f)) {
            Some(f) => f.push(&labels, Value::Gauge(v)),
            None => by_name.push(def.metric().with(&labels, Value::Gauge(v))),
        }
    }
    let mut out = by_name;
    if !history.points.is_empty() {
        out.push(history);
    }
    out
}

/// The hints as a derivation: after each reading it reads what the probes and the other derivations
/// put in the registry (one gather of vitals' own families) and keeps the usage history; the advice
/// that `/metrics` exposes and the live page shows is worked out from it when one of them reads it
/// (not after every reading: an idle sidecar reads every 20 s and is scraped far less often than
/// that, or not at all). The history starts again when the target is another process (a new pid or
/// start time): the old usage no longer describes it.
pub struct HintSignal {
    policy: HintPolicy,
    reading: std::sync::Mutex<HintReading>,
}

/// What the hints keep between readings.
struct HintReading {
    usage: UsageHistory,
    /// The target instance the history describes.
    target: Option<catalogue::TargetInstance>,
    /// The advice for the history as it was at the last read of it; `None` after a reading.
    advice: Option<Vec<Hint>>,
}

/// The family a hint's value goes to, by its unit (one of another unit goes to the last). With
/// [`catalogue::RECOMMENDATION_HISTORY`], every family the hints write.
const ADVICE_BY_UNIT: [(&str, &catalogue::MetricDef); 5] = [
    ("cores", &catalogue::RECOMMENDATION_CORES),
    ("bytes", &catalogue::RECOMMENDATION_BYTES),
    ("ratio", &catalogue::RECOMMENDATION_THROTTLED),
    ("connections", &catalogue::RECOMMENDATION_CONNECTIONS),
    ("files", &catalogue::RECOMMENDATION_FILES),
];

/// Every family the hints read from a gather ([`HintSignal::observe`]).
pub const READS: &[&catalogue::MetricDef] = &[
    &catalogue::TARGET_UP,
    &catalogue::TARGET_INFO,
    &catalogue::PROCESS_START_TIME,
    &catalogue::PROCESS_CPU_TIME,
    &catalogue::PROCESS_MEMORY_USAGE,
    &catalogue::CGROUP_CPU_PERIODS,
    &catalogue::CGROUP_CPU_THROTTLED_PERIODS,
    &catalogue::CGROUP_MEMORY_USAGE,
    &catalogue::CGROUP_MEMORY_LIMIT,
    &catalogue::CGROUP_MEMORY_OOM_KILLS,
    &catalogue::MEMORY_HEAP_LIMIT,
    &catalogue::POOL_UTILIZATION,
    &catalogue::POOL_USED,
    &catalogue::POOL_MAX,
    &catalogue::POOL_PENDING,
];

impl HintSignal {
    /// Hints computed with `policy`, none published yet.
    pub fn new(policy: HintPolicy) -> Self {
        HintSignal {
            policy,
            reading: std::sync::Mutex::new(HintReading {
                usage: UsageHistory::new(),
                target: None,
                advice: Some(Vec::new()),
            }),
        }
    }

    /// Takes the reading at unix time `t` from one gather of the registry.
    pub fn observe(&self, t: f64, families: &[Metric]) {
        let f = catalogue::Families::declared(families, READS);
        let up = f.sum(&catalogue::TARGET_UP, &[]).unwrap_or(0.0) > 0.0;
        let mut r = self.reading.lock().unwrap_or_else(|p| p.into_inner());
        if f.follow_instance(&mut r.target) {
            r.usage.reset();
        }
        if up {
            r.usage.observe(&usage_tick(t, &f));
        }
        r.advice = None;
    }

    /// The hints for the readings so far (none before the first).
    pub fn current(&self) -> Vec<Hint> {
        let mut r = self.reading.lock().unwrap_or_else(|p| p.into_inner());
        let r = &mut *r;
        r.advice
            .get_or_insert_with(|| r.usage.advice(&self.policy))
            .clone()
    }
}

/// One pool as a gather shows it.
struct PoolReading<'a> {
    pool: &'a str,
    kind: &'a str,
    used: Option<f64>,
    max: Option<f64>,
    pending: Option<f64>,
}

/// What one gather tells the hints.
fn usage_tick(t: f64, f: &catalogue::Families<'_>) -> UsageTick {
    let pools: Vec<PoolReading<'_>> = f
        .series(&catalogue::POOL_UTILIZATION)
        .filter_map(|s| {
            let (pool, kind) = (catalogue::label(s, "pool")?, catalogue::label(s, "kind")?);
            let l = [("pool", pool), ("kind", kind)];
            Some(PoolReading {
                pool,
                kind,
                used: f.sum(&catalogue::POOL_USED, &l),
                max: f.sum(&catalogue::POOL_MAX, &l),
                pending: f.sum(&catalogue::POOL_PENDING, &l),
            })
        })
        .collect();
    let fds = pools
        .iter()
        .find(|p| p.kind == "fds")
        .and_then(|p| Some((p.used?, p.max?)));
    let db_pools = pools
        .iter()
        .filter(|p| p.kind == "db")
        .filter_map(|p| {
            Some(PoolUse {
                pool: p.pool.to_owned(),
                used: p.used?,
                max: p.max?,
                pending: p.pending.unwrap_or(0.0),
            })
        })
        .collect();
    let rss = f.sum(&catalogue::PROCESS_MEMORY_USAGE, &[]);
    UsageTick {
        t,
        cpu_seconds: f.sum(&catalogue::PROCESS_CPU_TIME, &[]),
        cfs_periods: f
            .sum(&catalogue::CGROUP_CPU_THROTTLED_PERIODS, &[])
            .zip(f.sum(&catalogue::CGROUP_CPU_PERIODS, &[])),
        // RSS, not cgroup usage: the cgroup counts page cache the kernel reclaims under pressure.
        memory_bytes: rss.or_else(|| f.sum(&catalogue::CGROUP_MEMORY_USAGE, &[])),
        memory_limit_bytes: f.sum(&catalogue::CGROUP_MEMORY_LIMIT, &[]),
        oom_kills: f.sum(&catalogue::CGROUP_MEMORY_OOM_KILLS, &[]),
        heap_max_bytes: f.sum(&catalogue::MEMORY_HEAP_LIMIT, &[("runtime", "jvm")]),
        fds,
        db_pools,
    }
}

impl Collector for HintSignal {
    fn collect(&self, out: &mut Vec<Metric>) {
        out.extend(families(&self.current()));
    }

    /// Streamed, so that a sink that wants none of the hints' families (the gather after each
    /// reading, for the hints and the live page's history) costs no advice.
    fn streams(&self) -> bool {
        true
    }

    fn encode_into(&self, sink: &mut dyn crate::model::MetricSink) {
        let mut writes = std::iter::once(&catalogue::RECOMMENDATION_HISTORY)
            .chain(ADVICE_BY_UNIT.iter().map(|(_, def)| *def));
        if writes.any(|d| sink.wants(&d.info())) {
            // The sentences only when the live page has already had them worked out.
            let hints = {
                let r = self.reading.lock().unwrap_or_else(|p| p.into_inner());
                match &r.advice {
                    Some(advice) => families(advice),
                    None => families(&r.usage.advice_with(&self.policy, false)),
                }
            };
            crate::model::stream_metrics(&hints, sink);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One gather of a target `pid` using `cores` of CPU since it started at `t0` and `mem` bytes.
    fn gather(t: f64, t0: f64, pid: &str, cores: f64, mem: f64) -> Vec<Metric> {
        vec![
            catalogue::TARGET_UP.metric().with(&[], Value::Gauge(1.0)),
            catalogue::TARGET_INFO
                .metric()
                .with(&[("pid", pid)], Value::Gauge(1.0)),
            catalogue::PROCESS_START_TIME
                .metric()
                .with(&[], Value::Gauge(t0)),
            catalogue::PROCESS_CPU_TIME
                .metric()
                .with(&[], Value::Sum(cores * (t - t0))),
            catalogue::PROCESS_MEMORY_USAGE
                .metric()
                .with(&[], Value::Gauge(mem)),
        ]
    }

    #[test]
    fn the_derivation_reads_a_gather_and_starts_again_for_another_process() {
        let hints = HintSignal::new(policy());
        for i in 0..90 {
            let t = 1000.0 + i as f64;
            hints.observe(t, &gather(t, 1000.0, "7", 0.5, 100e6));
        }
        let memory = |h: &HintSignal| find(&h.current(), "memory_request").value;
        let cpu = |h: &HintSignal| find(&h.current(), "cpu_request").value;
        // 100 MB plus the 15% margin; half a core plus the margin (p90 of a steady 0.5).
        assert!((memory(&hints).unwrap() / 115e6 - 1.0).abs() < 1e-9);
        assert!((cpu(&hints).unwrap() / 0.575 - 1.0).abs() < 0.06);
        // The series vitals exposes are the published advice.
        let mut out = Vec::new();
        hints.collect(&mut out);
        assert!(out.iter().any(|m| !m.points.is_empty()));
        // Another process (new pid): the old usage no longer describes it.
        hints.observe(1100.0, &gather(1100.0, 1099.0, "8", 0.5, 100e6));
        assert_eq!(memory(&hints), None);
        // A target that is down adds no usage.
        let down: Vec<Metric> = gather(1101.0, 1099.0, "8", 0.5, 100e6)
            .into_iter()
            .map(|m| {
                if catalogue::TARGET_UP.is(&m) {
                    catalogue::TARGET_UP.metric().with(&[], Value::Gauge(0.0))
                } else {
                    m
                }
            })
            .collect();
        for i in 0..90 {
            hints.observe(1101.0 + i as f64, &down);
        }
        assert_eq!(memory(&hints), None);
    }

    fn policy() -> HintPolicy {
        HintPolicy {
            min_history_seconds: 60.0,
            ..Default::default()
        }
    }

    fn find<'a>(h: &'a [Hint], r: &str) -> &'a Hint {
        h.iter().find(|x| x.resource == r).expect(r)
    }

    /// `n` one-second ticks burning `cores` steadily with `mem` bytes in use.
    fn steady(hist: &mut UsageHistory, t0: f64, n: usize, cores: f64, mem: f64) {
        for i in 0..n {
            hist.observe(&UsageTick {
                t: t0 + i as f64,
                cpu_seconds: Some(cores * i as f64),
                memory_bytes: Some(mem),
                memory_limit_bytes: Some(1e9),
                oom_kills: Some(0.0),
                ..Default::default()
            });
        }
    }

    #[test]
    fn too_little_history_gives_no_value() {
        let mut h = UsageHistory::new();
        steady(&mut h, 0.0, 30, 0.5, 1e8);
        let a = h.advice(&policy());
        for r in ["cpu_request", "memory_request", "memory_limit"] {
            let x = find(&a, r);
            assert_eq!(x.value, None, "{r}");
            assert!(x.text.starts_with("not enough data"), "{}", x.text);
            assert_eq!(x.history_seconds, 29.0);
        }
        assert!(families(&a)
            .iter()
            .all(|f| f.name == catalogue::RECOMMENDATION_HISTORY.name));
    }

    #[test]
    fn steady_cpu_gives_percentile_plus_margin() {
        let mut h = UsageHistory::new();
        steady(&mut h, 0.0, 120, 0.5, 1e8);
        let v = find(&h.advice(&policy()), "cpu_request").value.unwrap();
        // One bucket (5%) of resolution above 0.5 cores, then 15%.
        assert!((0.5 * 1.15..=0.5 * 1.05 * 1.15 + 1e-9).contains(&v), "{v}");
    }

    #[test]
    fn a_short_spike_does_not_move_the_p90_request_but_moves_the_memory_peak() {
        let mut h = UsageHistory::new();
        let mut cpu = 0.0;
        for i in 0..200 {
            let cores = if (100..105).contains(&i) { 4.0 } else { 0.2 };
            cpu += cores;
            let mem = if i == 150 { 8e8 } else { 1e8 };
            h.observe(&UsageTick {
                t: i as f64,
                cpu_seconds: Some(cpu),
                memory_bytes: Some(mem),
                ..Default::default()
            });
        }
        let a = h.advice(&policy());
        let cpu_req = find(&a, "cpu_request").value.unwrap();
        assert!(cpu_req < 0.2 * 1.05 * 1.15 + 1e-9, "{cpu_req}");
        let mem_req = find(&a, "memory_request").value.unwrap();
        assert!((mem_req - 8e8 * 1.15).abs() < 1.0, "{mem_req}");
    }

    #[test]
    fn an_oom_kill_raises_the_limit_above_the_one_hit() {
        let mut h = UsageHistory::new();
        for i in 0..100 {
            h.observe(&UsageTick {
                t: i as f64,
                memory_bytes: Some(if i < 50 { 4.9e8 } else { 1e8 }),
                memory_limit_bytes: Some(5e8),
                oom_kills: Some(if i < 50 { 0.0 } else { 1.0 }),
                ..Default::default()
            });
        }
        let lim = find(&h.advice(&policy()), "memory_limit").clone();
        assert_eq!(lim.value, Some(5e8 * 1.2));
        assert!(lim.act && lim.text.contains("OOM"), "{}", lim.text);
    }

    #[test]
    fn throttling_pools_heap_and_fds() {
        let mut h = UsageHistory::new();
        for i in 0..100 {
            let f = i as f64;
            h.observe(&UsageTick {
                t: f,
                cfs_periods: Some((3.0 * f, 10.0 * f)),
                memory_limit_bytes: Some(1024.0 * 1048576.0),
                heap_max_bytes: Some(1000.0 * 1048576.0),
                fds: Some((900.0, 1024.0)),
                db_pools: vec![
                    PoolUse {
                        pool: "main".into(),
                        used: 10.0,
                        max: 10.0,
                        pending: if i % 4 == 0 { 0.0 } else { 3.0 },
                    },
                    PoolUse {
                        pool: "idle".into(),
                        used: 2.0,
                        max: 10.0,
                        pending: 0.0,
                    },
                ],
                ..Default::default()
            });
        }
        let a = h.advice(&policy());
        let t = find(&a, "cpu_limit");
        assert!((t.value.unwrap() - 0.3).abs() < 1e-9 && t.act);
        let heap = find(&a, "jvm_heap_max");
        assert_eq!(heap.value, Some(768.0 * 1048576.0));
        let main = a
            .iter()
            .find(|x| x.pool.as_deref() == Some("main"))
            .unwrap();
        assert_eq!(main.value, Some(15.0));
        let idle = a
            .iter()
            .find(|x| x.pool.as_deref() == Some("idle"))
            .unwrap();
        assert!(!idle.act && idle.value.is_none());
        assert_eq!(find(&a, "fd_limit").value, Some(1800.0));
        // A scrape's advice has no sentences and the same families, value for value.
        let values = h.advice_with(&policy(), false);
        assert!(values.iter().all(|x| x.text.is_empty()));
        assert!(a.iter().all(|x| !x.text.is_empty()));
        assert_eq!(families(&values), families(&a));
    }

    #[test]
    fn the_dashboard_queries_the_names_hints_export() {
        let mut h = UsageHistory::new();
        for i in 0..100 {
            let f = i as f64;
            h.observe(&UsageTick {
                t: f,
                cpu_seconds: Some(0.5 * f),
                cfs_periods: Some((3.0 * f, 10.0 * f)),
                memory_bytes: Some(1e8),
                memory_limit_bytes: Some(1024.0 * 1048576.0),
                heap_max_bytes: Some(1000.0 * 1048576.0),
                fds: Some((900.0, 1024.0)),
                db_pools: vec![PoolUse {
                    pool: "main".into(),
                    used: 10.0,
                    max: 10.0,
                    pending: 3.0,
                }],
                ..Default::default()
            });
        }
        let fams = families(&h.advice(&policy()));
        crate::catalogue::assert_agrees(&fams);
        use crate::export::prometheus::naming::exposition_name;
        let exported: Vec<(String, String)> = fams
            .iter()
            .flat_map(|f| {
                f.points.iter().map(move |s| {
                    (
                        exposition_name(&f.name, &f.unit, f.kind, f.origin),
                        s.attributes[0].1.clone(),
                    )
                })
            })
            .collect();
        let dashboard = include_str!("../../grafana/dashboards/vitals-overview.json");
        let re = regex::Regex::new(
            r#"(vitals_recommendation_[a-z_]+)\{[^}]*resource=(?:~)?\\"([a-z_|]+)\\""#,
        )
        .unwrap();
        let mut checked = 0;
        for c in re.captures_iter(dashboard) {
            for resource in c[2].split('|') {
                assert!(
                    exported.iter().any(|(n, r)| *n == c[1] && r == resource),
                    "the dashboard asks for {}{{resource={resource}}}, hints export {exported:?}",
                    &c[1]
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 7, "every hint panel was checked");
    }

    #[test]
    fn pools_are_bounded() {
        let mut h = UsageHistory::new();
        let pools = (0..100)
            .map(|i| PoolUse {
                pool: format!("p{i}"),
                used: 1.0,
                max: 2.0,
                pending: 0.0,
            })
            .collect();
        h.observe(&UsageTick {
            t: 0.0,
            db_pools: pools,
            ..Default::default()
        });
        assert_eq!(h.pools.len(), POOL_LIMIT);
    }

    #[test]
    fn the_hints_read_only_the_families_they_declare() {
        // The gather after a reading with nobody watching holds READS (and the page's history families):
        // the advice from READS alone equals the advice from everything; reading another family panics
        // (debug builds).
        let needed = [READS];
        let (full, kept) = (HintSignal::new(policy()), HintSignal::new(policy()));
        for i in 0..200 {
            let all = catalogue::every_family(f64::from(i));
            let only = catalogue::gathered_for(&needed, &all);
            full.observe(1000.0 + f64::from(i), &all);
            kept.observe(1000.0 + f64::from(i), &only);
        }
        let (a, b) = (full.current(), kept.current());
        assert_eq!(a, b);
        assert!(
            a.iter().any(|h| h.value.is_some()),
            "some advice after 200 s: {a:?}"
        );
    }
}
