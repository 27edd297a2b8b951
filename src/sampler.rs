//! The sampling loop: keeps a target attached (searching again when it vanishes), takes one procfs,
//! cgroup, hsperfdata and listen-socket sample of it every interval, and runs the derived signals.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::export::self_metrics::ExporterStats;
use crate::probe::cgroup::{locate, CgroupReader, CgroupRoots, CgroupSample};
use crate::probe::hsperf::{self, HsperfOwner, HsperfReader, HsperfStatus, JvmSample};
use crate::probe::kept::KeptFile;
use crate::probe::oom::OomCounter;
use crate::probe::procfs::{read_comm, ProcReader, ProcSample, PssPolicy};
use crate::probe::sockets::{listen_sockets, socket_inodes, somaxconn, ListenSocket, SockDiag};
use crate::runtime::{self, Runtime};
use crate::signal::target::{ExitReason, KernelUnits, TargetInfo, TargetMetrics};
use crate::signal::{Derived, TickInputs};
use crate::target::status::TargetStatus;
use crate::target::{detect_runtime, search, Selector, TargetId};

/// How often "no target found" is repeated in the log while vitals keeps searching.
const NOT_FOUND_WARNING_EVERY: Duration = Duration::from_secs(60);

/// How often the target's liveness is checked (and a missing target searched for) between ticks: an
/// instance that lives at least this long is seen, however long the sampling interval.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// After an exit a missing `--process` target is searched for after [`WATCH_INTERVAL`], then at gaps that
/// double up to the interval (at most [`MAX_SEARCH_GAP`]): a quick restart is found within 100 ms, and a
/// target that stays away costs a handful of scans, not one every 100 ms.
const FIRST_SEARCH_GAP: Duration = WATCH_INTERVAL;

/// The longest gap between those searches when the interval is longer.
const MAX_SEARCH_GAP: Duration = Duration::from_secs(30);

/// An OOM kill counted this many watch periods or fewer before an exit is seen is taken as its cause: the
/// exit itself is seen within one period; the rest is slack for a late watch on a loaded machine and for
/// the kernel tearing down a large address space.
const EXIT_WINDOW_WATCH_PERIODS: u32 = 10;

/// Everything the loop needs.
pub struct Sampler {
    selector: Option<Selector>,
    proc_root: PathBuf,
    cgroup_roots: CgroupRoots,
    pss: Option<PssPolicy>,
    store: Arc<TargetMetrics>,
    stats: Arc<ExporterStats>,
    status: Arc<TargetStatus>,
    derived: Arc<Derived>,
    units: KernelUnits,
    sampled: Arc<tokio::sync::Notify>,
    attached: Option<Attached>,
    /// For `--pid`: the first instance seen. A later process that reuses the pid is someone else.
    pinned: Option<TargetId>,
    last_search_error: Option<String>,
    /// Why the last search attached nothing (for /readyz and the log).
    not_attached: Option<String>,
    /// When "no target found" was last logged.
    not_found_warned: Option<Instant>,
    /// Other processes that matched when the current target was chosen: attaching to one of them
    /// later is a switch, not a restart.
    others_at_attach: Vec<TargetId>,
    /// Set while only wrappers match, so the warning is logged once per episode.
    waiting_for_wrapped: bool,
    threads_max: Option<u64>,
    somaxconn: u32,
    /// Kept open; None where netlink is not allowed (then procfs and somaxconn are used).
    sock_diag: Option<SockDiag>,
    /// Read buffer for the target's comm.
    comm_buf: Vec<u8>,
    /// OOM kills of the target across its instances.
    oom: OomCounter,
    /// When an OOM kill was last counted while a target was attached.
    last_oom_kill: Option<std::time::Instant>,
    /// A kill counted this long before an exit is seen is taken as its cause.
    exit_window: Duration,
    /// When a missing `--process` target is next searched for between ticks (None: only at ticks).
    next_search: Option<std::time::Instant>,
    /// The gap before the next of those searches; doubles after each one that finds nothing.
    search_gap: Duration,
    /// The sampling interval: the longest gap between searches.
    interval: Duration,
}

