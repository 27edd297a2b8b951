//! Which process is watched: selection by pid, pid file or regex, and identity as (pid, start time) so a
//! reused pid is seen as a new target.

pub mod access;
pub mod exit_watch;
pub mod pod;
pub mod run;
pub mod status;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use regex::Regex;

pub use crate::config::Selection;
pub use crate::probe::procfs::detect_runtime;
use crate::probe::procfs::{list_pids, parse_stat, read_argv, read_comm};

/// How the target is chosen.
#[derive(Debug, Clone)]
pub enum Selector {
    /// A process the options name: a fixed pid; a file holding the pid, re-read on every search so a
    /// restarted service is followed; or a process whose comm or command line matches: the program
    /// itself before a process that only has the pattern in its arguments, never a wrapper such as
    /// `sh -c` or `timeout`, the oldest among equals.
    Given(Selection),
    /// The child spawned by `vitals run`.
    Child(u32),
    /// A container of the pod (zero-configuration pod mode): the root process the pod scan assigned.
    Container(std::sync::Arc<pod::ContainerSlot>),
}

impl Selector {
    /// Short description for logs.
    pub fn describe(&self) -> String {
        match self {
            Selector::Given(Selection::Pid(p)) => format!("pid {p}"),
            Selector::Given(Selection::PidFile(p)) => format!("pid file {}", p.display()),
            Selector::Given(Selection::Process(r)) => format!("process matching /{}/", r.as_str()),
            Selector::Child(p) => format!("child pid {p}"),
            Selector::Container(c) => format!("container {} of the pod", c.name()),
        }
    }

    /// The `selected_by` label of `vitals_target_info`: `pid`, `pid_file`, `process` or `run`.
    pub fn label(&self) -> &'static str {
        match self {
            Selector::Given(Selection::Pid(_)) => "pid",
            Selector::Given(Selection::PidFile(_)) => "pid_file",
            Selector::Given(Selection::Process(_)) => "process",
            Selector::Child(_) => "run",
            Selector::Container(_) => "pod",
        }
    }
}

/// A process instance: a pid together with its start time in clock ticks since boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TargetId {
    /// Process id as vitals sees it.
    pub pid: u32,
    /// Start time, clock ticks since boot.
    pub start_ticks: u64,
}

/// Why a search found nothing usable; none of these stop vitals, which searches again next interval.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The pid file is missing, unreadable or holds no pid.
    #[error("pid file {path}: {reason}")]
    PidFile {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// /proc could not be listed.
    #[error("cannot list {0}: {1}")]
    ProcRoot(PathBuf, std::io::Error),
}

/// Reads the identity of `pid`, or None when no such live process exists (a zombie is not live, but a
/// zombie main thread whose workers run is: see [`Stat::group_alive`](crate::probe::procfs::Stat)).
pub fn identify(proc_root: &Path, pid: u32) -> Option<TargetId> {
    let raw = std::fs::read(proc_root.join(pid.to_string()).join("stat")).ok()?;
    let stat = parse_stat(&raw).ok().filter(|s| s.group_alive())?;
    Some(TargetId {
        pid,
        start_ticks: stat.starttime,
    })
}

/// The outcome of one search.
#[derive(Debug, Default)]
pub struct Found {
    /// The chosen target, if any.
    pub target: Option<TargetId>,
    /// Other matching processes that were passed over, by identity: a pid alone may be reused by a
    /// restart of the target.
    pub passed_over: Vec<TargetId>,
    /// True when another match was as good a choice as the target (the oldest was taken): worth a warning.
    pub ambiguous: bool,
    /// Matches that only wrap the program (a shell, `timeout`, `env`, …) while nothing else matched: vitals
    /// waits for the program they start rather than watching the wrapper.
    pub wrappers_only: Vec<u32>,
}

/// How a process's start time (clock ticks since boot) becomes wall-clock time, to compare with a pid
/// file's modification time.
#[derive(Debug, Clone, Copy)]
pub struct StartClock {
    /// Boot time, Unix seconds (whole seconds: a start computed from it is never later than the real one).
    pub boot_time: u64,
    /// Clock ticks per second.
    pub hz: u64,
}

impl StartClock {
    /// Unix seconds at which a process that started `start_ticks` after boot began.
    pub fn unix_seconds(&self, start_ticks: u64) -> f64 {
        self.boot_time as f64 + start_ticks as f64 / self.hz.max(1) as f64
    }
}

/// A process that started more than this after its pid file was last written is not the one it names.
/// Start times are clock ticks (10 ms) since a boot time of whole seconds, and the boot clock may drift from
/// the wall clock by a little: the slack covers both.
pub const PID_FILE_SLACK: std::time::Duration = std::time::Duration::from_secs(1);

