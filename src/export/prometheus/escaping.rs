//! UTF-8 names and the `escaping=` schemes of Prometheus' content negotiation. A scraper that sends
//! `escaping=allow-utf-8` gets the app's metrics under their OpenTelemetry names (dots kept, with the
//! unit and `_total` suffixes Prometheus' `NoUTF8EscapingWithSuffixes` OTLP translation also adds, so a
//! metric has one name whether it is scraped or pushed) and attributes under their own keys; `underscores`
//! (the default) is the classic translation; `dots` and `values` escape the UTF-8 name as the escaping
//! spec (and prometheus/common's `EscapeName`) writes them. vitals' own names are legacy names already.

use std::borrow::Cow;

use super::naming::{self, MAX_LABEL_NAME};
use crate::model::{MetricKind, Origin};

/// How names that are not legacy Prometheus names are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Escaping {
    /// The classic translation: every character outside `[a-zA-Z0-9_:]` becomes `_`.
    #[default]
    Underscores,
    /// UTF-8 names as they are, quoted in the text formats where they need it.
    AllowUtf8,
    /// `.` becomes `_dot_`, `_` becomes `__`, anything else outside the legacy set `__`.
    Dots,
    /// Names that are not legacy get `U__`, `_` becomes `__`, anything else `_<hex code point>_`.
    Values,
}

impl Escaping {
    /// Every scheme, in slot order.
    pub const ALL: [Escaping; 4] = [
        Escaping::Underscores,
        Escaping::AllowUtf8,
        Escaping::Dots,
        Escaping::Values,
    ];

    /// The scheme named by an `escaping=` parameter; None for a name the spec does not define.
    pub fn parse(v: &str) -> Option<Escaping> {
        match v.trim().trim_matches('"') {
            "underscores" => Some(Escaping::Underscores),
            "allow-utf-8" => Some(Escaping::AllowUtf8),
            "dots" => Some(Escaping::Dots),
            "values" => Some(Escaping::Values),
            _ => None,
        }
    }

    /// The parameter value naming this scheme.
    pub fn as_str(self) -> &'static str {
        match self {
            Escaping::Underscores => "underscores",
            Escaping::AllowUtf8 => "allow-utf-8",
            Escaping::Dots => "dots",
            Escaping::Values => "values",
        }
    }

    /// The name a metric is exposed under in this scheme (a counter's without `_total`).
    pub fn metric_name(self, name: &str, unit: &str, kind: MetricKind, origin: Origin) -> String {
        match self {
            Escaping::Underscores => naming::exposition_name(name, unit, kind, origin),
            _ => self.escape(&utf8_metric_name(name, unit, kind, origin), true),
        }
    }

    /// The name an attribute is exposed under in this scheme on a metric of `kind`.
    pub fn label_name<'a>(self, key: &'a str, kind: MetricKind) -> Cow<'a, str> {
        match self {
            Escaping::Underscores => naming::exposition_label(key, kind),
            _ => Cow::Owned(self.escape(&utf8_label_name(key, kind), false)),
        }
    }

    /// Escapes a UTF-8 name by this scheme; `metric` allows `:` as a legacy character.
    fn escape(self, name: &str, metric: bool) -> String {
        let legacy = is_legacy(name, metric);
        match self {
            Escaping::AllowUtf8 => name.to_owned(),
            Escaping::Underscores if legacy => name.to_owned(),
            Escaping::Underscores => name
                .chars()
                .enumerate()
                .map(|(i, c)| if legacy_char(c, i, metric) { c } else { '_' })
                .collect(),
            Escaping::Dots => {
                let mut out = String::with_capacity(name.len() + 8);
                for (i, c) in name.chars().enumerate() {
                    match c {
                        '_' => out.push_str("__"),
                        '.' => out.push_str("_dot_"),
                        c if legacy_char(c, i, metric) => out.push(c),
                        _ => out.push_str("__"),
                    }
                }
                out
            }
            Escaping::Values if legacy => name.to_owned(),
            Escaping::Values => {
                let mut out = String::with_capacity(name.len() + 16);
                out.push_str("U__");
                for (i, c) in name.chars().enumerate() {
                    match c {
                        '_' => out.push_str("__"),
                        c if legacy_char(c, i, metric) => out.push(c),
                        c => {
                            use std::fmt::Write;
                            let _ = write!(out, "_{:x}_", c as u32);
                        }
                    }
                }
                out
            }
        }
    }
}

fn legacy_char(c: char, i: usize, metric: bool) -> bool {
    c.is_ascii_alphabetic() || c == '_' || (metric && c == ':') || (i > 0 && c.is_ascii_digit())
}

/// True for a name of the legacy character set (`[a-zA-Z_:][a-zA-Z0-9_:]*` for metrics, no `:` in labels).
pub fn is_legacy(name: &str, metric: bool) -> bool {
    !name.is_empty()
        && name
            .chars()
            .enumerate()
            .all(|(i, c)| legacy_char(c, i, metric))
}

