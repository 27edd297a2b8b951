//! Prometheus exposition: the classic text format (0.0.4) by default, OpenMetrics 1.0 (with exemplars)
//! and the protobuf exposition (native histograms beside classic buckets, start timestamps) when the
//! scraper asks for them, each with the name escaping it asks for. Every label value and help text is
//! escaped here, whatever its origin.

pub mod escaping;
#[cfg(test)]
mod golden;
pub mod naming;
pub mod protobuf;

use std::fmt::Write;

pub use self::escaping::Escaping;
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
    /// `application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited`.
    Protobuf,
}

impl Format {
    /// Picks the format from an `Accept` header (see [`Exposition::negotiate`]).
    pub fn negotiate(accept: Option<&str>) -> Format {
        Exposition::negotiate(accept).format
    }

    /// The Content-Type of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Protobuf => {
                "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
            }
        }
    }
}

/// What one scrape is answered in: the format and the name escaping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exposition {
    /// The format.
    pub format: Format,
    /// How names outside the legacy character set are written.
    pub escaping: Escaping,
}

/// One media range of an `Accept` header that vitals can serve.
struct Offer {
    format: Format,
    q: f32,
    escaping: Option<Escaping>,
}

fn offers(accept: &str) -> Vec<Offer> {
    let mut out = Vec::new();
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let mut q = 1.0f32;
        let mut escaping = None;
        let mut proto = None;
        let mut encoding = None;
        for p in parts {
            let Some((k, v)) = p.split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches('"');
            match k.trim().to_ascii_lowercase().as_str() {
                "q" => q = v.parse().unwrap_or(0.0),
                "escaping" => escaping = Escaping::parse(v),
                "proto" => proto = Some(v.to_owned()),
                "encoding" => encoding = Some(v.to_owned()),
                _ => {}
            }
        }
        let format = match media.as_str() {
            "application/vnd.google.protobuf"
                if proto.as_deref() == Some("io.prometheus.client.MetricFamily")
                    && encoding.as_deref() == Some("delimited") =>
            {
                Format::Protobuf
            }
            "application/openmetrics-text" => Format::OpenMetrics,
            "text/plain" | "*/*" | "text/*" => Format::Text,
            _ => continue,
        };
        if q > 0.0 {
            out.push(Offer {
                format,
                q,
                escaping,
            });
        }
    }
    out
}

impl Exposition {
    /// The classic text format with the default escaping.
    pub const TEXT: Exposition = Exposition {
        format: Format::Text,
        escaping: Escaping::Underscores,
    };

    /// How many distinct expositions there are (formats × escapings), for per-exposition caches.
    pub const SLOTS: usize = 3 * Escaping::ALL.len();

    /// Picks the exposition from an `Accept` header. Protobuf only when the scraper lists the delimited
    /// `MetricFamily` encoding with a weight no lower than anything else it lists; otherwise OpenMetrics
    /// whenever it is listed, else text, as before protobuf was served. The escaping is the one the
    /// chosen media range names, `underscores` when it names none (or one the spec does not define).
    pub fn negotiate(accept: Option<&str>) -> Exposition {
        let offers = accept.map(offers).unwrap_or_default();
        let best = offers.iter().map(|o| o.q).fold(0.0f32, f32::max);
        let chosen = offers
            .iter()
            .find(|o| o.format == Format::Protobuf && o.q >= best)
            .or_else(|| offers.iter().find(|o| o.format == Format::OpenMetrics))
            .or_else(|| offers.iter().find(|o| o.format == Format::Text));
        match chosen {
            Some(o) => Exposition {
                format: o.format,
                escaping: o.escaping.unwrap_or_default(),
            },
            None => Exposition {
                format: if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
                    Format::OpenMetrics
                } else {
                    Format::Text
                },
                escaping: Escaping::Underscores,
            },
        }
    }

    /// This exposition's index in `0..SLOTS`.
    pub fn slot(self) -> usize {
        let e = Escaping::ALL
            .iter()
            .position(|x| *x == self.escaping)
            .unwrap_or(0);
        self.format as usize * Escaping::ALL.len() + e
    }

    /// The Content-Type of a response: the format's, naming the escaping when it is not the default.
    pub fn content_type(self) -> &'static str {
        use Escaping::*;
        use Format::*;
        match (self.format, self.escaping) {
            (f, Underscores) => f.content_type(),
            (Text, AllowUtf8) => "text/plain; version=0.0.4; charset=utf-8; escaping=allow-utf-8",
            (Text, Dots) => "text/plain; version=0.0.4; charset=utf-8; escaping=dots",
            (Text, Values) => "text/plain; version=0.0.4; charset=utf-8; escaping=values",
            (OpenMetrics, AllowUtf8) => {
                "application/openmetrics-text; version=1.0.0; charset=utf-8; escaping=allow-utf-8"
            }
            (OpenMetrics, Dots) => {
                "application/openmetrics-text; version=1.0.0; charset=utf-8; escaping=dots"
            }
            (OpenMetrics, Values) => {
                "application/openmetrics-text; version=1.0.0; charset=utf-8; escaping=values"
            }
            (Protobuf, AllowUtf8) => {
                "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited; escaping=allow-utf-8"
            }
            (Protobuf, Dots) => {
                "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited; escaping=dots"
            }
            (Protobuf, Values) => {
                "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited; escaping=values"
            }
        }
    }
}

