//! The target's own cgroup, v2 or v1, found from /proc/PID/cgroup and read through the target's mount
//! namespace (/proc/PID/root/sys/fs/cgroup) where a sidecar with its own cgroup namespace must, falling
//! back to the host path. Also reads PSI: per cgroup on v2, system-wide (/proc/pressure) on v1.

use std::path::{Path, PathBuf};

use super::kept::KeptFile;
use super::pressure::{parse_pressure, Pressure, RESOURCES};
use super::procfs::ParseError;
use super::{Observations, Probe, ProbeTarget, ReadErrorSink, ReadSource, TargetGone};

/// Where the target's cgroup membership says it lives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    /// The unified (v2) path, from the `0::` line.
    pub unified: Option<String>,
    /// v1 paths by controller name (`memory`, `cpu`, `pids`, …).
    pub v1: Vec<(String, String)>,
}

impl Membership {
    fn v1_path(&self, controller: &str) -> Option<&str> {
        self.v1
            .iter()
            .find(|(c, _)| c == controller)
            .map(|(_, p)| p.as_str())
    }
}

/// Parses /proc/PID/cgroup (`hierarchy-ID:controller-list:cgroup-path` lines).
pub fn parse_membership(buf: &[u8]) -> Result<Membership, ParseError> {
    let err = |what: String| ParseError {
        file: "cgroup",
        what,
    };
    let text = std::str::from_utf8(buf).map_err(|_| err("not UTF-8".into()))?;
    let mut m = Membership::default();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(err(format!("line is not id:controllers:path: {line:?}")));
        };
        if id == "0" && ctrls.is_empty() {
            m.unified = Some(path.to_owned());
        } else {
            for c in ctrls.split(',').filter(|c| !c.is_empty()) {
                m.v1.push((c.to_owned(), path.to_owned()));
            }
        }
    }
    if m.unified.is_none() && m.v1.is_empty() {
        return Err(err("no cgroup lines".into()));
    }
    Ok(m)
}

/// The directories to read, once located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupDirs {
    /// A unified hierarchy.
    V2(PathBuf),
    /// One directory per v1 controller, each optional.
    V1 {
        /// memory controller.
        memory: Option<PathBuf>,
        /// cpu (cfs) controller.
        cpu: Option<PathBuf>,
        /// pids controller.
        pids: Option<PathBuf>,
    },
}

/// Where to look for cgroup file systems.
#[derive(Debug, Clone)]
pub struct CgroupRoots {
    /// procfs root (for /proc/PID/cgroup and /proc/PID/root).
    pub proc_root: PathBuf,
    /// The host (or this container's) cgroup mount, the fallback.
    pub host_root: PathBuf,
}

fn lists_pid(dir: &Path, pid: u32) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
        return false;
    };
    text.lines().any(|l| l.trim().parse::<u32>() == Ok(pid))
}

/// Chooses the directory of one hierarchy: first the path through the target's own mount namespace, then
/// that mount's root (a container with a private cgroup namespace sees its own cgroup there), then the host
/// path. A candidate whose cgroup.procs lists the pid wins; otherwise the first path-exact one that exists.
fn choose(roots: &CgroupRoots, pid: u32, sub: &str, path: &str) -> Option<PathBuf> {
    let rel = path.trim_start_matches('/');
    let outside_ns = rel.starts_with("..");
    let target_view = roots
        .proc_root
        .join(pid.to_string())
        .join("root/sys/fs/cgroup")
        .join(sub);
    let host = roots.host_root.join(sub);
    let mut exact = Vec::new();
    if !outside_ns {
        exact.push(target_view.join(rel));
        exact.push(host.join(rel));
    }
    let candidates = [
        exact.first().cloned(),
        Some(target_view.clone()),
        exact.get(1).cloned(),
    ];
    for c in candidates.iter().flatten() {
        if lists_pid(c, pid) {
            return Some(c.clone());
        }
    }
    exact.into_iter().find(|p| p.join("cgroup.procs").exists())
}

