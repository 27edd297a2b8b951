//! N+1 queries: a run of at least [`Rule::min_repeats`] database queries with the same template under
//! one parent span, one after another, together taking at least [`Rule::min_total`] (Sentry's rule of
//! five repeats and 50 ms is the anchor), counted as `vitals.db.n_plus_one` per (service, operation of
//! the request the run belongs to, query), with the latest occurrence's trace kept for the live page
//! and as the counter's exemplar.
//!
//! Spans of one trace arrive in several exports and out of order, so a trace is held until it
//! settles: judged once no span of it arrived for [`Rule::settle`], or once it is [`Rule::max_age`]
//! old, whichever comes first. What is held is bounded: [`TRACE_LIMIT`] traces, [`CALL_LIMIT`] query
//! spans in all, [`CALLS_PER_TRACE`] per trace and [`QUERIES_PER_TRACE`] distinct queries per trace;
//! what does not fit is counted in `vitals.db.n_plus_one.dropped` by reason and not judged. A trace
//! whose spans arrive further apart than the settle time is judged in parts: a run split between two
//! parts is found only if one part alone meets the rule, and a run already counted for a (parent,
//! query) is not counted again while the trace is remembered ([`Rule::max_age`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::latency::Operation;
use crate::bounded::{LimitedMap, OverflowCounter};
use crate::catalogue;
use crate::catalogue::OVERFLOW_LABEL;
use crate::model::{Collector, Exemplar, Metric, Value};
use crate::pipeline::attributes::cut_str;

/// Traces held at once (pending judgement).
pub const TRACE_LIMIT: usize = 10_000;
/// Query spans held at once, over all traces (about 40 bytes each).
pub const CALL_LIMIT: usize = 200_000;
/// Query spans held per trace.
pub const CALLS_PER_TRACE: usize = 4_096;
/// Distinct (service, query) pairs held per trace.
pub const QUERIES_PER_TRACE: usize = 256;
/// Request spans held per trace.
pub const REQUESTS_PER_TRACE: usize = 64;
/// Latest offenders kept for the live page.
pub const OFFENDER_LIMIT: usize = 16;

/// When a run counts, and how long a trace is held.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rule {
    /// Repeats of one query under one parent, one after another (Sentry: 5).
    pub min_repeats: usize,
    /// Their durations added up (Sentry: 50 ms): a run of fast lookups is not worth a warning.
    pub min_total: Duration,
    /// A trace is judged once no span of it arrived for this long: longer than an SDK's batch delay
    /// (5 s by default in the OpenTelemetry SDKs), so the fragments of a trace split across exports
    /// are judged together.
    pub settle: Duration,
    /// A trace still receiving spans is judged at this age anyway, and a judged trace is remembered
    /// this long so a late fragment does not count a run twice.
    pub max_age: Duration,
}

impl Default for Rule {
    fn default() -> Self {
        Rule {
            min_repeats: 5,
            min_total: Duration::from_millis(50),
            settle: Duration::from_secs(10),
            max_age: Duration::from_secs(60),
        }
    }
}

/// One database query span, as detection needs it.
#[derive(Debug, Clone, Copy)]
pub struct DbCall<'a> {
    /// The query label.
    pub query: &'a str,
    /// Trace id (16 bytes).
    pub trace_id: &'a [u8],
    /// Parent span id (8 bytes; empty for a root span).
    pub parent_span_id: &'a [u8],
    /// Start, Unix nanoseconds.
    pub start_unix_nanos: u64,
    /// End, Unix nanoseconds.
    pub end_unix_nanos: u64,
}

/// A request span (SERVER or CONSUMER): it names the operation of the queries under it.
#[derive(Debug, Clone, Copy)]
pub struct RequestSpan<'a> {
    /// The operation, as RED names it.
    pub operation: Operation<'a>,
    /// Trace id (16 bytes).
    pub trace_id: &'a [u8],
    /// Span id (8 bytes).
    pub span_id: &'a [u8],
    /// Start, Unix nanoseconds.
    pub start_unix_nanos: u64,
}

