//! The target's process tree: the selected process and all its descendants, followed as they fork, exec
//! and exit, read through one [`ProcReader`] each and summed into one [`ProcSample`] whose counters never go
//! backwards while workers come and go.
//!
//! Membership: a process is in the tree when its parent was in the tree when vitals first saw it, and it
//! stays in until it exits (a worker whose parent died and that was reparented to init is still the
//! service's). New processes are found by listing `/proc` once per tick and reading the `stat` of pids
//! not seen before; pids known to be outside the tree are not read again while they live.
//!
//! Counters: CPU time, page faults and disk bytes of a child that its parent reaps move into the parent's
//! `cutime`/`cstime`, `cminflt`/`cmajflt` and `io` (the kernel adds them in `wait()`), so the tree's total is
//! the sum over live members of their own plus their reaped children's figures. A member that ends without
//! a member to reap it (reparented to init, or the last of its line) has its last figures carried, and
//! context switches and run-queue wait, which no parent inherits, are always carried. Members are read
//! oldest first, so a parent is read before its children and a reap between the two reads can only make
//! the sum dip for one tick, never count a child twice; every counter is then held at its highest value.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

pub use super::procfs::Comm;
use super::procfs::{
    detect_runtime, list_pids, parse_stat, ProcReader, ProcSample, PssPolicy, Stat, Status,
};
use super::{ReadErrorSink, TargetGone};
use crate::language::Runtime;

/// Default cap on the processes of one tree that are read each tick.
pub const DEFAULT_MAX_PROCESSES: usize = 1000;

/// How many members the bounded view names: the largest by memory and the busiest by CPU, this many each.
pub const VIEW_TOP: usize = 5;

/// Threads of a member other than the root whose run-queue wait is read (the root: all up to
/// [`super::procfs::MAX_TRACKED_THREADS`]); a member with more is left out of the tree's wait.
pub const MEMBER_THREADS: usize = 64;

/// One member of the bounded view.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MemberView {
    /// Pid as vitals sees it.
    pub pid: u32,
    /// Its command name.
    pub comm: Comm,
    /// Resident set, bytes.
    pub rss_bytes: u64,
    /// CPU used over the last tick, cores (1.0 = one core busy).
    pub cpu_cores: f64,
}

/// The bounded view of the tree: at most [`VIEW_TOP`] members by memory and [`VIEW_TOP`] by CPU (a member in
/// both lists is named once).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TreeView {
    /// Live processes in the tree, read or not.
    pub processes: u64,
    /// Descendants beyond the cap: in the tree but not read (their figures are missing from the sums).
    pub untracked: u64,
    /// The named members; `len` of them are valid.
    pub members: [MemberView; 2 * VIEW_TOP],
    /// How many entries of `members` are valid.
    pub len: usize,
}

impl TreeView {
    /// The named members.
    pub fn members(&self) -> &[MemberView] {
        &self.members[..self.len]
    }
}

/// The member that runs the language runtime, as found in the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeProcess {
    /// Its pid.
    pub pid: u32,
    /// Its start time, clock ticks since boot.
    pub start_ticks: u64,
    /// The runtime.
    pub runtime: Runtime,
}

/// Cumulative figures of one member: its own plus what it inherited from reaped children.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    user_ticks: u64,
    system_ticks: u64,
    minflt: u64,
    majflt: u64,
    read_bytes: u64,
    write_bytes: u64,
    /// Figures no parent inherits.
    voluntary: u64,
    involuntary: u64,
    sched_wait_ns: u64,
}

impl Totals {
    fn of(stat: &Stat, status: Option<&Status>, p: &ProcSample) -> Totals {
        Totals {
            user_ticks: stat.utime.saturating_add(stat.cutime),
            system_ticks: stat.stime.saturating_add(stat.cstime),
            minflt: stat.minflt.saturating_add(stat.cminflt),
            majflt: stat.majflt.saturating_add(stat.cmajflt),
            read_bytes: p.io.map_or(0, |i| i.read_bytes),
            write_bytes: p.io.map_or(0, |i| i.write_bytes),
            voluntary: status.and_then(|s| s.voluntary_ctxt).unwrap_or(0),
            involuntary: status.and_then(|s| s.nonvoluntary_ctxt).unwrap_or(0),
            sched_wait_ns: p.sched_wait_ns.unwrap_or(0),
        }
    }

