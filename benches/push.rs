//! Prints what one OTLP push costs vitals before the network: the conversion of a gather into export
//! requests (start-time lookups, protobuf encoding) for 1k, 10k and 30k points shaped like vitals' series
//! (counters, gauges and 20-bucket RED histograms with a few attributes each), and the bytes sent.
//!
//! `cargo bench --bench push`

use std::time::Instant;

use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use vitals::config::otlp::Histograms;
use vitals::export::otlp::metrics_request::{
    convert, resource, StartTimes, FORGET_AFTER_NANOS, START_TIMES_LIMIT,
};
use vitals::model::{Metric, MetricKind, Value};

/// `points` points: a third counters, a third gauges, a third RED histograms, spread over metrics of 100
/// points each, every point with three attributes.
fn gather(points: usize, tick: u64) -> Vec<Metric> {
    let bounds: Vec<f64> = (0..19).map(|i| 0.0005 * 1.8f64.powi(i)).collect();
    let mut out = Vec::new();
    let mut made = 0;
    let mut m_index = 0;
    while made < points {
        let kind = [
            MetricKind::Counter,
            MetricKind::Gauge,
            MetricKind::Histogram,
        ][m_index % 3];
        let mut m = Metric::new(format!("vitals.synthetic.m{m_index}"), "h", "s", kind);
        for p in 0..100.min(points - made) {
            let op = format!("/api/v1/resource/{p}");
            let attrs = [
                ("service", "shop"),
                ("operation", op.as_str()),
                ("outcome", "ok"),
            ];
            let v = match kind {
                MetricKind::Counter => Value::Sum((tick * 10 + p as u64) as f64),
                MetricKind::Gauge => Value::Gauge(p as f64 * 0.5),
                _ => {
                    let mut cum = 0;
                    let mut buckets: Vec<(f64, u64)> = bounds
                        .iter()
                        .map(|b| {
                            cum += tick + 1;
                            (*b, cum)
                        })
                        .collect();
                    buckets.push((f64::INFINITY, cum + 1));
                    Value::Histogram {
                        buckets,
                        sum: 12.5 * tick as f64,
                        count: cum + 1,
                        exemplars: Vec::new(),
                        native: None,
                    }
                }
            };
            m.push(&attrs, v);
        }
        made += m.points.len();
        out.push(m);
        m_index += 1;
    }
    out
}

fn main() {
    let scope = InstrumentationScope {
        name: "vitals".into(),
        ..Default::default()
    };
    let res = resource(&[
        ("service.name".into(), "vitals".into()),
        ("service.instance.id".into(), "prod.shop-1.vitals".into()),
    ]);
    println!("points  | convert+encode per push | requests | bytes");
    for points in [1_000, 10_000, 30_000] {
        let mut starts = StartTimes::new(1, START_TIMES_LIMIT, FORGET_AFTER_NANOS);
        let rounds = 20u64;
        let mut total = std::time::Duration::ZERO;
        let mut bytes = 0;
        let mut requests = 0;
        for tick in 0..rounds {
            // Gathering is the registry's cost, shared with a scrape; only the conversion is timed.
            let metrics = gather(points, tick);
            let t = Instant::now();
            let c = convert(
                &metrics,
                Histograms::Exponential,
                &res,
                &scope,
                &mut starts,
                (tick + 1) * 15_000_000_000,
                3 << 20,
            );
            total += t.elapsed();
            bytes = c.requests.iter().map(|r| r.body.len()).sum::<usize>();
            requests = c.requests.len();
        }
        println!(
            "{points:>7} | {:>10.2} ms            | {requests:>8} | {bytes}",
            total.as_secs_f64() * 1e3 / rounds as f64
        );
    }
}
