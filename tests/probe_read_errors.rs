//! A /proc file of a live target that reads but does not parse is a read error, not an exit: the target
//! stays up, the metrics that file feeds are left out and `vitals_exporter_read_errors_total{source}`
//! grows. The kernel never serves a corrupt stat, so the target's files are copied from a real, running
//! child into a proc tree that vitals reads through `--proc-root`, and the copy's stat is corrupted there.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{promtool_check_metrics, TestChild, Vitals};

/// Copies what vitals reads of `/proc/PID` (and `/proc/stat` for the boot time) under `proc_root`. The fd
/// directory becomes empty files, one per open descriptor, which vitals counts the same way.
fn copy_proc_tree(pid: u32, proc_root: &Path) {
    let src = Path::new("/proc").join(pid.to_string());
    let dst = proc_root.join(pid.to_string());
    std::fs::create_dir_all(dst.join("fd")).unwrap();
    std::fs::copy("/proc/stat", proc_root.join("stat")).unwrap();
    for f in ["stat", "status", "io", "limits", "comm", "cmdline"] {
        std::fs::write(dst.join(f), std::fs::read(src.join(f)).unwrap()).unwrap();
    }
    for t in std::fs::read_dir(src.join("task")).unwrap().flatten() {
        let to = dst.join("task").join(t.file_name());
        std::fs::create_dir_all(&to).unwrap();
        std::fs::write(
            to.join("schedstat"),
            std::fs::read(t.path().join("schedstat")).unwrap(),
        )
        .unwrap();
    }
    for fd in std::fs::read_dir(src.join("fd")).unwrap().flatten() {
        std::fs::write(dst.join("fd").join(fd.file_name()), "").unwrap();
    }
}

#[test]
fn corrupt_stat_of_a_live_target_is_a_read_error_and_the_target_stays_up() {
    let child = TestChild::hold(&["--threads", "3"]);
    let pid = child.pid();
    let root = tempfile::tempdir().unwrap();
    let proc_root = root.path().join("proc");
    copy_proc_tree(pid, &proc_root);
    let stat_path = proc_root.join(pid.to_string()).join("stat");
    let good_stat = std::fs::read(&stat_path).unwrap();

    let v = Vitals::start(&[
        "--pid",
        &pid.to_string(),
        "--interval",
        "100ms",
        "--proc-root",
        proc_root.to_str().unwrap(),
        "--cgroup-root",
        root.path().join("no-cgroup").to_str().unwrap(),
    ]);
    let procfs_errors = |e: &common::Exposition| {
        e.get("vitals_exporter_read_errors_total", &[("source", "procfs")])
            .unwrap_or(0.0)
    };
    let e = v.wait_until(Duration::from_secs(10), "target sampled", |e| {
        e.get("vitals_target_up", &[]) == Some(1.0) && e.has("process_threads")
    });
    assert_eq!(e.get("process_threads", &[]), Some(3.0));
    let before = procfs_errors(&e);
    assert_eq!(before, 0.0, "a good stat is no read error");

    // Rewritten in place (same inode), as the kernel would regenerate it: vitals keeps the file open.
    std::fs::write(&stat_path, format!("{pid} (python3) S 1 2 not-a-number\n")).unwrap();
    let e = v.wait_until(Duration::from_secs(10), "stat read errors counted", |e| {
        procfs_errors(e) >= before + 3.0
    });
    // Every scrape for a second (about ten ticks at 100 ms) keeps the target up and leaves out exactly the
    // families stat feeds, while those of the other files stay.
    let until = Instant::now() + Duration::from_secs(1);
    let mut scrapes = 0;
    let mut last = procfs_errors(&e);
    while Instant::now() < until {
        let e = v.scrape();
        assert_eq!(e.get("vitals_target_up", &[]), Some(1.0), "{}", e.text);
        for from_stat in [
            "process_cpu_time_seconds_total",
            "process_memory_usage_bytes",
            "process_threads",
        ] {
            assert!(!e.has(from_stat), "{from_stat} must be left out, not 0");
        }
        assert_eq!(
            e.get("process_open_file_descriptors", &[]),
            Some(
                std::fs::read_dir(proc_root.join(pid.to_string()).join("fd"))
                    .unwrap()
                    .count() as f64
            )
        );
        assert!(e.has("process_context_switches_total"), "status still read");
        let now = procfs_errors(&e);
        assert!(now >= last, "the counter never goes back");
        last = now;
        scrapes += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(scrapes >= 5, "only {scrapes} scrapes in a second");
    promtool_check_metrics(&v.scrape().text).unwrap();

    // A good stat again: the same instance, sampled as before; no restart, no exit.
    std::fs::write(&stat_path, &good_stat).unwrap();
    let e = v.wait_until(Duration::from_secs(10), "stat read again", |e| {
        e.has("process_threads")
    });
    assert_eq!(e.get("process_threads", &[]), Some(3.0));
    assert_eq!(e.get("vitals_target_up", &[]), Some(1.0));
    assert_eq!(e.get("vitals_target_restarts_total", &[]), Some(0.0));
    let log = v.log.lock().unwrap().clone();
    assert!(
        !log.contains("target exited"),
        "a corrupt stat ended the target:\n{log}"
    );
    drop(child);
}
