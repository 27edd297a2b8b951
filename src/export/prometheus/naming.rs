//! OpenTelemetry → Prometheus name translation, the one rule set for every metric vitals exposes, its own
//! and the app's (Prometheus' default "underscore escaping with suffixes" strategy), and the names
//! vitals reserves for itself.

use std::borrow::Cow;

use crate::model::{MetricKind, NameRules, Origin};

/// How a metric is exposed, which decides the suffixes its name gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstrumentShape {
    /// A monotonic sum: gets `_total` in the sample name.
    Counter,
    /// A gauge or non-monotonic sum: unit `1` becomes `_ratio`.
    Gauge,
    /// A histogram or summary: unit suffix only.
    Distribution,
}

/// Prometheus name for an OTel metric. For counters this is the family name *without* `_total`
/// (encoders add it), so one name serves the text format and OpenMetrics alike.
pub fn metric_name(otel_name: &str, unit: &str, shape: InstrumentShape) -> String {
    let mut tokens: Vec<String> = otel_name
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    let (main, per) = unit_suffixes(unit);
    if let Some(main) = main {
        if !tokens.iter().any(|t| t == main) {
            tokens.push(main.to_owned());
        }
    }
    if let Some(per) = per {
        let already = tokens.windows(2).any(|w| w[0] == "per" && w[1] == per);
        if !already {
            tokens.push("per".to_owned());
            tokens.push(per.to_owned());
        }
    }
    match shape {
        InstrumentShape::Counter => tokens.retain(|t| t != "total"),
        InstrumentShape::Gauge if unit.trim() == "1" && !tokens.iter().any(|t| t == "ratio") => {
            tokens.push("ratio".to_owned())
        }
        _ => {}
    }
    let mut name = tokens.join("_");
    if name.is_empty() {
        name.push('_');
    }
    if name.as_bytes()[0].is_ascii_digit() {
        name.insert(0, '_');
    }
    name
}

/// How a metric kind is exposed.
pub fn shape(kind: MetricKind) -> InstrumentShape {
    match kind {
        MetricKind::Counter => InstrumentShape::Counter,
        MetricKind::UpDownCounter | MetricKind::Gauge => InstrumentShape::Gauge,
        MetricKind::Histogram | MetricKind::Summary => InstrumentShape::Distribution,
    }
}

/// The exposition name of a metric. The app's own `process.*` metrics become `app_process_*`, so they never
/// land in the target families vitals writes from procfs (whose dashboards would then count twice);
/// `process.runtime.*` keeps its name, having no procfs twin.
pub fn exposition_name(name: &str, unit: &str, kind: MetricKind, origin: Origin) -> String {
    let prom = metric_name(name, unit, shape(kind));
    if origin == Origin::App
        && prom.starts_with("process_")
        && !prom.starts_with("process_runtime_")
    {
        format!("app_{prom}")
    } else {
        prom
    }
}

/// The label name an attribute is written under on a metric of any kind: [`label_name`], with the labels
/// a histogram (`le`) or summary (`quantile`) writes itself moved aside to `exported_…` on every kind. Borrows when the
/// key is already a valid label name.
pub fn exposition_label(key: &str, _kind: MetricKind) -> Cow<'_, str> {
    let valid = !key.is_empty()
        && key.len() <= MAX_LABEL_NAME
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !key.as_bytes()[0].is_ascii_digit()
        && !key.starts_with('_');
    let name: Cow<'_, str> = if valid {
        Cow::Borrowed(key)
    } else {
        Cow::Owned(label_name(key))
    };
    // Reserved on every kind, not only where the encoder writes them: promtool's lint refuses `le` on a
    // non-histogram and `quantile` on a non-summary, and a counter's `le` would read as a bucket bound.
    if name == "le" || name == "quantile" {
        Cow::Owned(format!("exported_{name}"))
    } else {
        name
    }
}

/// Every sample name a family writes in either exposition format.
pub fn sample_names(name: &str, kind: MetricKind) -> Vec<String> {
    let suffixes: &[&str] = match kind {
        MetricKind::Counter => &["", "_total", "_created"],
        MetricKind::UpDownCounter | MetricKind::Gauge => &[""],
        MetricKind::Histogram => &["", "_bucket", "_count", "_sum", "_created"],
        MetricKind::Summary => &["", "_count", "_sum", "_created"],
    };
    suffixes.iter().map(|s| format!("{name}{s}")).collect()
}

/// The Prometheus exporter's naming, for stores that take names from outside.
#[derive(Debug, Default, Clone, Copy)]
pub struct PrometheusNames;

impl NameRules for PrometheusNames {
    fn metric_names(
        &self,
        name: &str,
        unit: &str,
        kind: MetricKind,
        origin: Origin,
    ) -> Result<Vec<String>, String> {
        let prom = exposition_name(name, unit, kind, origin);
        let samples = sample_names(&prom, kind);
        if origin == Origin::App
            && samples
                .iter()
                .any(|s| s.starts_with("vitals_") || s == "target_info")
        {
            return Err(format!(
                "metric {name:?} would be named {prom}, which vitals reserves"
            ));
        }
        Ok(samples)
    }

    fn attribute_key<'a>(&self, key: &'a str, kind: MetricKind) -> Cow<'a, str> {
        exposition_label(key, kind)
    }
}

/// Longest label name kept (bytes): attribute keys come from outside and are cut to this.
pub const MAX_LABEL_NAME: usize = 128;

