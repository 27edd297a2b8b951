//! The receiver's memory budget holds by construction: requests whose decoded form would be far larger
//! than their wire form (empty spans, empty attributes, `{}` in JSON, gzip over gRPC) are refused with
//! the spec's answer before they are decoded, and vitals' peak RSS stays under the 96 MiB the shipped
//! manifest (deploy/kubernetes/base/deployment.yaml) gives it, for one request and for 8 at once.

mod common;

use std::io::Write;
use std::time::Duration;

use common::Vitals;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

/// Empty spans in the worst request the receiver accepts.
const WORST: usize = 40_000;

/// The memory limit of the vitals container in the shipped manifest.
const MANIFEST_LIMIT: u64 = 96 << 20;

fn manifest_limit() -> u64 {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/kubernetes/base/deployment.yaml"),
    )
    .unwrap();
    assert!(
        text.contains("memory: 96Mi"),
        "the manifest's limit changed: update MANIFEST_LIMIT"
    );
    MANIFEST_LIMIT
}

fn spans(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Peak resident set of a process (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/PID/status");
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

fn post(addr: std::net::SocketAddr, ct: &str, gzip: bool, body: &[u8]) -> u16 {
    let mut req = ureq::post(&format!("http://{addr}/v1/traces"))
        .timeout(Duration::from_secs(60))
        .set("Content-Type", ct);
    let owned;
    let body = if gzip {
        req = req.set("Content-Encoding", "gzip");
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(body).unwrap();
        owned = e.finish().unwrap();
        &owned[..]
    } else {
        body
    };
    match req.send_bytes(body) {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(s, _)) => s,
        Err(e) => panic!("POST: {e}"),
    }
}

#[test]
fn hostile_bodies_are_refused_before_decoding_and_rss_stays_under_the_manifest_limit() {
    let limit = manifest_limit();
    let v = Vitals::start(&[]);
    let (grpc, http) = v.otlp_addrs();
    let pid = v.child.id();
    let before = peak_rss(pid);

    // 4 MiB of empty spans: 2M spans of ~2 bytes each, ~570 MiB decoded before this fix.
    let bomb = spans(vec![Span::default(); (2 << 20) - 8]).encode_to_vec();
    assert!(bomb.len() <= 4 << 20, "{}", bomb.len());
    assert_eq!(post(http, "application/x-protobuf", false, &bomb), 413);
    assert_eq!(post(http, "application/x-protobuf", true, &bomb), 413);
    // The same in JSON: `{}` per span.
    let mut json = String::from("{\"resourceSpans\":[{\"scopeSpans\":[{\"spans\":[{}");
    while json.len() < (4 << 20) - 16 {
        json.push_str(",{}");
    }
    json.push_str("]}]}]}");
    assert_eq!(post(http, "application/json", false, json.as_bytes()), 413);
    // Empty attributes: 2 bytes on the wire, a KeyValue each when decoded.
    let span = Span {
        attributes: vec![KeyValue::default(); 1_500_000],
        ..Default::default()
    };
    assert_eq!(
        post(
            http,
            "application/x-protobuf",
            false,
            &spans(vec![span]).encode_to_vec()
        ),
        413
    );

    // The worst request that is accepted: as many empty spans as the 32 MiB budget holds (each is
    // charged 3 x 264 bytes), 40,000; 44,000 are refused.
    let worst = spans(vec![Span::default(); WORST]).encode_to_vec();
    assert_eq!(post(http, "application/x-protobuf", false, &worst), 200);
    let over = spans(vec![Span::default(); 44_000]).encode_to_vec();
    assert_eq!(post(http, "application/x-protobuf", false, &over), 413);

    // 8 at once, 4 rounds, over HTTP (plain and gzip) and gRPC with gzip: each is accepted or shed with
    // a retry hint, never more.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut accepted = 1u64;
    for round in 0..4 {
        let mut threads = Vec::new();
        for i in 0..8 {
            let body = worst.clone();
            threads.push(std::thread::spawn(move || {
                post(http, "application/x-protobuf", (round + i) % 2 == 0, &body)
            }));
        }
        let grpc_results = rt.block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..8 {
                tasks.push(tokio::spawn(async move {
                    let mut c = TraceServiceClient::connect(format!("http://{grpc}"))
                        .await
                        .unwrap()
                        .send_compressed(tonic::codec::CompressionEncoding::Gzip)
                        .max_encoding_message_size(64 << 20);
                    c.export(spans(vec![Span::default(); WORST])).await
                }));
            }
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        });
        for t in threads {
            let s = t.join().unwrap();
            assert!(s == 200 || s == 503, "HTTP status {s}");
            accepted += u64::from(s == 200);
        }
        for r in grpc_results {
            match r {
                Ok(_) => accepted += 1,
                Err(s) => assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}"),
            }
        }
    }
    let peak = peak_rss(pid);
    eprintln!(
        "peak RSS {:.1} MiB (at start {:.1} MiB), {accepted} requests of {WORST} empty spans accepted",
        peak as f64 / (1 << 20) as f64,
        before as f64 / (1 << 20) as f64
    );
    assert!(
        peak < limit,
        "peak RSS {peak} bytes is above the manifest's {limit}"
    );
    assert!(accepted >= 5, "only {accepted} requests were accepted");
    // Every span of every accepted request is counted (empty spans lack ids, so as rejected items
    // of a partial success).
    let e = v.scrape();
    assert_eq!(
        e.sum("vitals_exporter_otlp_items_total", &[("signal", "traces")]),
        (accepted * WORST as u64) as f64
    );
}
