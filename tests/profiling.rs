//! CPU profiles of real targets, read back by an independent reader (`go tool pprof`): a C program with
//! a known 70/30 split and a depth-20 call path, built with and without frame pointers; a target in
//! another mount namespace; Node with `--perf-basic-prof`; Python with `-X perf`; a real JVM asked for
//! its perf map through the attach protocol; and a target vitals may not profile.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{require_tool, vitals_bin, Vitals};

/// A child process killed and reaped on drop.
struct Target(Child);

impl Target {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        // The perf map a runtime wrote for it (runtimes never remove theirs).
        let _ = std::fs::remove_file(format!("/tmp/perf-{}.map", self.0.id()));
    }
}

fn spawn(cmd: &mut Command) -> Target {
    Target(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start the target"),
    )
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/profile")
        .join(name)
}

/// Builds the burner into `dir`, with or without frame pointers.
fn build_burner(dir: &Path, frame_pointers: bool) -> PathBuf {
    let gcc = require_tool("gcc", "apt-get install -y gcc libc6-dev");
    let out = dir.join(if frame_pointers {
        "burn_fp"
    } else {
        "burn_nofp"
    });
    let fp: &[&str] = if frame_pointers {
        &["-fno-omit-frame-pointer", "-mno-omit-leaf-frame-pointer"]
    } else {
        &["-fomit-frame-pointer"]
    };
    let ok = Command::new(gcc)
        .args(["-O2", "-g"])
        .args(fp)
        .arg("-o")
        .arg(&out)
        .arg(fixture("burn.c"))
        .arg("-lpthread")
        .status()
        .expect("run gcc");
    assert!(ok.success(), "gcc burn.c");
    out
}

/// The target's CPU time so far (utime + stime), in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("target stat");
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn go() -> PathBuf {
    require_tool("go", "apt-get install -y golang-go")
}

/// One row of `go tool pprof -top`: flat and cumulative shares of the total, in percent.
#[derive(Debug, Clone, Copy)]
struct Share {
    flat: f64,
    cum: f64,
}

/// What `go tool pprof` reads in a profile: per function its shares, the total sampled CPU in seconds,
/// every stack (root last) and the top function by flat time.
struct Read {
    shares: HashMap<String, Share>,
    total_seconds: f64,
    traces: Vec<Vec<String>>,
    top_flat: String,
}

fn go_seconds(s: &str) -> f64 {
    let s = s.trim();
    for (suffix, scale) in [
        ("ms", 1e-3),
        ("us", 1e-6),
        ("µs", 1e-6),
        ("ns", 1e-9),
        ("s", 1.0),
    ] {
        if let Some(n) = s.strip_suffix(suffix) {
            if let Ok(v) = n.parse::<f64>() {
                return v * scale;
            }
        }
    }
    s.parse().unwrap_or(0.0)
}

