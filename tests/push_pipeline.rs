//! Push: vitals sends its own metrics as OTLP to a real upstream (tests/python/upstream.py, built from the
//! official opentelemetry-proto services) over HTTP and gRPC. The upstream records every request; the test
//! decodes them and checks the resource (Downward API attributes), the OTLP shape (names, units, kinds,
//! cumulative temporality), the counters carried from push to push, the retry rules, the final push at
//! SIGTERM, and start times that only move forward across a restart of the target.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{sdk_send, PyUpstream, TestChild, Vitals};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::{number_data_point, AggregationTemporality, Metric};
use prost::Message;

/// What the push tests read from the upstream: the metrics requests it received.
trait MetricsUpstream {
    fn requests(&self) -> Vec<(Vec<u8>, ExportMetricsServiceRequest)>;
    fn wait_requests(
        &self,
        n: usize,
        within: Duration,
        v: &Vitals,
    ) -> Vec<(Vec<u8>, ExportMetricsServiceRequest)>;
    fn wait_for(
        &self,
        within: Duration,
        v: &Vitals,
        what: &str,
        cond: impl Fn(&[(Vec<u8>, ExportMetricsServiceRequest)]) -> bool,
    ) -> Vec<(Vec<u8>, ExportMetricsServiceRequest)>;
}

impl MetricsUpstream for PyUpstream {
    /// Complete metrics requests received so far (a .meta file follows each body), in arrival order.
    fn requests(&self) -> Vec<(Vec<u8>, ExportMetricsServiceRequest)> {
        let mut out = Vec::new();
        for n in 0.. {
            let meta = self.dir.path().join(format!("metrics-{n}.meta"));
            if !meta.is_file() {
                break;
            }
            let body = std::fs::read(self.dir.path().join(format!("metrics-{n}.bin"))).unwrap();
            let req = ExportMetricsServiceRequest::decode(body.as_slice())
                .expect("the upstream received a valid ExportMetricsServiceRequest");
            out.push((body, req));
        }
        out
    }

    fn wait_requests(
        &self,
        n: usize,
        within: Duration,
        v: &Vitals,
    ) -> Vec<(Vec<u8>, ExportMetricsServiceRequest)> {
        self.wait_for(within, v, &format!("{n} push requests"), |r| r.len() >= n)
    }

    fn wait_for(
        &self,
        within: Duration,
        v: &Vitals,
        what: &str,
        cond: impl Fn(&[(Vec<u8>, ExportMetricsServiceRequest)]) -> bool,
    ) -> Vec<(Vec<u8>, ExportMetricsServiceRequest)> {
        let deadline = Instant::now() + within;
        loop {
            let r = self.requests();
            if cond(&r) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the upstream has {} requests; the last held: {}; vitals \
                 log:\n{}",
                r.len(),
                r.last().map_or_else(String::new, |(_, q)| target_numbers(q)),
                v.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn text(kv: &KeyValue) -> Option<&str> {
    match kv.value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s),
        _ => None,
    }
}

fn resource_attributes(req: &ExportMetricsServiceRequest) -> BTreeMap<String, String> {
    req.resource_metrics[0]
        .resource
        .as_ref()
        .expect("a resource")
        .attributes
        .iter()
        .map(|kv| (kv.key.clone(), text(kv).unwrap_or_default().to_owned()))
        .collect()
}

fn metrics(req: &ExportMetricsServiceRequest) -> impl Iterator<Item = &Metric> {
    req.resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
}

fn metric<'a>(req: &'a ExportMetricsServiceRequest, name: &str) -> Option<&'a Metric> {
    metrics(req).find(|m| m.name == name)
}

/// (start, time, value) of the point of a Sum or Gauge metric whose attributes include `attr`.
/// The target's numbers in a pushed request, for a timeout's message: each point of the target and
/// process families with its start time, time and value.
fn target_numbers(req: &ExportMetricsServiceRequest) -> String {
    let mut out = Vec::new();
    for m in req
        .resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .filter(|m| m.name.starts_with("vitals.target") || m.name.starts_with("process.cpu"))
    {
        let points = match &m.data {
            Some(Data::Sum(s)) => &s.data_points,
            Some(Data::Gauge(g)) => &g.data_points,
            _ => continue,
        };
        for p in points {
            out.push(format!(
                "{} {:?} start {} time {} = {:?}",
                m.name,
                p.attributes
                    .iter()
                    .map(|kv| (&kv.key, text(kv)))
                    .collect::<Vec<_>>(),
                p.start_time_unix_nano,
                p.time_unix_nano,
                p.value
            ));
        }
    }
    out.join("; ")
}

