//! Prints the cost of the OTLP → RED hot path: CPU µs per span and spans/s for decode→RED in process (the
//! request read in place, checked as prost would decode it, then RED), at 10 and 100 spans per request,
//! next to prost's full decode of the same bytes in the same run (the ratio is decode→RED's speed over
//! prost's; the goal is at least 2); the same with every trace consumer the binary wires (RED and the
//! database queries); and end to end against the real binary over loopback gRPC and HTTP, with vitals'
//! own CPU per span.
//!
//! `cargo bench --bench otlp` (VITALS_BENCH_SECS sets the seconds per end-to-end case, default 3).

use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span::SpanKind, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message;
use vitals::bounded::OverflowCounter;
use vitals::pipeline::TraceView;
use vitals::receiver::decode::{decode, trace_view, Encoding};
use vitals::receiver::{Consumers, OtlpLimits, OtlpStats, Receiver};
use vitals::signal::latency::{self, RedSignal};
use vitals::signal::n_plus_one::{NPlusOne, Rule};
use vitals::signal::query::{DbQueries, QuerySignal};
use vitals::store::app_metrics::{AppMetrics, AppMetricsConfig};
use vitals::store::logs::LogCounts;

fn kv(k: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

/// A request shaped like an instrumented HTTP service's: server spans with the usual attributes.
fn request(spans: usize) -> ExportTraceServiceRequest {
    let s = |v: &str| any_value::Value::StringValue(v.into());
    let spans = (0..spans)
        .map(|i| Span {
            trace_id: (0..16).map(|b| (b * 7 + i) as u8).collect(),
            span_id: (0..8).map(|b| (b * 3 + i) as u8).collect(),
            name: "GET /api/users/{id}".into(),
            kind: SpanKind::Server as i32,
            start_time_unix_nano: 1_700_000_000_000_000_000 + i as u64 * 1000,
            end_time_unix_nano: 1_700_000_000_000_000_000
                + i as u64 * 1000
                + 1_000_000 * (1 + i as u64 % 300),
            attributes: vec![
                kv("http.request.method", s("GET")),
                kv(
                    "http.route",
                    s(["/api/users/{id}", "/api/orders", "/health"][i % 3]),
                ),
                kv(
                    "http.response.status_code",
                    any_value::Value::IntValue(if i % 50 == 0 { 500 } else { 200 }),
                ),
                kv("url.scheme", s("http")),
                kv("server.address", s("shop.internal")),
                kv("server.port", any_value::Value::IntValue(8080)),
                kv("network.protocol.version", s("1.1")),
                kv(
                    "user_agent.original",
                    s("Mozilla/5.0 (X11; Linux x86_64) bench"),
                ),
            ],
            status: Some(Status {
                code: 0,
                message: String::new(),
            }),
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", s("shop")),
                    kv("service.version", s("1.2.3")),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// The receiver wired as the binary wires it without forwarding: RED (and with `queries` the database
/// queries), app metrics and log counts.
fn receiver(queries: bool) -> Receiver {
    let o = OverflowCounter::default();
    let ttl = Duration::from_secs(3600);
    let mut consumers = Consumers::new().traces(Arc::new(RedSignal::new(2000, ttl, o.clone())));
    if queries {
        consumers = consumers.traces(Arc::new(DbQueries {
            store: Arc::new(QuerySignal::new(2000, ttl, o.clone())),
            n_plus_one: Arc::new(NPlusOne::new(Rule::default(), 2000, ttl, o.clone())),
        }));
    }
    let consumers = consumers
        .metrics(Arc::new(AppMetrics::new(
            AppMetricsConfig {
                series_limit: 2000,
                family_limit: 2000,
                ttl,
                promote: vec![],
            },
            o.clone(),
            Arc::new(vitals::export::prometheus::naming::PrometheusNames),
        )))
        .logs(Arc::new(LogCounts::new(2000, ttl, o.clone())));
    Receiver::new(
        OtlpLimits::new(4 << 20, 8),
        consumers,
        Arc::new(OtlpStats::new(move || o.get())),
    )
}

/// Each case's ns per iteration over `rounds` rounds of `iters` iterations, the cases taking turns
/// within each round, so that a machine shared with other work slows them all alike.
struct Rounds {
    ns: Vec<Vec<f64>>,
}

impl Rounds {
    fn run(iters: usize, rounds: usize, cases: &mut [&mut dyn FnMut()]) -> Rounds {
        let mut ns = vec![Vec::with_capacity(rounds); cases.len()];
        for _ in 0..rounds {
            for (case, x) in cases.iter_mut().zip(&mut ns) {
                let t = Instant::now();
                for _ in 0..iters {
                    case();
                }
                x.push(t.elapsed().as_nanos() as f64 / iters as f64);
            }
        }
        Rounds { ns }
    }

    /// The median ns per iteration of case `i`.
    fn median(&self, i: usize) -> f64 {
        median(self.ns[i].clone())
    }

    /// The median over rounds of case `slow`'s time over case `fast`'s in the same round: how many
    /// times faster `fast` is, each round's pair measured a few milliseconds apart.
    fn ratio(&self, slow: usize, fast: usize) -> f64 {
        let r = self.ns[slow].iter().zip(&self.ns[fast]).map(|(s, f)| s / f);
        median(r.collect())
    }
}

fn median(mut x: Vec<f64>) -> f64 {
    x.sort_by(|a, b| a.total_cmp(b));
    x[x.len() / 2]
}

/// Rounds per case: many short rounds, so that a burst of other work on the machine moves few of them.
const ROUNDS: usize = 61;

fn in_process() {
    let red = receiver(false);
    let all = receiver(true);
    println!(
        "in process (one core), medians of {ROUNDS} rounds, the cases taking turns in each round \
         (ratios: the median of each round's ratio):"
    );
    for n in [10usize, 100] {
        let bytes = request(n).encode_to_vec();
        let json = serde_json::to_vec(&request(n)).unwrap();
        let iters = 4_000 / n;
        let mut prost = || {
            std::hint::black_box(ExportTraceServiceRequest::decode(&bytes[..]).unwrap());
        };
        // The parts of decode→RED: the check alone, and the check with every span's RED facts read.
        let mut check = || {
            std::hint::black_box(trace_view(&bytes).unwrap());
        };
        let mut read = || {
            let view = trace_view(&bytes).unwrap();
            for rs in view.resource_spans() {
                std::hint::black_box(latency::service_name(&rs));
                for f in latency::resource_facts(&rs) {
                    std::hint::black_box(f.ok());
                }
            }
        };
        let mut to_red = || {
            let view = trace_view(&bytes).unwrap();
            std::hint::black_box(red.deliver_traces(&view).unwrap());
        };
        let mut to_all = || {
            let view = trace_view(&bytes).unwrap();
            std::hint::black_box(all.deliver_traces(&view).unwrap());
        };
        let t = Rounds::run(
            iters,
            ROUNDS,
            &mut [&mut prost, &mut check, &mut read, &mut to_red, &mut to_all],
        );
        let (red_ratio, all_ratio) = (t.ratio(0, 3), t.ratio(0, 4));
        let (prost, check, read, to_red, to_all) = (
            t.median(0),
            t.median(1),
            t.median(2),
            t.median(3),
            t.median(4),
        );
        // OTLP/JSON: serde's decode alone, and with RED reading the decoded request through the view.
        let mut serde = || {
            let request: ExportTraceServiceRequest = decode(&json, Encoding::Json).unwrap();
            std::hint::black_box(request);
        };
        let mut json_to_red = || {
            let request: ExportTraceServiceRequest = decode(&json, Encoding::Json).unwrap();
            let view = TraceView::decoded(&request);
            std::hint::black_box(red.deliver_traces(&view).unwrap());
        };
        let j = Rounds::run(
            iters.max(10) / 4,
            ROUNDS,
            &mut [&mut serde, &mut json_to_red],
        );
        let (serde, json_to_red) = (j.median(0), j.median(1));
        let us = |ns: f64| ns / n as f64 / 1000.0;
        println!(
            "  {n:>3} spans/request ({} B): prost full decode {:.2} µs/span = {:.0} spans/s; \
             decode→RED {:.2} µs/span = {:.0} spans/s, {:.2}× prost's speed; \
             decode→RED+queries {:.2} µs/span = {:.0} spans/s, {:.2}× prost's; \
             JSON decode→RED {:.2} µs/span (serde's decode alone {:.2})\n        \
             of decode→RED: the check {:.2} µs/span, reading the RED facts {:.2}, the fan-out and the RED store {:.2}",
            bytes.len(),
            us(prost),
            1e6 / us(prost),
            us(to_red),
            1e6 / us(to_red),
            red_ratio,
            us(to_all),
            1e6 / us(to_all),
            all_ratio,
            us(json_to_red),
            us(serde),
            us(check),
            us(read - check),
            us(to_red - read)
        );
    }
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn end_to_end() {
    let secs: u64 = std::env::var("VITALS_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vitals"))
        .args([
            "--metrics-addr",
            "127.0.0.1:0",
            "--otlp-grpc-addr",
            "127.0.0.1:24317",
            "--otlp-http-addr",
            "127.0.0.1:24318",
            "--log-level",
            "warn",
        ])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let pid = child.id();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("end to end against the release binary over loopback, {secs} s per case, one client connection:");
    for n in [10usize, 100] {
        let req = request(n);
        // gRPC
        let sent = rt.block_on(async {
            let mut c = TraceServiceClient::connect("http://127.0.0.1:24317")
                .await
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(secs);
            let cpu0 = cpu_seconds(pid);
            let t0 = Instant::now();
            let mut spans = 0usize;
            while Instant::now() < deadline {
                c.export(req.clone()).await.unwrap();
                spans += n;
            }
            (spans, t0.elapsed().as_secs_f64(), cpu_seconds(pid) - cpu0)
        });
        report("gRPC", n, sent);
        // HTTP/protobuf
        let body = req.encode_to_vec();
        let agent = ureq::AgentBuilder::new().build();
        let deadline = Instant::now() + Duration::from_secs(secs);
        let cpu0 = cpu_seconds(pid);
        let t0 = Instant::now();
        let mut spans = 0usize;
        while Instant::now() < deadline {
            agent
                .post("http://127.0.0.1:24318/v1/traces")
                .set("Content-Type", "application/x-protobuf")
                .send_bytes(&body)
                .unwrap();
            spans += n;
        }
        report(
            "HTTP",
            n,
            (spans, t0.elapsed().as_secs_f64(), cpu_seconds(pid) - cpu0),
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn report(transport: &str, n: usize, (spans, wall, cpu): (usize, f64, f64)) {
    println!(
        "  {transport:<4} {n:>3} spans/request: {:.0} spans/s; vitals CPU {:.2} µs/span (10 ms tick resolution)",
        spans as f64 / wall,
        cpu * 1e6 / spans as f64
    );
}

fn main() {
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    in_process();
    end_to_end();
}
