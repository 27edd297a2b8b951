//! Which query is slow? Latency per database query (query RED) from the app's CLIENT spans that carry
//! a database system, as the `vitals.db.query.duration` histogram per (service, db system, query,
//! outcome) with exemplars, bounded per label set; and the consumer that hands the same spans to N+1
//! detection ([`super::n_plus_one`]), so each span's query is worked out once.
//!
//! The query label is, first found: `db.query.summary`; the template of `db.query.text` /
//! `db.statement` for SQL systems ([`super::sql_template`]); `db.operation.name` (or `db.operation`)
//! with `db.collection.name` (or `db.sql.table`); the span name. Every one of them goes through the
//! templater, so no literal reaches a label whichever attribute it came in.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};

use super::latency::{self, non_empty_str, service_name, ExemplarSlot, SpanFacts};
use super::n_plus_one::{DbCall, NPlusOne, RequestSpan};
use super::sql_template::{self, Quoting};
use crate::bounded::{LimitedMap, OverflowCounter};
use crate::catalogue;
use crate::catalogue::OVERFLOW_LABEL;
use crate::model::{Collector, Metric, Value};
use crate::pipeline::attributes::cut_str;
use crate::pipeline::trace_view::{AttributeValue, SpanView};
use crate::pipeline::{Consumer, PartialSuccess, TraceView};

/// Bucket upper bounds in seconds: 0.1 ms to 60 s. Queries are often far below RED's 0.5 ms floor.
pub const BUCKETS: [f64; 19] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 20.0, 30.0, 60.0,
];
const SLOTS: usize = BUCKETS.len() + 1;

/// Longest `db_system` label kept.
const SYSTEM_LIMIT: usize = 64;

/// Where a span's query label came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuerySource {
    /// `db.query.summary`, a statement template, or operation (+ collection): the span runs a query.
    Query,
    /// Only the span name (a connection, a transaction, a driver's own step).
    SpanName,
}

/// What query RED and N+1 detection need of one database span.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DbFacts<'a> {
    /// `db.system.name`, else `db.system`, cut to 64 bytes.
    pub db_system: &'a str,
    /// Where the query label came from.
    pub source: QuerySource,
    /// Status ERROR.
    pub error: bool,
    /// end − start, seconds.
    pub duration: f64,
    /// Trace id (16 bytes).
    pub trace_id: &'a [u8],
    /// Span id (8 bytes).
    pub span_id: &'a [u8],
    /// Parent span id (8 bytes, or empty for a root).
    pub parent_span_id: &'a [u8],
    /// Start and end, Unix nanoseconds.
    pub start_unix_nanos: u64,
    /// End, Unix nanoseconds.
    pub end_unix_nanos: u64,
}

/// The first value of each attribute the query label may come from, found in one pass over a span's
/// attributes (the first attribute with a key decides, as a lookup by key would).
#[derive(Default)]
struct DbAttributes<'a> {
    system_name: Option<AttributeValue<'a>>,
    system: Option<AttributeValue<'a>>,
    summary: Option<AttributeValue<'a>>,
    query_text: Option<AttributeValue<'a>>,
    statement: Option<AttributeValue<'a>>,
    operation_name: Option<AttributeValue<'a>>,
    operation: Option<AttributeValue<'a>>,
    collection_name: Option<AttributeValue<'a>>,
    sql_table: Option<AttributeValue<'a>>,
    mongodb_collection: Option<AttributeValue<'a>>,
}

impl<'a> DbAttributes<'a> {
    fn of(span: &SpanView<'a>) -> Self {
        let mut found = DbAttributes::default();
        for a in span.attributes() {
            let slot = match a.key {
                b"db.system.name" => &mut found.system_name,
                b"db.system" => &mut found.system,
                b"db.query.summary" => &mut found.summary,
                b"db.query.text" => &mut found.query_text,
                b"db.statement" => &mut found.statement,
                b"db.operation.name" => &mut found.operation_name,
                b"db.operation" => &mut found.operation,
                b"db.collection.name" => &mut found.collection_name,
                b"db.sql.table" => &mut found.sql_table,
                b"db.mongodb.collection" => &mut found.mongodb_collection,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(a.value());
            }
        }
        found
    }
}

/// The first of `values` that is a non-empty string.
fn first_str<'a>(values: &[Option<AttributeValue<'a>>]) -> Option<&'a str> {
    values.iter().find_map(|v| non_empty_str(*v))
}