    fn add(&mut self, o: &Totals) {
        self.user_ticks = self.user_ticks.saturating_add(o.user_ticks);
        self.system_ticks = self.system_ticks.saturating_add(o.system_ticks);
        self.minflt = self.minflt.saturating_add(o.minflt);
        self.majflt = self.majflt.saturating_add(o.majflt);
        self.read_bytes = self.read_bytes.saturating_add(o.read_bytes);
        self.write_bytes = self.write_bytes.saturating_add(o.write_bytes);
        self.add_uninherited(o);
    }

    fn add_uninherited(&mut self, o: &Totals) {
        self.voluntary = self.voluntary.saturating_add(o.voluntary);
        self.involuntary = self.involuntary.saturating_add(o.involuntary);
        self.sched_wait_ns = self.sched_wait_ns.saturating_add(o.sched_wait_ns);
    }

    fn max(&mut self, o: &Totals) {
        self.user_ticks = self.user_ticks.max(o.user_ticks);
        self.system_ticks = self.system_ticks.max(o.system_ticks);
        self.minflt = self.minflt.max(o.minflt);
        self.majflt = self.majflt.max(o.majflt);
        self.read_bytes = self.read_bytes.max(o.read_bytes);
        self.write_bytes = self.write_bytes.max(o.write_bytes);
        self.voluntary = self.voluntary.max(o.voluntary);
        self.involuntary = self.involuntary.max(o.involuntary);
        self.sched_wait_ns = self.sched_wait_ns.max(o.sched_wait_ns);
    }
}

/// A member being read.
struct Member {
    pid: u32,
    reader: ProcReader,
    /// Parent pid at the last read.
    ppid: u32,
    /// Its comm as its last stat showed it; None until its first stat is read (its program with it).
    comm: Option<Comm>,
    runtime: Option<Runtime>,
    /// A launcher (npm, gradle's wrapper, …): its runtime is not the service's when a child runs one too.
    launcher: bool,
    /// Figures at the last read.
    last: Totals,
    /// Stack address at the last read: a new one means the member exec'd another program.
    startstack: u64,
    /// Own CPU ticks (utime + stime) at the last read, for the per-tick CPU of the view.
    own_cpu_ticks: u64,
    cpu_cores: f64,
    rss_bytes: u64,
    /// Seen exited but not yet reaped: its last figures still count, it is not read again.
    zombie: bool,
    /// Whether this tick's read found it alive.
    seen: bool,
}

/// A pid first seen this tick, not yet placed.
struct Candidate {
    pid: u32,
    ppid: u32,
    start: u64,
}

/// The tree of one target: membership and the summed readings.
pub struct ProcessTree {
    proc_root: PathBuf,
    pss: Option<PssPolicy>,
    page_size: u64,
    hz: f64,
    /// Cap on members read.
    max_processes: usize,
    /// The root's identity.
    root_pid: u32,
    /// Members by (start time, pid): oldest first, so parents are read before their children.
    members: BTreeMap<(u64, u32), Member>,
    /// Pid → key in `members`.
    by_pid: HashMap<u32, (u64, u32)>,
    /// Pids seen outside the tree, kept while they are listed.
    outside: HashSet<u32>,
    /// Descendants found beyond the cap, by pid, kept while they are listed.
    untracked: HashSet<u32>,
    /// Figures of members that ended without a member to inherit them.
    carried: Totals,
    /// The highest total published: counters never go backwards.
    published: Totals,
    /// Reused buffers.
    listing: Vec<u32>,
    /// Read buffer for a new process's stat.
    stat_buf: Vec<u8>,
    candidates: Vec<Candidate>,
    /// When the cap was last logged as reached.
    cap_logged: bool,
    /// Says whether any pid was allocated since the last listing (none: no new member can exist).
    new_pids: NewPids,
}

