//! Memory of the release binary under the receiver's worst accepted input and under scrapes: peak RSS
//! (VmHWM) after the worst accepted request alone and 8 at once, RSS per 10,000 stored series, and peak
//! RSS per concurrent scrape. Run with `cargo bench --bench rss`; compare with the 96 MiB the shipped
//! manifest gives the vitals container.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric::Data, number_data_point, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

/// Empty spans in the largest request the default memory budget accepts.
const WORST_SPANS: usize = 40_000;

struct Vitals {
    child: Child,
    metrics: String,
    grpc: String,
    http: String,
}

impl Drop for Vitals {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start() -> Vitals {
    let (m, g, h) = (port(), port(), port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_vitals"))
        .args([
            "--metrics-addr",
            &format!("127.0.0.1:{m}"),
            "--otlp-grpc-addr",
            &format!("127.0.0.1:{g}"),
            "--otlp-http-addr",
            &format!("127.0.0.1:{h}"),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the release vitals");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    for line in lines.by_ref() {
        if line.unwrap_or_default().contains("OTLP receiver listening") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    std::thread::sleep(Duration::from_millis(300));
    Vitals {
        child,
        metrics: format!("127.0.0.1:{m}"),
        grpc: format!("127.0.0.1:{g}"),
        http: format!("127.0.0.1:{h}"),
    }
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn spans(n: usize) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![Span::default(); n],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn post(addr: &str, path: &str, body: &[u8], gzip: bool) -> u16 {
    let mut req = ureq::post(&format!("http://{addr}{path}"))
        .timeout(Duration::from_secs(60))
        .set("Content-Type", "application/x-protobuf");
    let owned;
    let body = if gzip {
        req = req.set("Content-Encoding", "gzip");
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(body).unwrap();
        owned = e.finish().unwrap();
        &owned[..]
    } else {
        body
    };
    match req.send_bytes(body) {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(s, _)) => s,
        Err(e) => panic!("{e}"),
    }
}

fn scrape(addr: &str) -> usize {
    let r = ureq::get(&format!("http://{addr}/metrics"))
        .timeout(Duration::from_secs(60))
        .call()
        .unwrap();
    let mut body = Vec::new();
    r.into_reader().read_to_end(&mut body).unwrap();
    body.len()
}

fn fill_series(v: &Vitals, metrics: std::ops::Range<usize>) {
    let kv = |k: &str, val: String| KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(val)),
        }),
        ..Default::default()
    };
    for m in metrics {
        let points = (0..2000)
            .map(|i| NumberDataPoint {
                attributes: vec![
                    kv("route", format!("/orders/{i}")),
                    kv("pod", "shop-1".into()),
                ],
                time_unix_nano: 1,
                value: Some(number_data_point::Value::AsDouble(i as f64)),
                ..Default::default()
            })
            .collect();
        let req = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: format!("bench.gauge.{m}"),
                        data: Some(Data::Gauge(Gauge {
                            data_points: points,
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        assert_eq!(
            post(&v.http, "/v1/metrics", &req.encode_to_vec(), false),
            200
        );
    }
}

fn main() {
    let v = start();
    let pid = v.child.id();
    println!(
        "release vitals at start: RSS {:.1} MiB",
        mib(status_kib(pid, "VmRSS:"))
    );

    let worst = spans(WORST_SPANS).encode_to_vec();
    assert_eq!(post(&v.http, "/v1/traces", &worst, false), 200);
    println!(
        "worst accepted request ({WORST_SPANS} empty spans, {} KiB on the wire): peak RSS {:.1} MiB",
        worst.len() / 1024,
        mib(status_kib(pid, "VmHWM:"))
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let t = Instant::now();
    let (mut ok, mut shed) = (0, 0);
    for round in 0..5 {
        let http: Vec<_> = (0..8)
            .map(|i| {
                let (addr, body) = (v.http.clone(), worst.clone());
                std::thread::spawn(move || post(&addr, "/v1/traces", &body, (round + i) % 2 == 0))
            })
            .collect();
        let grpc = rt.block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..8 {
                let addr = v.grpc.clone();
                tasks.push(tokio::spawn(async move {
                    let mut c = TraceServiceClient::connect(format!("http://{addr}"))
                        .await
                        .unwrap()
                        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
                    c.export(spans(WORST_SPANS)).await.is_ok()
                }));
            }
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        });
        for s in http {
            if s.join().unwrap() == 200 {
                ok += 1
            } else {
                shed += 1
            }
        }
        for g in grpc {
            if g {
                ok += 1
            } else {
                shed += 1
            }
        }
    }
    println!(
        "8 HTTP + 8 gRPC/gzip worst requests at once, 5 rounds ({:.1} s): {ok} accepted, {shed} shed with a retry hint; peak RSS {:.1} MiB",
        t.elapsed().as_secs_f64(),
        mib(status_kib(pid, "VmHWM:"))
    );

    drop(v);

    // A fresh process, so the heap the requests left behind does not hide the series' cost.
    let v = start();
    let pid = v.child.id();
    let before = status_kib(pid, "VmRSS:");
    fill_series(&v, 0..5);
    let at_10k = status_kib(pid, "VmRSS:");
    fill_series(&v, 5..15);
    let at_30k = status_kib(pid, "VmRSS:");
    println!(
        "series (3 labels each, fresh process): RSS {:.1} MiB empty, {:.1} at 10,000, {:.1} at 30,000: {:.1} MiB per 10k series",
        mib(before),
        mib(at_10k),
        mib(at_30k),
        mib(at_30k.saturating_sub(before)) / 3.0
    );
    let size = scrape(&v.metrics);
    let before = status_kib(pid, "VmHWM:");
    let burst: Vec<_> = (0..200)
        .map(|_| {
            let addr = v.metrics.clone();
            std::thread::spawn(move || scrape(&addr))
        })
        .collect();
    for b in burst {
        b.join().unwrap();
    }
    let after = status_kib(pid, "VmHWM:");
    println!(
        "200 concurrent scrapes of 30,000 series ({} KiB each, after one scrape): peak RSS {:.1} -> {:.1} MiB, {} KiB per concurrent scrape",
        size / 1024,
        mib(before),
        mib(after),
        after.saturating_sub(before) / 200
    );
}
