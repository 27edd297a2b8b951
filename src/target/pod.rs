//! Zero-configuration pod mode: with no target selected, in a pod whose containers share one process
//! namespace (`shareProcessNamespace: true`, so pid 1 is the pod's `pause` process), every other
//! container's process tree is a target, named after the program it runs.
//!
//! How a container is told apart, from what a shared pid namespace shows:
//! - A container's first process is started into the namespace from outside it (by the container
//!   runtime), so its parent pid reads 0. So are pid 1 (the pause process) and `kubectl exec` sessions.
//!   Nothing inside the namespace ever becomes a parent-0 process later (an orphan is reparented to pid 1
//!   or a subreaper), so a process is classified once, when first listed: a scan every 100 ms reads the
//!   `stat` of new pids only.
//! - vitals' own container is left out: the parent-0 process vitals descends from (vitals itself, or the
//!   init that started it).
//! - An exec session joins the cgroup of the container it runs in: of the parent-0 processes that share a
//!   cgroup, the oldest is the container, the others are not (where every process shares the pause
//!   process's cgroup, as outside Kubernetes, cgroups tell nothing and each counts).
//! - The name is the program's: the root's `comm`, or, when the root is a wrapper (`sh -c`, `tini`, …),
//!   that of the first process it starts that is not one. A container that restarts comes back under the
//!   same name (a new root of the same program takes the slot its predecessor left), which counts as a
//!   restart of that target.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{identify, TargetId, WRAPPERS};
use crate::probe::procfs::{list_pids, parse_stat, read_comm};

/// What pid 1 runs in a Kubernetes pod with a shared process namespace (the `pause` image's program).
pub const SANDBOX_PROGRAMS: [&str; 1] = ["pause"];

/// At most this many containers become targets; further ones are logged and left out.
pub const MAX_CONTAINERS: usize = 16;

/// Programs that run in a container's first process before it execs the entrypoint (the runtime's own
/// init, or the tools a test uses to enter a namespace): never a name.
const BEFORE_EXEC: [&str; 5] = [
    "runc:[2:INIT]",
    "runc:[1:CHILD]",
    "runc",
    "nsenter",
    "unshare",
];

/// A root called after a wrapper is named after its program only once it was first seen this long ago (a
/// child before that may be a setup command), and after the wrapper itself when it has none then: its
/// program is the wrapper itself (a shell loop, say).
const NAME_WAIT: Duration = Duration::from_secs(2);

/// How deep the search for a wrapper's program goes (`tini` → `sh -c` → `python`).
const WRAPPER_DEPTH: usize = 4;

/// The program pid 1 runs when this is a pod sandbox that vitals shares (and vitals is not pid 1 itself).
pub fn sandbox(proc_root: &Path) -> Option<String> {
    if std::process::id() == 1 {
        return None;
    }
    let comm = read_comm(proc_root, 1).ok()?;
    SANDBOX_PROGRAMS.contains(&comm.as_str()).then_some(comm)
}

/// One container target: its name and the root process the scan has assigned to it (none while the
/// container is down). The target's sampler reads it through [`super::Selector::Container`].
#[derive(Debug)]
pub struct ContainerSlot {
    name: String,
    program: String,
    root: Mutex<Option<TargetId>>,
}

impl ContainerSlot {
    /// The target name (`program`, or `program-2` for a second container running the same program).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The container's current root process.
    pub fn root(&self) -> Option<TargetId> {
        *self.root.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_root(&self, id: Option<TargetId>) {
        *self.root.lock().unwrap_or_else(|p| p.into_inner()) = id;
    }
}

/// What the scan knows of a listed process.
#[derive(Debug, Clone)]
enum Known {
    /// Not a container's root (or unreadable, or vitals' own container).
    Other,
    /// A parent-0 process other than pid 1.
    Root(Root),
}

#[derive(Debug, Clone)]
struct Root {
    id: TargetId,
    /// `/proc/PID/cgroup` as read when first seen.
    cgroup: String,
    /// The program it is named after, once known.
    program: Option<String>,
    first_seen: Instant,
}

/// The scan for containers' roots, with what it keeps between scans.
pub struct PodScan {
    proc_root: PathBuf,
    /// The parent-0 process vitals descends from.
    own_root: Option<u32>,
    /// pid 1's cgroup: roots in it are not told apart by cgroup.
    sandbox_cgroup: String,
    known: HashMap<u32, Known>,
    listing: Vec<u32>,
    slots: Vec<Arc<ContainerSlot>>,
    /// Names left out because [`MAX_CONTAINERS`] were taken (logged once each).
    refused: Vec<String>,
}

impl PodScan {
    /// A scan under `proc_root`.
    pub fn new(proc_root: &Path) -> PodScan {
        PodScan {
            proc_root: proc_root.to_path_buf(),
            own_root: own_root(proc_root, std::process::id()),
            sandbox_cgroup: read_cgroup(proc_root, 1),
            known: HashMap::new(),
            listing: Vec::new(),
            slots: Vec::new(),
            refused: Vec::new(),
        }
    }