/// Whether a new process (or thread) can have appeared since the last listing of `/proc`, from the last
/// pid the kernel allocated in vitals' pid namespace (the 5th field of `/proc/loadavg`). Listing `/proc`
/// and reading the stat of every pid not seen before is most of an idle reading's cost (it grows with the
/// processes of the whole namespace, not of the tree); when no pid was allocated since, the listing would
/// find nothing new. The last pid is of the reader's namespace, so it is trusted only when the `/proc`
/// read is that namespace's own mount (`self/status` names one pid: no outer namespace); elsewhere (a
/// host's `/proc` mounted in, a fixture tree) every reading lists. A listing is also forced every
/// [`NewPids::LIST_AT_LEAST_EVERY`] readings, and after a reading that skipped a pid it could not place.
struct NewPids {
    loadavg: Option<super::kept::KeptFile>,
    buf: Vec<u8>,
    /// The last pid at the last listing.
    listed_at: Option<u64>,
    /// Readings since the last listing.
    since: u32,
}

impl NewPids {
    /// At this many readings without a new pid the listing runs anyway.
    const LIST_AT_LEAST_EVERY: u32 = 60;

    fn new(proc_root: &Path) -> NewPids {
        let own_namespace = std::fs::read_to_string(proc_root.join("self/status"))
            .ok()
            .and_then(|text| {
                let line = text.lines().find(|l| l.starts_with("NSpid:"))?;
                Some(line.split_whitespace().count() == 2)
            })
            .unwrap_or(false);
        NewPids {
            loadavg: own_namespace
                .then(|| super::kept::KeptFile::open(proc_root.join("loadavg")).ok())
                .flatten(),
            buf: Vec::with_capacity(64),
            listed_at: None,
            since: 0,
        }
    }

    /// The last pid allocated, when it can be read.
    fn last_pid(&mut self) -> Option<u64> {
        let raw = self.loadavg.as_ref()?.read(&mut self.buf).ok()?;
        last_pid_of_loadavg(raw)
    }

    /// True when `/proc` must be listed now; the caller lists and then calls [`NewPids::listed`].
    fn list_now(&mut self) -> (bool, Option<u64>) {
        let now = self.last_pid();
        self.since = self.since.saturating_add(1);
        let unchanged = now.is_some() && now == self.listed_at;
        (!unchanged || self.since >= Self::LIST_AT_LEAST_EVERY, now)
    }

    /// A listing ran having read `last_pid` before it; `complete` is false when a pid was skipped that a
    /// later listing must look at again.
    fn listed(&mut self, last_pid: Option<u64>, complete: bool) {
        self.listed_at = if complete { last_pid } else { None };
        self.since = 0;
    }
}

/// The last pid allocated, from `/proc/loadavg` (`0.00 0.01 0.05 1/180 12345`).
fn last_pid_of_loadavg(raw: &[u8]) -> Option<u64> {
    std::str::from_utf8(raw)
        .ok()?
        .split_ascii_whitespace()
        .nth(4)?
        .parse()
        .ok()
}

/// Programs that start the runtime that does the work: when one of their descendants runs a runtime
/// too, that descendant is the service's runtime process. Matched on comm or on the script argv[1]
/// names (npm's `npm-cli.js`, gradle's wrapper main class, …).
const LAUNCHER_WORDS: [&str; 14] = [
    "npm",
    "npx",
    "yarn",
    "pnpm",
    "npm-cli.js",
    "yarn.js",
    "pnpm.cjs",
    "org.gradle.wrapper.GradleWrapperMain",
    "org.gradle.launcher.GradleMain",
    "org.codehaus.plexus.classworlds.launcher.Launcher",
    "poetry",
    "pipenv",
    "hatch",
    "nodemon",
];

/// True when the process is a launcher by its comm or command line.
fn is_launcher(comm: &str, argv: &[u8]) -> bool {
    let first = comm.split(' ').next().unwrap_or(comm);
    if LAUNCHER_WORDS.contains(&first) {
        return true;
    }
    argv.split(|b| *b == 0).take(8).any(|arg| {
        let arg = std::str::from_utf8(arg).unwrap_or("");
        let base = arg.rsplit('/').next().unwrap_or(arg);
        LAUNCHER_WORDS.contains(&base) || LAUNCHER_WORDS.contains(&arg)
    })
}

