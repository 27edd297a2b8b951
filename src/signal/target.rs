//! Derivation of the target's metrics: its latest procfs and cgroup sample turned into the catalogue's process,
//! container and target families. Detaching drops the sample, so an exited target's series vanish.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::export::prometheus::naming::{label_name, metric_name, InstrumentShape};
use crate::probe::cgroup::CgroupSample;
use crate::probe::pressure::RESOURCES;
use crate::probe::procfs::ProcSample;
use crate::store::{Collector, Family, MetricKind, Value};

/// What is known of the attached target beyond its samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetInfo {
    /// Pid as vitals sees it.
    pub pid: u32,
    /// Short command name.
    pub comm: String,
    /// Detected runtime (`jvm`, `node`, `go`, `python`, `dotnet`, `unknown`).
    pub runtime: String,
    /// Start time, clock ticks since boot.
    pub start_ticks: u64,
    /// How it was selected: `pid`, `pid_file`, `process` or `run` (the `selected_by` label).
    pub selected_by: &'static str,
}

/// Why a target instance ended, as far as vitals can know for a process that is not its child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// Its cgroup counted an OOM kill as it ended.
    OomKill,
    /// Ended otherwise (exit, signal, crash): the status goes to its parent, not to vitals.
    Other,
}

impl ExitReason {
    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            ExitReason::OomKill => "oom_kill",
            ExitReason::Other => "other",
        }
    }
}

/// Kernel constants needed to turn ticks and pages into seconds and bytes.
#[derive(Debug, Clone, Copy)]
pub struct KernelUnits {
    /// Clock ticks per second.
    pub hz: u64,
    /// Page size, bytes.
    pub page_size: u64,
    /// Boot time, Unix seconds.
    pub boot_time: u64,
}

#[derive(Debug, Default)]
struct State {
    info: Option<TargetInfo>,
    proc: Option<ProcSample>,
    cgroup: Option<CgroupSample>,
    restarts: u64,
    /// OOM kills of the target across its instances (None until its memory cgroup was found).
    oom_kills: Option<u64>,
    /// Exits of target instances by reason, in [`ExitReason`] order.
    exits: [u64; 2],
    last_identity: Option<(u32, u64)>,
    sampled: bool,
}

/// The latest sample of the target, shared by the sampler (writer) and scrapes (readers).
pub struct TargetMetrics {
    units: KernelUnits,
    state: Mutex<State>,
}

impl TargetMetrics {
    /// An empty store: target down, no restarts.
    pub fn new(units: KernelUnits) -> Self {
        TargetMetrics {
            units,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A target was found. A different instance (pid, start time) after the first counts as a restart.
    pub fn attach(&self, info: TargetInfo) {
        let mut s = self.lock();
        let identity = (info.pid, info.start_ticks);
        if s.last_identity.is_some_and(|prev| prev != identity) {
            s.restarts += 1;
        }
        s.last_identity = Some(identity);
        s.info = Some(info);
        s.proc = None;
        s.cgroup = None;
    }

    /// Attaches to another process that was already running next to the previous target (e.g. the
    /// survivor of two `--process` matches): a switch, not a restart.
    pub fn attach_other(&self, info: TargetInfo) {
        self.lock().last_identity = None;
        self.attach(info);
    }

    /// The target is gone: it is down and its series are dropped.
    pub fn detach(&self) {
        let mut s = self.lock();
        s.info = None;
        s.proc = None;
        s.cgroup = None;
    }

    /// The target instance ended for `reason`.
    pub fn record_exit(&self, reason: ExitReason) {
        let mut s = self.lock();
        s.exits[reason as usize] += 1;
    }

    /// OOM kills of the target so far, across restarts.
    pub fn set_oom_kills(&self, total: Option<u64>) {
        self.lock().oom_kills = total;
    }

    /// Stores one tick's readings.
    pub fn update(&self, proc: ProcSample, cgroup: Option<CgroupSample>) {
        let mut s = self.lock();
        s.proc = Some(proc);
        s.cgroup = cgroup;
        s.sampled = true;
    }

    /// The attached target exec()ed another program: same pid and start time (no restart), new comm and
    /// runtime.
    pub fn refresh_program(&self, comm: String, runtime: String) {
        let mut s = self.lock();
        if let Some(info) = s.info.as_mut() {
            info.comm = comm;
            info.runtime = runtime;
        }
    }

    /// Sets the runtime of the attached target when it was not detected from its executable.
    pub fn hint_runtime(&self, runtime: &str) {
        let mut s = self.lock();
        if let Some(info) = s.info.as_mut() {
            if info.runtime == "unknown" {
                info.runtime = runtime.to_owned();
            }
        }
    }

    /// The current target's info, if one is attached.
    pub fn info(&self) -> Option<TargetInfo> {
        self.lock().info.clone()
    }

    /// The latest process sample.
    pub fn latest(&self) -> Option<ProcSample> {
        self.lock().proc
    }
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Series of one family: labels and a value, None when it could not be read.
type OptionalSeries<'a> = [(&'a [(&'a str, &'a str)], Option<f64>)];

/// Builds families from optional values, leaving out series (and then families) with no value.
struct Builder<'a> {
    out: &'a mut Vec<Family>,
}