    /// Lists the processes, classifies new ones, and assigns container roots to slots: a root of a program
    /// whose slot is empty (its container restarted) takes it; any other gets a new slot, which is returned
    /// so its target can be started.
    pub fn scan(&mut self) -> std::io::Result<Vec<Arc<ContainerSlot>>> {
        list_pids(&self.proc_root, &mut self.listing)?;
        let listing = &self.listing;
        self.known.retain(|p, _| listing.binary_search(p).is_ok());
        let now = Instant::now();
        for &pid in &self.listing {
            if self.known.contains_key(&pid) {
                continue;
            }
            let known = self.classify(pid, now);
            self.known.insert(pid, known);
        }
        // Name the roots that have no name yet (their program may not have exec'd when first seen).
        let unnamed: Vec<u32> = self
            .known
            .iter()
            .filter_map(|(p, k)| match k {
                Known::Root(r) if r.program.is_none() => Some(*p),
                _ => None,
            })
            .collect();
        for pid in unnamed {
            let name = self.program_of(pid, now);
            if let (Some(Known::Root(r)), Some(_)) = (self.known.get_mut(&pid), &name) {
                // The runtime moves a container's first process into its cgroup before it execs the
                // entrypoint (so does `kubectl exec`): the cgroup that counts is the one it has by now.
                r.cgroup = read_cgroup(&self.proc_root, pid);
                r.program = name;
            }
        }
        // Empty the slots whose root is gone.
        for slot in &self.slots {
            if let Some(id) = slot.root() {
                let alive = matches!(self.known.get(&id.pid), Some(Known::Root(r)) if r.id == id)
                    && identify(&self.proc_root, id.pid).is_some_and(|i| i == id);
                if !alive {
                    slot.set_root(None);
                }
            }
        }
        let mut roots: Vec<Root> = self
            .known
            .values()
            .filter_map(|k| match k {
                Known::Root(r) if r.program.is_some() => Some(r.clone()),
                _ => None,
            })
            .collect();
        roots.sort_by_key(|r| (r.id.start_ticks, r.id.pid));
        let mut created = Vec::new();
        let mut cgroups_taken: Vec<&str> = Vec::new();
        for r in &roots {
            // An exec session (or any later parent-0 process) in a container's cgroup is not a container.
            if !r.cgroup.is_empty() && r.cgroup != self.sandbox_cgroup {
                if cgroups_taken.contains(&r.cgroup.as_str()) {
                    continue;
                }
                cgroups_taken.push(&r.cgroup);
            }
            if self.slots.iter().any(|s| s.root() == Some(r.id)) {
                continue;
            }
            let program = r.program.clone().unwrap_or_default();
            if let Some(free) = self
                .slots
                .iter()
                .find(|s| s.program == program && s.root().is_none())
            {
                tracing::info!(target = %free.name, pid = r.id.pid, "container's process found");
                free.set_root(Some(r.id));
                continue;
            }
            if self.slots.len() >= MAX_CONTAINERS {
                if !self.refused.contains(&program) && self.refused.len() < MAX_CONTAINERS {
                    tracing::warn!(program = %program, pid = r.id.pid, max = MAX_CONTAINERS,
                        "more containers than vitals watches in a pod; this one is left out (name targets with --target to choose)");
                    self.refused.push(program);
                }
                continue;
            }
            let same = self.slots.iter().filter(|s| s.program == program).count();
            let name = if same == 0 {
                program.clone()
            } else {
                format!("{program}-{}", same + 1)
            };
            let slot = Arc::new(ContainerSlot {
                name,
                program,
                root: Mutex::new(Some(r.id)),
            });
            tracing::info!(target = %slot.name, pid = r.id.pid, "watching a container of the pod");
            self.slots.push(slot.clone());
            created.push(slot);
        }
        Ok(created)
    }