fn pprof_read(profile: &Path) -> Read {
    let top = Command::new(go())
        .args(["tool", "pprof", "-top", "-nodecount=500"])
        .arg(profile)
        .output()
        .expect("run go tool pprof");
    let text = String::from_utf8_lossy(&top.stdout).into_owned();
    assert!(
        top.status.success(),
        "go tool pprof -top failed: {}{}",
        text,
        String::from_utf8_lossy(&top.stderr)
    );
    let mut shares = HashMap::new();
    let mut total_seconds = 0.0;
    let mut top_flat = String::new();
    let mut rows = false;
    for line in text.lines() {
        if let Some(at) = line.find("Total samples = ") {
            let rest = &line[at + "Total samples = ".len()..];
            total_seconds = go_seconds(rest.split_whitespace().next().unwrap_or(""));
        }
        if line.trim_start().starts_with("flat") {
            rows = true;
            continue;
        }
        if !rows {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 {
            continue;
        }
        let pct = |s: &str| s.trim_end_matches('%').parse::<f64>().unwrap_or(0.0);
        let name = f[5..].join(" ");
        if top_flat.is_empty() {
            top_flat = name.clone();
        }
        shares.insert(
            name,
            Share {
                flat: pct(f[1]),
                cum: pct(f[4]),
            },
        );
    }
    let traces = Command::new(go())
        .args(["tool", "pprof", "-traces"])
        .arg(profile)
        .output()
        .expect("run go tool pprof -traces");
    let mut stacks = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut started = false;
    for line in String::from_utf8_lossy(&traces.stdout).lines() {
        if line.starts_with("-----------+") {
            if started && !current.is_empty() {
                stacks.push(std::mem::take(&mut current));
            }
            started = true;
            continue;
        }
        if !started || line.trim().is_empty() {
            continue;
        }
        // The first line of a trace holds its value, then the leaf; the others only a name.
        let name = if line.starts_with("           ") {
            line.trim().to_owned()
        } else {
            line.split_whitespace()
                .skip(1)
                .collect::<Vec<_>>()
                .join(" ")
        };
        current.push(name);
    }
    if !current.is_empty() {
        stacks.push(current);
    }
    Read {
        shares,
        total_seconds,
        traces: stacks,
        top_flat,
    }
}

/// Asserts the 70/30 split of the burner's work between its two functions (cumulative time, as a
/// share of the two together) within 5 points, and that some stack holds the whole depth-20 path.
fn assert_burner_profile(read: &Read, what: &str) {
    let share = |f: &str| read.shares.get(f).map_or(0.0, |s| s.cum);
    let hot = share("hot_seventy");
    let cool = share("cool_thirty");
    assert!(
        hot + cool > 80.0,
        "{what}: hot_seventy {hot}% + cool_thirty {cool}% should hold nearly all the time; shares \
         {:?}",
        read.shares
    );
    let hot_part = 100.0 * hot / (hot + cool);
    println!(
        "{what}: hot_seventy {hot_part:.1}% / cool_thirty {:.1}% (expected 70/30 ± 5)",
        100.0 - hot_part
    );
    assert!(
        (hot_part - 70.0).abs() <= 5.0,
        "{what}: hot_seventy has {hot_part:.1}% of the two, expected 70 ± 5"
    );
    let mut path: Vec<String> = (1..=20).map(|i| format!("depth_{i}")).rev().collect();
    path.insert(0, "hot_seventy".to_owned());
    let full = read.traces.iter().filter(|t| {
        let mut want = path.iter().peekable();
        for frame in t.iter() {
            if want.peek().is_some_and(|w| *w == frame) {
                want.next();
            }
        }
        want.peek().is_none()
    });
    let full = full.count();
    let with_hot = read
        .traces
        .iter()
        .filter(|t| t.iter().any(|f| f == "hot_seventy"))
        .count();
    assert!(
        full > 0 && full * 10 >= with_hot * 9,
        "{what}: {full} of {with_hot} stacks through hot_seventy hold the whole depth_1..depth_20 \
         path (expected at least 90%); first traces: {:?}",
        &read.traces[..read.traces.len().min(3)]
    );
}

/// `vitals profile` (the subcommand) of `pid`; returns the profile's path.
fn profile_cli(dir: &Path, pid: u32, seconds: u64, extra: &[&str]) -> PathBuf {
    let out = dir.join(format!("cpu-{pid}-{}.pb.gz", extra.len()));
    let run = Command::new(vitals_bin())
        .args([
            "profile",
            "--pid",
            &pid.to_string(),
            "--seconds",
            &seconds.to_string(),
        ])
        .args(extra)
        .arg("-o")
        .arg(&out)
        .output()
        .expect("run vitals profile");
    assert!(
        run.status.success(),
        "vitals profile failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    out
}

/// Waits until vitals has attached its target.
fn attached(v: &Vitals) {
    v.wait_until(Duration::from_secs(15), "target attached", |e| {
        e.get("vitals_target_up", &[]) == Some(1.0)
    });
}

/// GET a profile from a running vitals; returns (status, body).
fn profile_http(v: &Vitals, query: &str, seconds: u64) -> (u16, Vec<u8>) {
    let url = format!("http://{}/debug/pprof/profile?{query}", v.metrics);
    let r = ureq::get(&url)
        .timeout(Duration::from_secs(seconds + 60))
        .call();
    let r = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("GET {url}: {e}"),
    };
    let status = r.status();
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut r.into_reader(), &mut body).expect("read body");
    (status, body)
}

#[test]
fn frame_pointer_build_gives_the_split_the_cpu_time_and_the_whole_path() {
    let dir = tempfile::tempdir().unwrap();
    let burner = build_burner(dir.path(), true);
    // Waits 1 s, burns 3 s, then idles: the 6 s profile holds all of its CPU time.
    let target = spawn(Command::new(&burner).args(["3", "1"]));
    let pid = target.pid();
    let v = Vitals::start(&["--pid", &pid.to_string(), "--profile-stack-bytes", "0"]);
    attached(&v);
    let before = cpu_seconds(pid);
    let (status, body) = profile_http(&v, "seconds=6&hz=499", 6);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let used = cpu_seconds(pid) - before;
    let file = dir.path().join("fp.pb.gz");
    std::fs::write(&file, &body).unwrap();
    let read = pprof_read(&file);
    assert_burner_profile(&read, "frame pointers");
    // Each sample stands for 1/499 s of CPU time: the profile's total is the CPU the target used.
    println!(
        "sampled CPU {:.3} s, /proc/PID/stat CPU {used:.3} s",
        read.total_seconds
    );
    assert!(
        (read.total_seconds - used).abs() <= 0.15 * used + 0.03,
        "profile total {:.3} s vs {used:.3} s of CPU used (±15%)",
        read.total_seconds
    );
    // The folded format holds the same path.
    let (status, folded) = profile_http(&v, "seconds=1&hz=499&format=folded", 1);
    assert_eq!(status, 200);
    let folded = String::from_utf8(folded).unwrap();
    assert!(folded.lines().all(|l| l
        .rsplit_once(' ')
        .is_some_and(|(_, n)| n.parse::<u64>().is_ok())));
    // The burner idles now; an idle target gives an empty but valid profile.
    let e = v.scrape();
    assert_eq!(
        e.get("vitals_profiler_status", &[("reason", "ok")]),
        Some(1.0),
        "status series: {:?}",
        e.all("vitals_profiler_status")
    );
    let samples = e.get("vitals_profiler_samples_total", &[]).unwrap_or(0.0);
    // `go tool pprof` prints the total to three figures (3.71s for 1,850 samples of 2.004 ms, which
    // reads back as 1,851.3 samples): half a unit of the last figure, 0.5% at most, and one sample.
    let expected = read.total_seconds * 499.0;
    assert!(
        samples >= expected * 0.995 - 1.0,
        "vitals_profiler_samples_total {samples}, the profile alone holds {expected:.0}"
    );
}