/// What the tree's read of one tick gives beyond the summed sample.
pub struct TreeReading {
    /// The summed sample.
    pub sample: ProcSample,
    /// The bounded view.
    pub view: TreeView,
}

impl ProcessTree {
    /// A tree rooted at `root`, whose reader is already open (its failure to open is the caller's).
    pub fn new(
        proc_root: &Path,
        root: ProcReader,
        pss: Option<PssPolicy>,
        hz: u64,
        page_size: u64,
        max_processes: usize,
    ) -> ProcessTree {
        let root_pid = root.pid();
        let mut t = ProcessTree {
            proc_root: proc_root.to_path_buf(),
            pss,
            page_size,
            hz: hz.max(1) as f64,
            max_processes: max_processes.max(1),
            root_pid,
            members: BTreeMap::new(),
            by_pid: HashMap::new(),
            outside: HashSet::new(),
            untracked: HashSet::new(),
            carried: Totals::default(),
            published: Totals::default(),
            listing: Vec::new(),
            stat_buf: Vec::new(),
            candidates: Vec::new(),
            cap_logged: false,
            new_pids: NewPids::new(proc_root),
        };
        // The root's start time is read with its first sample; 0 sorts it first, as the oldest.
        t.insert(root_pid, 0, 0, root);
        t
    }

    /// A new member; its program is read with its first stat.
    fn insert(&mut self, pid: u32, ppid: u32, start: u64, reader: ProcReader) {
        let key = (start, pid);
        self.by_pid.insert(pid, key);
        self.members.insert(
            key,
            Member {
                pid,
                reader,
                ppid,
                comm: None,
                runtime: None,
                launcher: false,
                last: Totals::default(),
                startstack: 0,
                own_cpu_ticks: 0,
                cpu_cores: 0.0,
                rss_bytes: 0,
                zombie: false,
                seen: false,
            },
        );
    }

    /// Live members, read or not.
    pub fn processes(&self) -> usize {
        self.members.len() + self.untracked.len()
    }

    /// The member that runs the service's runtime: a member that is not a launcher before one that is,
    /// then the oldest. None when no member runs a known runtime.
    pub fn runtime_process(&self) -> Option<RuntimeProcess> {
        let pick = |launchers: bool| {
            self.members
                .iter()
                .filter(|(_, m)| !m.zombie && m.launcher == launchers)
                .find_map(|(&(start, _), m)| {
                    m.runtime.map(|runtime| RuntimeProcess {
                        pid: m.pid,
                        start_ticks: start,
                        runtime,
                    })
                })
        };
        pick(false).or_else(|| pick(true))
    }

    /// Finds processes that joined the tree since the last tick: lists `proc_root`, reads `stat` of pids
    /// not seen before, and takes those whose parent is a member (oldest first, so a grandchild born in the
    /// same tick follows its parent in).
    fn discover(&mut self) {
        let (list, last_pid) = self.new_pids.list_now();
        if !list {
            return;
        }
        if list_pids(&self.proc_root, &mut self.listing).is_err() {
            return;
        }
        let mut complete = true;
        let listing = &self.listing;
        let listed = |p: &u32| listing.binary_search(p).is_ok();
        self.outside.retain(listed);
        self.untracked.retain(listed);
        self.candidates.clear();
        for &pid in &self.listing {
            if self.by_pid.contains_key(&pid)
                || self.outside.contains(&pid)
                || self.untracked.contains(&pid)
            {
                continue;
            }
            let path = self.proc_root.join(pid.to_string()).join("stat");
            let Ok(raw) = super::kept::read_whole(&path, &mut self.stat_buf) else {
                // Gone already: its parent reaps it and inherits its figures.
                continue;
            };
            match parse_stat(raw) {
                Ok(st) if st.group_alive() => self.candidates.push(Candidate {
                    pid,
                    ppid: st.ppid,
                    start: st.starttime,
                }),
                // A zombie never runs again (its parent takes its figures).
                Ok(_) => {}
                // An unparsable file: looked at again at the next reading.
                Err(_) => complete = false,
            }
        }
        self.new_pids.listed(last_pid, complete);
        self.candidates.sort_unstable_by_key(|c| (c.start, c.pid));
        let candidates = std::mem::take(&mut self.candidates);
        for c in &candidates {
            let parent_in = self.by_pid.contains_key(&c.ppid) || self.untracked.contains(&c.ppid);
            if !parent_in || c.pid == std::process::id() {
                self.outside.insert(c.pid);
                continue;
            }
            if self.members.len() >= self.max_processes {
                self.untracked.insert(c.pid);
                if !self.cap_logged {
                    self.cap_logged = true;
                    tracing::warn!(
                        root = self.root_pid,
                        cap = self.max_processes,
                        "the target's process tree is larger than --max-tree-processes; processes past \
                         the cap are counted in vitals_target_processes_untracked but not read"
                    );
                }
                continue;
            }
            // One that is gone already went to its parent, which reaps it and inherits its figures.
            if let Ok(mut reader) = ProcReader::open(&self.proc_root, c.pid, self.pss) {
                reader.limit_threads(MEMBER_THREADS);
                self.insert(c.pid, c.ppid, c.start, reader);
            }
        }
        self.candidates = candidates;
    }

