//! JVM hsperfdata: the memory-mapped counters file every HotSpot JVM writes to
//! `/tmp/hsperfdata_<user>/<pid>` (what `jstat` reads). Parsed here without an agent: GC collector pause
//! counts and times, safepoints, and the old generation's occupancy and capacity.

use crate::language::Runtime;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::jvm_watch::JvmWatch;
use super::{Observations, Probe, ProbeTarget, ReadErrorSink, ReadSource, TargetGone};

/// Why an hsperfdata file could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HsperfError {
    /// Shorter than its header or than an entry claims.
    #[error("hsperfdata truncated: {0}")]
    Truncated(&'static str),
    /// Not an hsperfdata file, or a version this parser does not know.
    #[error("not hsperfdata: {0}")]
    Format(String),
    /// The JVM is in the middle of creating the file.
    #[error("hsperfdata not yet accessible")]
    NotReady,
}

/// A counter value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Counter {
    /// A 64-bit integer (`J`).
    Long(i64),
    /// A byte vector, here always a NUL-terminated string (`B`).
    Text(String),
}

const MAGIC: u32 = 0xcafe_c0c0;
const PROLOGUE: usize = 32;
const ENTRY_HEADER: usize = 20;
/// Entries beyond this are ignored: a JVM has about 300; a corrupt count must not drive a long loop.
const MAX_ENTRIES: usize = 10_000;

/// Parses every entry of an hsperfdata image into (name, value) pairs, calling `f` for each.
pub fn parse(buf: &[u8], mut f: impl FnMut(&str, Counter)) -> Result<(), HsperfError> {
    parse_at(buf, |name, value, _| f(name, value))
}

/// Whether an image is little-endian (byte 4 of its prologue); None for what is not hsperfdata.
pub fn little_endian(buf: &[u8]) -> Option<bool> {
    match buf.get(4) {
        Some(0) => Some(false),
        Some(1) => Some(true),
        _ => None,
    }
}