/// A target is a process tree: the burner as the child of a shell (`sh -c 'burner; echo done'`) is where
/// the time goes, and the profile of the target is the profile of the tree, split and total as for the
/// burner alone.
#[test]
fn the_profile_of_a_tree_holds_its_child_s_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let burner = build_burner(dir.path(), true);
    let script = format!("{} 3 1; echo done", burner.display());
    let v = Vitals::start(&[
        "--profile-stack-bytes",
        "0",
        "run",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    // The child is the shell's fork until it execs the burner: wait for the member named by the burner.
    let burner_pid = |e: &common::Exposition| {
        e.all("vitals_process_member_memory_usage_bytes")
            .iter()
            .filter_map(|s| {
                let comm = s.labels.iter().find(|(k, _)| k == "comm")?.1.as_str();
                let pid = s
                    .labels
                    .iter()
                    .find(|(k, _)| k == "pid")?
                    .1
                    .parse::<u32>()
                    .ok()?;
                comm.starts_with("burn").then_some(pid)
            })
            .next()
    };
    let e = v.wait_until(
        Duration::from_secs(15),
        "the shell and its burner child",
        |e| {
            e.get("vitals_target_up", &[]) == Some(1.0)
                && e.get("vitals_target_processes", &[]) == Some(2.0)
                && burner_pid(e).is_some()
        },
    );
    let child =
        burner_pid(&e).unwrap_or_else(|| panic!("the burner among the members: {}", e.text));
    let before = cpu_seconds(child);
    let (status, body) = profile_http(&v, "seconds=6&hz=499", 6);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let used = cpu_seconds(child) - before;
    let file = dir.path().join("tree.pb.gz");
    std::fs::write(&file, &body).unwrap();
    let read = pprof_read(&file);
    assert_burner_profile(&read, "the shell's child");
    println!(
        "tree: sampled CPU {:.3} s, the child's /proc/PID/stat CPU {used:.3} s",
        read.total_seconds
    );
    assert!(
        (read.total_seconds - used).abs() <= 0.15 * used + 0.03,
        "profile total {:.3} s vs {used:.3} s of the child's CPU (±15%)",
        read.total_seconds
    );
}

#[test]
fn no_frame_pointer_build_is_unwound_by_dwarf() {
    let dir = tempfile::tempdir().unwrap();
    let burner = build_burner(dir.path(), false);
    let target = spawn(Command::new(&burner).args(["60"]));
    let pid = target.pid();
    // Default: user stacks copied and unwound by .eh_frame.
    let read = pprof_read(&profile_cli(dir.path(), pid, 4, &["--hz", "499"]));
    assert_burner_profile(&read, "DWARF");
    // The check can fail: frame pointers alone do not give the path in this build.
    let fp_only = pprof_read(&profile_cli(
        dir.path(),
        pid,
        2,
        &["--hz", "499", "--profile-stack-bytes", "0"],
    ));
    let full = fp_only
        .traces
        .iter()
        .filter(|t| t.iter().any(|f| f == "depth_1") && t.iter().any(|f| f == "depth_20"))
        .count();
    assert!(
        full * 2 < fp_only.traces.len().max(1),
        "frame pointers alone should not walk a build without them: {full} of {} stacks whole",
        fp_only.traces.len()
    );
}

#[test]
fn kernel_frames_are_named_where_permitted() {
    // dd spends its time in read/write system calls; vitals runs as root here.
    let dd = require_tool("dd", "apt-get install -y coreutils");
    let target = spawn(Command::new(dd).args(["if=/dev/zero", "of=/dev/null", "bs=1"]));
    let dir = tempfile::tempdir().unwrap();
    let read = pprof_read(&profile_cli(dir.path(), target.pid(), 2, &["--hz", "499"]));
    let kernel: f64 = read
        .shares
        .iter()
        .filter(|(n, _)| {
            n.contains("sys_write") || n.contains("sys_read") || n.contains("entry_SYSCALL")
        })
        .map(|(_, s)| s.cum)
        .fold(0.0, f64::max);
    assert!(
        kernel >= 30.0,
        "kernel system call frames should hold most of dd's time, found {kernel}%: {:?}",
        read.shares.keys().take(20).collect::<Vec<_>>()
    );
}

#[test]
fn a_target_in_another_mount_namespace_is_named_from_its_own_files() {
    let unshare = require_tool("unshare", "apt-get install -y util-linux");
    let dir = tempfile::tempdir().unwrap();
    let burner = build_burner(dir.path(), true);
    // In vitals' namespace, the target's path holds another program (true) ...
    let shadow = dir.path().join("ns");
    std::fs::create_dir(&shadow).unwrap();
    std::fs::copy("/bin/true", shadow.join("app")).unwrap();
    // ... while in the target's own namespace a tmpfs over it holds the burner.
    let script = format!(
        "mount -t tmpfs none {s} && cp {b} {s}/app && exec {s}/app 60",
        s = shadow.display(),
        b = burner.display()
    );
    let target =
        spawn(Command::new(unshare).args(["-m", "--propagation", "private", "sh", "-c", &script]));
    let pid = target.pid();
    // Wait for the exec into the namespaced burner.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        != "app"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the namespaced target did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let read = pprof_read(&profile_cli(dir.path(), pid, 3, &["--hz", "499"]));
    assert_burner_profile(&read, "another mount namespace");
}

#[test]
fn node_perf_basic_prof_names_the_hot_js_function() {
    let node = require_tool("node", "apt-get install -y nodejs");
    let scratch = tempfile::tempdir().unwrap();
    let target = spawn(
        Command::new(node)
            .current_dir(scratch.path())
            .arg("--perf-basic-prof")
            // V8 also writes a log per isolate; keep it out of the working tree.
            .arg("--no-logfile-per-isolate")
            .arg(format!(
                "--logfile={}",
                scratch.path().join("v8.log").display()
            ))
            .arg(fixture("hot.js"))
            .arg("60"),
    );
    // Let V8 optimise the function and write its map.
    std::thread::sleep(Duration::from_secs(2));
    let dir = tempfile::tempdir().unwrap();
    let read = pprof_read(&profile_cli(dir.path(), target.pid(), 3, &["--hz", "499"]));
    let hot = read
        .shares
        .iter()
        .filter(|(n, _)| n.contains("hotLoopForVitals"))
        .map(|(_, s)| s.flat)
        .sum::<f64>();
    println!(
        "node: top {:?}, hotLoopForVitals flat {hot}%",
        read.top_flat
    );
    assert!(
        read.top_flat.contains("hotLoopForVitals") && hot >= 50.0,
        "the hot JS function should be at the top with most of the time: top {:?}, {hot}%",
        read.top_flat
    );
}

/// A CPython of 3.12 or later (with `-X perf`): on PATH, under pyenv, or installed by `uv`.
fn python312() -> Option<PathBuf> {
    let home = std::env::var("HOME").unwrap_or_default();
    let mut candidates: Vec<PathBuf> = ["python3.13", "python3.12"]
        .iter()
        .flat_map(|n| {
            std::env::var("PATH")
                .unwrap_or_default()
                .split(':')
                .map(|d| Path::new(d).join(n))
                .collect::<Vec<_>>()
        })
        .collect();
    for base in [
        format!("{home}/.pyenv/versions"),
        format!("{home}/.local/share/uv/python"),
    ] {
        if let Ok(entries) = std::fs::read_dir(&base) {
            for e in entries.flatten() {
                candidates.push(e.path().join("bin/python3.12"));
                candidates.push(e.path().join("bin/python3.13"));
            }
        }
    }
    candidates.into_iter().find(|p| {
        p.is_file()
            && Command::new(p)
                .args([
                    "-c",
                    "import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)",
                ])
                .status()
                .is_ok_and(|s| s.success())
    })
}

#[test]
fn python_x_perf_names_the_hot_python_function() {
    let python = python312().unwrap_or_else(|| {
        panic!(
            "this test needs CPython 3.12 or later: `pip install uv && uv python install 3.12` \
             (.ci/run does)"
        )
    });
    let target = spawn(
        Command::new(python)
            .args(["-X", "perf"])
            .arg(fixture("hot.py"))
            .arg("60"),
    );
    std::thread::sleep(Duration::from_secs(1));
    let dir = tempfile::tempdir().unwrap();
    let read = pprof_read(&profile_cli(dir.path(), target.pid(), 3, &["--hz", "499"]));
    let hot = read
        .shares
        .iter()
        .filter(|(n, _)| n.contains("py::hot_loop_for_vitals"))
        .map(|(_, s)| s.cum)
        .fold(0.0, f64::max);
    println!("python: py::hot_loop_for_vitals cum {hot}%");
    assert!(
        hot >= 60.0,
        "py::hot_loop_for_vitals should hold most of the time, found {hot}%: {:?}",
        read.shares
            .keys()
            .filter(|n| n.starts_with("py::"))
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_real_jvm_hot_method_is_named_without_a_jdk_tool() {
    let java = require_tool("java", "apt-get install -y openjdk-17-jdk-headless");
    let classes = common::compile_java("HotJava");
    let target = spawn(Command::new(java).arg("-cp").arg(classes.path()).args([
        "-XX:+UnlockDiagnosticVMOptions",
        "HotJava",
        "60",
    ]));
    std::thread::sleep(Duration::from_secs(2));
    let v = Vitals::start(&["--pid", &target.pid().to_string()]);
    attached(&v);
    let (status, body) = profile_http(&v, "seconds=3&hz=499", 3);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jvm.pb.gz");
    std::fs::write(&file, &body).unwrap();
    let read = pprof_read(&file);
    let hot = read
        .shares
        .iter()
        .filter(|(n, _)| n.contains("HotJava") && n.contains("hotMethodForVitals"))
        .map(|(_, s)| s.flat)
        .sum::<f64>();
    println!(
        "jvm: top {:?}, hotMethodForVitals flat {hot}%",
        read.top_flat
    );
    assert!(
        hot >= 50.0,
        "HotJava.hotMethodForVitals should hold most of the time: {hot}%; top {:?}",
        read.top_flat
    );
}

#[test]
fn another_users_target_is_refused_with_the_reason_and_the_same_user_gets_user_frames() {
    let runuser = require_tool("runuser", "apt-get install -y util-linux");
    let dir = tempfile::tempdir().unwrap();
    let burner = build_burner(dir.path(), true);
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    // The target runs as root, vitals as nobody.
    let root_target = spawn(Command::new(&burner).arg("60"));
    let refused = Command::new(&runuser)
        .args(["-u", "nobody", "--"])
        .arg(vitals_bin())
        .args(["profile", "--seconds", "1", "-o", "/dev/null", "--pid"])
        .arg(root_target.pid().to_string())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert!(err.contains("another user"), "{err}");
    // The server says so on /metrics and on the endpoint, and keeps serving. setpriv execs vitals in
    // the process it starts, so killing that process stops vitals (runuser would stay as its parent).
    let setpriv = require_tool("setpriv", "apt-get install -y util-linux");
    let mut cmd = Command::new(&setpriv);
    cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(vitals_bin());
    let v = vitals_as(&mut cmd, &["--pid", &root_target.pid().to_string()]);
    v.wait_until(Duration::from_secs(15), "profiler checked", |e| {
        e.get(
            "vitals_profiler_status",
            &[("reason", "not_permitted_other_user")],
        ) == Some(1.0)
    });
    let (status, body) = profile_http(&v, "seconds=1", 1);
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("another user"));
    assert_eq!(v.get("/healthz", None).0, 200);
    // A target of the same unprivileged user is profiled, without kernel frames at paranoid 2.
    let paranoid = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid").unwrap();
    let own = spawn(
        Command::new(setpriv)
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(&burner)
            .arg("60"),
    );
    let out = dir.path().join("nobody.folded");
    let ok = Command::new(&runuser)
        .args(["-u", "nobody", "--"])
        .arg(vitals_bin())
        .args([
            "profile",
            "--seconds",
            "2",
            "--hz",
            "499",
            "--format",
            "folded",
            "-o",
            "-",
            "--pid",
        ])
        .arg(own.pid().to_string())
        .output()
        .unwrap();
    std::fs::write(&out, &ok.stdout).unwrap();
    let err = String::from_utf8_lossy(&ok.stderr);
    assert!(ok.status.success(), "{err}");
    let folded = String::from_utf8_lossy(&ok.stdout);
    let samples: u64 = folded
        .lines()
        .filter(|l| l.contains("hot_seventy"))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, n)| n.parse::<u64>().ok()))
        .sum();
    assert!(samples > 10, "{folded}");
    if paranoid.trim().parse::<i32>().unwrap_or(2) >= 2 {
        assert!(err.contains("user frames only"), "{err}");
    }
}

