//! A target is a process tree: real pre-fork servers, launchers and pools under `vitals run`, each compared
//! with the sum over the real tree read from /proc (with the `procfs` crate, not vitals' parser) at the same
//! moment: resident memory, CPU time (own plus reaped children's), threads and open fds; the process that
//! runs the runtime is named; counters never go back while workers are recycled; SIGTERM ends the whole
//! tree.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::tree::{descendants, truth, Truth};
use common::{child_script, require_tool, Exposition, Vitals};

/// The pids of `pids` that still run (a zombie does not).
fn still_running(pids: Vec<u32>) -> Vec<u32> {
    pids.into_iter()
        .filter(|p| {
            procfs::process::Process::new(*p as i32)
                .is_ok_and(|p| p.stat().is_ok_and(|s| s.state != 'Z'))
        })
        .collect()
}

fn cpu(e: &Exposition) -> f64 {
    e.sum("process_cpu_time_seconds_total", &[])
}

fn pid_of_target(e: &Exposition) -> u32 {
    e.find("vitals_target_info", &[])
        .and_then(|s| s.labels.iter().find(|(k, _)| k == "pid"))
        .and_then(|(_, v)| v.parse().ok())
        .expect("vitals_target_info with a pid")
}

fn label(e: &Exposition, name: &str, key: &str) -> String {
    e.find(name, &[])
        .and_then(|s| s.labels.iter().find(|(k, _)| k == key))
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// Compares vitals with the truth read right after the scrape; the tree is idle, so both read one state.
/// Memory and CPU within 2% (a tick's worth of an idle tree's housekeeping), threads and fds exact.
fn assert_matches(what: &str, e: &Exposition, t: &Truth) {
    let rss = e.get("process_memory_usage_bytes", &[]).unwrap();
    let c = cpu(e);
    let threads = e.get("process_threads", &[]).unwrap();
    let fds = e.get("process_open_file_descriptors", &[]).unwrap();
    let processes = e.get("vitals_target_processes", &[]).unwrap();
    eprintln!(
        "figure: {what}: processes {processes} (truth {}), rss {:.1} MB (truth {:.1} MB), cpu {c:.2} s (truth {:.2} s), threads {threads} (truth {}), fds {fds} (truth {})",
        t.pids.len(),
        rss / 1e6,
        t.rss / 1e6,
        t.cpu,
        t.threads,
        t.fds
    );
    assert_eq!(processes, t.pids.len() as f64, "{what}: processes");
    assert!(
        (rss - t.rss).abs() <= 0.02 * t.rss,
        "{what}: rss {rss} vs {}",
        t.rss
    );
    assert!(
        (c - t.cpu).abs() <= 0.02 * t.cpu + 0.03,
        "{what}: cpu {c} vs {}",
        t.cpu
    );
    assert_eq!(threads, t.threads, "{what}: threads");
    assert_eq!(fds, t.fds, "{what}: fds");
}

/// Scrapes until the tree is idle and sampled: two scrapes a tick apart agree on CPU and processes.
fn settled(v: &Vitals, tick: Duration) -> Exposition {
    let mut last = v.scrape();
    for _ in 0..40 {
        std::thread::sleep(tick + Duration::from_millis(100));
        let e = v.scrape();
        if cpu(&e) == cpu(&last)
            && e.get("vitals_target_processes", &[]) == last.get("vitals_target_processes", &[])
        {
            return e;
        }
        last = e;
    }
    panic!("the tree never settled:\n{}", last.text);
}

fn venv_bin(name: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".venv/bin")
        .join(name);
    assert!(
        p.is_file(),
        "{} is missing: python3 -m venv .venv && .venv/bin/pip install -r tests/python/requirements.txt (.ci/run does)",
        p.display()
    );
    p.display().to_string()
}

fn get(addr: &str) -> bool {
    ureq::get(&format!("http://{addr}/"))
        .timeout(Duration::from_secs(5))
        .call()
        .is_ok()
}