/// A process seen by a `--process` scan.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// When the scan first listed it.
    first_seen: Instant,
    /// Whether its comm or command line matched when last read.
    matched: bool,
}

/// A process younger than this (by when a scan first listed it) has its comm and command line read at every
/// scan: a forked child shows its parent's until it execs.
const YOUNG: std::time::Duration = std::time::Duration::from_secs(2);

/// The search for the target, with what it keeps between searches: a `--process` scan reads the comm and
/// command line of processes it has not seen before (and of young ones, which may still exec), so a scan of
/// a host every 100 ms costs a directory listing plus a few reads, not two reads per process.
pub struct Search {
    proc_root: PathBuf,
    clock: StartClock,
    seen: HashMap<u32, Seen>,
    listing: Vec<u32>,
}

impl Search {
    /// A search under `proc_root`.
    pub fn new(proc_root: &Path, clock: StartClock) -> Search {
        Search {
            proc_root: proc_root.to_path_buf(),
            clock,
            seen: HashMap::new(),
            listing: Vec::new(),
        }
    }

    /// Looks for the target once. A `full` search reads every process again (at each tick, so a process
    /// that exec'd into the program long after it started is found); otherwise only new and young ones.
    pub fn find(&mut self, selector: &Selector, full: bool) -> Result<Found, SearchError> {
        match selector {
            Selector::Given(Selection::Pid(pid)) | Selector::Child(pid) => Ok(Found {
                target: identify(&self.proc_root, *pid),
                ..Default::default()
            }),
            Selector::Given(Selection::PidFile(path)) => self.find_pid_file(path),
            Selector::Given(Selection::Process(re)) => self.find_regex(re, full),
            Selector::Container(slot) => Ok(Found {
                target: slot
                    .root()
                    .filter(|id| identify(&self.proc_root, id.pid).is_some_and(|i| i == *id)),
                ..Default::default()
            }),
        }
    }

    /// The process a pid file names, trusted only when it can be the one that wrote (or was written into)
    /// the file: a process that started after the file was last written got the pid later.
    fn find_pid_file(&self, path: &Path) -> Result<Found, SearchError> {
        let err = |reason: String| SearchError::PidFile {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let pid: u32 = text
            .trim()
            .parse()
            .map_err(|_| err(format!("does not hold a pid: {:?}", text.trim())))?;
        let Some(id) = identify(&self.proc_root, pid) else {
            return Ok(Found::default());
        };
        let written = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs_f64());
        let started = self.clock.unix_seconds(id.start_ticks);
        if let Some(written) = written {
            if started > written + PID_FILE_SLACK.as_secs_f64() {
                return Err(err(format!(
                    "names pid {pid}, but that process started {:.1} s after the file was last written, \
                     so it is not the process the file names (its pid was reused); waiting for the file to \
                     be rewritten",
                    started - written
                )));
            }
        }
        Ok(Found {
            target: Some(id),
            ..Default::default()
        })
    }

    /// Picks among the processes that match: the program itself before a process that merely has the
    /// pattern in its arguments, and never a wrapper (shell, `timeout`, …) while anything else matches;
    /// among equals the oldest, flagged as ambiguous.
    fn find_regex(&mut self, re: &Regex, full: bool) -> Result<Found, SearchError> {
        let me = std::process::id();
        list_pids(&self.proc_root, &mut self.listing)
            .map_err(|e| SearchError::ProcRoot(self.proc_root.clone(), e))?;
        let listing = &self.listing;
        self.seen.retain(|p, _| listing.binary_search(p).is_ok());
        let now = Instant::now();
        let mut matches: Vec<(MatchKind, TargetId)> = Vec::new();
        for &pid in &self.listing {
            // vitals' own command line holds the pattern; it must never pick itself.
            if pid == me {
                continue;
            }
            let seen = self.seen.get(&pid).copied();
            let stale = seen.is_none_or(|s| full || s.matched || now - s.first_seen < YOUNG);
            if !stale {
                continue;
            }
            let comm = read_comm(&self.proc_root, pid).unwrap_or_default();
            let argv = read_argv(&self.proc_root, pid);
            let matched = re.is_match(&comm) || re.is_match(&argv.join(" "));
            self.seen.insert(
                pid,
                Seen {
                    first_seen: seen.map_or(now, |s| s.first_seen),
                    matched,
                },
            );
            if !matched {
                continue;
            }
            let Some(id) = identify(&self.proc_root, pid) else {
                continue;
            };
            let exe = std::fs::read_link(self.proc_root.join(pid.to_string()).join("exe")).ok();
            let exe = exe.as_deref().and_then(|p| p.to_str());
            matches.push((match_kind(re, &comm, exe, &argv), id));
        }
        drop_descendants(&self.proc_root, &mut matches);
        Ok(pick(matches))
    }
}

