//! Shared by every OTLP decoder fuzz target: decode with the receiver's own entry point, then feed the
//! result through the same ingest path a real request takes.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use vitals::signal::latency::RedStore;
use vitals::source::otlp::{Ingest, OtlpLimits};
use vitals::store::app_metrics::{AppMetrics, AppMetricsConfig};
use vitals::store::limited::OverflowCounter;
use vitals::store::logs::LogCounts;
use vitals::store::Registry;

pub fn ingest() -> &'static (Ingest, Registry) {
    static I: OnceLock<(Ingest, Registry)> = OnceLock::new();
    I.get_or_init(|| {
        let o = OverflowCounter::default();
        let ttl = Duration::from_secs(3600);
        let red = Arc::new(RedStore::new(100, ttl, o.clone()));
        let app = Arc::new(AppMetrics::new(AppMetricsConfig { series_limit: 100, family_limit: 100, ttl, promote: vec!["service.instance.id".into()] }, o.clone()));
        let logs = Arc::new(LogCounts::new(100, ttl, o.clone()));
        let registry = Registry::new();
        registry.register(red.clone());
        registry.register(app.clone());
        registry.register(logs.clone());
        let ing = Ingest::new(OtlpLimits::new(1 << 20, 1), red, app, logs, Arc::new(Ingest::stats_with(o)));
        (ing, registry)
    })
}

/// Encodes what the stores hold, in both formats, so rendering is fuzzed too.
pub fn render() {
    let (_, registry) = ingest();
    let fams = registry.gather();
    let _ = vitals::export::prometheus::encode(&fams, vitals::export::prometheus::Format::Text);
    let _ = vitals::export::prometheus::encode(&fams, vitals::export::prometheus::Format::OpenMetrics);
}

/// Defines a fuzz target for one OTLP request type, body encoding and ingest method.
#[macro_export]
macro_rules! otlp_target {
    ($ty:ty, $enc:ident, $method:ident) => {
        libfuzzer_sys::fuzz_target!(|data: &[u8]| {
            use vitals::source::otlp::decode::{decode, Encoding};
            if let Ok(req) = decode::<$ty>(data, Encoding::$enc) {
                let _ = common::ingest().0.$method(&req);
                common::render();
            }
        });
    };
}
