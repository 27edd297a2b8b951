//! The target's /proc/PID files: parsers for stat, status, io, schedstat, limits and smaps_rollup;
//! [`ProcReader`], which keeps them open and fills a [`ProcSample`] every tick without allocating; and
//! [`ProcfsProbe`], the probe that decides whether the target still lives.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::kept::{is_gone, KeptFile};
use super::tree::ProcessTree;
use super::{Observations, Probe, ProbeTarget, ReadErrorSink, ReadSource, TargetGone};
use crate::language::Runtime;

/// A file's content did not have the expected shape.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{file}: {what}")]
pub struct ParseError {
    /// Which pseudo-file (`stat`, `status`, …).
    pub file: &'static str,
    /// What was wrong.
    pub what: String,
}

fn perr(file: &'static str, what: impl Into<String>) -> ParseError {
    ParseError {
        file,
        what: what.into(),
    }
}

/// Longest comm the kernel keeps (TASK_COMM_LEN - 1).
const COMM_LEN: usize = 15;

/// A short command name kept without allocation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Comm {
    bytes: [u8; COMM_LEN],
    len: u8,
}

impl Comm {
    /// The name from /proc/PID/comm's content or stat's field 2 (a trailing newline dropped, cut at 15
    /// bytes).
    pub fn from_bytes(raw: &[u8]) -> Comm {
        let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
        let len = raw.len().min(COMM_LEN);
        let mut bytes = [0u8; COMM_LEN];
        bytes[..len].copy_from_slice(&raw[..len]);
        Comm {
            bytes,
            len: len as u8,
        }
    }

    /// The name as text (invalid UTF-8 replaced).
    pub fn as_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.bytes[..usize::from(self.len)])
    }
}

/// Fields of /proc/PID/stat that vitals uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stat {
    /// Command name (field 2, between the parentheses), as /proc/PID/comm has it.
    pub comm: Comm,
    /// State letter (R, S, D, Z, …).
    pub state: u8,
    /// Parent pid (0 for the first process of a pid namespace as its parent sees it).
    pub ppid: u32,
    /// Process group.
    pub pgrp: u32,
    /// Minor faults.
    pub minflt: u64,
    /// Minor faults of waited-for children (added when the parent reaps them).
    pub cminflt: u64,
    /// Major faults.
    pub majflt: u64,
    /// Major faults of waited-for children.
    pub cmajflt: u64,
    /// User time, clock ticks.
    pub utime: u64,
    /// System time, clock ticks.
    pub stime: u64,
    /// User time of waited-for children, clock ticks.
    pub cutime: u64,
    /// System time of waited-for children, clock ticks.
    pub cstime: u64,
    /// Threads.
    pub num_threads: u64,
    /// Start time, clock ticks since boot: with the pid, the target's identity.
    pub starttime: u64,
    /// Virtual memory size, bytes.
    pub vsize: u64,
    /// Resident set, pages.
    pub rss_pages: u64,
    /// Address of the start of the stack: a new one (address-space randomisation) after every exec, the
    /// same after a process renames itself. 0 when hidden (no ptrace access) or absent.
    pub startstack: u64,
}

impl Stat {
    /// User plus system time, clock ticks (saturating: the fields are the kernel's, or a corrupt file's).
    pub fn cpu_ticks(&self) -> u64 {
        self.utime.saturating_add(self.stime)
    }

    /// Resident set in bytes for pages of `page_size` bytes; None when the product does not fit in 64 bits
    /// (a corrupt file, not a real process).
    pub fn rss_bytes(&self, page_size: u64) -> Option<u64> {
        self.rss_pages.checked_mul(page_size)
    }

    /// True for a zombie (Z) or dead (X) task.
    pub fn is_dead(&self) -> bool {
        matches!(self.state, b'Z' | b'X' | b'x')
    }

    /// True while the thread group runs. A main thread that called `pthread_exit()` shows as a zombie in
    /// /proc/PID/stat while its workers run; the kernel keeps it in the group's thread count until the
    /// last worker has gone, so a zombie leader with more than one thread is a live process.
    pub fn group_alive(&self) -> bool {
        !self.is_dead() || self.num_threads > 1
    }
}

/// Parses /proc/PID/stat. The command name may hold spaces and parentheses, so fields are counted from
/// the last `)`.
pub fn parse_stat(buf: &[u8]) -> Result<Stat, ParseError> {
    let close = buf
        .iter()
        .rposition(|&b| b == b')')
        .ok_or_else(|| perr("stat", "no ')' after comm"))?;
    let rest =
        std::str::from_utf8(&buf[close + 1..]).map_err(|_| perr("stat", "not UTF-8 after comm"))?;
    // Index 0 is field 3 (state) of proc(5). Only the fields used are parsed: others (tpgid, nice) may be
    // negative. Fields past rss (startstack) are optional: older or fixture files may end at rss.
    const USED: [usize; 15] = [1, 2, 7, 8, 9, 10, 11, 12, 13, 14, 17, 19, 20, 21, 25];
    const REQUIRED: usize = 22;
    let mut fields = [0u64; 26];
    let mut n = 0;
    for (i, tok) in rest.split_ascii_whitespace().enumerate().take(26) {
        if USED.contains(&i) {
            fields[i] = tok
                .parse()
                .map_err(|_| perr("stat", format!("field {} is not a number: {tok:?}", i + 3)))?;
        }
        n = i + 1;
    }
    if n < REQUIRED {
        return Err(perr(
            "stat",
            format!("truncated: {} fields after comm, need {REQUIRED}", n),
        ));
    }
    let state = rest
        .trim_start()
        .as_bytes()
        .first()
        .copied()
        .unwrap_or(b'?');
    let pid_field = |v: u64| u32::try_from(v).unwrap_or(0);
    // The comm may hold ')' and spaces: it runs from the first '(' to the last ')'.
    let comm = buf[..close]
        .iter()
        .position(|&b| b == b'(')
        .map_or(Comm::default(), |open| {
            Comm::from_bytes(&buf[open + 1..close])
        });
    Ok(Stat {
        comm,
        state,
        ppid: pid_field(fields[1]),
        pgrp: pid_field(fields[2]),
        minflt: fields[7],
        cminflt: fields[8],
        majflt: fields[9],
        cmajflt: fields[10],
        utime: fields[11],
        stime: fields[12],
        cutime: fields[13],
        cstime: fields[14],
        num_threads: fields[17],
        starttime: fields[19],
        vsize: fields[20],
        rss_pages: fields[21],
        startstack: fields[25],
    })
}