/// Removes the matches that descend from another match that is not a wrapper: a pre-fork server's workers (gunicorn, nginx, Node
/// cluster) match as their master does, and they are in its tree, not rivals to it.
fn drop_descendants(proc_root: &Path, matches: &mut Vec<(MatchKind, TargetId)>) {
    if matches.len() < 2 {
        return;
    }
    // A wrapper's child is the program it starts, never one of its workers: only programs' trees count.
    let pids: Vec<u32> = matches
        .iter()
        .filter(|(k, _)| *k != MatchKind::Wrapper)
        .map(|(_, t)| t.pid)
        .collect();
    matches.retain(|(_, t)| {
        let mut pid = t.pid;
        // A bounded walk up the parents: a deeper chain is unheard of and a loop impossible, but cheap to rule out.
        for _ in 0..64 {
            let ppid = std::fs::read(proc_root.join(pid.to_string()).join("stat"))
                .ok()
                .and_then(|raw| parse_stat(&raw).ok())
                .map_or(0, |st| st.ppid);
            if ppid <= 1 {
                return true;
            }
            if pids.contains(&ppid) {
                return false;
            }
            pid = ppid;
        }
        true
    });
}

/// The best of the matches (see [`Search::find`]).
fn pick(mut matches: Vec<(MatchKind, TargetId)>) -> Found {
    matches.sort_by_key(|(kind, t)| (*kind, t.start_ticks, t.pid));
    let Some(&(best_kind, _)) = matches.first() else {
        return Found::default();
    };
    if best_kind == MatchKind::Wrapper {
        return Found {
            wrappers_only: matches.iter().map(|(_, t)| t.pid).collect(),
            ..Default::default()
        };
    }
    let ambiguous = matches.iter().filter(|(k, _)| *k == best_kind).count() > 1;
    let mut it = matches.into_iter().map(|(_, t)| t);
    let target = it.next();
    Found {
        target,
        passed_over: it.collect(),
        ambiguous,
        wrappers_only: vec![],
    }
}

/// Programs that start another program and wait for it (or exec it): a match on one of these, when the
/// pattern does not name the wrapper itself, is a match on the command line it passes on.
pub(crate) const WRAPPERS: [&str; 27] = [
    "sh",
    "bash",
    "dash",
    "zsh",
    "ash",
    "ksh",
    "busybox",
    "timeout",
    "env",
    "nohup",
    "setsid",
    "nice",
    "ionice",
    "stdbuf",
    "taskset",
    "chrt",
    "tini",
    "dumb-init",
    "catatonit",
    "su",
    "sudo",
    "runuser",
    "su-exec",
    "gosu",
    "xargs",
    "flock",
    "time",
];

