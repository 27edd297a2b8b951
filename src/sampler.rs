//! The sampling loop: keeps a target attached (searching again when it vanishes), drives the probes
//! (procfs, cgroup, hsperfdata, listen sockets, OOM counters) once per interval, hands their observations
//! to derivation and publishes the target's status. Between ticks it learns of the target's exit from a
//! pidfd where the kernel has one, else from a 100 ms poll.
//!
//! All samplers share one thread of their own ([`SamplingThread`]): a reading is a few dozen short
//! blocking reads, and on the async workers each one moved the worker's runtime to another thread
//! (`block_in_place`) and handed the readings' consumers to a third; an idle reading woke about 13
//! threads. On its own thread a reading wakes that thread once, and what follows each reading (the hints,
//! the live page's history) runs there too.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::cadence::Turn;
use crate::language;
use crate::probe::cgroup::{locate, CgroupProbe, CgroupRoots};
use crate::probe::hsperf::HsperfProbe;
use crate::probe::oom::OomCounter;
use crate::probe::own_health::ExporterStats;
use crate::probe::procfs::{effective_uid, read_comm, read_nspid, ProcfsProbe, PssPolicy};
use crate::probe::sockets::SocketProbe;
use crate::probe::{Observations, Probe, ProbeTarget, ReadErrorSink, ReadSource};
use crate::signal::target::{ExitReason, KernelUnits, TargetInfo, TargetMetrics};
use crate::signal::TickSignals;
use crate::target::exit_watch::ExitWatch;
use crate::target::status::TargetStatus;
use crate::target::{detect_runtime, Search, Selection, Selector, StartClock, TargetId};

/// The thread every sampler, and the work that follows each reading, runs on: a single-threaded async
/// runtime, so timers, the pidfd exit events and the requests for fresh readings wake this thread only,
/// and its blocking reads hold up nothing else. The metrics listener runs here too (its first
/// connections, see `server::Spill`). Runs until `shutdown` and [`STOP_GRACE`] after; its tasks end
/// with it.
pub struct SamplingThread {
    handle: tokio::runtime::Handle,
}

impl SamplingThread {
    /// Starts the thread.
    pub fn start(shutdown: CancellationToken) -> std::io::Result<SamplingThread> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("vitals-sampler".to_owned())
            .spawn(move || {
                runtime.block_on(shutdown.cancelled());
                // The metrics listener runs here too: it lets in-flight requests finish for up to a
                // second after the stop, and the process ends once they have.
                runtime.block_on(async { tokio::time::sleep(STOP_GRACE).await });
            })?;
        Ok(SamplingThread { handle })
    }

    /// The sampling thread's runtime, for work that belongs right after a reading (a small scrape's
    /// rendering).
    pub fn handle(&self) -> tokio::runtime::Handle {
        self.handle.clone()
    }

    /// Runs `task` on the sampling thread.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(task)
    }
}

/// How long the sampling thread keeps running tasks after the stop: the metrics listener's graceful
/// stop (up to 0.9 s) runs on it.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// How often "no target found" is repeated in the log while vitals keeps searching.
const NOT_FOUND_WARNING_EVERY: Duration = Duration::from_secs(60);

/// How often a missing target is searched for between ticks, and the attached target's liveness polled
/// where no pidfd tells of its exit: an instance that lives at least this long is seen, however long the
/// sampling interval.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// An OOM kill counted this many watch periods or fewer before an exit is seen is taken as its cause: the
/// exit itself is seen within one period; the rest is slack for a late watch on a loaded machine and for
/// the kernel tearing down a large address space.
const EXIT_WINDOW_WATCH_PERIODS: u32 = 10;