#[test]
fn gunicorn_workers_are_the_service_and_recycling_is_no_restart() {
    let port = common::free_port();
    let bind = format!("127.0.0.1:{port}");
    let v = Vitals::start(&[
        "--interval",
        "300ms",
        "run",
        "--",
        &venv_bin("gunicorn"),
        "-w",
        "4",
        "--max-requests",
        "40",
        "-b",
        &bind,
        "--chdir",
        child_script("").to_str().unwrap(),
        "tree_flask:app",
    ]);
    let e = v.wait_until(Duration::from_secs(30), "5 processes", |e| {
        e.get("vitals_target_processes", &[]) == Some(5.0)
    });
    let master = pid_of_target(&e);
    assert_eq!(label(&e, "vitals_target_info", "runtime"), "python");
    assert_eq!(
        label(&e, "vitals_target_info", "runtime_pid"),
        master.to_string(),
        "the master runs the runtime (it is no launcher)"
    );
    // 400 requests: every worker is recycled (40 requests each) about twice, while CPU is scraped.
    let load = std::thread::spawn(move || (0..400).filter(|_| get(&bind)).count());
    let mut highest = 0.0;
    let mut seen_workers: HashSet<u32> = HashSet::new();
    while !load.is_finished() {
        let e = v.scrape();
        let c = cpu(&e);
        assert!(c >= highest, "CPU went back from {highest} to {c}");
        highest = c;
        assert_eq!(
            e.get("vitals_target_restarts_total", &[]),
            Some(0.0),
            "a recycled worker is no restart"
        );
        seen_workers.extend(descendants(master).into_iter().skip(1));
        std::thread::sleep(Duration::from_millis(100));
    }
    let served = load.join().unwrap();
    assert_eq!(served, 400);
    assert!(
        seen_workers.len() >= 8,
        "workers were recycled: {seen_workers:?}"
    );
    let e = settled(&v, Duration::from_millis(300));
    let t = truth(master);
    assert_matches("gunicorn 4 workers after recycling", &e, &t);
    assert!(t.cpu > 1.0, "the load used CPU in the workers: {} s", t.cpu);
    // The bounded view names the largest workers (each holds 24 MiB of its own).
    let members = e.all("vitals_process_member_memory_usage_bytes");
    assert!(members.len() <= 10 && members.len() >= 5, "{members:?}");
    assert!(members.iter().all(|s| s.value > 20e6), "{members:?}");
    assert_eq!(e.get("vitals_target_restarts_total", &[]), Some(0.0));

    // SIGTERM to vitals reaches the master and its workers: nothing is left.
    let pids = t.pids.clone();
    let (code, _) = v.terminate();
    assert_eq!(code, Some(0), "gunicorn exits 0 on SIGTERM");
    std::thread::sleep(Duration::from_millis(300));
    let left = still_running(pids);
    assert!(left.is_empty(), "left running: {left:?}");
}

#[test]
fn npm_start_is_watched_through_the_node_it_starts_and_leaves_nothing_behind() {
    let npm = require_tool("npm", "apt-get install -y npm");
    let dir = tempfile::tempdir().unwrap();
    let server = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node/server.mjs");
    std::fs::write(
        dir.path().join("package.json"),
        format!(
            "{{\"name\":\"tree-test\",\"version\":\"1.0.0\",\"private\":true,\"scripts\":{{\"start\":\"node {} --seconds 120\"}}}}\n",
            server.display()
        ),
    )
    .unwrap();
    let v = Vitals::start(&[
        "--interval",
        "300ms",
        "run",
        "--",
        npm.to_str().unwrap(),
        "start",
        "--prefix",
        dir.path().to_str().unwrap(),
    ]);
    // npm → sh -c → node server.mjs: the node that runs the server is the runtime process.
    let e = v.wait_until(Duration::from_secs(30), "node in the tree", |e| {
        e.get("vitals_target_processes", &[]).unwrap_or(0.0) >= 2.0
            && label(e, "vitals_target_info", "runtime_pid")
                != label(e, "vitals_target_info", "pid")
    });
    let root = pid_of_target(&e);
    let runtime_pid: u32 = label(&e, "vitals_target_info", "runtime_pid")
        .parse()
        .unwrap();
    let cmdline = procfs::process::Process::new(runtime_pid as i32)
        .and_then(|p| p.cmdline())
        .unwrap();
    assert!(
        cmdline.iter().any(|a| a.ends_with("server.mjs")),
        "runtime process {runtime_pid} runs {cmdline:?}, not server.mjs"
    );
    assert_eq!(label(&e, "vitals_target_info", "runtime"), "node");
    // The server's runtime metrics (its own SDK, pointed at vitals by `vitals run`) give the event loop.
    let e = v.wait_until(Duration::from_secs(30), "event-loop delay", |e| {
        e.has("vitals_event_loop_delay_seconds")
    });
    let t = truth(root);
    assert!(
        t.pids.contains(&runtime_pid),
        "{runtime_pid} in {:?}",
        t.pids
    );
    let rss = e.get("process_memory_usage_bytes", &[]).unwrap();
    let node_rss = procfs::process::Process::new(runtime_pid as i32)
        .and_then(|p| p.stat())
        .map(|s| s.rss as f64 * procfs::page_size() as f64)
        .unwrap();
    assert!(
        rss > node_rss,
        "the tree's memory ({rss}) includes node's ({node_rss})"
    );
    let (_, _) = v.terminate();
    std::thread::sleep(Duration::from_millis(500));
    let left = still_running(t.pids);
    assert!(left.is_empty(), "left running after SIGTERM: {left:?}");
}