/// Encodes metrics in `format`, translating their OpenTelemetry names and attribute keys here.
pub fn encode(metrics: &[Metric], format: Format) -> String {
    String::from_utf8(encode_exposition(
        metrics,
        Exposition {
            format,
            escaping: Escaping::Underscores,
        },
    ))
    .unwrap_or_default()
}

/// Encodes metrics in `exposition`: text for the text formats, bytes for protobuf.
pub fn encode_exposition(metrics: &[Metric], exposition: Exposition) -> Vec<u8> {
    let mut e = Encoder::for_exposition(exposition);
    e.start(metrics.iter().map(|m| 64 + m.points.len() * 96).sum());
    stream_metrics(metrics, &mut e);
    e.finish()
}

/// Most metric names whose translation the encoder keeps between expositions; past it the cache starts
/// over (names come from outside, but the app metric store bounds them far below this).
const NAME_CACHE_LIMIT: usize = 8192;

/// Most attribute keys whose translation the encoder keeps per metric.
const KEY_CACHE_LIMIT: usize = 64;

/// The largest exposition a remembering encoder keeps for the next one to copy lines from, and the
/// most bytes of its lines' inputs it keeps; the lines of a larger one are written anew each time (its
/// place, see `NEAR_LIMIT` in the HTTP exporter, is the render thread, where a scrape's time counts
/// less than the memory a kept copy would hold).
const REMEMBER_BYTES: usize = 256 * 1024;

/// Most lines a remembering encoder keeps the place of (24 bytes each): an exposition of
/// [`REMEMBER_BYTES`] has fewer.
const REMEMBER_LINES: usize = 16 * 1024;

/// Where one single-line point (a counter's or a gauge's) was written in the last exposition: its
/// value's exact bits, its text in the kept page, and its family and attributes in the kept inputs
/// (offsets and lengths up to [`REMEMBER_BYTES`], so 32 bits each).
#[derive(Clone, Copy)]
struct Line {
    value: u64,
    at: u32,
    len: u32,
    input_at: u32,
    input_len: u32,
}

impl Line {
    fn text(self) -> std::ops::Range<usize> {
        self.at as usize..self.at as usize + self.len as usize
    }

    fn input(self) -> std::ops::Range<usize> {
        self.input_at as usize..self.input_at as usize + self.input_len as usize
    }
}

/// What a remembering encoder keeps of its last exposition so the next one copies the lines that did
/// not change instead of writing them again (key translation, label escaping, float formatting: most
/// of an idle scrape's rendering, where nearly every line is what it was 15 s before). A line is copied
/// only when the line at the same place last time had the same family (its entry in the name cache),
/// byte-equal attribute keys and values, and a value of the same bits: an exact comparison, not a hash.
#[derive(Default)]
struct Remembered {
    /// The last exposition's text, its lines and their inputs (`family`, then each attribute's key and
    /// value, length-prefixed).
    page: String,
    lines: Vec<Line>,
    inputs: Vec<u8>,
    /// This exposition's lines and inputs so far.
    next: Vec<Line>,
    next_inputs: Vec<u8>,
    /// The current family: the name cache's generation and the family's entry there.
    family: u64,
    /// Bumped when the name cache starts over, so an entry's number never names two families.
    generation: u32,
    /// Lines copied from the last exposition in this one.
    reused: usize,
}

/// One cached translation: what a metric name becomes for one unit, kind and origin.
struct CachedName {
    unit: String,
    kind: MetricKind,
    origin: Origin,
    exposition: String,
    /// The text formats must quote `exposition`.
    quoted: bool,
    /// vitals' own families only (a fixed set, so bounded by the catalogue): the `# HELP`/`# TYPE`
    /// lines last written, with the description they were written for, and the attribute keys
    /// translated at the last exposition. A scrape of vitals' own families then escapes no description
    /// and translates no key again: both were about a third of an idle scrape's rendering.
    header: Option<(String, String)>,
    keys: Vec<CachedKey>,
}

/// One cached attribute key: its OpenTelemetry key, and its exposition name as the text formats open a
/// label with it (`name="`, the name quoted where it must be) and as protobuf writes it.
#[derive(Clone)]
struct CachedKey {
    key: String,
    text: String,
    /// The name as field 1 of a protobuf `LabelPair`.
    pb_name: Vec<u8>,
}

impl CachedKey {
    fn new(key: &str, escaping: Escaping, kind: MetricKind) -> Self {
        let label = escaping.label_name(key, kind).into_owned();
        let mut text = String::with_capacity(label.len() + 4);
        if escaping == Escaping::AllowUtf8 && !escaping::is_legacy(&label, false) {
            escaping::write_quoted(&mut text, &label);
        } else {
            text.push_str(&label);
        }
        text.push_str("=\"");
        let mut pb_name = Vec::with_capacity(label.len() + 2);
        protobuf::write_string_field(&mut pb_name, 1, &label);
        CachedKey {
            key: key.to_owned(),
            text,
            pb_name,
        }
    }
}

