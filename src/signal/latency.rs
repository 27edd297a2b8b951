//! Is it slow? Request rate, errors and latency (RED) from SERVER and CONSUMER spans, as the
//! `vitals_request_duration_seconds` histogram with exemplars, bounded per label set.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use std::borrow::Cow;

use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};

use crate::bounded::{LimitedMap, OverflowCounter};
use crate::catalogue;
use crate::catalogue::OVERFLOW_LABEL;
use crate::model::{Collector, Exemplar, Exponential, Metric, Value};
use crate::pipeline::attributes::{self, cut_str};
use crate::pipeline::trace_view::{
    Attribute, AttributePick, AttributeValue, ResourceSpansView, SpanView,
};
use crate::pipeline::{Consumer, PartialSuccess, TraceView};

/// Bucket upper bounds in seconds: 0.5 ms to 60 s, with 0.1 s and 0.4 s (Apdex T = 0.1 s and 4T).
pub const BUCKETS: [f64; 21] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
    1.5, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const SLOTS: usize = BUCKETS.len() + 1;

/// Starting scale of RED's exponential (native) buckets: 16 buckets per doubling, each 4.4% wider than
/// the one below, so a quantile read from them is off by at most that and, interpolated, by far less.
pub const NATIVE_SCALE: i32 = 4;

/// Most exponential buckets a RED series keeps: 160 (OpenTelemetry's default) covers 10 doublings at
/// scale 4 (1 ms to 1 s); a wider spread lowers the scale (to 3: 1 ms to 1000 s), never the count bound.
pub const NATIVE_MAX_BUCKETS: usize = 160;

/// Durations at or below 2^-20 s (about 1 µs) count in the zero bucket: below a span's clock resolution.
pub const NATIVE_ZERO_THRESHOLD: f64 = 1.0 / 1_048_576.0;

/// The `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// A SERVER span: a request this service answered.
    Server,
    /// A CONSUMER span: a message this service processed.
    Consumer,
}

impl RequestKind {
    fn label(self) -> &'static str {
        match self {
            RequestKind::Server => "server",
            RequestKind::Consumer => "consumer",
        }
    }
}

/// What RED needs of one span.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpanFacts<'a> {
    /// Operation: `http.route`, else `rpc.service/rpc.method`, else the HTTP method alone on a server span
    /// (see [`http_method_operation`]), else the span name.
    pub operation: Operation<'a>,
    /// Server or consumer.
    pub kind: RequestKind,
    /// True for status ERROR, or an HTTP status >= 500 on a server span.
    pub error: bool,
    /// end − start, seconds.
    pub duration: f64,
    /// Trace id (16 bytes when valid).
    pub trace_id: &'a [u8],
    /// Span id (8 bytes when valid).
    pub span_id: &'a [u8],
    /// End time, Unix seconds.
    pub end_unix: f64,
}

/// An operation name, possibly in two parts (`rpc.service` and `rpc.method`) joined without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation<'a> {
    /// One string.
    Single(&'a str),
    /// `service/method`.
    Rpc(&'a str, &'a str),
}

/// The operation of an HTTP server span that has no `http.route`: the method alone, as the semantic
/// conventions name such spans, because the span name of a routeless request may hold the raw path (one
/// series per scanned URL). Methods outside the known set become `_OTHER`, so the label stays bounded.
pub fn http_method_operation(method: &str) -> &'static str {
    const KNOWN: [&str; 10] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY",
    ];
    KNOWN
        .iter()
        .find(|k| k.eq_ignore_ascii_case(method))
        .copied()
        .unwrap_or("_OTHER")
}

/// The first attribute of each key RED reads, found in one pass over a span's attributes (the first
/// attribute with a key decides, as a lookup by key would); a value is read only when RED needs it.
#[derive(Default)]
struct RequestAttributes<'a> {
    route: Option<Attribute<'a>>,
    rpc_service: Option<Attribute<'a>>,
    rpc_method: Option<Attribute<'a>>,
    method: Option<Attribute<'a>>,
    old_method: Option<Attribute<'a>>,
    status: Option<Attribute<'a>>,
    old_status: Option<Attribute<'a>>,
}

impl<'a> RequestAttributes<'a> {
    fn of(span: &SpanView<'a>) -> Self {
        let mut found = RequestAttributes::default();
        for a in span.attributes() {
            found.offer(a);
        }
        found
    }
}