impl Builder<'_> {
    fn one(
        &mut self,
        name: String,
        help: &str,
        unit: &'static str,
        kind: MetricKind,
        series: &OptionalSeries<'_>,
    ) {
        let mut fam = Family::new(name, help, unit, kind);
        for (labels, v) in series {
            if let Some(v) = v {
                let value = if kind == MetricKind::Counter {
                    Value::Counter(*v)
                } else {
                    Value::Gauge(*v)
                };
                fam.push(labels, value);
            }
        }
        if !fam.series.is_empty() {
            self.out.push(fam);
        }
    }

    fn semconv(
        &mut self,
        otel: &str,
        unit: &str,
        shape: InstrumentShape,
        help: &str,
        series: &OptionalSeries<'_>,
    ) {
        let kind = if shape == InstrumentShape::Counter {
            MetricKind::Counter
        } else {
            MetricKind::Gauge
        };
        let name = metric_name(otel, unit, shape);
        let word = if name.ends_with("_seconds") {
            "seconds"
        } else if name.ends_with("_bytes") {
            "bytes"
        } else {
            ""
        };
        self.one(name, help, word, kind, series);
    }
}

impl Collector for TargetMetrics {
    fn collect(&self, out: &mut Vec<Family>) {
        let s = self.lock();
        let u = self.units;
        let up = if s.info.is_some() { 1.0 } else { 0.0 };
        out.push(
            Family::new(
                "vitals_target_up",
                "1 while the target process is attached and readable",
                "",
                MetricKind::Gauge,
            )
            .with(&[], Value::Gauge(up)),
        );
        out.push(
            Family::new(
                "vitals_target_restarts",
                "Times a new target instance was attached after a previous one",
                "",
                MetricKind::Counter,
            )
            .with(&[], Value::Counter(s.restarts as f64)),
        );
        if s.last_identity.is_some() {
            let mut exits = Family::new(
                "vitals_target_exits",
                "Target instances that ended, by reason (oom_kill when their cgroup counted an OOM kill)",
                "",
                MetricKind::Counter,
            );
            for reason in [ExitReason::OomKill, ExitReason::Other] {
                exits.push(
                    &[("reason", reason.label())],
                    Value::Counter(s.exits[reason as usize] as f64),
                );
            }
            out.push(exits);
        }
        if let Some(kills) = s.oom_kills {
            out.push(
                Family::new(
                    "vitals_cgroup_memory_oom_kills",
                    "OOM kills of the target's cgroup, counted across the target's restarts (for a target in another cgroup namespace, only kills read before its cgroup is removed)",
                    "",
                    MetricKind::Counter,
                )
                .with(&[], Value::Counter(kills as f64)),
            );
        }
        let Some(info) = &s.info else { return };
        let pid = info.pid.to_string();
        out.push(
            Family::new(
                "vitals_target_info",
                "The attached target process",
                "",
                MetricKind::Gauge,
            )
            .with(
                &[
                    ("pid", &pid),
                    ("comm", &info.comm),
                    ("runtime", &info.runtime),
                    ("selected_by", info.selected_by),
                ],
                Value::Gauge(1.0),
            ),
        );
        let start_unix = u.boot_time as f64 + info.start_ticks as f64 / u.hz as f64;
        let mut b = Builder { out };
        if let Some(p) = &s.proc {
            process_families(&mut b, p, u, start_unix);
        }
        if let Some(c) = &s.cgroup {
            cgroup_families(&mut b, c);
        }
    }
}