/// A streaming Prometheus encoder: collectors write into it through [`MetricSink`] straight from what they
/// hold. It keeps the translation of metric names across expositions and of attribute keys across the
/// points of a metric, so a scrape translates each name and key once, not once per series.
pub struct Encoder {
    format: Format,
    escaping: Escaping,
    out: String,
    /// Where each name's translations are in `cached`.
    names: crate::model::FastMap<String, Vec<usize>>,
    cached: Vec<CachedName>,
    /// The entry of `cached` whose attribute keys are in `keys` (lent for the current metric).
    lent: Option<usize>,
    /// The current metric's exposition name, kind and suffixes.
    name: String,
    /// True when the text formats must quote the current metric's name.
    quoted: bool,
    kind: MetricKind,
    value_suffix: &'static str,
    /// Header lines of the current metric, written before its first point (a metric without points
    /// writes nothing).
    header: String,
    header_written: bool,
    /// The current metric's attribute keys so far.
    keys: Vec<CachedKey>,
    /// The current point's `k="v",…`, written once and repeated on each of its samples.
    labels: String,
    points: usize,
    /// Protobuf: the exposition so far, the current family's help and its encoded `Metric`s.
    pb_out: Vec<u8>,
    pb_help: String,
    pb_metrics: Vec<u8>,
    /// The label pairs of the point being written, encoded.
    pb_labels: Vec<u8>,
    /// The last exposition's lines, for an encoder that renders the same registry again and again
    /// (text formats only).
    remembered: Option<Box<Remembered>>,
}

impl Encoder {
    /// An encoder writing `format` with the default (`underscores`) escaping.
    pub fn new(format: Format) -> Self {
        Self::for_exposition(Exposition {
            format,
            escaping: Escaping::Underscores,
        })
    }

    /// An encoder writing `exposition`.
    pub fn for_exposition(exposition: Exposition) -> Self {
        Encoder {
            format: exposition.format,
            escaping: exposition.escaping,
            out: String::new(),
            names: Default::default(),
            cached: Vec::new(),
            lent: None,
            name: String::new(),
            quoted: false,
            kind: MetricKind::Gauge,
            value_suffix: "",
            header: String::new(),
            header_written: false,
            keys: Vec::new(),
            labels: String::new(),
            points: 0,
            pb_out: Vec::new(),
            pb_help: String::new(),
            pb_metrics: Vec::new(),
            pb_labels: Vec::new(),
            remembered: None,
        }
    }

    /// This encoder, keeping each exposition it finishes (up to [`REMEMBER_BYTES`]) so the next one
    /// copies its unchanged counter and gauge lines; see [`Remembered`]. The protobuf exposition
    /// writes every point.
    pub fn remembering(mut self) -> Self {
        if self.format != Format::Protobuf {
            self.remembered = Some(Box::default());
        }
        self
    }

    /// Lines the last exposition copied from the one before (0 for an encoder not remembering).
    pub fn reused_lines(&self) -> usize {
        self.remembered.as_ref().map_or(0, |r| r.reused)
    }

    /// Begins an exposition of about `capacity` bytes.
    pub fn start(&mut self, capacity: usize) {
        if self.format == Format::Protobuf {
            self.pb_out = Vec::with_capacity(capacity);
        } else {
            self.out = String::with_capacity(capacity);
        }
        self.points = 0;
        if let Some(r) = self.remembered.as_mut() {
            r.next.clear();
            r.next_inputs.clear();
            r.reused = 0;
        }
    }

    /// Points written since [`Encoder::start`].
    pub fn points(&self) -> usize {
        self.points
    }

    /// Ends the exposition and hands over its bytes.
    pub fn finish(&mut self) -> Vec<u8> {
        match self.format {
            Format::Protobuf => return std::mem::take(&mut self.pb_out),
            Format::OpenMetrics => self.out.push_str("# EOF\n"),
            Format::Text => {}
        }
        if let Some(r) = self.remembered.as_mut() {
            if self.out.len() <= REMEMBER_BYTES {
                r.page.clear();
                r.page.push_str(&self.out);
                std::mem::swap(&mut r.lines, &mut r.next);
                std::mem::swap(&mut r.inputs, &mut r.next_inputs);
                r.next.clear();
                r.next_inputs.clear();
            } else {
                // Too large to keep: nothing is held for it, and the next exposition writes every line.
                **r = Remembered {
                    generation: r.generation,
                    ..Remembered::default()
                };
            }
        }
        std::mem::take(&mut self.out).into_bytes()
    }

