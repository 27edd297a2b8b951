//! OOM kills of the target counted across its restarts, from the kernel's per-cgroup `oom_kill` counters:
//! the target's own memory cgroup, and on cgroup v2 its parent, whose count is hierarchical and so survives
//! the container's cgroup being replaced (what Kubernetes does on a container restart).
//!
//! The rules, polled every tick and every liveness check (also while the target is missing):
//! - attached: the increase of the target's own cgroup counter; kills elsewhere under the parent (sibling
//!   containers) are not the target's;
//! - target missing (exited, not yet restarted): on v2 the increase of the parent's counter, which covers
//!   the old cgroup, a fresh cgroup of an instance that died before vitals attached, and a cgroup removed
//!   before it could be read; on v1 (no hierarchical counter) the increase of the last cgroup's counter,
//!   exact when instances share one cgroup;
//! - attaching to a cgroup first seen: on v2 its earlier kills are already in the parent's increase; on v1
//!   its whole count is new when the directory was created after vitals last looked, else it is history.
//!
//! v1 cannot count a kill in a cgroup that was created and removed between two polls, nor tell a kill in a
//! sibling from the target's on v2 while the target is missing (both are counted then).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::cgroup::{flat_key, CgroupDirs};
use super::kept::KeptFile;

/// One counter file, kept open, and its last value. The file is opened while the target lives (its
/// cgroup is often reached through /proc/PID/root, which vanishes with the process); the open file stays
/// readable until the cgroup itself is removed.
#[derive(Debug)]
struct Tracked {
    /// The cgroup directory's (device, inode): the same cgroup whatever path reached it.
    dir_id: (u64, u64),
    file: KeptFile,
    last: u64,
}

impl Tracked {
    fn open(dir: &Path, name: &str) -> Option<Tracked> {
        let meta = std::fs::metadata(dir).ok()?;
        Some(Tracked {
            dir_id: (meta.dev(), meta.ino()),
            file: KeptFile::open(dir.join(name)).ok()?,
            last: 0,
        })
    }

    fn read(&self, buf: &mut Vec<u8>) -> Option<u64> {
        let raw = self.file.read(buf).ok()?;
        flat_key(raw, "oom_kill").ok()
    }

    /// The increase since the last read (a counter that went down was reset: all of it is new).
    fn advance(&mut self, buf: &mut Vec<u8>) -> Option<u64> {
        let now = self.read(buf)?;
        let d = if now >= self.last {
            now - self.last
        } else {
            now
        };
        self.last = now;
        Some(d)
    }
}

/// Counts the OOM kills of the target; see the module documentation for what it can and cannot see.
#[derive(Debug)]
pub struct OomCounter {
    own: Option<Tracked>,
    /// v2 only: the parent's `memory.events`.
    parent: Option<Tracked>,
    total: u64,
    /// When the counters were last read: a cgroup directory changed after it is new to vitals.
    last_poll: SystemTime,
    known: bool,
    buf: Vec<u8>,
}

impl Default for OomCounter {
    fn default() -> Self {
        OomCounter {
            own: None,
            parent: None,
            total: 0,
            last_poll: SystemTime::now(),
            known: false,
            buf: Vec::new(),
        }
    }
}

/// The memory cgroup directory, its counter file's name, and whether it is v2.
fn counter_file(dirs: &CgroupDirs) -> Option<(PathBuf, &'static str, bool)> {
    match dirs {
        CgroupDirs::V2(d) => Some((d.clone(), "memory.events", true)),
        CgroupDirs::V1 { memory, .. } => memory
            .as_ref()
            .map(|d| (d.clone(), "memory.oom_control", false)),
    }
}

fn changed_after(dir: &Path, t: SystemTime) -> bool {
    std::fs::metadata(dir)
        .and_then(|m| m.modified())
        .is_ok_and(|m| m > t)
}

impl OomCounter {
    /// Kills counted so far; None until a memory cgroup of the target was found.
    pub fn total(&self) -> Option<u64> {
        self.known.then_some(self.total)
    }

    /// Reads the counters and returns the kills new since the last poll. `attached` says whether the
    /// target is running (only its own cgroup counts) or missing (the parent's increase counts on v2).
    pub fn poll(&mut self, attached: bool) -> u64 {
        let buf = &mut self.buf;
        let d_own = self.own.as_mut().and_then(|t| t.advance(buf));
        let d_parent = self.parent.as_mut().and_then(|t| t.advance(buf));
        self.last_poll = SystemTime::now();
        let d = if attached {
            // A removed own cgroup while attached cannot happen for a live member; fall back to the parent.
            d_own.or(d_parent).unwrap_or(0)
        } else {
            // The parent's count includes the own cgroup's when both are readable.
            d_parent.or(d_own).unwrap_or(0)
        };
        self.total += d;
        d
    }

