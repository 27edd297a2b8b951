//! What a scrape of 30,000 app series costs, and what it costs everything else: in process, the whole
//! scrape path (the registry streaming into the Prometheus encoder, as text, OpenMetrics and the
//! protobuf exposition) beside the copying path scrapes took
//! before (gather owned copies, then encode) and beside prometheus-client's encode of the same content;
//! against the release binary over loopback, OTLP ingest at a fixed rate and `/healthz` latency with and
//! without scrapes in a loop, vitals' CPU per scrape, RSS after 1 and after 100 scrapes, and stored
//! bytes per series in a fresh process. Prints figures only; nothing here asserts timings.
//!
//! `cargo bench --bench scrape` (VITALS_BENCH_SECS sets the seconds of each ingest phase, default 5;
//! VITALS_BENCH_IN_PROCESS=1 runs only the in-process part).

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric::Data, number_data_point, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use vitals::bounded::OverflowCounter;
use vitals::export::http::{render_metrics, render_with};
use vitals::export::prometheus::{encode, Encoder, Escaping, Exposition, Format};
use vitals::model::Registry;
use vitals::store::app_metrics::{AppMetrics, AppMetricsConfig};

/// Metrics of [`SERIES_PER_METRIC`] series each: 15 make the 30,000 series of the issue.
const METRICS: usize = 15;
const SERIES_PER_METRIC: usize = 2000;

fn kv(k: &str, v: String) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v)),
        }),
        ..Default::default()
    }
}

