//! Prometheus exposition: the classic text format (0.0.4) by default and OpenMetrics 1.0 (with exemplars)
//! when the scraper asks for it. Every label value and help text is escaped here, whatever its origin.

pub mod naming;

use std::collections::HashMap;
use std::fmt::Write;

use crate::model::{
    stream_metrics, Exemplar, Metric, MetricInfo, MetricKind, MetricSink, Origin, ValueRef,
};

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
    let mut e = Encoder::new(format);
    e.start(metrics.iter().map(|m| 64 + m.points.len() * 96).sum());
    stream_metrics(metrics, &mut e);
    e.finish()
}

/// Most metric names whose translation the encoder keeps between expositions; past it the cache starts
/// over (names come from outside, but the app metric store bounds them far below this).
const NAME_CACHE_LIMIT: usize = 8192;

/// Most attribute keys whose translation the encoder keeps per metric.
const KEY_CACHE_LIMIT: usize = 64;

/// One cached translation: what a metric name becomes for one unit, kind and origin.
struct CachedName {
    unit: String,
    kind: MetricKind,
    origin: Origin,
    exposition: String,
}

/// A streaming Prometheus encoder: collectors write into it through [`MetricSink`] straight from what they
/// hold. It keeps the translation of metric names across expositions and of attribute keys across the
/// points of a metric, so a scrape translates each name and key once, not once per series.
pub struct Encoder {
    format: Format,
    out: String,
    names: HashMap<String, Vec<CachedName>>,
    /// The current metric's exposition name, kind and suffixes.
    name: String,
    kind: MetricKind,
    value_suffix: &'static str,
    /// Header lines of the current metric, written before its first point (a metric without points
    /// writes nothing).
    header: String,
    header_written: bool,
    /// `(OpenTelemetry key, label name)` of the current metric's attributes so far.
    keys: Vec<(String, String)>,
    /// The current point's `k="v",…`, written once and repeated on each of its samples.
    labels: String,
    points: usize,
}

impl Encoder {
    /// An encoder writing `format`.
    pub fn new(format: Format) -> Self {
        Encoder {
            format,
            out: String::new(),
            names: HashMap::new(),
            name: String::new(),
            kind: MetricKind::Gauge,
            value_suffix: "",
            header: String::new(),
            header_written: false,
            keys: Vec::new(),
            labels: String::new(),
            points: 0,
        }
    }

    /// Begins an exposition of about `capacity` bytes.
    pub fn start(&mut self, capacity: usize) {
        self.out = String::with_capacity(capacity);
        self.points = 0;
    }

    /// Points written since [`Encoder::start`].
    pub fn points(&self) -> usize {
        self.points
    }

    /// Ends the exposition and hands over its text.
    pub fn finish(&mut self) -> String {
        if self.format == Format::OpenMetrics {
            self.out.push_str("# EOF\n");
        }
        std::mem::take(&mut self.out)
    }

    fn exposition_name(&mut self, m: &MetricInfo<'_>) -> String {
        if let Some(c) = self.names.get(m.name).and_then(|v| {
            v.iter()
                .find(|c| c.kind == m.kind && c.origin == m.origin && c.unit == m.unit)
        }) {
            return c.exposition.clone();
        }
        if self.names.len() >= NAME_CACHE_LIMIT {
            self.names.clear();
        }
        let exposition = naming::exposition_name(m.name, m.unit, m.kind, m.origin);
        self.names
            .entry(m.name.to_owned())
            .or_default()
            .push(CachedName {
                unit: m.unit.to_owned(),
                kind: m.kind,
                origin: m.origin,
                exposition: exposition.clone(),
            });
        exposition
    }

    /// Writes the label name of attribute `key`, the `i`-th of its point, on the current metric. Points
    /// of a metric mostly share their keys in one order, so the `i`-th key seen is tried first; at most
    /// [`KEY_CACHE_LIMIT`] keys are kept per metric (keys come from outside), later ones translated each
    /// time.
    fn write_label(
        keys: &mut Vec<(String, String)>,
        out: &mut String,
        i: usize,
        key: &str,
        kind: MetricKind,
    ) {
        let cached = match keys.get(i) {
            Some((k, label)) if k == key => Some(label),
            _ => keys.iter().find(|(k, _)| k == key).map(|(_, label)| label),
        };
        if let Some(label) = cached {
            out.push_str(label);
            return;
        }
        let label = naming::exposition_label(key, kind);
        out.push_str(&label);
        if keys.len() < KEY_CACHE_LIMIT {
            keys.push((key.to_owned(), label.into_owned()));
        }
    }

