//! What CPU profiling costs, measured on the release binary: a busy 4-thread C target
//! (tests/fixtures/profile/burn.c) watched by `vitals --pid`, in alternating rounds of four modes:
//! - `off`: vitals attached, no profile (the baseline of both the target and vitals);
//! - `99 Hz on demand`: one `/debug/pprof/profile` request covering the whole burn;
//! - `19 Hz continuous`: `--profile-continuous=true` at its default rate;
//! - `99 Hz continuous`: `--profile-continuous=true --profile-continuous-hz 99`;
//! - `999 Hz continuous`: six to ten times the samples (its rings overflow on a busy CPU even read every
//!   5 ms), so that their cost stands out of the machine's noise; the cost per sample it gives (over the
//!   samples counted in `vitals_profiler_samples_total`), times 99, is what 99 Hz costs.
//!
//! Per mode it prints the median over the rounds of:
//! - the CPU profiling adds to the target: its CPU per unit of work (rounds of its loop over the CPU time
//!   of all its threads, from `/proc/PID/stat`) against the `off` run of the same round, so a slow
//!   stretch of the machine weighs on both sides of each ratio; sample interrupts and stack copies run
//!   on the target's time;
//! - the CPU vitals uses during the burn, as a share of one core, and what profiling adds to it over `off`;
//!   that added CPU is also given as a share of the target's own CPU;
//! - for the on-demand profile, the one-off CPU of naming the addresses after sampling.
//!
//! `cargo bench --bench profile_overhead` (VITALS_BENCH_SECS sets the burn length, default 8; ROUNDS the
//! rounds, default 3). Needs gcc and perf events (perf_event_paranoid <= 2, or root).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Held(Child);
impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU seconds of every live thread of `pid`, from schedstat (nanoseconds): vitals' own, whose threads
/// live through a run.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .sum::<f64>()
        / 1e9
}

/// CPU seconds of `pid` from `/proc/PID/stat` (utime + stime, clock ticks), which keeps the time of
/// threads that ended: the burner's workers have exited when its count is read.
fn process_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(end) = stat.rfind(')') else {
        return 0.0;
    };
    let f: Vec<&str> = stat[end + 2..].split_whitespace().collect();
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0)) / hz
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[derive(Clone, Copy)]
enum Mode {
    Off,
    OnDemand99,
    Continuous(u64),
}

impl Mode {
    fn name(self) -> String {
        match self {
            Mode::Off => "off".into(),
            Mode::OnDemand99 => "99 Hz on demand".into(),
            Mode::Continuous(hz) => format!("{hz} Hz continuous"),
        }
    }
}

/// One run's figures.
struct Run {
    /// Target work per target CPU second.
    work: f64,
    /// Target CPU cores used during the burn.
    target_cores: f64,
    /// vitals CPU cores used during the burn.
    vitals_cores: f64,
    /// vitals CPU seconds after the burn until the profile was answered (naming).
    naming: f64,
    /// Samples vitals took per second of the target's CPU during the burn (continuous modes).
    samples_per_cpu_second: f64,
}

