//! Shared by every OTLP decoder fuzz target: decode with the receiver's own entry point, then feed the
//! result through the same ingest path a real request takes.
#![allow(dead_code)] // each target uses part of this module

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use vitals::signal::latency::RedSignal;
use vitals::signal::n_plus_one::{NPlusOne, Rule};
use vitals::signal::query::{DbQueries, QuerySignal};
use vitals::receiver::{Consumers, OtlpLimits, OtlpStats, Receiver};
use vitals::store::app_metrics::{AppMetrics, AppMetricsConfig};
use vitals::bounded::OverflowCounter;
use vitals::store::logs::LogCounts;
use vitals::model::Registry;

pub fn receiver() -> &'static (Receiver, Registry) {
    static I: OnceLock<(Receiver, Registry)> = OnceLock::new();
    I.get_or_init(|| {
        let o = OverflowCounter::default();
        let ttl = Duration::from_secs(3600);
        let red = Arc::new(RedSignal::new(100, ttl, o.clone()));
        let app = Arc::new(AppMetrics::new(AppMetricsConfig { series_limit: 100, family_limit: 100, ttl, promote: vec!["service.instance.id".into()] }, o.clone(), Arc::new(vitals::export::prometheus::naming::PrometheusNames)));
        let logs = Arc::new(LogCounts::new(100, ttl, o.clone()));
        let registry = Registry::new();
        registry.register(red.clone());
        registry.register(app.clone());
        registry.register(logs.clone());
        let queries = Arc::new(QuerySignal::new(100, ttl, o.clone()));
        let n_plus_one = Arc::new(NPlusOne::new(Rule::default(), 100, ttl, o.clone()));
        registry.register(queries.clone());
        registry.register(n_plus_one.clone());
        let db = Arc::new(DbQueries { store: queries, n_plus_one });
        let consumers = Consumers::new().traces(red).traces(db).metrics(app).logs(logs);
        let stats = Arc::new(OtlpStats::new(move || o.get()));
        (Receiver::new(OtlpLimits::new(1 << 20, 1), consumers, stats), registry)
    })
}

/// Encodes what the stores hold, in both formats, so rendering is fuzzed too.
pub fn render() {
    let (_, registry) = receiver();
    let fams = registry.gather();
    let _ = vitals::export::prometheus::encode(&fams, vitals::export::prometheus::Format::Text);
    let _ = vitals::export::prometheus::encode(&fams, vitals::export::prometheus::Format::OpenMetrics);
}

/// Defines a fuzz target for OTLP trace exports in one body encoding: read as the receiver reads them
/// (protobuf in place, an OTLP/JSON body decoded by serde), then handed to the consumers.
#[macro_export]
macro_rules! traces_target {
    ($enc:ident) => {
        libfuzzer_sys::fuzz_target!(|data: &[u8]| {
            use vitals::receiver::decode::{with_trace_view, Encoding};
            let read = |view: &vitals::pipeline::TraceView<'_>| {
                let _ = common::receiver().0.deliver_traces(view);
            };
            if with_trace_view(data, Encoding::$enc, read).is_ok() {
                common::render();
            }
        });
    };
}

/// Defines a fuzz target for one OTLP metrics or logs request type and body encoding (the last
/// argument, the signal, only names the target).
#[macro_export]
macro_rules! otlp_target {
    ($ty:ty, $enc:ident, $signal:ident) => {
        libfuzzer_sys::fuzz_target!(|data: &[u8]| {
            use vitals::receiver::decode::{decode, Encoding};
            if let Ok(req) = decode::<$ty>(data, Encoding::$enc) {
                let _ = common::receiver().0.deliver_decoded(&req);
                common::render();
            }
        });
    };
}

fn valid_metric_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn valid_label_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
        && !n.starts_with("__")
}

