//! The sampling loop: keeps a target attached (searching again when it vanishes), takes one procfs,
//! cgroup, hsperfdata and listen-socket sample of it every interval, and runs the derived signals.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::export::self_metrics::ExporterStats;
use crate::signal::{Derived, TickInputs};
use crate::source::cgroup::{locate, CgroupReader, CgroupRoots, CgroupSample};
use crate::source::hsperf::{self, HsperfReader, JvmSample};
use crate::source::procfs::{read_comm, ProcReader, ProcSample, PssPolicy};
use crate::source::sockets::{listen_sockets, socket_inodes, somaxconn, ListenSocket, SockDiag};
use crate::store::app_metrics::AppMetrics;
use crate::store::target::{KernelUnits, TargetInfo, TargetStore};
use crate::target::{detect_runtime, search, Selector, TargetId};

/// Everything the loop needs.
pub struct Sampler {
    selector: Option<Selector>,
    proc_root: PathBuf,
    cgroup_roots: CgroupRoots,
    pss: Option<PssPolicy>,
    store: Arc<TargetStore>,
    stats: Arc<ExporterStats>,
    ready: Arc<AtomicBool>,
    derived: Arc<Derived>,
    app: Arc<AppMetrics>,
    units: KernelUnits,
    sampled: Arc<tokio::sync::Notify>,
    attached: Option<Attached>,
    /// For `--pid`: the first instance seen. A later process that reuses the pid is someone else.
    pinned: Option<TargetId>,
    last_search_error: Option<String>,
    threads_max: Option<u64>,
    somaxconn: u32,
    /// Kept open; None where netlink is not allowed (then procfs and somaxconn are used).
    sock_diag: Option<SockDiag>,
}

struct Attached {
    id: TargetId,
    proc: ProcReader,
    cgroup: Option<CgroupReader>,
    nspid: u32,
    hsperf: Option<HsperfReader>,
    inodes: HashSet<u64>,
    ticks: u64,
}

/// Readings of one tick, kept for the derived signals.
#[derive(Default)]
struct Readings {
    proc: Option<ProcSample>,
    cgroup: Option<CgroupSample>,
    jvm: Option<JvmSample>,
    listen: Vec<ListenSocket>,
}

/// What the sampler is wired to.
pub struct SamplerParts {
    /// The target's latest sample.
    pub store: Arc<TargetStore>,
    /// Read error counters.
    pub stats: Arc<ExporterStats>,
    /// Set after the first tick.
    pub ready: Arc<AtomicBool>,
    /// Derived signals.
    pub derived: Arc<Derived>,
    /// The app's OTLP metrics (for the runtime hint).
    pub app: Arc<AppMetrics>,
    /// Kernel units.
    pub units: KernelUnits,
    /// Notified after every tick, so readers of rates (the live page) take them at sample boundaries.
    pub sampled: Arc<tokio::sync::Notify>,
}

