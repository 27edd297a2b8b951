//! The sampling loop: keeps a target attached (searching again when it vanishes) and takes one procfs and
//! cgroup sample of it every interval.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::export::self_metrics::ExporterStats;
use crate::source::cgroup::{locate, CgroupReader, CgroupRoots};
use crate::source::procfs::{read_comm, ProcReader, PssPolicy};
use crate::store::target::{TargetInfo, TargetStore};
use crate::target::{detect_runtime, search, Selector, TargetId};

/// Everything the loop needs.
pub struct Sampler {
    selector: Selector,
    proc_root: PathBuf,
    cgroup_roots: CgroupRoots,
    pss: Option<PssPolicy>,
    store: Arc<TargetStore>,
    stats: Arc<ExporterStats>,
    ready: Arc<AtomicBool>,
    attached: Option<Attached>,
    /// For `--pid`: the first instance seen. A later process that reuses the pid is someone else.
    pinned: Option<TargetId>,
    last_search_error: Option<String>,
}

struct Attached {
    id: TargetId,
    proc: ProcReader,
    cgroup: Option<CgroupReader>,
}

impl Sampler {
    /// A sampler that has not attached yet.
    pub fn new(
        selector: Selector,
        cgroup_roots: CgroupRoots,
        pss: Option<PssPolicy>,
        store: Arc<TargetStore>,
        stats: Arc<ExporterStats>,
        ready: Arc<AtomicBool>,
    ) -> Self {
        Sampler {
            selector,
            proc_root: cgroup_roots.proc_root.clone(),
            cgroup_roots,
            pss,
            store,
            stats,
            ready,
            attached: None,
            pinned: None,
            last_search_error: None,
        }
    }

    /// One interval's work: attach if needed, sample, follow a vanished target.
    pub fn tick(&mut self) {
        if self.attached.is_none() {
            self.try_attach();
        }
        if let Some(a) = &mut self.attached {
            match a.proc.sample(self.stats.as_ref()) {
                Ok(p) => {
                    let c = a.cgroup.as_mut().map(|c| c.sample(self.stats.as_ref()));
                    self.store.update(p, c);
                }
                Err(_) => {
                    tracing::info!(pid = a.id.pid, "target exited; searching again");
                    self.attached = None;
                    self.store.detach();
                    self.try_attach();
                    if let Some(a) = &mut self.attached {
                        if let Ok(p) = a.proc.sample(self.stats.as_ref()) {
                            let c = a.cgroup.as_mut().map(|c| c.sample(self.stats.as_ref()));
                            self.store.update(p, c);
                        }
                    }
                }
            }
        }
        self.ready.store(true, Ordering::Release);
    }

    fn try_attach(&mut self) {
        let found = match search(&self.selector, &self.proc_root) {
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
        if matches!(self.selector, Selector::Pid(_)) {
            match self.pinned {
                Some(p) if p != id => return,
                _ => self.pinned = Some(id),
            }
        }
        if !found.passed_over.is_empty() {
            tracing::info!(chosen = id.pid, others = ?found.passed_over, "several processes match; watching the oldest");
        }
        let proc = match ProcReader::open(&self.proc_root, id.pid, self.pss) {
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
                self.stats_error();
                None
            }
        };
        let comm = read_comm(&self.proc_root, id.pid).unwrap_or_default();
        let runtime = detect_runtime(&self.proc_root, id.pid, &comm).to_owned();
        tracing::info!(pid = id.pid, %comm, %runtime, selector = %self.selector.describe(), "attached to target");
        self.store.attach(TargetInfo {
            pid: id.pid,
            comm,
            runtime,
            start_ticks: id.start_ticks,
        });
        self.attached = Some(Attached { id, proc, cgroup });
    }

    fn stats_error(&self) {
        use crate::source::procfs::ReadErrorSink;
        self.stats.read_error(crate::source::ReadSource::Cgroup);
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
                }
            }
        }
    }
}