/// Like [`parse`], with each value's offset in the image: a reader that polls a few counters reads them
/// there, without parsing the whole file again (the JVM never moves an entry once written).
pub fn parse_at(buf: &[u8], mut f: impl FnMut(&str, Counter, usize)) -> Result<(), HsperfError> {
    if buf.len() < PROLOGUE {
        return Err(HsperfError::Truncated("prologue"));
    }
    let magic = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if magic != MAGIC {
        return Err(HsperfError::Format(format!("magic {magic:#x}")));
    }
    let little = match buf[4] {
        0 => false,
        1 => true,
        b => return Err(HsperfError::Format(format!("byte order {b}"))),
    };
    if buf[5] != 2 {
        return Err(HsperfError::Format(format!("major version {}", buf[5])));
    }
    if buf[7] == 0 {
        return Err(HsperfError::NotReady);
    }
    let u32_at = |off: usize| -> Result<u32, HsperfError> {
        let b: [u8; 4] = buf
            .get(off..off + 4)
            .ok_or(HsperfError::Truncated("u32"))?
            .try_into()
            .map_err(|_| HsperfError::Truncated("u32"))?;
        Ok(if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    let i64_at = |off: usize| -> Result<i64, HsperfError> {
        let b: [u8; 8] = buf
            .get(off..off + 8)
            .ok_or(HsperfError::Truncated("i64"))?
            .try_into()
            .map_err(|_| HsperfError::Truncated("i64"))?;
        Ok(if little {
            i64::from_le_bytes(b)
        } else {
            i64::from_be_bytes(b)
        })
    };
    let mut off = u32_at(24)? as usize;
    let entries = (u32_at(28)? as usize).min(MAX_ENTRIES);
    for _ in 0..entries {
        if off
            .checked_add(ENTRY_HEADER)
            .is_none_or(|end| end > buf.len())
        {
            return Err(HsperfError::Truncated("entry header"));
        }
        let len = u32_at(off)? as usize;
        let name_off = u32_at(off + 4)? as usize;
        let vector_len = u32_at(off + 8)? as usize;
        let data_type = buf[off + 12];
        let data_off = u32_at(off + 16)? as usize;
        if len < ENTRY_HEADER || off + len > buf.len() || name_off >= len || data_off > len {
            return Err(HsperfError::Format(format!(
                "entry at {off} has inconsistent offsets"
            )));
        }
        let entry = &buf[off..off + len];
        let name_bytes = &entry[name_off..];
        let name_end = name_bytes
            .iter()
            .position(|&b| b == 0)
            .ok_or(HsperfError::Truncated("entry name"))?;
        let name = std::str::from_utf8(&name_bytes[..name_end])
            .map_err(|_| HsperfError::Format("entry name is not UTF-8".into()))?;
        match (data_type, vector_len) {
            (b'J', 0) => f(name, Counter::Long(i64_at(off + data_off)?), off + data_off),
            (b'B', n) if n > 0 => {
                let data = entry
                    .get(data_off..data_off + n)
                    .ok_or(HsperfError::Truncated("byte vector"))?;
                let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
                f(
                    name,
                    Counter::Text(String::from_utf8_lossy(&data[..end]).into_owned()),
                    off + data_off,
                );
            }
            _ => {}
        }
        off += len;
    }
    Ok(())
}

/// One GC collector's cumulative pauses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GcCollector {
    /// N in `sun.gc.collector.N.*` (below 16): what identifies the collector from sample to sample.
    pub index: usize,
    /// `sun.gc.collector.N.name`, or "collector N" when the JVM gave none.
    pub name: String,
    /// Collections (each one a stop-the-world pause).
    pub invocations: u64,
    /// Time in them, hsperfdata ticks. Added when a pause ends, while `invocations` rises when it starts.
    pub time_ticks: u64,
    /// JVM clock (ticks since the JVM started) when the last pause began (`lastEntryTime`).
    pub last_entry_ticks: Option<u64>,
    /// JVM clock when the last pause ended (`lastExitTime`); below `last_entry_ticks` while one runs.
    pub last_exit_ticks: Option<u64>,
}

impl GcCollector {
    /// True while a pause of this collector is in progress (it began after the last one ended).
    pub fn in_pause(&self) -> bool {
        matches!((self.last_entry_ticks, self.last_exit_ticks), (Some(a), Some(b)) if a > b)
    }
}

/// What vitals reads from hsperfdata each tick.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JvmSample {
    /// Ticks per second of the times below (`sun.os.hrt.frequency`).
    pub frequency: u64,
    /// Collectors by index.
    pub collectors: Vec<GcCollector>,
    /// `sun.rt.safepoints`.
    pub safepoints: Option<u64>,
    /// `sun.rt.safepointTime`, ticks.
    pub safepoint_ticks: Option<u64>,
    /// Old generation used, bytes (`sun.gc.generation.1.space.0.used`).
    pub old_used: Option<u64>,
    /// Old generation maximum, bytes (`sun.gc.generation.1.space.0.maxCapacity`).
    pub old_max: Option<u64>,
    /// Young generation maximum, bytes (`sun.gc.generation.0.maxCapacity`).
    pub young_max: Option<u64>,
    /// The collector policy (`sun.gc.policy.name`: `Copy:MSC` for Serial, `ParScav:MSC` for Parallel,
    /// `GarbageFirst` for G1; ZGC writes none).
    pub policy: Option<String>,
    /// The JVM clock at the JVM's last statistics sample (`sun.os.hrt.ticks`, refreshed every ~50 ms).
    pub hrt_ticks: Option<u64>,
    /// When the JVM began starting, milliseconds since the Unix epoch (`sun.rt.createVmBeginTime`).
    pub vm_begin_ms: Option<u64>,
}

impl JvmSample {
    /// The maximum heap (`-Xmx`), bytes. Serial and Parallel (policies `…:MSC`) reserve the young and the
    /// old generation apart, so the heap is both maxima added (equal to `-Xmx` to the byte: 42.6 + 85.4 MiB
    /// for `-Xmx128m`); G1, ZGC and Shenandoah report the whole heap as the old generation's maximum (G1
    /// as the young one's too, so adding would count it twice).
    pub fn heap_max(&self) -> Option<u64> {
        let old = self.old_max?;
        match (self.policy.as_deref(), self.young_max) {
            (Some(p), Some(young)) if p.ends_with(":MSC") => Some(old.saturating_add(young)),
            _ => Some(old),
        }
    }
}

