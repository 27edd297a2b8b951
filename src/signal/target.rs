//! Derivation of the target's metrics: its latest procfs and cgroup sample turned into the catalogue's process,
//! container and target families. Detaching drops the sample, so an exited target's series vanish.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::catalogue::{self, MetricDef};
use crate::model::{write_metric, MetricKind, MetricSink, Streaming, ValueRef};
use crate::probe::cgroup::CgroupSample;
use crate::probe::pressure::RESOURCES;
use crate::probe::procfs::ProcSample;
use crate::probe::tree::TreeView;

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
    /// The process of the tree that runs the runtime (the root when none does).
    pub runtime_pid: u32,
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

/// What is known of the target: the attached instance and its latest samples, and counts across its
/// instances (restarts, exits, OOM kills).
#[derive(Debug, Default)]
struct TargetRecord {
    info: Option<TargetInfo>,
    proc: Option<ProcSample>,
    tree: Option<TreeView>,
    cgroup: Option<CgroupSample>,
    restarts: u64,
    /// OOM kills of the target across its instances (None until its memory cgroup was found).
    oom_kills: Option<u64>,
    /// Exits of target instances by reason, in [`ExitReason`] order.
    exits: [u64; 2],
    last_identity: Option<(u32, u64)>,
    sampled: bool,
    /// The live processes of the target's tree, root first (what the profiler samples).
    member_pids: Vec<u32>,
}

/// The target's metrics, derived when read from the latest sample the sampler handed in (and its counts
/// across instances): not a store, it keeps no series of its own and nothing keyed by outside data.
/// Shared by the sampler (writer) and scrapes (readers).
pub struct TargetMetrics {
    units: KernelUnits,
    record: Mutex<TargetRecord>,
    /// Labels every `vitals_target_info` carries (the pod's names, when asked for).
    info_labels: Vec<(String, String)>,
    /// Counts attachments, so a task can sleep until the next one (see [`TargetMetrics::attachments`]).
    attached: tokio::sync::watch::Sender<u64>,
}

impl TargetMetrics {
    /// Nothing attached yet: target down, no restarts.
    pub fn new(units: KernelUnits) -> Self {
        TargetMetrics {
            units,
            record: Mutex::new(TargetRecord::default()),
            info_labels: Vec::new(),
            attached: tokio::sync::watch::Sender::new(0),
        }
    }