fn number_point(m: &Metric, attr: Option<(&str, &str)>) -> Option<(u64, u64, f64)> {
    let points = match m.data.as_ref()? {
        Data::Sum(s) => &s.data_points,
        Data::Gauge(g) => &g.data_points,
        _ => return None,
    };
    let p = points.iter().find(|p| match attr {
        None => true,
        Some((k, v)) => p
            .attributes
            .iter()
            .any(|kv| kv.key == k && text(kv) == Some(v)),
    })?;
    let value = match p.value? {
        number_data_point::Value::AsDouble(x) => x,
        number_data_point::Value::AsInt(i) => i as f64,
    };
    Some((p.start_time_unix_nano, p.time_unix_nano, value))
}

fn data_points(req: &ExportMetricsServiceRequest) -> u64 {
    metrics(req)
        .map(|m| match &m.data {
            Some(Data::Sum(s)) => s.data_points.len(),
            Some(Data::Gauge(g)) => g.data_points.len(),
            Some(Data::Histogram(h)) => h.data_points.len(),
            Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
            Some(Data::Summary(s)) => s.data_points.len(),
            _ => 0,
        } as u64)
        .sum()
}

fn push_counter(req: &ExportMetricsServiceRequest, name: &str, outcome: &str) -> f64 {
    let m = metric(req, name).unwrap_or_else(|| panic!("{name} not pushed"));
    number_point(m, Some(("outcome", outcome)))
        .unwrap_or_else(|| panic!("{name}{{outcome={outcome}}} not pushed"))
        .2
}

const CUMULATIVE: i32 = AggregationTemporality::Cumulative as i32;

