//! What the benches that run real processes share: a sleeping process tree, and reading a process's CPU
//! time and resident set.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

/// A child started as the leader of its own process group; the whole group is killed when dropped.
pub struct Group(pub Child);

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the child's own process group (it was started as its leader).
        unsafe {
            libc::kill(-(self.0.id() as i32), libc::SIGKILL);
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` as the leader of a process group of its own.
pub fn group(cmd: &mut Command) -> Group {
    Group(cmd.process_group(0).spawn().expect("start a bench process"))
}

/// A shell whose `n` children sleep: a tree of n + 1 processes (with no children the shell execs into the
/// sleeping root itself). Returns once all are running.
pub fn sleeping_tree(n: usize) -> Group {
    let script = if n == 0 {
        "echo ready; exec sleep 3600".to_owned()
    } else {
        format!("i=0; while [ $i -lt {n} ]; do sleep 3600 & i=$((i+1)); done; echo ready; wait")
    };
    let mut tree = group(
        Command::new("sh")
            .args(["-c", &script])
            .stdout(Stdio::piped()),
    );
    let mut line = String::new();
    let _ = BufReader::new(tree.0.stdout.take().expect("stdout")).read_line(&mut line);
    tree
}

/// CPU time of every thread of `pid` so far (schedstat), ns.
pub fn cpu_ns(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// The resident set of a process, KiB (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