    fn classify(&self, pid: u32, now: Instant) -> Known {
        if pid == 1 || Some(pid) == self.own_root {
            return Known::Other;
        }
        let mut buf = Vec::new();
        let path = self.proc_root.join(pid.to_string()).join("stat");
        let Ok(raw) = crate::probe::kept::read_whole(&path, &mut buf) else {
            return Known::Other;
        };
        let Ok(stat) = parse_stat(raw) else {
            return Known::Other;
        };
        // Kernel threads (parent 0 on a host's namespace) have no memory of their own.
        if stat.ppid != 0 || !stat.group_alive() || stat.vsize == 0 {
            return Known::Other;
        }
        Known::Root(Root {
            id: TargetId {
                pid,
                start_ticks: stat.starttime,
            },
            cgroup: read_cgroup(&self.proc_root, pid),
            program: None,
            first_seen: now,
        })
    }

    /// The program a root is named after, or None while it may still exec into one.
    fn program_of(&self, pid: u32, now: Instant) -> Option<String> {
        let first_seen = match self.known.get(&pid) {
            Some(Known::Root(r)) => r.first_seen,
            _ => return None,
        };
        let waited = now.saturating_duration_since(first_seen) >= NAME_WAIT;
        let comm = read_comm(&self.proc_root, pid).ok()?;
        if BEFORE_EXEC.contains(&comm.as_str()) {
            return waited.then_some(comm);
        }
        if !WRAPPERS.contains(&comm.as_str()) {
            return Some(comm);
        }
        // A wrapper: the first program down its first children that is not one, once the wrapper has run
        // for NAME_WAIT. Before that a child may be a setup command of an entrypoint script
        // (`sh -c "mount ... && exec app"`: `mount` lives a few ms, then the root execs the app and is
        // named after it above).
        if !waited {
            return None;
        }
        let mut at = pid;
        for _ in 0..WRAPPER_DEPTH {
            let Some(child) = first_child(&self.proc_root, at) else {
                break;
            };
            let c = read_comm(&self.proc_root, child).unwrap_or_default();
            if !c.is_empty()
                && !WRAPPERS.contains(&c.as_str())
                && !BEFORE_EXEC.contains(&c.as_str())
            {
                return Some(c);
            }
            at = child;
        }
        Some(comm)
    }
}

/// The parent-0 process `pid` descends from (itself when its parent is 0; None when it is pid 1's child
/// or cannot be read).
fn own_root(proc_root: &Path, pid: u32) -> Option<u32> {
    let mut at = pid;
    for _ in 0..64 {
        let raw = std::fs::read(proc_root.join(at.to_string()).join("stat")).ok()?;
        let ppid = parse_stat(&raw).ok()?.ppid;
        match ppid {
            0 => return Some(at),
            1 => return None,
            p => at = p,
        }
    }
    None
}

/// `/proc/PID/cgroup`, or empty when unreadable.
fn read_cgroup(proc_root: &Path, pid: u32) -> String {
    std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")).unwrap_or_default()
}

/// The oldest child of `pid` (its main thread's `children` list, in creation order).
fn first_child(proc_root: &Path, pid: u32) -> Option<u32> {
    let path = proc_root
        .join(pid.to_string())
        .join("task")
        .join(pid.to_string())
        .join("children");
    let text = std::fs::read_to_string(path).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vitals_own_root_is_its_parent_zero_ancestor_or_none() {
        // Outside a pod vitals descends from this machine's init (pid 1): no own root to leave out.
        let me = std::process::id();
        let root = own_root(Path::new("/proc"), me);
        if let Some(r) = root {
            let raw = std::fs::read(format!("/proc/{r}/stat")).unwrap();
            assert_eq!(parse_stat(&raw).unwrap().ppid, 0);
        }
    }

    #[test]
    fn a_scan_outside_a_pod_names_nothing_but_parent_zero_processes() {
        // On a host (or in a container whose init is pid 1), pid 1 is left out and no other process has
        // parent 0 unless something entered the namespace from outside: every slot found must be one.
        let mut scan = PodScan::new(Path::new("/proc"));
        let slots = scan.scan().unwrap();
        for s in &slots {
            let id = s.root().unwrap();
            assert_ne!(id.pid, 1);
            let raw = std::fs::read(format!("/proc/{}/stat", id.pid)).unwrap();
            assert_eq!(parse_stat(&raw).unwrap().ppid, 0, "{s:?}");
        }
        // A second scan creates nothing new for the same processes.
        assert!(scan.scan().unwrap().is_empty());
    }
}
