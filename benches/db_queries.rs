//! Prints the cost of the database-query path: the SQL templater in ns per statement next to a naive
//! two-regex literal replacement and a plain copy of the same statements (the peers), and the whole
//! consumer (template, query histogram, N+1 bookkeeping) in µs per span next to RED's consumer on
//! requests of the same size. Medians of 15 rounds.
//!
//! `cargo bench --bench db_queries`

use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, ResourceSpans, ScopeSpans, Span};
use prost::Message;
use vitals::bounded::OverflowCounter;
use vitals::pipeline::{Consumer, TraceView};
use vitals::signal::latency::RedSignal;
use vitals::signal::n_plus_one::{NPlusOne, Rule};
use vitals::signal::query::{DbQueries, QuerySignal};
use vitals::signal::sql_template::{template_into, Quoting};

const ROUNDS: usize = 15;

/// The bench's own request, read in place as the receiver hands it to the consumers.
fn view(bytes: &[u8]) -> TraceView<'_> {
    TraceView::parse(bytes).expect("the bench's own request")
}

fn statements() -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..64u64 {
        out.push(format!(
            "SELECT books.id AS books_id, books.author_id AS books_author_id, books.title AS books_title \
             FROM books WHERE {i} = books.author_id"
        ));
        out.push(format!(
            "UPDATE users SET email = 'user{i}@example.com', last_seen = '2026-12-05 02:{:02}:00', score = {}.5 \
             WHERE id = {i}",
            i % 60,
            i * 7
        ));
        let ids: Vec<String> = (0..50).map(|k| (i * 50 + k).to_string()).collect();
        out.push(format!(
            "SELECT * FROM orders WHERE id IN ({})",
            ids.join(", ")
        ));
        out.push(format!(
            "INSERT INTO events (kind, payload, at) VALUES ('click', '{{\"x\": {i}}}', now()), ('view', '{{}}', now())"
        ));
    }
    out
}

/// Median seconds per round of `f`.
fn median(mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[ROUNDS / 2]
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

fn request(spans: usize, db: bool, round: u64, statements: &[String]) -> ExportTraceServiceRequest {
    let spans = (0..spans)
        .map(|i| {
            let trace = (round as u128) << 64 | (i as u128 / 20 + 1);
            Span {
                trace_id: trace.to_be_bytes().to_vec(),
                span_id: (i as u64 + 1).to_be_bytes().to_vec(),
                parent_span_id: 7u64.to_be_bytes().to_vec(),
                name: if db {
                    "SELECT shop".into()
                } else {
                    "GET /api/users/{id}".into()
                },
                kind: if db {
                    SpanKind::Client
                } else {
                    SpanKind::Server
                } as i32,
                start_time_unix_nano: 1_700_000_000_000_000_000 + i as u64 * 1000,
                end_time_unix_nano: 1_700_000_000_000_000_000 + i as u64 * 1000 + 3_000_000,
                attributes: if db {
                    vec![
                        kv("db.system", "postgresql"),
                        kv("db.name", "shop"),
                        kv("db.statement", &statements[i % statements.len()]),
                    ]
                } else {
                    vec![
                        kv("http.request.method", "GET"),
                        kv("http.route", "/api/users/{id}"),
                    ]
                },
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "shop")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn main() {
    let stmts = statements();
    let n = stmts.len() as f64;
    let mut out = String::new();
    let templater = median(|| {
        for s in &stmts {
            template_into(s, Quoting::Standard, &mut out);
            std::hint::black_box(&out);
        }
    }) / n;
    let strings = regex::Regex::new(r"'(?:[^']|'')*'").unwrap();
    let numbers = regex::Regex::new(r"\b\d+(?:\.\d+)?\b").unwrap();
    let naive = median(|| {
        for s in &stmts {
            let a = strings.replace_all(s, "?");
            std::hint::black_box(numbers.replace_all(&a, "?"));
        }
    }) / n;
    let copy = median(|| {
        for s in &stmts {
            std::hint::black_box(s.to_owned());
        }
    }) / n;
    let bytes: f64 = stmts.iter().map(|s| s.len() as f64).sum::<f64>() / n;
    println!(
        "SQL templater, {} statements of {bytes:.0} bytes on average:",
        stmts.len()
    );
    println!("  templater      {:>8.0} ns/statement", templater * 1e9);
    println!(
        "  two regexes    {:>8.0} ns/statement (templater/regex = {:.2}; the regexes fold no lists and leak after an open quote)",
        naive * 1e9,
        templater / naive
    );
    println!(
        "  copy           {:>8.0} ns/statement (templater/copy = {:.1})",
        copy * 1e9,
        templater / copy
    );

    for spans in [10usize, 100] {
        let db = DbQueries {
            store: Arc::new(QuerySignal::new(
                2000,
                Duration::from_secs(3600),
                OverflowCounter::default(),
            )),
            n_plus_one: Arc::new(NPlusOne::new(
                Rule::default(),
                2000,
                Duration::from_secs(3600),
                OverflowCounter::default(),
            )),
        };
        let red = RedSignal::new(2000, Duration::from_secs(3600), OverflowCounter::default());
        let per = 1000 / spans;
        // The consumers read requests in place, as the receiver hands them over.
        let bytes_db: Vec<_> = (0..per)
            .map(|r| request(spans, true, r as u64, &stmts).encode_to_vec())
            .collect();
        let bytes_red: Vec<_> = (0..per)
            .map(|r| request(spans, false, r as u64, &stmts).encode_to_vec())
            .collect();
        let reqs_db: Vec<_> = bytes_db.iter().map(|b| view(b)).collect();
        let reqs_red: Vec<_> = bytes_red.iter().map(|b| view(b)).collect();
        let t_db = median(|| {
            for r in &reqs_db {
                std::hint::black_box(db.consume(r));
            }
            // Judge and forget what was held, as the timer does, so every round starts alike.
            db.n_plus_one
                .settle(Instant::now() + Duration::from_secs(120));
        }) / (per * spans) as f64;
        let t_red = median(|| {
            for r in &reqs_red {
                std::hint::black_box(red.consume(r));
            }
        }) / (per * spans) as f64;
        println!(
            "{spans} spans per request: database consumer {:.2} µs/span (incl. N+1 judgement), RED consumer {:.2} µs/span, ratio {:.1}",
            t_db * 1e6,
            t_red * 1e6,
            t_db / t_red
        );
    }
}