fn process_families(b: &mut Builder<'_>, p: &ProcSample, u: KernelUnits, start_unix: f64) {
    use InstrumentShape::*;
    let hz = u.hz as f64;
    let st = p.stat;
    let status = p.status;
    let cpu_mode = label_name("cpu.mode");
    let dir = label_name("disk.io.direction");
    let cs = label_name("process.context_switch.type");
    let pf = label_name("system.paging.fault.type");
    let f = |v: Option<u64>| v.map(|v| v as f64);
    b.semconv(
        "process.cpu.time",
        "s",
        Counter,
        "Total CPU seconds of the target by mode",
        &[
            (&[(&cpu_mode, "user")], st.map(|s| s.utime as f64 / hz)),
            (&[(&cpu_mode, "system")], st.map(|s| s.stime as f64 / hz)),
        ],
    );
    b.semconv(
        "process.memory.usage",
        "By",
        Gauge,
        "Resident set size of the target",
        &[(
            &[],
            st.and_then(|s| s.rss_bytes(u.page_size)).map(|b| b as f64),
        )],
    );
    b.semconv(
        "process.memory.virtual",
        "By",
        Gauge,
        "Virtual memory size of the target",
        &[(&[], st.map(|s| s.vsize as f64))],
    );
    b.semconv(
        "process.disk.io",
        "By",
        Counter,
        "Bytes the target read from and wrote to storage",
        &[
            (&[(&dir, "read")], p.io.map(|i| i.read_bytes as f64)),
            (&[(&dir, "write")], p.io.map(|i| i.write_bytes as f64)),
        ],
    );
    // Threads and fds use the Collector process scraper's names: semconv's newer `*.count` names translate
    // to gauges ending in `_count`, which `promtool check metrics` rejects and no existing dashboard uses.
    b.semconv(
        "process.threads",
        "{threads}",
        Gauge,
        "Threads of the target",
        &[(&[], st.map(|s| s.num_threads as f64))],
    );
    b.semconv(
        "process.open_file_descriptors",
        "{count}",
        Gauge,
        "Open file descriptors of the target",
        &[(&[], f(p.open_fds))],
    );
    b.semconv(
        "process.context_switches",
        "{context_switch}",
        Counter,
        "Context switches of the target",
        &[
            (
                &[(&cs, "voluntary")],
                f(status.and_then(|s| s.voluntary_ctxt)),
            ),
            (
                &[(&cs, "involuntary")],
                f(status.and_then(|s| s.nonvoluntary_ctxt)),
            ),
        ],
    );
    b.semconv(
        "process.paging.faults",
        "{fault}",
        Counter,
        "Page faults of the target",
        &[
            (&[(&pf, "major")], st.map(|s| s.majflt as f64)),
            (&[(&pf, "minor")], st.map(|s| s.minflt as f64)),
        ],
    );
    b.semconv(
        "process.uptime",
        "s",
        Gauge,
        "Seconds since the target started",
        &[(&[], Some((now_unix() - start_unix).max(0.0)))],
    );
    b.one(
        "vitals_process_max_fds".into(),
        "Soft limit on the target's open file descriptors",
        "",
        MetricKind::Gauge,
        &[(&[], f(p.max_fds))],
    );
    b.one(
        "vitals_process_start_time_seconds".into(),
        "Start time of the target, Unix seconds",
        "seconds",
        MetricKind::Gauge,
        &[(&[], Some(start_unix))],
    );
    b.one(
        "vitals_process_scheduler_wait_seconds".into(),
        "Time the target's threads waited on a run queue (schedstat)",
        "seconds",
        MetricKind::Counter,
        &[(&[], p.sched_wait_ns.map(|n| n as f64 / 1e9))],
    );
    b.one(
        "vitals_process_swap_bytes".into(),
        "Target memory swapped out (VmSwap)",
        "bytes",
        MetricKind::Gauge,
        &[(&[], f(status.and_then(|s| s.vm_swap)))],
    );
    b.one(
        "vitals_process_proportional_memory_bytes".into(),
        "Proportional set size of the target (smaps_rollup, opt-in)",
        "bytes",
        MetricKind::Gauge,
        &[(&[], f(p.pss))],
    );
}