/// The database facts of a span, its query template written into `query`; `None` for spans that are
/// not CLIENT spans with a database system, or whose ids or times are invalid (RED rejects those).
pub fn db_facts<'a>(span: &SpanView<'a>, query: &mut String) -> Option<DbFacts<'a>> {
    if SpanKind::try_from(span.kind) != Ok(SpanKind::Client) {
        return None;
    }
    let attrs = DbAttributes::of(span);
    let system = first_str(&[attrs.system_name, attrs.system])?;
    let zero = |id: &[u8]| id.iter().all(|b| *b == 0);
    if span.trace_id.len() != 16
        || span.span_id.len() != 8
        || zero(span.trace_id)
        || zero(span.span_id)
        || span.end_time_unix_nano < span.start_time_unix_nano
        || span.end_time_unix_nano == 0
    {
        return None;
    }
    let quoting = Quoting::of(system);
    query.clear();
    let mut source = QuerySource::Query;
    if let Some(summary) = non_empty_str(attrs.summary) {
        sql_template::template_into(summary, quoting, query);
    }
    if query.is_empty() && sql_template::is_sql(system) {
        if let Some(text) = first_str(&[attrs.query_text, attrs.statement]) {
            sql_template::template_into(text, quoting, query);
        }
    }
    if query.is_empty() {
        if let Some(op) = first_str(&[attrs.operation_name, attrs.operation]) {
            let collection = first_str(&[
                attrs.collection_name,
                attrs.sql_table,
                attrs.mongodb_collection,
            ]);
            let mut both = String::with_capacity(op.len() + 1 + collection.map_or(0, str::len));
            both.push_str(op);
            if let Some(c) = collection {
                both.push(' ');
                both.push_str(c);
            }
            sql_template::template_into(&both, quoting, query);
        }
    }
    if query.is_empty() {
        source = QuerySource::SpanName;
        sql_template::template_into(span.name, quoting, query);
    }
    if query.is_empty() {
        query.push_str("unnamed");
    }
    let error = span.status_code == StatusCode::Error as i32;
    let mut system = system;
    if system.len() > SYSTEM_LIMIT {
        let mut end = SYSTEM_LIMIT;
        while !system.is_char_boundary(end) {
            end -= 1;
        }
        system = &system[..end];
    }
    Some(DbFacts {
        db_system: system,
        source,
        error,
        duration: (span.end_time_unix_nano - span.start_time_unix_nano) as f64 / 1e9,
        trace_id: span.trace_id,
        span_id: span.span_id,
        parent_span_id: span.parent_span_id,
        start_unix_nanos: span.start_time_unix_nano,
        end_unix_nanos: span.end_time_unix_nano,
    })
}

#[derive(Debug, Clone)]
struct QuerySeries {
    labels: [String; 4],
    counts: [u64; SLOTS],
    sum: f64,
    count: u64,
    exemplars: [Option<ExemplarSlot>; SLOTS],
}

impl QuerySeries {
    fn new(labels: [String; 4]) -> Self {
        QuerySeries {
            labels,
            counts: [0; SLOTS],
            sum: 0.0,
            count: 0,
            exemplars: [None; SLOTS],
        }
    }

    fn observe(&mut self, f: &DbFacts<'_>) {
        let i = BUCKETS
            .iter()
            .position(|&b| f.duration <= b)
            .unwrap_or(BUCKETS.len());
        self.counts[i] += 1;
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
            at: f.end_unix_nanos as f64 / 1e9,
        });
    }
}

/// The query series and the key buffer reused to look one up, under one lock.
struct QueryTable {
    series: LimitedMap<String, QuerySeries>,
    key: String,
}

/// Query latency histograms per (service, db system, query, outcome), bounded by the series limit
/// with an overflow series, expired after the series TTL.
pub struct QuerySignal {
    table: Mutex<QueryTable>,
    ttl: Duration,
}

const SEP: char = '\u{1f}';

impl QuerySignal {
    /// A store keeping at most `limit` label sets; series not updated for `ttl` are dropped.
    pub fn new(limit: usize, ttl: Duration, overflow: OverflowCounter) -> Self {
        QuerySignal {
            table: Mutex::new(QueryTable {
                series: LimitedMap::new(limit, overflow),
                key: String::with_capacity(256),
            }),
            ttl,
        }
    }

