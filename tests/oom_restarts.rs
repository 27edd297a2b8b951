//! OOM kills and restarts of a crash-looping target in real memory cgroups: six instances of 0.8 s at a
//! 1 s interval (each shorter than the interval, yet 8 liveness checks long: a restart is missed only if
//! the 100 ms watch stalls for 0.8 s), half of them OOM-killed by the kernel, in one shared cgroup and in a fresh cgroup per
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
        .args(["--instances", "6", "--life", "0.8", "--layout", layout])
        // A removed cgroup's counter reads ENODEV: 0.3 s is 3 watch periods for vitals to see the exit.
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

fn procfs_fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/procfs")
            .join(name),
    )
    .unwrap()
}

fn memory_events(dir: &std::path::Path, kills: u64) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("memory.events"),
        format!("low 0\nhigh 0\nmax 9\noom {kills}\noom_kill {kills}\noom_group_kill 0\n"),
    )
    .unwrap();
}

/// Kubernetes on cgroup v2, as a fixture tree (this machine is v1): each container restart gets a fresh
/// cgroup under the pod's, the old one is removed, and the pod's memory.events counts kills
/// hierarchically. Kills of the target count, once each, also one in an instance vitals never saw; a
/// sibling container's kill while the target runs does not.
#[test]
fn v2_restarts_in_fresh_cgroups_are_counted_from_the_pod_cgroup() {
    let root = tempfile::tempdir().unwrap();
    let proc_root = root.path().join("proc");
    let pod = root.path().join("cgroup/kubepods/pod1");
    let pidfile = root.path().join("app.pid");
    std::fs::create_dir_all(&proc_root).unwrap();
    std::fs::write(proc_root.join("stat"), "cpu  1 2 3 4\nbtime 1700000000\n").unwrap();
    let stat = String::from_utf8(procfs_fixture("stat")).unwrap();
    let start_process = |pid: u32, container: &str| {
        let dir = proc_root.join(pid.to_string());
        std::fs::create_dir_all(dir.join("fd")).unwrap();
        std::fs::write(dir.join("stat"), &stat).unwrap();
        std::fs::write(dir.join("status"), procfs_fixture("status")).unwrap();
        std::fs::write(dir.join("comm"), "app\n").unwrap();
        std::fs::write(dir.join("cmdline"), "app\0").unwrap();
        std::fs::write(
            dir.join("cgroup"),
            format!("0::/kubepods/pod1/{container}\n"),
        )
        .unwrap();
        let cg = pod.join(container);
        memory_events(&cg, 0);
        std::fs::write(cg.join("cgroup.procs"), format!("{pid}\n")).unwrap();
        std::fs::write(cg.join("memory.current"), "1000000\n").unwrap();
    };
    // The kernel marks the process a zombie; the runtime then removes its cgroup.
    let oom_kill = |pid: u32, container: &str, pod_kills: u64| {
        memory_events(&pod.join(container), 1);
        memory_events(&pod, pod_kills);
        let dir = proc_root.join(pid.to_string());
        // A zombie whose threads are all gone: state Z, one thread.
        let zombie = stat
            .replacen(") S ", ") Z ", 1)
            .replacen(" 20 0 12 0 ", " 20 0 1 0 ", 1);
        assert_ne!(
            zombie,
            stat.replacen(") S ", ") Z ", 1),
            "fixture stat layout changed"
        );
        std::fs::write(dir.join("stat"), zombie).unwrap();
    };
    assert!(stat.contains(") S "), "fixture stat is a sleeping process");
    memory_events(&pod, 0);
    memory_events(&pod.join("sidecar"), 0);
    start_process(101, "c1");
    std::fs::write(&pidfile, "101\n").unwrap();

    let v = Vitals::start(&[
        "--pid-file",
        pidfile.to_str().unwrap(),
        "--interval",
        "1s",
        "--proc-root",
        proc_root.to_str().unwrap(),
        "--cgroup-root",
        root.path().join("cgroup").to_str().unwrap(),
    ]);
    let oom = "vitals_cgroup_memory_oom_kills_total";
    v.wait_until(Duration::from_secs(5), "attached", |e| {
        e.find("vitals_target_info", &[("pid", "101")]).is_some() && e.get(oom, &[]) == Some(0.0)
    });
    // A sibling container is OOM-killed while the target runs: not the target's. No fixed sleep: the
    // target's memory.current changes after the kill; once a second change is published, the tick that
    // read the first one has finished, OOM counters included.
    memory_events(&pod.join("sidecar"), 1);
    memory_events(&pod, 1);
    let usage = "vitals_cgroup_memory_usage_bytes";
    std::fs::write(pod.join("c1/memory.current"), "2000000\n").unwrap();
    v.wait_until(
        Duration::from_secs(5),
        "a tick after the sibling's kill",
        |e| e.get(usage, &[]) == Some(2_000_000.0),
    );
    std::fs::write(pod.join("c1/memory.current"), "3000000\n").unwrap();
    let e = v.wait_until(Duration::from_secs(5), "the tick after that", |e| {
        e.get(usage, &[]) == Some(3_000_000.0)
    });
    assert_eq!(e.get(oom, &[]), Some(0.0), "sibling's kill counted");

    oom_kill(101, "c1", 2);
    std::fs::remove_dir_all(pod.join("c1")).unwrap();
    v.wait_until(Duration::from_secs(3), "first kill", |e| {
        e.get(oom, &[]) == Some(1.0)
            && e.get("vitals_target_exits_total", &[("reason", "oom_kill")]) == Some(1.0)
    });
    // The next instance dies in its fresh cgroup before vitals ever sees it.
    memory_events(&pod.join("c2"), 1);
    memory_events(&pod, 3);
    v.wait_until(Duration::from_secs(3), "unseen instance's kill", |e| {
        e.get(oom, &[]) == Some(2.0)
    });
    std::fs::remove_dir_all(pod.join("c2")).unwrap();
    start_process(103, "c3");
    std::fs::write(&pidfile, "103\n").unwrap();
    v.wait_until(Duration::from_secs(3), "third instance", |e| {
        e.find("vitals_target_info", &[("pid", "103")]).is_some()
    });
    oom_kill(103, "c3", 4);
    let e = v.wait_until(Duration::from_secs(3), "third kill", |e| {
        e.get(oom, &[]) == Some(3.0)
    });
    // Counted twice would show within a poll; the target is missing now, so the counters are read at
    // every 100 ms watch: 5 watch periods of margin (several on a loaded machine).
    std::thread::sleep(Duration::from_millis(500));
    let e2 = v.scrape();
    assert_eq!(e2.get(oom, &[]), Some(3.0), "counted once each");
    assert_eq!(
        e2.get("vitals_target_exits_total", &[("reason", "oom_kill")]),
        Some(2.0)
    );
    assert_eq!(e.get("vitals_target_restarts_total", &[]), Some(1.0));
    assert_eq!(e2.get("vitals_target_up", &[]), Some(0.0));
}
