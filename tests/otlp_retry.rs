//! One retry policy for forwarding and push: a real OTLP/HTTP peer on loopback (hyper, in this test)
//! answers `503 Retry-After: 3600` (delta-seconds, then the same hour as an HTTP-date) and then recovers.
//! The forwarder and the pusher both wait the policy's cap, not the hour, between attempts (the gap is
//! measured at the peer), send the same bytes again, and deliver once the peer takes them. A gRPC peer
//! (tonic, the OTLP trace service) asks for the hour through `google.rpc.RetryInfo`, on UNAVAILABLE and
//! then on RESOURCE_EXHAUSTED, and gets the same cap.
//!
//! The components are built through the library with a 1 s cap, so the test waits seconds rather than
//! the shipped cap's minute; the shipped constant is checked in `retry.rs`'s unit tests.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use prost::Message;
use tonic::transport::server::TcpIncoming;
use tonic_types::{ErrorDetails, StatusExt};
use vitals::config::otlp::{ForwardSettings, Histograms, PushSettings, RetryPolicy, Upstream};
use vitals::config::OtlpProtocol;
use vitals::export::otlp::forward::Forwarder;
use vitals::export::otlp::push::Pusher;
use vitals::model::{Collector, Metric, MetricKind, Registry, Value};
use vitals::pipeline::{Onward, Signal};

/// The cap the components are built with here.
const CAP: Duration = Duration::from_secs(1);

/// What the peer saw: arrival time and body of each request.
type Seen = Arc<Mutex<Vec<(Instant, Bytes)>>>;