/// Finds the target's cgroup directories.
pub fn locate(roots: &CgroupRoots, pid: u32) -> Result<CgroupDirs, LocateError> {
    let file = roots.proc_root.join(pid.to_string()).join("cgroup");
    let raw = std::fs::read(&file).map_err(|e| LocateError::Read(file.clone(), e))?;
    let m = parse_membership(&raw).map_err(LocateError::Parse)?;
    let has_v1 = ["memory", "cpu", "pids"]
        .iter()
        .any(|c| m.v1_path(c).is_some());
    if !has_v1 {
        let path = m.unified.as_deref().unwrap_or("/");
        return choose(roots, pid, "", path)
            .map(CgroupDirs::V2)
            .ok_or(LocateError::NotFound(pid));
    }
    let dir = |c: &str| m.v1_path(c).and_then(|p| choose(roots, pid, c, p));
    let dirs = CgroupDirs::V1 {
        memory: dir("memory"),
        cpu: dir("cpu"),
        pids: dir("pids"),
    };
    match &dirs {
        CgroupDirs::V1 {
            memory: None,
            cpu: None,
            pids: None,
        } => Err(LocateError::NotFound(pid)),
        _ => Ok(dirs),
    }
}

/// Why the target's cgroup could not be located.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// /proc/PID/cgroup could not be read.
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// /proc/PID/cgroup had an unexpected shape.
    #[error(transparent)]
    Parse(ParseError),
    /// No candidate directory exists or lists the pid.
    #[error("no cgroup directory for pid {0} under the target's root or the host cgroup mount")]
    NotFound(u32),
}

/// Whether PSI figures describe the target's cgroup or the whole machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PressureScope {
    /// Per-cgroup PSI (v2).
    #[default]
    Cgroup,
    /// /proc/pressure (v1, or v2 without per-cgroup files).
    System,
}

impl PressureScope {
    /// The `scope` label value.
    pub fn label(self) -> &'static str {
        match self {
            PressureScope::Cgroup => "cgroup",
            PressureScope::System => "system",
        }
    }
}

/// One tick's reading of the target's cgroup. Unknown or unlimited values are None.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CgroupSample {
    /// Memory charged to the cgroup (memory.current / memory.usage_in_bytes), bytes.
    pub memory_usage: Option<u64>,
    /// Memory limit, bytes; None when unlimited.
    pub memory_limit: Option<u64>,
    /// CPU quota in cores; None when unlimited.
    pub cpu_limit_cores: Option<f64>,
    /// CPU time used by the cgroup, microseconds.
    pub cpu_usage_us: Option<u64>,
    /// Enforcement periods.
    pub cpu_periods: Option<u64>,
    /// Periods in which the cgroup was throttled.
    pub cpu_throttled_periods: Option<u64>,
    /// Time throttled, microseconds.
    pub cpu_throttled_us: Option<u64>,
    /// Tasks in the cgroup.
    pub pids: Option<u64>,
    /// Task limit; None when unlimited.
    pub pids_limit: Option<u64>,
    /// PSI per resource in [`RESOURCES`] order.
    pub pressure: [Option<Pressure>; 3],
    /// What the PSI figures describe.
    pub pressure_scope: PressureScope,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    MemCurrent,
    MemMax,
    CpuMax,
    CpuStatV2,
    V1MemUsage,
    V1MemLimit,
    V1CfsQuota,
    V1CfsPeriod,
    V1CpuStat,
    PidsCurrent,
    PidsMax,
    Pressure(usize),
}

struct Slot {
    kind: FileKind,
    path: PathBuf,
    file: Option<KeptFile>,
}

/// Keeps the target's cgroup files open and samples them.
pub struct CgroupReader {
    slots: Vec<Slot>,
    scope: PressureScope,
    ticks: u64,
    buf: Vec<u8>,
    cfs_period_us: Option<u64>,
}

/// Above this a v1 limit means "no limit" (the kernel reports PAGE_COUNTER_MAX rounded to pages).
const V1_UNLIMITED: u64 = 1 << 62;

