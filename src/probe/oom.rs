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
//!   its whole count is new when the directory was changed after the previous target was last seen
//!   alive, else it is history.
//!
//! v1 cannot count a kill in a cgroup that was created and removed between two polls, nor tell a kill in a
//! sibling from the target's on v2 while the target is missing (both are counted then).
//!
//! A target in its own cgroup namespace (a Kubernetes container seen from a sidecar: `/proc/PID/cgroup`
//! reads `0::/../c1`, relative to vitals' own namespace) is reached only as the root of its own cgroup
//! mount, where no parent is visible; the parent is followed only when vitals sees absolute paths (it runs
//! in the host cgroup namespace with the host hierarchy at `--cgroup-root`). Otherwise only the container's
//! own counter counts: kills while attached, and the kill that ends it when the next poll (within 100 ms)
//! finds the cgroup still there. A removed cgroup's kept-open files answer ENODEV (checked on a real
//! kernel), and kills of instances vitals never attached to are not seen.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::cgroup::{flat_key, CgroupDirs};
use super::kept::KeptFile;
use super::{Observations, Probe, ProbeTarget, ReadErrorSink, TargetGone};

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
    /// When the counters were last read while the target was attached (alive): a cgroup directory changed
    /// after that holds only instances vitals has not seen.
    last_seen_alive: SystemTime,
    known: bool,
    buf: Vec<u8>,
}

impl Default for OomCounter {
    fn default() -> Self {
        OomCounter {
            own: None,
            parent: None,
            total: 0,
            last_seen_alive: SystemTime::now(),
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
        if attached {
            self.last_seen_alive = SystemTime::now();
        }
        let d = if attached {
            // A removed own cgroup while attached cannot happen for a live member; fall back to the parent.
            d_own.or(d_parent).unwrap_or(0)
        } else {
            // The parent's count includes the own cgroup's when both are readable.
            d_parent.or(d_own).unwrap_or(0)
        };
        self.total = self.total.saturating_add(d);
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
        let fresh = !v2 && self.own.is_some() && changed_after(&dir, self.last_seen_alive);
        // v2: earlier kills were counted from the parent; v1: a cgroup made after the previous target was
        // last seen alive holds only kills of instances vitals did not see.
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

/// As a probe: attaching follows the new instance's memory cgroup (after counting the kills of the gap), and
/// each tick adds the instance's own kills. Detaching keeps the count, which spans instances; between ticks
/// and while no target is attached the sampler calls [`OomCounter::poll`] itself.
impl Probe for OomCounter {
    fn name(&self) -> &'static str {
        "oom"
    }

    fn attach(&mut self, target: &ProbeTarget, _errors: &dyn ReadErrorSink) -> std::io::Result<()> {
        if let Some(dirs) = &target.cgroup {
            // Kills during the gap count from the parent before the new cgroup's baseline is taken.
            self.poll(false);
            self.follow(dirs);
        }
        Ok(())
    }

    fn sample(
        &mut self,
        obs: &mut Observations,
        _errors: &dyn ReadErrorSink,
    ) -> Result<(), TargetGone> {
        obs.new_oom_kills = self.poll(true);
        obs.oom_kills = self.total();
        Ok(())
    }

    fn detach(&mut self) {}
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

    fn oom_control(dir: &Path, kills: u64) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join("memory.oom_control"),
            format!("oom_kill_disable 0\nunder_oom 0\noom_kill {kills}\n"),
        )
        .unwrap();
    }

    fn v1(dir: &Path) -> CgroupDirs {
        CgroupDirs::V1 {
            memory: Some(dir.to_path_buf()),
            cpu: None,
            pids: None,
        }
    }