/// The resource, the push counters from push to push, the spacing of pushes, and the final push at
/// SIGTERM, over one protocol.
fn push_round(protocol: &str) {
    let up = PyUpstream::start(protocol, "ok");
    let v = Vitals::start_with(
        &[
            "--push-endpoint",
            &up.url(),
            "--push-protocol",
            if protocol == "grpc" {
                "grpc"
            } else {
                "http/protobuf"
            },
            "--push-interval",
            "1s",
            "--push-service-name",
            "shop-vitals",
        ],
        &[
            ("K8S_POD_NAME", "shop-7d9f-x2"),
            ("K8S_NAMESPACE_NAME", "prod"),
            ("K8S_NODE_NAME", "node-3"),
            ("K8S_CONTAINER_NAME", "vitals"),
            ("K8S_POD_UID", "0b8e-11"),
        ],
    );
    let got = up.wait_requests(3, Duration::from_secs(20), &v);
    let attrs = resource_attributes(&got[0].1);
    let want: BTreeMap<String, String> = [
        ("service.name", "shop-vitals"),
        ("service.version", env!("CARGO_PKG_VERSION")),
        ("service.instance.id", "prod.shop-7d9f-x2.vitals"),
        ("k8s.pod.name", "shop-7d9f-x2"),
        ("k8s.namespace.name", "prod"),
        ("k8s.node.name", "node-3"),
        ("k8s.container.name", "vitals"),
        ("k8s.pod.uid", "0b8e-11"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(attrs, want);
    let scope = got[0].1.resource_metrics[0].scope_metrics[0]
        .scope
        .as_ref()
        .unwrap();
    assert_eq!(scope.name, "vitals");

    let mut start = None;
    let mut previous_time = 0;
    for (k, (_, req)) in got.iter().enumerate() {
        let m = metric(req, "vitals.exporter.push.requests").expect("push counters pushed");
        assert_eq!(m.unit, "{request}");
        let Some(Data::Sum(s)) = &m.data else {
            panic!("{m:?}")
        };
        assert!(s.is_monotonic);
        assert_eq!(s.aggregation_temporality, CUMULATIVE);
        // Push k reports the k pushes delivered before it, and nothing else.
        assert_eq!(
            push_counter(req, "vitals.exporter.push.requests", "sent"),
            k as f64
        );
        assert_eq!(
            push_counter(req, "vitals.exporter.push.requests", "failed"),
            0.0
        );
        let (st, time, _) = number_point(m, Some(("outcome", "sent"))).unwrap();
        // One start for the series, from push to push, before its first point.
        assert_eq!(*start.get_or_insert(st), st);
        assert!(st < time);
        if k > 0 {
            // 1 s apart; a loaded machine may delay one tick, so 0.5-5 s.
            let gap = (time - previous_time) as f64 / 1e9;
            assert!((0.5..5.0).contains(&gap), "gap {gap} s between pushes");
        }
        previous_time = time;
    }
    // Points sent as counted by the pusher = the data points the upstream received.
    let last = &got[2].1;
    let delivered: u64 = got[..2].iter().map(|(_, r)| data_points(r)).sum();
    assert_eq!(
        push_counter(last, "vitals.exporter.push.points", "sent"),
        delivered as f64
    );

    // /metrics shows the same counters under their Prometheus names (a push may have landed since).
    let e = v.scrape();
    let sent = e
        .get(
            "vitals_exporter_push_requests_total",
            &[("outcome", "sent")],
        )
        .expect("vitals_exporter_push_requests_total on /metrics");
    assert!(sent >= 3.0, "{sent}");
    let points = e
        .get("vitals_exporter_push_points_total", &[("outcome", "sent")])
        .expect("vitals_exporter_push_points_total on /metrics");
    assert!(points >= delivered as f64, "{points} < {delivered}");

    // SIGTERM right after a push: one final push arrives at once, not a tick later.
    let before = up.requests().len();
    let (code, took) = v.terminate();
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    let after = up.requests();
    assert!(
        after.len() == before + 1 || after.len() == before + 2,
        "{before} requests before SIGTERM, {} after",
        after.len()
    );
    let final_req = &after.last().unwrap().1;
    assert_eq!(
        push_counter(final_req, "vitals.exporter.push.requests", "sent"),
        (after.len() - 1) as f64
    );
}

#[test]
fn push_over_http_carries_resource_counters_and_a_final_push() {
    push_round("http");
}

#[test]
fn push_over_grpc_carries_resource_counters_and_a_final_push() {
    push_round("grpc");
}

/// HTTP 503 with Retry-After: 1 is retried, the same bytes, until the next push is due; then that push
/// is dropped and counted, and the next one carries the counts.
#[test]
fn a_503_is_retried_until_the_next_push_is_due() {
    let up = PyUpstream::start("http", "503");
    let v = Vitals::start(&["--push-endpoint", &up.url(), "--push-interval", "3s"]);
    // The second push's first attempt differs from the first push's retries.
    let got = up.wait_for(Duration::from_secs(30), &v, "a second push", |r| {
        r.len() >= 2 && r.iter().any(|(b, _)| *b != r[0].0)
    });
    let first_attempts = got.iter().take_while(|(b, _)| *b == got[0].0).count();
    // Retry-After 1 s within a 3 s interval: attempts at about 0, 1 and 2 s (a loaded machine may fit
    // only two), never one at or after the next push.
    assert!(
        (2..=3).contains(&first_attempts),
        "{first_attempts} attempts of the first push"
    );
    let second = &got[first_attempts].1;
    assert_eq!(
        push_counter(second, "vitals.exporter.push.requests", "failed"),
        first_attempts as f64
    );
    assert_eq!(
        push_counter(second, "vitals.exporter.push.requests", "sent"),
        0.0
    );
    assert_eq!(
        push_counter(second, "vitals.exporter.push.points", "dropped"),
        data_points(&got[0].1) as f64
    );
    assert!(
        v.log
            .lock()
            .unwrap()
            .contains("push: the endpoint is not taking data; retrying"),
        "the failure is logged"
    );
}

/// gRPC INVALID_ARGUMENT is permanent: each push is sent once, and its points are counted as rejected.
#[test]
fn a_permanent_grpc_error_is_not_retried() {
    let up = PyUpstream::start("grpc", "400");
    let v = Vitals::start(&[
        "--push-endpoint",
        &up.url(),
        "--push-protocol",
        "grpc",
        "--push-interval",
        "1s",
    ]);
    let got = up.wait_requests(4, Duration::from_secs(20), &v);
    let mut rejected_points = 0;
    for (k, (body, req)) in got.iter().enumerate() {
        if k > 0 {
            assert_ne!(*body, got[k - 1].0, "request {k} is a resend of {}", k - 1);
        }
        assert_eq!(
            push_counter(req, "vitals.exporter.push.requests", "rejected"),
            k as f64
        );
        assert_eq!(
            push_counter(req, "vitals.exporter.push.requests", "failed"),
            0.0
        );
        assert_eq!(
            push_counter(req, "vitals.exporter.push.points", "rejected"),
            rejected_points as f64
        );
        rejected_points += data_points(req);
    }
    let log = v.log.lock().unwrap().clone();
    assert_eq!(
        log.matches("push: the endpoint refused data for good")
            .count(),
        1,
        "logged once per reason:\n{log}"
    );
}

/// A partial success (the upstream refuses one point of each push) counts that point as rejected and the
/// rest as sent; the push is not resent, and the reason is logged once.
#[test]
fn a_partial_success_counts_the_refused_points() {
    let up = PyUpstream::start("http", "partial");
    let v = Vitals::start(&["--push-endpoint", &up.url(), "--push-interval", "1s"]);
    let got = up.wait_requests(3, Duration::from_secs(20), &v);
    let mut delivered = 0;
    for (k, (body, req)) in got.iter().enumerate() {
        if k > 0 {
            assert_ne!(*body, got[k - 1].0, "request {k} is a resend");
        }
        assert_eq!(
            push_counter(req, "vitals.exporter.push.requests", "sent"),
            k as f64
        );
        assert_eq!(
            push_counter(req, "vitals.exporter.push.points", "rejected"),
            k as f64
        );
        assert_eq!(
            push_counter(req, "vitals.exporter.push.points", "sent"),
            (delivered - k as u64) as f64
        );
        delivered += data_points(req);
    }
    let log = v.log.lock().unwrap().clone();
    assert_eq!(
        log.matches("one point refused by the test upstream")
            .count(),
        1,
        "logged once:\n{log}"
    );
}

/// vitals' signals under their OpenTelemetry names and units, with values from the real Python SDK as
/// ground truth, and start times that move forward when the target is replaced.
///
#[test]
fn signals_keep_otel_names_and_start_times_move_forward_across_a_target_restart() {
    let marker = std::process::id();
    let up = PyUpstream::start("http", "ok");
    let v = Vitals::start(&[
        "--process",
        &format!("hold\\.py --spin (1\\.5|0\\.0){marker}"),
        "--interval",
        "200ms",
        "--push-endpoint",
        &up.url(),
        "--push-interval",
        "1s",
        // RED's classic buckets (tests/push_exponential.rs checks the default, exponential form).
        "--push-histograms",
        "explicit",
    ]);
    // The first target spins for 1.5 s, the second for about 0.01 s: once the first has used more than
    // 0.3 s of CPU (a loaded machine gives a spinning process less than its wall time) and the second is
    // seen below 0.2 s, the second's CPU time is below the first's, a new stream for a reader of
    // cumulative data.
    let first = TestChild::hold(&["--spin", &format!("1.5{marker}")]);
    let cpu = |req: &ExportMetricsServiceRequest| {
        let m = metric(req, "process.cpu.time")?;
        let Some(Data::Sum(s)) = &m.data else {
            return None;
        };
        let p = s.data_points.first()?;
        let value: f64 = s
            .data_points
            .iter()
            .map(|p| match p.value {
                Some(number_data_point::Value::AsDouble(x)) => x,
                Some(number_data_point::Value::AsInt(i)) => i as f64,
                None => 0.0,
            })
            .sum();
        Some((p.start_time_unix_nano, p.time_unix_nano, value))
    };
    let up_value = |req: &ExportMetricsServiceRequest| {
        metric(req, "vitals.target.up").and_then(|m| number_point(m, None).map(|p| p.2))
    };
    let got = up.wait_for(
        Duration::from_secs(30),
        &v,
        "the first target's CPU time",
        |r| {
            r.last()
                .is_some_and(|(_, q)| up_value(q) == Some(1.0) && cpu(q).is_some_and(|c| c.2 > 0.3))
        },
    );
    let (_, req) = got.last().unwrap();
    let m = metric(req, "process.cpu.time").unwrap();
    assert_eq!(m.unit, "s");
    let Some(Data::Sum(s)) = &m.data else {
        panic!("{m:?}")
    };
    assert!(s.is_monotonic);
    assert_eq!(s.aggregation_temporality, CUMULATIVE);
    let Some(Data::Gauge(_)) = &metric(req, "vitals.target.up").unwrap().data else {
        panic!("vitals.target.up is not a gauge")
    };
    let (start1, _, _) = cpu(req).unwrap();

    // RED and pauses from the real SDK, as pushed.
    let (_, http) = v.otlp_addrs();
    let endpoint = format!("http://{http}");
    let red = sdk_send("http", &endpoint, "red", "shop", &["--spans", "60"]);
    let total: u64 = red["requests"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    let runtime = sdk_send("http", &endpoint, "runtime", "shop", &[]);
    let young = runtime["pauses"]["G1 Young Generation"][0]
        .as_f64()
        .unwrap();
    let got = up.wait_for(Duration::from_secs(20), &v, "RED and pauses pushed", |r| {
        r.last().is_some_and(|(_, q)| {
            metric(q, "vitals.request.duration").is_some() && metric(q, "vitals.gc.pause").is_some()
        })
    });
    let req = &got.last().unwrap().1;
    let d = metric(req, "vitals.request.duration").unwrap();
    assert_eq!(d.unit, "s");
    let Some(Data::Histogram(h)) = &d.data else {
        panic!("{d:?}")
    };
    assert_eq!(h.aggregation_temporality, CUMULATIVE);
    let count: u64 = h.data_points.iter().map(|p| p.count).sum();
    assert_eq!(count, total, "every server span, once");
    for p in &h.data_points {
        assert_eq!(p.bucket_counts.len(), p.explicit_bounds.len() + 1);
        assert_eq!(p.bucket_counts.iter().sum::<u64>(), p.count);
        assert!(p.explicit_bounds.iter().all(|b| b.is_finite()));
        assert!(p.explicit_bounds.contains(&0.1) && p.explicit_bounds.contains(&0.4));
        assert!(p.start_time_unix_nano > 0 && p.start_time_unix_nano < p.time_unix_nano);
    }
    let g = metric(req, "vitals.gc.pause").unwrap();
    assert_eq!(g.unit, "s");
    let Some(Data::Sum(s)) = &g.data else {
        panic!("{g:?}")
    };
    assert!(s.is_monotonic);
    let young_pushed = s
        .data_points
        .iter()
        .find(|p| {
            p.attributes
                .iter()
                .any(|kv| text(kv) == Some("G1 Young Generation"))
        })
        .and_then(|p| match p.value {
            Some(number_data_point::Value::AsDouble(x)) => Some(x),
            _ => None,
        })
        .expect("G1 Young Generation pauses pushed");
    assert!(
        (young_pushed - young).abs() < 1e-9,
        "{young_pushed} vs {young}"
    );

    // Replace the target.
    drop(first);
    up.wait_for(Duration::from_secs(20), &v, "target down pushed", |r| {
        r.last().is_some_and(|(_, q)| up_value(q) == Some(0.0))
    });
    let _second = TestChild::hold(&["--spin", &format!("0.0{marker}")]);
    let got = up.wait_for(
        Duration::from_secs(30),
        &v,
        "the second target's CPU time",
        |r| {
            r.last()
                .is_some_and(|(_, q)| up_value(q) == Some(1.0) && cpu(q).is_some_and(|c| c.2 < 0.2))
        },
    );
    let (start2, time2, _) = cpu(&got.last().unwrap().1).unwrap();
    assert!(
        start2 > start1,
        "start time after the restart {start2} is not after the first {start1}"
    );
    assert!(start2 < time2);
    // Across every push: the CPU time's start never moves back, and never passes its point's time.
    let mut last_start = 0;
    for (_, q) in &got {
        if let Some((st, t, _)) = cpu(q) {
            assert!(
                st >= last_start && st < t,
                "start {st}, previous {last_start}, time {t}"
            );
            last_start = st;
        }
    }
}

/// Mutual TLS with certificates made by openssl, over OTLP/HTTP and OTLP/gRPC: pushes arrive. Without
/// the test CA the endpoint is not trusted: nothing arrives and the failure is logged. A certificate file
/// that does not exist stops vitals at start, naming the option.
#[test]
fn push_over_mutual_tls() {
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
        let v = Vitals::start(&[
            "--push-endpoint",
            &endpoint,
            "--push-protocol",
            proto,
            "--push-interval",
            "1s",
            "--push-certificate",
            &p("ca.pem"),
            "--push-client-certificate",
            &p("client.pem"),
            "--push-client-key",
            &p("client.key"),
        ]);
        let got = up.wait_requests(2, Duration::from_secs(20), &v);
        assert_eq!(
            push_counter(&got[1].1, "vitals.exporter.push.requests", "sent"),
            1.0,
            "{protocol}"
        );
        drop(v);

        // System roots only: the test CA is unknown, the handshake fails, nothing is delivered.
        let before = up.requests().len();
        let v = Vitals::start(&[
            "--push-endpoint",
            &endpoint,
            "--push-protocol",
            proto,
            "--push-interval",
            "1s",
        ]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !v
            .log
            .lock()
            .unwrap()
            .contains("push: the endpoint is not taking data")
        {
            assert!(
                Instant::now() < deadline,
                "{protocol}: no failure logged:\n{}",
                v.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(
            up.requests().len(),
            before,
            "{protocol}: untrusted endpoint got data"
        );
    }
    let out = Command::new(common::vitals_bin())
        .args([
            "--metrics-addr",
            "127.0.0.1:0",
            "--push-endpoint",
            "https://127.0.0.1:1",
            "--push-certificate",
            "/nonexistent/ca.pem",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--push-certificate") && err.contains("/nonexistent/ca.pem"),
        "{err}"
    );
}