impl<'a> AttributePick<'a> for RequestAttributes<'a> {
    fn wanted(kind: i32) -> bool {
        // 0 is also a kind not read yet.
        kind == 0 || request_kind(kind).is_some()
    }

    #[inline]
    fn offer(&mut self, a: Attribute<'a>) {
        let found = self;
        {
            let slot = match a.key {
                b"http.route" => &mut found.route,
                b"rpc.service" => &mut found.rpc_service,
                b"rpc.method" => &mut found.rpc_method,
                b"http.request.method" => &mut found.method,
                b"http.method" => &mut found.old_method,
                b"http.response.status_code" => &mut found.status,
                b"http.status_code" => &mut found.old_status,
                _ => return,
            };
            if slot.is_none() {
                *slot = Some(a);
            }
        }
    }
}

/// RED's kind of a span of `SpanKind` `kind`, or None for spans that are not requests.
fn request_kind(kind: i32) -> Option<RequestKind> {
    match SpanKind::try_from(kind) {
        Ok(SpanKind::Server) => Some(RequestKind::Server),
        Ok(SpanKind::Consumer) => Some(RequestKind::Consumer),
        _ => None,
    }
}

/// The value of an attribute found.
fn value<'a>(a: Option<Attribute<'a>>) -> Option<AttributeValue<'a>> {
    a.map(|a| a.value())
}

/// A non-empty string value.
pub(crate) fn non_empty_str(v: Option<AttributeValue<'_>>) -> Option<&str> {
    match v? {
        AttributeValue::Str(s) if !s.is_empty() => Some(s),
        _ => None,
    }
}

/// An integer value, or a string holding one.
fn int_value(v: Option<AttributeValue<'_>>) -> Option<i64> {
    match v? {
        AttributeValue::Int(i) => Some(i),
        AttributeValue::Str(s) => s.parse().ok(),
        _ => None,
    }
}

/// The service a resource's spans belong to: its `service.name` (cut to the label limit), or the SDKs'
/// default; a value that is not a string is written as the app metric store writes it.
pub fn service_name<'a>(resource: &ResourceSpansView<'a>) -> Cow<'a, str> {
    let unknown = Cow::Borrowed("unknown_service");
    let Some(a) = resource
        .resource_attributes()
        .find(|a| a.key == b"service.name")
    else {
        return unknown;
    };
    match a.value() {
        AttributeValue::Str("") | AttributeValue::Empty => unknown,
        AttributeValue::Str(s) => Cow::Borrowed(cut_str(s)),
        _ => match a.to_key_value() {
            Some(kv) => Cow::Owned(attributes::service_name(std::slice::from_ref(&kv))),
            None => unknown,
        },
    }
}

/// Why a span was not usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SpanReject {
    /// trace_id is not 16 bytes or span_id not 8, or either is all zeros (invalid in the trace spec).
    #[error("span with invalid trace_id or span_id")]
    BadIds,
    /// end_time before start_time, or zero.
    #[error("span with end_time_unix_nano before start_time_unix_nano")]
    BadTimes,
}

/// Extracts RED facts from a span. `Ok(None)` for spans that are not requests (INTERNAL, CLIENT, PRODUCER).
pub fn facts<'a>(span: &SpanView<'a>) -> Result<Option<SpanFacts<'a>>, SpanReject> {
    facts_picked(span, None)
}

/// The RED facts of every span of a resource, in order, each span's attributes picked in the walk that
/// reads it.
pub fn resource_facts<'a>(
    rs: &ResourceSpansView<'a>,
) -> impl Iterator<Item = Result<Option<SpanFacts<'a>>, SpanReject>> {
    rs.spans_picking::<RequestAttributes>()
        .map(|(span, picked)| facts_picked(&span, picked))
}

