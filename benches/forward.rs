//! Prints what forwarding costs: at 10k and 50k spans/s (requests of 512 spans, the SDKs' default batch)
//! sent over OTLP/HTTP to the release binary, the latency the app sees per request and vitals' CPU and
//! RSS, for derivation only and with forwarding to an upstream over OTLP/gRPC and OTLP/HTTP; and the
//! spans/s the upstream received. The upstream is in this process (tonic and hyper servers that decode
//! and count what they receive).
//!
//! `cargo bench --bench forward` (VITALS_BENCH_SECS sets the seconds per case, default 5).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, ResourceSpans, ScopeSpans, Span};
use prost::Message;

const SPANS_PER_REQUEST: usize = 512;

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

fn request(seed: usize) -> Vec<u8> {
    let spans = (0..SPANS_PER_REQUEST)
        .map(|i| Span {
            trace_id: (0..16).map(|b| (b * 7 + i + seed) as u8).collect(),
            span_id: (0..8).map(|b| (b * 3 + i) as u8).collect(),
            name: "GET /api/users/{id}".into(),
            kind: SpanKind::Server as i32,
            start_time_unix_nano: 1_700_000_000_000_000_000 + i as u64 * 1000,
            end_time_unix_nano: 1_700_000_000_000_000_000 + i as u64 * 1000 + 1_000_000,
            attributes: vec![
                kv("http.request.method", "GET"),
                kv(
                    "http.route",
                    ["/api/users/{id}", "/api/orders", "/health"][i % 3],
                ),
                kv("url.scheme", "http"),
                kv("server.address", "shop.internal"),
                kv(
                    "user_agent.original",
                    "Mozilla/5.0 (X11; Linux x86_64) bench",
                ),
            ],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "shop")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

/// Spans the upstream decoded.
#[derive(Default)]
struct Received(AtomicU64);

fn count(r: &ExportTraceServiceRequest) -> u64 {
    r.resource_spans
        .iter()
        .flat_map(|r| r.scope_spans.iter())
        .map(|s| s.spans.len() as u64)
        .sum()
}

#[derive(Clone)]
struct GrpcUpstream(Arc<Received>);

#[tonic::async_trait]
impl TraceService for GrpcUpstream {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0 .0.fetch_add(count(req.get_ref()), Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Starts the gRPC and HTTP upstreams on a runtime thread; returns their addresses.
fn upstreams(received: Arc<Received>) -> (SocketAddr, SocketAddr) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let g = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let h = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send((g.local_addr().unwrap(), h.local_addr().unwrap()))
                .unwrap();
            let svc = GrpcUpstream(received.clone());
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(TraceServiceServer::new(svc))
                    .serve_with_incoming(tonic::transport::server::TcpIncoming::from(g)),
            );
            loop {
                let Ok((s, _)) = h.accept().await else {
                    continue;
                };
                let received = received.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let received = received.clone();
                            async move {
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|c| c.to_bytes())
                                    .unwrap_or_default();
                                if let Ok(r) = ExportTraceServiceRequest::decode(&body[..]) {
                                    received.0.fetch_add(count(&r), Ordering::Relaxed);
                                }
                                Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::new())))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
    });
    rx.recv().unwrap()
}

fn proc_field(pid: u32, file: &str, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run_case(name: &str, forward: &[&str], rate: usize, secs: u64, received: &Received) {
    let http_port = free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vitals"))
        .args([
            "--metrics-addr",
            "127.0.0.1:0",
            "--otlp-grpc-addr",
            "off",
            "--otlp-http-addr",
            &format!("127.0.0.1:{http_port}"),
            "--log-level",
            "warn",
        ])
        .args(forward)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let pid = child.id();
    let bodies: Vec<Vec<u8>> = (0..16).map(request).collect();
    let url = format!("http://127.0.0.1:{http_port}/v1/traces");
    let agent = ureq::AgentBuilder::new().build();
    let interval = Duration::from_secs_f64(SPANS_PER_REQUEST as f64 / rate as f64);
    let received0 = received.0.load(Ordering::Relaxed);
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    let mut latencies = Vec::new();
    let mut next = t0;
    let mut i = 0;
    while t0.elapsed() < Duration::from_secs(secs) {
        let now = Instant::now();
        if now < next {
            std::thread::sleep(next - now);
        }
        next += interval;
        let started = Instant::now();
        let status = agent
            .post(&url)
            .set("Content-Type", "application/x-protobuf")
            .send_bytes(&bodies[i % bodies.len()])
            .map(|r| r.status())
            .unwrap_or_else(|e| match e {
                ureq::Error::Status(c, _) => c,
                _ => 0,
            });
        latencies.push(started.elapsed().as_secs_f64() * 1e3);
        assert_eq!(status, 200, "{name}: vitals answered {status}");
        i += 1;
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu0;
    // Give the last forwarded requests time to arrive.
    std::thread::sleep(Duration::from_millis(500));
    let got = received.0.load(Ordering::Relaxed) - received0;
    let rss = proc_field(pid, "status", "VmHWM:") / 1024.0;
    let _ = child.kill();
    let _ = child.wait();
    latencies.sort_by(f64::total_cmp);
    let q = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    let sent = i * SPANS_PER_REQUEST;
    println!(
        "  {name:<15} {rate:>6}/s  sent {:>7.0}/s  upstream {:>7.0}/s  latency p50 {:.2} ms p99 {:.2} ms  vitals CPU {:>4.1}%  peak RSS {:.1} MiB",
        sent as f64 / wall,
        got as f64 / wall,
        q(0.5),
        q(0.99),
        cpu / wall * 100.0,
        rss
    );
}

fn main() {
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let secs: u64 = std::env::var("VITALS_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let received = Arc::new(Received::default());
    let (grpc, http) = upstreams(received.clone());
    let grpc = format!("http://{grpc}");
    let http = format!("http://{http}");
    println!(
        "OTLP/HTTP requests of {SPANS_PER_REQUEST} spans to the release binary, paced, {secs} s per case; \
         latency is what the app sees per request:"
    );
    for rate in [10_000usize, 50_000] {
        run_case("derive only", &[], rate, secs, &received);
        run_case(
            "forward gRPC",
            &["--forward-endpoint", &grpc, "--forward-protocol", "grpc"],
            rate,
            secs,
            &received,
        );
        run_case(
            "forward HTTP",
            &[
                "--forward-endpoint",
                &http,
                "--forward-protocol",
                "http/protobuf",
            ],
            rate,
            secs,
            &received,
        );
    }
}
