//! Target readers behind one interface: a [`Probe`] attaches to a target instance, samples it once per tick
//! into that tick's [`Observations`], and reports every failed read through one [`ReadErrorSink`]. The
//! sources are procfs, the cgroup (with pressure stall information), JVM hsperfdata, listen sockets and the
//! cgroup's OOM counters; an agentless source is one more probe. Probes know nothing downstream: the sampler
//! hands the observations to derivation and publishes the target's status.

pub mod cgroup;
pub mod hsperf;
pub mod jvm_watch;
pub mod kept;
pub mod oom;
pub mod own_health;
pub mod pressure;
pub mod procfs;
pub mod sockets;
pub mod tree;

use crate::language::Runtime;
use std::time::Duration;

use cgroup::{CgroupDirs, CgroupSample};
use hsperf::JvmSample;
use procfs::ProcSample;
use sockets::ListenSocket;

/// The target instance a probe attaches to: everything the sampler found out when it attached, so no probe
/// looks it up again.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    /// Pid as vitals sees it.
    pub pid: u32,
    /// Start time, clock ticks since boot: with the pid, the instance's identity.
    pub start_ticks: u64,
    /// The pid as the target's own pid namespace sees it (names its hsperfdata file).
    pub nspid: u32,
    /// Effective uid of the target, when its status file could be read.
    pub uid: Option<u32>,
    /// When the target started, Unix milliseconds (None when the arithmetic on kernel figures overflowed).
    pub start_unix_ms: Option<u64>,
    /// Runtime detected from the executable (`jvm`, `node`, …, `unknown`).
    pub runtime: Option<Runtime>,
    /// The target's cgroup directories; None when they could not be located.
    pub cgroup: Option<CgroupDirs>,
}

/// The target process is gone: its files answer ENOENT or ESRCH, or it is a zombie. Only this ends an
/// instance; a file that reads but does not parse is a read error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("target process {pid} is gone")]
pub struct TargetGone {
    /// The pid that was read.
    pub pid: u32,
}

/// One tick's readings of the target, handed to derivation. Everything is absent when no target is
/// attached; a source that could not be read leaves its part absent (never a 0).
#[derive(Debug, Default)]
pub struct Observations {
    /// procfs sample of the target's process tree (figures summed over its processes).
    pub proc: Option<ProcSample>,
    /// The bounded view of the tree's members.
    pub tree: Option<tree::TreeView>,
    /// Process CPU seconds (user + system), from stat.
    pub proc_cpu_seconds: Option<f64>,
    /// Resident set, bytes, from stat.
    pub rss: Option<f64>,
    /// kernel.threads-max (system-wide).
    pub threads_max: Option<u64>,
    /// cgroup sample.
    pub cgroup: Option<CgroupSample>,
    /// JVM hsperfdata sample.
    pub jvm: Option<JvmSample>,
    /// What the fast JVM watch read between ticks (every pause alone), taken before `jvm` was read.
    pub jvm_fast: Option<jvm_watch::JvmFast>,
    /// Why hsperfdata is or is not read (an [`hsperf::HsperfStatus`] reason), None when there is nothing
    /// to say (not a JVM).
    pub hsperf_status: Option<&'static str>,
    /// A runtime a probe recognised this tick (hsperfdata found: the JVM).
    pub runtime_hint: Option<Runtime>,
    /// Listening sockets.
    pub listen: Vec<ListenSocket>,
    /// OOM kills of the target across its instances (None until its memory cgroup was found).
    pub oom_kills: Option<u64>,
    /// OOM kills new this tick.
    pub new_oom_kills: u64,
}

/// A reader of one source about the target. The sampler attaches every probe when it finds a target
/// instance, samples them in order each tick, and detaches them when the instance ends.
pub trait Probe: Send {
    /// The source's name, for logs.
    fn name(&self) -> &'static str;

    /// Locates and opens the source for a new target instance. A source the target lacks is not an error
    /// (its observations stay absent); an error means the target cannot be watched at all.
    fn attach(&mut self, target: &ProbeTarget, errors: &dyn ReadErrorSink) -> std::io::Result<()>;

    /// The attached instance exec()ed another program (same pid and start time, new runtime).
    fn program_changed(&mut self, _target: &ProbeTarget) {}

    /// Reads the source once into `obs`, reporting failed reads to `errors`.
    fn sample(
        &mut self,
        obs: &mut Observations,
        errors: &dyn ReadErrorSink,
    ) -> Result<(), TargetGone>;

    /// The instance ended: drop what belongs to it.
    fn detach(&mut self);
}

/// Where probes report their read outcomes: failures by source and how long reads took. Implemented by
/// the exporter's self-metrics.
pub trait ReadErrorSink {
    /// One failed read of `source`.
    fn read_error(&self, source: ReadSource);
    /// How long a read of `source` took.
    fn read_duration(&self, source: ReadSource, took: Duration);
}

/// A file group whose reads are timed and whose failures are counted, the `source` label of
/// `vitals_exporter_read_errors_total` and `vitals_exporter_sample_duration_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReadSource {
    /// /proc/PID/stat that cannot be read or parsed (a process that is gone is no error), and the duration
    /// of a whole procfs tick (stat, status, io, fd, schedstat).
    Procfs,
    /// /proc/PID/status.
    ProcStatus,
    /// /proc/PID/io.
    ProcIo,
    /// /proc/PID/fd.
    ProcFd,
    /// /proc/PID/limits.
    ProcLimits,
    /// /proc/PID/task/*/schedstat.
    ProcSchedstat,
    /// /proc/PID/smaps_rollup.
    ProcSmapsRollup,
    /// The target's cgroup files.
    Cgroup,
    /// Pressure stall files.
    Pressure,
    /// JVM hsperfdata.
    Hsperf,
}

impl ReadSource {
    /// Every source, in label order.
    pub const ALL: [ReadSource; 10] = [
        ReadSource::Procfs,
        ReadSource::ProcStatus,
        ReadSource::ProcIo,
        ReadSource::ProcFd,
        ReadSource::ProcLimits,
        ReadSource::ProcSchedstat,
        ReadSource::ProcSmapsRollup,
        ReadSource::Cgroup,
        ReadSource::Pressure,
        ReadSource::Hsperf,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            ReadSource::Procfs => "procfs",
            ReadSource::ProcStatus => "proc_status",
            ReadSource::ProcIo => "proc_io",
            ReadSource::ProcFd => "proc_fd",
            ReadSource::ProcLimits => "proc_limits",
            ReadSource::ProcSchedstat => "proc_schedstat",
            ReadSource::ProcSmapsRollup => "proc_smaps_rollup",
            ReadSource::Cgroup => "cgroup",
            ReadSource::Pressure => "pressure",
            ReadSource::Hsperf => "hsperfdata",
        }
    }

    /// Position in [`ReadSource::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}