/// Extracts the counters vitals uses.
pub fn sample(buf: &[u8]) -> Result<JvmSample, HsperfError> {
    let mut s = JvmSample::default();
    let pos = |v: i64| u64::try_from(v).unwrap_or(0);
    parse(buf, |name, value| match (name, value) {
        ("sun.os.hrt.frequency", Counter::Long(v)) => s.frequency = pos(v),
        ("sun.rt.safepoints", Counter::Long(v)) => s.safepoints = Some(pos(v)),
        ("sun.rt.safepointTime", Counter::Long(v)) => s.safepoint_ticks = Some(pos(v)),
        ("sun.gc.generation.1.space.0.used", Counter::Long(v)) => s.old_used = Some(pos(v)),
        ("sun.gc.generation.1.space.0.maxCapacity", Counter::Long(v)) => s.old_max = Some(pos(v)),
        ("sun.gc.generation.0.maxCapacity", Counter::Long(v)) => s.young_max = Some(pos(v)),
        ("sun.gc.policy.name", Counter::Text(t)) => s.policy = Some(t),
        ("sun.os.hrt.ticks", Counter::Long(v)) => s.hrt_ticks = Some(pos(v)),
        ("sun.rt.createVmBeginTime", Counter::Long(v)) => s.vm_begin_ms = Some(pos(v)),
        (n, v) => {
            let Some(rest) = n.strip_prefix("sun.gc.collector.") else {
                return;
            };
            let Some((idx, field)) = rest.split_once('.') else {
                return;
            };
            let Ok(i) = idx.parse::<usize>() else { return };
            if i >= 16 {
                return;
            }
            if s.collectors.len() <= i {
                s.collectors.resize(i + 1, GcCollector::default());
            }
            match (field, v) {
                ("name", Counter::Text(t)) => s.collectors[i].name = t,
                ("invocations", Counter::Long(x)) => s.collectors[i].invocations = pos(x),
                ("time", Counter::Long(x)) => s.collectors[i].time_ticks = pos(x),
                ("lastEntryTime", Counter::Long(x)) => {
                    s.collectors[i].last_entry_ticks = Some(pos(x))
                }
                ("lastExitTime", Counter::Long(x)) => {
                    s.collectors[i].last_exit_ticks = Some(pos(x))
                }
                _ => {}
            }
        }
    })?;
    if s.frequency == 0 {
        return Err(HsperfError::Format("no sun.os.hrt.frequency".into()));
    }
    // Indices the JVM skips (JDK 17 ZGC has only collector 2) leave empty slots; a collector with counters
    // but no name still has pauses.
    for (i, c) in s.collectors.iter_mut().enumerate() {
        c.index = i;
        if c.name.is_empty() && (c.last_exit_ticks.is_some() || c.invocations > 0) {
            c.name = format!("collector {i}");
        }
    }
    s.collectors.retain(|c| !c.name.is_empty());
    Ok(s)
}

/// Why the target's hsperfdata is or is not read: shown once in the log and as
/// `vitals_exporter_hsperfdata_status{reason}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HsperfStatus {
    /// The file is found, belongs to the target and is read every interval.
    Reading,
    /// No `hsperfdata_*/<pid>` file under the target's `/tmp` (no JVM, or its /tmp is elsewhere).
    Absent,
    /// The JVM was started with this flag, so it writes no file.
    Disabled(&'static str),
    /// The file or its directory exists but vitals may not read it (another user; see the SYS_PTRACE
    /// overlay, or run vitals as the app's user).
    PermissionDenied(String),
    /// A file for this pid that is not the target's: another user's, or a dead JVM's whose pid was reused.
    Stale(String),
    /// The file is there but does not parse.
    Unreadable(String),
}

impl HsperfStatus {
    /// The `reason` label value.
    pub fn reason(&self) -> &'static str {
        match self {
            HsperfStatus::Reading => "reading",
            HsperfStatus::Absent => "absent",
            HsperfStatus::Disabled(_) => "disabled",
            HsperfStatus::PermissionDenied(_) => "permission_denied",
            HsperfStatus::Stale(_) => "stale",
            HsperfStatus::Unreadable(_) => "unreadable",
        }
    }

    /// A sentence for the log: what is wrong and what to do.
    pub fn explain(&self) -> String {
        match self {
            HsperfStatus::Reading => "reading JVM hsperfdata".into(),
            HsperfStatus::Absent => "no hsperfdata file under the target's /tmp: JVM pause, safepoint \
                and heap metrics from hsperfdata are left out"
                .into(),
            HsperfStatus::Disabled(flag) => format!(
                "the JVM runs with {flag}, so it writes no hsperfdata: JVM pause, safepoint and heap \
                 metrics from hsperfdata are left out; drop the flag or send OTLP runtime metrics"
            ),
            HsperfStatus::PermissionDenied(why) => format!(
                "hsperfdata is not readable ({why}): run vitals as the JVM's user or grant SYS_PTRACE"
            ),
            HsperfStatus::Stale(why) => format!("hsperfdata file ignored: {why}"),
            HsperfStatus::Unreadable(why) => format!("hsperfdata file does not parse: {why}"),
        }
    }
}