impl CgroupReader {
    /// Opens the files of `dirs`; PSI comes from the cgroup on v2 and from `proc_root/pressure` on v1.
    pub fn open(dirs: &CgroupDirs, proc_root: &Path) -> Self {
        let mut slots = Vec::new();
        let mut add = |kind, path: PathBuf| {
            let file = KeptFile::open(&path).ok();
            slots.push(Slot { kind, path, file });
        };
        let scope;
        match dirs {
            CgroupDirs::V2(d) => {
                add(FileKind::MemCurrent, d.join("memory.current"));
                add(FileKind::MemMax, d.join("memory.max"));
                add(FileKind::CpuMax, d.join("cpu.max"));
                add(FileKind::CpuStatV2, d.join("cpu.stat"));
                add(FileKind::PidsCurrent, d.join("pids.current"));
                add(FileKind::PidsMax, d.join("pids.max"));
                let per_cgroup = d.join("cpu.pressure").exists();
                scope = if per_cgroup {
                    PressureScope::Cgroup
                } else {
                    PressureScope::System
                };
                for (i, r) in RESOURCES.iter().enumerate() {
                    let path = if per_cgroup {
                        d.join(format!("{r}.pressure"))
                    } else {
                        proc_root.join("pressure").join(r)
                    };
                    add(FileKind::Pressure(i), path);
                }
            }
            CgroupDirs::V1 { memory, cpu, pids } => {
                if let Some(d) = memory {
                    add(FileKind::V1MemUsage, d.join("memory.usage_in_bytes"));
                    add(FileKind::V1MemLimit, d.join("memory.limit_in_bytes"));
                }
                if let Some(d) = cpu {
                    add(FileKind::V1CfsQuota, d.join("cpu.cfs_quota_us"));
                    add(FileKind::V1CfsPeriod, d.join("cpu.cfs_period_us"));
                    add(FileKind::V1CpuStat, d.join("cpu.stat"));
                }
                if let Some(d) = pids {
                    add(FileKind::PidsCurrent, d.join("pids.current"));
                    add(FileKind::PidsMax, d.join("pids.max"));
                }
                scope = PressureScope::System;
                for (i, r) in RESOURCES.iter().enumerate() {
                    add(FileKind::Pressure(i), proc_root.join("pressure").join(r));
                }
            }
        }
        CgroupReader {
            slots,
            scope,
            ticks: 0,
            buf: Vec::with_capacity(1024),
            cfs_period_us: None,
        }
    }

    /// Takes one sample. Files that could not be opened are retried every tenth tick, each failure counted.
    pub fn sample(&mut self, errors: &dyn ReadErrorSink) -> CgroupSample {
        let started = std::time::Instant::now();
        let retry = self.ticks % 10 == 0;
        self.ticks = self.ticks.wrapping_add(1);
        let mut s = CgroupSample {
            pressure_scope: self.scope,
            ..Default::default()
        };
        let mut quota: Option<i64> = None;
        for slot in &mut self.slots {
            let source = if matches!(slot.kind, FileKind::Pressure(_)) {
                ReadSource::Pressure
            } else {
                ReadSource::Cgroup
            };
            if slot.file.is_none() && retry {
                slot.file = KeptFile::open(&slot.path).ok();
                if slot.file.is_none() {
                    errors.read_error(source);
                }
            }
            let Some(file) = &slot.file else { continue };
            let buf = match file.read(&mut self.buf) {
                Ok(b) => b,
                Err(_) => {
                    slot.file = None;
                    errors.read_error(source);
                    continue;
                }
            };
            if apply(slot.kind, buf, &mut s, &mut quota, &mut self.cfs_period_us).is_err() {
                errors.read_error(source);
            }
        }
        if let (Some(q), Some(p)) = (quota, self.cfs_period_us) {
            s.cpu_limit_cores = (q > 0 && p > 0).then(|| q as f64 / p as f64);
        }
        errors.read_duration(ReadSource::Cgroup, started.elapsed());
        s
    }
}

/// The cgroup probe: the target's memory, CPU and pids controllers and pressure stall information, from
/// the directories the sampler located when it attached.
pub struct CgroupProbe {
    proc_root: PathBuf,
    reader: Option<CgroupReader>,
}

