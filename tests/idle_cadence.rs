//! When vitals reads its target, on a real process with the release defaults: while nobody watches it
//! reads every idle interval, yet a scrape gets readings taken for it (the target's CPU time equals
//! the kernel's at the scrape, after a quiet spell in which the target burned CPU); a live page viewer
//! brings one reading a second and the frames with them, and the history before it shows the idle
//! pace. A quiet scrape runs on the sampling thread alone; a crowd of connections goes to the workers.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{runs_by_thread, Vitals};

/// A Python process that burns `seconds` of CPU each time a line arrives on its stdin, then prints
/// "done".
struct Burner {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Burner {
    fn start() -> Burner {
        let mut child = Command::new("python3")
            .args([
                "-c",
                "import sys, time\nprint('ready', flush=True)\nfor line in sys.stdin:\n    \
                 t = time.process_time()\n    while time.process_time() - t < float(line): pass\n    \
                 print('done', flush=True)\n",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        Burner { child, out }
    }

    fn burn(&mut self, seconds: f64) {
        writeln!(self.child.stdin.as_mut().unwrap(), "{seconds}").unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "done");
    }

    /// The CPU time of the process and of its children it reaped (utime, stime, cutime, cstime from
    /// /proc/PID/stat), seconds: what vitals counts for a tree whose workers come and go.
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        let ticks: f64 = fields[11..15]
            .iter()
            .map(|f| f.parse::<f64>().unwrap())
            .sum();
        // SAFETY: sysconf only reads a system constant.
        ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
    }
}

impl Drop for Burner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_scrape_after_a_quiet_spell_gets_readings_taken_for_it() {
    let mut burner = Burner::start();
    // No idle reading falls inside the test: what the scrape shows was read for it.
    let v = Vitals::start(&[
        "--pid",
        &burner.child.id().to_string(),
        "--idle-interval",
        "10m",
    ]);
    let before = v.wait_until(Duration::from_secs(10), "the first reading", |e| {
        e.has("process_cpu_time_seconds_total")
    });
    let cpu_before = before.sum("process_cpu_time_seconds_total", &[]);
    burner.burn(1.5);
    let truth = burner.cpu_seconds();
    let after = v.scrape();
    let cpu_after = after.sum("process_cpu_time_seconds_total", &[]);
    eprintln!("CPU seconds: {cpu_before:.2} before, {cpu_after:.2} scraped after the burn, the kernel says {truth:.2}");
    assert!(
        cpu_after >= truth - 0.011 && cpu_after <= truth + 0.011,
        "the scrape shows {cpu_after} s of CPU; the kernel says {truth} s"
    );
    assert!(cpu_after - cpu_before >= 1.4);
    // Another scrape within the interval reuses that reading (nothing new was burned anyway).
    assert_eq!(
        v.scrape().sum("process_cpu_time_seconds_total", &[]),
        cpu_after
    );
}

/// The messages of a live stream, as (event, parsed data).
struct Stream {
    lines: std::io::Lines<BufReader<Box<dyn std::io::Read + Send + Sync>>>,
}

impl Stream {
    fn open(v: &Vitals) -> Stream {
        let r = ureq::AgentBuilder::new()
            .timeout_read(Duration::from_secs(15))
            .build()
            .get(&format!("http://{}/live/stream", v.metrics))
            .call()
            .expect("the live stream opens");
        Stream {
            lines: BufReader::new(r.into_reader()).lines(),
        }
    }

