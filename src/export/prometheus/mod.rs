//! Prometheus exposition: the classic text format (0.0.4) by default and OpenMetrics 1.0 (with exemplars)
//! when the scraper asks for it. Every label value and help text is escaped here, whatever its origin.

pub mod naming;

use std::borrow::Cow;
use std::fmt::Write;

use crate::model::{Exemplar, Metric, MetricKind, Value};

/// The exposition format of one scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`.
    Text,
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
}

impl Format {
    /// Picks the format from an `Accept` header: OpenMetrics only when the scraper lists it.
    pub fn negotiate(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text,
        }
    }

    /// The Content-Type of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Encodes metrics in `format`, translating their OpenTelemetry names and attribute keys here.
pub fn encode(metrics: &[Metric], format: Format) -> String {
    let mut out = String::with_capacity(metrics.iter().map(|m| 64 + m.points.len() * 96).sum());
    for m in metrics.iter().filter(|m| !m.points.is_empty()) {
        encode_metric(&mut out, m, format);
    }
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
    out
}

fn encode_metric(out: &mut String, m: &Metric, format: Format) {
    let om = format == Format::OpenMetrics;
    let name = naming::exposition_name(&m.name, &m.unit, m.kind, m.origin);
    let type_word = match m.kind {
        MetricKind::Counter => "counter",
        MetricKind::UpDownCounter | MetricKind::Gauge => "gauge",
        MetricKind::Histogram => "histogram",
        MetricKind::Summary => "summary",
    };
    // In the text format a counter's family is named after its sample (`x_total`); OpenMetrics names the
    // family without the suffix.
    let counter = m.kind == MetricKind::Counter;
    let header_suffix = if counter && !om { "_total" } else { "" };
    out.push_str("# HELP ");
    out.push_str(&name);
    out.push_str(header_suffix);
    out.push(' ');
    escape_help(out, &m.description, om);
    out.push('\n');
    let _ = writeln!(out, "# TYPE {name}{header_suffix} {type_word}");
    let unit = naming::unit_word(&name);
    if om && !unit.is_empty() {
        let _ = writeln!(out, "# UNIT {name} {unit}");
    }
    let value_suffix = if counter { "_total" } else { "" };
    let mut labels: Vec<(Cow<'_, str>, &str)> = Vec::new();
    for p in &m.points {
        labels.clear();
        labels.extend(
            p.attributes
                .iter()
                .map(|(k, v)| (naming::exposition_label(k, m.kind), v.as_str())),
        );
        match &p.value {
            Value::Sum(v) | Value::Gauge(v) => {
                sample(out, &name, value_suffix, &labels, None, *v, None, om)
            }
            Value::Histogram {
                buckets,
                sum,
                count,
                exemplars,
            } => {
                for (i, (le, c)) in buckets.iter().enumerate() {
                    let ex = if om {
                        exemplars.get(i).and_then(|e| e.as_ref())
                    } else {
                        None
                    };
                    sample(
                        out,
                        &name,
                        "_bucket",
                        &labels,
                        Some(("le", *le)),
                        *c as f64,
                        ex,
                        om,
                    );
                }
                sum_and_count(out, &name, &labels, *sum, *count, om);
            }
            Value::Summary {
                quantiles,
                sum,
                count,
            } => {
                for (q, v) in quantiles {
                    sample(
                        out,
                        &name,
                        "",
                        &labels,
                        Some(("quantile", *q)),
                        *v,
                        None,
                        om,
                    );
                }
                sum_and_count(out, &name, &labels, *sum, *count, om);
            }
        }
    }
}

type Labels<'a> = [(Cow<'a, str>, &'a str)];

fn sum_and_count(
    out: &mut String,
    name: &str,
    labels: &Labels<'_>,
    sum: f64,
    count: u64,
    om: bool,
) {
    sample(out, name, "_sum", labels, None, sum, None, om);
    sample(out, name, "_count", labels, None, count as f64, None, om);
}

/// Writes `k="v",…` pairs, values escaped.
fn label_pairs<K: AsRef<str>, V: AsRef<str>>(out: &mut String, labels: &[(K, V)]) {
    for (i, (k, v)) in labels.iter().enumerate() {
        let (k, v) = (k.as_ref(), v.as_ref());
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        escape_label_value(out, v);
        out.push('"');
    }
}

#[allow(clippy::too_many_arguments)]
fn sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &Labels<'_>,
    extra: Option<(&str, f64)>,
    value: f64,
    exemplar: Option<&Exemplar>,
    om: bool,
) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() || extra.is_some() {
        out.push('{');
        label_pairs(out, labels);
        if let Some((k, v)) = extra {
            if !labels.is_empty() {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            write_float(out, v, om);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    write_float(out, value, false);
    if let Some(ex) = exemplar {
        out.push_str(" # {");
        let ex_labels: Vec<(Cow<'_, str>, &str)> = ex
            .attributes
            .iter()
            .map(|(k, v)| (naming::exposition_label(k, MetricKind::Gauge), v.as_str()))
            .collect();
        label_pairs(out, &ex_labels);
        out.push_str("} ");
        write_float(out, ex.value, false);
        if let Some(ts) = ex.timestamp {
            out.push(' ');
            let _ = write!(out, "{ts:.3}");
        }
    }
    out.push('\n');
}

/// Writes a float as both formats spell it (`+Inf`, `-Inf`, `NaN`). With `om_canonical`, whole numbers
/// get `.0` as OpenMetrics' canonical `le`/`quantile` form.
fn write_float(out: &mut String, v: f64, om_canonical: bool) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if om_canonical && v.fract() == 0.0 && v.abs() < 1e15 {
        let _ = write!(out, "{v:.1}");
    } else {
        let _ = write!(out, "{v}");
    }
}

/// Escapes a label value: backslash, double quote and newline, the three characters both formats
/// reserve. Nothing else in a value can break a line or end the string.
pub fn escape_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn escape_help(out: &mut String, v: &str, om: bool) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if om => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Metric;

    #[test]
    fn counter_names_differ_between_formats() {
        let f = vec![Metric::new(
            "process_cpu_time_seconds",
            "CPU",
            "seconds",
            MetricKind::Counter,
        )
        .with(&[("cpu_mode", "user")], Value::Sum(1.5))];
        assert_eq!(
            encode(&f, Format::Text),
            "# HELP process_cpu_time_seconds_total CPU\n# TYPE process_cpu_time_seconds_total counter\n\
             process_cpu_time_seconds_total{cpu_mode=\"user\"} 1.5\n"
        );
        assert_eq!(
            encode(&f, Format::OpenMetrics),
            "# HELP process_cpu_time_seconds CPU\n# TYPE process_cpu_time_seconds counter\n\
             # UNIT process_cpu_time_seconds seconds\nprocess_cpu_time_seconds_total{cpu_mode=\"user\"} 1.5\n# EOF\n"
        );
    }

    #[test]
    fn hostile_label_values_are_escaped() {
        let f = vec![Metric::new("x", "a \\ b\nc \"q\"", "", MetricKind::Gauge)
            .with(&[("v", "a\"b\\c\nd}{,=")], Value::Gauge(f64::INFINITY))];
        let text = encode(&f, Format::Text);
        assert_eq!(
            text,
            "# HELP x a \\\\ b\\nc \"q\"\n# TYPE x gauge\nx{v=\"a\\\"b\\\\c\\nd}{,=\"} +Inf\n"
        );
        let om = encode(&f, Format::OpenMetrics);
        assert!(om.starts_with("# HELP x a \\\\ b\\nc \\\"q\\\"\n"), "{om}");
        assert_eq!(text.lines().count(), 3);
    }

    #[test]
    fn histogram_with_exemplar_only_in_openmetrics() {
        let ex = Exemplar {
            attributes: vec![("trace_id".into(), "0af7651916cd43dd8448eb211c80319c".into())],
            value: 0.07,
            timestamp: Some(1_700_000_000.5),
        };
        let f = vec![
            Metric::new("req_seconds", "h", "seconds", MetricKind::Histogram).with(
                &[],
                Value::Histogram {
                    buckets: vec![(0.1, 3), (1.0, 4), (f64::INFINITY, 5)],
                    sum: 2.5,
                    count: 5,
                    exemplars: vec![Some(ex), None, None],
                },
            ),
        ];
        let text = encode(&f, Format::Text);
        assert!(text.contains("req_seconds_bucket{le=\"0.1\"} 3\nreq_seconds_bucket{le=\"1\"} 4\nreq_seconds_bucket{le=\"+Inf\"} 5\nreq_seconds_sum 2.5\nreq_seconds_count 5\n"), "{text}");
        assert!(!text.contains('#') || !text.contains("trace_id"));
        let om = encode(&f, Format::OpenMetrics);
        assert!(om.contains("req_seconds_bucket{le=\"0.1\"} 3 # {trace_id=\"0af7651916cd43dd8448eb211c80319c\"} 0.07 1700000000.500\n"), "{om}");
        assert!(om.contains("req_seconds_bucket{le=\"1.0\"} 4\n"), "{om}");
    }

    #[test]
    fn negotiation() {
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(
            Format::negotiate(Some("text/plain;version=0.0.4")),
            Format::Text
        );
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
            )),
            Format::OpenMetrics
        );
    }

    #[test]
    fn empty_families_are_left_out() {
        let f = vec![Metric::new("x", "h", "", MetricKind::Gauge)];
        assert_eq!(encode(&f, Format::Text), "");
    }
}
