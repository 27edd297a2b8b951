//! Prints what the foundation costs: µs per procfs+cgroup tick on a live process (next to the `procfs`
//! crate reading the same files as a baseline), µs per smaps_rollup read per GiB of RSS, /metrics encode
//! time for 1k and 30k series, and the procfs part of a tick for process trees of 1 to 5,000 processes.
//! The sidecar's idle cost beside process-exporter is `cargo bench --bench idle`.
//!
//! `cargo bench --bench tick`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{cpu_ns, rss_kib, sleeping_tree};
use vitals::export::prometheus::{encode, Format};
use vitals::model::{Metric, MetricKind, Value};
use vitals::probe::cgroup::{locate, CgroupReader, CgroupRoots};
use vitals::probe::procfs::ProcReader;
use vitals::probe::ReadErrorSink;
use vitals::probe::ReadSource;

struct Quiet;
impl ReadErrorSink for Quiet {
    fn read_error(&self, _: ReadSource) {}
    fn read_duration(&self, _: ReadSource, _: Duration) {}
}

struct Held(Child);
impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn hold(args: &[&str]) -> Held {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/children/hold.py");
    let mut c = Command::new("python3")
        .arg(script)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    // Read up to "ready" (a listener prints its port first).
    let mut out = BufReader::new(c.stdout.take().unwrap());
    let mut line = String::new();
    while out.read_line(&mut line).unwrap_or(0) > 0 && line.trim() != "ready" {
        line.clear();
    }
    Held(c)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summarize(mut xs: Vec<f64>) -> (f64, f64) {
    xs.sort_by(|a, b| a.total_cmp(b));
    (percentile(&xs, 0.5), percentile(&xs, 0.9))
}

fn time_each(n: usize, mut f: impl FnMut()) -> (f64, f64) {
    for _ in 0..n / 10 {
        f();
    }
    let mut xs = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f();
        xs.push(t.elapsed().as_secs_f64() * 1e6);
    }
    summarize(xs)
}

fn bench_tick() {
    let child = hold(&["--threads", "4", "--fds", "16"]);
    let pid = child.0.id();
    let proc_root = Path::new("/proc");
    let mut reader = ProcReader::open(proc_root, pid, None).unwrap();
    let roots = CgroupRoots {
        proc_root: proc_root.into(),
        host_root: "/sys/fs/cgroup".into(),
    };
    let mut cg = locate(&roots, pid)
        .ok()
        .map(|d| CgroupReader::open(&d, proc_root));
    let (p50_proc, p90_proc) = time_each(5000, || {
        reader.sample(&Quiet).unwrap();
    });
    let (p50_cg, p90_cg) = time_each(5000, || {
        if let Some(c) = cg.as_mut() {
            c.sample(&Quiet);
        }
    });
    // Baseline: the procfs crate opening and parsing the same process files each time.
    let (p50_base, p90_base) = time_each(5000, || {
        let p = procfs::process::Process::new(pid as i32).unwrap();
        let _ = p.stat().unwrap();
        let _ = p.status().unwrap();
        let _ = p.io().unwrap();
        let _ = p.fd_count().unwrap();
        for t in p.tasks().unwrap().flatten() {
            let _ = t.schedstat();
        }
    });
    println!("tick on a live process (4 threads, 16 fds), 5000 samples:");
    println!("  procfs part (stat, status, io, fd count, 4x schedstat): median {p50_proc:.1} µs, p90 {p90_proc:.1} µs");
    println!("  cgroup part (memory, cpu, pids, 3x PSI):               median {p50_cg:.1} µs, p90 {p90_cg:.1} µs");
    println!(
        "  whole tick:                                            median {:.1} µs",
        p50_proc + p50_cg
    );
    println!("  baseline procfs crate, same process files reopened:    median {p50_base:.1} µs, p90 {p90_base:.1} µs");
    println!(
        "  ratio vitals procfs part / baseline:                   {:.2}",
        p50_proc / p50_base
    );
    drop(child);
    // The listen-socket part: sock_diag on a kept netlink socket, filtered by the target's socket inodes
    // (both address families every tenth tick, only the target's family in between).
    let listener = hold(&["--listen", "128"]);
    let lpid = listener.0.id();
    let inodes = vitals::probe::sockets::socket_inodes(proc_root, lpid).unwrap();
    let mut diag = vitals::probe::sockets::SockDiag::open().unwrap();
    let found =
        vitals::probe::sockets::listen_sockets(Some(&mut diag), proc_root, lpid, &inodes, 4096);
    assert_eq!(
        found.len(),
        1,
        "the listener must be found for the figure to mean anything"
    );
    let (p50_sock, p90_sock) = time_each(2000, || {
        std::hint::black_box(vitals::probe::sockets::listen_sockets(
            Some(&mut diag),
            proc_root,
            lpid,
            &inodes,
            4096,
        ));
    });
    let (p50_inodes, _) = time_each(500, || {
        std::hint::black_box(vitals::probe::sockets::socket_inodes(proc_root, lpid).unwrap());
    });
    println!("  accept queues (sock_diag, kept socket, one family):    median {p50_sock:.1} µs, p90 {p90_sock:.1} µs");
    println!("  socket inode scan (every 10th tick, ~5 fds):           median {p50_inodes:.1} µs");
    println!(
        "  whole tick with a listening target:                    median {:.1} µs",
        p50_proc + p50_cg + p50_sock + p50_inodes / 10.0
    );
}