/// Everything the loop needs.
pub struct Sampler {
    selector: Option<Selector>,
    proc_root: PathBuf,
    cgroup_roots: CgroupRoots,
    target_metrics: Arc<TargetMetrics>,
    stats: Arc<ExporterStats>,
    status: Arc<TargetStatus>,
    /// The target `status` was last made ready for (its info as then).
    ready_for: Option<TargetInfo>,
    derived: Arc<TickSignals>,
    units: KernelUnits,
    sampled: Arc<tokio::sync::Notify>,
    /// The reader of the target's process tree, sampled first each tick: it alone says the target is gone,
    /// and it finds the process that runs the runtime.
    procfs: ProcfsProbe,
    /// The other readers of the attached target, sampled in this order after procfs.
    probes: Vec<Box<dyn Probe>>,
    /// OOM kills of the target across its instances: a probe while a target is attached, and polled on its
    /// own between ticks and while none is (kills of instances that died before vitals saw them).
    oom: OomCounter,
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
    /// When an OOM kill was last counted while a target was attached.
    last_oom_kill: Option<Instant>,
    /// A kill counted this long before an exit is seen is taken as its cause.
    exit_window: Duration,
    /// The target search, with what it keeps between searches (a `--process` scan reads only processes it
    /// has not seen before, and young ones).
    search: Search,
    /// Whether the next search is a full one (at a tick) rather than a scan of new processes (between ticks).
    full_search: bool,
    /// Buffer for the tree's member pids handed to the target metrics each tick.
    member_pids: Vec<u32>,
}

/// The attached target instance.
struct Attached {
    id: TargetId,
    /// What the probes were attached with.
    target: ProbeTarget,
    /// How its exit is noticed between ticks.
    exit: ExitWatch,
    /// The root's comm at the last tick (from its stat): exec keeps the pid and start time but changes
    /// the program.
    comm: String,
    /// The root's stack address at the last tick: a new one means it exec'd, the same one with a new comm
    /// means it renamed itself (`npm start`, `process.title`).
    startstack: u64,
    /// The process of the tree that runs the runtime (the root when none does), which the hsperfdata and
    /// socket probes read.
    program: ProbeTarget,
}

/// The pids of some processes, for the log.
fn pids(ids: &[TargetId]) -> Vec<u32> {
    ids.iter().map(|t| t.pid).collect()
}

/// When the target started, Unix milliseconds: boot time plus its start in clock ticks. None when a corrupt
/// figure would overflow.
fn start_unix_ms(units: &KernelUnits, start_ticks: u64) -> Option<u64> {
    let boot_ms = units.boot_time.checked_mul(1000)?;
    let since_boot_ms = start_ticks.checked_mul(1000)? / units.hz.max(1);
    boot_ms.checked_add(since_boot_ms)
}

/// Every probe of the attached target, in sampling order: procfs, the list, then the OOM counter.
fn all_probes<'a>(
    procfs: &'a mut ProcfsProbe,
    probes: &'a mut [Box<dyn Probe>],
    oom: &'a mut OomCounter,
) -> impl Iterator<Item = &'a mut dyn Probe> {
    std::iter::once(procfs as &mut dyn Probe)
        .chain(probes.iter_mut().map(|p| &mut **p as &mut dyn Probe))
        .chain(std::iter::once(oom as &mut dyn Probe))
}

/// The probes that follow the program the tree runs (hsperfdata, sockets): the list and the OOM counter.
fn program_probes<'a>(
    probes: &'a mut [Box<dyn Probe>],
    oom: &'a mut OomCounter,
) -> impl Iterator<Item = &'a mut dyn Probe> {
    probes
        .iter_mut()
        .map(|p| &mut **p as &mut dyn Probe)
        .chain(std::iter::once(oom as &mut dyn Probe))
}

