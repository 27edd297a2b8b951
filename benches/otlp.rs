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

/// Median ns per iteration of each case over `rounds` rounds of `iters` iterations, the cases taking
/// turns within each round, so that a machine shared with other work slows them all alike and the
/// ratios between them hold.
fn interleaved_medians(iters: usize, rounds: usize, cases: &mut [&mut dyn FnMut()]) -> Vec<f64> {
    let mut xs = vec![Vec::with_capacity(rounds); cases.len()];
    for _ in 0..rounds {
        for (case, x) in cases.iter_mut().zip(&mut xs) {
            let t = Instant::now();
            for _ in 0..iters {
                case();
            }
            x.push(t.elapsed().as_nanos() as f64 / iters as f64);
        }
    }
    xs.into_iter()
        .map(|mut x| {
            x.sort_by(|a, b| a.total_cmp(b));
            x[rounds / 2]
        })
        .collect()
}

fn in_process() {
    let red = receiver(false);
    let all = receiver(true);
    println!("in process (one core), median of 15 rounds, the cases taking turns in each round:");
    for n in [10usize, 100] {
        let bytes = request(n).encode_to_vec();
        let json = serde_json::to_vec(&request(n)).unwrap();
        let iters = 20_000 / n;
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
                for span in rs.spans() {
                    std::hint::black_box(latency::facts(&span).ok());
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
        let t = interleaved_medians(
            iters,
            15,
            &mut [&mut prost, &mut check, &mut read, &mut to_red, &mut to_all],
        );
        let (prost, check, read, to_red, to_all) = (t[0], t[1], t[2], t[3], t[4]);
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
        let j = interleaved_medians(iters.max(10) / 4, 15, &mut [&mut serde, &mut json_to_red]);
        let (serde, json_to_red) = (j[0], j[1]);
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
            prost / to_red,
            us(to_all),
            1e6 / us(to_all),
            prost / to_all,
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