impl CgroupProbe {
    /// A probe reading system-wide PSI under `proc_root` where the cgroup has none.
    pub fn new(proc_root: &Path) -> Self {
        CgroupProbe {
            proc_root: proc_root.to_path_buf(),
            reader: None,
        }
    }
}

impl Probe for CgroupProbe {
    fn name(&self) -> &'static str {
        "cgroup"
    }

    fn attach(&mut self, target: &ProbeTarget, _errors: &dyn ReadErrorSink) -> std::io::Result<()> {
        // Not found is counted where it was located; container metrics are then left out.
        self.reader = target
            .cgroup
            .as_ref()
            .map(|dirs| CgroupReader::open(dirs, &self.proc_root));
        Ok(())
    }

    fn sample(
        &mut self,
        obs: &mut Observations,
        errors: &dyn ReadErrorSink,
    ) -> Result<(), TargetGone> {
        obs.cgroup = self.reader.as_mut().map(|r| r.sample(errors));
        Ok(())
    }

    fn detach(&mut self) {
        self.reader = None;
    }
}

fn apply(
    kind: FileKind,
    buf: &[u8],
    s: &mut CgroupSample,
    v1_quota: &mut Option<i64>,
    v1_period: &mut Option<u64>,
) -> Result<(), ParseError> {
    match kind {
        FileKind::MemCurrent | FileKind::V1MemUsage => s.memory_usage = Some(parse_u64(buf)?),
        FileKind::MemMax => s.memory_limit = parse_max(buf)?,
        FileKind::V1MemLimit => {
            s.memory_limit = Some(parse_u64(buf)?).filter(|&v| v < V1_UNLIMITED)
        }
        FileKind::CpuMax => s.cpu_limit_cores = parse_cpu_max(buf)?,
        FileKind::CpuStatV2 => {
            s.cpu_usage_us = Some(flat_key(buf, "usage_usec")?);
            // nr_* appear only when the cpu controller is enabled for the cgroup.
            s.cpu_periods = flat_key(buf, "nr_periods").ok();
            s.cpu_throttled_periods = flat_key(buf, "nr_throttled").ok();
            s.cpu_throttled_us = flat_key(buf, "throttled_usec").ok();
        }
        FileKind::V1CpuStat => {
            s.cpu_periods = Some(flat_key(buf, "nr_periods")?);
            s.cpu_throttled_periods = Some(flat_key(buf, "nr_throttled")?);
            s.cpu_throttled_us = Some(flat_key(buf, "throttled_time")? / 1000);
        }
        FileKind::V1CfsQuota => *v1_quota = Some(parse_i64(buf)?),
        FileKind::V1CfsPeriod => *v1_period = Some(parse_u64(buf)?),
        FileKind::PidsCurrent => s.pids = Some(parse_u64(buf)?),
        FileKind::PidsMax => s.pids_limit = parse_max(buf)?,
        FileKind::Pressure(i) => s.pressure[i] = Some(parse_pressure(buf)?),
    }
    Ok(())
}

fn text(buf: &[u8]) -> Result<&str, ParseError> {
    std::str::from_utf8(buf)
        .map(str::trim)
        .map_err(|_| ParseError {
            file: "cgroup",
            what: "not UTF-8".into(),
        })
}

/// A single unsigned number.
pub fn parse_u64(buf: &[u8]) -> Result<u64, ParseError> {
    let t = text(buf)?;
    t.parse().map_err(|_| ParseError {
        file: "cgroup",
        what: format!("not a number: {t:?}"),
    })
}

fn parse_i64(buf: &[u8]) -> Result<i64, ParseError> {
    let t = text(buf)?;
    t.parse().map_err(|_| ParseError {
        file: "cgroup",
        what: format!("not a number: {t:?}"),
    })
}

/// A number or `max` (None).
pub fn parse_max(buf: &[u8]) -> Result<Option<u64>, ParseError> {
    if text(buf)? == "max" {
        return Ok(None);
    }
    parse_u64(buf).map(Some)
}