/// What the sampler is wired to.
pub struct SamplerParts {
    /// The target's metrics, handed each tick's sample.
    pub target_metrics: Arc<TargetMetrics>,
    /// Read error counters.
    pub stats: Arc<ExporterStats>,
    /// What /readyz and / say: ready once the target is attached and sampled (or, with no target
    /// selected, after the first tick).
    pub status: Arc<TargetStatus>,
    /// The signals derived each tick.
    pub derived: Arc<TickSignals>,
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
        max_processes: usize,
        parts: SamplerParts,
    ) -> Self {
        let proc_root = cgroup_roots.proc_root.clone();
        let procfs = ProcfsProbe::new(
            &proc_root,
            pss,
            parts.units.hz,
            parts.units.page_size,
            max_processes,
        );
        let probes: Vec<Box<dyn Probe>> = vec![
            Box::new(CgroupProbe::new(&proc_root)),
            Box::new(HsperfProbe::new(&proc_root)),
            Box::new(SocketProbe::new(&proc_root)),
        ];
        Sampler {
            selector,
            procfs,
            probes,
            oom: OomCounter::default(),
            last_oom_kill: None,
            exit_window: WATCH_INTERVAL * EXIT_WINDOW_WATCH_PERIODS,
            search: Search::new(
                &proc_root,
                StartClock {
                    boot_time: parts.units.boot_time,
                    hz: parts.units.hz,
                },
            ),
            full_search: true,
            member_pids: Vec::new(),
            proc_root,
            cgroup_roots,
            target_metrics: parts.target_metrics,
            stats: parts.stats,
            status: parts.status,
            ready_for: None,
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
        }
    }

    /// One interval's work: attach if needed, sample, follow a vanished target, derive.
    pub fn tick(&mut self) {
        let mut obs = Observations::default();
        self.full_search = true;
        if self.selector.is_some() {
            if self.attached.is_none() {
                self.try_attach();
            }
            if self.attached.is_some() && !self.sample_attached(&mut obs) {
                self.handle_exit();
                self.try_attach();
                if self.attached.is_some() {
                    obs = Observations::default();
                    self.sample_attached(&mut obs);
                }
            }
            if obs.proc.is_none() {
                // Nothing sampled: the OOM counters are read on their own (kills while the target is away).
                self.poll_oom();
            }
        }
        if obs.proc.is_some() {
            if let Some(runtime) = self.derived.sdk_runtime() {
                self.target_metrics.hint_runtime(runtime.label());
            }
        }
        self.derived.tick(&obs);
        self.update_status(obs.proc.is_some());
    }

    /// Tells /readyz and / what is going on; warns (once a minute) while no target is found.
    fn update_status(&mut self, sampled: bool) {
        let Some(selector) = &self.selector else {
            self.status
                .set_ready("no target selected: serving OTLP-derived signals only".to_owned());
            return;
        };
        if sampled && self.ready_for.is_some() && self.target_metrics.info_is(&self.ready_for) {
            // Written already for this target as it is: no summary formatted after every reading.
            return;
        }
        self.ready_for = None;
        if let (true, Some(info)) = (sampled, self.target_metrics.info()) {
            self.not_found_warned = None;
            self.status.set_ready(format!(
                "watching pid {} ({}, runtime {}), selected by {}",
                info.pid,
                info.comm,
                info.runtime,
                selector.describe()
            ));
            self.ready_for = Some(info);
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

    /// Samples the attached target into `obs` with every probe and publishes what the target metrics and
    /// the pause signal show of it; false when it is gone.
    fn sample_attached(&mut self, obs: &mut Observations) -> bool {
        if self.attached.is_none() {
            return false;
        }
        let stats = self.stats.clone();
        let errors: &dyn ReadErrorSink = stats.as_ref();
        // procfs first: it alone says the target is gone, and it finds the process of the tree that runs
        // the runtime, which the other probes then read in the same tick.
        if self.procfs.sample(obs, errors).is_err() {
            return false;
        }
        self.follow_exec(obs);
        self.follow_runtime_process();
        for probe in program_probes(&mut self.probes, &mut self.oom) {
            if probe.sample(obs, errors).is_err() {
                return false;
            }
        }
        if let Some(proc) = obs.proc {
            self.target_metrics.update(proc, obs.cgroup, obs.tree);
        }
        if let Some(tree) = self.procfs.tree() {
            tree.member_pids(&mut self.member_pids);
            self.target_metrics.set_member_pids(&self.member_pids);
        }
        if let Some(runtime) = obs.runtime_hint {
            self.target_metrics.hint_runtime(runtime.label());
        }
        self.derived.pause.set_hsperf_status(obs.hsperf_status);
        if obs.new_oom_kills > 0 {
            self.last_oom_kill = Some(Instant::now());
        }
        self.target_metrics.set_oom_kills(obs.oom_kills);
        true
    }

    /// Points the program probes (hsperfdata, sockets) at the process of the tree that runs the runtime
    /// (the JVM under a launcher shell, the node under `npm start`), or at the root when none does, and
    /// says which in `vitals_target_info`.
    fn follow_runtime_process(&mut self) {
        let Some(a) = self.attached.as_mut() else {
            return;
        };
        let found = self.procfs.tree().and_then(|t| t.runtime_process());
        let (pid, start_ticks, runtime) = match found {
            Some(r) => (r.pid, r.start_ticks, Some(r.runtime)),
            None => (a.id.pid, a.id.start_ticks, a.target.runtime),
        };
        if a.program.pid == pid && a.program.start_ticks == start_ticks {
            if a.program.runtime != runtime {
                a.program.runtime = runtime;
                self.target_metrics
                    .set_runtime_process(pid, language::label_of(runtime));
            }
            return;
        }
        let program = ProbeTarget {
            pid,
            start_ticks,
            nspid: read_nspid(&self.proc_root, pid).unwrap_or(pid),
            uid: effective_uid(&self.proc_root, pid),
            start_unix_ms: start_unix_ms(&self.units, start_ticks),
            runtime,
            cgroup: a.target.cgroup.clone(),
        };
        tracing::info!(
            root = a.id.pid,
            pid,
            runtime = language::label_of(runtime),
            "the process of the target's tree that runs the runtime"
        );
        self.target_metrics
            .set_runtime_process(pid, language::label_of(runtime));
        for probe in program_probes(&mut self.probes, &mut self.oom) {
            probe.program_changed(&program);
        }
        a.program = program;
    }

    /// Between ticks: a missing target is searched for (the attached one's exit was seen by the caller),
    /// and the OOM counters are read, so instances that live shorter than the interval are still counted
    /// (restarts, exits and their OOM kills).
    fn watch(&mut self) {
        if self.selector.is_none() {
            return;
        }
        match self.attached.as_mut() {
            Some(a) => {
                if !a.exit.polled_alive() {
                    self.full_search = false;
                    self.handle_exit();
                    self.try_attach();
                }
            }
            None => {
                // A scan reads only processes it has not seen before (and young ones, which may still exec):
                // cheap enough every 100 ms, so every instance that lives that long is found, before and
                // after the first attach. The tick's search reads every process again.
                self.full_search = false;
                self.try_attach();
            }
        }
        self.poll_oom();
    }

    /// The kernel said the attached instance exited (its pidfd became readable): no need to look.
    fn target_exited(&mut self) {
        self.full_search = false;
        self.handle_exit();
        self.try_attach();
        self.poll_oom();
    }

    /// True when the attached target is still the same live instance: one read of its kept `stat` file,
    /// every [`WATCH_INTERVAL`]. Kills in its cgroup while it runs are counted
    /// by the tick; the kill that ends it by [`Sampler::handle_exit`].
    fn attached_alive(&mut self) -> bool {
        self.attached
            .as_mut()
            .is_some_and(|a| a.exit.polled_alive())
    }

    /// Reads the OOM counters and keeps the target metrics' total current.
    fn poll_oom(&mut self) {
        let attached = self.attached.is_some();
        if self.oom.poll(attached) > 0 && attached {
            self.last_oom_kill = Some(std::time::Instant::now());
        }
        self.target_metrics.set_oom_kills(self.oom.total());
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
        for probe in all_probes(&mut self.procfs, &mut self.probes, &mut self.oom) {
            probe.detach();
        }
        self.target_metrics.detach();
        self.target_metrics.record_exit(reason);
        self.target_metrics.set_oom_kills(self.oom.total());
        self.derived.target_changed();
    }

    /// Refreshes comm and runtime when the root exec()ed another program (`sh -c 'exec java …'`,
    /// `opentelemetry-instrument python …`), and tells the probes (hsperfdata looks for the new program's
    /// file). A root that only renamed itself (`npm start` sets its title) keeps its program: its comm label
    /// follows, nothing else changes. exec is told from a rename by the new stack address exec gives (when
    /// vitals may see it), else by a new executable.
    fn follow_exec(&mut self, obs: &Observations) {
        let Some(a) = self.attached.as_mut() else {
            return;
        };
        // The comm from the root's stat, read anyway: no file of its own to read every tick.
        let Some(stat) = obs.proc.and_then(|p| p.stat) else {
            return;
        };
        let startstack = stat.startstack;
        let new_stack = startstack != 0 && a.startstack != 0 && startstack != a.startstack;
        a.startstack = startstack;
        if stat.comm.as_str() == a.comm.as_str() && !new_stack {
            return;
        }
        let comm = stat.comm.as_str().into_owned();
        let runtime = detect_runtime(&self.proc_root, a.id.pid, &comm);
        let exec = new_stack || (startstack == 0 && runtime != a.target.runtime);
        if !exec {
            tracing::info!(pid = a.id.pid, old = %a.comm, %comm, "target renamed itself (same program)");
            self.target_metrics.refresh_comm(comm.clone());
            a.comm = comm;
            return;
        }
        let label = language::label_of(runtime);
        tracing::info!(pid = a.id.pid, old = %a.comm, %comm, runtime = label, "target exec'd another program");
        self.target_metrics.refresh_comm(comm.clone());
        a.comm = comm;
        a.target.runtime = runtime;
        if a.program.pid == a.id.pid {
            a.program.runtime = runtime;
            for probe in program_probes(&mut self.probes, &mut self.oom) {
                probe.program_changed(&a.program);
            }
        }
    }

    fn try_attach(&mut self) {
        let Some(selector) = &self.selector else {
            return;
        };
        self.not_attached = None;
        let found = match self.search.find(selector, self.full_search) {
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
        if matches!(selector, Selector::Given(Selection::Pid(_))) {
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
        let cgroup = match locate(&self.cgroup_roots, id.pid) {
            Ok(dirs) => {
                tracing::debug!(?dirs, "target cgroup");
                Some(dirs)
            }
            Err(e) => {
                tracing::warn!(pid = id.pid, error = %e, "target cgroup not found; container metrics left out");
                self.stats.read_error(ReadSource::Cgroup);
                None
            }
        };
        let comm = read_comm(&self.proc_root, id.pid).unwrap_or_default();
        let runtime = detect_runtime(&self.proc_root, id.pid, &comm);
        let target = ProbeTarget {
            pid: id.pid,
            start_ticks: id.start_ticks,
            nspid: read_nspid(&self.proc_root, id.pid).unwrap_or(id.pid),
            uid: effective_uid(&self.proc_root, id.pid),
            start_unix_ms: start_unix_ms(&self.units, id.start_ticks),
            runtime,
            cgroup,
        };
        let errors: &dyn ReadErrorSink = self.stats.as_ref();
        let mut failed = None;
        for probe in all_probes(&mut self.procfs, &mut self.probes, &mut self.oom) {
            if let Err(e) = probe.attach(&target, errors) {
                failed = Some((probe.name(), e));
                break;
            }
        }
        let exit = match failed {
            None => {
                ExitWatch::open(&self.proc_root, id.pid, id.start_ticks).map_err(|e| ("stat", e))
            }
            Some(f) => Err(f),
        };
        let exit = match exit {
            Ok(w) => w,
            Err((what, e)) => {
                tracing::warn!(pid = id.pid, probe = what, error = %e, "cannot open the target's /proc files");
                self.not_attached = Some(format!("cannot open /proc/{}: {e}", id.pid));
                for probe in all_probes(&mut self.procfs, &mut self.probes, &mut self.oom) {
                    probe.detach();
                }
                return;
            }
        };
        self.target_metrics.set_oom_kills(self.oom.total());
        let runtime_label = language::label_of(runtime);
        tracing::info!(pid = id.pid, %comm, runtime = runtime_label, selector = %selector.describe(),
            exit_watch = if exit.event().is_some() { "pidfd" } else { "poll" }, "attached to target");
        if let Some(report) = crate::target::access::denied_report(&self.proc_root, id.pid) {
            tracing::warn!(pid = id.pid, "{report}");
        }
        let info = TargetInfo {
            pid: id.pid,
            comm: comm.clone(),
            runtime: runtime_label.to_owned(),
            start_ticks: id.start_ticks,
            selected_by: selector.label(),
            runtime_pid: id.pid,
        };
        if self.others_at_attach.contains(&id) {
            self.target_metrics.attach_other(info);
        } else {
            self.target_metrics.attach(info);
        }
        self.others_at_attach = found.passed_over.clone();
        self.derived.target_changed();
        self.attached = Some(Attached {
            id,
            program: target.clone(),
            target,
            exit,
            comm,
            startstack: 0,
        });
    }

    /// One tick now, and the readers of rates told; returns when it ended. The reads block this thread,
    /// the [`SamplingThread`], which has nothing else to do meanwhile.
    fn read_now(&mut self) -> tokio::time::Instant {
        self.tick();
        self.sampled.notify_one();
        tokio::time::Instant::now()
    }

    /// Ticks at the cadence's pace until `shutdown`: every `--interval` while anyone watches, every idle
    /// interval otherwise, and when a reader asks for readings (a scrape, a push) older than `--interval`.
    /// Between ticks the attached target's exit is an event where a pidfd is available (no timer while it
    /// lives), else a check every [`WATCH_INTERVAL`] when the interval is longer; a missing target is
    /// searched for at that pace too.
    pub async fn run(mut self, mut turn: Turn, shutdown: CancellationToken) {
        let interval = turn.interval();
        let watch_every = WATCH_INTERVAL.min(interval);
        let mut watch = tokio::time::interval(watch_every);
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        self.exit_window = watch_every * EXIT_WINDOW_WATCH_PERIODS;
        let watching = interval > WATCH_INTERVAL;
        // The first tick at once; later ones a period after the last, whatever started it.
        let mut last_tick: Option<tokio::time::Instant> = None;
        // The idle deadline in the kernel: one wake-up per tick, not one per level of tokio's wheel.
        let deadline = crate::cadence::Deadline::new()
            .map_err(|e| tracing::debug!(error = %e, "no timerfd: the ticks use tokio's timer"))
            .ok();
        loop {
            let exit_event = self.attached.as_ref().and_then(|a| a.exit.event());
            let event_watched = exit_event.is_some();
            let next = last_tick.map_or_else(tokio::time::Instant::now, |t| t + turn.period());
            let due = async {
                match &deadline {
                    Some(d) if d.until(next).await.is_ok() => {}
                    _ => tokio::time::sleep_until(next).await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = due => last_tick = Some(self.read_now()),
                _ = turn.asked() => {
                    // A reader wants readings no older than the interval (or the pace changed: the next
                    // deadline is computed again above).
                    if last_tick.is_none_or(|t| t.elapsed() >= interval) {
                        last_tick = Some(self.read_now());
                    }
                    turn.answer();
                }
                exited = async move {
                    match exit_event {
                        Some(e) => e.exited().await,
                        None => std::future::pending().await,
                    }
                }, if event_watched => match exited {
                    Ok(()) => {
                        self.target_exited();
                        if self.attached.is_some() {
                            // A new instance: its first readings at once, as at the start.
                            last_tick = None;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot wait on the target's pidfd; polling its liveness instead");
                        if let Some(a) = self.attached.as_mut() {
                            a.exit.poll_from_now_on();
                        }
                    }
                },
                _ = watch.tick(), if watching && !event_watched => {
                    // The common case without a pidfd, a live target, is one pread: no thread hand-over for it.
                    if !self.attached_alive() {
                        self.watch();
                        if self.attached.is_some() {
                            last_tick = None;
                        }
                    }
                }
            }
        }
    }
}