#[derive(Debug, Clone, Copy)]
struct Call {
    parent: [u8; 8],
    query: u16,
    start: u64,
    end: u64,
}

#[derive(Debug, Clone)]
struct Request {
    span: [u8; 8],
    service: String,
    operation: String,
    start: u64,
}

#[derive(Debug, Default)]
struct Pending {
    first: Option<Instant>,
    last: Option<Instant>,
    calls: Vec<Call>,
    /// (service, query) of the calls, indexed by `Call::query`.
    queries: Vec<(String, String)>,
    requests: Vec<Request>,
}

/// A judged trace: the (parent, service, query) runs already counted.
#[derive(Debug)]
struct Judged {
    at: Instant,
    counted: Vec<([u8; 8], String, String)>,
}

/// One counted run, for the live page.
#[derive(Debug, Clone, PartialEq)]
pub struct Offender {
    /// Service.
    pub service: String,
    /// Operation of the request.
    pub operation: String,
    /// The repeated query.
    pub query: String,
    /// Repeats in the run.
    pub repeats: usize,
    /// Their durations added up, seconds.
    pub total_seconds: f64,
    /// Trace id, hex.
    pub trace_id: String,
    /// When it was counted, Unix seconds (the end of its last query).
    pub at_unix: f64,
}

#[derive(Debug, Clone)]
struct Occurrences {
    labels: [String; 3],
    count: u64,
    latest: Option<Offender>,
}

/// Why spans were not held for judgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DropReason {
    TraceLimit = 0,
    CallLimit = 1,
}

const DROP_REASONS: [&str; 2] = ["trace_limit", "call_limit"];

/// What N+1 detection holds, under one lock: the calls of traces not judged yet, recent verdicts, the
/// occurrence counts and what was dropped.
struct TraceLedger {
    pending: HashMap<[u8; 16], Pending>,
    judged: HashMap<[u8; 16], Judged>,
    calls_held: usize,
    counts: LimitedMap<String, Occurrences>,
    dropped: [u64; 2],
}

impl TraceLedger {
    /// True while traces wait to be judged or judged ones are remembered.
    fn judging(&self) -> bool {
        !self.pending.is_empty() || !self.judged.is_empty()
    }
}

/// N+1 detection over the database spans and request spans of every trace.
pub struct NPlusOne {
    rule: Rule,
    ttl: Duration,
    ledger: Mutex<TraceLedger>,
    /// Told when a span is held, so the settling timer sleeps while there is nothing to judge.
    arrived: tokio::sync::Notify,
}