/// Prometheus label name for an OTel attribute key (`http.route` → `http_route`), from at most
/// [`MAX_LABEL_NAME`] characters of the key (plus a `key` prefix where one is needed).
pub fn label_name(key: &str) -> String {
    let mut out: String = key
        .chars()
        .take(MAX_LABEL_NAME)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() {
        return "key_empty".to_owned();
    }
    if out.as_bytes()[0].is_ascii_digit() {
        out.insert_str(0, "key_");
    } else if out.starts_with('_') {
        // `__`-prefixed names (`__name__` above all) are reserved for Prometheus itself: a second
        // `__name__` label would make it refuse the whole scrape.
        out.insert_str(0, "key");
    }
    out
}

/// The word an OpenMetrics `# UNIT` line names for a metric whose name ends with it (`seconds`, `bytes`,
/// `ratio`), else empty.
pub fn unit_word(prom_name: &str) -> &'static str {
    const WORDS: [&str; 6] = [
        "seconds",
        "bytes",
        "ratio",
        "milliseconds",
        "percent",
        "celsius",
    ];
    WORDS
        .iter()
        .find(|w| {
            prom_name
                .strip_suffix(**w)
                .is_some_and(|rest| rest.ends_with('_'))
        })
        .copied()
        .unwrap_or("")
}

/// The (main, per) unit words of a UCUM unit; annotations in braces (`{request}`) carry no unit.
fn unit_suffixes(unit: &str) -> (Option<&'static str>, Option<&'static str>) {
    let unit = unit.trim();
    let (main, per) = match unit.split_once('/') {
        Some((m, p)) => (m, Some(p)),
        None => (unit, None),
    };
    (main_unit(main), per.and_then(per_unit))
}

fn main_unit(u: &str) -> Option<&'static str> {
    Some(match u {
        "d" => "days",
        "h" => "hours",
        "min" => "minutes",
        "s" => "seconds",
        "ms" => "milliseconds",
        "us" => "microseconds",
        "ns" => "nanoseconds",
        "By" => "bytes",
        "KiBy" => "kibibytes",
        "MiBy" => "mebibytes",
        "GiBy" => "gibibytes",
        "TiBy" => "tibibytes",
        "KBy" => "kilobytes",
        "MBy" => "megabytes",
        "GBy" => "gigabytes",
        "TBy" => "terabytes",
        "m" => "meters",
        "V" => "volts",
        "A" => "amperes",
        "J" => "joules",
        "W" => "watts",
        "g" => "grams",
        "Cel" => "celsius",
        "Hz" => "hertz",
        "%" => "percent",
        _ => return None,
    })
}

fn per_unit(u: &str) -> Option<&'static str> {
    Some(match u {
        "s" => "second",
        "m" => "minute",
        "h" => "hour",
        "d" => "day",
        "w" => "week",
        "mo" => "month",
        "y" => "year",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_word_is_a_whole_last_word() {
        assert_eq!(unit_word("vitals_gc_pause_seconds"), "seconds");
        assert_eq!(unit_word("process_memory_usage_bytes"), "bytes");
        assert_eq!(unit_word("cpu_utilization_ratio"), "ratio");
        assert_eq!(unit_word("timeseconds"), "");
        assert_eq!(unit_word("seconds"), "");
        assert_eq!(unit_word("vitals_seconds_total"), "");
    }
    use InstrumentShape::*;

    #[test]
    fn semantic_convention_names() {
        assert_eq!(
            metric_name("http.server.request.duration", "s", Distribution),
            "http_server_request_duration_seconds"
        );
        assert_eq!(
            metric_name("process.cpu.time", "s", Counter),
            "process_cpu_time_seconds"
        );
        assert_eq!(
            metric_name("process.memory.usage", "By", Gauge),
            "process_memory_usage_bytes"
        );
        assert_eq!(
            metric_name("process.thread.count", "{thread}", Gauge),
            "process_thread_count"
        );
        assert_eq!(
            metric_name("process.context_switches", "{context_switch}", Counter),
            "process_context_switches"
        );
        assert_eq!(metric_name("orders", "", Counter), "orders");
        assert_eq!(metric_name("orders_total", "", Counter), "orders");
        assert_eq!(
            metric_name("cpu.utilization", "1", Gauge),
            "cpu_utilization_ratio"
        );
        assert_eq!(
            metric_name("cpu.utilization", "1", Counter),
            "cpu_utilization"
        );
        assert_eq!(
            metric_name("net.io", "By/s", Gauge),
            "net_io_bytes_per_second"
        );
        assert_eq!(
            metric_name("latency_seconds", "s", Distribution),
            "latency_seconds"
        );
        assert_eq!(metric_name("2xx.count", "", Gauge), "_2xx_count");
        assert_eq!(metric_name("a..b__c", "", Gauge), "a_b_c");
        assert_eq!(metric_name("", "", Gauge), "_");
    }

    #[test]
    fn le_and_quantile_are_renamed_on_every_kind() {
        use MetricKind::*;
        for kind in [Counter, UpDownCounter, Gauge, Histogram, Summary] {
            assert_eq!(exposition_label("le", kind), "exported_le", "{kind:?}");
            assert_eq!(
                exposition_label("quantile", kind),
                "exported_quantile",
                "{kind:?}"
            );
            assert_eq!(exposition_label("quantiles", kind), "quantiles");
        }
    }

    #[test]
    fn label_names() {
        assert_eq!(label_name("http.route"), "http_route");
        assert_eq!(
            label_name("process.context_switch.type"),
            "process_context_switch_type"
        );
        assert_eq!(label_name("3d"), "key_3d");
        assert_eq!(label_name("_x"), "key_x");
        assert_eq!(label_name("__x"), "key__x");
        assert_eq!(label_name("__name__"), "key__name__");
        assert_eq!(label_name("a-b c\"}"), "a_b_c__");
        assert_eq!(label_name(""), "key_empty");
        assert_eq!(label_name(&"k".repeat(1 << 20)).len(), MAX_LABEL_NAME);
    }
}