    fn next(&mut self) -> (String, serde_json::Value) {
        let mut event = String::new();
        for line in self.lines.by_ref() {
            let line = line.expect("the stream goes on");
            if let Some(e) = line.strip_prefix("event: ") {
                event = e.to_owned();
            } else if let Some(d) = line.strip_prefix("data: ") {
                return (event, serde_json::from_str(d).expect("JSON data"));
            }
        }
        panic!("the stream ended");
    }
}

fn times(history: &serde_json::Value) -> Vec<f64> {
    history["t"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_f64().unwrap())
        .collect()
}

#[test]
fn readings_follow_whoever_watches() {
    let burner = Burner::start();
    // The default idle interval (20 s) is checked in `config`; 10 s keeps this test short.
    let v = Vitals::start(&[
        "--pid",
        &burner.child.id().to_string(),
        "--idle-interval",
        "10s",
    ]);
    // Nobody watches for 25 s: readings (and history points) come every 10 s, the idle interval.
    std::thread::sleep(Duration::from_secs(25));
    let mut s = Stream::open(&v);
    let (event, history) = s.next();
    assert_eq!(event, "history");
    let idle = times(&history);
    eprintln!("history before the viewer: {idle:?}");
    assert!(
        (2..=4).contains(&idle.len()),
        "25 s unwatched at a 10 s pace: {idle:?}"
    );
    for w in idle.windows(2) {
        assert!(
            w[1] - w[0] > 8.0,
            "readings closer than the idle pace: {idle:?}"
        );
    }
    // A viewer brings a frame (and a reading) every second.
    let start = Instant::now();
    let mut frames = Vec::new();
    while frames.len() < 6 {
        let (event, frame) = s.next();
        if event == "frame" {
            frames.push(frame["t"].as_f64().unwrap());
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "frames: {frames:?}"
        );
    }
    eprintln!("frames while watched: {frames:?}");
    for w in frames.windows(2) {
        assert!(
            w[1] - w[0] > 0.5 && w[1] - w[0] < 2.5,
            "frames not a second apart: {frames:?}"
        );
    }
    assert!(frames[0] - idle[idle.len() - 1] < 12.0);
    // The viewer leaves: the pace falls back. A new viewer 25 s later sees the per-second points of the
    // first one's visit, then points 10 s apart.
    drop(s);
    std::thread::sleep(Duration::from_secs(25));
    let mut s = Stream::open(&v);
    let (_, history) = s.next();
    let t = times(&history);
    let after: Vec<f64> = t
        .iter()
        .copied()
        .filter(|&x| x > frames[frames.len() - 1] + 5.0)
        .collect();
    eprintln!("history after the viewer left: {after:?}");
    assert!(
        (1..=4).contains(&after.len()),
        "25 s unwatched again: {after:?} (whole history {t:?})"
    );
    for w in after.windows(2) {
        assert!(w[1] - w[0] > 8.0, "{after:?}");
    }
}

/// One request on a new connection that asks to be closed after it; the status line.
fn request_once(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::Read;
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: vitals\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    answer.lines().next().unwrap_or("").to_owned()
}

/// A quiet scrape is accepted, read, rendered and answered on the sampling thread: the async workers do
/// not run for it. Once two connections are open there, a further one is served by the workers (a
/// crowd of clients is spread over them, and a probe never queues behind more than one other
/// connection on the sampling thread).
#[test]
fn a_quiet_scrape_wakes_only_the_sampling_thread_and_a_crowd_goes_to_the_workers() {
    let target = common::TestChild::hold(&[]);
    let pid = target.pid().to_string();
    let v = Vitals::start(&["--pid", &pid]);
    let vitals_pid = v.child.id();
    v.scrape();
    std::thread::sleep(Duration::from_secs(2));
    let worker = "tokio-rt-worker";
    let sampler = "vitals-sampler";

    let before = runs_by_thread(vitals_pid);
    for _ in 0..10 {
        assert!(request_once(v.metrics, "/metrics").contains(" 200 "));
        std::thread::sleep(Duration::from_millis(300));
    }
    let after = runs_by_thread(vitals_pid);
    let (workers, sampling) = (
        after[worker] - before[worker],
        after[sampler] - before[sampler],
    );
    println!("10 quiet scrapes: the workers ran {workers} times, the sampling thread {sampling}");
    assert!(sampling >= 10, "the sampling thread ran {sampling} times");
    assert!(
        workers <= 2,
        "10 quiet scrapes woke the async workers {workers} times"
    );

    // Two connections kept open take the sampling thread's places; the next scrapes go to the workers.
    let held: Vec<std::net::TcpStream> = (0..2)
        .map(|_| {
            let c = std::net::TcpStream::connect(v.metrics).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let before = runs_by_thread(vitals_pid);
    for _ in 0..5 {
        assert!(request_once(v.metrics, "/healthz").contains(" 200 "));
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = runs_by_thread(vitals_pid);
    let workers = after[worker] - before[worker];
    println!("5 probes beside two held connections: the workers ran {workers} times");
    assert!(
        workers >= 5,
        "5 probes beside two held connections woke the workers {workers} times"
    );
    drop(held);
}