/// Fields of /proc/PID/status that vitals uses. Absent lines (kernel threads have no Vm* lines) stay None.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Status {
    /// VmRSS, bytes.
    pub vm_rss: Option<u64>,
    /// VmSwap, bytes.
    pub vm_swap: Option<u64>,
    /// Threads.
    pub threads: Option<u64>,
    /// voluntary_ctxt_switches.
    pub voluntary_ctxt: Option<u64>,
    /// nonvoluntary_ctxt_switches.
    pub nonvoluntary_ctxt: Option<u64>,
    /// Real UID.
    pub uid: Option<u32>,
    /// The pid as the target's innermost pid namespace sees it (last NSpid field).
    pub nspid: Option<u32>,
}

/// The lines of `buf` (without their newlines), found with `memchr`: a byte-at-a-time split was most of
/// the parse of a 1.4 KB status file (15k instructions a reading, about 4% of an idle scrape's).
fn lines(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(buf);
    std::iter::from_fn(move || {
        let r = rest?;
        match memchr::memchr(b'\n', r) {
            Some(i) => {
                rest = Some(&r[i + 1..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// Parses /proc/PID/status, as bytes: a process name is any bytes, and a name that is not UTF-8 must
/// not cost the rest of the file (the fields read are ASCII). Only the lines read are looked at past
/// their key.
pub fn parse_status(buf: &[u8]) -> Result<Status, ParseError> {
    fn tokens(val: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
        val.split(|b| b.is_ascii_whitespace())
            .filter(|t| !t.is_empty())
    }
    fn number(token: Option<&[u8]>) -> Option<u64> {
        std::str::from_utf8(token?).ok()?.parse().ok()
    }
    let mut s = Status::default();
    let mut saw_name = false;
    for line in lines(buf) {
        // The keys read begin with these bytes; most of the file's 60 lines are passed by here.
        if !line.first().is_some_and(|b| b"NUVTvn".contains(b)) {
            continue;
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let (key, val) = (&line[..colon], &line[colon + 1..]);
        let slot = match key {
            b"Name" => {
                saw_name = true;
                continue;
            }
            b"NSpid" => {
                let last = number(tokens(val).next_back()).and_then(|v| u32::try_from(v).ok());
                s.nspid = Some(last.ok_or_else(|| {
                    perr(
                        "status",
                        format!(
                            "NSpid is not a pid list: {:?}",
                            String::from_utf8_lossy(val.trim_ascii())
                        ),
                    )
                })?);
                continue;
            }
            b"VmRSS"
            | b"VmSwap"
            | b"Threads"
            | b"voluntary_ctxt_switches"
            | b"nonvoluntary_ctxt_switches"
            | b"Uid" => key,
            _ => continue,
        };
        let n = number(tokens(val).next()).ok_or_else(|| {
            perr(
                "status",
                format!(
                    "{} is not a number: {:?}",
                    String::from_utf8_lossy(slot),
                    String::from_utf8_lossy(val.trim_ascii())
                ),
            )
        })?;
        match slot {
            b"VmRSS" => s.vm_rss = Some(kib(n)),
            b"VmSwap" => s.vm_swap = Some(kib(n)),
            b"Threads" => s.threads = Some(n),
            b"voluntary_ctxt_switches" => s.voluntary_ctxt = Some(n),
            b"nonvoluntary_ctxt_switches" => s.nonvoluntary_ctxt = Some(n),
            _ => s.uid = Some(n as u32),
        }
    }
    if !saw_name {
        return Err(perr("status", "no Name line"));
    }
    Ok(s)
}

fn kib(v: u64) -> u64 {
    v.saturating_mul(1024)
}

/// Disk bytes from /proc/PID/io.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Io {
    /// Bytes read from storage.
    pub read_bytes: u64,
    /// Bytes written to storage.
    pub write_bytes: u64,
}

/// Parses /proc/PID/io.
pub fn parse_io(buf: &[u8]) -> Result<Io, ParseError> {
    let text = std::str::from_utf8(buf).map_err(|_| perr("io", "not UTF-8"))?;
    let (mut r, mut w) = (None, None);
    for line in text.lines() {
        let Some((key, val)) = line.split_once(':') else {
            continue;
        };
        let parse = || {
            val.trim()
                .parse::<u64>()
                .map_err(|_| perr("io", format!("{key} is not a number")))
        };
        match key {
            "read_bytes" => r = Some(parse()?),
            "write_bytes" => w = Some(parse()?),
            _ => {}
        }
    }
    match (r, w) {
        (Some(read_bytes), Some(write_bytes)) => Ok(Io {
            read_bytes,
            write_bytes,
        }),
        _ => Err(perr("io", "read_bytes or write_bytes missing")),
    }
}

/// /proc/PID/task/TID/schedstat: time on CPU and time waiting on a run queue, nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedStat {
    /// Time spent running.
    pub run_ns: u64,
    /// Time spent runnable but waiting for a CPU.
    pub wait_ns: u64,
}

/// Parses a schedstat file.
pub fn parse_schedstat(buf: &[u8]) -> Result<SchedStat, ParseError> {
    let text = std::str::from_utf8(buf).map_err(|_| perr("schedstat", "not UTF-8"))?;
    let mut it = text.split_ascii_whitespace().map(|t| t.parse::<u64>());
    match (it.next(), it.next(), it.next()) {
        (Some(Ok(run_ns)), Some(Ok(wait_ns)), Some(Ok(_))) => Ok(SchedStat { run_ns, wait_ns }),
        _ => Err(perr(
            "schedstat",
            format!("expected three numbers, got {:?}", text.trim()),
        )),
    }
}

/// Soft "Max open files" from /proc/PID/limits; None when unlimited.
pub fn parse_limits_max_fds(buf: &[u8]) -> Result<Option<u64>, ParseError> {
    let text = std::str::from_utf8(buf).map_err(|_| perr("limits", "not UTF-8"))?;
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .ok_or_else(|| perr("limits", "no 'Max open files' line"))?;
    let soft = line["Max open files".len()..]
        .split_ascii_whitespace()
        .next()
        .ok_or_else(|| perr("limits", "'Max open files' has no value"))?;
    if soft == "unlimited" {
        return Ok(None);
    }
    soft.parse()
        .map(Some)
        .map_err(|_| perr("limits", format!("soft limit is not a number: {soft:?}")))
}

/// Proportional set size in bytes from /proc/PID/smaps_rollup.
pub fn parse_smaps_rollup_pss(buf: &[u8]) -> Result<u64, ParseError> {
    let text = std::str::from_utf8(buf).map_err(|_| perr("smaps_rollup", "not UTF-8"))?;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Pss:") {
            let v = rest
                .split_ascii_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| perr("smaps_rollup", format!("Pss is not a number: {rest:?}")))?;
            return Ok(kib(v));
        }
    }
    Err(perr("smaps_rollup", "no Pss line"))
}

/// One tick's reading of the target's procfs files. Groups that could not be read are None.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcSample {
    /// /proc/PID/stat.
    pub stat: Option<Stat>,
    /// /proc/PID/status.
    pub status: Option<Status>,
    /// /proc/PID/io (needs ptrace access).
    pub io: Option<Io>,
    /// Run-queue wait of all threads, live and exited since attach, nanoseconds.
    pub sched_wait_ns: Option<u64>,
    /// Open file descriptors (needs ptrace access).
    pub open_fds: Option<u64>,
    /// Soft fd limit; None also when unlimited.
    pub max_fds: Option<u64>,
    /// PSS, bytes (only with `--pss`).
    pub pss: Option<u64>,
    /// For a process tree: (open fds, soft limit) of the member closest to its limit, which decides fd
    /// saturation because the limit is per process. None for a single process (use `open_fds`, `max_fds`).
    pub fds_fullest: Option<(u64, u64)>,
    /// Live processes in the target's tree (the root and its descendants); 0 when not counted.
    pub processes: u64,
}

/// Why /proc/PID/stat gave no reading.
#[derive(Debug, thiserror::Error)]
pub enum StatError {
    /// The process exited: the file answers ENOENT or ESRCH, or the task is a zombie.
    #[error(transparent)]
    Gone(#[from] TargetGone),
    /// The file was read but does not parse: a read error of a process that may well be alive.
    #[error("/proc/{pid}/stat: {error}")]
    Unparsable {
        /// The pid read.
        pid: u32,
        /// What was wrong.
        error: ParseError,
    },
    /// The read failed for another reason than the process being gone (EACCES, EIO, …).
    #[error("/proc/{pid}/stat: {error}")]
    Unreadable {
        /// The pid read.
        pid: u32,
        /// The failed read.
        error: io::Error,
    },
}

/// Policy for the opt-in smaps_rollup read, which holds the target's mmap lock while it walks every VMA.
#[derive(Debug, Clone, Copy)]
pub struct PssPolicy {
    /// Shortest time between two reads.
    pub min_interval: Duration,
    /// A read slower than this doubles the interval (up to `max_interval`); a fast one halves it back.
    pub slow_read: Duration,
    /// Longest backed-off interval.
    pub max_interval: Duration,
}

impl Default for PssPolicy {
    fn default() -> Self {
        PssPolicy {
            min_interval: Duration::from_secs(30),
            slow_read: Duration::from_millis(50),
            max_interval: Duration::from_secs(600),
        }
    }
}

struct PssState {
    policy: PssPolicy,
    interval: Duration,
    next: Instant,
    last: Option<u64>,
}

/// Keeps a target's /proc files open and samples them.
pub struct ProcReader {
    pid: u32,
    dir: PathBuf,
    stat: KeptFile,
    status: KeptFile,
    io: Option<KeptFile>,
    limits: Option<KeptFile>,
    fd_count_by_size: bool,
    /// /proc/PID/fd, built once: the tick allocates no path.
    fd_dir: PathBuf,
    /// /proc/PID/fd held open where its size is the count: an `fstat` of it costs no path walk through
    /// `/proc` (0.7-1.1 µs against 2.1-3.4 µs for a `stat` of the path on the development machine), and
    /// it stays the process it was opened for (a reused pid is not counted, the fstat fails).
    fd_dir_file: Option<std::fs::File>,
    threads: HashMap<u32, (KeptFile, u64)>,
    exited_wait_ns: u64,
    ticks: u64,
    max_fds: Option<u64>,
    pss: Option<PssState>,
    buf: Vec<u8>,
    /// Threads whose schedstat files are kept open; past this the run-queue wait is left out.
    max_threads: usize,
}

/// How often (in ticks) the slow tier (limits, thread list refresh, retry of unreadable files) runs.
const SLOW_TIER_TICKS: u64 = 10;

/// A cap on per-thread schedstat files held open; beyond it the scheduler wait is left out rather than
/// making each tick cost thousands of reads.
pub const MAX_TRACKED_THREADS: usize = 512;

impl ProcReader {
    /// Opens the target's files under `proc_root/pid`. Fails only when the process is gone or its stat
    /// and status cannot be read at all.
    pub fn open(proc_root: &Path, pid: u32, pss: Option<PssPolicy>) -> io::Result<Self> {
        let dir = proc_root.join(pid.to_string());
        let stat = KeptFile::open(dir.join("stat"))?;
        let status = KeptFile::open(dir.join("status"))?;
        // Since Linux 6.2 the size of /proc/PID/fd is the number of open fds: one statx instead of a readdir.
        // Only procfs means that; a fixture tree on another file system is counted by listing.
        let on_procfs = nix::sys::statfs::statfs(&dir)
            .map(|s| s.filesystem_type() == nix::sys::statfs::PROC_SUPER_MAGIC)
            .unwrap_or(false);
        // Kept open where it can be; its path is stat-ed where it cannot (another user's process: the
        // size is shown without the access an open needs).
        let fd_dir_file = on_procfs
            .then(|| std::fs::File::open(dir.join("fd")).ok())
            .flatten();
        let fd_count_by_size = on_procfs
            && match &fd_dir_file {
                Some(f) => f.metadata(),
                None => std::fs::metadata(dir.join("fd")),
            }
            .is_ok_and(|m| m.len() > 0);
        let now = Instant::now();
        Ok(ProcReader {
            pid,
            io: KeptFile::open(dir.join("io")).ok(),
            limits: KeptFile::open(dir.join("limits")).ok(),
            fd_dir_file: fd_dir_file.filter(|_| fd_count_by_size),
            fd_dir: dir.join("fd"),
            dir,
            stat,
            status,
            fd_count_by_size,
            threads: HashMap::new(),
            exited_wait_ns: 0,
            ticks: 0,
            max_fds: None,
            pss: pss.map(|policy| PssState {
                policy,
                interval: policy.min_interval,
                next: now,
                last: None,
            }),
            buf: Vec::with_capacity(4096),
            max_threads: MAX_TRACKED_THREADS,
        })
    }

    /// Lowers the number of threads whose run-queue wait is read (a member of a large tree gets fewer
    /// than the root).
    pub fn limit_threads(&mut self, max: usize) {
        self.max_threads = max.min(MAX_TRACKED_THREADS);
    }

    /// The pid being read.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Reads stat only: the identity check (start time) and cheapest liveness probe. A zombie (exited,
    /// not yet reaped by its parent) counts as gone: its files stay readable but it will never run again.
    /// A zombie main thread whose workers still run is alive (see [`Stat::group_alive`]); its own stat
    /// shows no memory, so size and RSS come from a live worker, which shares the address space. Only
    /// ENOENT/ESRCH or a zombie mean gone: content that does not parse is [`StatError::Unparsable`].
    pub fn read_stat(&mut self) -> Result<Stat, StatError> {
        let pid = self.pid;
        let parsed = match self.stat.read(&mut self.buf) {
            Ok(raw) => parse_stat(raw),
            Err(e) if is_gone(&e) => return Err(TargetGone { pid }.into()),
            Err(error) => return Err(StatError::Unreadable { pid, error }),
        };
        match parsed {
            Err(error) => Err(StatError::Unparsable { pid, error }),
            Ok(st) if !st.is_dead() => Ok(st),
            Ok(mut st) if st.group_alive() => {
                if let Some((tid, worker)) = self.live_worker_stat() {
                    st.vsize = worker.vsize;
                    st.rss_pages = worker.rss_pages;
                    // The main thread's fd table went with it; the workers share theirs.
                    let fd_dir = self.dir.join("task").join(tid).join("fd");
                    if fd_dir != self.fd_dir {
                        self.fd_dir = fd_dir;
                    }
                }
                Ok(st)
            }
            Ok(_) => Err(TargetGone { pid }.into()),
        }
    }

    /// The thread id and stat of one live thread other than the main thread.
    fn live_worker_stat(&self) -> Option<(std::ffi::OsString, Stat)> {
        let tasks = std::fs::read_dir(self.dir.join("task")).ok()?;
        let me = self.pid.to_string();
        tasks.flatten().find_map(|t| {
            if t.file_name().to_str() == Some(me.as_str()) {
                return None;
            }
            let raw = std::fs::read(t.path().join("stat")).ok()?;
            let st = parse_stat(&raw).ok().filter(|s| !s.is_dead())?;
            Some((t.file_name(), st))
        })
    }

    /// Takes one sample. Unreadable or unparsable groups are None and reported to `errors` (a corrupt stat
    /// as `procfs`); only a vanished process (ENOENT/ESRCH, a zombie) is `Err`.
    pub fn sample(&mut self, errors: &dyn ReadErrorSink) -> Result<ProcSample, TargetGone> {
        let started = Instant::now();
        let slow_tier = self.ticks % SLOW_TIER_TICKS == 0;
        self.ticks = self.ticks.wrapping_add(1);
        let gone = TargetGone { pid: self.pid };
        let mut s = ProcSample::default();
        match self.read_stat() {
            Ok(st) => s.stat = Some(st),
            Err(StatError::Gone(g)) => return Err(g),
            Err(StatError::Unparsable { .. } | StatError::Unreadable { .. }) => {
                errors.read_error(ReadSource::Procfs)
            }
        }

        match self.status.read(&mut self.buf) {
            Ok(b) => match parse_status(b) {
                Ok(st) => s.status = Some(st),
                Err(_) => errors.read_error(ReadSource::ProcStatus),
            },
            Err(e) if is_gone(&e) => return Err(gone),
            Err(_) => errors.read_error(ReadSource::ProcStatus),
        }

        if self.io.is_none() && slow_tier {
            self.io = KeptFile::open(self.dir.join("io")).ok();
        }
        match &self.io {
            Some(f) => match f.read(&mut self.buf) {
                Ok(b) => match parse_io(b) {
                    Ok(io) => s.io = Some(io),
                    Err(_) => errors.read_error(ReadSource::ProcIo),
                },
                Err(e) if is_gone(&e) => return Err(gone),
                Err(_) => {
                    self.io = None;
                    errors.read_error(ReadSource::ProcIo);
                }
            },
            None if slow_tier => errors.read_error(ReadSource::ProcIo),
            None => {}
        }

        s.open_fds = match self.count_fds() {
            Ok(n) => Some(n),
            Err(e) if is_gone(&e) => return Err(gone),
            Err(_) => {
                errors.read_error(ReadSource::ProcFd);
                None
            }
        };

        if slow_tier {
            self.read_limits(errors);
        }
        s.max_fds = self.max_fds;

        let threads = s
            .stat
            .map(|st| st.num_threads)
            .or(s.status.and_then(|st| st.threads))
            .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX));
        s.sched_wait_ns = self.sched_wait(threads, slow_tier, errors);

        errors.read_duration(ReadSource::Procfs, started.elapsed());
        s.pss = self.maybe_pss(errors);
        Ok(s)
    }

    fn count_fds(&mut self) -> io::Result<u64> {
        let path = &self.fd_dir;
        if let Some(dir) = &self.fd_dir_file {
            return dir.metadata().map(|m| m.len());
        }
        if self.fd_count_by_size {
            return std::fs::metadata(path).map(|m| m.len());
        }
        let mut n = 0u64;
        for entry in std::fs::read_dir(path)? {
            entry?;
            n = n.saturating_add(1);
        }
        Ok(n)
    }

    fn read_limits(&mut self, errors: &dyn ReadErrorSink) {
        if self.limits.is_none() {
            self.limits = KeptFile::open(self.dir.join("limits")).ok();
        }
        let parsed = match &self.limits {
            Some(f) => f
                .read(&mut self.buf)
                .ok()
                .and_then(|b| parse_limits_max_fds(b).ok()),
            None => None,
        };
        match parsed {
            Some(v) => self.max_fds = v,
            None => {
                self.max_fds = None;
                errors.read_error(ReadSource::ProcLimits);
            }
        }
    }

    /// Sums run-queue wait over every thread. A thread that exits keeps its last reading in
    /// `exited_wait_ns`, so the total never goes backwards while the process lives.
    fn sched_wait(
        &mut self,
        threads: usize,
        refresh: bool,
        errors: &dyn ReadErrorSink,
    ) -> Option<u64> {
        if threads > self.max_threads {
            return None;
        }
        if refresh || self.threads.len() != threads {
            self.refresh_threads();
        }
        let mut live = 0u64;
        let mut exited = Vec::new();
        for (tid, (file, last)) in self.threads.iter_mut() {
            match file.read(&mut self.buf).map(parse_schedstat) {
                Ok(Ok(st)) => {
                    *last = st.wait_ns.max(*last);
                    live = live.saturating_add(*last);
                }
                Ok(Err(_)) => errors.read_error(ReadSource::ProcSchedstat),
                Err(_) => exited.push(*tid),
            }
        }
        for tid in exited {
            if let Some((_, last)) = self.threads.remove(&tid) {
                self.exited_wait_ns = self.exited_wait_ns.saturating_add(last);
            }
        }
        if self.threads.is_empty() {
            return None;
        }
        Some(self.exited_wait_ns.saturating_add(live))
    }

    fn refresh_threads(&mut self) {
        let Ok(dir) = std::fs::read_dir(self.dir.join("task")) else {
            return;
        };
        let mut seen = Vec::with_capacity(self.threads.len() + 4);
        for entry in dir.flatten() {
            let Some(tid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            seen.push(tid);
            if self.threads.len() >= self.max_threads {
                continue;
            }
            if let std::collections::hash_map::Entry::Vacant(v) = self.threads.entry(tid) {
                if let Ok(f) = KeptFile::open(entry.path().join("schedstat")) {
                    v.insert((f, 0));
                }
            }
        }
        let gone: Vec<u32> = self
            .threads
            .keys()
            .filter(|t| !seen.contains(t))
            .copied()
            .collect();
        for tid in gone {
            if let Some((_, last)) = self.threads.remove(&tid) {
                self.exited_wait_ns = self.exited_wait_ns.saturating_add(last);
            }
        }
    }

    fn maybe_pss(&mut self, errors: &dyn ReadErrorSink) -> Option<u64> {
        let pss = self.pss.as_mut()?;
        let now = Instant::now();
        if now < pss.next {
            return pss.last;
        }
        let started = Instant::now();
        let read = std::fs::read(self.dir.join("smaps_rollup"));
        let took = started.elapsed();
        errors.read_duration(ReadSource::ProcSmapsRollup, took);
        pss.interval = if took > pss.policy.slow_read {
            (pss.interval * 2).min(pss.policy.max_interval)
        } else {
            (pss.interval / 2).max(pss.policy.min_interval)
        };
        pss.next = now + pss.interval;
        match read.as_deref().map(parse_smaps_rollup_pss) {
            Ok(Ok(v)) => pss.last = Some(v),
            _ => {
                pss.last = None;
                errors.read_error(ReadSource::ProcSmapsRollup);
            }
        }
        pss.last
    }
}

/// The procfs probe: keeps the files of the target's process tree open, samples and sums them (see
/// [`super::tree`]), and is the one probe that says the target is gone (its root exited).
pub struct ProcfsProbe {
    proc_root: PathBuf,
    pss: Option<PssPolicy>,
    /// Clock ticks per second.
    hz: u64,
    /// Page size, bytes.
    page_size: u64,
    /// kernel.threads-max, read once.
    threads_max: Option<u64>,
    /// Cap on the processes of the tree read each tick.
    max_processes: usize,
    tree: Option<ProcessTree>,
    /// When the tree was last sampled, for per-member CPU.
    last_sample: Option<Instant>,
}

impl ProcfsProbe {
    /// A probe reading under `proc_root`, with this kernel's clock ticks per second and page size, reading
    /// at most `max_processes` processes of the target's tree.
    pub fn new(
        proc_root: &Path,
        pss: Option<PssPolicy>,
        hz: u64,
        page_size: u64,
        max_processes: usize,
    ) -> Self {
        let threads_max = std::fs::read_to_string(proc_root.join("sys/kernel/threads-max"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        ProcfsProbe {
            proc_root: proc_root.to_path_buf(),
            pss,
            hz: hz.max(1),
            page_size,
            threads_max,
            max_processes,
            tree: None,
            last_sample: None,
        }
    }

    /// The attached tree, if any.
    pub fn tree(&self) -> Option<&ProcessTree> {
        self.tree.as_ref()
    }
}

impl Probe for ProcfsProbe {
    fn name(&self) -> &'static str {
        "procfs"
    }

    fn attach(&mut self, target: &ProbeTarget, _errors: &dyn ReadErrorSink) -> io::Result<()> {
        let root = ProcReader::open(&self.proc_root, target.pid, self.pss)?;
        self.tree = Some(ProcessTree::new(
            &self.proc_root,
            root,
            self.pss,
            self.hz,
            self.page_size,
            self.max_processes,
        ));
        self.last_sample = None;
        Ok(())
    }

    fn sample(
        &mut self,
        obs: &mut Observations,
        errors: &dyn ReadErrorSink,
    ) -> Result<(), TargetGone> {
        let Some(tree) = self.tree.as_mut() else {
            return Ok(());
        };
        let now = Instant::now();
        let elapsed = self
            .last_sample
            .map_or(0.0, |t| now.duration_since(t).as_secs_f64());
        self.last_sample = Some(now);
        let reading = tree.sample(errors, elapsed)?;
        let p = reading.sample;
        let hz = self.hz as f64;
        obs.proc_cpu_seconds = p.stat.map(|s| s.cpu_ticks() as f64 / hz);
        obs.rss = p
            .stat
            .and_then(|s| s.rss_bytes(self.page_size))
            .map(|b| b as f64);
        obs.threads_max = self.threads_max;
        obs.proc = Some(p);
        obs.tree = Some(reading.view);
        Ok(())
    }

    fn detach(&mut self) {
        self.tree = None;
    }
}

/// The runtime a process runs, from its executable's name (or its comm when the executable link is not
/// readable), by the executables of the runtime table; None when no row claims it.
pub fn detect_runtime(proc_root: &Path, pid: u32, comm: &str) -> Option<Runtime> {
    let exe = std::fs::read_link(proc_root.join(pid.to_string()).join("exe")).ok();
    let name = exe
        .as_deref()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .unwrap_or(comm);
    Runtime::from_executable(name)
}

/// Lists the pids under `proc_root` into `out` (cleared first), sorted, so a caller can look one up with a
/// binary search; reuses `out`'s capacity, so a steady listing allocates nothing.
pub fn list_pids(proc_root: &Path, out: &mut Vec<u32>) -> io::Result<()> {
    out.clear();
    for entry in std::fs::read_dir(proc_root)?.flatten() {
        if let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        {
            out.push(pid);
        }
    }
    out.sort_unstable();
    Ok(())
}

/// The pid as the target's innermost pid namespace sees it, from the `NSpid` line of /proc/PID/status.
pub fn read_nspid(proc_root: &Path, pid: u32) -> Option<u32> {
    let raw = std::fs::read(proc_root.join(pid.to_string()).join("status")).ok()?;
    parse_status(&raw).ok()?.nspid
}

/// The comm (short command name) of a process, trimmed.
pub fn read_comm(proc_root: &Path, pid: u32) -> io::Result<String> {
    let raw = std::fs::read(proc_root.join(pid.to_string()).join("comm"))?;
    Ok(String::from_utf8_lossy(&raw).trim_end().to_owned())
}

/// The command line of a process, one string per argument; empty when it cannot be read (an exited
/// process, a kernel thread).
pub fn read_argv(proc_root: &Path, pid: u32) -> Vec<String> {
    std::fs::read(proc_root.join(pid.to_string()).join("cmdline"))
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The effective uid of a process, from the `Uid:` line of `/proc/PID/status` (or any status file, such
/// as `/proc/self/status`); None when it cannot be read.
pub fn effective_uid_in(status: &Path) -> Option<u32> {
    std::fs::read_to_string(status)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The effective uid of process `pid`; see [`effective_uid_in`].
pub fn effective_uid(proc_root: &Path, pid: u32) -> Option<u32> {
    effective_uid_in(&proc_root.join(pid.to_string()).join("status"))
}

/// Boot time (Unix seconds) from /proc/stat `btime`.
pub fn read_boot_time(proc_root: &Path) -> io::Result<u64> {
    let text = std::fs::read_to_string(proc_root.join("stat"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no btime line in /proc/stat"))
}

/// Clock ticks per second and page size of this kernel.
pub fn kernel_units() -> (u64, u64) {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    (hz.max(1), page.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_uid_is_the_second_uid_field_and_argv_splits_on_nul() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("42");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("status"),
            "Name:\tapp\nUid:\t1000\t1001\t1002\t1003\nGid:\t5\t5\t5\t5\n",
        )
        .unwrap();
        std::fs::write(dir.join("cmdline"), b"java\0-jar\0app.jar\0").unwrap();
        assert_eq!(effective_uid(root.path(), 42), Some(1001));
        assert_eq!(effective_uid(root.path(), 43), None, "no such process");
        assert_eq!(read_argv(root.path(), 42), ["java", "-jar", "app.jar"]);
        assert!(read_argv(root.path(), 43).is_empty());
        std::fs::write(dir.join("status"), "Name:\tapp\nUid:\tx\n").unwrap();
        assert_eq!(effective_uid(root.path(), 42), None, "unparsable uid");
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/procfs")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn stat_with_hostile_comm() {
        let s = parse_stat(&fixture("stat")).unwrap();
        assert_eq!(s.comm.as_str(), "my (weird) app");
        assert_eq!(s.state, b'S');
        assert!(!s.is_dead());
        assert_eq!(s.minflt, 1523);
        assert_eq!(s.majflt, 7);
        assert_eq!(s.utime, 250);
        assert_eq!(s.stime, 31);
        assert_eq!(s.num_threads, 12);
        assert_eq!(s.starttime, 884213);
        assert_eq!(s.vsize, 2_415_919_104);
        assert_eq!(s.rss_pages, 25_600);
    }

    #[test]
    fn stat_truncated_and_malformed() {
        let full = fixture("stat");
        assert!(parse_stat(&full[..full.len() / 2]).is_err());
        assert!(parse_stat(b"").is_err());
        assert!(parse_stat(b"12 (x) S 1 2 3").is_err());
        let bad = String::from_utf8(full).unwrap().replace(" 1523 ", " 15x3 ");
        assert_eq!(
            parse_stat(bad.as_bytes()).unwrap_err().what,
            "field 10 is not a number: \"15x3\""
        );
    }

    #[test]
    fn status_fields() {
        let s = parse_status(&fixture("status")).unwrap();
        assert_eq!(s.vm_rss, Some(104_857_600));
        assert_eq!(s.vm_swap, Some(2048 * 1024));
        assert_eq!(s.threads, Some(12));
        assert_eq!(s.voluntary_ctxt, Some(4211));
        assert_eq!(s.nonvoluntary_ctxt, Some(93));
        assert_eq!(s.uid, Some(1000));
        assert_eq!(s.nspid, Some(1));
    }

    #[test]
    fn status_of_kernel_thread_has_no_vm_lines() {
        let s = parse_status(b"Name:\tkthreadd\nThreads:\t1\nNSpid:\t2\n").unwrap();
        assert_eq!(s.vm_rss, None);
        assert_eq!(s.threads, Some(1));
    }

    #[test]
    fn status_malformed() {
        assert!(parse_status(b"").is_err());
        assert!(parse_status(b"Name:\tx\nVmRSS:\tlots kB\n").is_err());
        assert!(parse_status(b"Name:\tx\nNSpid:\t\n").is_err());
        assert!(parse_status(&[0xff, 0xfe]).is_err());
        // A name is any bytes: one that is not UTF-8 costs nothing else.
        let s =
            parse_status(b"Name:\t\xffw\xfe\nThreads:\t3\nvoluntary_ctxt_switches:\t7\n").unwrap();
        assert_eq!((s.threads, s.voluntary_ctxt), (Some(3), Some(7)));
        assert_eq!(
            parse_status(b"Name:\tx\nThreads:\t 3x \n")
                .unwrap_err()
                .what,
            "Threads is not a number: \"3x\""
        );
    }

    #[test]
    fn io_fields_and_truncation() {
        let io = parse_io(&fixture("io")).unwrap();
        assert_eq!(
            io,
            Io {
                read_bytes: 8192,
                write_bytes: 1_048_576
            }
        );
        let full = fixture("io");
        let cut = std::str::from_utf8(&full)
            .unwrap()
            .find("read_bytes")
            .unwrap();
        assert!(parse_io(&full[..cut]).is_err());
        assert!(parse_io(b"read_bytes: x\nwrite_bytes: 1\n").is_err());
    }

    #[test]
    fn schedstat_fields() {
        assert_eq!(
            parse_schedstat(&fixture("schedstat")).unwrap(),
            SchedStat {
                run_ns: 1_200_000_000,
                wait_ns: 35_000_000
            }
        );
        assert!(parse_schedstat(b"1 2").is_err());
        assert!(parse_schedstat(b"a b c").is_err());
    }

    #[test]
    fn limits_fields() {
        assert_eq!(
            parse_limits_max_fds(&fixture("limits")).unwrap(),
            Some(1024)
        );
        let unlimited =
            b"Limit Soft Limit Hard Limit Units\nMax open files unlimited unlimited files\n";
        assert_eq!(parse_limits_max_fds(unlimited).unwrap(), None);
        assert!(parse_limits_max_fds(b"Max cpu time unlimited unlimited seconds\n").is_err());
        assert!(parse_limits_max_fds(b"Max open files lots lots files\n").is_err());
    }

    #[test]
    fn smaps_rollup_pss() {
        assert_eq!(
            parse_smaps_rollup_pss(&fixture("smaps_rollup")).unwrap(),
            90_112 * 1024
        );
        assert!(parse_smaps_rollup_pss(b"Rss: 10 kB\n").is_err());
        assert!(parse_smaps_rollup_pss(b"Pss: kB\n").is_err());
    }

    struct NoErrors;
    impl ReadErrorSink for NoErrors {
        fn read_error(&self, s: ReadSource) {
            panic!("unexpected read error on own process: {s:?}");
        }
        fn read_duration(&self, _: ReadSource, _: Duration) {}
    }

    #[derive(Default)]
    struct Counted(std::sync::Mutex<Vec<ReadSource>>);
    impl ReadErrorSink for Counted {
        fn read_error(&self, s: ReadSource) {
            self.0.lock().unwrap().push(s);
        }
        fn read_duration(&self, _: ReadSource, _: Duration) {}
    }

    #[test]
    fn unparsable_stat_is_a_procfs_read_error_only_a_missing_one_is_gone() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("42");
        std::fs::create_dir_all(dir.join("fd")).unwrap();
        std::fs::write(dir.join("stat"), fixture("stat")).unwrap();
        std::fs::write(dir.join("status"), fixture("status")).unwrap();
        let mut r = ProcReader::open(root.path(), 42, None).unwrap();
        let errors = Counted::default();
        assert!(r.sample(&errors).unwrap().stat.is_some());
        std::fs::write(dir.join("stat"), b"42 (x) S 1 2 x").unwrap();
        let s = r.sample(&errors).unwrap();
        assert_eq!(s.stat, None, "left out, not zero");
        assert!(s.status.is_some(), "the other files are still read");
        assert!(matches!(
            r.read_stat(),
            Err(StatError::Unparsable { pid: 42, .. })
        ));
        std::fs::write(dir.join("status"), b"").unwrap();
        assert!(
            r.sample(&errors).unwrap().status.is_none(),
            "empty is unparsable"
        );
        let counted = errors.0.lock().unwrap().clone();
        assert_eq!(
            counted.iter().filter(|s| **s == ReadSource::Procfs).count(),
            2
        );
        assert!(counted.contains(&ReadSource::ProcStatus));
        // Only a file that is gone (ENOENT) ends the instance.
        assert!(ProcReader::open(root.path(), 43, None).is_err());
    }

    #[test]
    fn products_of_kernel_figures_do_not_wrap() {
        let st = Stat {
            rss_pages: u64::MAX / 2,
            utime: u64::MAX,
            stime: 5,
            ..Default::default()
        };
        assert_eq!(st.rss_bytes(4096), None);
        assert_eq!(st.cpu_ticks(), u64::MAX);
        let st = Stat {
            rss_pages: 10,
            ..Default::default()
        };
        assert_eq!(st.rss_bytes(4096), Some(40960));
    }

    #[test]
    fn samples_own_process() {
        let pid = std::process::id();
        let mut r = ProcReader::open(Path::new("/proc"), pid, None).unwrap();
        let s = r.sample(&NoErrors).unwrap();
        let st = s.stat.unwrap();
        assert!(st.rss_pages > 0);
        assert!(s.status.unwrap().vm_rss.unwrap() > 0);
        assert!(s.open_fds.unwrap() >= 3);
        assert!(s.sched_wait_ns.is_some());
        assert!(s.io.is_some());
    }

    #[test]
    fn open_fds_follow_the_child_and_end_with_it() {
        // A child that opens 41 more descriptors once told to, then waits in a shell builtin (no
        // program started, so no loader opening and closing files between the count and the listing).
        let mut child = std::process::Command::new("bash")
            .args(["-c", "read go; exec 3</dev/null; for i in $(seq 10 49); do eval \"exec $i</dev/null\"; done; echo ready; read stop"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut r = ProcReader::open(Path::new("/proc"), child.id(), None).unwrap();
        let before = r.sample(&NoErrors).unwrap().open_fds.unwrap();
        use std::io::{BufRead, Write};
        writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "ready\n");
        let after = r.sample(&NoErrors).unwrap().open_fds.unwrap();
        let listed = std::fs::read_dir(format!("/proc/{}/fd", child.id()))
            .unwrap()
            .count() as u64;
        assert_eq!(after, listed, "the count is the listing's");
        assert!(after >= before + 40, "{before} -> {after}");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            r.count_fds().is_err_and(|e| is_gone(&e)),
            "an ended child's count is gone"
        );
    }
}
