//! The live frame as the page reads it: one typed struct per panel, serialised once per tick straight
//! into the bytes the stream sends. `page.html`'s script reads these field names; the frame tests and
//! `tests/live_page.rs` (a real Chromium on a real target) read them too.
//!
//! Numbers that may be unknown are `Option<f64>`, and a value that is not finite (a ratio over nothing)
//! is written as `null` as well: the page shows a dash for both.

use std::collections::BTreeMap;

use serde::{Serialize, Serializer};

use super::history::{History, HistoryPoint, POINT_FIELDS};
use crate::signal::hints::Hint;

/// One frame: the target, the four questions' panels, the alerts the shipped rules would raise and the
/// tuning hints, at unix time `t`.
#[derive(Debug, Serialize)]
pub struct Frame {
    /// Unix time, seconds.
    pub t: f64,
    /// This second's sparkline values.
    pub point: HistoryPoint,
    /// Every named target (several targets or pod mode), by name.
    pub targets: Vec<TargetRow>,
    /// The main target.
    pub target: TargetPanel,
    /// Request rate, errors and latency over the window.
    pub red: RedPanel,
    /// Time the app stood still.
    pub pauses: PausePanel,
    /// Memory and its growth.
    pub memory: MemoryPanel,
    /// Database queries and pools.
    pub db: DbPanel,
    /// Every pool's saturation.
    pub pools: Vec<PoolView>,
    /// One line per question.
    pub verdicts: Verdicts,
    /// Alert conditions that hold now.
    pub alerts: Vec<AlertRow>,
    /// Tuning hints.
    pub hints: Vec<Hint>,
}

/// One named target's row.
#[derive(Debug, Serialize)]
pub struct TargetRow {
    /// Its `target` label.
    pub name: String,
    /// Attached.
    pub up: bool,
    /// Pid of its root process.
    pub pid: Option<String>,
    /// Command name.
    pub comm: Option<String>,
    /// Language runtime.
    pub runtime: Option<String>,
    /// Processes in its tree.
    pub processes: Option<f64>,
    /// Resident memory of its tree, bytes.
    pub rss_bytes: Option<f64>,
    /// CPU cores used since the last frame.
    pub cpu_cores: Option<f64>,
    /// Restarts seen.
    pub restarts: Option<f64>,
}

/// The main target.
#[derive(Debug, Serialize)]
pub struct TargetPanel {
    /// Attached.
    pub up: bool,
    /// Pid of its root process.
    pub pid: Option<String>,
    /// Command name.
    pub comm: Option<String>,
    /// Language runtime.
    pub runtime: Option<String>,
    /// Seconds since it started.
    pub uptime_seconds: Option<f64>,
    /// Restarts seen.
    pub restarts: Option<f64>,
    /// How it was chosen.
    pub selected_by: String,
}

/// Requests over the window (RED).
#[derive(Debug, Serialize)]
pub struct RedPanel {
    /// Any request seen since vitals started.
    pub has_data: bool,
    /// Seconds the window covers.
    pub window_seconds: f64,
    /// Requests per second over the window.
    pub rate: Option<f64>,
    /// Requests per second since the last frame.
    pub rate_now: Option<f64>,
    /// Share of requests that failed over the window.
    pub error_ratio: Option<f64>,
    /// Median latency over the window, seconds.
    pub p50: Option<f64>,
    /// 99th percentile latency over the window, seconds.
    pub p99: Option<f64>,
    /// Requests in the window.
    pub requests: f64,
    /// Requests since vitals started.
    pub requests_total: f64,
    /// Failed requests in the window.
    pub errors: f64,
    /// The operations with the highest p99.
    pub slowest: Vec<OperationRow>,
    /// The operations with the highest error ratio.
    pub failing: Vec<OperationRow>,
    /// How an app's SDK reaches the receivers, or why it cannot.
    pub otlp_hint: String,
}

/// One operation over the window.
#[derive(Debug, Clone, Serialize)]
pub struct OperationRow {
    /// `service.name`.
    pub service: String,
    /// The span name or route.
    pub operation: String,
    /// Requests per second.
    pub rate: f64,
    /// Share that failed.
    pub error_ratio: f64,
    /// 99th percentile latency, seconds.
    pub p99: Option<f64>,
}

/// Time the app stood still, per second of wall time.
#[derive(Debug, Serialize)]
pub struct PausePanel {
    /// Runtime GC pauses.
    pub gc_seconds_per_second: Option<f64>,
    /// Longest GC pause in the last minute, seconds.
    pub gc_max_seconds: Option<f64>,
    /// JVM safepoints.
    pub safepoint_seconds_per_second: Option<f64>,
    /// CPU throttling by the cgroup quota.
    pub throttled_seconds_per_second: Option<f64>,
    /// Share of CFS periods throttled.
    pub throttled_ratio: Option<f64>,
    /// Pressure stall time (`some`) per resource.
    pub psi_some: PressurePanel,
    /// The event loop's p99 delay, seconds.
    pub event_loop_p99_seconds: Option<f64>,
}

/// Pressure stall time per second, per resource.
#[derive(Debug, Serialize)]
pub struct PressurePanel {
    /// CPU.
    pub cpu: Option<f64>,
    /// Memory.
    pub memory: Option<f64>,
    /// I/O.
    pub io: Option<f64>,
}