    /// Records one database span of `service` whose query label is `query`.
    pub fn observe(&self, service: &str, query: &str, f: &DbFacts<'_>, now: Instant) {
        let mut guard = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let QueryTable { series, key } = &mut *guard;
        let service = cut_str(service);
        let outcome = if f.error { "error" } else { "ok" };
        // Lengths first, so no value can end another early and merge two keys.
        key.clear();
        for part in [service, f.db_system, query] {
            // Writing into a String cannot fail.
            let _ = write!(key, "{}", part.len());
            key.push(':');
            key.push_str(part);
            key.push(SEP);
        }
        key.push_str(outcome);
        let (s, _) = series.entry(
            key.as_str(),
            || key.clone(),
            || {
                QuerySeries::new([
                    service.to_owned(),
                    f.db_system.to_owned(),
                    query.to_owned(),
                    outcome.to_owned(),
                ])
            },
            now,
        );
        s.observe(f);
    }

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

fn histogram_value(s: &QuerySeries) -> Value {
    latency::classic_histogram(&BUCKETS, &s.counts, s.sum, s.count, &s.exemplars, None)
}

impl Collector for QuerySignal {
    fn collect(&self, out: &mut Vec<Metric>) {
        let now = Instant::now();
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if !table.series.any_live(now, self.ttl) {
            return;
        }
        let mut fam = catalogue::DB_QUERY_DURATION.metric();
        let mut rows: Vec<&QuerySeries> = table
            .series
            .iter_live(now, self.ttl)
            .map(|(_, s)| s)
            .collect();
        rows.sort_by(|a, b| a.labels.cmp(&b.labels));
        for s in rows {
            let [svc, system, query, outcome] = &s.labels;
            fam.push(
                &[
                    ("service", svc),
                    ("db_system", system),
                    ("query", query),
                    ("outcome", outcome),
                ],
                histogram_value(s),
            );
        }
        if let Some(o) = table.series.overflow_live(now, self.ttl) {
            fam.push(&[OVERFLOW_LABEL], histogram_value(o));
        }
        out.push(fam);
    }
}

/// The consumer of trace exports for the database signals: each database span's query is worked out
/// once, recorded in the query histograms and handed to N+1 detection with the request spans (SERVER,
/// CONSUMER) that name the operation. Spans RED rejects are left to RED's answer.
pub struct DbQueries {
    /// Query latency.
    pub store: Arc<QuerySignal>,
    /// N+1 detection.
    pub n_plus_one: Arc<NPlusOne>,
}

impl<'a> Consumer<TraceView<'a>> for DbQueries {
    fn consume(&self, request: &TraceView<'a>) -> PartialSuccess {
        let now = Instant::now();
        let mut query = String::with_capacity(256);
        for rs in request.resource_spans() {
            let service = service_name(&rs);
            for span in rs.spans() {
                if let Some(f) = db_facts(&span, &mut query) {
                    self.store.observe(&service, &query, &f, now);
                    if f.source == QuerySource::Query {
                        self.n_plus_one.observe_call(
                            &service,
                            &DbCall {
                                query: &query,
                                trace_id: f.trace_id,
                                parent_span_id: f.parent_span_id,
                                start_unix_nanos: f.start_unix_nanos,
                                end_unix_nanos: f.end_unix_nanos,
                            },
                            now,
                        );
                    }
                    continue;
                }
                if let Ok(Some(SpanFacts {
                    operation,
                    trace_id,
                    span_id,
                    ..
                })) = latency::facts(&span)
                {
                    self.n_plus_one.observe_request(
                        &service,
                        &RequestSpan {
                            operation,
                            trace_id,
                            span_id,
                            start_unix_nanos: span.start_time_unix_nano,
                        },
                        now,
                    );
                }
            }
        }
        PartialSuccess::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::trace::v1::Span;
    use prost::Message;

    /// [`db_facts`] of a prost span, read through its encoding (kept for the test's length).
    fn db_facts_of(span: &Span, query: &mut String) -> Option<DbFacts<'static>> {
        let bytes: &'static [u8] = Box::leak(span.encode_to_vec().into_boxed_slice());
        db_facts(&SpanView::parse(bytes).unwrap(), query)
    }

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    fn db_span(name: &str, attrs: Vec<KeyValue>) -> Span {
        Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            parent_span_id: vec![3; 8],
            name: name.into(),
            kind: SpanKind::Client as i32,
            start_time_unix_nano: 1_000_000_000,
            end_time_unix_nano: 1_003_000_000,
            attributes: attrs,
            ..Default::default()
        }
    }

