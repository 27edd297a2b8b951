//! Scrapes cost O(output) and never stall the probes' endpoints: with 30,000 series stored, `/healthz`
//! answers in under 50 ms while 4 scrapers keep a scrape always in flight, 200 concurrent scrapes raise the peak RSS
//! by a few MiB (they share one rendering), and gzip is served to scrapers that accept it.

mod common;

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Exposition, Vitals};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric::Data, number_data_point, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
};
use prost::Message;

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// GET `path`, with `Accept-Encoding: <accept>` when given: (status, Content-Encoding, body).
fn get(
    addr: std::net::SocketAddr,
    path: &str,
    accept: Option<&str>,
) -> (u16, Option<String>, Vec<u8>) {
    let mut req = ureq::get(&format!("http://{addr}{path}")).timeout(Duration::from_secs(30));
    if let Some(accept) = accept {
        req = req.set("Accept-Encoding", accept);
    }
    let r = req.call().unwrap();
    let enc = r.header("Content-Encoding").map(str::to_owned);
    let status = r.status();
    let mut body = Vec::new();
    r.into_reader().read_to_end(&mut body).unwrap();
    (status, enc, body)
}

#[test]
fn scrapes_are_shared_gzipped_and_never_stall_healthz() {
    let v = Vitals::start(&[]);
    let (_, http) = v.otlp_addrs();
    let pid = v.child.id();
    // 15 metrics x 2,000 label sets = 30,000 series.
    for m in 0..15 {
        let points = (0..2000)
            .map(|i| NumberDataPoint {
                attributes: vec![kv("route", &format!("/orders/{i}")), kv("pod", "shop-1")],
                time_unix_nano: 1,
                value: Some(number_data_point::Value::AsDouble(i as f64)),
                ..Default::default()
            })
            .collect();
        let req = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: format!("load.gauge.{m}"),
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
        let r = ureq::post(&format!("http://{http}/v1/metrics"))
            .set("Content-Type", "application/x-protobuf")
            .send_bytes(&req.encode_to_vec())
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let (_, enc, plain) = get(v.metrics, "/metrics", None);
    assert_eq!(enc, None);
    let text = String::from_utf8(plain).unwrap();
    let e = Exposition::parse(&text);
    let series = (0..15)
        .map(|m| e.all(&format!("load_gauge_{m}")).len())
        .sum::<usize>();
    assert_eq!(series, 30_000);

    // gzip for a scraper that accepts it; the same exposition once inflated.
    let (_, enc, gz) = get(v.metrics, "/metrics", Some("gzip"));
    assert_eq!(enc.as_deref(), Some("gzip"));
    let mut inflated = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut inflated)
        .unwrap();
    assert!(
        gz.len() * 5 < inflated.len(),
        "{} -> {}",
        inflated.len(),
        gz.len()
    );
    assert_eq!(Exposition::parse(&inflated).all("load_gauge_7").len(), 2000);

    // 4 scrapers back to back for 3 s (a 30,000-series scrape is always in flight); /healthz every
    // 10 ms meanwhile. The bound is 50 ms for the slowest probe: the 2-core machine is shared with the
    // scrapers in this process and other builds, and a scrape itself takes ~100 ms of CPU. Probes are
    // accepted on the sampling thread, so this also holds the gather after each reading off the app
    // store's locks: when it took them, it waited behind the render thread (nice 10, preempted while
    // holding a family's lock) and the slowest probe took 62 and 90 ms in 2 of 9 runs (60 ms in a CI
    // run).
    let stop = Arc::new(AtomicBool::new(false));
    let scrapers: Vec<_> = (0..4)
        .map(|i| {
            let stop = stop.clone();
            let addr = v.metrics;
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    assert_eq!(get(addr, "/metrics", (i % 2 == 0).then_some("gzip")).0, 200);
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut took = Vec::new();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let t = Instant::now();
        assert_eq!(get(v.metrics, "/healthz", None).0, 200);
        took.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let scrapes: usize = scrapers.into_iter().map(|t| t.join().unwrap()).sum();
    took.sort();
    let worst = took[took.len() - 1];
    eprintln!(
        "{} /healthz probes during {scrapes} scrapes of 30,000 series: median {:?}, p95 {:?}, slowest {worst:?}",
        took.len(),
        took[took.len() / 2],
        took[took.len() * 95 / 100]
    );
    assert!(worst < Duration::from_millis(50), "/healthz took {worst:?}");

    // 200 scrapes at once share renderings: the peak RSS moves by a few MiB, not by 200 copies.
    let before = peak_rss(pid);
    let burst: Vec<_> = (0..200)
        .map(|_| {
            let addr = v.metrics;
            std::thread::spawn(move || get(addr, "/metrics", None).0)
        })
        .collect();
    for t in burst {
        assert_eq!(t.join().unwrap(), 200);
    }
    let after = peak_rss(pid);
    eprintln!(
        "peak RSS {:.1} MiB before 200 concurrent scrapes, {:.1} MiB after ({} KiB per scrape)",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        (after - before) / 1024 / 200
    );
    assert!(after - before < 16 << 20, "{} bytes more", after - before);
    assert!(after < 96 << 20, "peak {after} above the manifest's 96 MiB");
}

/// vitals' own exposition of one process (about 15 KB) goes out as it is even to a scraper that accepts
/// gzip, as Prometheus always does: compressing it cost about 200 µs of a 460 µs scrape to save bytes
/// that cost the kernel some 25 µs. A scraper that refuses the body as it is still gets gzip, and the
/// 30,000-series page above is gzipped.
#[test]
fn a_small_exposition_goes_out_as_it_is_unless_only_gzip_is_acceptable() {
    let v = Vitals::start(&[]);
    let (status, enc, body) = get(v.metrics, "/metrics", Some("gzip, deflate"));
    assert_eq!((status, enc), (200, None));
    let text = String::from_utf8(body).expect("a text exposition");
    assert!(text.len() < 64 * 1024 && Exposition::parse(&text).has("vitals_exporter_series"));
    let (status, enc, gz) = get(v.metrics, "/metrics", Some("gzip, identity;q=0"));
    assert_eq!((status, enc.as_deref()), (200, Some("gzip")));
    let mut inflated = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut inflated)
        .unwrap();
    assert!(Exposition::parse(&inflated).has("vitals_exporter_series"));
}