fn id<const N: usize>(bytes: &[u8]) -> Option<[u8; N]> {
    bytes.try_into().ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn operation_string(op: Operation<'_>) -> String {
    match op {
        Operation::Single(s) => cut_str(s).to_owned(),
        Operation::Rpc(s, m) => cut_str(&format!("{s}/{m}")).to_owned(),
    }
}

impl NPlusOne {
    /// Detection by `rule`; counter series are bounded by `series_limit` (overflow counted in
    /// `overflow`) and expire after `ttl`.
    pub fn new(rule: Rule, series_limit: usize, ttl: Duration, overflow: OverflowCounter) -> Self {
        NPlusOne {
            rule,
            ttl,
            ledger: Mutex::new(TraceLedger {
                pending: HashMap::new(),
                judged: HashMap::new(),
                calls_held: 0,
                counts: LimitedMap::new(series_limit, overflow),
                dropped: [0; 2],
            }),
            arrived: tokio::sync::Notify::new(),
        }
    }

    /// True while traces wait to be judged or judged ones are remembered: [`NPlusOne::settle`] has work
    /// every settling period.
    pub fn judging(&self) -> bool {
        self.lock().judging()
    }

    /// True while traces wait, judged ones are remembered or counter series are held: settling has
    /// work to come.
    pub fn holds(&self) -> bool {
        let ledger = self.lock();
        ledger.judging() || !ledger.counts.is_empty()
    }

    /// Completes once a span has been held since the last call (at once if one was meanwhile).
    pub async fn arrival(&self) {
        self.arrived.notified().await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TraceLedger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds one database query span of `service` until its trace is judged.
    pub fn observe_call(&self, service: &str, call: &DbCall<'_>, now: Instant) {
        let (Some(trace), Some(parent)) = (id::<16>(call.trace_id), id::<8>(call.parent_span_id))
        else {
            // A root query span has no parent to repeat under.
            return;
        };
        let mut ledger = self.lock();
        let ledger = &mut *ledger;
        if ledger.calls_held >= CALL_LIMIT {
            ledger.dropped[DropReason::CallLimit as usize] += 1;
            return;
        }
        let full = ledger.pending.len() >= TRACE_LIMIT;
        let p = match ledger.pending.get_mut(&trace) {
            Some(p) => p,
            None if full => {
                ledger.dropped[DropReason::TraceLimit as usize] += 1;
                return;
            }
            None => ledger.pending.entry(trace).or_default(),
        };
        let service = cut_str(service);
        let q = match p
            .queries
            .iter()
            .position(|(s, q)| s == service && q == call.query)
        {
            Some(i) => i,
            None if p.queries.len() < QUERIES_PER_TRACE => {
                p.queries.push((service.to_owned(), call.query.to_owned()));
                p.queries.len() - 1
            }
            None => {
                ledger.dropped[DropReason::CallLimit as usize] += 1;
                return;
            }
        };
        if p.calls.len() >= CALLS_PER_TRACE {
            ledger.dropped[DropReason::CallLimit as usize] += 1;
            return;
        }
        p.calls.push(Call {
            parent,
            query: q as u16,
            start: call.start_unix_nanos,
            end: call.end_unix_nanos,
        });
        p.first.get_or_insert(now);
        p.last = Some(now);
        ledger.calls_held += 1;
        self.arrived.notify_one();
    }

    /// Holds one request span of `service`: the operation its trace's runs are counted under. A
    /// trace with only request spans takes at most half the trace limit, so a flood of requests
    /// without queries cannot crowd out the traces that have them.
    pub fn observe_request(&self, service: &str, req: &RequestSpan<'_>, now: Instant) {
        let (Some(trace), Some(span)) = (id::<16>(req.trace_id), id::<8>(req.span_id)) else {
            return;
        };
        let mut ledger = self.lock();
        let ledger = &mut *ledger;
        let room = ledger.pending.len() < TRACE_LIMIT / 2;
        let p = match ledger.pending.get_mut(&trace) {
            Some(p) => p,
            None if !room => {
                ledger.dropped[DropReason::TraceLimit as usize] += 1;
                return;
            }
            None => ledger.pending.entry(trace).or_default(),
        };
        if p.requests.len() < REQUESTS_PER_TRACE {
            p.requests.push(Request {
                span,
                service: cut_str(service).to_owned(),
                operation: operation_string(req.operation),
                start: req.start_unix_nanos,
            });
        }
        p.first.get_or_insert(now);
        p.last = Some(now);
        self.arrived.notify_one();
    }

    /// Judges every trace that has settled or aged out, counts its runs, and forgets judged traces
    /// and counter series past their time. Runs on a timer.
    pub fn settle(&self, now: Instant) {
        let mut guard = self.lock();
        let ledger = &mut *guard;
        let rule = self.rule;
        let due: Vec<[u8; 16]> = ledger
            .pending
            .iter()
            .filter(|(_, p)| {
                let quiet = p
                    .last
                    .is_none_or(|l| now.saturating_duration_since(l) >= rule.settle);
                let old = p
                    .first
                    .is_none_or(|f| now.saturating_duration_since(f) >= rule.max_age);
                quiet || old
            })
            .map(|(t, _)| *t)
            .collect();
        for trace in due {
            let Some(p) = ledger.pending.remove(&trace) else {
                continue;
            };
            ledger.calls_held = ledger.calls_held.saturating_sub(p.calls.len());
            if p.calls.is_empty() {
                continue;
            }
            let judged = ledger.judged.entry(trace).or_insert(Judged {
                at: now,
                counted: Vec::new(),
            });
            judged.at = now;
            for run in runs(&p, &rule) {
                let (service, query) = &p.queries[run.query as usize];
                if judged
                    .counted
                    .iter()
                    .any(|(par, s, q)| *par == run.parent && s == service && q == query)
                {
                    continue;
                }
                judged
                    .counted
                    .push((run.parent, service.clone(), query.clone()));
                let operation = operation_of(&p, service, run.parent, run.start);
                let offender = Offender {
                    service: service.clone(),
                    operation: operation.clone(),
                    query: query.clone(),
                    repeats: run.repeats,
                    total_seconds: run.total_nanos as f64 / 1e9,
                    trace_id: hex(&trace),
                    at_unix: run.end as f64 / 1e9,
                };
                let key = format!(
                    "{}:{service}\u{1f}{}:{operation}\u{1f}{query}",
                    service.len(),
                    operation.len()
                );
                let (o, _) = ledger.counts.entry(
                    key.as_str(),
                    || key.clone(),
                    || Occurrences {
                        labels: [service.clone(), operation.clone(), query.clone()],
                        count: 0,
                        latest: None,
                    },
                    now,
                );
                o.count += 1;
                // Runs judged in one sweep come in no particular order: keep the one that ended last.
                if o.latest
                    .as_ref()
                    .is_none_or(|l| l.at_unix <= offender.at_unix)
                {
                    o.latest = Some(offender);
                }
            }
        }
        let max_age = rule.max_age;
        ledger
            .judged
            .retain(|_, j| now.saturating_duration_since(j.at) < max_age);
        // The judged map is bounded like the pending one: the oldest go first when it is full.
        if ledger.judged.len() > TRACE_LIMIT {
            let mut ats: Vec<Instant> = ledger.judged.values().map(|j| j.at).collect();
            ats.sort();
            let cut = ats[ledger.judged.len() - TRACE_LIMIT];
            ledger.judged.retain(|_, j| j.at > cut);
        }
        ledger.counts.expire(now, self.ttl);
    }

    /// The latest occurrence of each counted (service, operation, query), newest first, at most
    /// [`OFFENDER_LIMIT`].
    pub fn offenders(&self) -> Vec<Offender> {
        let ledger = self.lock();
        let mut out: Vec<Offender> = ledger
            .counts
            .iter()
            .filter_map(|(_, o)| o.latest.clone())
            .collect();
        out.sort_by(|a, b| b.at_unix.total_cmp(&a.at_unix));
        out.truncate(OFFENDER_LIMIT);
        out
    }

    /// Traces held now.
    pub fn traces_held(&self) -> usize {
        self.lock().pending.len()
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Run {
    parent: [u8; 8],
    query: u16,
    repeats: usize,
    total_nanos: u64,
    start: u64,
    end: u64,
}

/// The runs of `p` that meet the rule: per parent, query spans in start order, a run being
/// consecutive spans of one query.
fn runs(p: &Pending, rule: &Rule) -> Vec<Run> {
    let mut calls = p.calls.clone();
    calls.sort_by(|a, b| a.parent.cmp(&b.parent).then(a.start.cmp(&b.start)));
    let mut out = Vec::new();
    let mut i = 0;
    while i < calls.len() {
        let first = calls[i];
        let mut j = i;
        let mut total = 0u64;
        let mut end = first.end;
        while j < calls.len() && calls[j].parent == first.parent && calls[j].query == first.query {
            total = total.saturating_add(calls[j].end.saturating_sub(calls[j].start));
            end = end.max(calls[j].end);
            j += 1;
        }
        let repeats = j - i;
        if repeats >= rule.min_repeats && total >= rule.min_total.as_nanos() as u64 {
            out.push(Run {
                parent: first.parent,
                query: first.query,
                repeats,
                total_nanos: total,
                start: first.start,
                end,
            });
        }
        i = j;
    }
    out
}

/// The operation a run is counted under: its parent's when the parent is a request span of the
/// service; else the service's request span that started last before the run (the run's request
/// when its parent is an internal span, as Express's handler spans are); else `unknown`.
fn operation_of(p: &Pending, service: &str, parent: [u8; 8], start: u64) -> String {
    if let Some(r) = p
        .requests
        .iter()
        .find(|r| r.span == parent && r.service == service)
    {
        return r.operation.clone();
    }
    p.requests
        .iter()
        .filter(|r| r.service == service && r.start <= start)
        .max_by_key(|r| r.start)
        .map_or_else(|| "unknown".to_owned(), |r| r.operation.clone())
}

impl Collector for NPlusOne {
    fn collect(&self, out: &mut Vec<Metric>) {
        let now = Instant::now();
        let ledger = self.lock();
        if ledger.counts.any_live(now, self.ttl) {
            let mut fam = catalogue::DB_N_PLUS_ONE.metric();
            let mut rows: Vec<&Occurrences> = ledger
                .counts
                .iter_live(now, self.ttl)
                .map(|(_, o)| o)
                .collect();
            rows.sort_by(|a, b| a.labels.cmp(&b.labels));
            for o in rows {
                let [s, op, q] = &o.labels;
                let value = match &o.latest {
                    // The latest run's trace, the value its one increment.
                    Some(latest) => Value::SumWithExemplar(
                        o.count as f64,
                        Exemplar {
                            attributes: vec![("trace_id".into(), latest.trace_id.clone())],
                            value: 1.0,
                            timestamp: Some(latest.at_unix),
                        },
                    ),
                    None => Value::Sum(o.count as f64),
                };
                fam.push(&[("service", s), ("operation", op), ("query", q)], value);
            }
            if let Some(o) = ledger.counts.overflow_live(now, self.ttl) {
                fam.push(&[OVERFLOW_LABEL], Value::Sum(o.count as f64));
            }
            out.push(fam);
        }
        let mut dropped = catalogue::DB_N_PLUS_ONE_DROPPED.metric();
        for (i, reason) in DROP_REASONS.iter().enumerate() {
            dropped.push(&[("reason", reason)], Value::Sum(ledger.dropped[i] as f64));
        }
        out.push(dropped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn detector() -> NPlusOne {
        NPlusOne::new(
            Rule {
                settle: Duration::from_secs(2),
                max_age: Duration::from_secs(30),
                ..Rule::default()
            },
            100,
            Duration::from_secs(300),
            OverflowCounter::default(),
        )
    }

    fn call(
        d: &NPlusOne,
        trace: u8,
        parent: u8,
        query: &str,
        start_ms: u64,
        ms: u64,
        now: Instant,
    ) {
        d.observe_call(
            "shop",
            &DbCall {
                query,
                trace_id: &[trace; 16],
                parent_span_id: &[parent; 8],
                start_unix_nanos: 1_000_000 * MS + start_ms * MS,
                end_unix_nanos: 1_000_000 * MS + (start_ms + ms) * MS,
            },
            now,
        );
    }

    fn request(d: &NPlusOne, trace: u8, span: u8, route: &str, now: Instant) {
        d.observe_request(
            "shop",
            &RequestSpan {
                operation: Operation::Single(route),
                trace_id: &[trace; 16],
                span_id: &[span; 8],
                start_unix_nanos: 1_000_000 * MS,
            },
            now,
        );
    }

    fn counts(d: &NPlusOne) -> Vec<(Vec<(String, String)>, f64)> {
        let mut out = Vec::new();
        d.collect(&mut out);
        crate::catalogue::assert_agrees(&out);
        out.iter()
            .filter(|m| m.name == catalogue::DB_N_PLUS_ONE.name)
            .flat_map(|m| m.points.iter())
            .map(|p| {
                let v = match p.value {
                    Value::Sum(v) | Value::SumWithExemplar(v, _) => v,
                    _ => f64::NAN,
                };
                (p.attributes.clone(), v)
            })
            .collect()
    }

    #[test]
    fn a_run_is_counted_once_under_its_request_after_the_trace_settles() {
        let d = detector();
        let t0 = Instant::now();
        // Out of order: the run's second half, then the request, then the first query and the first half.
        call(&d, 1, 9, "SELECT authors", 0, 3, t0);
        for i in (10..20).rev() {
            call(&d, 1, 9, "SELECT books WHERE author_id = ?", i * 5, 4, t0);
        }
        request(&d, 1, 9, "/authors", t0);
        for i in 0..10 {
            call(
                &d,
                1,
                9,
                "SELECT books WHERE author_id = ?",
                i * 5 + 1,
                4,
                t0,
            );
        }
        d.settle(t0 + Duration::from_secs(1));
        assert!(counts(&d).is_empty(), "not settled yet");
        d.settle(t0 + Duration::from_secs(2));
        let c = counts(&d);
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(
            c[0].0,
            vec![
                ("service".to_owned(), "shop".to_owned()),
                ("operation".to_owned(), "/authors".to_owned()),
                (
                    "query".to_owned(),
                    "SELECT books WHERE author_id = ?".to_owned()
                ),
            ]
        );
        assert_eq!(c[0].1, 1.0);
        let o = &d.offenders()[0];
        assert_eq!(o.repeats, 20);
        assert!((o.total_seconds - 0.080).abs() < 1e-9);
        assert_eq!(o.trace_id, "01".repeat(16));
        // A late fragment of the same trace does not count the same run again.
        call(
            &d,
            1,
            9,
            "SELECT books WHERE author_id = ?",
            500,
            20,
            t0 + Duration::from_secs(3),
        );
        for i in 0..5 {
            call(
                &d,
                1,
                9,
                "SELECT books WHERE author_id = ?",
                600 + i,
                20,
                t0 + Duration::from_secs(3),
            );
        }
        d.settle(t0 + Duration::from_secs(6));
        assert_eq!(counts(&d)[0].1, 1.0);
        assert_eq!(d.traces_held(), 0);
    }

    #[test]
    fn below_the_rule_or_interrupted_runs_are_not_counted() {
        let d = detector();
        let t0 = Instant::now();
        // Four repeats: too few.
        for i in 0..4 {
            call(&d, 2, 1, "q", i * 30, 30, t0);
        }
        // Ten repeats of 2 ms: 20 ms in all, too fast to matter.
        for i in 0..10 {
            call(&d, 3, 1, "q", i * 3, 2, t0);
        }
        // Alternating queries: no run of five.
        for i in 0..10 {
            call(&d, 4, 1, if i % 2 == 0 { "a" } else { "b" }, i * 20, 20, t0);
        }
        // Five repeats under five different parents: no run under one parent.
        for i in 0..5 {
            call(&d, 5, i as u8, "q", i * 20, 20, t0);
        }
        // The run that is counted: no request known, so its operation is unknown.
        for i in 0..5 {
            call(&d, 6, 1, "q", i * 20, 10, t0);
        }
        d.settle(t0 + Duration::from_secs(5));
        let c = counts(&d);
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(c[0].0[1].1, "unknown");
    }

    #[test]
    fn an_internal_parent_takes_the_request_that_started_before_it() {
        let d = detector();
        let t0 = Instant::now();
        request(&d, 7, 1, "/items", t0);
        for i in 0..6 {
            call(&d, 7, 2, "SELECT item", i * 10, 10, t0);
        }
        d.settle(t0 + Duration::from_secs(60));
        assert_eq!(counts(&d)[0].0[1].1, "/items");
    }

    #[test]
    fn memory_is_bounded_and_what_does_not_fit_is_counted() {
        let d = detector();
        let t0 = Instant::now();
        for t in 0..(TRACE_LIMIT + 10) {
            let trace = (t as u128 + 1).to_be_bytes();
            d.observe_call(
                "s",
                &DbCall {
                    query: "q",
                    trace_id: &trace,
                    parent_span_id: &[1; 8],
                    start_unix_nanos: 1,
                    end_unix_nanos: 2,
                },
                t0,
            );
        }
        assert_eq!(d.traces_held(), TRACE_LIMIT);
        let mut out = Vec::new();
        d.collect(&mut out);
        crate::catalogue::assert_agrees(&out);
        let dropped = out
            .iter()
            .find(|m| m.name == catalogue::DB_N_PLUS_ONE_DROPPED.name)
            .unwrap();
        assert_eq!(dropped.points[0].value, Value::Sum(10.0));
        d.settle(t0 + Duration::from_secs(2));
        assert_eq!(d.traces_held(), 0);
    }
}