    /// The live (not exited) members' pids into `out`: the root first, then the others oldest first. For
    /// the profiler, which samples the whole tree.
    pub fn member_pids(&self, out: &mut Vec<u32>) {
        out.clear();
        out.push(self.root_pid);
        out.extend(
            self.members
                .values()
                .filter(|m| !m.zombie && m.pid != self.root_pid)
                .map(|m| m.pid),
        );
    }

    /// Reads every member once and sums them. `Err` only when the root is gone (a zombie root is gone:
    /// the service ended).
    pub fn sample(
        &mut self,
        errors: &dyn ReadErrorSink,
        tick_seconds: f64,
    ) -> Result<TreeReading, TargetGone> {
        self.discover();
        let mut live = Totals::default();
        let mut sum = Sums::default();
        let mut root_sample: Option<ProcSample> = None;
        let mut ended: Vec<(u64, u32)> = Vec::new();
        for (key, m) in self.members.iter_mut() {
            m.seen = false;
            if m.zombie {
                if still_listed(&self.proc_root, m.pid) {
                    live.add(&m.last);
                    m.seen = true;
                } else {
                    ended.push(*key);
                }
                continue;
            }
            match m.reader.sample(errors) {
                Ok(p) => {
                    m.seen = true;
                    if let Some(st) = p.stat {
                        m.ppid = st.ppid;
                        // The program is read with the first stat, and again when exec gave a new
                        // stack address (and mostly a new comm) or a rename (`process.title`,
                        // setproctitle) a new comm only. The comm is the stat's, so a child found
                        // between its fork and its exec is named by the program it runs.
                        let new_stack = st.startstack != m.startstack
                            && m.startstack != 0
                            && st.startstack != 0;
                        if new_stack || m.comm != Some(st.comm) {
                            (m.runtime, m.launcher) = program_of(&self.proc_root, m.pid, &st.comm);
                            m.comm = Some(st.comm);
                        }
                        m.startstack = st.startstack;
                        m.last = Totals::of(&st, p.status.as_ref(), &p);
                        let own = st.cpu_ticks();
                        let delta = own.saturating_sub(m.own_cpu_ticks);
                        m.cpu_cores = if m.own_cpu_ticks == 0 || tick_seconds <= 0.0 {
                            0.0
                        } else {
                            delta as f64 / self.hz / tick_seconds
                        };
                        m.own_cpu_ticks = own;
                        m.rss_bytes = st.rss_bytes(self.page_size).unwrap_or(0);
                    }
                    live.add(&m.last);
                    sum.add(&p);
                    if m.pid == self.root_pid {
                        root_sample = Some(p);
                    }
                }
                Err(_) if m.pid == self.root_pid => return Err(TargetGone { pid: m.pid }),
                Err(_) => {
                    if still_listed(&self.proc_root, m.pid) {
                        // Exited, not yet reaped: its figures stay until its parent takes them.
                        m.zombie = true;
                        m.seen = true;
                        live.add(&m.last);
                    } else {
                        ended.push(*key);
                    }
                }
            }
        }
        for key in &ended {
            if let Some(m) = self.members.get(key) {
                self.by_pid.remove(&m.pid);
            }
        }
        for key in ended {
            if let Some(m) = self.members.remove(&key) {
                // A live member parent reaps it and inherits its CPU, faults and disk bytes.
                let inherited = self
                    .by_pid
                    .get(&m.ppid)
                    .and_then(|k| self.members.get(k))
                    .is_some_and(|p| !p.zombie && p.seen);
                if inherited {
                    self.carried.add_uninherited(&m.last);
                } else {
                    self.carried.add(&m.last);
                }
            }
        }
        let root = root_sample.ok_or(TargetGone { pid: self.root_pid })?;
        // The root's start time is its identity's; the map key set at attach is corrected once.
        if let Some(st) = root.stat {
            if let Some(&key) = self.by_pid.get(&self.root_pid) {
                if key.0 != st.starttime {
                    if let Some(m) = self.members.remove(&key) {
                        let new = (st.starttime, self.root_pid);
                        self.by_pid.insert(self.root_pid, new);
                        self.members.insert(new, m);
                    }
                }
            }
        }
        let mut total = self.carried;
        total.add(&live);
        total.max(&self.published);
        self.published = total;
        Ok(TreeReading {
            sample: self.summed(root, &sum, &total),
            view: self.view(),
        })
    }