/// Starts tests/children/tree_pool.py under `vitals run`; returns vitals and the worker pids.
fn pool_under_vitals(args: &[&str], extra: &[&str]) -> (Vitals, Vec<u32>) {
    let script = child_script("tree_pool.py");
    let mut all: Vec<&str> = extra.to_vec();
    all.extend(["run", "--", "python3", script.to_str().unwrap()]);
    all.extend(args);
    let v = Vitals::start(&all);
    let e = v.wait_until(Duration::from_secs(30), "pool workers", |e| {
        e.get("vitals_target_processes", &[]).unwrap_or(0.0) >= 6.0
    });
    let root = pid_of_target(&e);
    let workers: Vec<u32> = descendants(root)
        .into_iter()
        .filter(|p| {
            procfs::process::Process::new(*p as i32)
                .and_then(|p| p.cmdline())
                .is_ok_and(|c| c.iter().any(|a| a.contains("tree_pool.py")))
        })
        .collect();
    (v, workers)
}

#[test]
fn multiprocessing_pool_cpu_is_all_seen() {
    let (v, _) = pool_under_vitals(&["burn", "1"], &["--interval", "300ms"]);
    let e = v.scrape();
    let root = pid_of_target(&e);
    // Each worker burns 1 s of CPU time, then the pool idles.
    let started = Instant::now();
    let e = loop {
        let e = settled(&v, Duration::from_millis(300));
        if cpu(&e) > 4.0 || started.elapsed() > Duration::from_secs(60) {
            break e;
        }
    };
    let t = truth(root);
    assert_matches("multiprocessing.Pool(4) CPU burner", &e, &t);
    assert!(t.cpu >= 4.0, "4 workers × 1 s of CPU: {}", t.cpu);
}

#[test]
fn one_leaking_worker_among_four_is_flagged() {
    let (v, _) = pool_under_vitals(
        &["leak"],
        &[
            "--interval",
            "250ms",
            "--growth-windows",
            "20s,40s",
            "--leak-threshold-bytes-per-hour",
            "450000000",
        ],
    );
    let started = Instant::now();
    let e = v.wait_until(Duration::from_secs(90), "leak flagged", |e| {
        e.get("vitals_memory_leak_suspected", &[("signal", "rss")]) == Some(1.0)
    });
    let slope = e
        .get(
            "vitals_memory_growth_bytes_per_second",
            &[("signal", "rss"), ("window", "20s")],
        )
        .unwrap();
    eprintln!(
        "figure: one of 4 workers leaking 1 MiB/s: flagged after {:.1} s, 20 s slope {:.0} B/s (truth 1048576)",
        started.elapsed().as_secs_f64(),
        slope
    );
    assert!(
        (slope - 1048576.0).abs() < 0.15 * 1048576.0,
        "slope {slope}"
    );
    // The leaking worker is the largest member and is named.
    let members = e.all("vitals_process_member_memory_usage_bytes");
    let largest = members
        .iter()
        .max_by(|a, b| a.value.total_cmp(&b.value))
        .unwrap();
    assert!(largest.value > 30e6, "{members:?}");
}