    fn query_of(span: &Span) -> Option<(String, QuerySource)> {
        let mut q = String::new();
        db_facts_of(span, &mut q).map(|f| (q, f.source))
    }

    #[test]
    fn the_query_label_follows_the_order_of_the_conventions() {
        let s = db_span(
            "SELECT shop",
            vec![
                kv("db.system.name", "postgresql"),
                kv("db.query.summary", "SELECT orders"),
                kv("db.query.text", "SELECT * FROM orders WHERE id = 5"),
            ],
        );
        assert_eq!(
            query_of(&s),
            Some(("SELECT orders".into(), QuerySource::Query))
        );
        let s = db_span(
            "SELECT shop",
            vec![
                kv("db.system", "postgresql"),
                kv("db.statement", "SELECT * FROM orders WHERE id = 5"),
            ],
        );
        assert_eq!(query_of(&s).unwrap().0, "SELECT * FROM orders WHERE id = ?");
        // Not SQL: a Redis command line keeps its keys and values, so it is not a template source.
        let s = db_span(
            "GET",
            vec![
                kv("db.system", "redis"),
                kv("db.statement", "GET session:alice@example.com"),
                kv("db.operation.name", "GET"),
            ],
        );
        assert_eq!(query_of(&s), Some(("GET".into(), QuerySource::Query)));
        let s = db_span(
            "find",
            vec![
                kv("db.system", "mongodb"),
                kv("db.operation", "find"),
                kv("db.mongodb.collection", "users"),
            ],
        );
        assert_eq!(query_of(&s).unwrap().0, "find users");
        let s = db_span("pg-pool.connect", vec![kv("db.system", "postgresql")]);
        assert_eq!(
            query_of(&s),
            Some(("pg-pool.connect".into(), QuerySource::SpanName))
        );
        // A span name holding a statement is templated too.
        let s = db_span(
            "SELECT * FROM t WHERE ssn = '123-45-6789'",
            vec![kv("db.system", "postgresql")],
        );
        assert_eq!(query_of(&s).unwrap().0, "SELECT * FROM t WHERE ssn = ?");
        // Not a database span: no system, or not CLIENT.
        assert_eq!(query_of(&db_span("GET", vec![])), None);
        let mut s = db_span("x", vec![kv("db.system", "postgresql")]);
        s.kind = SpanKind::Internal as i32;
        assert_eq!(query_of(&s), None);
    }

    #[test]
    fn literals_make_one_series_and_distinct_queries_overflow() {
        let c = OverflowCounter::default();
        let store = QuerySignal::new(3, Duration::from_secs(60), c.clone());
        let now = Instant::now();
        let mut q = String::new();
        for i in 0..100 {
            let s = db_span(
                "x",
                vec![
                    kv("db.system", "postgresql"),
                    kv("db.statement", &format!("SELECT * FROM t WHERE id = {i}")),
                ],
            );
            let f = db_facts_of(&s, &mut q).unwrap();
            store.observe("svc", &q, &f, now);
        }
        for i in 0..10 {
            let s = db_span(
                "x",
                vec![
                    kv("db.system", "postgresql"),
                    kv("db.statement", &format!("SELECT * FROM t{i}")),
                ],
            );
            let f = db_facts_of(&s, &mut q).unwrap();
            store.observe("svc", &q, &f, now);
        }
        let mut out = Vec::new();
        store.collect(&mut out);
        crate::catalogue::assert_agrees(&out);
        let points = &out[0].points;
        assert_eq!(points.len(), 4, "three series and the overflow");
        assert_eq!(c.get(), 8);
        let first = points
            .iter()
            .find(|p| {
                p.attributes
                    .iter()
                    .any(|(_, v)| v == "SELECT * FROM t WHERE id = ?")
            })
            .unwrap();
        match &first.value {
            Value::Histogram { count, sum, .. } => {
                assert_eq!(*count, 100);
                assert!((sum - 0.3).abs() < 1e-9);
            }
            v => panic!("{v:?}"),
        }
    }
}