/// Memory and its growth.
#[derive(Debug, Serialize)]
pub struct MemoryPanel {
    /// Resident memory, bytes.
    pub rss_bytes: Option<f64>,
    /// The heap the memory signal reads, bytes.
    pub heap_after_gc_bytes: Option<f64>,
    /// The heap's limit, bytes.
    pub heap_limit_bytes: Option<f64>,
    /// The heap's growth status (`growing`, `steady`, ...).
    pub heap_status: Option<String>,
    /// The cgroup's memory, bytes.
    pub cgroup_bytes: Option<f64>,
    /// The cgroup's limit, bytes.
    pub cgroup_limit_bytes: Option<f64>,
    /// Growth per signal and window, bytes per second.
    pub growth_bytes_per_second: BTreeMap<String, BTreeMap<String, f64>>,
    /// Seconds until the limit at the current growth.
    pub time_to_limit_seconds: Option<f64>,
    /// The signals whose leak verdict is set.
    pub leak_suspected: Vec<String>,
}

/// Database queries and pools.
#[derive(Debug, Serialize)]
pub struct DbPanel {
    /// The query templates with the highest p99.
    pub slowest_queries: Vec<QueryRow>,
    /// The operations that ran a query once per row most often.
    pub n_plus_one: Vec<NPlusOneRow>,
    /// The database pools.
    pub pools: Vec<DbPoolRow>,
    /// Any query seen.
    pub has_data: bool,
}

/// One query template over the window.
#[derive(Debug, Serialize)]
pub struct QueryRow {
    /// `service.name`.
    pub service: String,
    /// The query template.
    pub query: String,
    /// Queries per second.
    pub rate: f64,
    /// Share that failed.
    pub error_ratio: f64,
    /// Median latency, seconds.
    pub p50: Option<f64>,
    /// 99th percentile latency, seconds.
    pub p99: Option<f64>,
}

/// One N+1 offender.
#[derive(Debug, Serialize)]
pub struct NPlusOneRow {
    /// `service.name`.
    pub service: String,
    /// The operation that ran the queries.
    pub operation: String,
    /// The query it repeated.
    pub query: String,
    /// Runs in the window.
    pub runs: f64,
    /// Runs since vitals started.
    pub runs_total: f64,
}

/// One database pool.
#[derive(Debug, Serialize)]
pub struct DbPoolRow {
    /// Pool name.
    pub pool: String,
    /// Share in use.
    pub utilization: Option<f64>,
    /// In use.
    pub used: Option<f64>,
    /// Its size.
    pub max: Option<f64>,
    /// Waiting for one.
    pub pending: Option<f64>,
}

/// One pool of any kind.
#[derive(Debug, Clone, Serialize)]
pub struct PoolView {
    /// Pool name.
    pub pool: String,
    /// `db`, `thread`, `cpu`, ...
    pub kind: String,
    /// Share in use.
    pub utilization: Option<f64>,
    /// In use.
    pub used: Option<f64>,
    /// Its size.
    pub max: Option<f64>,
    /// Waiting for one.
    pub pending: Option<f64>,
}

/// One line per question.
#[derive(Debug, Serialize)]
pub struct Verdicts {
    /// Is it slow?
    pub slow: Verdict,
    /// Does it pause?
    pub pausing: Verdict,
    /// Does it leak?
    pub leaking: Verdict,
    /// Is anything saturated?
    pub saturated: Verdict,
}

/// A verdict: its level (`ok`, `warning`, `critical`, `none`) and the sentence.
#[derive(Debug, Serialize)]
pub struct Verdict {
    /// `ok`, `warning`, `critical` or `none` (nothing to judge yet).
    pub level: &'static str,
    /// One line for people.
    pub text: String,
}

impl From<(&'static str, String)> for Verdict {
    fn from((level, text): (&'static str, String)) -> Self {
        Verdict { level, text }
    }
}

/// An alert condition of the shipped rules that holds now.
#[derive(Debug, Serialize)]
pub struct AlertRow {
    /// The rule's alert name.
    pub alert: &'static str,
    /// `warning` or `critical`.
    pub severity: &'static str,
    /// The measured value.
    pub value: Option<f64>,
    /// The rule's threshold.
    pub threshold: f64,
    /// Seconds the condition has held.
    pub held_seconds: f64,
    /// The rule's `for`.
    pub for_seconds: f64,
    /// `pending` until it held for `for_seconds`, then `firing`.
    pub state: &'static str,
}

/// A history point as the page reads it: `t` and each of [`POINT_FIELDS`], `null`
/// where unknown. A value is written in its own shortest form: widening the stored f32 would print its
/// binary noise (0.05001169815659523 for 0.050011698) and make a new viewer's history a third larger.
impl Serialize for HistoryPoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(1 + self.values.len()))?;
        m.serialize_entry("t", &self.t)?;
        for (k, v) in POINT_FIELDS.iter().zip(self.values) {
            m.serialize_entry(k, &ShortF32(v))?;
        }
        m.end()
    }
}

/// An f32 written in its shortest form, `null` when not finite.
struct ShortF32(f32);

impl Serialize for ShortF32 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !self.0.is_finite() {
            return s.serialize_none();
        }
        // serde_json writes an f32 in its shortest round-trip form.
        s.serialize_f32(self.0)
    }
}

/// The history column-wise (`{"t":[…], "rate":[…], …}`), compact for a new viewer's first message.
impl Serialize for History {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        /// One column: a field of every point.
        struct Column<'a, F>(&'a History, F);
        impl<F: Fn(&HistoryPoint) -> ShortF32> Serialize for Column<'_, F> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.points().map(&self.1))
            }
        }
        let mut m = s.serialize_map(Some(1 + POINT_FIELDS.len()))?;
        let times: Vec<f64> = self.points().map(|p| p.t).collect();
        m.serialize_entry("t", &times)?;
        for (i, k) in POINT_FIELDS.iter().enumerate() {
            m.serialize_entry(
                k,
                &Column(self, move |p: &HistoryPoint| ShortF32(p.values[i])),
            )?;
        }
        m.end()
    }
}