/// Starts the peer: its first two answers are 503 with Retry-After one hour (seconds, then an HTTP-date),
/// every later one 200 with an empty (fully successful) export response.
async fn flaky_peer() -> (SocketAddr, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let log = log.clone();
                    async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let n = {
                            let mut l = log.lock().unwrap();
                            l.push((Instant::now(), body));
                            l.len()
                        };
                        let hour_later = SystemTime::now() + Duration::from_secs(3600);
                        let resp = match n {
                            1 => hyper::Response::builder()
                                .status(503)
                                .header("Retry-After", "3600"),
                            2 => hyper::Response::builder()
                                .status(503)
                                .header("Retry-After", httpdate::fmt_http_date(hour_later)),
                            _ => hyper::Response::builder()
                                .status(200)
                                .header("Content-Type", "application/x-protobuf"),
                        };
                        Ok::<_, Infallible>(resp.body(Full::new(Bytes::new())).unwrap())
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

fn upstream(addr: SocketAddr, path: &str) -> Upstream {
    Upstream {
        url: format!("http://{addr}{path}").parse().unwrap(),
        protocol: OtlpProtocol::HttpProtobuf,
        headers: Vec::new(),
        gzip: false,
        timeout: Duration::from_secs(5),
        tls: None,
    }
}

fn capped() -> RetryPolicy {
    RetryPolicy {
        max_asked_delay: CAP,
        ..RetryPolicy::OTLP
    }
}

/// Waits until the peer has seen `n` requests (at most 10 s) and returns what it saw.
async fn wait_for(seen: &Seen, n: usize) -> Vec<(Instant, Bytes)> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let got = seen.lock().unwrap().clone();
        if got.len() >= n || Instant::now() > until {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Both gaps between the three attempts are the cap: at least it (less 50 ms for clock granularity), and
/// under 1.5 s even on a loaded machine (the answer takes milliseconds on loopback); an honoured hour, or
/// a Retry-After date the sender could not read (then the 200 ms backoff), fails it.
fn assert_capped_gaps(seen: &[(Instant, Bytes)], what: &str) {
    assert_eq!(seen.len(), 3, "{what}: attempts {}", seen.len());
    for w in seen.windows(2) {
        let gap = w[1].0 - w[0].0;
        assert!(
            gap >= CAP - Duration::from_millis(50) && gap < CAP + Duration::from_millis(500),
            "{what}: retry gap {gap:?}, cap {CAP:?}"
        );
        assert_eq!(w[0].1, w[1].1, "{what}: a retry sends the same bytes");
    }
}

fn counter(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    let metrics = registry.gather();
    let m = metrics
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no {name}"));
    m.points
        .iter()
        .find(|p| {
            labels
                .iter()
                .all(|(k, v)| p.attributes.iter().any(|(pk, pv)| pk == k && pv == v))
        })
        .and_then(|p| match p.value {
            Value::Sum(v) => Some(v),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no {name}{labels:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_caps_an_hour_long_retry_after_and_delivers_after_the_peer_recovers() {
    let (addr, seen) = flaky_peer().await;
    let forwarder = Forwarder::start(ForwardSettings {
        upstreams: [Some(upstream(addr, "/v1/traces")), None, None],
        queue_bytes: 1 << 20,
        drain_timeout: Duration::from_secs(5),
        retry: capped(),
    })
    .unwrap();
    let registry = Registry::new();
    registry.register(forwarder.collector());
    let body = Bytes::from_static(b"\x0a\x00not decoded by the forwarder");
    forwarder.offer(Signal::Traces, body.clone(), 7).unwrap();

    let got = wait_for(&seen, 3).await;
    assert_capped_gaps(&got, "forward");
    assert_eq!(got[2].1, body, "the upstream got the bytes the app sent");
    // Delivered: the queue is empty, the 7 items count as sent, both 503s as retries.
    forwarder.drain().await;
    let sent = [("signal", "traces"), ("outcome", "sent")];
    assert_eq!(
        counter(&registry, "vitals.exporter.forward.items", &sent),
        7.0
    );
    assert_eq!(
        counter(
            &registry,
            "vitals.exporter.forward.retries",
            &[("signal", "traces")]
        ),
        2.0
    );
}

/// One gauge to push.
struct OneGauge;

impl Collector for OneGauge {
    fn collect(&self, out: &mut Vec<Metric>) {
        out.push(
            Metric::new("retry.test.level", "a level", "1", MetricKind::Gauge)
                .with(&[], Value::Gauge(42.0)),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_caps_an_hour_long_retry_after_and_delivers_within_the_same_push() {
    let (addr, seen) = flaky_peer().await;
    let registry = Registry::new();
    registry.register(Arc::new(OneGauge));
    let started = Instant::now();
    // A 4 s interval leaves room for two capped waits inside one push; without the cap the first
    // answer's hour would end the push at once and the next would come 4 s later.
    let interval = Duration::from_secs(4);
    let pusher = Pusher::start(
        PushSettings {
            upstream: upstream(addr, "/v1/metrics"),
            interval,
            service_name: "retry-test".into(),
            grace: Duration::from_secs(2),
            histograms: Histograms::Exponential,
            retry: capped(),
        },
        registry,
        None,
    )
    .unwrap();
    let got = wait_for(&seen, 3).await;
    assert_capped_gaps(&got, "push");
    // All three attempts belong to the first push (due one interval after the start).
    assert!(got[0].0 - started >= interval - Duration::from_millis(50));
    assert!(
        got[2].0 - started < 2 * interval,
        "delivered within the first push"
    );
    let req = ExportMetricsServiceRequest::decode(got[2].1.clone()).unwrap();
    let names: Vec<&str> = req
        .resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .map(|m| m.name.as_str())
        .collect();
    assert!(names.contains(&"retry.test.level"), "{names:?}");
    let counters = Registry::new();
    counters.register(pusher.collector());
    // The peer records the third attempt before it answers: wait until the pusher has taken the answer,
    // else shutdown can cut that attempt in flight (by design: the final push replaces it).
    let taken = Instant::now();
    while counter(
        &counters,
        "vitals.exporter.push.requests",
        &[("outcome", "sent")],
    ) < 1.0
    {
        assert!(
            taken.elapsed() < Duration::from_secs(5),
            "the first push's answer was never taken"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    pusher.finish().await;
    // Two failed attempts and then sent ones: this push and the final push at shutdown.
    assert_eq!(
        counter(
            &counters,
            "vitals.exporter.push.requests",
            &[("outcome", "failed")]
        ),
        2.0
    );
    assert_eq!(
        counter(
            &counters,
            "vitals.exporter.push.requests",
            &[("outcome", "sent")]
        ),
        2.0
    );
}

/// A gRPC trace peer: its first two answers are UNAVAILABLE (then RESOURCE_EXHAUSTED) with a RetryInfo
/// of one hour, every later one OK; it records when each request came and what it held.
struct FlakyTraces(Arc<Mutex<Vec<(Instant, ExportTraceServiceRequest)>>>);

#[tonic::async_trait]
impl TraceService for FlakyTraces {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n = {
            let mut l = self.0.lock().unwrap();
            l.push((Instant::now(), req.into_inner()));
            l.len()
        };
        let hour = || ErrorDetails::with_retry_info(Some(Duration::from_secs(3600)));
        match n {
            1 => Err(tonic::Status::with_error_details(
                tonic::Code::Unavailable,
                "busy",
                hour(),
            )),
            // Retryable only because RetryInfo is there.
            2 => Err(tonic::Status::with_error_details(
                tonic::Code::ResourceExhausted,
                "throttled",
                hour(),
            )),
            _ => Ok(tonic::Response::new(ExportTraceServiceResponse::default())),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_over_grpc_caps_an_hour_long_retry_info() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<(Instant, ExportTraceServiceRequest)>>> = Arc::default();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(FlakyTraces(seen.clone())))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    let forwarder = Forwarder::start(ForwardSettings {
        upstreams: [
            Some(Upstream {
                protocol: OtlpProtocol::Grpc,
                ..upstream(addr, "")
            }),
            None,
            None,
        ],
        queue_bytes: 1 << 20,
        drain_timeout: Duration::from_secs(5),
        retry: capped(),
    })
    .unwrap();
    let sent = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            schema_url: "retry-test".into(),
            ..Default::default()
        }],
    };
    forwarder
        .offer(Signal::Traces, Bytes::from(sent.encode_to_vec()), 1)
        .unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    let got = loop {
        let got = seen.lock().unwrap().clone();
        if got.len() >= 3 || Instant::now() > until {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(got.len(), 3, "attempts");
    for w in got.windows(2) {
        let gap = w[1].0 - w[0].0;
        assert!(
            gap >= CAP - Duration::from_millis(50) && gap < CAP + Duration::from_millis(500),
            "gRPC retry gap {gap:?}, cap {CAP:?}"
        );
    }
    assert!(
        got.iter().all(|(_, r)| *r == sent),
        "the same request each time"
    );
    forwarder.drain().await;
}
