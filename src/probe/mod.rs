//! Where observations come from: the target's procfs files, its cgroup, and pressure stall information.

pub mod cgroup;
pub mod hsperf;
pub mod kept;
pub mod oom;
pub mod pressure;
pub mod procfs;
pub mod sockets;

/// A file group whose reads are timed and whose failures are counted, the `source` label of
/// `vitals_exporter_read_errors_total` and `vitals_exporter_sample_duration_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReadSource {
    /// A whole procfs tick (stat, status, io, fd, schedstat); stat is also the liveness probe.
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