struct Attached {
    id: TargetId,
    proc: ProcReader,
    cgroup: Option<CgroupReader>,
    hsperf: Option<HsperfReader>,
    /// Who the hsperfdata file must belong to.
    hsperf_owner: HsperfOwner,
    /// Why hsperfdata is or is not read, as last reported.
    hsperf_status: Option<HsperfStatus>,
    /// The target runs a JVM (by its executable or its hsperfdata): only then is an absent file news.
    is_jvm: bool,
    inodes: HashSet<u64>,
    ticks: u64,
    /// /proc/PID/comm, read every tick: exec keeps the pid and start time but changes the program.
    comm_file: Option<KeptFile>,
    comm: String,
}

/// The pids of some processes, for the log.
fn pids(ids: &[TargetId]) -> Vec<u32> {
    ids.iter().map(|t| t.pid).collect()
}

/// Logs a change of hsperfdata status once and publishes it; a non-JVM without a file says nothing.
fn report_hsperf_status(derived: &Derived, a: &mut Attached, status: HsperfStatus) {
    if a.hsperf_status.as_ref() == Some(&status) {
        return;
    }
    let shown = a.is_jvm || status != HsperfStatus::Absent;
    // A JVM creates its file a moment after it starts: an absent file is news from the second search on.
    if status == HsperfStatus::Absent && a.ticks <= 10 {
        derived
            .pause
            .set_hsperf_status(shown.then(|| status.reason()));
        return;
    }
    match &status {
        HsperfStatus::Reading => {}
        HsperfStatus::Absent if !a.is_jvm => {}
        s => tracing::warn!(pid = a.id.pid, reason = s.reason(), "{}", s.explain()),
    }
    derived
        .pause
        .set_hsperf_status(shown.then(|| status.reason()));
    a.hsperf_status = Some(status);
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
    pub store: Arc<TargetMetrics>,
    /// Read error counters.
    pub stats: Arc<ExporterStats>,
    /// What /readyz and / say: ready once the target is attached and sampled (or, with no target
    /// selected, after the first tick).
    pub status: Arc<TargetStatus>,
    /// Derived signals.
    pub derived: Arc<Derived>,
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
            comm_buf: Vec::with_capacity(64),
            oom: OomCounter::default(),
            last_oom_kill: None,
            exit_window: WATCH_INTERVAL * EXIT_WINDOW_WATCH_PERIODS,
            next_search: None,
            search_gap: FIRST_SEARCH_GAP,
            interval: Duration::from_secs(1),
            proc_root,
            cgroup_roots,
            pss,
            store: parts.store,
            stats: parts.stats,
            status: parts.status,
            derived: parts.derived,
            units: parts.units,
            sampled: parts.sampled,
            attached: None,
            pinned: None,
            last_search_error: None,
            not_attached: None,
            not_found_warned: None,
            others_at_attach: Vec::new(),
            waiting_for_wrapped: false,
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
                self.handle_exit();
                self.try_attach();
                if self.attached.is_some() {
                    r = Readings::default();
                    self.sample_attached(&mut r);
                }
            }
            self.poll_oom();
        }
        if r.proc.is_some() {
            if let Some(runtime) = self.derived.sdk_runtime() {
                self.store.hint_runtime(runtime.label());
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
        self.update_status(r.proc.is_some());
    }

    /// Tells /readyz and / what is going on; warns (once a minute) while no target is found.
    fn update_status(&mut self, sampled: bool) {
        let Some(selector) = &self.selector else {
            self.status
                .set_ready("no target selected: serving OTLP-derived signals only".to_owned());
            return;
        };
        if let (true, Some(info)) = (sampled, self.store.info()) {
            self.not_found_warned = None;
            self.status.set_ready(format!(
                "watching pid {} ({}, runtime {}), selected by {}",
                info.pid,
                info.comm,
                info.runtime,
                selector.describe()
            ));
            return;
        }
        if let Selector::Child(pid) = selector {
            // `run` mode: vitals exits with the child in a moment; there is nothing to search for.
            self.status
                .set_waiting(format!("no target: the child (pid {pid}) has exited"));
            return;
        }
        let reason = self
            .not_attached
            .clone()
            .unwrap_or_else(|| format!("no process found for {}", selector.describe()));
        if self
            .not_found_warned
            .is_none_or(|t| t.elapsed() >= NOT_FOUND_WARNING_EVERY)
        {
            tracing::warn!(
                "no target: {reason}; searching again every interval (/readyz answers 503 until one is found)"
            );
            self.not_found_warned = Some(Instant::now());
        }
        self.status.set_waiting(format!("no target: {reason}"));
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
        Self::follow_exec(a, &self.proc_root, &self.store, &mut self.comm_buf);
        r.proc = Some(p);
        r.cgroup = c;
        if a.hsperf.is_none() && slow_tier {
            let status = match hsperf::open_for_target(&self.proc_root, &a.hsperf_owner) {
                Ok((reader, path)) => {
                    tracing::info!(path = %path.display(), "reading JVM hsperfdata");
                    a.hsperf = Some(reader);
                    self.store.hint_runtime(Runtime::Jvm.label());
                    a.is_jvm = true;
                    HsperfStatus::Reading
                }
                Err(why) => why,
            };
            report_hsperf_status(&self.derived, a, status);
        }
        if let Some(h) = a.hsperf.as_mut() {
            match h.sample() {
                Ok(j) => {
                    r.jvm = Some(j);
                    report_hsperf_status(&self.derived, a, HsperfStatus::Reading);
                }
                Err(e) => {
                    crate::probe::procfs::ReadErrorSink::read_error(
                        self.stats.as_ref(),
                        crate::probe::ReadSource::Hsperf,
                    );
                    report_hsperf_status(&self.derived, a, HsperfStatus::Unreadable(e.to_string()));
                }
            }
        }
        if slow_tier {
            match socket_inodes(&self.proc_root, a.id.pid) {
                Ok(i) => a.inodes = i,
                Err(_) => crate::probe::procfs::ReadErrorSink::read_error(
                    self.stats.as_ref(),
                    crate::probe::ReadSource::ProcFd,
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

    /// Between ticks: a cheap liveness check of the attached target (one kept stat file) or a search for
    /// a missing one, and the OOM counters, so instances that live shorter than the interval are still
    /// counted (restarts, exits and their OOM kills).
    fn watch(&mut self) {
        if self.selector.is_none() {
            return;
        }
        match self.attached.as_mut() {
            Some(a) => {
                let alive = a.proc.read_stat().map(|st| st.starttime);
                if alive.ok() != Some(a.id.start_ticks) {
                    self.handle_exit();
                    self.try_attach();
                }
            }
            None => {
                // A /proc scan costs a read of every process' comm and cmdline: after an exit, scan at
                // gaps doubling from 100 ms up to the interval (the tick searches then); a pid or pid file
                // is one read, always searched.
                if !matches!(self.selector, Some(Selector::Process(_))) {
                    self.try_attach();
                } else if let Some(due) = self.next_search {
                    let now = std::time::Instant::now();
                    if now >= due {
                        self.try_attach();
                        self.search_gap =
                            (self.search_gap * 2).min(self.interval.min(MAX_SEARCH_GAP));
                        self.next_search = (self.attached.is_none()
                            && self.search_gap < self.interval)
                            .then(|| now + self.search_gap);
                    }
                }
            }
        }
        self.poll_oom();
    }

    /// True when the attached target is still the same live instance: one read of its kept `stat` file,
    /// cheap enough to run on the async worker every [`WATCH_INTERVAL`] (handing the thread over with
    /// `block_in_place` each time costs more than the read). Kills in its cgroup while it runs are counted
    /// by the tick; the kill that ends it by [`Sampler::handle_exit`].
    fn attached_alive(&mut self) -> bool {
        self.attached.as_mut().is_some_and(|a| {
            a.proc.read_stat().map(|st| st.starttime).ok() == Some(a.id.start_ticks)
        })
    }

    /// Reads the OOM counters and keeps the store's total current.
    fn poll_oom(&mut self) {
        let attached = self.attached.is_some();
        if self.oom.poll(attached) > 0 && attached {
            self.last_oom_kill = Some(std::time::Instant::now());
        }
        self.store.set_oom_kills(self.oom.total());
    }

    /// The attached target is gone: count the kills of its last moments, say why it ended when known,
    /// drop its series.
    fn handle_exit(&mut self) {
        let Some(a) = self.attached.take() else {
            return;
        };
        // An OOM kill counted now, or by a poll shortly before the exit was seen, is why it ended.
        let now_killed = self.oom.poll(false) > 0;
        let recent = self
            .last_oom_kill
            .take()
            .is_some_and(|t| t.elapsed() < self.exit_window);
        let reason = if now_killed || recent {
            ExitReason::OomKill
        } else {
            ExitReason::Other
        };
        if matches!(self.selector, Some(Selector::Child(_))) {
            // `run` mode: vitals itself exits with the child's status; there is nothing to find.
            tracing::debug!(pid = a.id.pid, reason = reason.label(), "child exited");
        } else {
            tracing::info!(
                pid = a.id.pid,
                reason = reason.label(),
                oom_kills_total = self.oom.total().unwrap_or(0),
                "target exited; searching again"
            );
        }
        self.search_gap = FIRST_SEARCH_GAP;
        self.next_search = Some(std::time::Instant::now() + FIRST_SEARCH_GAP);
        self.store.detach();
        self.store.record_exit(reason);
        self.store.set_oom_kills(self.oom.total());
        self.derived.target_changed();
    }

    /// Refreshes comm and runtime when the target exec()ed another program (`sh -c 'exec java …'`,
    /// `opentelemetry-instrument python …`), and looks for the new program's hsperfdata.
    fn follow_exec(a: &mut Attached, proc_root: &Path, store: &TargetMetrics, buf: &mut Vec<u8>) {
        let Some(file) = &a.comm_file else { return };
        let Ok(raw) = file.read(buf) else { return };
        let comm = String::from_utf8_lossy(raw).trim_end().to_owned();
        if comm == a.comm {
            return;
        }
        let runtime = detect_runtime(proc_root, a.id.pid, &comm);
        let label = runtime::label_of(runtime);
        tracing::info!(pid = a.id.pid, old = %a.comm, %comm, runtime = label, "target exec'd another program");
        store.refresh_program(comm.clone(), label.to_owned());
        a.comm = comm;
        a.is_jvm = runtime == Some(Runtime::Jvm);
        a.hsperf = None;
        a.hsperf_status = None;
        // As at attach: the next tick looks for hsperfdata (the slow tier runs when ticks is a multiple of
        // 10), and the new JVM gets the same start-up grace before an absent file is news.
        a.ticks = 0;
    }

    fn try_attach(&mut self) {
        let Some(selector) = &self.selector else {
            return;
        };
        self.not_attached = None;
        let found = match search(selector, &self.proc_root) {
            Ok(f) => {
                self.last_search_error = None;
                f
            }
            Err(e) => {
                let msg = e.to_string();
                self.not_attached = Some(msg.clone());
                if self.last_search_error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(error = %msg, "target search failed; will retry every interval");
                    self.last_search_error = Some(msg);
                }
                return;
            }
        };
        if found.wrappers_only.is_empty() {
            self.waiting_for_wrapped = false;
        } else if !self.waiting_for_wrapped {
            self.waiting_for_wrapped = true;
            tracing::warn!(
                wrappers = ?found.wrappers_only,
                selector = %selector.describe(),
                "only wrapper processes (shell, timeout, env, …) match; waiting for the program they start. \
                 If the program itself never matches, use a pattern that names it, or --pid-file"
            );
        }
        let Some(id) = found.target else { return };
        if matches!(selector, Selector::Pid(_)) {
            match self.pinned {
                Some(p) if p != id => {
                    self.not_attached = Some(format!(
                        "pid {} exited and now belongs to another process",
                        id.pid
                    ));
                    return;
                }
                _ => self.pinned = Some(id),
            }
        }
        if found.ambiguous {
            tracing::warn!(chosen = id.pid, others = ?pids(&found.passed_over), selector = %selector.describe(),
                "several processes match equally well; watching the oldest. Use a tighter pattern or --pid-file");
        } else if !found.passed_over.is_empty() {
            tracing::info!(chosen = id.pid, others = ?pids(&found.passed_over),
                "several processes match; watching the one that runs the matched program");
        }
        let mut proc = match ProcReader::open(&self.proc_root, id.pid, self.pss) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(pid = id.pid, error = %e, "cannot open the target's /proc files");
                self.not_attached = Some(format!("cannot open /proc/{}: {e}", id.pid));
                return;
            }
        };
        let cgroup = match locate(&self.cgroup_roots, id.pid) {
            Ok(dirs) => {
                tracing::debug!(?dirs, "target cgroup");
                // Kills during the gap count from the parent before the new cgroup's baseline is taken.
                self.oom.poll(false);
                self.oom.follow(&dirs);
                self.store.set_oom_kills(self.oom.total());
                Some(CgroupReader::open(&dirs, &self.proc_root))
            }
            Err(e) => {
                tracing::warn!(pid = id.pid, error = %e, "target cgroup not found; container metrics left out");
                self.stats_error(crate::probe::ReadSource::Cgroup);
                None
            }
        };
        let nspid = proc.status_nspid().unwrap_or(id.pid);
        let comm = read_comm(&self.proc_root, id.pid).unwrap_or_default();
        let detected = detect_runtime(&self.proc_root, id.pid, &comm);
        let runtime = runtime::label_of(detected).to_owned();
        let runtime_is_jvm = detected == Some(Runtime::Jvm);
        tracing::info!(pid = id.pid, %comm, %runtime, selector = %selector.describe(), "attached to target");
        if let Some(report) = crate::target::access::denied_report(&self.proc_root, id.pid) {
            tracing::warn!(pid = id.pid, "{report}");
        }
        let comm_seen = comm.clone();
        let info = TargetInfo {
            pid: id.pid,
            comm,
            runtime,
            start_ticks: id.start_ticks,
            selected_by: selector.label(),
        };
        if self.others_at_attach.contains(&id) {
            self.store.attach_other(info);
        } else {
            self.store.attach(info);
        }
        self.others_at_attach = found.passed_over.clone();
        self.derived.target_changed();
        self.attached = Some(Attached {
            id,
            proc,
            cgroup,
            hsperf: None,
            hsperf_owner: HsperfOwner {
                pid: id.pid,
                nspid,
                uid: crate::probe::procfs::effective_uid(&self.proc_root, id.pid),
                start_unix_ms: Some(
                    self.units.boot_time * 1000 + id.start_ticks * 1000 / self.units.hz.max(1),
                ),
            },
            hsperf_status: None,
            is_jvm: runtime_is_jvm,
            inodes: HashSet::new(),
            ticks: 0,
            comm_file: KeptFile::open(self.proc_root.join(id.pid.to_string()).join("comm")).ok(),
            comm: comm_seen,
        });
    }

    fn stats_error(&self, source: crate::probe::ReadSource) {
        use crate::probe::procfs::ReadErrorSink;
        self.stats.read_error(source);
    }

    /// Ticks every `interval` until `shutdown`, with liveness checks every [`WATCH_INTERVAL`] between
    /// ticks when the interval is longer.
    pub async fn run(mut self, interval: Duration, shutdown: CancellationToken) {
        let mut timer = tokio::time::interval(interval);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let watch_every = WATCH_INTERVAL.min(interval);
        let mut watch = tokio::time::interval(watch_every);
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        self.exit_window = watch_every * EXIT_WINDOW_WATCH_PERIODS;
        self.interval = interval;
        let watching = interval > WATCH_INTERVAL;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = timer.tick() => {
                    // procfs reads are short blocking syscalls; block_in_place keeps them off other tasks' way.
                    tokio::task::block_in_place(|| self.tick());
                    self.sampled.notify_one();
                }
                _ = watch.tick(), if watching => {
                    // The common case, a live target, is one pread: no thread hand-over for it.
                    if !self.attached_alive() {
                        tokio::task::block_in_place(|| self.watch());
                    }
                }
            }
        }
    }
}