/// The target a hsperfdata file must belong to.
#[derive(Debug, Clone, Copy)]
pub struct HsperfOwner {
    /// pid as vitals sees it.
    pub pid: u32,
    /// pid in the target's own namespace (the file's name).
    pub nspid: u32,
    /// Effective uid of the target (the JVM creates its file with it).
    pub uid: Option<u32>,
    /// When the target process started, Unix milliseconds (whole seconds of boot time plus clock ticks).
    pub start_unix_ms: Option<u64>,
}

/// How much earlier than the process start a JVM may claim to have begun (`btime` is whole seconds and
/// start times are clock ticks). A dead JVM's file under a reused pid began before the new process started,
/// since its pid had to be free first.
const START_SLACK_MS: u64 = 2_000;

/// JVM options that stop the JVM from writing a file, each with its opposite, as found on the command line
/// or in the launcher's option variables.
const DISABLING_FLAGS: [(&str, &str); 2] = [
    ("-XX:-UsePerfData", "-XX:+UsePerfData"),
    ("-XX:+PerfDisableSharedMem", "-XX:-PerfDisableSharedMem"),
];

/// The flag that disabled hsperfdata, when the target's command line or option variables carry one.
fn disabling_flag(proc_root: &Path, pid: u32) -> Option<&'static str> {
    let dir = proc_root.join(pid.to_string());
    let mut text = std::fs::read(dir.join("cmdline")).unwrap_or_default();
    if let Ok(env) = std::fs::read(dir.join("environ")) {
        for var in env.split(|b| *b == 0) {
            if [
                &b"JAVA_TOOL_OPTIONS="[..],
                b"JDK_JAVA_OPTIONS=",
                b"_JAVA_OPTIONS=",
            ]
            .iter()
            .any(|p| var.starts_with(p))
            {
                text.push(0);
                text.extend(var.split(|b| *b == b'=').nth(1).unwrap_or_default());
            }
        }
    }
    let words: Vec<&[u8]> = text.split(|b| *b == 0 || *b == b' ').collect();
    // The last occurrence wins, as for the JVM: "-XX:-UsePerfData -XX:+UsePerfData" is enabled.
    DISABLING_FLAGS
        .into_iter()
        .find(|(off, on)| {
            let last = words
                .iter()
                .rposition(|w| *w == off.as_bytes() || *w == on.as_bytes());
            last.is_some_and(|i| words[i] == off.as_bytes())
        })
        .map(|(off, _)| off)
}

/// Finds the target's hsperfdata file through its own root (`/proc/PID/root/tmp/hsperfdata_*/<nspid>`),
/// checks that it is the target's (owner uid and JVM start time), and opens it; otherwise says why not.
pub fn open_for_target(
    proc_root: &Path,
    owner: &HsperfOwner,
) -> Result<(HsperfReader, PathBuf), HsperfStatus> {
    use std::os::unix::fs::MetadataExt;
    let tmp = proc_root.join(owner.pid.to_string()).join("root/tmp");
    let dirs = std::fs::read_dir(&tmp).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            HsperfStatus::PermissionDenied(format!("{}: {e}", tmp.display()))
        }
        _ => HsperfStatus::Absent,
    })?;
    let mut rejected: Option<HsperfStatus> = None;
    for d in dirs.flatten().take(1024) {
        if !d
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with("hsperfdata_"))
        {
            continue;
        }
        let path = d.path().join(owner.nspid.to_string());
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_file() => m,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                rejected = Some(HsperfStatus::PermissionDenied(format!(
                    "{}: {e}",
                    path.display()
                )));
                continue;
            }
            Err(_) => continue,
        };
        if let Some(uid) = owner.uid.filter(|u| *u != meta.uid()) {
            rejected = Some(HsperfStatus::Stale(format!(
                "{} belongs to uid {}, the target runs as uid {uid}",
                path.display(),
                meta.uid()
            )));
            continue;
        }
        let mut reader = match HsperfReader::open(&path) {
            Ok(r) => r,
            Err(e) => {
                rejected = Some(match e.kind() {
                    std::io::ErrorKind::PermissionDenied => {
                        HsperfStatus::PermissionDenied(format!("{}: {e}", path.display()))
                    }
                    _ => HsperfStatus::Unreadable(format!("{}: {e}", path.display())),
                });
                continue;
            }
        };
        match reader.sample() {
            Ok(s) => match (s.vm_begin_ms, owner.start_unix_ms) {
                (Some(began), Some(started)) if began + START_SLACK_MS < started => {
                    rejected = Some(HsperfStatus::Stale(format!(
                        "{} is of a JVM that began {} s before the target process started (a dead \
                         JVM whose pid was reused)",
                        path.display(),
                        (started - began) / 1000
                    )));
                }
                _ => return Ok((reader, path)),
            },
            // The JVM is still creating it: not an error yet, look again later.
            Err(HsperfError::NotReady) => rejected = Some(HsperfStatus::Absent),
            Err(e) => rejected = Some(HsperfStatus::Unreadable(format!("{}: {e}", path.display()))),
        }
    }
    Err(rejected.unwrap_or_else(|| {
        disabling_flag(proc_root, owner.pid).map_or(HsperfStatus::Absent, HsperfStatus::Disabled)
    }))
}

