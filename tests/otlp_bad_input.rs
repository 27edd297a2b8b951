//! The receiver's answers to bad, oversize and excess input, as the OTLP specification (v1.11) asks:
//! HTTP 200 + partial_success, 400, 404, 405, 413 (no retry hint), 415, 503 + Retry-After; gRPC
//! INVALID_ARGUMENT, RESOURCE_EXHAUSTED (never tonic's OUT_OF_RANGE), UNAVAILABLE + RetryInfo. Error
//! bodies are google.rpc.Status. Cardinality stays bounded.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::Vitals;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric::Data, Histogram, HistogramDataPoint, Metric, ResourceMetrics, ScopeMetrics,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, ResourceSpans, ScopeSpans, Span};
use prost::Message;

const LIMIT: usize = 64 * 1024;

fn start(extra: &[&str]) -> (Vitals, SocketAddr, SocketAddr) {
    let limit = LIMIT.to_string();
    let mut args = vec!["--otlp-max-request-bytes", limit.as_str()];
    args.extend_from_slice(extra);
    let v = Vitals::start(&args);
    let (grpc, http) = v.otlp_addrs();
    (v, grpc, http)
}

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

fn server_span(route: &str, trace_byte: u8) -> Span {
    Span {
        trace_id: vec![trace_byte; 16],
        span_id: vec![7; 8],
        name: "GET".into(),
        kind: SpanKind::Server as i32,
        start_time_unix_nano: 1_000_000_000,
        end_time_unix_nano: 1_050_000_000,
        attributes: vec![kv("http.route", route)],
        ..Default::default()
    }
}

fn traces(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", service)],
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

/// POST with full control of headers; returns (status, headers lowercased, body).
fn post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut req = ureq::post(&format!("http://{addr}{path}")).timeout(Duration::from_secs(10));
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let resp = match req.send_bytes(body) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("POST {path}: {e}"),
    };
    let status = resp.status();
    let hdrs = resp
        .headers_names()
        .iter()
        .map(|h| format!("{}: {}\n", h, resp.header(h).unwrap_or("")))
        .collect::<String>()
        .to_lowercase();
    let mut body = Vec::new();
    resp.into_reader().read_to_end(&mut body).unwrap();
    (status, hdrs, body)
}

fn rpc_status(body: &[u8]) -> tonic_types::Status {
    tonic_types::Status::decode(body).expect("error body is a google.rpc.Status")
}

const PB: (&str, &str) = ("Content-Type", "application/x-protobuf");

#[test]
fn http_status_codes() {
    let (v, _, http) = start(&[]);
    let ok = traces("s", vec![server_span("/a", 1)]).encode_to_vec();

    let (s, _, body) = post(http, "/v1/traces", &[("Content-Type", "text/plain")], &ok);
    assert_eq!(s, 415);
    assert_eq!(rpc_status(&body).code, 3);
    let (s, _, _) = post(http, "/v1/traces", &[PB, ("Content-Encoding", "br")], &ok);
    assert_eq!(s, 415);
    let (s, _, _) = post(http, "/v1/spans", &[PB], &ok);
    assert_eq!(s, 404);
    let r = ureq::get(&format!("http://{http}/v1/traces")).call();
    match r {
        Err(ureq::Error::Status(405, resp)) => assert_eq!(resp.header("allow"), Some("POST")),
        other => panic!("GET /v1/traces should be 405, got {other:?}"),
    }

    let (s, _, body) = post(http, "/v1/traces", &[PB], b"\xff\xff\xff\xff\x0f");
    assert_eq!(s, 400);
    let st = rpc_status(&body);
    assert_eq!(st.code, 3, "INVALID_ARGUMENT");
    assert!(st.message.contains("decode"), "{}", st.message);
    let (s, hdrs, body) = post(
        http,
        "/v1/traces",
        &[("Content-Type", "application/json")],
        b"{\"resourceSpans\": [",
    );
    assert_eq!(s, 400);
    assert!(hdrs.contains("content-type: application/json"), "{hdrs}");
    let st: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(st["code"], 3);

    // The same valid request is accepted, with no partial_success.
    let (s, _, body) = post(http, "/v1/traces", &[PB], &ok);
    assert_eq!(s, 200);
    assert_eq!(
        ExportTraceServiceResponse::decode(&body[..])
            .unwrap()
            .partial_success,
        None
    );
    let e = v.scrape();
    assert_eq!(
        e.get(
            "vitals_exporter_otlp_refused_requests_total",
            &[("signal", "traces"), ("reason", "undecodable")]
        ),
        Some(2.0)
    );
    assert_eq!(
        e.get(
            "vitals_exporter_otlp_refused_requests_total",
            &[("signal", "traces"), ("reason", "unsupported_media_type")]
        ),
        Some(2.0)
    );
}

