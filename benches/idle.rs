//! What vitals costs while nothing happens, beside Debian's prometheus-process-exporter doing the same job:
//! the release binary with default settings and process-exporter watch the same sleeping process (and then
//! the same 100-process tree), both scraped every 15 s and every 1 s; CPU from the threads' schedstat, RSS,
//! and the ratio, medians of `VITALS_BENCH_RUNS` runs (default 3) of `VITALS_BENCH_SIDE_SECS` seconds
//! (default 60; `VITALS_BENCH_ROWS=1,4` runs only those side-by-side rows). Scraped as Prometheus scrapes (one kept-alive connection per target, `Accept-Encoding:
//! gzip`), and, for the first row again, with a fresh connection and no `Accept-Encoding` per scrape (as
//! curl does, and as this bench did before). Beside them, the floor: a bare blocking server in this bench answering the same bytes
//! vitals served, which is what the kernel's loopback TCP alone costs per scrape on this machine, and the
//! same server reading every procfs and cgroup file vitals holds open before each answer (the kernel's
//! share of a reading, without the directory scans and parsing). Then the
//! live page's cost in the real process: vitals sampling every second with and without a viewer streaming
//! frames.
//!
//! `cargo build --release && cargo bench --bench idle` (needs `apt-get install prometheus-process-exporter`).
//! Prints figures only; nothing here asserts timings.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{cpu_ns, group, rss_kib, sleeping_tree, Group};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// How the bench scrapes.
#[derive(Clone, Copy, PartialEq)]
enum Scraping {
    /// As Prometheus does: one kept-alive connection per target, `Accept-Encoding: gzip`.
    Prometheus,
    /// A fresh connection per scrape, no `Accept-Encoding`.
    Fresh,
}

/// One scraper of one target: an agent that keeps its connection, or none.
struct Scraper {
    addr: String,
    agent: Option<ureq::Agent>,
}

impl Scraper {
    fn new(addr: &str, how: Scraping) -> Scraper {
        Scraper {
            addr: addr.to_owned(),
            agent: (how == Scraping::Prometheus).then(|| {
                ureq::AgentBuilder::new()
                    .max_idle_connections_per_host(1)
                    .timeout(Duration::from_secs(10))
                    .build()
            }),
        }
    }

    /// GET /metrics; the body's length on the wire (0 when it fails).
    fn scrape(&self) -> usize {
        let url = format!("http://{}/metrics", self.addr);
        let answer = match &self.agent {
            Some(agent) => agent.get(&url).set("Accept-Encoding", "gzip").call(),
            None => ureq::get(&url).timeout(Duration::from_secs(10)).call(),
        };
        let mut body = Vec::new();
        answer
            .ok()
            .and_then(|r| r.into_reader().read_to_end(&mut body).ok())
            .unwrap_or(0)
    }
}

/// GET `path` from `addr`; the body (empty when it fails).
fn body(addr: &str, path: &str) -> String {
    ureq::get(&format!("http://{addr}{path}"))
        .timeout(Duration::from_secs(10))
        .call()
        .ok()
        .and_then(|r| r.into_string().ok())
        .unwrap_or_default()
}

/// GET `path` from `addr`; the body's length (0 when it fails).
fn get(addr: &str, path: &str) -> usize {
    body(addr, path).len()
}

fn median(mut x: Vec<f64>) -> f64 {
    x.sort_by(f64::total_cmp);
    x[x.len() / 2]
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The release vitals on `pid` with default settings (loopback ports of its own) plus `extra`.
fn vitals(bin: &Path, pid: u32, extra: &[&str]) -> (Group, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let v = group(
        Command::new(bin)
            .args(["--pid", &pid.to_string(), "--metrics-addr", &addr])
            .args(["--otlp-grpc-addr", &format!("127.0.0.1:{}", free_port())])
            .args(["--otlp-http-addr", &format!("127.0.0.1:{}", free_port())])
            .args(["--log-level", "error"])
            .args(extra),
    );
    (v, addr)
}

/// The least any exporter pays for a scrape on this machine: a thread of this bench that answers each
/// request with the same bytes vitals served, over a blocking socket, with nothing rendered (the kernel's
/// loopback TCP for the connection and the body); a connection is served until its client closes it. With `files`, it also reads each of them whole before
/// answering: the kernel's share of a reading. Returns its address and thread id.
fn floor(body: Vec<u8>, files: Vec<std::fs::File>) -> (String, i32) {
    use std::os::unix::fs::FileExt;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the floor server");
    let addr = listener.local_addr().expect("its address").to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: gettid only returns the calling thread's id.
        let _ = tx.send(unsafe { libc::gettid() });
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let mut buf = [0u8; 4096];
        let mut file_buf = vec![0u8; 65536];
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { continue };
            'requests: loop {
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => break 'requests,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                for f in &files {
                    let _ = f.read_at(&mut file_buf, 0);
                }
                if c.write_all(head.as_bytes())
                    .and_then(|()| c.write_all(&body))
                    .is_err()
                {
                    break;
                }
            }
        }
    });
    (addr, rx.recv().expect("the floor thread's id"))
}