    /// The tree's sample: the root's identity with the summed figures.
    fn summed(&self, root: ProcSample, sum: &Sums, total: &Totals) -> ProcSample {
        let mut out = root;
        if let Some(st) = out.stat.as_mut() {
            st.utime = total.user_ticks;
            st.stime = total.system_ticks;
            st.cutime = 0;
            st.cstime = 0;
            st.minflt = total.minflt;
            st.majflt = total.majflt;
            st.cminflt = 0;
            st.cmajflt = 0;
            st.num_threads = sum.threads;
            st.vsize = sum.vsize;
            st.rss_pages = sum.rss_pages;
        }
        if let Some(status) = out.status.as_mut() {
            status.voluntary_ctxt = status.voluntary_ctxt.map(|_| total.voluntary);
            status.nonvoluntary_ctxt = status.nonvoluntary_ctxt.map(|_| total.involuntary);
            status.vm_swap = sum.swap;
            status.vm_rss = status
                .vm_rss
                .map(|_| sum.rss_pages.saturating_mul(self.page_size));
            status.threads = status.threads.map(|_| sum.threads);
        }
        if let Some(io) = out.io.as_mut() {
            io.read_bytes = total.read_bytes;
            io.write_bytes = total.write_bytes;
        }
        out.sched_wait_ns = out.sched_wait_ns.map(|_| total.sched_wait_ns);
        out.open_fds = sum.open_fds;
        out.fds_fullest = sum.fullest;
        out.max_fds = sum.fullest.map(|(_, max)| max).or(root.max_fds);
        out.pss = sum.pss;
        out.processes = self.processes() as u64;
        out
    }

    /// The bounded view: the largest members by memory and the busiest by CPU.
    fn view(&self) -> TreeView {
        let mut view = TreeView {
            processes: self.processes() as u64,
            untracked: self.untracked.len() as u64,
            ..TreeView::default()
        };
        let live = || self.members.values().filter(|m| !m.zombie);
        let mut by_rss: [Option<&Member>; VIEW_TOP] = [None; VIEW_TOP];
        let mut by_cpu: [Option<&Member>; VIEW_TOP] = [None; VIEW_TOP];
        for m in live() {
            top_insert(&mut by_rss, m, |m| m.rss_bytes as f64);
            top_insert(&mut by_cpu, m, |m| m.cpu_cores);
        }
        for m in by_rss.iter().chain(by_cpu.iter()).flatten() {
            if view.members().iter().any(|v| v.pid == m.pid) {
                continue;
            }
            view.members[view.len] = MemberView {
                pid: m.pid,
                comm: m.comm.unwrap_or_default(),
                rss_bytes: m.rss_bytes,
                cpu_cores: m.cpu_cores,
            };
            view.len += 1;
        }
        view
    }
}