/// The target's hsperfdata file kept open and re-read each tick.
pub struct HsperfReader {
    file: File,
    buf: Vec<u8>,
}

/// Largest hsperfdata file read (the JVM default is 32 KiB; `-XX:PerfDataMemorySize` can raise it).
const MAX_FILE: usize = 1 << 20;

impl HsperfReader {
    /// Opens `path`.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        Ok(HsperfReader {
            file: File::open(path)?,
            buf: Vec::new(),
        })
    }

    /// Reads and parses the current counters.
    pub fn sample(&mut self) -> Result<JvmSample, HsperfError> {
        let len = self
            .file
            .metadata()
            .map(|m| m.len() as usize)
            .unwrap_or(0)
            .min(MAX_FILE);
        self.buf.resize(len, 0);
        let n = self
            .file
            .read_at(&mut self.buf, 0)
            .map_err(|_| HsperfError::Truncated("read"))?;
        sample(&self.buf[..n])
    }
}

/// Ticks between searches for the file while none is open, for a target not known to run a JVM.
const SEARCH_EVERY_TICKS: u64 = 10;

/// The hsperfdata probe: finds the target's file (a JVM's within 100 ms through the fast watch, anything
/// else's every tenth tick), reads it every tick, hands over what the fast watch read between ticks (every
/// pause on its own), and says once in the log why it is or is not read.
pub struct HsperfProbe {
    /// The fast watch: finds a JVM's file and polls its pause counters between ticks.
    watch: JvmWatch,
    proc_root: PathBuf,
    /// Who the file must belong to; None while detached.
    owner: Option<HsperfOwner>,
    reader: Option<HsperfReader>,
    /// The status last logged.
    status: Option<HsperfStatus>,
    /// The reason published with every tick's observations; None when there is nothing to say.
    shown: Option<&'static str>,
    /// The target runs a JVM (by its executable or its file): only then is an absent file news.
    is_jvm: bool,
    /// Ticks since attach (or since the target exec'd another program).
    ticks: u64,
}

impl HsperfProbe {
    /// A probe looking under the target's root in `proc_root`.
    pub fn new(proc_root: &Path) -> Self {
        HsperfProbe {
            watch: JvmWatch::new(proc_root),
            proc_root: proc_root.to_path_buf(),
            owner: None,
            reader: None,
            status: None,
            shown: None,
            is_jvm: false,
            ticks: 0,
        }
    }

    /// Logs a change of status once and keeps the reason to publish; a non-JVM without a file says
    /// nothing.
    fn report(&mut self, pid: u32, status: HsperfStatus) {
        if self.status.as_ref() == Some(&status) {
            return;
        }
        let shown = self.is_jvm || status != HsperfStatus::Absent;
        // A JVM creates its file a moment after it starts: an absent file is news from the second search on.
        if status == HsperfStatus::Absent && self.ticks <= SEARCH_EVERY_TICKS {
            self.shown = shown.then(|| status.reason());
            return;
        }
        match &status {
            HsperfStatus::Reading => {}
            HsperfStatus::Absent if !self.is_jvm => {}
            s => tracing::warn!(pid, reason = s.reason(), "{}", s.explain()),
        }
        self.shown = shown.then(|| status.reason());
        self.status = Some(status);
    }
}

