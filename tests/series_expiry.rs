//! Idle OTLP series expire on vitals' own clock, not inside a scrape: with `--series-ttl 2s`, a metric
//! nobody scrapes still frees its name after the TTL (a metric whose exposition name would have collided
//! with it is then accepted), and a scrape never shows a series past its TTL. While the stores hold
//! nothing, expiry keeps no timer: an idle sidecar does not wake for it.

mod common;

use std::time::{Duration, Instant};

use common::{runs_by_thread, Vitals};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::metrics::v1::{
    metric::Data, number_data_point, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
    Sum,
};
use prost::Message;

fn point() -> NumberDataPoint {
    NumberDataPoint {
        time_unix_nano: 1,
        value: Some(number_data_point::Value::AsDouble(1.0)),
        ..Default::default()
    }
}

fn request(metric: Metric) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![metric],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn counter(name: &str) -> ExportMetricsServiceRequest {
    request(Metric {
        name: name.into(),
        data: Some(Data::Sum(Sum {
            data_points: vec![point()],
            aggregation_temporality: 2,
            is_monotonic: true,
        })),
        ..Default::default()
    })
}

fn gauge(name: &str) -> ExportMetricsServiceRequest {
    request(Metric {
        name: name.into(),
        data: Some(Data::Gauge(Gauge {
            data_points: vec![point()],
        })),
        ..Default::default()
    })
}

/// Points the receiver refused in its answer to `req`.
fn rejected(http: std::net::SocketAddr, req: ExportMetricsServiceRequest) -> i64 {
    let resp = ureq::post(&format!("http://{http}/v1/metrics"))
        .set("Content-Type", "application/x-protobuf")
        .timeout(Duration::from_secs(10))
        .send_bytes(&req.encode_to_vec())
        .expect("POST /v1/metrics");
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_reader(), &mut body).unwrap();
    ExportMetricsServiceResponse::decode(&body[..])
        .expect("an OTLP answer")
        .partial_success
        .map_or(0, |p| p.rejected_data_points)
}

#[test]
fn idle_series_expire_on_a_timer_without_scrapes() {
    let v = Vitals::start(&["--series-ttl", "2s"]);
    let (_, http) = v.otlp_addrs();

    // Counter `collide` writes `collide_total`; gauge `collide total` would write it too.
    assert_eq!(rejected(http, counter("collide")), 0);
    assert_eq!(rejected(http, gauge("collide total")), 1);
    assert!(v.scrape().has("collide_total"));

    // Nothing scrapes now. After the TTL plus the 2 s expiry period (and margin for a loaded
    // machine), the timer alone has dropped `collide` and freed its names.
    let deadline = Instant::now() + Duration::from_secs(30);
    std::thread::sleep(Duration::from_secs(4));
    loop {
        if rejected(http, gauge("collide total")) == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the name of an idle metric was never freed without a scrape"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let e = v.scrape();
    assert!(
        e.text.contains("# TYPE collide_total gauge\n"),
        "the name now belongs to the gauge:\n{}",
        e.text
    );
    assert_eq!(
        e.get("collide_total", &[("service", "unknown_service")]),
        Some(1.0)
    );

    // A scrape shows no series past its TTL, whenever the timer runs: 2 s of idleness plus 0.5 s.
    std::thread::sleep(Duration::from_millis(2500));
    let e = v.scrape();
    assert!(!e.has("collide_total"), "an expired series was scraped");
}

/// Runs of vitals' async workers over `seconds` without requests or scrapes.
fn worker_runs_over(v: &Vitals, seconds: u64) -> u64 {
    let runs = || {
        runs_by_thread(v.child.id())
            .get("tokio-rt-worker")
            .copied()
            .unwrap_or(0)
    };
    let before = runs();
    std::thread::sleep(Duration::from_secs(seconds));
    runs() - before
}

/// With a 2 s expiry period, 7 s without OTLP requests and scrapes do not run the async workers while
/// nothing is held, neither before the first series nor after the last one expired; in between, the
/// timer runs and frees the series.
#[test]
fn expiry_keeps_no_timer_while_nothing_is_held() {
    let v = Vitals::start(&["--series-ttl", "2s"]);
    let (_, http) = v.otlp_addrs();
    std::thread::sleep(Duration::from_secs(1));
    let quiet = worker_runs_over(&v, 7);
    println!("7 s before any series: the workers ran {quiet} times");
    assert!(
        quiet <= 1,
        "nothing held, yet the workers ran {quiet} times in 7 s"
    );

    // One series, on a connection that is closed at once (no idle connection keeps a timer).
    let agent = ureq::AgentBuilder::new().build();
    let resp = agent
        .post(&format!("http://{http}/v1/metrics"))
        .set("Content-Type", "application/x-protobuf")
        .timeout(Duration::from_secs(10))
        .send_bytes(&gauge("held").encode_to_vec())
        .expect("POST /v1/metrics");
    assert_eq!(resp.status(), 200);
    drop(resp);
    drop(agent);
    // Expired by the timer 2–4 s later; then nothing is held again.
    let busy = worker_runs_over(&v, 6);
    let quiet = worker_runs_over(&v, 7);
    println!("6 s after one series: {busy} runs; the 7 s after it expired: {quiet}");
    assert!(
        busy >= 2,
        "expiry never ran for a held series ({busy} runs)"
    );
    assert!(
        quiet <= 1,
        "the last series expired, yet the workers ran {quiet} times in 7 s"
    );
}