/// Starts vitals through `cmd` (a runuser prefix) with loopback listeners.
fn vitals_as(cmd: &mut Command, args: &[&str]) -> Vitals {
    use std::io::BufRead;
    cmd.args([
        "--metrics-addr",
        "127.0.0.1:0",
        "--otlp-grpc-addr",
        "off",
        "--otlp-http-addr",
        "off",
    ])
    .args(args)
    .env("VITALS_LOG_LEVEL", "info")
    .stdin(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start vitals");
    let stderr = child.stderr.take().unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let log2 = log.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(at) = line.find("addr=") {
                if line.contains("serving /metrics") {
                    if let Ok(a) = line[at + 5..].split(' ').next().unwrap_or("").parse() {
                        let _ = tx.send(a);
                    }
                }
            }
            log2.lock().unwrap().push_str(&line);
            log2.lock().unwrap().push('\n');
        }
    });
    let metrics = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("vitals serving /metrics");
    Vitals {
        child,
        metrics,
        log,
    }
}

/// Runs headless Chromium on `url` with `what` (`--dump-dom` or `--screenshot=PATH`) after `ms` of real
/// time (the page's stream never ends, so the page never goes idle on its own); killed after a minute.
fn chromium(url: &str, what: &str, ms: u32) -> String {
    let chromium = require_tool("chromium", "apt-get install -y chromium");
    let data = tempfile::tempdir().unwrap();
    let out = Command::new("timeout")
        .arg("60")
        .arg(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--window-size=1400,1500",
        ])
        .arg(format!("--user-data-dir={}", data.path().display()))
        .arg(format!("--timeout={ms}"))
        .arg(what)
        .arg(url)
        .stderr(Stdio::null())
        .output()
        .expect("run chromium");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_live_page_draws_the_flame_graph_of_a_real_profile() {
    let dir = tempfile::tempdir().unwrap();
    let burner = build_burner(dir.path(), true);
    let target = spawn(Command::new(&burner).arg("60"));
    let v = Vitals::start(&["--pid", &target.pid().to_string()]);
    attached(&v);
    // The page shows the last profile taken; its button takes the same request for 10 s.
    let (status, body) = profile_http(&v, "seconds=3&hz=499&format=folded", 3);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let url = format!("http://{}/", v.metrics);
    let dom = chromium(&url, "--dump-dom", 8000);
    // The top functions by total time list the burner's split (hot_seventy ~70% of the samples).
    let share = |table: &str, f: &str| -> Option<f64> {
        let t = &dom[dom.find(&format!("id=\"profile-{table}\""))?..];
        let at = t.find(&format!("data-fn=\"{f}\""))?;
        let rest = &t[at..];
        let s = &rest[rest.find("data-share=\"")? + 12..];
        s[..s.find('"')?].parse().ok()
    };
    let hot = share("total", "hot_seventy").unwrap_or_else(|| panic!("no hot_seventy row: {dom}"));
    let cool = share("total", "cool_thirty").expect("a cool_thirty row");
    let spin = share("self", "spin").expect("spin in the top by self time");
    println!("live page: hot_seventy {hot:.3}, cool_thirty {cool:.3} of all samples; spin self {spin:.3}");
    assert!(
        (hot / (hot + cool) - 0.7).abs() <= 0.05,
        "hot {hot} cool {cool}"
    );
    assert!(spin > 0.9, "spin does the work: self share {spin}");
    // The flame graph holds the whole path, one box per frame.
    for f in ["depth_1", "depth_20", "hot_seventy", "cool_thirty", "spin"] {
        assert!(
            dom.contains(&format!("data-fn=\"{f}\"")),
            "no {f} box in the flame graph"
        );
    }
    // The screenshot artefact.
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artefacts");
    std::fs::create_dir_all(&shots).unwrap();
    let png = shots.join("profile_flame_graph.png");
    chromium(&url, &format!("--screenshot={}", png.display()), 8000);
    let bytes = std::fs::read(&png).expect("the screenshot");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    eprintln!("screenshot: {} ({} bytes)", png.display(), bytes.len());
}

