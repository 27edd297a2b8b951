//! Forwarding: the real Python and Node SDKs send through vitals to a real upstream (another vitals, or
//! tests/python/upstream.py built from the official opentelemetry-proto services); every item arrives,
//! bytes are equal where forwarded raw, a full queue answers retryable overloads, an upstream that is
//! down and comes back loses nothing accepted, a 400 is not retried, and RED stays exact in vitals.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_port, node_send, sdk_send, Exposition, PyUpstream, Vitals};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span};
use prost::Message;
use tonic_types::StatusExt;

/// A trace export of `spans` server spans of service `svc`, padded by an attribute of `pad` bytes.
fn trace_request(svc: &str, spans: usize, pad: usize, seed: u8) -> Vec<u8> {
    let kv = |k: &str, v: &str| KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    };
    let spans = (0..spans)
        .map(|i| Span {
            // Never all zeros: the receiver refuses an all-zero trace id as invalid.
            trace_id: vec![seed.wrapping_add(1).max(1); 16],
            span_id: vec![i as u8 + 1; 8],
            name: "GET /orders".into(),
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_000_000_000_000 + 20_000_000 * (i as u64 + 1),
            attributes: vec![kv("http.route", "/orders"), kv("pad", &"x".repeat(pad))],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", svc)],
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

fn gzip(b: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

/// POSTs an OTLP/HTTP protobuf body; returns (status, Retry-After).
fn post(v: &Vitals, path: &str, body: &[u8], gz: bool) -> (u16, Option<String>) {
    let (_, http) = v.otlp_addrs();
    let mut req = ureq::post(&format!("http://{http}{path}"))
        .timeout(Duration::from_secs(10))
        .set("Content-Type", "application/x-protobuf");
    let sent;
    let body = if gz {
        req = req.set("Content-Encoding", "gzip");
        sent = gzip(body);
        &sent[..]
    } else {
        body
    };
    match req.send_bytes(body) {
        Ok(r) => (r.status(), None),
        Err(ureq::Error::Status(code, r)) => (code, r.header("Retry-After").map(str::to_owned)),
        Err(e) => panic!("POST {path}: {e}"),
    }
}

fn forwarded(e: &Exposition, signal: &str, outcome: &str) -> f64 {
    e.get(
        "vitals_exporter_forward_items_total",
        &[("signal", signal), ("outcome", outcome)],
    )
    .unwrap_or(0.0)
}

fn accepted(e: &Exposition, signal: &str) -> f64 {
    e.get(
        "vitals_exporter_otlp_items_total",
        &[("signal", signal), ("outcome", "accepted")],
    )
    .unwrap_or(0.0)
}

fn red_count(e: &Exposition, service: &str) -> f64 {
    e.sum(
        "vitals_request_duration_seconds_count",
        &[("service", service)],
    )
}

/// The Python SDK over gRPC (gzip), HTTP/protobuf and HTTP/JSON and the Node SDK send through a vitals
/// that forwards to another vitals, once over OTLP/HTTP and once over OTLP/gRPC with gzip. Both vitals
/// count every item (exact), and RED is exact and identical in both.
#[test]
fn sdks_through_vitals_reach_an_upstream_vitals() {
    for (protocol, gz) in [("http/protobuf", false), ("grpc", true)] {
        let up = Vitals::start(&[]);
        let (up_grpc, up_http) = up.otlp_addrs();
        let endpoint = if protocol == "grpc" {
            format!("http://{up_grpc}")
        } else {
            format!("http://{up_http}")
        };
        let mut args = vec![
            "--forward-endpoint",
            &endpoint,
            "--forward-protocol",
            protocol,
        ];
        if gz {
            args.extend(["--forward-compression", "gzip"]);
        }
        let mid = Vitals::start(&args);
        let (grpc, http) = mid.otlp_addrs();
        let service = format!("fwd-{}", protocol.replace('/', "-"));
        let mut spans = 0.0;
        for (transport, ep, extra) in [
            ("grpc", format!("http://{grpc}"), vec!["--gzip"]),
            ("http", format!("http://{http}"), vec![]),
            ("json", format!("http://{http}"), vec!["--gzip"]),
        ] {
            let truth = sdk_send(
                transport,
                &ep,
                "red",
                &service,
                &[&extra[..], &["--spans", "80"]].concat(),
            );
            spans += truth["requests"]
                .as_object()
                .unwrap()
                .values()
                .map(|n| n.as_f64().unwrap())
                .sum::<f64>();
        }
        sdk_send("http", &format!("http://{http}"), "metrics", &service, &[]);
        sdk_send("grpc", &format!("http://{grpc}"), "logs", &service, &[]);
        let node_service = format!("{service}-node");
        let node = node_send(&[
            "--transport",
            "proto",
            "--endpoint",
            &format!("http://{http}"),
            "--http",
            &format!("http://{http}"),
            "--service",
            &node_service,
            "--spans",
            "40",
        ]);
        let node_spans = node["count"].as_f64().unwrap();

        let m = mid.wait_until(Duration::from_secs(20), "RED in the middle", |e| {
            red_count(e, &service) == spans && red_count(e, &node_service) == node_spans
        });
        for signal in ["traces", "metrics", "logs"] {
            let got = accepted(&m, signal);
            assert!(got > 0.0, "{signal}: nothing accepted");
            let u = up.wait_until(
                Duration::from_secs(20),
                &format!("{signal} upstream"),
                |e| accepted(e, signal) == got,
            );
            let m = mid.wait_until(Duration::from_secs(10), "forward counters", |e| {
                forwarded(e, signal, "sent") == got
            });
            assert_eq!(
                forwarded(&m, signal, "rejected"),
                0.0,
                "{protocol} {signal}"
            );
            assert_eq!(forwarded(&m, signal, "refused"), 0.0, "{protocol} {signal}");
            assert_eq!(accepted(&u, signal), got, "{protocol} {signal}");
        }
        // RED upstream equals RED in the middle, series by series.
        let u = up.scrape();
        let m = mid.scrape();
        for s in m.all("vitals_request_duration_seconds_count") {
            let labels: Vec<(&str, &str)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            assert_eq!(
                u.get("vitals_request_duration_seconds_count", &labels),
                Some(s.value),
                "{protocol} {labels:?}"
            );
        }
        assert_eq!(red_count(&u, &service), spans, "{protocol}");
    }
}

/// What vitals forwards is byte-for-byte what the app sent (after gzip), over OTLP/HTTP and OTLP/gRPC,
/// with the configured headers; the upstream's partial success is counted as rejected items.
#[test]
fn forwarded_bytes_equal_what_the_app_sent() {
    for protocol in ["http", "grpc"] {
        let up = PyUpstream::start(protocol, "ok");
        let proto = if protocol == "grpc" {
            "grpc"
        } else {
            "http/protobuf"
        };
        let mid = Vitals::start_with(
            &["--forward-protocol", proto],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", up.url().as_str()),
                (
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    "x-api-key=s%3Dcret,x-team=ops",
                ),
                ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip"),
            ],
        );
        let sent: Vec<Vec<u8>> = (0..4).map(|i| trace_request("bytes", 5, 100, i)).collect();
        for (i, b) in sent.iter().enumerate() {
            assert_eq!(post(&mid, "/v1/traces", b, i % 2 == 1).0, 200);
        }
        let got = up.wait_bodies("traces", 4, Duration::from_secs(10));
        let mut got_sorted = got.clone();
        let mut sent_sorted = sent.clone();
        got_sorted.sort();
        sent_sorted.sort();
        assert_eq!(got_sorted, sent_sorted, "{protocol}: bodies differ");
        let meta = up.meta("traces", 0);
        assert_eq!(meta["headers"]["x-api-key"], "s=cret", "{protocol}: {meta}");
        assert_eq!(meta["headers"]["x-team"], "ops");
        if protocol == "http" {
            // grpcio consumes grpc-encoding before the handler sees metadata; HTTP shows it.
            assert_eq!(meta["encoding"], "gzip", "{protocol}: {meta}");
        }
        let e = mid.wait_until(Duration::from_secs(5), "sent", |e| {
            forwarded(e, "traces", "sent") == 20.0
        });
        assert_eq!(red_count(&e, "bytes"), 20.0);
    }
    let up = PyUpstream::start("http", "partial");
    let mid = Vitals::start(&["--forward-endpoint", &up.url()]);
    for i in 0..3 {
        assert_eq!(
            post(&mid, "/v1/traces", &trace_request("p", 4, 0, i), false).0,
            200
        );
    }
    // Each of the 3 answers rejects one span: 3 rejected, 9 sent.
    let e = mid.wait_until(Duration::from_secs(10), "partial", |e| {
        forwarded(e, "traces", "rejected") == 3.0
    });
    assert_eq!(forwarded(&e, "traces", "sent"), 9.0);
}

/// Upstream down, then back: what vitals accepted while the queue had room all arrives, byte-equal;
/// past the queue bound the app gets 503 with Retry-After (and RED does not count refused requests);
/// an SDK's spans sent during the outage arrive too.
#[test]
fn upstream_down_then_back_loses_nothing_accepted() {
    let port = free_port();
    // 64 KiB queue; each request below is about 11 KiB, all of the same length.
    let len = trace_request("outage", 10, 1000, 0).len();
    let fit = 65536 / len;
    let mid = Vitals::start(&[
        "--forward-endpoint",
        &format!("http://127.0.0.1:{port}"),
        "--forward-queue-bytes",
        "65536",
    ]);
    let mut accepted_bodies = Vec::new();
    let mut refused = 0;
    for i in 0..12u8 {
        let b = trace_request("outage", 10, 1000, i);
        match post(&mid, "/v1/traces", &b, false) {
            (200, _) => accepted_bodies.push(b),
            (503, retry_after) => {
                assert_eq!(retry_after.as_deref(), Some("1"));
                refused += 1;
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(accepted_bodies.len(), fit, "65536 / {len} bytes");
    assert_eq!(refused, 12 - fit);
    // Fill what is left with one-span requests until the queue refuses those too.
    let mut small = 0;
    for i in 0..=255u8 {
        let b = trace_request("outage", 1, 0, i);
        if post(&mid, "/v1/traces", &b, false).0 == 503 {
            break;
        }
        accepted_bodies.push(b);
        small += 1;
    }
    assert!(small > 0 && small < 256, "{small} small requests fit");
    // Over gRPC the full queue answers UNAVAILABLE with RetryInfo (which OTLP clients retry).
    let (grpc, _) = mid.otlp_addrs();
    let status = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let mut c = TraceServiceClient::connect(format!("http://{grpc}"))
                .await
                .unwrap();
            let req =
                ExportTraceServiceRequest::decode(&trace_request("outage", 1, 0, 0)[..]).unwrap();
            c.export(req).await.unwrap_err()
        });
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(
        status.get_details_retry_info().and_then(|r| r.retry_delay),
        Some(Duration::from_secs(1))
    );
    let e = mid.scrape();
    // Only accepted requests reach RED; refused ones are the app's to retry.
    assert_eq!(red_count(&e, "outage"), (10 * fit + small) as f64);
    assert_eq!(
        forwarded(&e, "traces", "refused"),
        (10 * (12 - fit) + 2) as f64
    );
    let queued = e.get("vitals_exporter_forward_queue_bytes", &[]).unwrap();
    let total: usize = accepted_bodies.iter().map(Vec::len).sum();
    assert_eq!(queued, total as f64);
    assert_eq!(
        e.get("vitals_exporter_forward_queue_limit_bytes", &[]),
        Some(65536.0)
    );
    // Down for 30 s in all: vitals keeps retrying with its backoff capped at 5 s, and gives nothing
    // queued up while the queue holds it.
    let down = Instant::now();
    std::thread::sleep(Duration::from_secs(30));
    // The real SDK sends while the queue is still full: it gets 503 + Retry-After and its own retries
    // (1 s, 2 s, 4 s within its 10 s export timeout) deliver once vitals' queue has drained.
    let (_, http) = mid.otlp_addrs();
    let sdk = std::thread::spawn(move || {
        sdk_send(
            "http",
            &format!("http://{http}"),
            "red",
            "outage-sdk",
            &["--spans", "30"],
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    let up = PyUpstream::start_on("http", "ok", port);
    eprintln!("figure: upstream down for {:?}", down.elapsed());
    let truth = sdk.join().unwrap();
    let sdk_spans: f64 = truth["requests"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_f64().unwrap())
        .sum();
    let e = mid.wait_until(Duration::from_secs(20), "SDK spans", |e| {
        red_count(e, "outage-sdk") == sdk_spans
    });
    assert!(
        e.get(
            "vitals_exporter_otlp_refused_requests_total",
            &[("signal", "traces"), ("reason", "overloaded")]
        )
        .unwrap()
            > (12 - fit + 2) as f64,
        "the SDK was never refused: the test did not exercise its retry"
    );
    // Backoff is capped at 5 s: everything arrives within two caps plus a loaded machine's slack.
    let e = mid.wait_until(Duration::from_secs(20), "queue empty", |e| {
        e.get("vitals_exporter_forward_queue_bytes", &[]) == Some(0.0)
    });
    let accepted_items = accepted(&e, "traces");
    assert_eq!(forwarded(&e, "traces", "sent"), accepted_items);
    let got = up.bodies("traces");
    // Every span vitals accepted arrived upstream exactly once.
    let spans_upstream: usize = got
        .iter()
        .map(|b| {
            ExportTraceServiceRequest::decode(&b[..])
                .unwrap()
                .resource_spans
                .iter()
                .flat_map(|r| r.scope_spans.iter())
                .map(|s| s.spans.len())
                .sum::<usize>()
        })
        .sum();
    assert_eq!(spans_upstream as f64, accepted_items);
    // The requests sent during the outage arrived byte-equal.
    for b in &accepted_bodies {
        assert_eq!(got.iter().filter(|g| *g == b).count(), 1);
    }
    assert!(
        e.get(
            "vitals_exporter_forward_retries_total",
            &[("signal", "traces")]
        )
        .unwrap()
            >= fit as f64
    );
}

/// An upstream answering 400 (or gRPC INVALID_ARGUMENT) is not retried: it sees each request once, the
/// items count as rejected; one answering 503 with Retry-After is retried.
#[test]
fn permanent_errors_are_not_retried_and_503_is() {
    for protocol in ["http", "grpc"] {
        let up = PyUpstream::start(protocol, "400");
        let proto = if protocol == "grpc" {
            "grpc"
        } else {
            "http/protobuf"
        };
        let mid = Vitals::start(&["--forward-endpoint", &up.url(), "--forward-protocol", proto]);
        for i in 0..3 {
            assert_eq!(
                post(&mid, "/v1/traces", &trace_request("bad", 2, 0, i), false).0,
                200
            );
        }
        mid.wait_until(Duration::from_secs(10), "rejected", |e| {
            forwarded(e, "traces", "rejected") == 6.0
        });
        // Time for a retry to happen if there were one (the first backoff is 0.1-0.2 s).
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(
            up.bodies("traces").len(),
            3,
            "{protocol}: retried a permanent error"
        );
        let e = mid.scrape();
        assert_eq!(
            e.get(
                "vitals_exporter_forward_retries_total",
                &[("signal", "traces")]
            ),
            Some(0.0)
        );
        assert_eq!(red_count(&e, "bad"), 6.0);
        let log = mid.log.lock().unwrap().clone();
        assert_eq!(
            log.matches("refused data for good").count(),
            1,
            "logged once per reason:\n{log}"
        );
    }
    let up = PyUpstream::start("http", "503");
    let mid = Vitals::start(&["--forward-endpoint", &up.url()]);
    assert_eq!(
        post(&mid, "/v1/traces", &trace_request("busy", 2, 0, 1), false).0,
        200
    );
    // Retry-After: 1 is honoured: about one attempt a second.
    std::thread::sleep(Duration::from_millis(3500));
    let n = up.bodies("traces").len();
    assert!(
        (3..=5).contains(&n),
        "{n} attempts in 3.5 s with Retry-After: 1"
    );
    assert_eq!(forwarded(&mid.scrape(), "traces", "sent"), 0.0);
}

/// SIGTERM with the upstream down: vitals waits the drain timeout, then reports what it could not send
/// and exits; with the upstream up the queue drains and nothing is reported lost.
#[test]
fn sigterm_drains_within_the_grace_period() {
    let port = free_port();
    let mid = Vitals::start(&[
        "--forward-endpoint",
        &format!("http://127.0.0.1:{port}"),
        "--forward-drain-timeout",
        "2s",
    ]);
    assert_eq!(
        post(&mid, "/v1/traces", &trace_request("d", 7, 0, 1), false).0,
        200
    );
    let log = mid.log.clone();
    let (code, took) = mid.terminate();
    assert_eq!(code, Some(0));
    // 2 s drain plus the receivers' stop (<= 1 s) and a loaded machine's slack.
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let log = log.lock().unwrap().clone();
    assert!(log.contains("these items are lost"), "{log}");
    assert!(log.contains("items=7"), "{log}");

    let up = PyUpstream::start("http", "ok");
    let mid = Vitals::start(&["--forward-endpoint", &up.url()]);
    assert_eq!(
        post(&mid, "/v1/traces", &trace_request("d", 7, 0, 2), false).0,
        200
    );
    let log = mid.log.clone();
    let (code, _) = mid.terminate();
    assert_eq!(code, Some(0));
    assert_eq!(up.bodies("traces").len(), 1);
    assert!(log.lock().unwrap().contains("queue drained"));
}

/// TLS to the upstream with a CA and a client certificate made by openssl (mutual TLS), over OTLP/HTTP
/// and OTLP/gRPC: bodies arrive byte-equal. Without the CA (system roots only) the handshake fails and
/// nothing is accepted upstream; a missing certificate file stops vitals at start, naming the variable.
#[test]
fn tls_to_the_upstream_with_openssl_certificates() {
    let certs = tempfile::tempdir().unwrap();
    common::make_certificates(certs.path());
    let p = |f: &str| certs.path().join(f).to_string_lossy().into_owned();
    for protocol in ["http", "grpc"] {
        let up = PyUpstream::start_mutual_tls(protocol, certs.path());
        let endpoint = format!("https://127.0.0.1:{}", up.port);
        let proto = if protocol == "grpc" {
            "grpc"
        } else {
            "http/protobuf"
        };
        let mid = Vitals::start_with(
            &["--forward-protocol", proto],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", &p("ca.pem")),
                ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &p("client.pem")),
                ("OTEL_EXPORTER_OTLP_CLIENT_KEY", &p("client.key")),
            ],
        );
        let sent: Vec<Vec<u8>> = (0..3).map(|i| trace_request("tls", 3, 10, i)).collect();
        for b in &sent {
            assert_eq!(post(&mid, "/v1/traces", b, false).0, 200);
        }
        let mut got = up.wait_bodies("traces", 3, Duration::from_secs(10));
        got.sort();
        let mut sent = sent;
        sent.sort();
        assert_eq!(got, sent, "{protocol}");
        let e = mid.scrape();
        assert_eq!(forwarded(&e, "traces", "sent"), 9.0);

        // Without the test CA the upstream's certificate is not trusted: retried, never delivered.
        let mid = Vitals::start_with(
            &["--forward-protocol", proto],
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())],
        );
        assert_eq!(
            post(
                &mid,
                "/v1/traces",
                &trace_request("untrusted", 1, 0, 9),
                false
            )
            .0,
            200
        );
        mid.wait_until(Duration::from_secs(10), "retries", |e| {
            e.get(
                "vitals_exporter_forward_retries_total",
                &[("signal", "traces")],
            )
            .unwrap_or(0.0)
                >= 2.0
        });
        assert_eq!(
            up.bodies("traces").len(),
            3,
            "{protocol}: untrusted upstream got data"
        );

        // The same certificates given as --forward-* flags instead of the variables.
        let flagged = Vitals::start(&[
            "--forward-protocol",
            proto,
            "--forward-endpoint",
            &endpoint,
            "--forward-certificate",
            &p("ca.pem"),
            "--forward-client-certificate",
            &p("client.pem"),
            "--forward-client-key",
            &p("client.key"),
        ]);
        let body = trace_request("tls-flags", 2, 10, 7);
        assert_eq!(post(&flagged, "/v1/traces", &body, false).0, 200);
        let got = up.wait_bodies("traces", 4, Duration::from_secs(10));
        assert!(
            got.contains(&body),
            "{protocol}: not delivered with the certificate flags"
        );
    }
    let out = Command::new(common::vitals_bin())
        .args([
            "--metrics-addr",
            "127.0.0.1:0",
            "--otlp-grpc-addr",
            "off",
            "--otlp-http-addr",
            "off",
        ])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "https://127.0.0.1:1")
        .env("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("OTEL_EXPORTER_OTLP_CERTIFICATE") && err.contains("/nonexistent/ca.pem"),
        "{err}"
    );
}

/// RSS growth of a vitals started with `args` over `n` requests of ~256 KiB (after one warm-up request),
/// and how many were accepted.
fn rss_growth(args: &[&str], n: u8) -> (f64, usize, usize) {
    let v = Vitals::start(args);
    let rss = |pid: u32| -> f64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse::<f64>()
            .unwrap()
            * 1024.0
    };
    let b = trace_request("mem", 10, 25_000, 0);
    let len = b.len();
    assert_eq!(post(&v, "/v1/traces", &b, false).0, 200);
    let before = rss(v.child.id());
    let mut accepted = 0;
    for i in 1..=n {
        match post(
            &v,
            "/v1/traces",
            &trace_request("mem", 10, 25_000, i),
            false,
        )
        .0
        {
            200 => accepted += 1,
            503 => {}
            other => panic!("answer {other}"),
        }
    }
    (rss(v.child.id()) - before, accepted, len)
}