/// Keeps `top` sorted by `key`, largest first, holding the largest members seen.
fn top_insert<'a>(
    top: &mut [Option<&'a Member>; VIEW_TOP],
    m: &'a Member,
    key: impl Fn(&Member) -> f64,
) {
    let k = key(m);
    let Some(at) = top.iter().position(|slot| slot.is_none_or(|o| key(o) < k)) else {
        return;
    };
    for i in (at + 1..VIEW_TOP).rev() {
        top[i] = top[i - 1];
    }
    top[at] = Some(m);
}

/// Gauges summed over the members read this tick.
#[derive(Default)]
struct Sums {
    threads: u64,
    vsize: u64,
    rss_pages: u64,
    swap: Option<u64>,
    open_fds: Option<u64>,
    pss: Option<u64>,
    /// (open, limit) of the member whose fds are closest to its limit.
    fullest: Option<(u64, u64)>,
}

impl Sums {
    fn add(&mut self, p: &ProcSample) {
        let plus = |acc: Option<u64>, v: Option<u64>| match (acc, v) {
            (a, None) => a,
            (None, Some(v)) => Some(v),
            (Some(a), Some(v)) => Some(a.saturating_add(v)),
        };
        if let Some(st) = p.stat {
            self.threads = self.threads.saturating_add(st.num_threads);
            self.vsize = self.vsize.saturating_add(st.vsize);
            self.rss_pages = self.rss_pages.saturating_add(st.rss_pages);
        }
        self.swap = plus(self.swap, p.status.and_then(|s| s.vm_swap));
        self.open_fds = plus(self.open_fds, p.open_fds);
        self.pss = plus(self.pss, p.pss);
        if let (Some(open), Some(max)) = (p.open_fds, p.max_fds) {
            let ratio = |(o, m): (u64, u64)| o as f64 / m.max(1) as f64;
            if self.fullest.is_none_or(|f| ratio((open, max)) > ratio(f)) {
                self.fullest = Some((open, max));
            }
        }
    }
}

/// True while /proc/PID still exists (a zombie not yet reaped).
fn still_listed(proc_root: &Path, pid: u32) -> bool {
    let path = proc_root.join(pid.to_string()).join("stat");
    match std::fs::read(path) {
        Ok(raw) => parse_stat(&raw).is_ok(),
        Err(e) => !matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ESRCH)),
    }
}