    /// Lets directory modification times move past the last poll (tmpfs keeps nanoseconds; the margin
    /// covers a coarse clock).
    fn later() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    #[test]
    fn v1_cgroup_made_after_the_target_was_last_seen_counts_its_kills_an_older_one_does_not() {
        let root = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            root.path().join("memory/a"),
            root.path().join("memory/b"),
            root.path().join("memory/c"),
        );
        oom_control(&a, 0);
        // c exists before the first target is seen alive: its kills are history.
        oom_control(&c, 5);
        later();
        let mut oom = OomCounter::default();
        oom.follow(&v1(&a));
        assert_eq!(oom.poll(true), 0);
        later();
        // The target exits (not killed); the sampler polls while it is missing, then a new instance runs
        // in a cgroup made since, where two earlier instances were killed before vitals looked.
        assert_eq!(oom.poll(false), 0);
        oom_control(&b, 2);
        assert_eq!(oom.poll(false), 0, "b is not followed yet");
        oom.follow(&v1(&b));
        assert_eq!(
            oom.total(),
            Some(2),
            "kills in a cgroup made while the target was missing"
        );
        later();
        assert_eq!(oom.poll(true), 0);
        later();
        // Next exit; the next instance is found in c, which is older than the last sighting.
        assert_eq!(oom.poll(false), 0);
        oom.follow(&v1(&c));
        assert_eq!(
            oom.total(),
            Some(2),
            "c's 5 kills predate the target: not counted"
        );
        oom_control(&c, 6);
        assert_eq!(oom.poll(true), 1);
        assert_eq!(oom.total(), Some(3));
    }

    /// A sidecar with its own cgroup namespace: /proc/PID/cgroup says `0::/../c1`, so the target's cgroup
    /// is only reached as the root of its own mount, where the pod's cgroup above it is not visible.
    #[test]
    fn cgroup_namespace_root_counts_only_what_the_own_counter_shows() {
        let proc_root = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        let pid = 4242u32;
        let pdir = proc_root.path().join(pid.to_string());
        let view = pdir.join("root/sys/fs/cgroup");
        std::fs::create_dir_all(&view).unwrap();
        std::fs::write(pdir.join("cgroup"), "0::/../c1\n").unwrap();
        std::fs::write(view.join("cgroup.procs"), format!("1\n{pid}\n")).unwrap();
        events(&view, 3);
        let roots = crate::probe::cgroup::CgroupRoots {
            proc_root: proc_root.path().to_path_buf(),
            host_root: host.path().to_path_buf(),
        };
        let dirs = crate::probe::cgroup::locate(&roots, pid).unwrap();
        assert!(matches!(&dirs, CgroupDirs::V2(d) if d == &view), "{dirs:?}");
        let mut oom = OomCounter::default();
        oom.follow(&dirs);
        assert!(
            oom.parent.is_none(),
            "the pod cgroup is out of the namespace's view"
        );
        assert_eq!(oom.total(), Some(0), "the 3 earlier kills are history");
        // Counted: a kill in the container's cgroup while attached, and the one that ends the target when
        // the cgroup is still readable at the exit.
        events(&view, 4);
        assert_eq!(oom.poll(true), 1);
        events(&view, 5);
        assert_eq!(oom.poll(false), 1);
        // Not counted: the restarted container's fresh cgroup already holds a kill of an instance vitals
        // never saw (no parent counter covers it), and the kernel answers ENODEV for a removed cgroup's
        // files, which a regular file cannot imitate here: such a kill is lost as well.
        let pid2 = pid + 1;
        let pdir2 = proc_root.path().join(pid2.to_string());
        let view2 = pdir2.join("root/sys/fs/cgroup");
        std::fs::create_dir_all(&view2).unwrap();
        std::fs::write(pdir2.join("cgroup"), "0::/../c2\n").unwrap();
        std::fs::write(view2.join("cgroup.procs"), format!("{pid2}\n")).unwrap();
        events(&view2, 1);
        oom.poll(false);
        oom.follow(&crate::probe::cgroup::locate(&roots, pid2).unwrap());
        assert_eq!(oom.total(), Some(2));
    }
}
