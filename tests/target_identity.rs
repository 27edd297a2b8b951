//! Which process is the target and what it is: a main thread that called pthread_exit(), wrappers that
//! merely mention the pattern, and a target that exec()s another program.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{require_tool, Vitals};

/// Kills and reaps a child on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Compiles a C file from tests/children into `dir`.
fn compile_c(name: &str, dir: &Path) -> std::path::PathBuf {
    let gcc = require_tool("gcc", "apt-get install -y gcc");
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/children")
        .join(name);
    let bin = dir.join(name.trim_end_matches(".c"));
    let out = Command::new(gcc)
        .args(["-O1", "-pthread", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("run gcc");
    assert!(
        out.status.success(),
        "gcc {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

fn stat_state(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?.1.trim_start().chars().next()
}

#[test]
fn main_thread_pthread_exit_with_running_workers_is_alive() {
    let dir = tempfile::tempdir().unwrap();
    let bin = compile_c("main_thread_exits.c", dir.path());
    let mut child = Command::new(&bin)
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("start main_thread_exits");
    let out = child.stdout.take().expect("stdout");
    let child = Reaped(child);
    let pid = child.0.id();
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    // Ground truth: the kernel shows the main thread as a zombie while the group lives on.
    let deadline = Instant::now() + Duration::from_secs(5);
    while stat_state(pid) != Some('Z') {
        assert!(
            Instant::now() < deadline,
            "main thread never became a zombie"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let v = Vitals::start(&["--pid", &pid.to_string(), "--interval", "100ms"]);
    let pid_label = pid.to_string();
    let e = v.wait_until(Duration::from_secs(5), "attached", |e| {
        e.find("vitals_target_info", &[("pid", &pid_label)])
            .is_some()
            && e.has("process_memory_usage_bytes")
    });
    // Several intervals later it is still up.
    std::thread::sleep(Duration::from_millis(500));
    let e2 = v.scrape();
    assert_eq!(
        e2.get("vitals_target_up", &[]),
        Some(1.0),
        "declared exited"
    );
    // Three workers and the zombie main thread, which the kernel counts until the group ends.
    assert_eq!(e.get("process_threads", &[]), Some(4.0));
    // 3 × 32 MiB written by the workers: the zombie main thread's own stat says 0, a worker's says >= 96 MiB.
    let rss = e2.get("process_memory_usage_bytes", &[]).unwrap();
    assert!(rss >= 96.0 * 1048576.0, "rss {rss}");
    drop(child);
    v.wait_until(Duration::from_secs(5), "down once the group is gone", |e| {
        e.get("vitals_target_up", &[]) == Some(0.0)
    });
}