/// [`facts`] with the span's attributes already picked in the walk that read it (None: walk them).
fn facts_picked<'a>(
    span: &SpanView<'a>,
    picked: Option<RequestAttributes<'a>>,
) -> Result<Option<SpanFacts<'a>>, SpanReject> {
    let zero = |id: &[u8]| id.iter().all(|b| *b == 0);
    if span.trace_id.len() != 16
        || span.span_id.len() != 8
        || zero(span.trace_id)
        || zero(span.span_id)
    {
        return Err(SpanReject::BadIds);
    }
    if span.end_time_unix_nano < span.start_time_unix_nano || span.end_time_unix_nano == 0 {
        return Err(SpanReject::BadTimes);
    }
    let Some(kind) = request_kind(span.kind) else {
        return Ok(None);
    };
    let attrs = picked.unwrap_or_else(|| RequestAttributes::of(span));
    let operation = if let Some(route) = non_empty_str(value(attrs.route)) {
        Operation::Single(route)
    } else if let (Some(s), Some(m)) = (
        non_empty_str(value(attrs.rpc_service)),
        non_empty_str(value(attrs.rpc_method)),
    ) {
        Operation::Rpc(s, m)
    } else if let Some(method) = (kind == RequestKind::Server)
        .then(|| {
            non_empty_str(value(attrs.method)).or_else(|| non_empty_str(value(attrs.old_method)))
        })
        .flatten()
    {
        Operation::Single(http_method_operation(method))
    } else {
        Operation::Single(span.name)
    };
    let status_error = span.status_code == StatusCode::Error as i32;
    let http_error = kind == RequestKind::Server
        && int_value(value(attrs.status))
            .or_else(|| int_value(value(attrs.old_status)))
            .is_some_and(|c| c >= 500);
    Ok(Some(SpanFacts {
        operation,
        kind,
        error: status_error || http_error,
        duration: (span.end_time_unix_nano - span.start_time_unix_nano) as f64 / 1e9,
        trace_id: span.trace_id,
        span_id: span.span_id,
        end_unix: span.end_time_unix_nano as f64 / 1e9,
    }))
}

/// The exemplar kept for one bucket: the trace and span of a request that landed there.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ExemplarSlot {
    pub(crate) trace: [u8; 16],
    pub(crate) span: [u8; 8],
    pub(crate) value: f64,
    pub(crate) at: f64,
}

#[derive(Debug, Clone)]
struct RedSeries {
    labels: [String; 4],
    counts: [u64; SLOTS],
    sum: f64,
    count: u64,
    exemplars: [Option<ExemplarSlot>; SLOTS],
    /// The same durations in exponential buckets (boxed: it grows with the spread of durations).
    native: Box<Exponential>,
    /// When the series began, Unix ns: the start of its cumulative counts.
    start_unix_nanos: u64,
}

impl RedSeries {
    fn new(labels: [String; 4]) -> Self {
        let start_unix_nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        RedSeries {
            labels,
            counts: [0; SLOTS],
            sum: 0.0,
            count: 0,
            exemplars: [None; SLOTS],
            native: Box::new(Exponential::new(NATIVE_SCALE, NATIVE_ZERO_THRESHOLD)),
            start_unix_nanos,
        }
    }

    fn observe(&mut self, f: &SpanFacts<'_>) {
        let i = BUCKETS
            .iter()
            .position(|&b| f.duration <= b)
            .unwrap_or(BUCKETS.len());
        self.counts[i] += 1;
        self.native.record(f.duration, NATIVE_MAX_BUCKETS);
        self.sum += f.duration;
        self.count += 1;
        let mut trace = [0u8; 16];
        let mut span = [0u8; 8];
        trace.copy_from_slice(f.trace_id);
        span.copy_from_slice(f.span_id);
        self.exemplars[i] = Some(ExemplarSlot {
            trace,
            span,
            value: f.duration,
            at: f.end_unix,
        });
    }
}

/// The RED series and the key buffer reused to look one up, under one lock.
struct RedTable {
    series: LimitedMap<String, RedSeries>,
    key: String,
}

/// RED histograms per (service, operation, kind, outcome), bounded.
pub struct RedSignal {
    table: Mutex<RedTable>,
    ttl: Duration,
}

const SEP: char = '\u{1f}';

/// `n` in decimal, written into `buf` without allocating.
fn itoa(mut n: usize, buf: &mut [u8; 20]) -> &str {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[at..]).unwrap_or("0")
}

impl RedSignal {
    /// A store keeping at most `limit` label sets; series not updated for `ttl` are dropped.
    pub fn new(limit: usize, ttl: Duration, overflow: OverflowCounter) -> Self {
        RedSignal {
            table: Mutex::new(RedTable {
                series: LimitedMap::new(limit, overflow),
                key: String::with_capacity(128),
            }),
            ttl,
        }
    }

