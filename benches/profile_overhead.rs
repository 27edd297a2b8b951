//! What CPU profiling costs: a busy 4-thread C target (tests/fixtures/profile/burn.c) runs for a fixed
//! wall time with no profiler, then profiled at 99 Hz (on-demand rate) and at 19 Hz (a continuous rate),
//! in alternating rounds. Prints, per mode, the median of:
//! - the target's work per CPU second (rounds of its loop / its utime+stime), whose drop against the
//!   unprofiled runs of the same rounds is the CPU profiling adds to the target (sample interrupts and
//!   stack copies run on its time);
//! - the profiler's own CPU while sampling (thread CPU time of the sampling loop: draining, DWARF
//!   unwinding), as a share of one core, and the one-off CPU of naming the addresses at the end.
//!
//! `cargo bench --bench profile_overhead` (VITALS_BENCH_SECS sets the run length, default 8; ROUNDS the
//! alternations, default 3). Needs gcc and perf events (perf_event_paranoid <= 2 or root).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use vitals::profile::session;
use vitals::profile::ProfilerSettings;

struct Held(Child);
impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn thread_cpu() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

fn cpu_seconds(pid: u32) -> f64 {
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

/// One run: (target work per CPU second, profiler sampling CPU share of a core, naming CPU seconds).
fn run(burner: &Path, seconds: f64, hz: Option<u64>) -> (f64, f64, f64) {
    let mut child = Command::new(burner)
        .arg(format!("{seconds}"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the burner");
    let pid = child.id();
    let stdout = child.stdout.take().expect("stdout");
    let held = Held(child);
    let (mut sampling, mut naming) = (0.0, 0.0);
    if let Some(hz) = hz {
        let settings = ProfilerSettings {
            frequency_hz: hz,
            ..ProfilerSettings::default()
        };
        let stop = AtomicBool::new(false);
        let counter = AtomicU64::new(0);
        let t0 = thread_cpu();
        let rec = session::record(
            &settings,
            &[pid],
            Duration::from_secs_f64(seconds - 0.2),
            &stop,
            &counter,
        )
        .expect("perf events (run as root or with perf_event_paranoid <= 2)");
        let t1 = thread_cpu();
        sampling = (t1 - t0) / rec.duration.as_secs_f64();
        let _profile = session::finish(&settings, &[pid], rec);
        naming = thread_cpu() - t1;
    }
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the burner's count");
    let rounds: f64 = line.trim().parse().expect("a count");
    let cpu = cpu_seconds(pid);
    drop(held);
    (rounds / cpu, sampling, naming)
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
    let modes: [(&str, Option<u64>); 3] = [("off", None), ("99 Hz", Some(99)), ("19 Hz", Some(19))];
    let mut work: Vec<Vec<f64>> = vec![Vec::new(); 3];
    let mut sampling: Vec<Vec<f64>> = vec![Vec::new(); 3];
    let mut naming: Vec<Vec<f64>> = vec![Vec::new(); 3];
    for _ in 0..rounds {
        for (i, (_, hz)) in modes.iter().enumerate() {
            let (w, s, n) = run(&burner, seconds, *hz);
            work[i].push(w);
            sampling[i].push(s);
            naming[i].push(n);
        }
    }
    println!(
        "profile overhead: busy 4-thread target, {seconds} s runs, median of {rounds} alternating rounds"
    );
    let base = median(work[0].clone());
    println!("  off   : {base:.1} rounds per target CPU second");
    for i in 1..3 {
        let w = median(work[i].clone());
        println!(
            "  {:6}: {w:.1} rounds per target CPU second ({:+.2}% target CPU per unit of work), \
             profiler sampling {:.3}% of a core, naming {:.3} s CPU once per profile",
            modes[i].0,
            100.0 * (base / w - 1.0),
            100.0 * median(sampling[i].clone()),
            median(naming[i].clone()),
        );
    }
}
