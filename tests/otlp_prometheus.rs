//! A real Prometheus (with exemplar storage) scrapes vitals fed by the real Python SDK:
//! `histogram_quantile(0.99, …)` lands in the bucket holding the true p99 of the durations sent, and the
//! exemplars of the span histogram reach Prometheus' exemplar API with trace ids that were sent.

mod common;

use std::time::{Duration, Instant};

use common::{prom_api, query, sdk_send, start_prometheus, Vitals};

const BUCKETS: [f64; 21] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
    1.5, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[test]
fn p99_lands_in_the_true_bucket_and_exemplars_reach_prometheus() {
    let v = Vitals::start(&[]);
    let (_, http) = v.otlp_addrs();
    let truth = sdk_send(
        "http",
        &format!("http://{http}"),
        "red",
        "p99",
        &["--spans", "400"],
    );
    let mut durations: Vec<f64> = truth["durations"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|d| d.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
        .collect();
    durations.sort_by(|a, b| a.total_cmp(b));
    let n = durations.len();
    let true_p99 = durations[((0.99 * n as f64).ceil() as usize).max(1) - 1];
    let upper = *BUCKETS.iter().find(|b| true_p99 <= **b).unwrap();
    let lower = BUCKETS
        .iter()
        .rev()
        .find(|b| **b < upper)
        .copied()
        .unwrap_or(0.0);

    let prom = start_prometheus(
        &v.metrics.to_string(),
        &["--enable-feature=exemplar-storage"],
    );
    let q = "histogram_quantile(0.99, sum by (le) (vitals_request_duration_seconds_bucket{service=\"p99\"}))";
    let deadline = Instant::now() + Duration::from_secs(60);
    let got = loop {
        if let Some(x) = query(&prom, q) {
            break x;
        }
        assert!(Instant::now() < deadline, "Prometheus never answered {q}");
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        lower <= got && got <= upper,
        "PromQL p99 {got} outside the true p99's bucket ({lower}, {upper}]; true p99 {true_p99}"
    );

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sent: Vec<&str> = truth["trace_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = prom_api(
            &prom,
            "/api/v1/query_exemplars",
            &[
                (
                    "query",
                    "vitals_request_duration_seconds_bucket{service=\"p99\"}",
                ),
                ("start", "1699999000"),
                ("end", &(now + 60).to_string()),
            ],
        );
        let exemplars: Vec<&serde_json::Value> = r["data"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["exemplars"].as_array().into_iter().flatten())
            .collect();
        if !exemplars.is_empty() {
            for ex in &exemplars {
                let tid = ex["labels"]["trace_id"].as_str().unwrap();
                assert!(
                    sent.contains(&tid),
                    "exemplar trace_id {tid} was never sent"
                );
                assert_eq!(ex["labels"]["span_id"].as_str().unwrap().len(), 16);
            }
            break;
        }
        assert!(Instant::now() < deadline, "no exemplars in Prometheus: {r}");
        std::thread::sleep(Duration::from_millis(250));
    }
}