    /// The same, with `labels` on its `vitals_target_info`.
    pub fn with_info_labels(mut self, labels: Vec<(String, String)>) -> Self {
        self.info_labels = labels;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TargetRecord> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
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
        s.tree = None;
        s.cgroup = None;
        s.member_pids.clear();
        drop(s);
        self.attached.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Changes at each attachment (a first target, a restart, a switch): what waits for a new target
    /// waits on it instead of polling [`TargetMetrics::info`].
    pub fn attachments(&self) -> tokio::sync::watch::Receiver<u64> {
        self.attached.subscribe()
    }

    /// The live processes of the target's tree, root first, as of the last tick.
    pub fn set_member_pids(&self, pids: &[u32]) {
        let mut s = self.lock();
        s.member_pids.clear();
        s.member_pids.extend_from_slice(pids);
    }

    /// The target's processes: the tree's live members, root first (the root alone before the first
    /// tick has read the tree); empty while no target is attached.
    pub fn member_pids(&self) -> Vec<u32> {
        let s = self.lock();
        match (&s.info, s.member_pids.is_empty()) {
            (None, _) => Vec::new(),
            (Some(i), true) => vec![i.pid],
            (Some(_), false) => s.member_pids.clone(),
        }
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
        s.tree = None;
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
    pub fn update(&self, proc: ProcSample, cgroup: Option<CgroupSample>, tree: Option<TreeView>) {
        let mut s = self.lock();
        s.proc = Some(proc);
        s.tree = tree;
        s.cgroup = cgroup;
        s.sampled = true;
    }

    /// The root exec()ed another program or renamed itself: same pid and start time (no restart), new comm.
    pub fn refresh_comm(&self, comm: String) {
        let mut s = self.lock();
        if let Some(info) = s.info.as_mut() {
            info.comm = comm;
        }
    }

    /// The process of the tree that runs the runtime, and that runtime (`unknown` when none is known).
    pub fn set_runtime_process(&self, pid: u32, runtime: &str) {
        let mut s = self.lock();
        if let Some(info) = s.info.as_mut() {
            info.runtime_pid = pid;
            if runtime != crate::language::UNKNOWN || info.runtime == crate::language::UNKNOWN {
                info.runtime = runtime.to_owned();
            }
        }
    }

    /// Sets the runtime of the attached target when it was not detected from its executable.
    pub fn hint_runtime(&self, runtime: &str) {
        let mut s = self.lock();
        if let Some(info) = s.info.as_mut() {
            if info.runtime == crate::language::UNKNOWN {
                info.runtime = runtime.to_owned();
            }
        }
    }

    /// Whether the current target's info is `info` (both none included).
    pub fn info_is(&self, info: &Option<TargetInfo>) -> bool {
        self.lock().info == *info
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

/// Writes families from optional values, leaving out series (and then families) with no value.
struct FamilyWriter<'a> {
    sink: &'a mut dyn MetricSink,
    /// Start of the cumulative values written, Unix ns (the target's start for its own counters, 0 when
    /// unknown, as for cgroup counters that outlive one target instance).
    start_unix_nanos: u64,
}

impl FamilyWriter<'_> {
    fn one(&mut self, def: &'static MetricDef, series: &OptionalSeries<'_>) {
        if !series.iter().any(|(_, v)| v.is_some()) {
            return;
        }
        let counter = def.kind == MetricKind::Counter;
        let start = self.start_unix_nanos;
        write_metric(self.sink, &def.info(), |sink| {
            for (labels, v) in series {
                if let Some(v) = *v {
                    let value = if counter {
                        ValueRef::Sum(v)
                    } else {
                        ValueRef::Gauge(v)
                    };
                    sink.point(labels, start, value);
                }
            }
        });
    }
}

impl Streaming for TargetMetrics {
    /// Streams the target's families under its lock (borrowed labels; a family the sink does not want
    /// is not written).
    fn write(&self, sink: &mut dyn MetricSink) {
        let s = self.lock();
        let u = self.units;
        let up = if s.info.is_some() { 1.0 } else { 0.0 };
        write_metric(sink, &catalogue::TARGET_UP.info(), |sink| {
            sink.point(&[], 0, ValueRef::Gauge(up));
        });
        write_metric(sink, &catalogue::TARGET_RESTARTS.info(), |sink| {
            sink.point(&[], 0, ValueRef::Sum(s.restarts as f64));
        });
        if s.last_identity.is_some() {
            write_metric(sink, &catalogue::TARGET_EXITS.info(), |sink| {
                for reason in [ExitReason::OomKill, ExitReason::Other] {
                    let n = s.exits[reason as usize] as f64;
                    sink.point(&[("reason", reason.label())], 0, ValueRef::Sum(n));
                }
            });
        }
        if let Some(kills) = s.oom_kills {
            write_metric(sink, &catalogue::CGROUP_MEMORY_OOM_KILLS.info(), |sink| {
                sink.point(&[], 0, ValueRef::Sum(kills as f64));
            });
        }
        let Some(info) = &s.info else { return };
        let target_info = catalogue::TARGET_INFO.info();
        if sink.wants(&target_info) {
            let pid = info.pid.to_string();
            let runtime_pid = info.runtime_pid.to_string();
            let labels: Vec<(&str, &str)> = [
                ("pid", pid.as_str()),
                ("comm", &info.comm),
                ("runtime", &info.runtime),
                ("runtime_pid", &runtime_pid),
                ("selected_by", info.selected_by),
            ]
            .into_iter()
            .chain(
                self.info_labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .collect();
            write_metric(sink, &target_info, |sink| {
                sink.point(&labels, 0, ValueRef::Gauge(1.0));
            });
        }
        let start_unix = u.boot_time as f64 + info.start_ticks as f64 / u.hz as f64;
        let mut b = FamilyWriter {
            sink,
            start_unix_nanos: (start_unix * 1e9) as u64,
        };
        if let Some(p) = &s.proc {
            process_families(&mut b, p, u, start_unix);
        }
        if let Some(t) = &s.tree {
            b.start_unix_nanos = 0;
            tree_families(&mut b, t);
        }
        if let Some(c) = &s.cgroup {
            b.start_unix_nanos = 0;
            cgroup_families(&mut b, c);
        }
    }
}

fn process_families(b: &mut FamilyWriter<'_>, p: &ProcSample, u: KernelUnits, start_unix: f64) {
    let hz = u.hz as f64;
    let st = p.stat;
    let status = p.status;
    let cpu_mode = "cpu.mode";
    let dir = "disk.io.direction";
    let cs = "process.context_switch.type";
    let pf = "system.paging.fault.type";
    let f = |v: Option<u64>| v.map(|v| v as f64);
    b.one(
        &catalogue::PROCESS_CPU_TIME,
        &[
            (&[(cpu_mode, "user")], st.map(|s| s.utime as f64 / hz)),
            (&[(cpu_mode, "system")], st.map(|s| s.stime as f64 / hz)),
        ],
    );
    b.one(
        &catalogue::PROCESS_MEMORY_USAGE,
        &[(
            &[],
            st.and_then(|s| s.rss_bytes(u.page_size)).map(|b| b as f64),
        )],
    );
    b.one(
        &catalogue::PROCESS_MEMORY_VIRTUAL,
        &[(&[], st.map(|s| s.vsize as f64))],
    );
    b.one(
        &catalogue::PROCESS_DISK_IO,
        &[
            (&[(dir, "read")], p.io.map(|i| i.read_bytes as f64)),
            (&[(dir, "write")], p.io.map(|i| i.write_bytes as f64)),
        ],
    );
    // Threads and fds use the Collector process scraper's names: semconv's newer `*.count` names translate
    // to gauges ending in `_count`, which `promtool check metrics` rejects and no existing dashboard uses.
    b.one(
        &catalogue::PROCESS_THREADS,
        &[(&[], st.map(|s| s.num_threads as f64))],
    );
    b.one(
        &catalogue::PROCESS_OPEN_FILE_DESCRIPTORS,
        &[(&[], f(p.open_fds))],
    );
    b.one(
        &catalogue::PROCESS_CONTEXT_SWITCHES,
        &[
            (
                &[(cs, "voluntary")],
                f(status.and_then(|s| s.voluntary_ctxt)),
            ),
            (
                &[(cs, "involuntary")],
                f(status.and_then(|s| s.nonvoluntary_ctxt)),
            ),
        ],
    );
    b.one(
        &catalogue::PROCESS_PAGING_FAULTS,
        &[
            (&[(pf, "major")], st.map(|s| s.majflt as f64)),
            (&[(pf, "minor")], st.map(|s| s.minflt as f64)),
        ],
    );
    b.one(
        &catalogue::PROCESS_UPTIME,
        &[(&[], Some((now_unix() - start_unix).max(0.0)))],
    );
    b.one(&catalogue::PROCESS_MAX_FDS, &[(&[], f(p.max_fds))]);
    b.one(&catalogue::PROCESS_START_TIME, &[(&[], Some(start_unix))]);
    b.one(
        &catalogue::PROCESS_SCHEDULER_WAIT,
        &[(&[], p.sched_wait_ns.map(|n| n as f64 / 1e9))],
    );
    b.one(
        &catalogue::PROCESS_SWAP,
        &[(&[], f(status.and_then(|s| s.vm_swap)))],
    );
    b.one(&catalogue::PROCESS_PROPORTIONAL_MEMORY, &[(&[], f(p.pss))]);
}

/// One series of [`OptionalSeries`]: labels and a value.
type Labelled<'a> = (&'a [(&'a str, &'a str)], Option<f64>);

/// The tree's size and its bounded view: the largest members by memory and the busiest by CPU.
fn tree_families(b: &mut FamilyWriter<'_>, t: &TreeView) {
    b.one(
        &catalogue::TARGET_PROCESSES,
        &[(&[], Some(t.processes as f64))],
    );
    b.one(
        &catalogue::TARGET_PROCESSES_UNTRACKED,
        &[(&[], Some(t.untracked as f64))],
    );
    let members = t.members();
    let pids: Vec<String> = members.iter().map(|m| m.pid.to_string()).collect();
    let comms: Vec<std::borrow::Cow<'_, str>> = members.iter().map(|m| m.comm.as_str()).collect();
    let labels: Vec<[(&str, &str); 2]> = pids
        .iter()
        .zip(&comms)
        .map(|(p, c)| [("pid", p.as_str()), ("comm", c.as_ref())])
        .collect();
    let rss: Vec<Labelled<'_>> = labels
        .iter()
        .zip(members)
        .map(|(l, m)| (&l[..], Some(m.rss_bytes as f64)))
        .collect();
    b.one(&catalogue::PROCESS_MEMBER_MEMORY_USAGE, &rss);
    let cpu: Vec<Labelled<'_>> = labels
        .iter()
        .zip(members)
        .map(|(l, m)| (&l[..], Some(m.cpu_cores)))
        .collect();
    b.one(&catalogue::PROCESS_MEMBER_CPU_CORES, &cpu);
}

fn cgroup_families(b: &mut FamilyWriter<'_>, c: &CgroupSample) {
    let f = |v: Option<u64>| v.map(|v| v as f64);
    b.one(&catalogue::CGROUP_MEMORY_USAGE, &[(&[], f(c.memory_usage))]);
    b.one(&catalogue::CGROUP_MEMORY_LIMIT, &[(&[], f(c.memory_limit))]);
    b.one(
        &catalogue::CGROUP_CPU_LIMIT_CORES,
        &[(&[], c.cpu_limit_cores)],
    );
    b.one(
        &catalogue::CGROUP_CPU_THROTTLED,
        &[(&[], c.cpu_throttled_us.map(|v| v as f64 / 1e6))],
    );
    b.one(
        &catalogue::CGROUP_CPU_THROTTLED_PERIODS,
        &[(&[], f(c.cpu_throttled_periods))],
    );
    b.one(&catalogue::CGROUP_CPU_PERIODS, &[(&[], f(c.cpu_periods))]);
    b.one(&catalogue::CGROUP_PIDS, &[(&[], f(c.pids))]);
    b.one(&catalogue::CGROUP_PIDS_LIMIT, &[(&[], f(c.pids_limit))]);
    let scope = c.pressure_scope.label();
    if c.pressure.iter().all(Option::is_none) {
        return;
    }
    write_metric(b.sink, &catalogue::PRESSURE_STALLED.info(), |sink| {
        for (r, p) in RESOURCES.iter().zip(&c.pressure) {
            let Some(p) = p else { continue };
            sink.point(
                &[("resource", r), ("kind", "some"), ("scope", scope)],
                0,
                ValueRef::Sum(p.some_us as f64 / 1e6),
            );
            if let Some(full) = p.full_us {
                sink.point(
                    &[("resource", r), ("kind", "full"), ("scope", scope)],
                    0,
                    ValueRef::Sum(full as f64 / 1e6),
                );
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Collector, Metric, Value};
    use crate::probe::procfs::{Stat, Status};

    fn units() -> KernelUnits {
        KernelUnits {
            hz: 100,
            page_size: 4096,
            boot_time: 1_700_000_000,
        }
    }

    fn names(f: &[Metric]) -> Vec<&str> {
        f.iter().map(|f| &*f.name).collect()
    }

    #[test]
    fn down_target_exposes_only_up_and_restarts() {
        let s = TargetMetrics::new(units());
        let mut out = vec![];
        s.collect(&mut out);
        crate::catalogue::assert_agrees(&out);
        assert_eq!(
            names(&out),
            vec![catalogue::TARGET_UP.name, catalogue::TARGET_RESTARTS.name]
        );
        assert_eq!(out[0].points[0].value, Value::Gauge(0.0));
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
            runtime_pid: 7,
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
            None,
        );
        let mut out = vec![];
        s.collect(&mut out);
        crate::catalogue::assert_agrees(&out);
        let n = names(&out);
        assert!(n.contains(&catalogue::PROCESS_CPU_TIME.name));
        assert!(n.contains(&catalogue::PROCESS_MEMORY_USAGE.name));
        assert!(n.contains(&catalogue::PROCESS_THREADS.name));
        assert!(
            !n.contains(&catalogue::PROCESS_DISK_IO.name),
            "io unreadable: left out, not 0"
        );
        assert!(!n.contains(&catalogue::PROCESS_OPEN_FILE_DESCRIPTORS.name));
        let cpu = out
            .iter()
            .find(|f| f.name == catalogue::PROCESS_CPU_TIME.name)
            .unwrap();
        assert_eq!(
            cpu.points[0].attributes,
            vec![("cpu.mode".to_string(), "user".to_string())]
        );
        assert_eq!(cpu.points[0].value, Value::Sum(1.5));
        let rss = out
            .iter()
            .find(|f| f.name == catalogue::PROCESS_MEMORY_USAGE.name)
            .unwrap();
        assert_eq!(rss.points[0].value, Value::Gauge(40960.0));
        let start = out
            .iter()
            .find(|f| f.name == catalogue::PROCESS_START_TIME.name)
            .unwrap();
        assert_eq!(start.points[0].value, Value::Gauge(1_700_000_005.0));
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
            runtime_pid: 7,
        };
        s.attach(info.clone());
        s.update(ProcSample::default(), None, None);
        s.detach();
        s.record_exit(ExitReason::OomKill);
        s.set_oom_kills(Some(1));
        let mut out = vec![];
        s.collect(&mut out);
        crate::catalogue::assert_agrees(&out);
        let names: Vec<&str> = out.iter().map(|f| &*f.name).collect();
        assert_eq!(
            names,
            [
                catalogue::TARGET_UP.name,
                catalogue::TARGET_RESTARTS.name,
                catalogue::TARGET_EXITS.name,
                catalogue::CGROUP_MEMORY_OOM_KILLS.name
            ],
            "a down target keeps its counters, not its samples"
        );
        assert_eq!(out[2].points[0].value, Value::Sum(1.0));
        assert_eq!(out[3].points[0].value, Value::Sum(1.0));
        s.attach(info.clone());
        let mut out = vec![];
        s.collect(&mut out);
        crate::catalogue::assert_agrees(&out);
        assert_eq!(
            out[1].points[0].value,
            Value::Sum(0.0),
            "same instance again is no restart"
        );
        s.attach(TargetInfo {
            pid: 8,
            ..info.clone()
        });
        let mut out = vec![];
        s.collect(&mut out);
        crate::catalogue::assert_agrees(&out);
        assert_eq!(out[1].points[0].value, Value::Sum(1.0));
        s.attach_other(TargetInfo { pid: 9, ..info });
        let mut out = vec![];
        s.collect(&mut out);
        crate::catalogue::assert_agrees(&out);
        assert_eq!(
            out[1].points[0].value,
            Value::Sum(1.0),
            "switching to a process that was already running is no restart"
        );
        let info = out
            .iter()
            .find(|f| f.name == catalogue::TARGET_INFO.name)
            .expect("vitals_target_info is exposed while attached");
        let labels = &info.points[0].attributes;
        assert!(
            labels
                .iter()
                .any(|(k, v)| k == "selected_by" && v == "process"),
            "{labels:?}"
        );
    }
}