/// `vitals_profiler_samples_total` from a scrape of `base`.
fn samples_taken(base: &str) -> f64 {
    let Ok(r) = ureq::get(&format!("{base}/metrics")).call() else {
        return 0.0;
    };
    r.into_string()
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("vitals_profiler_samples_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn run(burner: &Path, seconds: f64, mode: Mode) -> Run {
    // Idles 2 s (vitals attaches, the profile starts), burns `seconds`, prints its rounds, idles.
    let mut target = Command::new(burner)
        .args([format!("{seconds}"), "2".into()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the burner");
    let spawned = Instant::now();
    let pid = target.id();
    let stdout = target.stdout.take().expect("stdout");
    let target = Held(target);
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vitals"));
    cmd.args([
        "--pid",
        &pid.to_string(),
        "--metrics-addr",
        &format!("127.0.0.1:{port}"),
        "--otlp-grpc-addr",
        "off",
        "--otlp-http-addr",
        "off",
    ]);
    if let Mode::Continuous(hz) = mode {
        cmd.args([
            "--profile-continuous=true",
            "--profile-continuous-hz",
            &hz.to_string(),
        ]);
    }
    let vitals = Held(
        cmd.env("VITALS_LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start the release vitals"),
    );
    let vpid = vitals.0.id();
    let base = format!("http://127.0.0.1:{port}");
    while ureq::get(&format!("{base}/readyz")).call().is_err() {
        assert!(
            spawned.elapsed() < Duration::from_millis(1800),
            "vitals not ready"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let profile = matches!(mode, Mode::OnDemand99).then(|| {
        let url = format!(
            "{base}/debug/pprof/profile?seconds={}",
            (seconds + 2.5 - spawned.elapsed().as_secs_f64()).ceil()
        );
        std::thread::spawn(move || {
            let r = ureq::get(&url)
                .timeout(Duration::from_secs(120))
                .call()
                .expect("the profile");
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut r.into_reader(), &mut body).expect("its body");
            body.len()
        })
    });
    std::thread::sleep(Duration::from_secs(2).saturating_sub(spawned.elapsed()));
    let samples0 = samples_taken(&base);
    let (started, target0, vitals0) = (Instant::now(), process_cpu_seconds(pid), cpu_seconds(vpid));
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the burner's count");
    let (wall, target1, vitals1) = (
        started.elapsed().as_secs_f64(),
        process_cpu_seconds(pid),
        cpu_seconds(vpid),
    );
    let samples1 = samples_taken(&base);
    let rounds: f64 = line.trim().parse().expect("a count");
    let naming = match profile {
        Some(p) => {
            let bytes = p.join().expect("the profile request");
            assert!(bytes > 100, "a profile of {bytes} bytes");
            cpu_seconds(vpid) - vitals1
        }
        None => 0.0,
    };
    drop(vitals);
    drop(target);
    Run {
        work: rounds / (target1 - target0),
        target_cores: (target1 - target0) / wall,
        vitals_cores: (vitals1 - vitals0) / wall,
        naming,
        samples_per_cpu_second: (samples1 - samples0) / (target1 - target0),
    }
}

fn main() {
    let seconds: f64 = std::env::var("VITALS_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8.0);
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().expect("temporary directory");
    let burner = dir.path().join("burn4");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/profile/burn.c");
    let ok = Command::new("gcc")
        .args(["-O2", "-g", "-fno-omit-frame-pointer", "-DTHREADS=4", "-o"])
        .arg(&burner)
        .arg(&src)
        .arg("-lpthread")
        .status()
        .expect("gcc");
    assert!(ok.success());
    let modes = [
        Mode::Off,
        Mode::OnDemand99,
        Mode::Continuous(19),
        Mode::Continuous(99),
        Mode::Continuous(999),
    ];
    let mut runs: Vec<Vec<Run>> = modes.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for (i, mode) in modes.iter().enumerate() {
            runs[i].push(run(&burner, seconds, *mode));
        }
    }
    let med = |i: usize, f: fn(&Run) -> f64| median(runs[i].iter().map(f).collect());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "profile overhead: release vitals --pid on a busy 4-thread C target ({cpus} CPUs), {seconds} s \
         burns, median of {rounds} alternating rounds"
    );
    let base_work = med(0, |r| r.work);
    let base_vitals = med(0, |r| r.vitals_cores);
    println!(
        "  {:18} target {:.2} cores, {base_work:.1} rounds per target CPU second; vitals {:.3}% of a core",
        modes[0].name(),
        med(0, |r| r.target_cores),
        100.0 * base_vitals,
    );
    for (i, mode) in modes.iter().enumerate().skip(1) {
        let work = med(i, |r| r.work);
        // Per round, this mode's CPU per unit of work over off's in the same round.
        let paired = median(
            runs[i]
                .iter()
                .zip(&runs[0])
                .map(|(r, off)| off.work / r.work - 1.0)
                .collect(),
        );
        let target_cores = med(i, |r| r.target_cores);
        let vitals = med(i, |r| r.vitals_cores);
        let added = vitals - base_vitals;
        print!(
            "  {:18} target {target_cores:.2} cores, {work:.1} rounds per CPU s ({:+.2}% target CPU per \
             unit of work, paired by round); vitals {:.3}% of a core ({:+.3}% over off = {:.2}% of the \
             target's CPU)",
            mode.name(),
            100.0 * paired,
            100.0 * vitals,
            100.0 * added,
            100.0 * added / target_cores.max(1e-9),
        );
        if matches!(mode, Mode::OnDemand99) {
            print!(", naming {:.3} s CPU once", med(i, |r| r.naming));
        }
        // Only the 999 Hz mode's change stands out of the machine's noise (about ±2% of the target's
        // CPU per unit of work between identical runs); its cost per sample bounds the others'.
        if let Mode::Continuous(hz @ 999) = mode {
            // The samples actually taken per second of the target's CPU (at most `hz`: a thread is
            // sampled while it runs; fewer when the rings overflow between reads).
            let rate = med(i, |r| r.samples_per_cpu_second);
            let per_sample_us = paired * 1e6 / rate.max(1e-9);
            print!(
                "; {rate:.0} samples per target CPU second (asked {hz}), {per_sample_us:.1} us of target \
                 CPU per sample, so {:+.2}% at 99 Hz",
                per_sample_us * 99.0 / 1e6 * 100.0
            );
        }
        println!();
    }
}
