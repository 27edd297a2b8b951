//! OOM kills and restarts of a crash-looping target in real memory cgroups: six instances of 0.4 s at a
//! 1 s interval, half of them OOM-killed by the kernel, in one shared cgroup and in a fresh cgroup per
//! instance. Ground truth: the supervisor's waitpid statuses and the kernel's oom_kill counters.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{child_script, Vitals};

/// Creating memory cgroups and moving processes into them needs root and a writable cgroup mount.
fn require_cgroup_admin(layout: &str) {
    let v1 = std::path::Path::new("/sys/fs/cgroup/memory");
    let root = if v1.is_dir() {
        v1.to_path_buf()
    } else {
        std::path::PathBuf::from("/sys/fs/cgroup")
    };
    let probe = root.join(format!("vitals-test-probe-{}-{layout}", std::process::id()));
    if let Err(e) = std::fs::create_dir(&probe) {
        panic!(
            "this test makes real memory cgroups and needs root with a writable {} ({e}); run it as root \
             on a machine or container with its cgroup mount writable (.ci/run does)",
            root.display()
        );
    }
    let _ = std::fs::remove_dir(&probe);
}

fn run_crashloop(layout: &str) {
    require_cgroup_admin(layout);
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("svc.pid");
    let v = Vitals::start(&["--pid-file", pidfile.to_str().unwrap(), "--interval", "1s"]);
    let out = Command::new("python3")
        .arg(child_script("crashloop.py"))
        .args(["--pidfile", pidfile.to_str().unwrap()])
        .args(["--instances", "6", "--life", "0.4", "--layout", layout])
        .args(["--remove-after", "0.3"])
        .output()
        .expect("run crashloop.py");
    assert!(
        out.status.success(),
        "crashloop.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let truth: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ground truth JSON");
    let killed = truth["oom_killed"].as_u64().unwrap() as f64;
    let instances = truth["instances"].as_array().unwrap().len() as f64;
    // The truth itself: the kernel counted exactly the instances that died of SIGKILL.
    assert_eq!(killed, 3.0, "{truth}");
    assert_eq!(truth["oom_kill_total"].as_u64(), Some(3), "{truth}");
    // The supervisor waited 0.5 s after the last exit; one more interval lets a tick publish it.
    let e = v.wait_until(Duration::from_secs(3), "all exits counted", |e| {
        e.sum("vitals_target_exits_total", &[]) >= instances
    });
    let log = v.log.lock().unwrap().clone();
    let ctx = format!("{layout}: truth {truth}\nlog:\n{log}");
    assert_eq!(
        e.get("vitals_target_restarts_total", &[]),
        Some(instances - 1.0),
        "{ctx}"
    );
    assert_eq!(
        e.get("vitals_cgroup_memory_oom_kills_total", &[]),
        Some(killed),
        "{ctx}"
    );
    assert_eq!(
        e.get("vitals_target_exits_total", &[("reason", "oom_kill")]),
        Some(killed),
        "{ctx}"
    );
    assert_eq!(
        e.get("vitals_target_exits_total", &[("reason", "other")]),
        Some(instances - killed),
        "{ctx}"
    );
}

#[test]
fn crash_loop_in_a_shared_cgroup_counts_every_restart_and_oom_kill() {
    run_crashloop("shared");
}

#[test]
fn crash_loop_in_fresh_cgroups_counts_every_restart_and_oom_kill() {
    run_crashloop("fresh");
}