/// The runtime a process named `comm` runs and whether it is a launcher.
fn program_of(proc_root: &Path, pid: u32, comm: &Comm) -> (Option<Runtime>, bool) {
    let argv = std::fs::read(proc_root.join(pid.to_string()).join("cmdline")).unwrap_or_default();
    let name = comm.as_str();
    (
        detect_runtime(proc_root, pid, &name),
        is_launcher(&name, &argv),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launchers_are_known_by_comm_or_script() {
        assert!(is_launcher("npm start", b"npm start\0"));
        assert!(is_launcher(
            "node",
            b"node\0/usr/lib/node_modules/npm/bin/npm-cli.js\0start\0"
        ));
        assert!(is_launcher(
            "java",
            b"java\0-cp\0gradle-wrapper.jar\0org.gradle.wrapper.GradleWrapperMain\0bootRun\0"
        ));
        assert!(!is_launcher("node", b"node\0server.js\0"));
        assert!(!is_launcher("python3", b"python3\0app.py\0"));
    }

    struct Quiet;
    impl ReadErrorSink for Quiet {
        fn read_error(&self, _: super::super::ReadSource) {}
        fn read_duration(&self, _: super::super::ReadSource, _: std::time::Duration) {}
    }

    /// Writes a fixture process: its stat (with the given comm and stack address), status, comm and argv.
    fn fixture_process(
        root: &Path,
        pid: u32,
        ppid: u32,
        comm_file: &str,
        stat_comm: &str,
        stack: u64,
        argv: &str,
    ) {
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(dir.join("fd")).expect("fd dir");
        // Fields 3 to 28 of proc(5): state, ppid, …, starttime (22), vsize, rss, …, startstack (28).
        let stat = format!(
            "{pid} ({stat_comm}) S {ppid} {pid} {pid} 0 -1 0 10 0 0 0 5 3 0 0 20 0 1 0 {} 1000000 100 0 1 1 {stack}\n",
            1000 + u64::from(pid)
        );
        std::fs::write(dir.join("stat"), stat).expect("stat");
        std::fs::write(
            dir.join("status"),
            "Name:\tx\nVmRSS:\t400 kB\nThreads:\t1\n",
        )
        .expect("status");
        std::fs::write(dir.join("comm"), format!("{comm_file}\n")).expect("comm");
        std::fs::write(dir.join("cmdline"), argv.replace(' ', "\0")).expect("cmdline");
    }

    fn named(view: &TreeView, pid: u32) -> String {
        view.members()
            .iter()
            .find(|m| m.pid == pid)
            .map(|m| m.comm.as_str().into_owned())
            .unwrap_or_default()
    }

    /// A child read between its fork and its exec (its comm file still the shell's, its stat already the
    /// new program's) is named by the program it runs; a root that renames itself into a launcher
    /// (`npm start`) without a visible new stack is read again and stops being the service's runtime.
    #[test]
    fn a_member_s_program_follows_its_comm_as_well_as_its_stack() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fixture_process(root, 10, 1, "node", "node", 0, "node server.js");
        fixture_process(root, 11, 10, "sh", "burn", 0, "sh -c burn");
        let reader = ProcReader::open(root, 10, None).expect("root reader");
        let mut tree = ProcessTree::new(root, reader, None, 100, 4096, DEFAULT_MAX_PROCESSES);
        let r = tree.sample(&Quiet, 1.0).expect("first reading");
        assert_eq!(r.view.processes, 2);
        assert_eq!(named(&r.view, 11), "burn", "the child by its stat's comm");
        assert_eq!(
            tree.runtime_process().map(|p| p.pid),
            Some(10),
            "node, no launcher yet"
        );
        // The child runs node too; the root names itself `npm start` (same stack: hidden, 0).
        fixture_process(root, 11, 10, "node", "node", 0, "node app.js");
        fixture_process(root, 10, 1, "npm start", "npm start", 0, "npm start");
        let r = tree.sample(&Quiet, 1.0).expect("second reading");
        assert_eq!(named(&r.view, 10), "npm start");
        assert_eq!(named(&r.view, 11), "node");
        assert_eq!(
            tree.runtime_process().map(|p| p.pid),
            Some(11),
            "the renamed root is a launcher: its child is the runtime"
        );
    }

    #[test]
    fn comm_is_cut_and_trimmed() {
        let c = Comm::from_bytes(b"a-very-long-command-name\n");
        assert_eq!(c.as_str(), "a-very-long-com");
        assert_eq!(Comm::from_bytes(b"sh\n").as_str(), "sh");
    }

    #[test]
    fn the_last_pid_is_read_from_loadavg_and_a_new_process_moves_it() {
        assert_eq!(
            last_pid_of_loadavg(b"0.00 0.01 0.05 1/180 12345\n"),
            Some(12345)
        );
        assert_eq!(last_pid_of_loadavg(b"0.00 0.01 0.05 1/180\n"), None);
        assert_eq!(last_pid_of_loadavg(b"\xff"), None);
        // The test runs in the namespace of the /proc it reads: the last pid is trusted there.
        let mut gate = NewPids::new(Path::new("/proc"));
        let (list, before) = gate.list_now();
        assert!(list, "the first reading lists");
        assert!(before.is_some(), "/proc/loadavg names the last pid");
        gate.listed(before, true);
        let child = std::process::Command::new("true").status();
        assert!(child.is_ok());
        let (list, after) = gate.list_now();
        assert!(
            list,
            "a process started since the listing: {before:?} -> {after:?}"
        );
        assert_ne!(before, after);
        // A listing that could not place a pid is followed by another, whatever the last pid.
        gate.listed(after, false);
        assert!(gate.list_now().0);
        // A fixture tree (no `self`) is listed at every reading.
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("loadavg"), "0 0 0 1/1 7\n").expect("write");
        let mut fixture = NewPids::new(dir.path());
        for _ in 0..3 {
            let (list, last) = fixture.list_now();
            assert!(list);
            fixture.listed(last, true);
        }
    }
}