#[test]
fn http_size_limit_applies_after_decompression() {
    let (v, _, http) = start(&[]);
    // A plain body over the limit.
    let big = traces(
        "s",
        vec![Span {
            name: "x".repeat(LIMIT),
            ..server_span("/a", 1)
        }],
    )
    .encode_to_vec();
    let (s, hdrs, body) = post(http, "/v1/traces", &[PB], &big);
    assert_eq!(s, 413);
    assert!(
        !hdrs.contains("retry-after"),
        "no retry hint on 413: {hdrs}"
    );
    assert_eq!(rpc_status(&body).code, 8, "RESOURCE_EXHAUSTED");
    // The same body chunked (no Content-Length): refused once the limit is crossed, still answered cleanly.
    let mut conn = TcpStream::connect(http).unwrap();
    write!(conn, "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").unwrap();
    for chunk in big.chunks(8192) {
        write!(conn, "{:x}\r\n", chunk.len()).unwrap();
        conn.write_all(chunk).unwrap();
        write!(conn, "\r\n").unwrap();
    }
    write!(conn, "0\r\n\r\n").unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // A gzip bomb: 1 KiB on the wire, 16 MiB inflated. Refused while inflating.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![0u8; 16 << 20]).unwrap();
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < LIMIT);
    let (s, _, body) = post(
        http,
        "/v1/traces",
        &[PB, ("Content-Encoding", "gzip")],
        &bomb,
    );
    assert_eq!(s, 413);
    assert_eq!(rpc_status(&body).code, 8);
    let e = v.scrape();
    assert_eq!(
        e.get(
            "vitals_exporter_otlp_refused_requests_total",
            &[("signal", "traces"), ("reason", "too_large")]
        ),
        Some(3.0)
    );
    let rss = e.get("vitals_exporter_resident_memory_bytes", &[]).unwrap();
    assert!(
        rss < 64.0 * 1024.0 * 1024.0,
        "the bomb must not have been inflated: RSS {rss}"
    );
}

#[test]
fn http_partial_success_counts_rejected_items() {
    let (v, _, http) = start(&[]);
    let mut bad = server_span("/a", 1);
    bad.trace_id = vec![1, 2, 3];
    let req = traces(
        "partial",
        vec![server_span("/a", 1), bad, server_span("/a", 2)],
    );
    let (s, _, body) = post(http, "/v1/traces", &[PB], &req.encode_to_vec());
    assert_eq!(s, 200);
    let ps = ExportTraceServiceResponse::decode(&body[..])
        .unwrap()
        .partial_success
        .expect("partial_success");
    assert_eq!(ps.rejected_spans, 1);
    assert!(
        ps.error_message.contains("trace_id"),
        "{}",
        ps.error_message
    );

    // JSON request, JSON response.
    let (s, hdrs, body) = post(http, "/v1/traces", &[("Content-Type", "application/json")], br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"0102","spanId":"0102030405060708","kind":2,"startTimeUnixNano":"1","endTimeUnixNano":"2"}]}]}]}"#);
    assert_eq!(s, 200);
    assert!(hdrs.contains("content-type: application/json"));
    let resp: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(resp["partialSuccess"]["rejectedSpans"], "1", "{resp}");

    let hist = Metric {
        name: "h".into(),
        data: Some(Data::Histogram(Histogram {
            data_points: vec![
                HistogramDataPoint {
                    count: 1,
                    bucket_counts: vec![1],
                    explicit_bounds: vec![1.0],
                    ..Default::default()
                },
                HistogramDataPoint {
                    count: 1,
                    bucket_counts: vec![0, 1],
                    explicit_bounds: vec![1.0],
                    ..Default::default()
                },
            ],
            aggregation_temporality: 2,
        })),
        ..Default::default()
    };
    let m = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![hist],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let (s, _, body) = post(http, "/v1/metrics", &[PB], &m.encode_to_vec());
    assert_eq!(s, 200);
    let ps = ExportMetricsServiceResponse::decode(&body[..])
        .unwrap()
        .partial_success
        .expect("partial_success");
    assert_eq!(ps.rejected_data_points, 1);

    let e = v.scrape();
    assert_eq!(
        e.get(
            "vitals_exporter_otlp_items_total",
            &[("signal", "traces"), ("outcome", "accepted")]
        ),
        Some(2.0)
    );
    assert_eq!(
        e.get(
            "vitals_exporter_otlp_items_total",
            &[("signal", "traces"), ("outcome", "rejected")]
        ),
        Some(2.0)
    );
    assert_eq!(
        e.get(
            "vitals_exporter_otlp_items_total",
            &[("signal", "metrics"), ("outcome", "accepted")]
        ),
        Some(1.0)
    );
    assert_eq!(
        e.get(
            "vitals_exporter_otlp_items_total",
            &[("signal", "metrics"), ("outcome", "rejected")]
        ),
        Some(1.0)
    );
    assert_eq!(
        e.get(
            "vitals_request_duration_seconds_count",
            &[("service", "partial"), ("operation", "/a")]
        ),
        Some(2.0)
    );
}

