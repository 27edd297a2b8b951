//! A file vitals cannot read is left out and counted, never exposed as 0 and never a failed scrape. The
//! target here is a procfs tree built for the test, since root can read every real /proc file.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{promtool_check_metrics, Vitals};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/procfs")
            .join(name),
    )
    .unwrap()
}

#[test]
fn unreadable_io_and_missing_cgroup_are_left_out_and_counted() {
    let root = tempfile::tempdir().unwrap();
    let proc_root = root.path().join("proc");
    let pid_dir = proc_root.join("4242");
    std::fs::create_dir_all(pid_dir.join("fd")).unwrap();
    std::fs::create_dir_all(pid_dir.join("task/4242")).unwrap();
    std::fs::write(proc_root.join("stat"), "cpu  1 2 3 4\nbtime 1700000000\n").unwrap();
    std::fs::write(pid_dir.join("stat"), fixture("stat")).unwrap();
    std::fs::write(pid_dir.join("status"), fixture("status")).unwrap();
    std::fs::write(pid_dir.join("limits"), fixture("limits")).unwrap();
    std::fs::write(pid_dir.join("comm"), "java\n").unwrap();
    std::fs::write(pid_dir.join("cmdline"), "java\0-jar\0app.jar\0").unwrap();
    std::fs::write(pid_dir.join("task/4242/schedstat"), fixture("schedstat")).unwrap();
    for fd in 0..5 {
        std::fs::write(pid_dir.join("fd").join(fd.to_string()), "").unwrap();
    }
    // A directory where a file should be: open succeeds, every read fails (EISDIR), like EACCES would.
    std::fs::create_dir_all(pid_dir.join("io")).unwrap();
    // A membership file naming a cgroup that does not exist anywhere.
    std::fs::write(pid_dir.join("cgroup"), "0::/gone.slice\n").unwrap();

    let v = Vitals::start(&[
        "--pid",
        "4242",
        "--interval",
        "100ms",
        "--proc-root",
        proc_root.to_str().unwrap(),
        "--cgroup-root",
        root.path().join("no-cgroup").to_str().unwrap(),
    ]);
    let e = v.wait_until(Duration::from_secs(5), "io errors counted", |e| {
        e.get(
            "vitals_exporter_read_errors_total",
            &[("source", "proc_io")],
        )
        .unwrap_or(0.0)
            >= 1.0
    });
    assert_eq!(e.get("vitals_target_up", &[]), Some(1.0));
    assert!(
        !e.has("process_disk_io_bytes_total"),
        "unreadable io must be left out, not 0"
    );
    assert_eq!(e.get("process_open_file_descriptors", &[]), Some(5.0));
    assert_eq!(e.get("process_threads", &[]), Some(12.0));
    assert_eq!(
        e.get("vitals_process_swap_bytes", &[]),
        Some(2048.0 * 1024.0)
    );
    assert_eq!(e.get("vitals_process_max_fds", &[]), Some(1024.0));
    assert_eq!(
        e.get("vitals_process_scheduler_wait_seconds_total", &[]),
        Some(0.035)
    );
    assert_eq!(
        e.get("vitals_process_start_time_seconds", &[]),
        Some(1_700_000_000.0 + 884213.0 / 100.0)
    );
    assert!(
        !e.has("vitals_cgroup_memory_usage_bytes"),
        "no cgroup: container metrics left out"
    );
    assert!(
        e.get("vitals_exporter_read_errors_total", &[("source", "cgroup")])
            .unwrap()
            >= 1.0
    );
    promtool_check_metrics(&e.text).unwrap();
}
