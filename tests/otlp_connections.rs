//! Connections cannot exhaust vitals: each listener holds at most 256 (OTLP) connections, a connection
//! that sends nothing is closed after 10 s, the soft fd limit is raised to the hard one at start, and
//! `/metrics` and `/healthz` keep answering while a local client holds hundreds of idle connections.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::Vitals;
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn nofile_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_owned();
    let mut f = line["Max open files".len()..].split_whitespace();
    (f.next().unwrap().to_owned(), f.next().unwrap().to_owned())
}

#[test]
fn idle_connections_are_bounded_and_closed() {
    // Start vitals with containerd's default soft limit of 1024 (children inherit it), then give this
    // test its own limit back.
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let low = 1024.min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, low, hard).unwrap();
    let v = Vitals::start(&[]);
    setrlimit(Resource::RLIMIT_NOFILE, soft.max(4096).min(hard), hard).unwrap();
    let pid = v.child.id();
    let (vs, vh) = nofile_limits(pid);
    assert_eq!(vs, vh, "soft fd limit raised to the hard one");
    let (grpc, _) = v.otlp_addrs();

    // 400 connections that never send a byte (no HTTP/2 preface).
    let started = Instant::now();
    let mut idle: Vec<TcpStream> = (0..400)
        .filter_map(|_| TcpStream::connect_timeout(&grpc, Duration::from_secs(2)).ok())
        .collect();
    assert!(idle.len() >= 300, "only {} connected", idle.len());
    std::thread::sleep(Duration::from_millis(500));
    let fds = open_fds(pid);
    assert!(fds < 256 + 64, "vitals holds {fds} fds");
    // /healthz and /metrics answer at once.
    for path in ["/healthz", "/metrics"] {
        let t = Instant::now();
        assert_eq!(v.get(path, None).0, 200);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "{path} took {:?}",
            t.elapsed()
        );
    }
    // A real export gets through once the silent connections time out (10 s; 30 s allowed for a
    // loaded machine).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client = tokio::time::timeout(
            Duration::from_secs(30),
            TraceServiceClient::connect(format!("http://{grpc}")),
        )
        .await
        .expect("connected within 30 s")
        .unwrap();
        tokio::time::timeout(
            Duration::from_secs(30),
            client.export(ExportTraceServiceRequest::default()),
        )
        .await
        .expect("export answered within 30 s")
        .unwrap();
    });
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(40), "{waited:?}");
    // The silent connections were closed by vitals: after the server's SETTINGS frame, reads see EOF
    // or a reset, not a timeout.
    let mut closed = 0;
    for s in idle.iter_mut().take(50) {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut sink = Vec::new();
        match s.read_to_end(&mut sink) {
            Ok(_) => closed += 1,
            Err(e)
                if e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut =>
            {
                closed += 1
            }
            Err(e) => eprintln!("read: {e:?} after {} bytes", sink.len()),
        }
    }
    assert_eq!(closed, 50, "the first 50 silent connections were closed");
}