#[test]
fn jvm_under_a_launcher_shell_is_read_through_its_hsperfdata() {
    let java = require_tool("java", "apt-get install -y openjdk-17-jdk-headless");
    let classes = common::compile_java("Churn");
    let script = format!(
        "{} -Xmx64m -XX:+UseSerialGC -XX:+UsePerfData -cp {} Churn 1500 60; echo done",
        java.display(),
        classes.path().display()
    );
    let v = Vitals::start(&["--interval", "300ms", "run", "--", "sh", "-c", &script]);
    let e = v.wait_until(Duration::from_secs(30), "hsperfdata pauses", |e| {
        e.find("vitals_gc_pauses_total", &[("source", "hsperfdata")])
            .is_some()
            && label(e, "vitals_target_info", "runtime") == "jvm"
    });
    let root = pid_of_target(&e);
    let jvm: u32 = label(&e, "vitals_target_info", "runtime_pid")
        .parse()
        .unwrap();
    assert_ne!(jvm, root, "the shell is the root, the JVM its child");
    // Once Churn's churn is over (1500 ms) the counters stand still: both readings are of one state.
    std::thread::sleep(Duration::from_secs(2));
    let e = settled(&v, Duration::from_millis(300));
    let out = Command::new(require_tool(
        "jstat",
        "apt-get install -y openjdk-17-jdk-headless",
    ))
    .args(["-gc", &jvm.to_string()])
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut lines = text.lines();
    let heads: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    let vals: Vec<f64> = lines
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(f64::NAN))
        .collect();
    let col = |name: &str| vals[heads.iter().position(|h| *h == name).unwrap()];
    let pauses = e.sum("vitals_gc_pauses_total", &[("source", "hsperfdata")]);
    eprintln!(
        "figure: JVM under sh -c: vitals pauses {pauses}, jstat YGC+FGC {}",
        col("YGC") + col("FGC")
    );
    assert!(col("YGC") > 5.0, "{text}");
    assert_eq!(pauses, col("YGC") + col("FGC"), "{text}");
}

#[test]
fn sigterm_in_run_mode_ends_every_process_of_the_group() {
    // The shell starts two sleeps, one in the background, and waits: a signal sent to the shell alone
    // would leave both running.
    let marker = format!("{}", 300 + std::process::id() % 100);
    let v = Vitals::start(&[
        "--interval",
        "200ms",
        "run",
        "--",
        "sh",
        "-c",
        &format!("sleep {marker} & sleep {marker}; wait"),
    ]);
    let e = v.wait_until(Duration::from_secs(10), "3 processes", |e| {
        e.get("vitals_target_processes", &[]) == Some(3.0)
    });
    let t = truth(pid_of_target(&e));
    assert_eq!(t.pids.len(), 3, "{t:?}");
    let (code, _) = v.terminate();
    assert_eq!(code, Some(143), "the shell died of SIGTERM");
    std::thread::sleep(Duration::from_millis(300));
    let left = still_running(t.pids);
    assert!(left.is_empty(), "left running: {left:?}");
}

#[test]
fn a_child_that_outlives_the_target_is_named_in_the_log() {
    // The shell exits at once, leaving a background sleep in its process group.
    let marker = format!("{}", 400 + std::process::id() % 100);
    let mut child = Command::new(common::vitals_bin())
        .args([
            "--metrics-addr",
            "127.0.0.1:0",
            "--otlp-grpc-addr",
            "off",
            "--otlp-http-addr",
            "off",
            "run",
            "--",
            "sh",
            "-c",
            &format!("sleep {marker} >/dev/null 2>&1 & exit 0"),
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = child.wait().unwrap();
    let mut log = String::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        log.push_str(&line.unwrap());
        log.push('\n');
    }
    assert_eq!(status.code(), Some(0));
    assert!(
        log.contains("still running") && log.contains("sleep"),
        "the leftover sleep is named:\n{log}"
    );
    let _ = Command::new("pkill")
        .args(["-f", &format!("^sleep {marker}$")])
        .status();
}