    /// Starts following the memory cgroup of a newly attached target. Call [`OomCounter::poll`] with
    /// `attached = false` first, so kills during the gap are counted from the parent before the baseline
    /// moves.
    pub fn follow(&mut self, dirs: &CgroupDirs) {
        let Some((dir, name, v2)) = counter_file(dirs) else {
            return;
        };
        let Some(mut t) = Tracked::open(&dir, name) else {
            return;
        };
        self.known = true;
        if self.own.as_ref().is_some_and(|o| o.dir_id == t.dir_id) {
            return;
        }
        let now = t.read(&mut self.buf).unwrap_or(0);
        let fresh = !v2 && self.own.is_some() && changed_after(&dir, self.last_poll);
        // v2: earlier kills were counted from the parent; v1: a cgroup made since the last poll holds
        // only kills of instances vitals did not see yet.
        t.last = if fresh { 0 } else { now };
        if v2 {
            if let Some(mut p) = dir
                .parent()
                .and_then(|pd| Tracked::open(pd, "memory.events"))
            {
                let same_parent = self.parent.as_ref().is_some_and(|q| q.dir_id == p.dir_id);
                if !same_parent {
                    p.last = p.read(&mut self.buf).unwrap_or(0);
                    self.parent = Some(p);
                }
            }
        }
        self.own = Some(t);
        self.poll(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(dir: &Path, kills: u64) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join("memory.events"),
            format!("low 0\nhigh 0\nmax 3\noom 2\noom_kill {kills}\noom_group_kill 0\n"),
        )
        .unwrap();
    }

    #[test]
    fn v2_fresh_cgroups_counted_from_the_parent_siblings_ignored_while_attached() {
        let root = tempfile::tempdir().unwrap();
        let pod = root.path().join("kubepods/pod1");
        let (c1, c2, c3, sidecar) = (
            pod.join("c1"),
            pod.join("c2"),
            pod.join("c3"),
            pod.join("s"),
        );
        events(&pod, 4);
        events(&c1, 0);
        events(&sidecar, 4);
        let mut oom = OomCounter::default();
        assert_eq!(oom.total(), None);
        oom.follow(&CgroupDirs::V2(c1.clone()));
        assert_eq!(oom.total(), Some(0), "history before vitals is not counted");
        // A sibling's kill while the target runs is not the target's.
        events(&sidecar, 5);
        events(&pod, 5);
        assert_eq!(oom.poll(true), 0);
        // The target is killed; the exit is seen after the runtime removed its cgroup.
        std::fs::remove_dir_all(&c1).unwrap();
        events(&pod, 6);
        assert_eq!(oom.poll(false), 1);
        // The next instance dies in a fresh cgroup before vitals attaches, then one more is attached.
        events(&c2, 1);
        events(&pod, 7);
        assert_eq!(oom.poll(false), 1);
        events(&c3, 0);
        oom.poll(false);
        oom.follow(&CgroupDirs::V2(c3.clone()));
        // The attached one is killed too, seen at exit while its cgroup is still there.
        events(&c3, 1);
        events(&pod, 8);
        assert_eq!(oom.poll(false), 1);
        assert_eq!(oom.total(), Some(3));
    }

    #[test]
    fn v1_shared_cgroup_counts_kills_of_instances_never_attached() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("memory/svc");
        std::fs::create_dir_all(&dir).unwrap();
        let write = |n: u64| {
            std::fs::write(
                dir.join("memory.oom_control"),
                format!("oom_kill_disable 0\nunder_oom 0\noom_kill {n}\n"),
            )
            .unwrap()
        };
        write(2);
        let dirs = CgroupDirs::V1 {
            memory: Some(dir.clone()),
            cpu: None,
            pids: None,
        };
        let mut oom = OomCounter::default();
        oom.follow(&dirs);
        write(3);
        assert_eq!(oom.poll(false), 1, "the last kill, counted at exit");
        write(5);
        assert_eq!(
            oom.poll(false),
            2,
            "two instances killed before vitals attached"
        );
        oom.poll(false);
        oom.follow(&dirs);
        assert_eq!(oom.total(), Some(3));
    }
}