/// The procfs and cgroupfs files process `pid` holds open (vitals keeps every file a reading reads open),
/// opened again here.
fn pseudo_files_held_by(pid: u32) -> Vec<std::fs::File> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|p| p.starts_with("/proc/") || p.starts_with("/sys/"))
        .filter(|p| p.is_file())
        .filter_map(|p| std::fs::File::open(p).ok())
        .collect()
}

/// CPU time of one thread of this process, ns.
fn thread_cpu_ns(tid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// One side-by-side run: CPU % of a core and RSS KiB of vitals, then of process-exporter, then the
/// floor's CPU % without and with a reading's files read (see [`floor`]), and how many files those are.
fn side_by_side(
    bin: &Path,
    pe: &Path,
    pe_config: &Path,
    children: usize,
    every: Duration,
    secs: u64,
    how: Scraping,
) -> [f64; 7] {
    let tree = sleeping_tree(children);
    let (v, vaddr) = vitals(bin, tree.0.id(), &[]);
    let paddr = format!("127.0.0.1:{}", free_port());
    let p = group(
        Command::new(pe)
            .arg("-config.path")
            .arg(pe_config)
            .args(["-web.listen-address", &paddr])
            .stderr(Stdio::null()),
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(get(&vaddr, "/metrics") > 0 && get(&paddr, "/metrics") > 0);
    let served = body(&vaddr, "/metrics").into_bytes();
    let files = pseudo_files_held_by(v.0.id());
    let n_files = files.len();
    let (faddr, ftid) = floor(served.clone(), Vec::new());
    let (raddr, rtid) = floor(served, files);
    let scrapers = [&vaddr, &paddr, &faddr, &raddr].map(|a| Scraper::new(a, how));
    let (v0, p0, f0, r0) = (
        cpu_ns(v.0.id()),
        cpu_ns(p.0.id()),
        thread_cpu_ns(ftid),
        thread_cpu_ns(rtid),
    );
    let start = Instant::now();
    let mut next = start;
    while start.elapsed() < Duration::from_secs(secs) {
        if Instant::now() >= next {
            for s in &scrapers {
                s.scrape();
            }
            next += every;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let wall = start.elapsed().as_secs_f64();
    let vcpu = (cpu_ns(v.0.id()) - v0) as f64 / 1e9 / wall * 100.0;
    let pcpu = (cpu_ns(p.0.id()) - p0) as f64 / 1e9 / wall * 100.0;
    let fcpu = (thread_cpu_ns(ftid) - f0) as f64 / 1e9 / wall * 100.0;
    let rcpu = (thread_cpu_ns(rtid) - r0) as f64 / 1e9 / wall * 100.0;
    [
        vcpu,
        rss_kib(v.0.id()) as f64,
        pcpu,
        rss_kib(p.0.id()) as f64,
        fcpu,
        rcpu,
        n_files as f64,
    ]
}

/// Holds a live page stream open, reading frames until dropped.
struct Viewer(
    std::thread::JoinHandle<()>,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
);

fn view(addr: &str) -> Viewer {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (addr, s) = (addr.to_owned(), stop.clone());
    Viewer(
        std::thread::spawn(move || {
            let mut c = TcpStream::connect(&addr).expect("connect");
            c.set_read_timeout(Some(Duration::from_millis(200))).ok();
            let _ = write!(c, "GET /live/stream HTTP/1.1\r\nHost: {addr}\r\n\r\n");
            let mut buf = [0u8; 65536];
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = c.read(&mut buf);
            }
        }),
        stop,
    )
}

impl Viewer {
    /// Stops reading and closes the stream.
    fn close(self) {
        self.1.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.0.join();
    }
}

fn main() {
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let bin: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/vitals");
    let pe = Path::new("/usr/bin/prometheus-process-exporter");
    if !bin.is_file() || !pe.is_file() {
        println!("needs the release binary (cargo build --release) and prometheus-process-exporter (apt-get install)");
        return;
    }
    let runs = env_or("VITALS_BENCH_RUNS", 3).max(1);
    let secs = env_or("VITALS_BENCH_SIDE_SECS", 60);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pe.yml");
    // The sleeping process, or the tree's shell with its children folded in (process-exporter's default).
    std::fs::write(
        &config,
        "process_names:\n  - name: target\n    cmdline: ['^sleep 3600', 'echo ready; wait']\n",
    )
    .expect("write the process-exporter config");
    println!("release vitals (default settings) beside process-exporter, same target, medians of {runs} runs of {secs} s:");
    // VITALS_BENCH_ROWS=1,4 runs only those of the four side-by-side rows (1-based) and skips the live
    // page; unset, everything runs.
    let rows: Option<Vec<usize>> = std::env::var("VITALS_BENCH_ROWS")
        .ok()
        .map(|s| s.split(',').filter_map(|r| r.trim().parse().ok()).collect());
    for (row, (children, every, how)) in [
        (0, 15, Scraping::Prometheus),
        (0, 1, Scraping::Prometheus),
        (99, 15, Scraping::Prometheus),
        (0, 15, Scraping::Fresh),
    ]
    .into_iter()
    .enumerate()
    {
        if rows.as_ref().is_some_and(|r| !r.contains(&(row + 1))) {
            continue;
        }
        let r: Vec<[f64; 7]> = (0..runs)
            .map(|_| {
                side_by_side(
                    &bin,
                    pe,
                    &config,
                    children,
                    Duration::from_secs(every),
                    secs,
                    how,
                )
            })
            .collect();
        let col = |i: usize| median(r.iter().map(|x| x[i]).collect());
        let ratios = median(r.iter().map(|x| x[2] / x[0].max(1e-9)).collect());
        println!(
            "  {:>3} process(es), scraped every {every:>2} s {}: vitals CPU {:.4}% of a core ({:.1} µs/s), RSS {:.1} MiB; process-exporter CPU {:.4}% ({:.1} µs/s), RSS {:.1} MiB; vitals {ratios:.1}x cheaper (per-run ratios {})",
            children + 1,
            match how {
                Scraping::Prometheus => "as Prometheus does (kept-alive, gzip accepted)",
                Scraping::Fresh => "with a fresh connection each, no gzip",
            },
            col(0),
            col(0) * 1e4,
            col(1) / 1024.0,
            col(2),
            col(2) * 1e4,
            col(3) / 1024.0,
            r.iter().map(|x| format!("{:.1}", x[2] / x[0].max(1e-9))).collect::<Vec<_>>().join(", ")
        );
        println!(
            "       the floor (a bare blocking server answering the same bytes): {:.1} µs/s; with the {:.0} procfs/cgroup files vitals holds open read once per scrape: {:.1} µs/s; 10x cheaper than process-exporter would be {:.1} µs/s",
            col(4) * 1e4,
            col(6),
            col(5) * 1e4,
            col(2) * 1e3,
        );
    }

    if rows.is_some() {
        return;
    }
    // The live page in the real process: readings every second (--idle-interval 1s) with no viewer,
    // then with one viewer streaming frames; the difference is the frame's cost.
    let tree = sleeping_tree(0);
    let cost = |viewer: bool| -> f64 {
        let (v, addr) = vitals(&bin, tree.0.id(), &["--idle-interval", "1s"]);
        std::thread::sleep(Duration::from_secs(3));
        let watching = viewer.then(|| view(&addr));
        std::thread::sleep(Duration::from_secs(2));
        let c0 = cpu_ns(v.0.id());
        let start = Instant::now();
        std::thread::sleep(Duration::from_secs(secs.min(30)));
        let per_s = (cpu_ns(v.0.id()) - c0) as f64 / 1e3 / start.elapsed().as_secs_f64();
        if let Some(w) = watching {
            w.close();
        }
        per_s
    };
    let mut quiet = Vec::new();
    let mut watched = Vec::new();
    for _ in 0..runs {
        quiet.push(cost(false));
        watched.push(cost(true));
    }
    let (q, w) = (median(quiet), median(watched));
    println!(
        "live page, readings every second: {q:.1} µs of CPU per second without a viewer, {w:.1} with one; a frame costs {:.1} µs",
        w - q
    );
}