    /// Records a batch of spans of one service under one lock.
    pub fn observe<'a>(&self, service: &str, spans: impl IntoIterator<Item = SpanFacts<'a>>) {
        let now = Instant::now();
        let mut guard = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let RedTable { series, key } = &mut *guard;
        let service = cut_str(service);
        let mut digits = [0u8; 20];
        for f in spans {
            let outcome = if f.error { "error" } else { "ok" };
            // The service goes in with its length, so no value can end it early: with a bare
            // separator, service "a\u{1f}b" + route "c" and service "a" + route "b\u{1f}c" were one key.
            // The operation needs none: the kind and outcome after it never hold the separator.
            key.clear();
            key.push_str(itoa(service.len(), &mut digits));
            key.push(':');
            key.push_str(service);
            key.push(SEP);
            let op_start = key.len();
            match f.operation {
                Operation::Single(op) => key.push_str(op),
                Operation::Rpc(s, m) => {
                    key.push_str(s);
                    key.push('/');
                    key.push_str(m);
                }
            }
            let op_end = op_start + cut_str(&key[op_start..]).len();
            key.truncate(op_end);
            key.push(SEP);
            key.push_str(f.kind.label());
            key.push(SEP);
            key.push_str(outcome);
            let make_labels = || {
                [
                    service.to_owned(),
                    key[op_start..op_end].to_owned(),
                    f.kind.label().to_owned(),
                    outcome.to_owned(),
                ]
            };
            let (s, _) = series.entry(
                key.as_str(),
                || key.clone(),
                || RedSeries::new(make_labels()),
                now,
            );
            s.observe(&f);
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

fn histogram_value(s: &RedSeries) -> Value {
    classic_histogram(
        &BUCKETS,
        &s.counts,
        s.sum,
        s.count,
        &s.exemplars,
        Some(s.native.clone()),
    )
}

/// A histogram value from per-bucket counts over `bounds` (one more count than bounds: the last is +Inf),
/// with each bucket's exemplar (its trace and span ids in hex); shared by RED and the query store.
pub(crate) fn classic_histogram(
    bounds: &[f64],
    counts: &[u64],
    sum: f64,
    count: u64,
    exemplars: &[Option<ExemplarSlot>],
    native: Option<Box<Exponential>>,
) -> Value {
    let mut cumulative = 0;
    let mut buckets = Vec::with_capacity(counts.len());
    for (i, c) in counts.iter().enumerate() {
        cumulative += c;
        buckets.push((bounds.get(i).copied().unwrap_or(f64::INFINITY), cumulative));
    }
    let exemplars = exemplars
        .iter()
        .map(|e| {
            e.map(|e| Exemplar {
                attributes: vec![
                    ("trace_id".into(), hex(&e.trace)),
                    ("span_id".into(), hex(&e.span)),
                ],
                value: e.value,
                timestamp: Some(e.at),
            })
        })
        .collect();
    Value::Histogram {
        buckets,
        sum,
        count,
        exemplars,
        native,
    }
}

impl RedSignal {
    /// Drops series not updated within the TTL; runs on a timer, not inside a scrape.
    pub fn expire(&self, now: Instant) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        table.series.expire(now, self.ttl);
    }

    /// True while any series (or the overflow series) is held: expiry has work to come.
    pub fn holds(&self) -> bool {
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        !table.series.is_empty()
    }
}

impl Collector for RedSignal {
    fn collect(&self, out: &mut Vec<Metric>) {
        let now = Instant::now();
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if !table.series.any_live(now, self.ttl) {
            return;
        }
        let mut fam = catalogue::REQUEST_DURATION.metric();
        let mut rows: Vec<&RedSeries> = table
            .series
            .iter_live(now, self.ttl)
            .map(|(_, s)| s)
            .collect();
        rows.sort_by(|a, b| a.labels.cmp(&b.labels));
        for s in rows {
            let [svc, op, kind, outcome] = &s.labels;
            fam.push_started(
                &[
                    ("service", svc),
                    ("operation", op),
                    ("kind", kind),
                    ("outcome", outcome),
                ],
                s.start_unix_nanos,
                histogram_value(s),
            );
        }
        if let Some(o) = table.series.overflow_live(now, self.ttl) {
            fam.push_started(&[OVERFLOW_LABEL], o.start_unix_nanos, histogram_value(o));
        }
        out.push(fam);
    }
}

/// RED as a consumer of the receiver's trace exports: each resource's request spans go to the store
/// under its service; spans that are not requests are taken and ignored; a span that cannot be
/// measured is rejected with its reason.
impl<'a> Consumer<TraceView<'a>> for RedSignal {
    fn consume(&self, request: &TraceView<'a>) -> PartialSuccess {
        let mut answer = PartialSuccess::default();
        for rs in request.resource_spans() {
            let service = service_name(&rs);
            let usable = resource_facts(&rs).filter_map(|f| match f {
                Ok(f) => f,
                Err(why) => {
                    answer.reject(1, || why.to_string());
                    None
                }
            });
            self.observe(&service, usable);
        }
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::trace::v1::{Span, Status};
    use prost::Message;

    /// [`facts`] of a prost span, read through its encoding (kept for the test's length).
    fn facts_of(span: &Span) -> Result<Option<SpanFacts<'static>>, SpanReject> {
        let bytes: &'static [u8] = Box::leak(span.encode_to_vec().into_boxed_slice());
        facts(&SpanView::parse(bytes).unwrap())
    }

    fn kv(k: &str, v: any_value::Value) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    fn span(kind: SpanKind, ms: u64, attrs: Vec<KeyValue>, status: i32) -> Span {
        Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            name: "GET".into(),
            kind: kind as i32,
            start_time_unix_nano: 1_000_000_000,
            end_time_unix_nano: 1_000_000_000 + ms * 1_000_000,
            attributes: attrs,
            status: Some(Status {
                code: status,
                message: String::new(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn operation_and_outcome_rules() {
        let s = span(
            SpanKind::Server,
            120,
            vec![
                kv(
                    "http.route",
                    any_value::Value::StringValue("/users/{id}".into()),
                ),
                kv("http.response.status_code", any_value::Value::IntValue(503)),
            ],
            0,
        );
        let f = facts_of(&s).unwrap().unwrap();
        assert_eq!(f.operation, Operation::Single("/users/{id}"));
        assert!(f.error, "5xx on a server span is an error");
        assert!((f.duration - 0.12).abs() < 1e-9);

        let s = span(
            SpanKind::Server,
            5,
            vec![
                kv(
                    "rpc.service",
                    any_value::Value::StringValue("Greeter".into()),
                ),
                kv("rpc.method", any_value::Value::StringValue("Hello".into())),
            ],
            0,
        );
        assert_eq!(
            facts_of(&s).unwrap().unwrap().operation,
            Operation::Rpc("Greeter", "Hello")
        );

        let s = span(
            SpanKind::Consumer,
            5,
            vec![kv("http.status_code", any_value::Value::IntValue(500))],
            0,
        );
        let f = facts_of(&s).unwrap().unwrap();
        assert_eq!(f.operation, Operation::Single("GET"));
        assert!(!f.error, "the HTTP rule applies to server spans only");

        // A routeless server span is named by its method, whatever its span name holds.
        let mut s = span(
            SpanKind::Server,
            5,
            vec![kv(
                "http.request.method",
                any_value::Value::StringValue("get".into()),
            )],
            0,
        );
        s.name = "GET /wp-admin/setup.php?x=81723".into();
        assert_eq!(
            facts_of(&s).unwrap().unwrap().operation,
            Operation::Single("GET")
        );
        s.attributes = vec![kv(
            "http.method",
            any_value::Value::StringValue("BREW".into()),
        )];
        assert_eq!(
            facts_of(&s).unwrap().unwrap().operation,
            Operation::Single("_OTHER")
        );
        // A consumer span keeps its name: messaging span names are low-cardinality destinations.
        s.kind = SpanKind::Consumer as i32;
        assert_eq!(
            facts_of(&s).unwrap().unwrap().operation,
            Operation::Single("GET /wp-admin/setup.php?x=81723")
        );

        let s = span(SpanKind::Server, 5, vec![], StatusCode::Error as i32);
        assert!(facts_of(&s).unwrap().unwrap().error);
        assert_eq!(
            facts_of(&span(SpanKind::Client, 5, vec![], 0)).unwrap(),
            None
        );
        assert_eq!(
            facts_of(&span(SpanKind::Internal, 5, vec![], 0)).unwrap(),
            None
        );
    }

    #[test]
    fn invalid_spans_are_rejected() {
        let mut s = span(SpanKind::Server, 5, vec![], 0);
        s.trace_id = vec![1; 3];
        assert_eq!(facts_of(&s), Err(SpanReject::BadIds));
        let mut s = span(SpanKind::Server, 5, vec![], 0);
        s.end_time_unix_nano = 1;
        assert_eq!(facts_of(&s), Err(SpanReject::BadTimes));
    }

    #[test]
    fn buckets_counts_and_overflow() {
        let c = OverflowCounter::default();
        let store = RedSignal::new(2, Duration::from_secs(60), c.clone());
        let spans: Vec<Span> = [50u64, 100, 100, 400, 2000]
            .iter()
            .map(|ms| span(SpanKind::Server, *ms, vec![], 0))
            .collect();
        store.observe(
            "checkout",
            spans.iter().map(|s| facts_of(s).unwrap().unwrap()),
        );
        let other = span(
            SpanKind::Server,
            1,
            vec![kv("http.route", any_value::Value::StringValue("/b".into()))],
            0,
        );
        let third = span(
            SpanKind::Server,
            1,
            vec![kv("http.route", any_value::Value::StringValue("/c".into()))],
            0,
        );
        store.observe(
            "checkout",
            [
                facts_of(&other).unwrap().unwrap(),
                facts_of(&third).unwrap().unwrap(),
            ],
        );
        let mut out = vec![];
        store.collect(&mut out);
        crate::catalogue::assert_agrees(&out);
        let fam = &out[0];
        assert_eq!(
            fam.points.len(),
            3,
            "two label sets and the overflow series"
        );
        assert_eq!(c.get(), 1);
        let get = |le: f64, v: &Value| match v {
            Value::Histogram { buckets, .. } => buckets.iter().find(|(b, _)| *b == le).unwrap().1,
            _ => unreachable!(),
        };
        let main = fam
            .points
            .iter()
            .find(|s| s.attributes.iter().any(|(_, v)| v == "GET"))
            .unwrap();
        assert_eq!(get(0.05, &main.value), 1);
        assert_eq!(
            get(0.1, &main.value),
            3,
            "0.1 s lands in le=0.1 (inclusive upper bound)"
        );
        assert_eq!(get(0.4, &main.value), 4);
        assert_eq!(get(f64::INFINITY, &main.value), 5);
        match &main.value {
            Value::Histogram {
                sum,
                count,
                exemplars,
                ..
            } => {
                assert_eq!(*count, 5);
                assert!((sum - 2.65).abs() < 1e-9);
                let ex = exemplars[8].as_ref().unwrap();
                assert_eq!(ex.attributes[0].1, "01010101010101010101010101010101");
                assert_eq!(ex.attributes[1].1, "0202020202020202");
            }
            _ => unreachable!(),
        }
        assert!(fam.points.iter().any(
            |s| s.attributes == vec![("otel_metric_overflow".to_string(), "true".to_string())]
        ));
    }

    #[test]
    fn separator_in_a_value_cannot_merge_two_keys_and_long_values_are_cut() {
        let store = RedSignal::new(10, Duration::from_secs(60), OverflowCounter::default());
        let span = |op| SpanFacts {
            operation: Operation::Single(op),
            kind: RequestKind::Server,
            error: false,
            duration: 0.1,
            trace_id: &[1; 16],
            span_id: &[1; 8],
            end_unix: 1.0,
        };
        store.observe("a\u{1f}b", [span("c")]);
        store.observe("a", [span("b\u{1f}c")]);
        let long = "x".repeat(5000);
        store.observe(&long, [span(&long)]);
        let mut out = Vec::new();
        store.collect(&mut out);
        crate::catalogue::assert_agrees(&out);
        assert_eq!(out[0].points.len(), 3);
        for series in &out[0].points {
            assert!(
                series.attributes.iter().all(|(_, v)| v.len() <= 1024),
                "{:?}",
                series.attributes
            );
        }
    }

    #[test]
    fn all_zero_ids_are_invalid() {
        let span = |t: u8, s: u8| Span {
            trace_id: vec![t; 16],
            span_id: vec![s; 8],
            kind: SpanKind::Server as i32,
            start_time_unix_nano: 1,
            end_time_unix_nano: 2,
            ..Default::default()
        };
        assert_eq!(facts_of(&span(0, 1)), Err(SpanReject::BadIds));
        assert_eq!(facts_of(&span(1, 0)), Err(SpanReject::BadIds));
        assert!(facts_of(&span(1, 1)).is_ok());
    }
}