    /// Writes a counter's or gauge's line, copied from the last exposition when the line at the same
    /// place there had the same family, attributes and value bits.
    fn scalar_line(&mut self, attributes: &[(&str, &str)], v: f64) {
        let suffix = self.value_suffix;
        // Past what is kept (a large exposition), lines are written and not remembered.
        let Some(r) = self
            .remembered
            .as_mut()
            .filter(|r| self.out.len() <= REMEMBER_BYTES && r.next.len() < REMEMBER_LINES)
        else {
            return self.sample(suffix, None, v, None, Some(attributes));
        };
        let (value, at, input_at) = (v.to_bits(), self.out.len(), r.next_inputs.len());
        let input = &mut r.next_inputs;
        input.extend_from_slice(&r.family.to_le_bytes());
        for (k, val) in attributes {
            for text in [k, val] {
                input.extend_from_slice(&(text.len() as u64).to_le_bytes());
                input.extend_from_slice(text.as_bytes());
            }
        }
        let input = &r.next_inputs[input_at..];
        let last = r
            .lines
            .get(r.next.len())
            .filter(|l| l.value == value && r.inputs.get(l.input()) == Some(input))
            .and_then(|l| r.page.get(l.text()));
        if let Some(text) = last {
            self.out.push_str(text);
            r.reused += 1;
        } else {
            self.sample(suffix, None, v, None, Some(attributes));
        }
        let Some(r) = self.remembered.as_mut() else {
            return;
        };
        let kept = |n: usize| {
            u32::try_from(n)
                .ok()
                .filter(|n| *n as usize <= REMEMBER_BYTES)
        };
        let line = (|| {
            Some(Line {
                value,
                at: kept(at)?,
                len: kept(self.out.len() - at)?,
                input_at: kept(input_at)?,
                input_len: kept(r.next_inputs.len() - input_at)?,
            })
        })();
        match line {
            Some(line) => r.next.push(line),
            None => r.next_inputs.truncate(input_at),
        }
    }

    /// The entry of `cached` translating `m`'s name, made when there is none.
    fn name_entry(&mut self, m: &MetricInfo<'_>) -> usize {
        if let Some(&i) = self.names.get(m.name).and_then(|v| {
            v.iter().find(|&&i| {
                let c = &self.cached[i];
                c.kind == m.kind && c.origin == m.origin && c.unit == m.unit
            })
        }) {
            return i;
        }
        if self.cached.len() >= NAME_CACHE_LIMIT {
            self.give_back_keys();
            self.names.clear();
            self.cached.clear();
            if let Some(r) = self.remembered.as_mut() {
                r.generation = r.generation.wrapping_add(1);
            }
        }
        let exposition = self.escaping.metric_name(m.name, m.unit, m.kind, m.origin);
        let quoted =
            self.escaping == Escaping::AllowUtf8 && !escaping::is_legacy(&exposition, true);
        let i = self.cached.len();
        self.cached.push(CachedName {
            unit: m.unit.to_owned(),
            kind: m.kind,
            origin: m.origin,
            exposition,
            quoted,
            header: None,
            keys: Vec::new(),
        });
        self.names.entry(m.name.to_owned()).or_default().push(i);
        i
    }

    /// Returns the attribute keys lent to the current metric to its cache entry.
    fn give_back_keys(&mut self) {
        if let Some(i) = self.lent.take() {
            if let Some(c) = self.cached.get_mut(i) {
                c.keys = std::mem::take(&mut self.keys);
            }
        }
    }

    /// The translation of attribute `key`, the `i`-th of its point, on the current metric. Points of a
    /// metric mostly share their keys in one order, so the `i`-th key seen is tried first; at most
    /// [`KEY_CACHE_LIMIT`] keys are kept per metric (keys come from outside), later ones translated each
    /// time.
    #[inline]
    fn label<'k>(
        keys: &'k mut Vec<CachedKey>,
        escaping: Escaping,
        i: usize,
        key: &str,
        kind: MetricKind,
    ) -> std::borrow::Cow<'k, CachedKey> {
        let at = match keys.get(i) {
            Some(c) if same_key(&c.key, key) => Some(i),
            _ => keys.iter().position(|c| same_key(&c.key, key)),
        };
        if let Some(at) = at {
            return std::borrow::Cow::Borrowed(&keys[at]);
        }
        let c = CachedKey::new(key, escaping, kind);
        if keys.len() < KEY_CACHE_LIMIT {
            let at = keys.len();
            keys.push(c);
            return std::borrow::Cow::Borrowed(&keys[at]);
        }
        std::borrow::Cow::Owned(c)
    }

    /// Writes a point's `k="v",…` into `out`.
    #[inline]
    fn write_labels(
        out: &mut String,
        keys: &mut Vec<CachedKey>,
        escaping: Escaping,
        kind: MetricKind,
        attributes: &[(&str, &str)],
    ) {
        for (i, (k, v)) in attributes.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&Self::label(keys, escaping, i, k, kind).text);
            escape_label_value(out, v);
            out.push('"');
        }
    }

    /// Writes one sample line. Its labels are `direct`'s when given (a point of one sample writes them
    /// straight into the exposition), else the current point's, rendered once into `labels`.
    fn sample(
        &mut self,
        suffix: &str,
        extra: Option<(&str, f64)>,
        value: f64,
        ex: Option<&Exemplar>,
        direct: Option<&[(&str, &str)]>,
    ) {
        let om = self.format == Format::OpenMetrics;
        let out = &mut self.out;
        let has_labels =
            direct.map_or(!self.labels.is_empty(), |a| !a.is_empty()) || extra.is_some();
        if self.quoted {
            out.push_str("{\"");
            escape_label_value(out, &self.name);
            out.push_str(suffix);
            out.push('"');
            if has_labels {
                out.push(',');
            }
        } else {
            out.push_str(&self.name);
            out.push_str(suffix);
            if has_labels {
                out.push('{');
            }
        }
        if let Some(attributes) = direct {
            Self::write_labels(out, &mut self.keys, self.escaping, self.kind, attributes);
        } else if has_labels {
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
        }
        if has_labels || self.quoted {
            out.push('}');
        }
        out.push(' ');
        write_value(out, value);
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
            write_value(out, ex.value);
            if let Some(ts) = ex.timestamp {
                out.push(' ');
                let _ = write!(out, "{ts:.3}");
            }
        }
        out.push('\n');
    }

    fn sum_and_count(&mut self, sum: f64, count: u64) {
        self.sample("_sum", None, sum, None, None);
        self.sample("_count", None, count as f64, None, None);
    }

    /// Protobuf: one point as a `Metric` of the current family.
    fn proto_point(&mut self, attributes: &[(&str, &str)], start: u64, value: ValueRef<'_>) {
        // Label pairs go straight into bytes: a scrape of many series allocates no string per label.
        self.pb_labels.clear();
        for (i, (k, v)) in attributes.iter().enumerate() {
            let c = Self::label(&mut self.keys, self.escaping, i, k, self.kind);
            protobuf::write_label_pair_named(&mut self.pb_labels, &c.pb_name, v);
        }
        let metric = protobuf::metric_value(self.kind, start, value);
        protobuf::push_metric(&mut self.pb_metrics, &self.pb_labels, &metric);
    }
}