/// v2 `cpu.max` (`$MAX $PERIOD`) as cores; None for `max`.
pub fn parse_cpu_max(buf: &[u8]) -> Result<Option<f64>, ParseError> {
    let t = text(buf)?;
    let mut it = t.split_ascii_whitespace();
    let bad = || ParseError {
        file: "cpu.max",
        what: format!("expected '$MAX $PERIOD', got {t:?}"),
    };
    let (Some(max), Some(period)) = (it.next(), it.next()) else {
        return Err(bad());
    };
    let period: u64 = period.parse().map_err(|_| bad())?;
    if max == "max" {
        return Ok(None);
    }
    let max: u64 = max.parse().map_err(|_| bad())?;
    if period == 0 {
        return Err(bad());
    }
    Ok(Some(max as f64 / period as f64))
}

/// The value of `key` in a flat-keyed file (`key value` lines).
pub fn flat_key(buf: &[u8], key: &str) -> Result<u64, ParseError> {
    let t = text(buf)?;
    for line in t.lines() {
        let mut it = line.split_ascii_whitespace();
        if it.next() == Some(key) {
            return it
                .next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| ParseError {
                    file: "cgroup",
                    what: format!("{key} is not a number in {line:?}"),
                });
        }
    }
    Err(ParseError {
        file: "cgroup",
        what: format!("no {key} line"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cgroup")
    }

    #[derive(Default)]
    struct Count(std::sync::Mutex<Vec<ReadSource>>);
    impl ReadErrorSink for Count {
        fn read_error(&self, s: ReadSource) {
            self.0.lock().unwrap().push(s);
        }
        fn read_duration(&self, _: ReadSource, _: Duration) {}
    }

    #[test]
    fn membership_v1_hybrid_and_v2() {
        let m =
            parse_membership(b"9:name=systemd:/\n4:memory:/a/b\n2:cpu,cpuacct:/a\n0::/\n").unwrap();
        assert_eq!(m.unified.as_deref(), Some("/"));
        assert_eq!(m.v1_path("memory"), Some("/a/b"));
        assert_eq!(m.v1_path("cpuacct"), Some("/a"));
        let m = parse_membership(b"0::/kubepods/pod1/ctr\n").unwrap();
        assert_eq!(m.unified.as_deref(), Some("/kubepods/pod1/ctr"));
        assert!(m.v1.is_empty());
        assert!(parse_membership(b"garbage\n").is_err());
        assert!(parse_membership(b"").is_err());
    }

    #[test]
    fn value_files() {
        assert_eq!(parse_max(b"max\n").unwrap(), None);
        assert_eq!(parse_max(b"536870912\n").unwrap(), Some(536_870_912));
        assert!(parse_max(b"lots\n").is_err());
        assert_eq!(parse_cpu_max(b"max 100000\n").unwrap(), None);
        assert_eq!(parse_cpu_max(b"150000 100000\n").unwrap(), Some(1.5));
        assert!(parse_cpu_max(b"150000\n").is_err());
        assert!(parse_cpu_max(b"1 0\n").is_err());
        assert_eq!(flat_key(b"oom 1\noom_kill 3\n", "oom_kill").unwrap(), 3);
        assert!(flat_key(b"oom 1\n", "oom_kill").is_err());
        assert!(flat_key(b"oom_kill x\n", "oom_kill").is_err());
    }

    #[test]
    fn v2_through_target_root_with_private_namespace() {
        // The target sees itself at "/" of its own cgroup mount, while /proc/PID/cgroup (read from the
        // sidecar's namespace) names a path outside it.
        let root = fixtures().join("v2-namespaced");
        let roots = CgroupRoots {
            proc_root: root.join("proc"),
            host_root: root.join("host-cgroup"),
        };
        let dirs = locate(&roots, 4242).unwrap();
        assert_eq!(
            dirs,
            CgroupDirs::V2(root.join("proc/4242/root/sys/fs/cgroup"))
        );
        let errors = Count::default();
        let mut r = CgroupReader::open(&dirs, &roots.proc_root);
        let s = r.sample(&errors);
        assert_eq!(s.memory_usage, Some(104_857_600));
        assert_eq!(s.memory_limit, Some(268_435_456));
        assert_eq!(s.cpu_limit_cores, Some(0.5));
        assert_eq!(s.cpu_usage_us, Some(90_000_000));
        assert_eq!(s.cpu_periods, Some(1200));
        assert_eq!(s.cpu_throttled_periods, Some(300));
        assert_eq!(s.cpu_throttled_us, Some(4_500_000));
        assert_eq!(s.pids, Some(14));
        assert_eq!(s.pids_limit, Some(1024));
        assert_eq!(s.pressure_scope, PressureScope::Cgroup);
        assert_eq!(
            s.pressure[0],
            Some(Pressure {
                some_us: 5_000_000,
                full_us: Some(1_000_000)
            })
        );
        assert_eq!(
            s.pressure[1],
            Some(Pressure {
                some_us: 20,
                full_us: Some(10)
            })
        );
        assert_eq!(
            s.pressure[2],
            Some(Pressure {
                some_us: 300,
                full_us: Some(200)
            })
        );
        assert!(errors.0.lock().unwrap().is_empty());
    }

    #[test]
    fn v2_host_path_unlimited_and_missing_controller() {
        let root = fixtures().join("v2-host");
        let roots = CgroupRoots {
            proc_root: root.join("proc"),
            host_root: root.join("host-cgroup"),
        };
        let dirs = locate(&roots, 77).unwrap();
        assert_eq!(
            dirs,
            CgroupDirs::V2(root.join("host-cgroup/app.slice/app.service"))
        );
        let errors = Count::default();
        let s = CgroupReader::open(&dirs, &roots.proc_root).sample(&errors);
        assert_eq!(s.memory_usage, Some(4096));
        assert_eq!(s.memory_limit, None, "max means unlimited: left out, not 0");
        assert_eq!(s.cpu_limit_cores, None);
        assert_eq!(
            s.cpu_periods, None,
            "cpu controller not enabled: no nr_periods"
        );
        // pids controller missing: both files fail and are counted, never reported as 0.
        assert_eq!(s.pids, None);
        assert_eq!(
            errors
                .0
                .lock()
                .unwrap()
                .iter()
                .filter(|s| **s == ReadSource::Cgroup)
                .count(),
            2
        );
        // No per-cgroup PSI files: system scope from proc/pressure.
        assert_eq!(s.pressure_scope, PressureScope::System);
        assert_eq!(s.pressure[0].map(|p| p.some_us), Some(11));
    }

    #[test]
    fn v1_controllers() {
        let root = fixtures().join("v1");
        let roots = CgroupRoots {
            proc_root: root.join("proc"),
            host_root: root.join("host-cgroup"),
        };
        let dirs = locate(&roots, 900).unwrap();
        let errors = Count::default();
        let s = CgroupReader::open(&dirs, &roots.proc_root).sample(&errors);
        assert_eq!(s.memory_usage, Some(52_428_800));
        assert_eq!(s.memory_limit, None, "v1 near-2^63 limit means unlimited");
        assert_eq!(s.cpu_limit_cores, Some(2.0));
        assert_eq!(s.cpu_periods, Some(500));
        assert_eq!(s.cpu_throttled_periods, Some(25));
        assert_eq!(s.cpu_throttled_us, Some(1_250_000));
        assert_eq!(s.pids, Some(3));
        assert_eq!(s.pids_limit, None);
        assert_eq!(s.pressure_scope, PressureScope::System);
        assert!(
            errors.0.lock().unwrap().is_empty(),
            "{:?}",
            errors.0.lock().unwrap()
        );
    }

    #[test]
    fn malformed_file_is_counted_not_zero() {
        let root = fixtures().join("v1-broken");
        let roots = CgroupRoots {
            proc_root: root.join("proc"),
            host_root: root.join("host-cgroup"),
        };
        let dirs = locate(&roots, 900).unwrap();
        let errors = Count::default();
        let s = CgroupReader::open(&dirs, &roots.proc_root).sample(&errors);
        assert_eq!(s.memory_usage, None);
        assert!(errors.0.lock().unwrap().contains(&ReadSource::Cgroup));
    }
}
