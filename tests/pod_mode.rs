//! Zero-configuration pod mode in a simulated pod (no cluster can be installed here): a new pid namespace
//! whose pid 1 is a program called `pause`, "containers" entered into it from outside (parent pid 0 inside,
//! as a container runtime starts them), each in its own mount namespace with its own /tmp and, where the
//! machine lets a test make cgroups, its own cgroup; vitals runs in a third container with no selector.
//! Both containers are found and named after their programs, vitals and pid 1 are never watched, an exec
//! session in a container is not a container, the JVM's hsperfdata is read from its own /tmp through
//! /proc/PID/root, the Python pool's tree is summed like /proc's, and a container that restarts comes
//! back under its name as a restart. `--kubernetes-labels` puts the Downward API's pod names on each target's
//! info.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::tree::truth;
use common::{child_script, require_tool, Exposition, Vitals};

/// The pod: `unshare` holding a new pid namespace whose pid 1 runs `pause`.
struct Pod {
    unshare: Child,
    /// pid 1 of the pod, as this (outer) namespace numbers it.
    pause: u32,
    _dir: tempfile::TempDir,
    cgroups: Vec<PathBuf>,
}

impl Drop for Pod {
    fn drop(&mut self) {
        // The namespace's init going away kills every process in it.
        common::unsafe_kill(self.pause, "KILL");
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        for cg in self.cgroups.iter().rev() {
            for _ in 0..50 {
                if std::fs::remove_dir(cg).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Pod {
    fn start() -> Pod {
        let unshare = require_tool("unshare", "apt-get install -y util-linux");
        require_tool("nsenter", "apt-get install -y util-linux");
        let dir = tempfile::tempdir().unwrap();
        let pause = dir.path().join("pause");
        std::fs::copy("/bin/sleep", &pause).unwrap();
        let child = Command::new(unshare)
            .args(["--pid", "--fork", "--mount", "--mount-proc"])
            .arg(&pause)
            .arg("600")
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare a pid namespace (the test runs as root)");
        let outer = child.id();
        let pause_pid = wait_for("the pod's pid 1", Duration::from_secs(10), || {
            children(outer).into_iter().find(|p| comm(*p) == "pause")
        });
        Pod {
            unshare: child,
            pause: pause_pid,
            _dir: dir,
            cgroups: Vec::new(),
        }
    }

    /// A cgroup of the test's own, or None where the machine does not let a test make one (then
    /// containers share the pod's cgroup, and vitals tells them apart by their roots alone).
    fn cgroup(&mut self, name: &str) -> Option<PathBuf> {
        let base = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            PathBuf::from("/sys/fs/cgroup")
        } else if Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() {
            PathBuf::from("/sys/fs/cgroup/unified")
        } else {
            PathBuf::from("/sys/fs/cgroup/memory")
        };
        let dir = base.join(format!("vitals-pod-test-{}-{name}", std::process::id()));
        std::fs::create_dir(&dir).ok()?;
        if !dir.join("cgroup.procs").exists() {
            let _ = std::fs::remove_dir(&dir);
            return None;
        }
        self.cgroups.push(dir.clone());
        Some(dir)
    }

    /// A container: entered into the pod's pid namespace from outside (parent pid 0 inside) and into a
    /// mount namespace of its own with the pod's /proc, its own /tmp, and `setup` run first; then `exec`.
    fn container(&self, cgroup: Option<&Path>, setup: &str, exec: &str) -> Command {
        let join = cgroup.map_or(String::new(), |c| {
            format!("echo $$ > {}/cgroup.procs && ", c.display())
        });
        let mut cmd = Command::new("nsenter");
        cmd.args(["--target", &self.pause.to_string(), "--pid", "--"])
            .args(["unshare", "--mount", "--propagation", "private", "--"])
            .args(["sh", "-c"])
            .arg(format!(
                "{join}mount -t proc proc /proc && {setup} && exec {exec}"
            ));
        cmd
    }
}

/// The container's root: nsenter's child (in the pod), once it runs `program`.
fn root_of(nsenter: &Child, program: &str) -> u32 {
    wait_for(program, Duration::from_secs(20), || {
        children(nsenter.id())
            .into_iter()
            .find(|p| comm(*p) == program)
    })
}

fn targets(e: &Exposition) -> Vec<String> {
    let mut names: Vec<String> = e
        .all("vitals_target_info")
        .iter()
        .filter_map(|s| s.labels.iter().find(|(k, _)| k == "target"))
        .map(|(_, v)| v.clone())
        .collect();
    names.sort();
    names
}

fn info_label(e: &Exposition, target: &str, key: &str) -> String {
    e.find("vitals_target_info", &[("target", target)])
        .and_then(|s| s.labels.iter().find(|(k, _)| k == key))
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// The `targets` rows of the first live frame that lists `want` targets, each with its memory.
fn live_targets(v: &Vitals, want: usize) -> Vec<serde_json::Value> {
    use std::io::Read;
    let mut sock = std::net::TcpStream::connect(v.metrics).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        sock,
        "GET /live/stream HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    let mut buf = [0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let n = sock.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        for line in text.lines().filter(|l| l.starts_with("data: {")) {
            let Ok(frame) = serde_json::from_str::<serde_json::Value>(&line[6..]) else {
                continue;
            };
            // Frames are built once a second: an early one may predate a container's first sample.
            if let Some(rows) = frame["targets"]
                .as_array()
                .filter(|r| r.len() >= want && r.iter().all(|t| t["rss_bytes"].is_number()))
            {
                return rows.clone();
            }
        }
    }
    panic!("no live frame with {want} targets: {text}");
}

struct Java {
    nsenter: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Java {
    fn call(&mut self, line: &str, answer: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        let mut got = String::new();
        self.stdout.read_line(&mut got).unwrap();
        assert!(got.starts_with(answer), "{got}");
    }
}

fn start_pool(pod: &Pod, cgroup: Option<&Path>) -> (Child, u32) {
    let python = std::env::var("VITALS_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    // The interpreter itself, as a container image's entrypoint runs it: a pyenv shim on PATH is a bash
    // launcher whose comm (`pyenv-hooks`) a restarted container showed at first sight in a clean clone.
    let python = Command::new(&python)
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or(python);
    let script = child_script("tree_pool.py");
    let dir = script.parent().expect("the children's directory");
    // The script is bound onto /mnt before the container's own /tmp hides a checkout under /tmp, and
    // the container leaves a working directory that may be hidden too (a pyenv shim cannot start
    // there: a clean clone under /tmp failed so).
    let mut c = pod
        .container(
            cgroup,
            &format!(
                "mount --bind {} /mnt && mount -t tmpfs tmpfs /tmp && cd /",
                dir.display()
            ),
            &format!("{python} /mnt/tree_pool.py burn 0.3"),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(c.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "the pool exited");
        if line.trim() == "ready" {
            break;
        }
    }
    // Keep the pipe open: the pool would die of SIGPIPE writing to a closed one.
    std::mem::forget(out);
    let root = root_of(&c, &comm_of_python(&python));
    (c, root)
}

fn comm_of_python(python: &str) -> String {
    let name = Path::new(python)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("python3");
    name.chars().take(15).collect()
}

#[test]
fn a_pod_s_containers_are_found_named_and_read_through_their_own_root() {
    let java = require_tool("java", "apt-get install -y openjdk-17-jdk-headless");
    let classes = common::compile_java("LongPauses");
    let mut pod = Pod::start();
    let cg_pool = pod.cgroup("pool");
    let cg_java = pod.cgroup("java");
    eprintln!(
        "figure: cgroups of the simulated containers: {}",
        if cg_java.is_some() {
            "made"
        } else {
            "not permitted here (containers share the pod's)"
        }
    );

    // A container that was there before vitals.
    let (mut pool, pool_root) = start_pool(&pod, cg_pool.as_deref());
    let python_comm = comm(pool_root);

    // vitals in a container of its own, with no selector.
    let mut cmd = pod.container(
        None,
        "true",
        &format!(
            "{} --metrics-addr 127.0.0.1:0 --otlp-grpc-addr off --otlp-http-addr off --interval 300ms --kubernetes-labels",
            common::vitals_bin().display()
        ),
    );
    cmd.env("VITALS_LOG_LEVEL", "info")
        .env("K8S_POD_NAME", "shop-7d9f-abcde")
        .env("POD_NAMESPACE", "shop");
    let v = Vitals::spawn(cmd);

    // A JVM container started after vitals, its hsperfdata in a /tmp only its mount namespace sees.
    let mut jvm = pod
        .container(
            cg_java.as_deref(),
            &format!(
                "mount --bind {} /mnt && mount -t tmpfs tmpfs /tmp && cd /",
                classes.path().display()
            ),
            &format!(
                "{} -Xmx256m -XX:+UseSerialGC -XX:+UsePerfData -Xlog:gc:file=/mnt/gc.log -cp /mnt LongPauses 2",
                java.display()
            ),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut java_io = Java {
        stdin: jvm.stdin.take().unwrap(),
        stdout: BufReader::new(jvm.stdout.take().unwrap()),
        nsenter: jvm,
    };
    let mut ready = String::new();
    java_io.stdout.read_line(&mut ready).unwrap();
    assert_eq!(ready.trim(), "ready");
    let jvm_root = root_of(&java_io.nsenter, "java");
    assert!(
        !Path::new(&format!("/tmp/hsperfdata_root/{jvm_root}")).exists(),
        "the JVM's hsperfdata must be in its own /tmp only"
    );

    // An exec session into the JVM's container (parent pid 0, the container's cgroup): not a container.
    let mut session = cg_java.as_ref().map(|cg| {
        Command::new("nsenter")
            .args(["--target", &pod.pause.to_string(), "--pid", "--"])
            .args(["sh", "-c"])
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec sleep 120",
                cg.display()
            ))
            .stdin(Stdio::null())
            .spawn()
            .unwrap()
    });

    v.wait_until(Duration::from_secs(30), "both containers", |e| {
        e.get("vitals_target_up", &[("target", &python_comm)]) == Some(1.0)
            && e.get("vitals_target_up", &[("target", "java")]) == Some(1.0)
            && info_label(e, "java", "runtime") == "jvm"
            && e.find(
                "vitals_gc_pauses_total",
                &[("target", "java"), ("source", "hsperfdata")],
            )
            .is_some()
    });
    // Exactly the two containers: never pid 1, vitals itself, or the exec session.
    if session.is_some() {
        std::thread::sleep(Duration::from_secs(1));
    }
    let e = v.scrape();
    assert_eq!(
        targets(&e),
        {
            let mut t = vec!["java".to_owned(), python_comm.clone()];
            t.sort();
            t
        },
        "{}",
        e.text
    );
    assert_eq!(info_label(&e, &python_comm, "selected_by"), "pod");
    // The pod's names from the Downward API variables, on each target's info.
    for t in ["java", python_comm.as_str()] {
        assert_eq!(info_label(&e, t, "k8s_pod_name"), "shop-7d9f-abcde");
        assert_eq!(info_label(&e, t, "k8s_namespace_name"), "shop");
    }
    // The live page lists each container with its own figures.
    let rows = live_targets(&v, 2);
    let names: Vec<&str> = rows.iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names.len(), 2, "{rows:?}");
    assert!(
        names.contains(&"java") && names.contains(&python_comm.as_str()),
        "{rows:?}"
    );
    for r in &rows {
        assert_eq!(r["up"], true, "{r}");
        assert!(r["rss_bytes"].as_f64().is_some_and(|b| b > 1e6), "{r}");
        assert!(r["processes"].as_f64().is_some_and(|n| n >= 1.0), "{r}");
    }
    // The pids are the pod's own numbering (vitals sees the pod's /proc).
    let status = std::fs::read_to_string(format!("/proc/{jvm_root}/status")).unwrap();
    let ns_pid = status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap()
        .to_owned();
    assert_eq!(info_label(&e, "java", "pid"), ns_pid);

    // The JVM: two full collections after attach; the pauses equal the GC log's, read through its root.
    java_io.call("gc", "done");
    java_io.call("gc", "done");
    let log = classes.path().join("gc.log");
    let logged = wait_for("the GC log", Duration::from_secs(10), || {
        let p = common::logged_pauses(&log);
        (p.len() >= 2).then_some(p)
    });
    let longest = logged.iter().copied().fold(0.0, f64::max);
    v.wait_until(Duration::from_secs(10), "every logged pause", |e| {
        e.sum(
            "vitals_gc_pauses_total",
            &[("target", "java"), ("source", "hsperfdata")],
        ) == common::logged_pauses(&log).len() as f64
    });
    // hsperfdata counts a pause when it begins and adds its time when it ends: a tick inside the last
    // pause counted it without its length. The tick after that one (interval 300 ms) has both.
    std::thread::sleep(Duration::from_millis(400));
    let e = v.scrape();
    let max = e
        .get(
            "vitals_gc_pause_max_seconds",
            &[("target", "java"), ("source", "hsperfdata")],
        )
        .unwrap();
    eprintln!(
        "figure: pod JVM: GC log {} pauses, longest {longest:.4} s; vitals max {max:.4} s",
        logged.len()
    );
    assert!(
        (max - longest).abs() <= 0.005 + 0.02 * longest,
        "max {max} vs GC log {longest}"
    );

    // The pool: its whole tree, as /proc sums it (idle after its 0.3 s of burning).
    let mut last = f64::NAN;
    let (e, t) = wait_for("the pool at rest", Duration::from_secs(20), || {
        std::thread::sleep(Duration::from_millis(400));
        let e = v.scrape();
        let t = truth(pool_root);
        let rss = e.get("process_memory_usage_bytes", &[("target", &python_comm)])?;
        let settled = rss == last;
        last = rss;
        settled.then_some((e, t))
    });
    let rss = e
        .get("process_memory_usage_bytes", &[("target", &python_comm)])
        .unwrap();
    let processes = e
        .get("vitals_target_processes", &[("target", &python_comm)])
        .unwrap();
    eprintln!(
        "figure: pod pool: vitals {processes} processes, {:.1} MB; /proc {} processes, {:.1} MB",
        rss / 1e6,
        t.pids.len(),
        t.rss / 1e6
    );
    assert_eq!(processes, t.pids.len() as f64);
    assert!(
        (rss - t.rss).abs() <= 0.02 * t.rss,
        "rss {rss} vs {}",
        t.rss
    );

    // The pool's container restarts: the same name comes back, counted as a restart, no second target.
    for pid in truth(pool_root).pids {
        common::unsafe_kill(pid, "KILL");
    }
    let _ = pool.wait();
    v.wait_until(Duration::from_secs(10), "the pool down", |e| {
        e.get("vitals_target_up", &[("target", &python_comm)]) == Some(0.0)
    });
    let (mut pool2, _) = start_pool(&pod, cg_pool.as_deref());
    let e = v.wait_until(Duration::from_secs(20), "the pool back", |e| {
        e.get("vitals_target_up", &[("target", &python_comm)]) == Some(1.0)
    });
    assert_eq!(
        e.get("vitals_target_restarts_total", &[("target", &python_comm)]),
        Some(1.0)
    );
    assert_eq!(targets(&e).len(), 2, "{:?}", targets(&e));
    let log = v.log.lock().unwrap().clone();
    assert!(log.contains("watching every other container"), "{log}");

    let _ = pool2.kill();
    if let Some(s) = session.as_mut() {
        let _ = s.kill();
        let _ = s.wait();
    }
    drop(java_io);
    drop(v);
}