/// With the upstream down and the queue filled to its 8 MiB bound by 256 KiB requests, vitals' resident
/// memory grows by the queued bytes beyond what the same requests cost a vitals that does not forward,
/// and every request past the bound is refused.
#[test]
fn memory_stays_within_the_queue_bound() {
    let (control, all, _) = rss_growth(&[], 60);
    assert_eq!(all, 60);
    let port = free_port();
    let (grew, accepted, len) = rss_growth(
        &[
            "--forward-endpoint",
            &format!("http://127.0.0.1:{port}"),
            "--forward-queue-bytes",
            "8388608",
        ],
        60,
    );
    // The warm-up request is queued too.
    assert_eq!(
        accepted + 1,
        8_388_608 / len,
        "{len}-byte requests in 8 MiB"
    );
    let queued = (accepted * len) as f64;
    // Measured: 11.6 MB for 8.0 MB queued (control 0.5 MB). The queued copies sit between the receiver's
    // freed read buffers in glibc's heap, which fragments it: budget 1.5 times the queued bytes, plus
    // 1 MiB for what differs between two processes. A queue holding anything twice fails this.
    assert!(
        grew <= 1.5 * queued + control.max(0.0) + 1048576.0,
        "RSS grew {grew} bytes for {queued} queued bytes; without forwarding it grew {control}"
    );
}
