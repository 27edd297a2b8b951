//! Whether the profiler can work and, when it cannot, why and what fixes it: `vitals_profiler_status
//! {reason}` and the samples counter, so a profiler that silently takes nothing is visible.

use std::path::Path;

use super::perf::{OpenRefusal, SamplingPlan};
use super::{CpuProfile, Profiler, ProfilerSettings};
use crate::catalogue;
use crate::model::{Collector, Metric, Value};

/// The profiler's state; the label value of the status series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `--profiling=false`.
    Off,
    /// No target attached.
    NoTarget,
    /// Profiles work, kernel frames included.
    Ok,
    /// Profiles work with user frames only: `perf_event_paranoid` is 2 and vitals has no CAP_PERFMON.
    NoKernelFrames,
    /// `perf_event_paranoid` is above 2 and vitals has no CAP_PERFMON.
    NotPermittedParanoid,
    /// The target runs as another user and vitals has no CAP_SYS_PTRACE (or CAP_PERFMON).
    NotPermittedOtherUser,
    /// The call was refused with EPERM for the same user: a seccomp profile (the container runtime's
    /// default allows perf_event_open only with CAP_PERFMON) or a missing capability.
    NotPermittedSeccomp,
    /// The kernel has no perf events.
    Unsupported,
    /// The last profile named fewer than half of the user addresses it sampled (stripped binaries,
    /// JIT code without a perf map).
    NoSymbols,
    /// Something else failed (see the log).
    Error,
}

impl Reason {
    /// Label value.
    pub fn label(self) -> &'static str {
        match self {
            Reason::Off => "off",
            Reason::NoTarget => "no_target",
            Reason::Ok => "ok",
            Reason::NoKernelFrames => "no_kernel_frames",
            Reason::NotPermittedParanoid => "not_permitted_perf_event_paranoid",
            Reason::NotPermittedOtherUser => "not_permitted_other_user",
            Reason::NotPermittedSeccomp => "not_permitted_seccomp_or_capability",
            Reason::Unsupported => "unsupported",
            Reason::NoSymbols => "no_symbols",
            Reason::Error => "error",
        }
    }

    /// Whether profiles can be taken in this state.
    pub fn can_profile(self) -> bool {
        matches!(
            self,
            Reason::Ok | Reason::NoKernelFrames | Reason::NoSymbols
        )
    }

    /// What a person should do about it.
    pub fn advice(self) -> String {
        match self {
            Reason::Off => "profiling is off (--profiling=false)".to_owned(),
            Reason::NoTarget => "no target process is attached yet".to_owned(),
            Reason::Ok => "profiling works, kernel frames included".to_owned(),
            Reason::NoKernelFrames => format!(
                "profiles have user frames only: kernel.perf_event_paranoid is {} (kernel frames need \
                 <= 1, or CAP_PERFMON)",
                paranoid_text()
            ),
            Reason::NotPermittedParanoid => format!(
                "CPU profiling is not permitted: kernel.perf_event_paranoid is {} (needs <= 2), and vitals \
                 has no CAP_PERFMON; set the sysctl to 2 on the node or give the container CAP_PERFMON \
                 (see deploy/kubernetes/overlays/profiling)",
                paranoid_text()
            ),
            Reason::NotPermittedOtherUser => "CPU profiling is not permitted: the target runs as \
                 another user; run vitals as the target's user (runAsUser), or give it CAP_PERFMON"
                .to_owned(),
            Reason::NotPermittedSeccomp => "CPU profiling is not permitted: perf_event_open was \
                 refused with EPERM (the container runtime's default seccomp profile allows it only \
                 with CAP_PERFMON); give the container CAP_PERFMON (see \
                 deploy/kubernetes/overlays/profiling)"
                .to_owned(),
            Reason::Unsupported => "CPU profiling is unsupported: this kernel has no perf events \
                 (CONFIG_PERF_EVENTS)"
                .to_owned(),
            Reason::NoSymbols => "the last profile named fewer than half of its user addresses: \
                 the target's binaries are stripped or its JIT writes no perf map (see \
                 docs/profiling.md)"
                .to_owned(),
            Reason::Error => "the last profile failed; see vitals' log".to_owned(),
        }
    }

    /// The status for a refusal to open events on `pid`.
    pub fn from_refusal(e: OpenRefusal, settings: &ProfilerSettings, pid: u32) -> Reason {
        // EACCES comes both from the sysctl and from the ptrace access check on another user's
        // process, so the owner is looked at first.
        match e {
            OpenRefusal::Paranoid | OpenRefusal::Permission
                if other_user(&settings.proc_root, pid) =>
            {
                Reason::NotPermittedOtherUser
            }
            OpenRefusal::Paranoid => Reason::NotPermittedParanoid,
            OpenRefusal::Permission => Reason::NotPermittedSeccomp,
            OpenRefusal::Unsupported => Reason::Unsupported,
            OpenRefusal::Gone => Reason::NoTarget,
            OpenRefusal::Other(errno) => {
                tracing::warn!(
                    "perf_event_open on pid {pid}: {}",
                    std::io::Error::from_raw_os_error(errno)
                );
                Reason::Error
            }
        }
    }
}

fn paranoid_text() -> String {
    std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unreadable".to_owned())
}

/// Whether `pid` runs with a real uid other than vitals' effective one.
fn other_user(proc_root: &Path, pid: u32) -> bool {
    let status = std::fs::read_to_string(proc_root.join(pid.to_string()).join("status"));
    let uid = status.ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| {
                l.split_whitespace()
                    .next()
                    .and_then(|u| u.parse::<u32>().ok())
            })
    });
    // SAFETY: geteuid only reads the calling process's credentials.
    let me = unsafe { libc::geteuid() };
    uid.is_some_and(|u| u != me)
}

/// Opens (and closes) one event on `pid` as a profile would, without sampling.
pub fn probe(settings: &ProfilerSettings, pid: u32) -> Reason {
    let plan = SamplingPlan {
        frequency_hz: settings.frequency_hz,
        stack_bytes: 0,
        kernel: settings.kernel,
        ring_pages: settings.ring_pages,
    };
    match super::perf::EventSet::probe(plan, pid) {
        Ok(true) => Reason::Ok,
        Ok(false) => Reason::NoKernelFrames,
        Err(e) => Reason::from_refusal(e, settings, pid),
    }
}

/// The status after a profile.
pub fn outcome(p: &CpuProfile) -> Reason {
    let stats = &p.symbols.stats;
    if stats.user >= 10 && stats.named * 2 < stats.user {
        return Reason::NoSymbols;
    }
    if p.notes
        .iter()
        .any(|n| n.starts_with("kernel frames not permitted"))
    {
        Reason::NoKernelFrames
    } else {
        Reason::Ok
    }
}

impl Collector for Profiler {
    fn collect(&self, out: &mut Vec<Metric>) {
        out.push(
            catalogue::PROFILER_STATUS
                .metric()
                .with(&[("reason", self.status().label())], Value::Gauge(1.0)),
        );
        out.push(
            catalogue::PROFILER_SAMPLES
                .metric()
                .with(&[], Value::Sum(self.samples() as f64)),
        );
    }
}
