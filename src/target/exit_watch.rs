//! Knowing when the attached target instance ends. Where the kernel has pidfds (Linux 5.3+) the exit is an
//! event: the pidfd becomes readable when the whole thread group has exited, and the sampler waits on it
//! through the async runtime with no timer. Otherwise (an older kernel, a seccomp filter, a proc root that
//! is not this pid namespace's procfs, no async runtime) the sampler polls [`ExitWatch::polled_alive`]
//! every 100 ms: one read of the kept stat file.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use tokio::io::unix::AsyncFd;

use super::identify;
use crate::probe::kept::{is_gone, KeptFile};
use crate::probe::procfs::parse_stat;

/// How the end of one target instance is noticed: its pidfd when there is one, and its kept stat file.
#[derive(Debug)]
pub struct ExitWatch {
    event: Option<ExitEvent>,
    stat: KeptFile,
    start_ticks: u64,
    buf: Vec<u8>,
}

/// The pidfd of a target instance, registered with the async runtime; cloned into the wait.
#[derive(Debug, Clone)]
pub struct ExitEvent {
    fd: Arc<AsyncFd<OwnedFd>>,
}

/// True when `proc_root` is the procfs of vitals' own pid namespace, so its pids are the pids
/// `pidfd_open` takes: its `self` link names vitals' own pid. A fixture tree, or the procfs of another
/// namespace, does not.
fn is_own_procfs(proc_root: &Path) -> bool {
    std::fs::read_link(proc_root.join("self"))
        .ok()
        .and_then(|l| l.to_str().and_then(|s| s.parse::<u32>().ok()))
        == Some(std::process::id())
}

impl ExitEvent {
    /// Opens a pidfd for `pid` and checks, after opening, that the pid still belongs to the instance that
    /// started at `start_ticks` (so the pidfd refers to it, not to a process that reused the pid). None
    /// when a pidfd cannot be used here.
    fn open(proc_root: &Path, pid: u32, start_ticks: u64) -> Option<ExitEvent> {
        if !is_own_procfs(proc_root) {
            return None;
        }
        tokio::runtime::Handle::try_current().ok()?;
        let raw_pid = libc::pid_t::try_from(pid).ok()?;
        // SAFETY: pidfd_open takes a pid and a flags word and returns a new descriptor or -1; no memory is
        // passed. The descriptor is close-on-exec by definition of the call.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, raw_pid, 0) };
        let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
        // SAFETY: `fd` was just returned by the kernel and is owned by nothing else.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        if identify(proc_root, pid).map(|id| id.start_ticks) != Some(start_ticks) {
            // The instance ended (or the pid was reused) between the search and the open.
            return None;
        }
        // SAFETY: an OwnedFd's descriptor is valid and open and stays the same until the AsyncFd that owns
        // it is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) }
            .ok()?;
        Some(ExitEvent { fd: Arc::new(fd) })
    }

    /// Resolves when the instance has exited (its pidfd became readable). An error means the runtime can
    /// no longer wait on it; the caller falls back to polling.
    pub async fn exited(self) -> io::Result<()> {
        // The pidfd stays readable once the process has exited; nothing is read from it.
        self.fd.readable().await.map(drop)
    }
}

impl ExitWatch {
    /// Watches the instance of `pid` that started at `start_ticks`: opens its stat file (an error when the
    /// process is already gone) and, where possible, a pidfd.
    pub fn open(proc_root: &Path, pid: u32, start_ticks: u64) -> io::Result<ExitWatch> {
        let stat = KeptFile::open(proc_root.join(pid.to_string()).join("stat"))?;
        Ok(ExitWatch {
            event: ExitEvent::open(proc_root, pid, start_ticks),
            stat,
            start_ticks,
            buf: Vec::with_capacity(512),
        })
    }

    /// The event to wait on; None when the exit must be polled.
    pub fn event(&self) -> Option<ExitEvent> {
        self.event.clone()
    }

    /// Gives up the event (waiting on it failed); the exit is polled from now on.
    pub fn poll_from_now_on(&mut self) {
        self.event = None;
    }

    /// One read of the kept stat file: false when the instance is gone (ENOENT/ESRCH, a zombie, or the pid
    /// now shows another start time). Content that does not parse says nothing about liveness, so the
    /// instance counts as alive (the tick counts that read error).
    pub fn polled_alive(&mut self) -> bool {
        match self.stat.read(&mut self.buf) {
            Ok(raw) => match parse_stat(raw) {
                Ok(st) => st.group_alive() && st.starttime == self.start_ticks,
                Err(_) => true,
            },
            Err(e) => !is_gone(&e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn start_ticks(pid: u32) -> u64 {
        identify(Path::new("/proc"), pid).unwrap().start_ticks
    }

    #[tokio::test(flavor = "current_thread")]
    async fn resolves_when_a_child_exits_and_not_before() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut w = ExitWatch::open(Path::new("/proc"), pid, start_ticks(pid)).unwrap();
        assert!(w.polled_alive());
        let waiting = tokio::spawn(w.event().expect("pidfd").exited());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiting.is_finished(), "resolved while the child runs");
        child.kill().unwrap();
        // A loaded machine may delay the wakeup; 10 s is far beyond any scheduling delay.
        tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("exit seen")
            .unwrap()
            .unwrap();
        child.wait().unwrap();
        assert!(!w.polled_alive(), "reaped: the kept stat answers ESRCH");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn refuses_another_instance_and_a_fixture_root() {
        let pid = std::process::id();
        let mine = start_ticks(pid);
        assert!(ExitEvent::open(Path::new("/proc"), pid, mine + 1).is_none());
        assert!(ExitEvent::open(Path::new("/proc"), pid, mine).is_some());
        let mut other = ExitWatch::open(Path::new("/proc"), pid, mine + 1).unwrap();
        assert!(
            !other.polled_alive(),
            "another start time is another instance"
        );
        let fixture = tempfile::tempdir().unwrap();
        assert!(ExitEvent::open(fixture.path(), pid, mine).is_none());
    }

    #[test]
    fn without_a_runtime_the_exit_is_polled_and_a_corrupt_stat_is_alive() {
        let pid = std::process::id();
        assert!(ExitWatch::open(Path::new("/proc"), pid, start_ticks(pid))
            .unwrap()
            .event()
            .is_none());
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("4242");
        std::fs::create_dir_all(&dir).unwrap();
        let good = std::fs::read(format!("/proc/{pid}/stat")).unwrap();
        std::fs::write(dir.join("stat"), &good).unwrap();
        let mut w = ExitWatch::open(root.path(), 4242, start_ticks(pid)).unwrap();
        assert!(w.event().is_none(), "a fixture tree gets no pidfd");
        assert!(w.polled_alive());
        std::fs::write(dir.join("stat"), b"4242 (x) S garbage").unwrap();
        assert!(w.polled_alive(), "unparsable is a read error, not an exit");
        let zombie = String::from_utf8(good).unwrap();
        let close = zombie.rfind(')').unwrap();
        let mut fields: Vec<&str> = zombie[close + 2..].split(' ').collect();
        fields[0] = "Z";
        fields[17] = "1";
        std::fs::write(
            dir.join("stat"),
            format!("{} {}", &zombie[..=close], fields.join(" ")),
        )
        .unwrap();
        assert!(!w.polled_alive(), "a zombie with one thread has exited");
    }
}