/// `a == b` for the short texts attribute keys are, compared 8 bytes at a time in line: the call into
/// libc's `memcmp` that `==` makes cost more than the comparison, once per label of every series.
#[inline]
fn same_key(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let (mut x, mut y) = (a.chunks_exact(8), b.chunks_exact(8));
    let words = |c: &[u8]| <[u8; 8]>::try_from(c).map(u64::from_ne_bytes).ok();
    (&mut x).zip(&mut y).all(|(p, q)| words(p) == words(q))
        && x.remainder().iter().zip(y.remainder()).all(|(p, q)| p == q)
}

/// Writes a family name on a `# HELP`/`# TYPE` line: bare, or quoted when it is not a legacy name.
fn header_name(h: &mut String, name: &str, suffix: &str, quoted: bool) {
    if quoted {
        h.push('"');
        escape_label_value(h, name);
        h.push_str(suffix);
        h.push('"');
    } else {
        h.push_str(name);
        h.push_str(suffix);
    }
}

impl MetricSink for Encoder {
    fn begin(&mut self, m: &MetricInfo<'_>) {
        let om = self.format == Format::OpenMetrics;
        self.give_back_keys();
        let entry = self.name_entry(m);
        let own = m.origin == Origin::Vitals;
        let c = &mut self.cached[entry];
        self.name.clear();
        self.name.push_str(&c.exposition);
        self.quoted = c.quoted;
        self.kind = m.kind;
        if own {
            self.keys = std::mem::take(&mut c.keys);
            self.lent = Some(entry);
        } else {
            self.keys.clear();
        }
        let counter = m.kind == MetricKind::Counter;
        self.value_suffix = if counter { "_total" } else { "" };
        self.header_written = false;
        if let Some(r) = self.remembered.as_mut() {
            r.family = (u64::from(r.generation) << 32) | entry as u64;
        }
        if self.format == Format::Protobuf {
            self.pb_help.clear();
            self.pb_help.push_str(m.description);
            self.pb_metrics.clear();
            return;
        }
        if let Some((_, header)) = c.header.as_ref().filter(|(d, _)| d == m.description) {
            self.header.clear();
            self.header.push_str(header);
            return;
        }
        let type_word = match m.kind {
            MetricKind::Counter => "counter",
            MetricKind::UpDownCounter | MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
            MetricKind::Summary => "summary",
        };
        // In the text format a counter's family is named after its sample (`x_total`); OpenMetrics names
        // the family without the suffix.
        let header_suffix = if counter && !om { "_total" } else { "" };
        let quoted = self.quoted;
        let h = &mut self.header;
        h.clear();
        h.push_str("# HELP ");
        header_name(h, &self.name, header_suffix, quoted);
        h.push(' ');
        escape_help(h, m.description, om);
        h.push('\n');
        h.push_str("# TYPE ");
        header_name(h, &self.name, header_suffix, quoted);
        let _ = writeln!(h, " {type_word}");
        let unit = if om {
            naming::unit_word(&self.name)
        } else {
            ""
        };
        if !unit.is_empty() {
            h.push_str("# UNIT ");
            header_name(h, &self.name, "", quoted);
            let _ = writeln!(h, " {unit}");
        }
        if own {
            self.cached[entry].header = Some((m.description.to_owned(), h.clone()));
        }
    }