/// GET `path` from vitals as bytes; (status, body).
fn get_bytes(v: &Vitals, path: &str) -> (u16, Vec<u8>) {
    let url = format!("http://{}{path}", v.metrics);
    let r = match ureq::get(&url).timeout(Duration::from_secs(30)).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("GET {url}: {e}"),
    };
    let status = r.status();
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut r.into_reader(), &mut body).expect("read body");
    (status, body)
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Resident memory of `pid` in bytes.
fn rss_bytes(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("VmRSS");
    kib * 1024.0
}

#[test]
fn a_latency_onset_in_a_real_flask_app_keeps_the_profile_of_the_function_that_caused_it() {
    let gcc = require_tool("gcc", "apt-get install -y gcc libc6-dev");
    let _ = go();
    let python = common::sdk_python();
    let dir = tempfile::tempdir().unwrap();
    let library = dir.path().join("libreport.so");
    let ok = Command::new(gcc)
        .args(["-O2", "-g", "-shared", "-fPIC", "-o"])
        .arg(&library)
        .arg(fixture("report.c"))
        .status()
        .expect("run gcc");
    assert!(ok.success(), "gcc report.c");
    let port = common::free_port();
    let v = Vitals::start(&[
        "--profile-continuous=true",
        "run",
        "--",
        python.to_str().unwrap(),
        common::child_script("slow_flask.py").to_str().unwrap(),
        &port.to_string(),
        library.to_str().unwrap(),
    ]);
    let base = format!("http://127.0.0.1:{port}/report");
    let get = |rows: u32| {
        ureq::get(&format!("{base}?rows={rows}"))
            .timeout(Duration::from_secs(30))
            .call()
            .is_ok()
    };
    let up = std::time::Instant::now();
    while !get(1) {
        assert!(
            up.elapsed() < Duration::from_secs(30),
            "the Flask app never answered"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Healthy: 150 fast requests (well under a millisecond of work each), seen by vitals as spans.
    for _ in 0..150 {
        assert!(get(1));
    }
    let e = v.wait_until(Duration::from_secs(20), "the fast requests' spans", |e| {
        e.sum("vitals_request_duration_seconds_count", &[]) >= 150.0
    });
    let app_pid: u32 = e
        .find("vitals_target_info", &[])
        .and_then(|s| s.labels.iter().find(|(k, _)| k == "pid"))
        .and_then(|(_, p)| p.parse().ok())
        .expect("the app's pid");
    // Ground truth: the app's CPU time, read every 200 ms with the time it was read.
    let stop_clock = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop_clock.clone();
    let clock = std::thread::spawn(move || {
        let mut readings = Vec::new();
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            readings.push((unix_now(), cpu_seconds(app_pid)));
            std::thread::sleep(Duration::from_millis(200));
        }
        readings
    });
    let healthy = v.get("/debug/pprof/captures", None);
    assert_eq!(healthy.0, 200, "{}", healthy.2);
    let listing: serde_json::Value = serde_json::from_str(&healthy.2).unwrap();
    assert_eq!(
        listing["captures"].as_array().unwrap().len(),
        0,
        "{listing}"
    );
    // Trouble: every request now renders 7000 rows, ~0.7 s of CPU in render_report_slowly, so the p99
    // crosses the shipped rule's 0.5 s. Bounded: at most 80 requests or 70 s.
    let slow_from = unix_now();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (flag, slow_base) = (stop.clone(), base.clone());
    let load = std::thread::spawn(move || {
        let t = std::time::Instant::now();
        let mut n = 0;
        while n < 80
            && t.elapsed() < Duration::from_secs(70)
            && !flag.load(std::sync::atomic::Ordering::Relaxed)
        {
            let _ = ureq::get(&format!("{slow_base}?rows=7000"))
                .timeout(Duration::from_secs(30))
                .call();
            n += 1;
        }
        n
    });
    let t = std::time::Instant::now();
    let listing = loop {
        let (_, _, body) = v.get("/debug/pprof/captures", None);
        let l: serde_json::Value = serde_json::from_str(&body).unwrap();
        if !l["captures"].as_array().unwrap().is_empty() {
            break l;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no capture 60 s into the trouble: {l}\nlog:\n{}",
            v.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let slow_requests = load.join().unwrap();
    let c = &listing["captures"][0];
    let at = c["at"].as_f64().unwrap();
    println!(
        "capture {}: {} at {:.1} s after the slow requests began ({} slow requests); window {:.1} s; \
         listing top {}",
        c["id"],
        c["alert"],
        at - slow_from,
        slow_requests,
        c["to"].as_f64().unwrap() - c["from"].as_f64().unwrap(),
        c["top"]
    );
    assert_eq!(c["alert"], "VitalsLatencyP99High", "{listing}");
    assert_eq!(c["threshold"], 0.5);
    assert!(c["value"].as_f64().unwrap() > 0.5, "{c}");
    // The onset follows the first slow requests (spans are exported every 200 ms, the page evaluates
    // once a second): within 15 s of the trouble's start, never before it.
    assert!(
        at >= slow_from && at <= slow_from + 15.0,
        "onset {at} vs trouble from {slow_from}"
    );
    // Around the moment: from before the trouble to at least AFTER (10 s) past the onset.
    assert!(c["from"].as_f64().unwrap() <= slow_from, "{c}");
    assert!(c["to"].as_f64().unwrap() >= at + 10.0, "{c}");
    // go tool pprof reads the capture; its top function by self time is the one that made it slow.
    let url = c["url"].as_str().unwrap();
    let (status, body) = get_bytes(&v, &format!("/{url}"));
    assert_eq!(status, 200);
    let file = dir.path().join("capture.pb.gz");
    std::fs::write(&file, &body).unwrap();
    let read = pprof_read(&file);
    let hot = read
        .shares
        .get("render_report_slowly")
        .map_or(0.0, |s| s.flat);
    println!(
        "capture read by go tool pprof: top function {} ({hot:.1}% flat of {:.2} s sampled)",
        read.top_flat, read.total_seconds
    );
    assert_eq!(read.top_flat, "render_report_slowly", "{:?}", read.shares);
    assert!(hot >= 50.0, "render_report_slowly has {hot}% flat");
    // The capture's total is the CPU the app used in its window, as /proc/PID/stat counted it (±30% +
    // 0.3 s: at 19 Hz three seconds of CPU are ~60 samples, ±13% by chance alone; samples are put in a
    // segment when read, up to 100 ms late, and the readings are 200 ms apart, at both window ends).
    stop_clock.store(true, std::sync::atomic::Ordering::Relaxed);
    let readings = clock.join().unwrap();
    let at_time = |t: f64| {
        readings
            .iter()
            .find(|(when, _)| *when >= t)
            .or(readings.last())
            .map_or(0.0, |(_, cpu)| *cpu)
    };
    let used = at_time(c["to"].as_f64().unwrap()) - at_time(c["from"].as_f64().unwrap());
    println!(
        "capture total {:.2} s sampled vs {used:.2} s of CPU the app used in its window",
        read.total_seconds
    );
    assert!(
        (read.total_seconds - used).abs() <= 0.3 * used + 0.3,
        "capture total {:.2} s vs {used:.2} s used",
        read.total_seconds
    );
    // The capture says why it was taken.
    let comments = Command::new(go())
        .args(["tool", "pprof", "-comments"])
        .arg(&file)
        .output()
        .unwrap();
    let comments = String::from_utf8_lossy(&comments.stdout);
    assert!(
        comments.contains("captured on VitalsLatencyP99High (warning)"),
        "{comments}"
    );
    assert_eq!(c["top"][0]["function"], "render_report_slowly", "{c}");
    let (status, folded) = get_bytes(&v, &format!("/{url}?format=folded"));
    assert_eq!(status, 200);
    let folded = String::from_utf8(folded).unwrap();
    assert!(folded.contains(";render_report_slowly "), "{folded}");
    let missing = get_bytes(&v, "/debug/pprof/capture/999");
    assert_eq!(missing.0, 404);
    assert_eq!(get_bytes(&v, "/debug/pprof/capture/x").0, 400);
    // The counts on /metrics.
    let e = v.scrape();
    assert_eq!(
        e.get(
            "vitals_profiler_captures_total",
            &[("alert", "VitalsLatencyP99High")]
        ),
        Some(1.0)
    );
    let ring = e.get("vitals_profiler_ring_bytes", &[]).unwrap();
    assert!(ring > 0.0 && ring <= (8 << 20) as f64, "ring {ring}");
    assert_eq!(
        e.get("vitals_profiler_captures_kept_bytes", &[]),
        Some(body.len() as f64)
    );
    // The live page lists it, with its alert and top function.
    let dom = chromium(&format!("http://{}/", v.metrics), "--dump-dom", 8000);
    let row = dom
        .find(&format!("data-capture=\"{}\"", c["id"]))
        .map(|at| &dom[at..dom[at..].find("</tr>").map_or(dom.len(), |e| at + e)])
        .unwrap_or_else(|| panic!("no capture row on the live page: {dom}"));
    assert!(
        row.contains("VitalsLatencyP99High") && row.contains("render_report_slowly"),
        "{row}"
    );
    // SIGTERM: vitals ends the app it runs.
    let _ = v.terminate();
}

#[test]
fn the_continuous_ring_keeps_its_memory_bound_under_very_many_distinct_stacks() {
    let gcc = require_tool("gcc", "apt-get install -y gcc libc6-dev");
    let dir = tempfile::tempdir().unwrap();
    let target_bin = dir.path().join("many_stacks");
    let ok = Command::new(gcc)
        .args(["-O2", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(&target_bin)
        .arg(fixture("many_stacks.c"))
        .arg("-lpthread")
        .status()
        .expect("run gcc");
    assert!(ok.success(), "gcc many_stacks.c");
    let target = spawn(Command::new(&target_bin).arg("90"));
    const LIMIT: f64 = 262_144.0;
    let v = Vitals::start(&[
        "--pid",
        &target.pid().to_string(),
        "--profile-continuous",
        "--profile-continuous-hz",
        "999",
        "--profile-ring-bytes",
        "262144",
        "--profile-stack-bytes",
        "0",
    ]);
    attached(&v);
    let vitals_pid = v.child.id();
    std::thread::sleep(Duration::from_secs(3));
    let rss_start = rss_bytes(vitals_pid);
    let mut highest = 0.0f64;
    let t = std::time::Instant::now();
    // Four and a half segments: the ring fills (three finished, one being filled) and starts evicting.
    while t.elapsed() < Duration::from_secs(45) {
        let ring = v
            .scrape()
            .get("vitals_profiler_ring_bytes", &[])
            .expect("the ring gauge");
        assert!(ring <= LIMIT, "ring {ring} bytes over the bound {LIMIT}");
        highest = highest.max(ring);
        std::thread::sleep(Duration::from_millis(500));
    }
    let rss_end = rss_bytes(vitals_pid);
    let e = v.scrape();
    let samples = e.get("vitals_profiler_samples_total", &[]).unwrap();
    let (_, _, body) = v.get("/debug/pprof/captures", None);
    let listing: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ring = &listing["continuous"];
    // ~100 frames per stack: what the samples would need if every distinct stack were kept.
    let unbounded = samples * (100.0 * 8.0);
    println!(
        "ring: highest {highest} bytes of {LIMIT}; {samples} samples ({:.1} MB if all were kept); \
         {} segments, {} evicted, {} leaf-only, {} dropped; vitals RSS {:.1} -> {:.1} MB",
        unbounded / 1e6,
        ring["segments"],
        ring["evicted_segments"],
        ring["leaf_only_samples"],
        ring["dropped_samples"],
        rss_start / 1e6,
        rss_end / 1e6
    );
    assert!(
        unbounded >= 10.0 * LIMIT,
        "the target made too few samples ({samples}) to test the bound"
    );
    assert!(
        highest >= 0.6 * LIMIT,
        "the ring never neared its bound: {highest}"
    );
    assert!(ring["evicted_segments"].as_u64().unwrap() >= 1, "{ring}");
    assert!(ring["leaf_only_samples"].as_u64().unwrap() > 0, "{ring}");
    // vitals' memory did not grow with the samples: at most 4 MiB over 45 s (allocator slack), where
    // keeping every stack would have grown it by the figure above.
    assert!(
        rss_end - rss_start <= 4.0 * 1024.0 * 1024.0,
        "vitals RSS grew {:.1} MB",
        (rss_end - rss_start) / 1e6
    );
}
