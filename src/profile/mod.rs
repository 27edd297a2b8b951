//! CPU profiles of the target: where its time goes. Threads of a list of processes (the target, later its
//! whole tree) are sampled with `perf_event_open` on their CPU time, their stacks unwound (frame pointers,
//! DWARF where the code has none), named from the target's own files and JIT maps, and handed out as a
//! pprof profile or folded stacks. The profiler also says, as a status series, why it cannot profile
//! when it cannot.
//!
//! Like a probe it reads the target and knows nothing downstream: the HTTP endpoint and the `vitals
//! profile` subcommand call [`Profiler::take`].

pub mod continuous;
pub mod jvm;
pub mod maps;
pub mod perf;
pub mod pprof;
pub mod ring;
pub mod session;
pub mod status;
pub mod symbols;
pub mod unwind;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use self::status::Reason;
use self::symbols::SymbolTable;

/// How profiles are taken.
#[derive(Debug, Clone)]
pub struct ProfilerSettings {
    /// On-demand profiles allowed (`--profiling`).
    pub enabled: bool,
    /// Samples per second of each thread's CPU time.
    pub frequency_hz: u64,
    /// Bytes of user stack copied per sample for DWARF unwinding (0: frame pointers only).
    pub stack_bytes: u32,
    /// Ask for kernel frames (dropped where not permitted).
    pub kernel: bool,
    /// Ask a JVM target to write its perf map through the attach protocol.
    pub jvm_attach: bool,
    /// Longest profile.
    pub max_duration: Duration,
    /// procfs mount.
    pub proc_root: PathBuf,
    /// Data pages of each CPU's perf ring.
    pub ring_pages: usize,
}

impl Default for ProfilerSettings {
    fn default() -> Self {
        ProfilerSettings {
            enabled: true,
            frequency_hz: 99,
            stack_bytes: 16 << 10,
            kernel: true,
            jvm_attach: true,
            max_duration: Duration::from_secs(300),
            proc_root: PathBuf::from("/proc"),
            ring_pages: perf::RING_PAGES,
        }
    }
}

/// One distinct stack and how often it was sampled.
#[derive(Debug, Clone)]
pub struct StackCount {
    /// The process.
    pub pid: u32,
    /// Indices into the symbol table's locations, leaf first.
    pub locations: Vec<usize>,
    /// Samples.
    pub count: u64,
}

/// A finished CPU profile.
#[derive(Debug)]
pub struct CpuProfile {
    /// When it started, ns since the Unix epoch.
    pub started_unix_ns: u128,
    /// How long it sampled.
    pub duration: Duration,
    /// CPU nanoseconds each sample stands for.
    pub period_ns: u64,
    /// Distinct stacks.
    pub stacks: Vec<StackCount>,
    /// Names of every address.
    pub symbols: SymbolTable,
    /// Samples taken.
    pub samples: u64,
    /// Notes for the reader (what was left out and why), carried as pprof comments.
    pub notes: Vec<String>,
}

/// Why a profile was not taken.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Profiling is off.
    #[error("profiling is off (--profiling=false)")]
    Off,
    /// No target attached.
    #[error("no target process is attached yet")]
    NoTarget,
    /// Another profile is being taken.
    #[error("another profile is being taken; retry when it is done")]
    Busy,
    /// The kernel refused.
    #[error("{}", .0.advice())]
    NotPermitted(Reason),
}

/// Where the pids to profile come from: the target (and later its tree) as the sampler sees it now.
pub type PidSource = Arc<dyn Fn() -> Vec<u32> + Send + Sync>;

/// Takes profiles, one at a time, and keeps the status and counts `/metrics` shows.
pub struct Profiler {
    /// How.
    pub settings: ProfilerSettings,
    pids: PidSource,
    status: Mutex<Reason>,
    samples: AtomicU64,
    busy: AtomicBool,
    last: Mutex<Option<Arc<CpuProfile>>>,
}

impl Profiler {
    /// A profiler of whatever `pids` names when a profile is asked for.
    pub fn new(settings: ProfilerSettings, pids: PidSource) -> Profiler {
        let status = if settings.enabled {
            Reason::NoTarget
        } else {
            Reason::Off
        };
        Profiler {
            settings,
            pids,
            status: Mutex::new(status),
            samples: AtomicU64::new(0),
            busy: AtomicBool::new(false),
            last: Mutex::new(None),
        }
    }

    /// The current status.
    pub fn status(&self) -> Reason {
        *self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_status(&self, r: Reason) -> Reason {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *s, r)
    }

    /// Samples taken since start.
    pub fn samples(&self) -> u64 {
        self.samples.load(Ordering::Relaxed)
    }

    /// The last profile taken, if any.
    pub fn last(&self) -> Option<Arc<CpuProfile>> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Checks whether the target can be profiled (opens and closes one event, no sampling) and updates
    /// the status; returns the status and whether it changed, so the caller can warn once.
    pub fn check(&self) -> (Reason, bool) {
        if !self.settings.enabled {
            return (Reason::Off, false);
        }
        let pids = (self.pids)();
        let r = match pids.first() {
            None => Reason::NoTarget,
            Some(&pid) => status::probe(&self.settings, pid),
        };
        let before = self.set_status(r);
        (r, before != r)
    }

    /// Samples the target for `duration` (capped at the maximum) and returns the profile. Blocks; `stop`
    /// ends it early (shutdown, or the client went away).
    pub fn take(&self, duration: Duration, stop: &AtomicBool) -> Result<Arc<CpuProfile>, Refusal> {
        self.take_at(duration, None, stop)
    }

    /// Like [`Profiler::take`], at `hz` samples per second of CPU time instead of the configured rate.
    pub fn take_at(
        &self,
        duration: Duration,
        hz: Option<u64>,
        stop: &AtomicBool,
    ) -> Result<Arc<CpuProfile>, Refusal> {
        if !self.settings.enabled {
            return Err(Refusal::Off);
        }
        let pids = (self.pids)();
        if pids.is_empty() {
            self.set_status(Reason::NoTarget);
            return Err(Refusal::NoTarget);
        }
        if self.busy.swap(true, Ordering::AcqRel) {
            return Err(Refusal::Busy);
        }
        let mut settings = self.settings.clone();
        settings.frequency_hz = hz.unwrap_or(settings.frequency_hz).max(1);
        let result = self.take_locked(&settings, &pids, duration.min(settings.max_duration), stop);
        self.busy.store(false, Ordering::Release);
        result
    }

    fn take_locked(
        &self,
        settings: &ProfilerSettings,
        pids: &[u32],
        duration: Duration,
        stop: &AtomicBool,
    ) -> Result<Arc<CpuProfile>, Refusal> {
        let recorded = session::record(settings, pids, duration, stop, &self.samples);
        let recording = match recorded {
            Ok(r) => r,
            Err(e) => {
                let reason = Reason::from_refusal(e, settings, pids[0]);
                self.set_status(reason);
                return Err(Refusal::NotPermitted(reason));
            }
        };
        let naming = std::time::Instant::now();
        let profile = session::finish(settings, pids, recording);
        tracing::debug!(took = ?naming.elapsed(), "profile symbolised");
        self.set_status(status::outcome(&profile));
        let profile = Arc::new(profile);
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(profile.clone());
        Ok(profile)
    }
}