fn bench_smaps_rollup() {
    let mib = 1024;
    let child = hold(&["--alloc-mib", &mib.to_string()]);
    let pid = child.0.id();
    let path = format!("/proc/{pid}/smaps_rollup");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap();
    let gib = rss_kib / (1024.0 * 1024.0);
    let (p50, p90) = time_each(100, || {
        let _ = std::fs::read(&path).unwrap();
    });
    println!("smaps_rollup on a {gib:.2} GiB RSS process, 100 reads:");
    println!(
        "  median {p50:.0} µs, p90 {p90:.0} µs  =>  {:.0} µs per GiB of RSS",
        p50 / gib
    );
}

fn families(series: usize) -> Vec<Metric> {
    let per_family = 100;
    (0..series / per_family)
        .map(|f| {
            let mut fam = Metric::new(
                format!("app.metric.{f}"),
                "synthetic",
                "s",
                MetricKind::Counter,
            )
            .from_app();
            for s in 0..per_family {
                let route = format!("/api/v1/items/{s}");
                fam.push(
                    &[
                        ("service", "checkout"),
                        ("http.route", &route),
                        ("status", "200"),
                    ],
                    Value::Sum(s as f64 * 1.25),
                );
            }
            fam
        })
        .collect()
}

fn bench_encode() {
    for n in [1_000, 30_000] {
        let fams = families(n);
        let runs = if n > 10_000 { 50 } else { 500 };
        let (t50, _) = time_each(runs, || {
            std::hint::black_box(encode(&fams, Format::Text));
        });
        let (o50, _) = time_each(runs, || {
            std::hint::black_box(encode(&fams, Format::OpenMetrics));
        });
        let bytes = encode(&fams, Format::Text).len();
        println!("encode {n} series ({bytes} bytes): text median {t50:.0} µs, OpenMetrics median {o50:.0} µs ({:.2} µs/series)", t50 / n as f64);
    }
}

fn bench_tree() {
    use vitals::probe::tree::{ProcessTree, DEFAULT_MAX_PROCESSES};
    let (hz, page) = vitals::probe::procfs::kernel_units();
    let proc_root = Path::new("/proc");
    println!("process trees (a shell and N sleeping children), per tick of the procfs part:");
    for n in [0usize, 9, 99, 999] {
        let tree = sleeping_tree(n);
        let root = ProcReader::open(proc_root, tree.0.id(), None).unwrap();
        let mut t = ProcessTree::new(proc_root, root, None, hz, page, DEFAULT_MAX_PROCESSES);
        let first = Instant::now();
        let r = t.sample(&Quiet, 1.0).unwrap();
        let first = first.elapsed().as_secs_f64() * 1e3;
        assert_eq!(r.view.processes as usize, n + 1, "the whole tree is found");
        let samples = (20_000 / (n + 1)).clamp(20, 2000);
        let (p50, p90) = time_each(samples, || {
            t.sample(&Quiet, 1.0).unwrap();
        });
        println!(
            "  {:>5} processes: median {p50:.0} µs, p90 {p90:.0} µs ({:.1} µs per process); first tick (finds the tree) {first:.1} ms",
            n + 1,
            p50 / (n + 1) as f64
        );
        drop(tree);
    }
    // A fork storm: 5,000 processes against the default cap of 1,000.
    let tree = sleeping_tree(4999);
    let root = ProcReader::open(proc_root, tree.0.id(), None).unwrap();
    let mut t = ProcessTree::new(proc_root, root, None, hz, page, DEFAULT_MAX_PROCESSES);
    let r = t.sample(&Quiet, 1.0).unwrap();
    let (p50, p90) = time_each(50, || {
        t.sample(&Quiet, 1.0).unwrap();
    });
    println!(
        "  5,000 processes, cap {DEFAULT_MAX_PROCESSES}: {} counted, {} read, {} untracked; median {p50:.0} µs, p90 {p90:.0} µs per tick",
        r.view.processes,
        r.view.processes - r.view.untracked,
        r.view.untracked
    );
    drop(t);
    // The live cost: the release binary watching the 5,000-process tree at the default interval.
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/vitals");
    if bin.is_file() {
        let mut v = Command::new(&bin)
            .args([
                "--pid",
                &tree.0.id().to_string(),
                "--metrics-addr",
                "127.0.0.1:0",
                "--otlp-grpc-addr",
                "off",
                "--otlp-http-addr",
                "off",
                "--log-level",
                "error",
            ])
            .spawn()
            .expect("release vitals");
        std::thread::sleep(Duration::from_secs(3));
        let cpu0 = cpu_ns(v.id());
        let secs = 10;
        std::thread::sleep(Duration::from_secs(secs));
        let cpu = (cpu_ns(v.id()) - cpu0) as f64 / 1e9 / secs as f64 * 100.0;
        println!(
            "  release vitals watching the 5,000-process tree (1,000 read): RSS {} kB, CPU {cpu:.2}% of a core at --interval 1s",
            rss_kib(v.id())
        );
        let _ = v.kill();
        let _ = v.wait();
    } else {
        println!("  (build the release binary for the live figure: cargo build --release)");
    }
    drop(tree);
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this too, so keep that quick.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    bench_tree();
    bench_tick();
    bench_smaps_rollup();
    bench_encode();
}