/// The UTF-8 name of a metric: vitals' own keep their catalogue names; the app's keep their OpenTelemetry
/// name with the unit suffix (`http.server.request.duration` in `s` → `http.server.request.duration_seconds`)
/// and, for the app's `process.*`, the `app_` prefix that keeps them apart from the target's families.
pub fn utf8_metric_name(name: &str, unit: &str, kind: MetricKind, origin: Origin) -> String {
    if origin == Origin::Vitals {
        return naming::exposition_name(name, unit, kind, origin);
    }
    // The suffixes the classic translation adds, found by comparing it with the name's own tokens.
    let legacy = naming::metric_name(name, unit, naming::shape(kind));
    let tokens: Vec<&str> = name
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|t| !t.is_empty())
        .collect();
    let legacy_tokens: Vec<&str> = legacy.split('_').filter(|t| !t.is_empty()).collect();
    let mut out = if name.is_empty() {
        "_".to_owned()
    } else {
        name.to_owned()
    };
    if legacy_tokens.len() > tokens.len() && legacy_tokens.starts_with(&tokens) {
        for t in &legacy_tokens[tokens.len()..] {
            out.push('_');
            out.push_str(t);
        }
    }
    if kind == MetricKind::Counter {
        // The encoders add `_total`; a name that ends with it already would repeat it.
        for end in ["_total", ".total"] {
            if let Some(cut) = out.strip_suffix(end) {
                out.truncate(cut.len());
            }
        }
    }
    if legacy.starts_with("process_") && !legacy.starts_with("process_runtime_") {
        out.insert_str(0, "app_");
    }
    out
}

/// The UTF-8 name of an attribute: its own key, cut to [`MAX_LABEL_NAME`] characters, except where
/// Prometheus reserves the name (`__…`, and `le`/`quantile` on the kinds that write them), which keeps
/// the classic rule.
pub fn utf8_label_name(key: &str, kind: MetricKind) -> String {
    if key.is_empty() || key.starts_with("__") || is_legacy(key, false) {
        return naming::exposition_label(key, kind).into_owned();
    }
    key.chars().take(MAX_LABEL_NAME).collect()
}

/// Writes `name` as the text formats spell a name: bare when legacy, else in double quotes with `\`,
/// `"` and newline escaped.
pub fn write_quoted(out: &mut String, name: &str) {
    out.push('"');
    super::escape_label_value(out, name);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names_keep_their_otel_form_with_suffixes() {
        let n = |name, unit, kind| utf8_metric_name(name, unit, kind, Origin::App);
        assert_eq!(
            n("http.server.request.duration", "s", MetricKind::Histogram),
            "http.server.request.duration_seconds"
        );
        assert_eq!(n("orders.placed", "", MetricKind::Counter), "orders.placed");
        assert_eq!(n("orders_total", "", MetricKind::Counter), "orders");
        assert_eq!(
            n("cpu.utilization", "1", MetricKind::Gauge),
            "cpu.utilization_ratio"
        );
        assert_eq!(
            n("latency_seconds", "s", MetricKind::Histogram),
            "latency_seconds"
        );
        assert_eq!(
            n("process.cpu.time", "s", MetricKind::Counter),
            "app_process.cpu.time_seconds"
        );
        assert_eq!(
            utf8_metric_name("vitals.gc.pause", "s", MetricKind::Counter, Origin::Vitals),
            "vitals_gc_pause_seconds"
        );
    }

    #[test]
    fn schemes_escape_as_the_spec_says() {
        let name = "http.server.request.duration_seconds";
        assert_eq!(Escaping::AllowUtf8.escape(name, true), name);
        assert_eq!(
            Escaping::Underscores.escape(name, true),
            "http_server_request_duration_seconds"
        );
        assert_eq!(
            Escaping::Dots.escape(name, true),
            "http_dot_server_dot_request_dot_duration__seconds"
        );
        assert_eq!(
            Escaping::Values.escape(name, true),
            "U__http_2e_server_2e_request_2e_duration__seconds"
        );
        // Legacy names are left alone except by `dots`, which doubles their underscores.
        assert_eq!(Escaping::Values.escape("a_b", true), "a_b");
        assert_eq!(Escaping::Dots.escape("a_b", true), "a__b");
        assert_eq!(Escaping::Values.escape("ü", false), "U___fc_");
        assert_eq!(Escaping::Underscores.escape("1a", false), "_a");
    }

    #[test]
    fn reserved_labels_keep_the_classic_rule() {
        assert_eq!(
            utf8_label_name("http.route", MetricKind::Gauge),
            "http.route"
        );
        assert_eq!(
            utf8_label_name("__name__", MetricKind::Gauge),
            "key__name__"
        );
        assert_eq!(utf8_label_name("le", MetricKind::Histogram), "exported_le");
        assert_eq!(utf8_label_name("", MetricKind::Gauge), "key_empty");
    }

    #[test]
    fn parameters() {
        for e in Escaping::ALL {
            assert_eq!(Escaping::parse(e.as_str()), Some(e));
        }
        assert_eq!(Escaping::parse("utf-8"), None);
    }
}