    fn point(&mut self, attributes: &[(&str, &str)], start: u64, value: ValueRef<'_>) {
        self.points += 1;
        if self.format == Format::Protobuf {
            self.header_written = true;
            self.proto_point(attributes, start, value);
            return;
        }
        if !self.header_written {
            self.out.push_str(&self.header);
            self.header_written = true;
        }
        let om = self.format == Format::OpenMetrics;
        let suffix = self.value_suffix;
        match value {
            ValueRef::Sum(v) | ValueRef::Gauge(v) => return self.scalar_line(attributes, v),
            ValueRef::SumWithExemplar(v, ex) => {
                return self.sample(suffix, None, v, om.then_some(ex), Some(attributes));
            }
            _ => {}
        }
        self.labels.clear();
        Self::write_labels(
            &mut self.labels,
            &mut self.keys,
            self.escaping,
            self.kind,
            attributes,
        );
        match value {
            ValueRef::Sum(_) | ValueRef::Gauge(_) | ValueRef::SumWithExemplar(..) => {}
            ValueRef::Histogram {
                buckets,
                sum,
                count,
                exemplars,
                ..
            } => {
                buckets.for_each_cumulative(|i, le, c| {
                    let ex = if om {
                        exemplars.get(i).and_then(|e| e.as_ref())
                    } else {
                        None
                    };
                    self.sample("_bucket", Some(("le", le)), c as f64, ex, None);
                });
                self.sum_and_count(sum, count);
            }
            ValueRef::Summary {
                quantiles,
                sum,
                count,
            } => {
                for (q, v) in quantiles {
                    self.sample("", Some(("quantile", *q)), *v, None, None);
                }
                self.sum_and_count(sum, count);
            }
        }
    }

    fn end(&mut self) {
        self.give_back_keys();
        if self.format != Format::Protobuf || !self.header_written {
            return;
        }
        self.name.push_str(self.value_suffix);
        protobuf::write_family(
            &mut self.pb_out,
            &self.name,
            &self.pb_help,
            self.kind,
            &self.pb_metrics,
        );
        self.pb_metrics.clear();
        self.header_written = false;
    }
}

/// Writes a label's float (`le`, `quantile`) as both formats spell it (`+Inf`, `-Inf`, `NaN`), as
/// `Display` writes it: a label's text is the series' identity, so it stays as earlier releases wrote
/// it. With `om_canonical`, whole numbers get `.0` as OpenMetrics' canonical `le`/`quantile` form.
/// Whole numbers below 2^53 take a fast path that writes what `Display` would.
fn write_float(out: &mut String, v: f64, om_canonical: bool) {
    if !write_whole(out, v, om_canonical) {
        let _ = write!(out, "{v}");
    }
}

/// Writes a sample's value: as [`write_float`] for the special values and whole numbers, other values
/// by ryu: the shortest text that parses back to the same bits, as `Display` writes, in about a tenth of
/// its instructions (callgrind: ~1,100 per value through `core::fmt`), with an exponent (`1.5e-7`) where
/// `Display` would spell out the zeros, as Go's client writes it (`1.5e-07`); both formats' parsers
/// read it.
fn write_value(out: &mut String, v: f64) {
    if !write_whole(out, v, false) {
        out.push_str(ryu::Buffer::new().format_finite(v));
    }
}

/// Writes `v` when it is not finite, a zero or a whole number below 2^53; false (nothing written)
/// otherwise.
fn write_whole(out: &mut String, v: f64, om_canonical: bool) -> bool {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v == 0.0 && v.is_sign_negative() {
        out.push_str("-0");
    } else if v.abs() < 9.0e15 && v == (v as i64) as f64 {
        if v < 0.0 {
            out.push('-');
        }
        write_u64(out, v.abs() as u64);
        if om_canonical {
            out.push_str(".0");
        }
    } else {
        return false;
    }
    true
}