    fn sample(
        &mut self,
        suffix: &str,
        extra: Option<(&str, f64)>,
        value: f64,
        ex: Option<&Exemplar>,
    ) {
        let om = self.format == Format::OpenMetrics;
        let out = &mut self.out;
        out.push_str(&self.name);
        out.push_str(suffix);
        if !self.labels.is_empty() || extra.is_some() {
            out.push('{');
            out.push_str(&self.labels);
            if let Some((k, v)) = extra {
                if !self.labels.is_empty() {
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
        if let Some(ex) = ex {
            out.push_str(" # {");
            for (i, (k, v)) in ex.attributes.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&naming::exposition_label(k, MetricKind::Gauge));
                out.push_str("=\"");
                escape_label_value(out, v);
                out.push('"');
            }
            out.push_str("} ");
            write_float(out, ex.value, false);
            if let Some(ts) = ex.timestamp {
                out.push(' ');
                let _ = write!(out, "{ts:.3}");
            }
        }
        out.push('\n');
    }

    fn sum_and_count(&mut self, sum: f64, count: u64) {
        self.sample("_sum", None, sum, None);
        self.sample("_count", None, count as f64, None);
    }
}

impl MetricSink for Encoder {
    fn begin(&mut self, m: &MetricInfo<'_>) {
        let om = self.format == Format::OpenMetrics;
        self.name = self.exposition_name(m);
        self.kind = m.kind;
        self.keys.clear();
        let type_word = match m.kind {
            MetricKind::Counter => "counter",
            MetricKind::UpDownCounter | MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
            MetricKind::Summary => "summary",
        };
        // In the text format a counter's family is named after its sample (`x_total`); OpenMetrics names
        // the family without the suffix.
        let counter = m.kind == MetricKind::Counter;
        let header_suffix = if counter && !om { "_total" } else { "" };
        self.value_suffix = if counter { "_total" } else { "" };
        let h = &mut self.header;
        h.clear();
        h.push_str("# HELP ");
        h.push_str(&self.name);
        h.push_str(header_suffix);
        h.push(' ');
        escape_help(h, m.description, om);
        h.push('\n');
        let _ = writeln!(h, "# TYPE {}{header_suffix} {type_word}", self.name);
        let unit = naming::unit_word(&self.name);
        if om && !unit.is_empty() {
            let _ = writeln!(h, "# UNIT {} {unit}", self.name);
        }
        self.header_written = false;
    }

    fn point(&mut self, attributes: &[(&str, &str)], _start: u64, value: ValueRef<'_>) {
        if !self.header_written {
            self.out.push_str(&self.header);
            self.header_written = true;
        }
        self.points += 1;
        let om = self.format == Format::OpenMetrics;
        self.labels.clear();
        for (i, (k, v)) in attributes.iter().enumerate() {
            if i > 0 {
                self.labels.push(',');
            }
            Self::write_label(&mut self.keys, &mut self.labels, i, k, self.kind);
            self.labels.push_str("=\"");
            escape_label_value(&mut self.labels, v);
            self.labels.push('"');
        }
        match value {
            ValueRef::Sum(v) | ValueRef::Gauge(v) => {
                let suffix = self.value_suffix;
                self.sample(suffix, None, v, None)
            }
            ValueRef::SumWithExemplar(v, ex) => {
                let suffix = self.value_suffix;
                self.sample(suffix, None, v, om.then_some(ex))
            }
            ValueRef::Histogram {
                buckets,
                sum,
                count,
                exemplars,
            } => {
                buckets.for_each_cumulative(|i, le, c| {
                    let ex = if om {
                        exemplars.get(i).and_then(|e| e.as_ref())
                    } else {
                        None
                    };
                    self.sample("_bucket", Some(("le", le)), c as f64, ex);
                });
                self.sum_and_count(sum, count);
            }
            ValueRef::Summary {
                quantiles,
                sum,
                count,
            } => {
                for (q, v) in quantiles {
                    self.sample("", Some(("quantile", *q)), *v, None);
                }
                self.sum_and_count(sum, count);
            }
        }
    }

    fn end(&mut self) {}
}

/// Writes a float as both formats spell it (`+Inf`, `-Inf`, `NaN`). With `om_canonical`, whole numbers
/// get `.0` as OpenMetrics' canonical `le`/`quantile` form. Whole numbers below 2^53 take a fast path
/// that writes what `Display` would.
fn write_float(out: &mut String, v: f64, om_canonical: bool) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 9.0e15 && !(v == 0.0 && v.is_sign_negative()) {
        if v < 0.0 {
            out.push('-');
        }
        write_u64(out, v.abs() as u64);
        if om_canonical {
            out.push_str(".0");
        }
    } else {
        let _ = write!(out, "{v}");
    }
}

/// `n` in decimal.
fn write_u64(out: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    out.push_str(std::str::from_utf8(&buf[at..]).unwrap_or("0"));
}

/// Escapes a label value: backslash, double quote and newline, the three characters both formats
/// reserve. Nothing else in a value can break a line or end the string.
pub fn escape_label_value(out: &mut String, v: &str) {
    let mut rest = v;
    while let Some(at) = rest.bytes().position(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        out.push_str(&rest[..at]);
        out.push_str(match rest.as_bytes()[at] {
            b'\\' => "\\\\",
            b'"' => "\\\"",
            _ => "\\n",
        });
        rest = &rest[at + 1..];
    }
    out.push_str(rest);
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
    use crate::model::{Metric, Value};

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
    fn many_distinct_attribute_keys_are_all_translated() {
        // More keys than the per-metric cache holds, in changing positions.
        let mut m = Metric::new("x", "h", "", MetricKind::Histogram);
        for i in 0..200 {
            let key = format!("k.{i}");
            m.push(&[("le", "a"), (&key, "v")], Value::Gauge(1.0));
        }
        let text = encode(&[m], Format::Text);
        for i in 0..200 {
            assert!(
                text.contains(&format!("x{{exported_le=\"a\",k_{i}=\"v\"}} 1\n")),
                "{i}"
            );
        }
        assert_eq!(text.lines().count(), 202);
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
