//! Fuzzes the OTLP/HTTP listener's request handling: any bytes a client sends (paths, methods, query
//! strings, `Content-Type`, `Content-Encoding`, `Content-Length`, chunked or plain bodies) go through
//! hyper into the real receiver handler and its consumers. Beyond no panic and no hang: every status is
//! one the OTLP specification table in the README lists, and never 500 (a handler panic caught).
#![no_main]

mod common;
mod http_driver;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::Request;
use vitals::model::Registry;
use vitals::receiver::{Consumers, OtlpLimits, OtlpStats, Receiver};
use vitals::signal::latency::RedSignal;
use vitals::store::app_metrics::{AppMetrics, AppMetricsConfig};
use vitals::bounded::OverflowCounter;
use vitals::store::logs::LogCounts;

fn receiver() -> Arc<Receiver> {
    static R: OnceLock<Arc<Receiver>> = OnceLock::new();
    R.get_or_init(|| {
        let o = OverflowCounter::default();
        let ttl = Duration::from_secs(3600);
        let red = Arc::new(RedSignal::new(100, ttl, o.clone()));
        let app = Arc::new(AppMetrics::new(
            AppMetricsConfig {
                series_limit: 100,
                family_limit: 100,
                ttl,
                promote: vec![],
            },
            o.clone(),
            Arc::new(vitals::export::prometheus::naming::PrometheusNames),
        ));
        let logs = Arc::new(LogCounts::new(100, ttl, o.clone()));
        let registry = Registry::new();
        registry.register(red.clone());
        registry.register(app.clone());
        let consumers = Consumers::new().traces(red).metrics(app).logs(logs);
        let stats = Arc::new(OtlpStats::new(move || o.get()));
        Arc::new(Receiver::new(OtlpLimits::new(1 << 20, 4), consumers, stats))
    })
    .clone()
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let r = receiver();
    http_driver::exchange(
        move |req: Request<Incoming>| {
            let r = r.clone();
            async move {
                let path = req.uri().path().to_owned();
                let resp = vitals::receiver::http::handle(r, req).await?;
                let status = resp.status().as_u16();
                assert!(
                    [200, 400, 404, 405, 408, 413, 415, 429, 503].contains(&status),
                    "unexpected status {status} for {path}"
                );
                Ok(resp)
            }
        },
        data,
    );
});