/// Opens a request that declares a 4 MiB body and sends only `sent` bytes of it.
fn stall(http: SocketAddr, sent: usize) -> TcpStream {
    let mut s = TcpStream::connect(http).unwrap();
    write!(s, "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n", 4 << 20).unwrap();
    s.write_all(&vec![0x0a; sent]).unwrap();
    s.flush().unwrap();
    s
}

/// Slowloris: 8 bodies that stall hold no processing slot, so a normal export on either transport is
/// accepted while they stall; each stalled request gets 408 once its 10 s body deadline passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_do_not_block_exports_and_time_out() {
    let v = Vitals::start(&[]);
    let (grpc, http) = v.otlp_addrs();
    let started = std::time::Instant::now();
    let held =
        tokio::task::spawn_blocking(move || (0..8).map(|_| stall(http, 3)).collect::<Vec<_>>())
            .await
            .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ok = traces("s", vec![server_span("/a", 1)]).encode_to_vec();
    let (s, _, _) = tokio::task::spawn_blocking(move || post(http, "/v1/traces", &[PB], &ok))
        .await
        .unwrap();
    assert_eq!(s, 200, "HTTP export while 8 bodies stall");
    let mut client = TraceServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    client
        .export(traces("s", vec![server_span("/a", 2)]))
        .await
        .expect("gRPC export while 8 bodies stall");
    // The stalled requests are answered 408 after the body deadline (10 s; 20 s allowed for a loaded
    // machine) and their connections closed.
    let answers = tokio::task::spawn_blocking(move || {
        held.into_iter()
            .map(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut head = [0u8; 12];
                s.read_exact(&mut head)
                    .map(|_| head.to_vec())
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let waited = started.elapsed();
    for a in answers {
        assert_eq!(String::from_utf8_lossy(&a), "HTTP/1.1 408");
    }
    assert!(
        waited >= Duration::from_secs(10) && waited < Duration::from_secs(25),
        "{waited:?}"
    );
}

/// Transient overload: 8 bodies that have each sent 1.75 MiB of a declared 4 MiB hold 28-30 MiB of the
/// 32 MiB memory budget (bodies are charged twice their size, rounded up to KiB per frame), so a
/// request of 20,000 spans (1.5 MB on the wire, over 10 MiB decoded) is shed with a retry hint on both
/// transports until the budget comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_shed_with_a_retry_hint_on_both_transports() {
    let v = Vitals::start(&[]);
    let (grpc, http) = v.otlp_addrs();
    let held = tokio::task::spawn_blocking(move || {
        (0..8).map(|_| stall(http, 1792 << 10)).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let big = || {
        traces(
            "s",
            (0..20_000).map(|i| server_span("/a", i as u8)).collect(),
        )
    };
    let body = big().encode_to_vec();
    assert!(body.len() < 4 << 20);
    let (s, hdrs, body) =
        tokio::task::spawn_blocking(move || post(http, "/v1/traces", &[PB], &body))
            .await
            .unwrap();
    assert_eq!(s, 503);
    assert!(hdrs.contains("retry-after: 1"), "{hdrs}");
    assert_eq!(rpc_status(&body).code, 14, "UNAVAILABLE");

    let mut client = TraceServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap()
        .max_encoding_message_size(4 << 20);
    let err = client.export(big()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    use tonic_types::StatusExt;
    let retry = err
        .get_details_retry_info()
        .expect("RetryInfo in the status details");
    assert_eq!(retry.retry_delay, Some(Duration::from_secs(1)));
    drop(held);
    // The budget comes back once the stalled requests are gone.
    let mut ok = false;
    for _ in 0..50 {
        if client
            .export(traces("s", vec![server_span("/a", 1)]))
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        ok,
        "receiver never recovered after the stalled requests closed"
    );
    let e = tokio::task::spawn_blocking(move || v.scrape())
        .await
        .unwrap();
    assert_eq!(
        e.get(
            "vitals_exporter_otlp_refused_requests_total",
            &[("signal", "traces"), ("reason", "overloaded")]
        ),
        Some(2.0)
    );
}

/// A codec that sends raw bytes, to put arbitrary frames on the wire.
#[derive(Clone, Default)]
struct Raw;
impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}
impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}
impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

async fn raw_export(grpc: SocketAddr, body: Vec<u8>, gzip: bool) -> tonic::Status {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = tonic::client::Grpc::new(channel).max_encoding_message_size(usize::MAX);
    if gzip {
        client = client.send_compressed(tonic::codec::CompressionEncoding::Gzip);
    }
    client.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    );
    client
        .unary(tonic::Request::new(body), path, Raw)
        .await
        .expect_err("must be refused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_status_codes_follow_the_spec() {
    let (v, grpc, _) = start(&[]);
    let garbage = raw_export(grpc, b"\xff\xff\xff\xff\x0f".to_vec(), false).await;
    assert_eq!(garbage.code(), tonic::Code::InvalidArgument, "{garbage:?}");
    let oversize = raw_export(
        grpc,
        traces(
            "s",
            vec![Span {
                name: "x".repeat(LIMIT),
                ..server_span("/a", 1)
            }],
        )
        .encode_to_vec(),
        false,
    )
    .await;
    assert_eq!(
        oversize.code(),
        tonic::Code::ResourceExhausted,
        "tonic's OUT_OF_RANGE must be mapped: {oversize:?}"
    );
    use tonic_types::StatusExt;
    assert!(
        oversize.get_details_retry_info().is_none(),
        "no retry hint for a request that can never fit"
    );
    let mut bomb = traces("s", vec![server_span("/a", 1)]).encode_to_vec();
    bomb.extend(std::iter::repeat_n(0u8, 8 << 20)); // zeros are field 0: invalid, but refused for size first
    let bomb = raw_export(grpc, bomb, true).await;
    assert_eq!(bomb.code(), tonic::Code::ResourceExhausted, "{bomb:?}");

    let mut client = TraceServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let mut bad = server_span("/a", 1);
    bad.span_id = vec![];
    let resp = client
        .export(traces("grpc-partial", vec![bad, server_span("/a", 3)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.partial_success.unwrap().rejected_spans, 1);
    let e = tokio::task::spawn_blocking(move || v.scrape())
        .await
        .unwrap();
    assert_eq!(
        e.get(
            "vitals_exporter_otlp_refused_requests_total",
            &[("signal", "traces"), ("reason", "too_large")]
        ),
        Some(2.0)
    );
    assert_eq!(
        e.get(
            "vitals_exporter_otlp_refused_requests_total",
            &[("signal", "traces"), ("reason", "undecodable")]
        ),
        Some(1.0)
    );
    assert_eq!(
        e.get(
            "vitals_request_duration_seconds_count",
            &[("service", "grpc-partial")]
        ),
        Some(1.0)
    );
}

#[test]
fn cardinality_is_bounded_by_an_overflow_series() {
    let (v, _, http) = start(&["--series-limit", "50"]);
    let spans: Vec<Span> = (0..400)
        .map(|i| server_span(&format!("/item/{i}"), 1))
        .collect();
    let (s, _, _) = post(
        http,
        "/v1/traces",
        &[PB],
        &traces("many", spans).encode_to_vec(),
    );
    assert_eq!(s, 200);
    let e = v.scrape();
    let counts = e.all("vitals_request_duration_seconds_count");
    assert_eq!(counts.len(), 51, "50 label sets and one overflow series");
    assert_eq!(
        e.get(
            "vitals_request_duration_seconds_count",
            &[("otel_metric_overflow", "true")]
        ),
        Some(350.0)
    );
    assert_eq!(
        e.get("vitals_exporter_series_overflow_total", &[]),
        Some(350.0)
    );
    let total: f64 = counts.iter().map(|s| s.value).sum();
    assert_eq!(total, 400.0, "no observation is lost");
}
