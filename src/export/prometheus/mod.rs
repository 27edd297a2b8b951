//! Prometheus exposition: the classic text format (0.0.4) by default and OpenMetrics 1.0 (with exemplars)
//! when the scraper asks for it. Every label value and help text is escaped here, whatever its origin.

pub mod naming;

use std::fmt::Write;

use crate::store::{Exemplar, Family, MetricKind, Value};

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

/// Encodes families in `format`.
pub fn encode(families: &[Family], format: Format) -> String {
    let mut out = String::with_capacity(families.iter().map(|f| 64 + f.series.len() * 96).sum());
    for fam in families.iter().filter(|f| !f.series.is_empty()) {
        encode_family(&mut out, fam, format);
    }
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
    out
}

fn encode_family(out: &mut String, fam: &Family, format: Format) {
    let om = format == Format::OpenMetrics;
    let type_word = match fam.kind {
        MetricKind::Counter => "counter",
        MetricKind::Gauge => "gauge",
        MetricKind::Histogram => "histogram",
        MetricKind::Summary => "summary",
    };
    // In the text format a counter's family is named after its sample (`x_total`); OpenMetrics names the
    // family without the suffix.
    let counter_suffix = if fam.kind == MetricKind::Counter {
        "_total"
    } else {
        ""
    };
    let header_name = if om {
        fam.name.clone()
    } else {
        format!("{}{}", fam.name, counter_suffix)
    };
    out.push_str("# HELP ");
    out.push_str(&header_name);
    out.push(' ');
    escape_help(out, &fam.help, om);
    out.push('\n');
    let _ = writeln!(out, "# TYPE {header_name} {type_word}");
    if om && !fam.unit.is_empty() && fam.name.ends_with(fam.unit) {
        let _ = writeln!(out, "# UNIT {} {}", fam.name, fam.unit);
    }
    for s in &fam.series {
        match &s.value {
            Value::Counter(v) => sample(out, &fam.name, "_total", &s.labels, None, *v, None, om),
            Value::Gauge(v) => sample(out, &fam.name, "", &s.labels, None, *v, None, om),
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
                        &fam.name,
                        "_bucket",
                        &s.labels,
                        Some(("le", *le)),
                        *c as f64,
                        ex,
                        om,
                    );
                }
                sum_and_count(out, &fam.name, &s.labels, *sum, *count, om);
            }
            Value::Summary {
                quantiles,
                sum,
                count,
            } => {
                for (q, v) in quantiles {
                    sample(
                        out,
                        &fam.name,
                        "",
                        &s.labels,
                        Some(("quantile", *q)),
                        *v,
                        None,
                        om,
                    );
                }
                sum_and_count(out, &fam.name, &s.labels, *sum, *count, om);
            }
        }
    }
}

fn sum_and_count(
    out: &mut String,
    name: &str,
    labels: &[(String, String)],
    sum: f64,
    count: u64,
    om: bool,
) {
    sample(out, name, "_sum", labels, None, sum, None, om);
    sample(out, name, "_count", labels, None, count as f64, None, om);
}

/// Writes `k="v",…` pairs, values escaped.
fn label_pairs(out: &mut String, labels: &[(String, String)]) {
    for (i, (k, v)) in labels.iter().enumerate() {
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
    labels: &[(String, String)],
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
        label_pairs(out, &ex.labels);
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
    use crate::store::Family;

    #[test]
    fn counter_names_differ_between_formats() {
        let f = vec![Family::new(
            "process_cpu_time_seconds",
            "CPU",
            "seconds",
            MetricKind::Counter,
        )
        .with(&[("cpu_mode", "user")], Value::Counter(1.5))];
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
        let f = vec![Family::new("x", "a \\ b\nc \"q\"", "", MetricKind::Gauge)
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
            labels: vec![("trace_id".into(), "0af7651916cd43dd8448eb211c80319c".into())],
            value: 0.07,
            timestamp: Some(1_700_000_000.5),
        };
        let f = vec![
            Family::new("req_seconds", "h", "seconds", MetricKind::Histogram).with(
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
        let f = vec![Family::new("x", "h", "", MetricKind::Gauge)];
        assert_eq!(encode(&f, Format::Text), "");
    }
}