impl Sampler {
    /// A sampler that has not attached yet. With no selector it only runs the derived signals.
    pub fn new(
        selector: Option<Selector>,
        cgroup_roots: CgroupRoots,
        pss: Option<PssPolicy>,
        parts: SamplerParts,
    ) -> Self {
        let proc_root = cgroup_roots.proc_root.clone();
        let threads_max = std::fs::read_to_string(proc_root.join("sys/kernel/threads-max"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        Sampler {
            selector,
            somaxconn: somaxconn(&proc_root),
            sock_diag: SockDiag::open().ok(),
            proc_root,
            cgroup_roots,
            pss,
            store: parts.store,
            stats: parts.stats,
            ready: parts.ready,
            derived: parts.derived,
            app: parts.app,
            units: parts.units,
            sampled: parts.sampled,
            attached: None,
            pinned: None,
            last_search_error: None,
            threads_max,
        }
    }

    /// One interval's work: attach if needed, sample, follow a vanished target, derive.
    pub fn tick(&mut self) {
        let mut r = Readings::default();
        if self.selector.is_some() {
            if self.attached.is_none() {
                self.try_attach();
            }
            if self.attached.is_some() && !self.sample_attached(&mut r) {
                let pid = self.attached.as_ref().map(|a| a.id.pid).unwrap_or(0);
                tracing::info!(pid, "target exited; searching again");
                self.attached = None;
                self.store.detach();
                self.derived.target_changed();
                self.try_attach();
                if self.attached.is_some() {
                    r = Readings::default();
                    self.sample_attached(&mut r);
                }
            }
        }
        if r.proc.is_some() {
            if let Some(lang) = self.app.resource_attribute("telemetry_sdk_language") {
                self.store.hint_runtime(runtime_of_sdk_language(&lang));
            }
        }
        let hz = self.units.hz as f64;
        let stat = r.proc.and_then(|p| p.stat);
        self.derived.tick(&TickInputs {
            proc: r.proc.as_ref(),
            cgroup: r.cgroup.as_ref(),
            jvm: r.jvm.as_ref(),
            listen: &r.listen,
            proc_cpu_seconds: stat.map(|s| (s.utime + s.stime) as f64 / hz),
            rss: stat.map(|s| (s.rss_pages * self.units.page_size) as f64),
            threads_max: self.threads_max,
        });
        self.ready.store(true, Ordering::Release);
    }

    /// Samples the attached target into `r`; false when it is gone.
    fn sample_attached(&mut self, r: &mut Readings) -> bool {
        let Some(a) = self.attached.as_mut() else {
            return false;
        };
        let slow_tier = a.ticks % 10 == 0;
        a.ticks += 1;
        let Ok(p) = a.proc.sample(self.stats.as_ref()) else {
            return false;
        };
        let c = a.cgroup.as_mut().map(|c| c.sample(self.stats.as_ref()));
        self.store.update(p, c);
        r.proc = Some(p);
        r.cgroup = c;
        if a.hsperf.is_none() && slow_tier {
            if let Some(path) = hsperf::locate(&self.proc_root, a.id.pid, a.nspid) {
                a.hsperf = HsperfReader::open(&path).ok();
                if a.hsperf.is_some() {
                    tracing::info!(path = %path.display(), "reading JVM hsperfdata");
                    self.store.hint_runtime("jvm");
                }
            }
        }
        if let Some(h) = a.hsperf.as_mut() {
            match h.sample() {
                Ok(j) => r.jvm = Some(j),
                Err(_) => crate::source::procfs::ReadErrorSink::read_error(
                    self.stats.as_ref(),
                    crate::source::ReadSource::Hsperf,
                ),
            }
        }
        if slow_tier {
            match socket_inodes(&self.proc_root, a.id.pid) {
                Ok(i) => a.inodes = i,
                Err(_) => crate::source::procfs::ReadErrorSink::read_error(
                    self.stats.as_ref(),
                    crate::source::ReadSource::ProcFd,
                ),
            }
        }
        if !a.inodes.is_empty() {
            r.listen = listen_sockets(
                self.sock_diag.as_mut(),
                &self.proc_root,
                a.id.pid,
                &a.inodes,
                self.somaxconn,
            );
        }
        true
    }

    fn try_attach(&mut self) {
        let Some(selector) = &self.selector else {
            return;
        };
        let found = match search(selector, &self.proc_root) {
            Ok(f) => {
                self.last_search_error = None;
                f
            }
            Err(e) => {
                let msg = e.to_string();
                if self.last_search_error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(error = %msg, "target search failed; will retry every interval");
                    self.last_search_error = Some(msg);
                }
                return;
            }
        };
        let Some(id) = found.target else { return };
        if matches!(selector, Selector::Pid(_)) {
            match self.pinned {
                Some(p) if p != id => return,
                _ => self.pinned = Some(id),
            }
        }
        if !found.passed_over.is_empty() {
            tracing::info!(chosen = id.pid, others = ?found.passed_over, "several processes match; watching the oldest");
        }
        let mut proc = match ProcReader::open(&self.proc_root, id.pid, self.pss) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(pid = id.pid, error = %e, "cannot open the target's /proc files");
                return;
            }
        };
        let cgroup = match locate(&self.cgroup_roots, id.pid) {
            Ok(dirs) => {
                tracing::debug!(?dirs, "target cgroup");
                Some(CgroupReader::open(&dirs, &self.proc_root))
            }
            Err(e) => {
                tracing::warn!(pid = id.pid, error = %e, "target cgroup not found; container metrics left out");
                self.stats_error(crate::source::ReadSource::Cgroup);
                None
            }
        };
        let nspid = proc.status_nspid().unwrap_or(id.pid);
        let comm = read_comm(&self.proc_root, id.pid).unwrap_or_default();
        let runtime = detect_runtime(&self.proc_root, id.pid, &comm).to_owned();
        tracing::info!(pid = id.pid, %comm, %runtime, selector = %selector.describe(), "attached to target");
        self.store.attach(TargetInfo {
            pid: id.pid,
            comm,
            runtime,
            start_ticks: id.start_ticks,
        });
        self.derived.target_changed();
        self.attached = Some(Attached {
            id,
            proc,
            cgroup,
            nspid,
            hsperf: None,
            inodes: HashSet::new(),
            ticks: 0,
        });
    }

    fn stats_error(&self, source: crate::source::ReadSource) {
        use crate::source::procfs::ReadErrorSink;
        self.stats.read_error(source);
    }

    /// Ticks every `interval` until `shutdown`.
    pub async fn run(mut self, interval: Duration, shutdown: CancellationToken) {
        let mut timer = tokio::time::interval(interval);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = timer.tick() => {
                    // procfs reads are short blocking syscalls; block_in_place keeps them off other tasks' way.
                    tokio::task::block_in_place(|| self.tick());
                    self.sampled.notify_one();
                }
            }
        }
    }
}

/// The runtime label for an OTLP resource's `telemetry.sdk.language`.
pub fn runtime_of_sdk_language(lang: &str) -> &'static str {
    match lang {
        "java" => "jvm",
        "nodejs" | "webjs" => "node",
        "go" => "go",
        "python" => "python",
        "dotnet" => "dotnet",
        _ => "unknown",
    }
}