fn cgroup_families(b: &mut Builder<'_>, c: &CgroupSample) {
    use MetricKind::*;
    let f = |v: Option<u64>| v.map(|v| v as f64);
    b.one(
        "vitals_cgroup_memory_usage_bytes".into(),
        "Memory charged to the target's cgroup",
        "bytes",
        Gauge,
        &[(&[], f(c.memory_usage))],
    );
    b.one(
        "vitals_cgroup_memory_limit_bytes".into(),
        "Memory limit of the target's cgroup (absent when unlimited)",
        "bytes",
        Gauge,
        &[(&[], f(c.memory_limit))],
    );
    b.one(
        "vitals_cgroup_cpu_limit_cores".into(),
        "CPU quota of the target's cgroup in cores (absent when unlimited)",
        "",
        Gauge,
        &[(&[], c.cpu_limit_cores)],
    );
    b.one(
        "vitals_cgroup_cpu_throttled_seconds".into(),
        "Time the target's cgroup was throttled by its CPU quota",
        "seconds",
        Counter,
        &[(&[], c.cpu_throttled_us.map(|v| v as f64 / 1e6))],
    );
    b.one(
        "vitals_cgroup_cpu_throttled_periods".into(),
        "Enforcement periods in which the cgroup was throttled",
        "",
        Counter,
        &[(&[], f(c.cpu_throttled_periods))],
    );
    b.one(
        "vitals_cgroup_cpu_periods".into(),
        "Enforcement periods of the cgroup's CPU quota",
        "",
        Counter,
        &[(&[], f(c.cpu_periods))],
    );
    b.one(
        "vitals_cgroup_pids".into(),
        "Tasks in the target's cgroup",
        "",
        Gauge,
        &[(&[], f(c.pids))],
    );
    b.one(
        "vitals_cgroup_pids_limit".into(),
        "Task limit of the target's cgroup (absent when unlimited)",
        "",
        Gauge,
        &[(&[], f(c.pids_limit))],
    );
    let scope = c.pressure_scope.label();
    let mut fam = Family::new(
        "vitals_pressure_stalled_seconds",
        "Time tasks stalled waiting for a resource (PSI)",
        "seconds",
        Counter,
    );
    for (i, r) in RESOURCES.iter().enumerate() {
        if let Some(p) = c.pressure[i] {
            fam.push(
                &[("resource", r), ("kind", "some"), ("scope", scope)],
                Value::Counter(p.some_us as f64 / 1e6),
            );
            if let Some(full) = p.full_us {
                fam.push(
                    &[("resource", r), ("kind", "full"), ("scope", scope)],
                    Value::Counter(full as f64 / 1e6),
                );
            }
        }
    }
    if !fam.series.is_empty() {
        b.out.push(fam);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::procfs::{Stat, Status};

    fn units() -> KernelUnits {
        KernelUnits {
            hz: 100,
            page_size: 4096,
            boot_time: 1_700_000_000,
        }
    }

    fn names(f: &[Family]) -> Vec<&str> {
        f.iter().map(|f| f.name.as_str()).collect()
    }

    #[test]
    fn down_target_exposes_only_up_and_restarts() {
        let s = TargetMetrics::new(units());
        let mut out = vec![];
        s.collect(&mut out);
        assert_eq!(
            names(&out),
            vec!["vitals_target_up", "vitals_target_restarts"]
        );
        assert_eq!(out[0].series[0].value, Value::Gauge(0.0));
    }

    #[test]
    fn attached_target_uses_semconv_names_and_leaves_out_unread_values() {
        let s = TargetMetrics::new(units());
        s.attach(TargetInfo {
            pid: 7,
            comm: "java".into(),
            runtime: "jvm".into(),
            start_ticks: 500,
            selected_by: "pid",
        });
        let stat = Stat {
            utime: 150,
            stime: 50,
            rss_pages: 10,
            num_threads: 4,
            ..Default::default()
        };
        s.update(
            ProcSample {
                stat: Some(stat),
                status: Some(Status::default()),
                io: None,
                ..Default::default()
            },
            None,
        );
        let mut out = vec![];
        s.collect(&mut out);
        let n = names(&out);
        assert!(n.contains(&"process_cpu_time_seconds"));
        assert!(n.contains(&"process_memory_usage_bytes"));
        assert!(n.contains(&"process_threads"));
        assert!(
            !n.contains(&"process_disk_io_bytes"),
            "io unreadable: left out, not 0"
        );
        assert!(!n.contains(&"process_open_file_descriptors"));
        let cpu = out
            .iter()
            .find(|f| f.name == "process_cpu_time_seconds")
            .unwrap();
        assert_eq!(
            cpu.series[0].labels,
            vec![("cpu_mode".to_string(), "user".to_string())]
        );
        assert_eq!(cpu.series[0].value, Value::Counter(1.5));
        let rss = out
            .iter()
            .find(|f| f.name == "process_memory_usage_bytes")
            .unwrap();
        assert_eq!(rss.series[0].value, Value::Gauge(40960.0));
        let start = out
            .iter()
            .find(|f| f.name == "vitals_process_start_time_seconds")
            .unwrap();
        assert_eq!(start.series[0].value, Value::Gauge(1_700_000_005.0));
    }

    #[test]
    fn restart_counts_and_detach_drops_series() {
        let s = TargetMetrics::new(units());
        let info = TargetInfo {
            pid: 7,
            comm: "a".into(),
            runtime: "unknown".into(),
            start_ticks: 1,
            selected_by: "process",
        };
        s.attach(info.clone());
        s.update(ProcSample::default(), None);
        s.detach();
        s.record_exit(ExitReason::OomKill);
        s.set_oom_kills(Some(1));
        let mut out = vec![];
        s.collect(&mut out);
        let names: Vec<&str> = out.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "vitals_target_up",
                "vitals_target_restarts",
                "vitals_target_exits",
                "vitals_cgroup_memory_oom_kills"
            ],
            "a down target keeps its counters, not its samples"
        );
        assert_eq!(out[2].series[0].value, Value::Counter(1.0));
        assert_eq!(out[3].series[0].value, Value::Counter(1.0));
        s.attach(info.clone());
        let mut out = vec![];
        s.collect(&mut out);
        assert_eq!(
            out[1].series[0].value,
            Value::Counter(0.0),
            "same instance again is no restart"
        );
        s.attach(TargetInfo {
            pid: 8,
            ..info.clone()
        });
        let mut out = vec![];
        s.collect(&mut out);
        assert_eq!(out[1].series[0].value, Value::Counter(1.0));
        s.attach_other(TargetInfo { pid: 9, ..info });
        let mut out = vec![];
        s.collect(&mut out);
        assert_eq!(
            out[1].series[0].value,
            Value::Counter(1.0),
            "switching to a process that was already running is no restart"
        );
        let info = out
            .iter()
            .find(|f| f.name == "vitals_target_info")
            .expect("vitals_target_info is exposed while attached");
        let labels = &info.series[0].labels;
        assert!(
            labels
                .iter()
                .any(|(k, v)| k == "selected_by" && v == "process"),
            "{labels:?}"
        );
    }
}