/// One request setting `points` series of metric `m` (route `/orders/{i}` for i in `points`) to `value`.
fn request(m: usize, points: std::ops::Range<usize>, value: f64) -> ExportMetricsServiceRequest {
    let points = points
        .map(|i| NumberDataPoint {
            attributes: vec![
                kv("http.route", format!("/orders/{i}")),
                kv("k8s.pod.name", "shop-1".into()),
            ],
            time_unix_nano: 1,
            value: Some(number_data_point::Value::AsDouble(value + i as f64)),
            ..Default::default()
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "shop".into())],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: format!("bench.gauge.{m}"),
                    description: "A bench gauge".into(),
                    data: Some(Data::Gauge(Gauge {
                        data_points: points,
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Median µs of `runs` calls of each of `fs`, called in turn within each round (after one warm-up each).
fn time_medians_interleaved(runs: usize, fs: &mut [&mut dyn FnMut()]) -> Vec<f64> {
    let mut times = vec![Vec::with_capacity(runs); fs.len()];
    for f in fs.iter_mut() {
        f();
    }
    for _ in 0..runs {
        for (f, t) in fs.iter_mut().zip(&mut times) {
            let at = Instant::now();
            f();
            t.push(at.elapsed().as_secs_f64() * 1e6);
        }
    }
    times.into_iter().map(median).collect()
}

fn in_process() {
    let store = Arc::new(AppMetrics::new(
        AppMetricsConfig {
            series_limit: SERIES_PER_METRIC,
            family_limit: 100,
            ttl: Duration::from_secs(3600),
            promote: vec![],
        },
        OverflowCounter::default(),
        Arc::new(vitals::export::prometheus::naming::PrometheusNames),
    ));
    for m in 0..METRICS {
        let out = store.ingest(&request(m, 0..SERIES_PER_METRIC, 1.0));
        assert_eq!(out.rejected, 0, "{}", out.message);
    }
    let registry = Registry::new();
    registry.register(store.clone());

    // The same content in prometheus-client: one gauge family per metric, the labels vitals writes.
    let mut pc = prometheus_client::registry::Registry::default();
    for m in 0..METRICS {
        type Labels = Vec<(String, String)>;
        let fam = prometheus_client::metrics::family::Family::<
            Labels,
            prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64>,
        >::default();
        for i in 0..SERIES_PER_METRIC {
            fam.get_or_create(&vec![
                ("http_route".to_owned(), format!("/orders/{i}")),
                ("k8s_pod_name".to_owned(), "shop-1".to_owned()),
                ("service".to_owned(), "shop".to_owned()),
            ])
            .set(1.0 + i as f64);
        }
        pc.register(format!("bench_gauge_{m}"), "A bench gauge", fam);
    }

    let runs = 40;
    let text = render_metrics(&registry, Format::Text);
    let om = render_metrics(&registry, Format::OpenMetrics);
    let mut pc_text = String::new();
    prometheus_client::encoding::text::encode(&mut pc_text, &pc).unwrap();
    // As the scrape thread renders: one encoder per format kept across scrapes, the buffer sized from
    // the last exposition (prometheus-client below gets the same).
    let protobuf = Exposition {
        format: Format::Protobuf,
        escaping: Escaping::Underscores,
    };
    let pb_len = render_with(&mut Encoder::for_exposition(protobuf), &registry, 0).len();
    let mut text_encoder = Encoder::new(Format::Text);
    let mut om_encoder = Encoder::new(Format::OpenMetrics);
    let mut pb_encoder = Encoder::for_exposition(protobuf);
    // Interleaved, one run of each per round, so load from elsewhere on the machine falls on all alike.
    let m = time_medians_interleaved(
        runs,
        &mut [
            &mut || {
                std::hint::black_box(render_with(&mut text_encoder, &registry, text.len()));
            },
            &mut || {
                std::hint::black_box(render_with(&mut om_encoder, &registry, om.len()));
            },
            &mut || {
                std::hint::black_box(render_with(&mut pb_encoder, &registry, pb_len));
            },
            &mut || {
                std::hint::black_box(encode(&registry.gather(), Format::Text));
            },
            &mut || {
                let mut s = String::with_capacity(pc_text.len());
                prometheus_client::encoding::text::encode(&mut s, &pc).unwrap();
                std::hint::black_box(s);
            },
        ],
    );
    let (stream_text, stream_om, stream_pb, copying, pc_time) = (m[0], m[1], m[2], m[3], m[4]);
    let series = METRICS * SERIES_PER_METRIC;
    println!("in process, {series} series, median of {runs}:");
    println!(
        "  vitals scrape path (stream + encode), text:        {:>7.0} µs ({} bytes), {:.2}x prometheus-client",
        stream_text,
        text.len(),
        stream_text / pc_time
    );
    println!(
        "  vitals scrape path (stream + encode), OpenMetrics: {:>7.0} µs ({} bytes), {:.2}x prometheus-client",
        stream_om,
        om.len(),
        stream_om / pc_time
    );
    println!(
        "  vitals scrape path (stream + encode), protobuf:    {:>7.0} µs ({} bytes), {:.2}x the text path, {:.2}x OpenMetrics; {:.2}x the text bytes",
        stream_pb,
        pb_len,
        stream_pb / stream_text,
        stream_pb / stream_om,
        pb_len as f64 / text.len() as f64
    );
    println!(
        "  copying path (gather owned copies + encode), text: {:>7.0} µs, {:.2}x prometheus-client",
        copying,
        copying / pc_time
    );
    println!(
        "  prometheus-client encode (OpenMetrics):            {:>7.0} µs ({} bytes)",
        pc_time,
        pc_text.len()
    );
}

struct Vitals {
    child: Child,
    metrics: String,
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
    let (m, h) = (port(), port());
    let child = Command::new(env!("CARGO_BIN_EXE_vitals"))
        .args([
            "--metrics-addr",
            &format!("127.0.0.1:{m}"),
            "--otlp-grpc-addr",
            "off",
            "--otlp-http-addr",
            &format!("127.0.0.1:{h}"),
        ])
        .stderr(Stdio::null())
        .spawn()
        .expect("start the release vitals");
    let v = Vitals {
        child,
        metrics: format!("127.0.0.1:{m}"),
        http: format!("127.0.0.1:{h}"),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while ureq::get(&format!("http://{}/healthz", v.metrics))
        .timeout(Duration::from_secs(1))
        .call()
        .is_err()
    {
        assert!(Instant::now() < deadline, "vitals did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    v
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// User + system CPU seconds of `pid`.
fn cpu_seconds(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

fn post(addr: &str, body: &[u8]) -> u16 {
    match ureq::post(&format!("http://{addr}/v1/metrics"))
        .timeout(Duration::from_secs(30))
        .set("Content-Type", "application/x-protobuf")
        .send_bytes(body)
    {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(s, _)) => s,
        Err(e) => panic!("{e}"),
    }
}

fn scrape(addr: &str) -> usize {
    let r = ureq::get(&format!("http://{addr}/metrics"))
        .timeout(Duration::from_secs(30))
        .call()
        .unwrap();
    let mut body = Vec::new();
    r.into_reader().read_to_end(&mut body).unwrap();
    body.len()
}

fn fill(v: &Vitals, metrics: std::ops::Range<usize>) {
    for m in metrics {
        assert_eq!(
            post(
                &v.http,
                &request(m, 0..SERIES_PER_METRIC, 1.0).encode_to_vec()
            ),
            200
        );
    }
}

/// Requests per second the ingest load offers, each updating [`POINTS_PER_REQUEST`] stored series.
const INGEST_RATE: u32 = 100;
const POINTS_PER_REQUEST: usize = 100;

struct Phase {
    points_per_s: f64,
    ingest_ms: Vec<f64>,
    healthz_ms: Vec<f64>,
    scrapes: usize,
    cpu_s: f64,
}

/// Runs the fixed-rate ingest and a `/healthz` prober for `secs`, scraping in a loop when `scrapes`.
fn phase(v: &Vitals, secs: f64, scrapes: bool) -> Phase {
    let pid = v.child.id();
    let stop = Arc::new(AtomicBool::new(false));
    let bodies: Vec<Vec<u8>> = (0..METRICS * SERIES_PER_METRIC / POINTS_PER_REQUEST)
        .map(|k| {
            let m = k % METRICS;
            let first = (k / METRICS) * POINTS_PER_REQUEST % SERIES_PER_METRIC;
            request(m, first..first + POINTS_PER_REQUEST, 2.0).encode_to_vec()
        })
        .collect();
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    let ingest = {
        let (addr, stop) = (v.http.clone(), stop.clone());
        std::thread::spawn(move || {
            let period = Duration::from_secs_f64(1.0 / INGEST_RATE as f64);
            let mut next = Instant::now();
            let (mut sent, mut lat) = (0usize, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                assert_eq!(post(&addr, &bodies[sent % bodies.len()]), 200);
                lat.push(t.elapsed().as_secs_f64() * 1e3);
                sent += 1;
                next += period;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            (sent, lat)
        })
    };
    let health = {
        let (addr, stop) = (v.metrics.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                ureq::get(&format!("http://{addr}/healthz"))
                    .timeout(Duration::from_secs(10))
                    .call()
                    .unwrap();
                lat.push(t.elapsed().as_secs_f64() * 1e3);
                std::thread::sleep(Duration::from_millis(10));
            }
            lat
        })
    };
    let scraper = scrapes.then(|| {
        let (addr, stop) = (v.metrics.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                scrape(&addr);
                n += 1;
            }
            n
        })
    });
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let (sent, ingest_ms) = ingest.join().unwrap();
    let healthz_ms = health.join().unwrap();
    let scrapes = scraper.map_or(0, |s| s.join().unwrap());
    let elapsed = t0.elapsed().as_secs_f64();
    Phase {
        points_per_s: (sent * POINTS_PER_REQUEST) as f64 / elapsed,
        ingest_ms,
        healthz_ms,
        scrapes,
        cpu_s: (cpu_seconds(pid) - cpu0) / elapsed,
    }
}

fn print_phase(label: &str, p: &mut Phase) {
    println!(
        "  {label}: ingest {:.0} points/s (request p50 {:.2} ms, p99 {:.2} ms); /healthz p50 {:.2} ms, p99 {:.2} ms ({} probes); vitals CPU {:.0}% of a core; {} scrapes",
        p.points_per_s,
        percentile(&mut p.ingest_ms, 0.5),
        percentile(&mut p.ingest_ms, 0.99),
        percentile(&mut p.healthz_ms, 0.5),
        percentile(&mut p.healthz_ms, 0.99),
        p.healthz_ms.len(),
        p.cpu_s * 100.0,
        p.scrapes
    );
}

fn live() {
    let secs: f64 = std::env::var("VITALS_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let series = METRICS * SERIES_PER_METRIC;

    // Stored cost in a fresh process: RSS growth from 10,000 to 30,000 series.
    let v = start();
    let pid = v.child.id();
    let empty = status_kib(pid, "VmRSS:");
    fill(&v, 0..5);
    let at_10k = status_kib(pid, "VmRSS:");
    fill(&v, 5..METRICS);
    let at_30k = status_kib(pid, "VmRSS:");
    println!(
        "release vitals, fresh process: RSS {:.1} MiB empty, {:.1} MiB at 10,000 series, {:.1} MiB at {series}: {:.0} bytes per stored series (growth from 10k to 30k)",
        empty as f64 / 1024.0,
        at_10k as f64 / 1024.0,
        at_30k as f64 / 1024.0,
        (at_30k - at_10k) as f64 * 1024.0 / 20_000.0
    );

    // RSS across scrapes.
    let bytes = scrape(&v.metrics);
    let after_1 = status_kib(pid, "VmRSS:");
    let cpu0 = cpu_seconds(pid);
    let t = Instant::now();
    for _ in 1..100 {
        scrape(&v.metrics);
    }
    let wall = t.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu0;
    let after_100 = status_kib(pid, "VmRSS:");
    println!(
        "  scrapes of {series} series ({} KiB): RSS {:.1} MiB after 1, {:.1} MiB after 100 ({:+.1}%); back-to-back: {:.1} ms wall, {:.1} ms vitals CPU per scrape",
        bytes / 1024,
        after_1 as f64 / 1024.0,
        after_100 as f64 / 1024.0,
        (after_100 as f64 / after_1 as f64 - 1.0) * 100.0,
        wall / 99.0 * 1e3,
        cpu / 99.0 * 1e3
    );

    // Ingest and /healthz with and without scrapes.
    println!(
        "  OTLP/HTTP ingest offered at {INGEST_RATE} requests/s x {POINTS_PER_REQUEST} points, {secs} s per phase:"
    );
    let mut quiet = phase(&v, secs, false);
    print_phase("without scrapes", &mut quiet);
    let mut busy = phase(&v, secs, true);
    print_phase("scraping in a loop", &mut busy);
    println!(
        "  ingest with scrapes / without: {:.2}; vitals CPU per scrape under load: {:.1} ms",
        busy.points_per_s / quiet.points_per_s,
        (busy.cpu_s - quiet.cpu_s) * secs / busy.scrapes.max(1) as f64 * 1e3
    );
}

fn main() {
    in_process();
    // VITALS_BENCH_IN_PROCESS=1 stops here (for profiling the encoder alone).
    if std::env::var_os("VITALS_BENCH_IN_PROCESS").is_none() {
        live();
    }
}