/// Splits `name{a="x",b="y"} value` into name, labels (escapes kept) and the rest.
fn split_sample(line: &str) -> Result<(&str, Vec<(String, String)>, &str), String> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => (&line[..i], &line[i..]),
        None => return Err(format!("no value: {line}")),
    };
    let mut labels = Vec::new();
    let rest = if let Some(mut r) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = r.strip_prefix('}') {
                break after;
            }
            let eq = r.find('=').ok_or_else(|| format!("label without =: {line}"))?;
            let lname = r[..eq].to_owned();
            r = r[eq + 1..].strip_prefix('"').ok_or_else(|| format!("unquoted value: {line}"))?;
            let mut value = String::new();
            let mut chars = r.char_indices();
            let end = loop {
                match chars.next() {
                    None => return Err(format!("unterminated value: {line}")),
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, c @ ('\\' | '"' | 'n'))) => value.push(c),
                        other => return Err(format!("bad escape {other:?}: {line}")),
                    },
                    Some((_, c)) => value.push(c),
                }
            };
            labels.push((lname, value));
            r = &r[end + 1..];
            r = r.strip_prefix(',').unwrap_or(r);
        }
    } else {
        rest
    };
    Ok((name, labels, rest.trim()))
}

/// Checks an exposition the way Prometheus' parsers and `promtool check metrics` do for the rules a
/// hostile input could break. OpenMetrics exemplars (after ` # `) are ignored.
pub fn check_exposition(text: &str, openmetrics: bool) -> Result<(), String> {
    use std::collections::{HashMap, HashSet};
    let mut help = HashSet::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut current: Option<(String, String)> = None;
    let mut series = HashSet::new();
    let mut last_bucket: HashMap<String, f64> = HashMap::new();
    for line in text.lines() {
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let kind = parts.next().unwrap_or("");
            let name = parts.next().unwrap_or("").to_owned();
            match kind {
                "HELP" => {
                    if !help.insert(name.clone()) {
                        return Err(format!("HELP twice for {name}"));
                    }
                }
                "TYPE" => {
                    let t = parts.next().unwrap_or("").to_owned();
                    if types.insert(name.clone(), t.clone()).is_some() {
                        return Err(format!("TYPE twice for {name}"));
                    }
                    if !valid_metric_name(&name) {
                        return Err(format!("invalid family name {name:?}"));
                    }
                    current = Some((name, t));
                }
                "UNIT" | "EOF" => {}
                _ => return Err(format!("unknown comment: {line}")),
            }
            continue;
        }
        if line == "# EOF" || line.is_empty() {
            continue;
        }
        let line = if openmetrics { line.split(" # ").next().unwrap_or(line) } else { line };
        let (name, labels, value) = split_sample(line)?;
        if !valid_metric_name(name) {
            return Err(format!("invalid sample name {name:?}"));
        }
        let (family, kind) = current.clone().ok_or_else(|| format!("sample before TYPE: {line}"))?;
        let suffixes: &[&str] = match kind.as_str() {
            "counter" if openmetrics => &["_total", "_created"],
            "counter" => &["", "_total"],
            "histogram" => &["_bucket", "_count", "_sum", "_created"],
            "summary" => &["", "_count", "_sum", "_created"],
            _ => &[""],
        };
        if !suffixes.iter().any(|s| name == format!("{family}{s}")) {
            return Err(format!("sample {name} outside family {family} ({kind})"));
        }
        let mut names = HashSet::new();
        for (l, _) in &labels {
            if !valid_label_name(l) {
                return Err(format!("invalid label name {l:?} on {name}"));
            }
            if !names.insert(l.clone()) {
                return Err(format!("label {l} twice on {name}"));
            }
        }
        let mut sorted = labels.clone();
        sorted.sort();
        if !series.insert((name.to_owned(), sorted.clone())) {
            return Err(format!("series twice: {line}"));
        }
        let v: f64 = match value.split(' ').next().unwrap_or("") {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| format!("bad value in {line}"))?,
        };
        if name.ends_with("_bucket") {
            let key: Vec<_> = sorted.iter().filter(|(k, _)| k != "le").collect();
            let key = format!("{name}{key:?}");
            if let Some(prev) = last_bucket.insert(key, v) {
                if v < prev {
                    return Err(format!("bucket count decreases: {line}"));
                }
            }
        }
    }
    Ok(())
}
