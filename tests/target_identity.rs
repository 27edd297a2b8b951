//! Which process is the target and what it is: a main thread that called pthread_exit(), wrappers that
//! merely mention the pattern, and a target that exec()s another program.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{require_tool, unsafe_kill, Vitals};

/// Kills and reaps a child on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A wrapper and the JVM it started; both killed on drop (killing the wrapper alone would orphan the JVM).
struct Wrapped {
    wrapper: Reaped,
    java: u32,
}

impl Drop for Wrapped {
    fn drop(&mut self) {
        unsafe_kill(self.java, "KILL");
        let _ = self.wrapper.0.kill();
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
    // The workers' fd table: stdin, stdout (a pipe) and stderr at least, as /proc/PID/task/TID/fd shows.
    let worker = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .map(|t| t.file_name().to_string_lossy().into_owned())
        .find(|t| *t != pid.to_string())
        .unwrap();
    let truth = std::fs::read_dir(format!("/proc/{pid}/task/{worker}/fd"))
        .unwrap()
        .count() as f64;
    assert!(truth >= 3.0, "{truth}");
    assert_eq!(e2.get("process_open_file_descriptors", &[]), Some(truth));
    drop(child);
    v.wait_until(Duration::from_secs(5), "down once the group is gone", |e| {
        e.get("vitals_target_up", &[]) == Some(0.0)
    });
}

/// Builds tests/children/App.java into `dir/app.jar` (Main-Class App) with javac and jar.
fn build_app_jar(dir: &Path) -> std::path::PathBuf {
    let javac = require_tool("javac", "apt-get install -y openjdk-17-jdk-headless");
    let jar = require_tool("jar", "apt-get install -y openjdk-17-jdk-headless");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/children/App.java");
    let ok = Command::new(javac)
        .arg("-d")
        .arg(dir)
        .arg(&src)
        .status()
        .expect("run javac");
    assert!(ok.success(), "javac App.java");
    let path = dir.join("app.jar");
    let ok = Command::new(jar)
        .arg("--create")
        .arg("--file")
        .arg(&path)
        .arg("--main-class")
        .arg("App")
        .arg("-C")
        .arg(dir)
        .arg("App.class")
        .status()
        .expect("run jar");
    assert!(ok.success(), "jar --create app.jar");
    path
}

/// A small, quick-starting JVM running app.jar.
fn java_cmd(jar: &Path) -> String {
    format!(
        "java -Xmx32m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -jar {}",
        jar.display()
    )
}

/// Pids whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

/// Starts a wrapper command line and returns it with the pid of the java process it started.
fn start_wrapped(args: &[&str]) -> Wrapped {
    let child = Reaped(
        Command::new(args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start wrapper"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let java = children_of(child.0.id()).into_iter().find(|p| {
            std::fs::read_link(format!("/proc/{p}/exe"))
                .map(|e| e.ends_with("java"))
                .unwrap_or(false)
        });
        if let Some(java) = java {
            return Wrapped {
                wrapper: child,
                java,
            };
        }
        assert!(Instant::now() < deadline, "wrapper never started java");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_watches_java(v: &Vitals, java: u32, what: &str) {
    let pid = java.to_string();
    // A JVM starting on a loaded machine grows for a while: wait for its resident set to pass 20 MB (App
    // holds 8 MiB of heap; a JVM is ~40 MB), which no 1-2 MB wrapper reaches.
    let e = v.wait_until(Duration::from_secs(20), what, |e| {
        e.find("vitals_target_info", &[("pid", &pid)]).is_some()
            && e.get("process_memory_usage_bytes", &[])
                .is_some_and(|r| r > 20.0 * 1048576.0)
    });
    assert!(
        e.find(
            "vitals_target_info",
            &[("pid", &pid), ("comm", "java"), ("runtime", "jvm")]
        )
        .is_some(),
        "{what}: {:?}",
        e.all("vitals_target_info")
    );
}

/// The README's own example against the two wrappers that fooled it: the wrapper is older and its command
/// line holds the pattern, yet the JVM is watched; with two equal JVMs the choice is logged as ambiguous.
#[test]
fn process_regex_watches_the_jvm_not_its_shell_or_timeout_wrapper() {
    let dir = tempfile::tempdir().unwrap();
    let jar = build_app_jar(dir.path());
    let java = java_cmd(&jar);
    let pattern = r"java.*app\.jar";

    // `; true` keeps the shell from exec()ing java: it forks and waits, as a shell with several commands does.
    let sh_line = format!("{java}; true");
    let sh = start_wrapped(&["sh", "-c", &sh_line]);
    let v = Vitals::start(&["--process", pattern, "--interval", "200ms"]);
    assert_watches_java(&v, sh.java, "under sh -c");
    drop(v);
    drop(sh);

    let mut timeout_args = vec!["timeout", "60"];
    timeout_args.extend(java.split(' '));
    let timeout = start_wrapped(&timeout_args);
    let v = Vitals::start(&["--process", pattern, "--interval", "200ms"]);
    assert_watches_java(&v, timeout.java, "under timeout");
    drop(v);

    // Two JVMs running app.jar: the oldest is watched, and the log says the choice was ambiguous.
    let second = start_wrapped(&["sh", "-c", &sh_line]);
    let v = Vitals::start(&["--process", pattern, "--interval", "200ms"]);
    assert_watches_java(&v, timeout.java, "oldest of two");
    let log = v.log.lock().unwrap().clone();
    assert!(
        log.contains("several processes match equally well")
            && log.contains(&second.java.to_string()),
        "ambiguity not logged:\n{log}"
    );
}

/// exec() keeps the pid and start time: the target is the same instance (no restart) running a new
/// program, and vitals_target_info follows it.
#[test]
fn exec_refreshes_comm_and_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let jar = build_app_jar(dir.path());
    let line = format!("sleep 1; exec {}", java_cmd(&jar));
    let sh = Reaped(
        Command::new("sh")
            .args(["-c", &line])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sh"),
    );
    let pid = sh.0.id().to_string();
    let v = Vitals::start(&["--pid", &pid, "--interval", "100ms"]);
    let e = v.wait_until(Duration::from_secs(5), "attached to sh", |e| {
        e.find("vitals_target_info", &[("pid", &pid)]).is_some()
    });
    assert!(
        e.find("vitals_target_info", &[("pid", &pid), ("comm", "sh")])
            .is_some(),
        "before exec: {:?}",
        e.all("vitals_target_info")
    );
    let e = v.wait_until(Duration::from_secs(10), "java after exec", |e| {
        e.find(
            "vitals_target_info",
            &[("pid", &pid), ("comm", "java"), ("runtime", "jvm")],
        )
        .is_some()
    });
    assert_eq!(e.all("vitals_target_info").len(), 1);
    assert_eq!(e.get("vitals_target_restarts_total", &[]), Some(0.0));
    assert_eq!(e.get("vitals_target_up", &[]), Some(1.0));
    // The readiness summary (written once per target as it is, not after every reading) follows too.
    let (code, _, body) = v.get("/readyz", None);
    assert_eq!(code, 200);
    assert!(
        body.contains(&format!("watching pid {pid} (java, runtime jvm)")),
        "/readyz after exec: {body}"
    );
}

/// A wrapper that starts the program late: while only the wrapper matches, vitals waits (and says so)
/// instead of attaching to the wrapper for good.
#[test]
fn process_regex_waits_for_the_program_a_wrapper_starts_late() {
    let dir = tempfile::tempdir().unwrap();
    let jar = build_app_jar(dir.path());
    // The pattern names this test's own jar: tests run in parallel and others start `java … app.jar` too.
    let pattern = format!("java.*{}", regex::escape(&jar.to_string_lossy()));
    let v = Vitals::start(&["--process", &pattern, "--interval", "200ms"]);
    let line = format!("sleep 1.5; {}; true", java_cmd(&jar));
    let sh = Reaped(
        Command::new("sh")
            .args(["-c", &line])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sh"),
    );
    // During the sleep only the shell matches: no target, and a warning naming the shell.
    std::thread::sleep(Duration::from_millis(800));
    let e = v.scrape();
    assert_eq!(
        e.get("vitals_target_up", &[]),
        Some(0.0),
        "attached to the shell"
    );
    let log = v.log.lock().unwrap().clone();
    assert!(
        log.contains("only wrapper processes") && log.contains(&sh.0.id().to_string()),
        "no wrapper warning:\n{log}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let java = loop {
        if let Some(j) = children_of(sh.0.id()).into_iter().find(|p| {
            std::fs::read_link(format!("/proc/{p}/exe"))
                .map(|e| e.ends_with("java"))
                .unwrap_or(false)
        }) {
            break j;
        }
        assert!(Instant::now() < deadline, "shell never started java");
        std::thread::sleep(Duration::from_millis(20));
    };
    let wrapped = Wrapped { wrapper: sh, java };
    assert_watches_java(&v, wrapped.java, "after the late start");
}