/// `n` in decimal.
fn write_u64(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// Escapes a label value: backslash, double quote and newline, the three characters both formats
/// reserve. Nothing else in a value can break a line or end the string.
#[inline]
pub fn escape_label_value(out: &mut String, v: &str) {
    // Most values need nothing: one pass to see that, then one copy.
    if is_plain(v.as_bytes()) {
        out.push_str(v);
        return;
    }
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

/// True when `v` holds no backslash, double quote or newline: tested 8 bytes at a time (a byte equal to
/// `b` leaves a zero byte in `word ^ b…b`, which the subtraction borrows through).
#[inline]
fn is_plain(v: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS != 0;
    let mut chunks = v.chunks_exact(8);
    for c in &mut chunks {
        let Ok(bytes) = <[u8; 8]>::try_from(c) else {
            return false;
        };
        let w = u64::from_ne_bytes(bytes);
        if has_zero_byte(w ^ (ONES * u64::from(b'\\')))
            || has_zero_byte(w ^ (ONES * u64::from(b'"')))
            || has_zero_byte(w ^ (ONES * u64::from(b'\n')))
        {
            return false;
        }
    }
    // The last 0 to 7 bytes as one word, zero-filled: a zero byte matches none of the three.
    let rest = chunks
        .remainder()
        .iter()
        .enumerate()
        .fold(0u64, |w, (i, b)| w | u64::from(*b) << (8 * i));
    !(has_zero_byte(rest ^ (ONES * u64::from(b'\\')))
        || has_zero_byte(rest ^ (ONES * u64::from(b'"')))
        || has_zero_byte(rest ^ (ONES * u64::from(b'\n'))))
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

    /// One exposition of `metrics` by `encoder` (kept between calls), as a fresh start would size it.
    fn expose(encoder: &mut Encoder, metrics: &[Metric]) -> Vec<u8> {
        encoder.start(1024);
        stream_metrics(metrics, encoder);
        encoder.finish()
    }

    #[test]
    fn an_exposition_too_large_to_keep_is_written_whole_each_time() {
        let mut big = Metric::new("big", "", "", MetricKind::Gauge);
        for i in 0..12_000 {
            big.push(&[("series", &format!("s{i:05}"))], Value::Gauge(i as f64));
        }
        let small =
            vec![Metric::new("small", "", "", MetricKind::Gauge).with(&[], Value::Gauge(2.0))];
        let big = vec![big];
        let mut kept = Encoder::new(Format::Text).remembering();
        let first = expose(&mut kept, &big);
        assert!(first.len() > REMEMBER_BYTES);
        assert_eq!(expose(&mut kept, &big), first);
        assert_eq!(
            kept.reused_lines(),
            0,
            "nothing of a large exposition is kept"
        );
        assert!(kept
            .remembered
            .as_ref()
            .is_some_and(|r| r.page.capacity() == 0
                && r.lines.capacity() == 0
                && r.inputs.capacity() == 0));
        let fresh = expose(&mut Encoder::new(Format::Text), &small);
        assert_eq!(expose(&mut kept, &small), fresh);
        assert_eq!(expose(&mut kept, &small), fresh);
        assert_eq!(kept.reused_lines(), 1);
    }

    #[test]
    fn a_remembered_line_is_not_copied_into_a_family_that_took_its_name_entry() {
        // A full name cache starts over: the first new family then takes entry 0, which named another
        // family in the last exposition, at the same place, with the same (no) attributes and value.
        let gauges = |names: &mut dyn Iterator<Item = String>| -> Vec<Metric> {
            names
                .map(|n| Metric::new(n, "", "", MetricKind::Gauge).with(&[], Value::Gauge(1.0)))
                .collect()
        };
        let half = NAME_CACHE_LIMIT / 2;
        let mut kept = Encoder::new(Format::Text).remembering();
        expose(&mut kept, &gauges(&mut (0..half).map(|i| format!("n{i}"))));
        // `n0` (entry 0) first again, then names enough to fill the cache.
        let names = std::iter::once(0).chain(half..NAME_CACHE_LIMIT);
        expose(&mut kept, &gauges(&mut names.map(|i| format!("n{i}"))));
        assert_eq!(kept.reused_lines(), 1, "n0's line is copied");
        let got = String::from_utf8(expose(
            &mut kept,
            &gauges(&mut std::iter::once("zz".into())),
        ))
        .unwrap();
        assert_eq!(got, "# HELP zz \n# TYPE zz gauge\nzz 1\n");
    }

    #[test]
    fn a_remembering_encoder_writes_what_a_fresh_one_writes_and_copies_unchanged_lines() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let names = ["a.b", "c", "dd.e", "f"];
        let kinds = [
            MetricKind::Counter,
            MetricKind::Gauge,
            MetricKind::UpDownCounter,
            MetricKind::Histogram,
        ];
        let keys = ["k", "k2", "odd key", "le"];
        let texts = ["x", "y", "", "with \"quote\"\nand newline", "ü"];
        let numbers = [0.0, -0.0, 1.0, 1.5, 1e21, f64::NAN, f64::INFINITY, 7.0];
        let point = |next: &mut dyn FnMut(u64) -> u64, kind: MetricKind| {
            let n = next(3) as usize;
            let attrs: Vec<(&str, &str)> = (0..n)
                .map(|i| {
                    (
                        keys[(i + next(2) as usize) % keys.len()],
                        texts[next(5) as usize],
                    )
                })
                .collect();
            let v = numbers[next(8) as usize];
            let value = match kind {
                MetricKind::Counter => Value::Sum(v),
                MetricKind::Histogram => Value::Histogram {
                    buckets: vec![(1.0, next(3)), (f64::INFINITY, 5)],
                    sum: v,
                    count: 5,
                    exemplars: Vec::new(),
                    native: None,
                },
                _ => Value::Gauge(v),
            };
            let mut m = Metric::new("x", "", "", kind);
            m.push(&attrs, value);
            m.points.remove(0)
        };
        let mut metrics: Vec<Metric> = Vec::new();
        for format in [Format::Text, Format::OpenMetrics] {
            for escaping in [Escaping::Underscores, Escaping::AllowUtf8] {
                let exposition = Exposition { format, escaping };
                let mut kept = Encoder::for_exposition(exposition).remembering();
                let mut reused = 0;
                for step in 0..300 {
                    // Every fourth step changes nothing: every counter and gauge line must be copied.
                    let unchanged = step % 4 == 3;
                    if !unchanged {
                        match next(6) {
                            0 if metrics.len() < 6 => {
                                let kind = kinds[next(4) as usize];
                                let mut m = Metric::new(
                                    names[next(4) as usize],
                                    "help \\ text",
                                    ["", "s", "By"][next(3) as usize],
                                    kind,
                                );
                                for _ in 0..next(4) {
                                    m.points.push(point(&mut next, kind));
                                }
                                let at = next(metrics.len() as u64 + 1) as usize;
                                metrics.insert(at, m);
                            }
                            1 if !metrics.is_empty() => {
                                let at = next(metrics.len() as u64) as usize;
                                metrics.remove(at);
                            }
                            _ => {
                                for m in metrics.iter_mut() {
                                    let kind = m.kind;
                                    for p in m.points.iter_mut() {
                                        if next(3) == 0 {
                                            *p = point(&mut next, kind);
                                        } else if next(3) == 0 {
                                            if let Value::Sum(v) | Value::Gauge(v) = &mut p.value {
                                                *v += 1.0;
                                            }
                                        }
                                    }
                                    if next(4) == 0 {
                                        m.points.push(point(&mut next, kind));
                                    } else if next(4) == 0 && !m.points.is_empty() {
                                        m.points.remove(0);
                                    }
                                }
                            }
                        }
                    }
                    let want = expose(&mut Encoder::for_exposition(exposition), &metrics);
                    let got = expose(&mut kept, &metrics);
                    assert_eq!(
                        String::from_utf8_lossy(&got),
                        String::from_utf8_lossy(&want),
                        "{format:?} {escaping:?} step {step}"
                    );
                    let scalar = metrics
                        .iter()
                        .flat_map(|m| &m.points)
                        .filter(|p| matches!(p.value, Value::Sum(_) | Value::Gauge(_)))
                        .count();
                    if unchanged {
                        assert_eq!(kept.reused_lines(), scalar, "{format:?} step {step}");
                    }
                    reused += kept.reused_lines();
                }
                assert!(
                    reused > 300,
                    "{format:?} {escaping:?}: {reused} lines copied"
                );
            }
        }
    }

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
                    native: None,
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
    fn plain_values_are_told_from_ones_to_escape() {
        for v in ["", "a", "/orders/1234", "0123456789abcdef", "crème brûlée"] {
            assert!(is_plain(v.as_bytes()), "{v:?}");
        }
        for bad in ["\\", "\"", "\n"] {
            for at in 0..20 {
                let v = format!("{}{bad}{}", "x".repeat(at), "y".repeat(20 - at));
                assert!(!is_plain(v.as_bytes()), "{v:?}");
            }
        }
        // Bytes next to the three in value, and bytes with the high bit set, are plain.
        let near: Vec<u8> =
            [0x09u8, 0x0b, 0x21, 0x23, 0x5b, 0x5d, 0x80, 0xdc, 0xa2, 0x8a].repeat(3);
        assert!(is_plain(&near));
    }

    #[test]
    fn values_are_written_shortest_and_parse_back_to_their_bits_and_label_floats_as_before() {
        let values = [
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.5,
            -2.5,
            1e15,
            8.999_999_999_999_999e15,
            9.0e15,
            -9.0e15,
            9_007_199_254_740_993.0,
            1e300,
            4.9e-324,
            1.0 / 3.0,
            3e-9,
            0.1 + 0.2,
            -123.456,
        ];
        for v in values {
            let mut out = String::new();
            write_value(&mut out, v);
            let back: f64 = out.parse().unwrap_or_else(|e| panic!("{out}: {e}"));
            assert_eq!(back.to_bits(), v.to_bits(), "{v:e} written as {out}");
            // Go's ParseFloat (Prometheus) and Python's float() read no more than Rust's parser does:
            // digits, one point, an `e` exponent, a sign.
            assert!(
                out.bytes()
                    .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'-')),
                "{out}"
            );
            // No more digits than the shortest round trip needs (Display's count of significant digits).
            let digits = |t: &str| {
                let mantissa = t.split('e').next().unwrap_or(t);
                mantissa
                    .trim_start_matches('-')
                    .replace('.', "")
                    .trim_matches('0')
                    .len()
            };
            assert!(
                digits(&out) <= digits(&format!("{v:e}")).max(1),
                "{v:e}: {out}"
            );
        }
        // Whole numbers below 2^53 as integers, and the two spellings of zero.
        for (v, want) in [
            (0.0, "0"),
            (-0.0, "-0"),
            (42.0, "42"),
            (-7.0, "-7"),
            (1e15, "1000000000000000"),
        ] {
            let mut out = String::new();
            write_value(&mut out, v);
            assert_eq!(out, want);
        }
        let mut out = String::new();
        write_value(&mut out, 3e-9);
        assert_eq!(out, "3e-9");
        // A label's float is its series' identity: written as Display writes it, as before.
        for v in values {
            let mut out = String::new();
            write_float(&mut out, v, false);
            assert_eq!(out, format!("{v}"), "{v:e}");
        }
    }

    #[test]
    fn same_key_is_equality() {
        let keys = [
            "",
            "a",
            "b",
            "http.rou",
            "http.rov",
            "http.route",
            "http.routf",
            "k8s.pod.name",
            "k9s.pod.name",
            "0123456789abcdef",
            "0123456789abcdeg",
        ];
        for a in keys {
            for b in keys {
                assert_eq!(same_key(a, b), a == b, "{a:?} {b:?}");
            }
        }
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