/// How well one process matches the pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum MatchKind {
    /// The pattern names the program itself: it matches comm, or its first match in the command line
    /// starts in argv[0] (`java -jar app.jar`, `/usr/bin/java … app.jar`).
    Program,
    /// The pattern matches only the arguments of a program that is not a wrapper (`python app.py`).
    Arguments,
    /// A wrapper whose arguments hold the pattern (`sh -c "java … app.jar"`, `timeout 60 java …`).
    Wrapper,
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Classifies a process whose comm or command line matched.
fn match_kind(re: &Regex, comm: &str, exe: Option<&str>, argv: &[String]) -> MatchKind {
    if re.is_match(comm) {
        return MatchKind::Program;
    }
    let line = argv.join(" ");
    let argv0_len = argv.first().map_or(0, String::len);
    if re.find(&line).is_some_and(|m| m.start() < argv0_len) {
        return MatchKind::Program;
    }
    let program = exe
        .map(base_name)
        .or_else(|| argv.first().map(|a| base_name(a)))
        .unwrap_or(comm);
    if WRAPPERS.contains(&program) || WRAPPERS.contains(&comm) {
        MatchKind::Wrapper
    } else {
        MatchKind::Arguments
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn search(selector: &Selector, proc_root: &Path) -> Result<Found, SearchError> {
        let (hz, _) = crate::probe::procfs::kernel_units();
        let boot_time = crate::probe::procfs::read_boot_time(proc_root).unwrap();
        Search::new(proc_root, StartClock { boot_time, hz }).find(selector, true)
    }

    fn pids_of(ids: &[TargetId]) -> Vec<u32> {
        ids.iter().map(|t| t.pid).collect()
    }

    fn argv(line: &str) -> Vec<String> {
        line.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn match_kinds_put_the_program_before_wrappers() {
        let re = Regex::new(r"java.*app\.jar").unwrap();
        let java = argv("/usr/lib/jvm/bin/java -Xmx1g -jar app.jar");
        assert_eq!(
            match_kind(&re, "java", Some("/usr/lib/jvm/bin/java"), &java),
            MatchKind::Program
        );
        let sh = vec!["sh".into(), "-c".into(), "java -jar app.jar".into()];
        assert_eq!(
            match_kind(&re, "sh", Some("/usr/bin/dash"), &sh),
            MatchKind::Wrapper,
            "comm sh is a wrapper even when /bin/sh links to dash"
        );
        let timeout = argv("timeout 60 java -jar app.jar");
        assert_eq!(
            match_kind(&re, "timeout", Some("/usr/bin/timeout"), &timeout),
            MatchKind::Wrapper
        );
        let re = Regex::new(r"app\.py").unwrap();
        let py = argv("python3 app.py");
        assert_eq!(
            match_kind(&re, "python3", Some("/usr/bin/python3.12"), &py),
            MatchKind::Arguments
        );
        // A pattern naming the shell itself makes the shell the program.
        let re = Regex::new("^bash$").unwrap();
        assert_eq!(
            match_kind(&re, "bash", Some("/usr/bin/bash"), &argv("bash")),
            MatchKind::Program
        );
    }

    #[test]
    fn identifies_self_and_not_a_missing_pid() {
        let me = identify(Path::new("/proc"), std::process::id()).unwrap();
        assert!(me.start_ticks > 0);
        assert!(identify(Path::new("/proc"), u32::MAX - 1).is_none());
    }

    #[test]
    fn pid_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.pid");
        let err = search(
            &Selector::Given(Selection::PidFile(path.clone())),
            Path::new("/proc"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("app.pid"), "{err}");
        std::fs::write(&path, "not-a-pid\n").unwrap();
        let err = search(
            &Selector::Given(Selection::PidFile(path.clone())),
            Path::new("/proc"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("does not hold a pid"), "{err}");
        std::fs::write(&path, format!("{}\n", std::process::id())).unwrap();
        let found = search(
            &Selector::Given(Selection::PidFile(path)),
            Path::new("/proc"),
        )
        .unwrap();
        assert_eq!(found.target.unwrap().pid, std::process::id());
    }

    #[test]
    fn pid_file_older_than_the_process_it_names_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.pid");
        std::fs::write(&path, format!("{}\n", std::process::id())).unwrap();
        // Written (last) an hour ago: this process, younger, got the pid afterwards.
        let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(an_hour_ago)
            .unwrap();
        let err = search(
            &Selector::Given(Selection::PidFile(path.clone())),
            Path::new("/proc"),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("after the file was last written"),
            "{err}"
        );
        // Rewritten now: trusted.
        std::fs::write(&path, format!("{}\n", std::process::id())).unwrap();
        let found = search(
            &Selector::Given(Selection::PidFile(path)),
            Path::new("/proc"),
        )
        .unwrap();
        assert_eq!(found.target.map(|t| t.pid), Some(std::process::id()));
    }

    #[test]
    fn regex_picks_oldest_and_never_itself() {
        let arg = format!("30.{}", std::process::id());
        let mut a = std::process::Command::new("sleep")
            .arg(&arg)
            .spawn()
            .unwrap();
        // Start times have clock-tick (10 ms) resolution: leave several ticks between the two.
        std::thread::sleep(std::time::Duration::from_millis(60));
        let mut b = std::process::Command::new("sleep")
            .arg(&arg)
            .spawn()
            .unwrap();
        // spawn() returns once exec has begun, before the new argv is mapped: wait until it shows.
        for _ in 0..200 {
            if !read_argv(Path::new("/proc"), b.id()).is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let re = Regex::new(&format!("^sleep {}$", regex::escape(&arg))).unwrap();
        let found = search(&Selector::Given(Selection::Process(re)), Path::new("/proc")).unwrap();
        let _ = (a.kill(), b.kill(), a.wait(), b.wait());
        assert_eq!(
            found.target.map(|t| t.pid),
            Some(a.id()),
            "{found:?} a={} b={}",
            a.id(),
            b.id()
        );
        assert_eq!(pids_of(&found.passed_over), vec![b.id()]);
        // The test binary's own cmdline does not hold the pattern, but a pattern matching it must not pick it.
        let own = Regex::new(&regex::escape(
            &read_comm(Path::new("/proc"), std::process::id()).unwrap(),
        ))
        .unwrap();
        let found = search(
            &Selector::Given(Selection::Process(own)),
            Path::new("/proc"),
        )
        .unwrap();
        assert_ne!(found.target.map(|t| t.pid), Some(std::process::id()));
    }
}