impl Probe for HsperfProbe {
    fn name(&self) -> &'static str {
        "hsperfdata"
    }

    fn attach(&mut self, target: &ProbeTarget, _errors: &dyn ReadErrorSink) -> std::io::Result<()> {
        let owner = HsperfOwner {
            pid: target.pid,
            nspid: target.nspid,
            uid: target.uid,
            start_unix_ms: target.start_unix_ms,
        };
        self.owner = Some(owner);
        self.reader = None;
        self.status = None;
        self.shown = None;
        self.is_jvm = target.runtime == Some(Runtime::Jvm);
        self.ticks = 0;
        self.watch.watch(owner, self.is_jvm);
        Ok(())
    }

    fn program_changed(&mut self, target: &ProbeTarget) {
        // As at attach: the next read looks for the new program's file, with the same start-up grace. The
        // program may be another process of the tree (the JVM a launcher started): its file is its own.
        let owner = HsperfOwner {
            pid: target.pid,
            nspid: target.nspid,
            uid: target.uid,
            start_unix_ms: target.start_unix_ms,
        };
        self.owner = Some(owner);
        self.is_jvm = target.runtime == Some(Runtime::Jvm);
        self.reader = None;
        self.status = None;
        self.ticks = 0;
        self.watch.watch(owner, self.is_jvm);
    }

    fn sample(
        &mut self,
        obs: &mut Observations,
        errors: &dyn ReadErrorSink,
    ) -> Result<(), TargetGone> {
        let Some(owner) = self.owner else {
            return Ok(());
        };
        // A JVM's file is looked for every tick until found (its early pauses are in it); anything else's
        // every tenth, in case a JVM it did not look like is behind it.
        let search = self.is_jvm || self.ticks % SEARCH_EVERY_TICKS == 0;
        self.ticks = self.ticks.wrapping_add(1);
        if self.reader.is_none() {
            // The fast watch found it between ticks (its baseline was read then).
            if let Some((path, found_at)) = self.watch.take_found() {
                match HsperfReader::open(&path) {
                    Ok(reader) => {
                        tracing::info!(path = %path.display(), found_ms_ago = found_at.elapsed().as_millis() as u64,
                            "reading JVM hsperfdata");
                        self.reader = Some(reader);
                        obs.runtime_hint = Some(Runtime::Jvm);
                        self.is_jvm = true;
                        self.report(owner.pid, HsperfStatus::Reading);
                    }
                    Err(e) => {
                        self.watch.unwatch();
                        self.watch.watch(owner, self.is_jvm);
                        tracing::debug!(error = %e, "the file the JVM watch found does not open");
                    }
                }
            }
        }
        if self.reader.is_none() && search {
            let status = match open_for_target(&self.proc_root, &owner) {
                Ok((reader, path)) => {
                    tracing::info!(path = %path.display(), "reading JVM hsperfdata");
                    // From now on its pauses are polled between ticks too; the watch's baseline is read
                    // here, before this tick's reading.
                    self.watch.adopt(&path);
                    self.reader = Some(reader);
                    obs.runtime_hint = Some(Runtime::Jvm);
                    self.is_jvm = true;
                    HsperfStatus::Reading
                }
                Err(why) => why,
            };
            self.report(owner.pid, status);
        }
        if let Some(reader) = self.reader.as_mut() {
            // What the watch read between ticks, all of it before this tick's reading.
            obs.jvm_fast = self.watch.drain();
            match reader.sample() {
                Ok(j) => {
                    obs.jvm = Some(j);
                    self.report(owner.pid, HsperfStatus::Reading);
                }
                Err(e) => {
                    errors.read_error(ReadSource::Hsperf);
                    self.report(owner.pid, HsperfStatus::Unreadable(e.to_string()));
                }
            }
        }
        obs.hsperf_status = self.shown;
        Ok(())
    }

    fn detach(&mut self) {
        self.watch.unwatch();
        self.owner = None;
        self.reader = None;
        self.status = None;
        self.shown = None;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds an hsperfdata image by hand, in either byte order.
    pub(crate) fn image(little: bool, entries: &[(&str, Counter)]) -> Vec<u8> {
        let u32b = |v: u32| {
            if little {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            }
        };
        let mut body = Vec::new();
        for (name, value) in entries {
            let name_off = ENTRY_HEADER;
            let mut data_off = name_off + name.len() + 1;
            data_off = data_off.div_ceil(8) * 8;
            let (ty, vlen, data): (u8, u32, Vec<u8>) = match value {
                Counter::Long(v) => (
                    b'J',
                    0,
                    if little {
                        v.to_le_bytes().to_vec()
                    } else {
                        v.to_be_bytes().to_vec()
                    },
                ),
                Counter::Text(t) => {
                    let mut d = t.as_bytes().to_vec();
                    d.push(0);
                    (b'B', d.len() as u32, d)
                }
            };
            let len = (data_off + data.len()).div_ceil(8) * 8;
            let mut e = vec![0u8; len];
            e[0..4].copy_from_slice(&u32b(len as u32));
            e[4..8].copy_from_slice(&u32b(name_off as u32));
            e[8..12].copy_from_slice(&u32b(vlen));
            e[12] = ty;
            e[16..20].copy_from_slice(&u32b(data_off as u32));
            e[name_off..name_off + name.len()].copy_from_slice(name.as_bytes());
            e[data_off..data_off + data.len()].copy_from_slice(&data);
            body.extend(e);
        }
        let mut out = vec![0u8; PROLOGUE];
        out[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        out[4] = little as u8;
        out[5] = 2;
        out[7] = 1;
        out[24..28].copy_from_slice(&u32b(PROLOGUE as u32));
        out[28..32].copy_from_slice(&u32b(entries.len() as u32));
        out.extend(body);
        out
    }

    fn entries() -> Vec<(&'static str, Counter)> {
        vec![
            ("sun.os.hrt.frequency", Counter::Long(1_000_000_000)),
            (
                "sun.gc.collector.0.name",
                Counter::Text("G1 incremental collections".into()),
            ),
            ("sun.gc.collector.0.invocations", Counter::Long(12)),
            ("sun.gc.collector.0.time", Counter::Long(34_000_000)),
            (
                "sun.gc.collector.0.lastEntryTime",
                Counter::Long(900_000_000),
            ),
            (
                "sun.gc.collector.0.lastExitTime",
                Counter::Long(903_000_000),
            ),
            (
                "sun.gc.collector.1.name",
                Counter::Text("G1 stop-the-world full collections".into()),
            ),
            ("sun.gc.collector.1.invocations", Counter::Long(1)),
            ("sun.gc.collector.1.time", Counter::Long(50_000_000)),
            ("sun.rt.safepoints", Counter::Long(40)),
            ("sun.rt.safepointTime", Counter::Long(90_000_000)),
            ("sun.gc.generation.1.space.0.used", Counter::Long(10 << 20)),
            (
                "sun.gc.generation.1.space.0.maxCapacity",
                Counter::Long(64 << 20),
            ),
        ]
    }

    #[test]
    fn both_byte_orders() {
        for little in [false, true] {
            let s = sample(&image(little, &entries())).unwrap();
            assert_eq!(s.frequency, 1_000_000_000);
            assert_eq!(s.collectors.len(), 2);
            assert_eq!(
                s.collectors[0],
                GcCollector {
                    index: 0,
                    name: "G1 incremental collections".into(),
                    invocations: 12,
                    time_ticks: 34_000_000,
                    last_entry_ticks: Some(900_000_000),
                    last_exit_ticks: Some(903_000_000),
                }
            );
            assert_eq!(s.safepoints, Some(40));
            assert_eq!(s.safepoint_ticks, Some(90_000_000));
            assert_eq!(s.old_used, Some(10 << 20));
            assert_eq!(s.old_max, Some(64 << 20));
        }
    }

    /// The maximum heap from the counters of real JDK 17 JVMs started with `-Xmx128m` (read with `jcmd PID
    /// PerfCounter.print`): Serial and Parallel split it between two generations, G1 reports it for both.
    #[test]
    fn heap_max_is_xmx_for_every_collector() {
        let xmx = 128u64 << 20;
        let s = |policy: Option<&str>, young: Option<u64>, old: u64| JvmSample {
            policy: policy.map(str::to_owned),
            young_max: young,
            old_max: Some(old),
            ..Default::default()
        };
        let serial = s(Some("Copy:MSC"), Some(44_695_552), 89_522_176);
        assert_eq!(serial.heap_max(), Some(xmx));
        let parallel = s(Some("ParScav:MSC"), Some(44_564_480), 89_653_248);
        assert_eq!(parallel.heap_max(), Some(xmx));
        let g1 = s(Some("GarbageFirst"), Some(134_217_752), 134_217_736);
        assert_eq!(g1.heap_max(), Some(134_217_736));
        assert_eq!(s(None, None, xmx).heap_max(), Some(xmx), "ZGC");
        assert_eq!(JvmSample::default().heap_max(), None);
        // Parsed from a file: the policy is text, the young maximum a long.
        let mut e = entries();
        e.push(("sun.gc.policy.name", Counter::Text("Copy:MSC".into())));
        e.push(("sun.gc.generation.0.maxCapacity", Counter::Long(32 << 20)));
        let parsed = sample(&image(true, &e)).unwrap();
        assert_eq!(parsed.heap_max(), Some(96 << 20));
    }

    /// JDK 17 ZGC writes only collector 2 ("Z concurrent cycle pauses", seen with `jcmd PID
    /// PerfCounter.print` on a `-XX:+UseZGC` JVM); a collector without a name keeps its pauses.
    #[test]
    fn skipped_indices_and_nameless_collectors() {
        let img = image(
            true,
            &[
                ("sun.os.hrt.frequency", Counter::Long(1_000_000_000)),
                (
                    "sun.gc.collector.2.name",
                    Counter::Text("Z concurrent cycle pauses".into()),
                ),
                ("sun.gc.collector.2.invocations", Counter::Long(27)),
                ("sun.gc.collector.2.time", Counter::Long(177_043)),
                (
                    "sun.gc.collector.2.lastExitTime",
                    Counter::Long(4_044_919_802),
                ),
                ("sun.gc.collector.5.invocations", Counter::Long(3)),
                ("sun.gc.collector.5.lastExitTime", Counter::Long(7)),
                ("sun.gc.collector.16.invocations", Counter::Long(1)),
            ],
        );
        let s = sample(&img).unwrap();
        let got: Vec<(usize, &str, u64)> = s
            .collectors
            .iter()
            .map(|c| (c.index, c.name.as_str(), c.invocations))
            .collect();
        assert_eq!(
            got,
            [(2, "Z concurrent cycle pauses", 27), (5, "collector 5", 3)]
        );
    }

    #[test]
    fn truncated_and_corrupt_images_are_errors() {
        let img = image(true, &entries());
        for cut in [0, 10, PROLOGUE, PROLOGUE + 5, img.len() - 9] {
            assert!(sample(&img[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = img.clone();
        bad[0] = 0;
        assert!(matches!(sample(&bad), Err(HsperfError::Format(_))));
        let mut bad = img.clone();
        bad[5] = 9;
        assert!(matches!(sample(&bad), Err(HsperfError::Format(_))));
        let mut bad = img.clone();
        bad[7] = 0;
        assert_eq!(sample(&bad), Err(HsperfError::NotReady));
        // An entry length pointing past the end.
        let mut bad = img.clone();
        bad[PROLOGUE..PROLOGUE + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(sample(&bad).is_err());
        // A huge entry count is bounded and ends in a clean error.
        let mut bad = img;
        bad[28..32].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(sample(&bad).is_err());
    }

    /// A file captured from a JDK 17 G1 JVM next to the `jstat -gc` output for the same moment.
    #[test]
    fn captured_jdk17_file_matches_jstat() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hsperf");
        let img = std::fs::read(dir.join("jdk17-g1.hsperfdata")).unwrap();
        let jstat = std::fs::read_to_string(dir.join("jdk17-g1.jstat")).unwrap();
        let mut lines = jstat.lines();
        let heads: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        let vals: Vec<f64> = lines
            .next()
            .unwrap()
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect();
        let col = |h: &str| vals[heads.iter().position(|x| *x == h).unwrap()];
        let s = sample(&img).unwrap();
        let hz = s.frequency as f64;
        let young = s
            .collectors
            .iter()
            .find(|c| c.name.contains("young"))
            .unwrap();
        let full = s
            .collectors
            .iter()
            .find(|c| c.name.contains("full"))
            .unwrap();
        assert_eq!(young.invocations as f64, col("YGC"));
        assert_eq!(full.invocations as f64, col("FGC"));
        assert!((young.time_ticks as f64 / hz - col("YGCT")).abs() <= 0.0005);
        assert!(s.safepoints.unwrap() > 0);
        // Every truncation of a real file is an error or a clean parse of fewer entries, never a panic.
        for cut in (0..img.len()).step_by(97) {
            let _ = sample(&img[..cut]);
        }
        // Flipping bytes anywhere is survived the same way.
        for at in (0..img.len()).step_by(131) {
            let mut bad = img.clone();
            bad[at] ^= 0xff;
            let _ = sample(&bad);
        }
    }
}
