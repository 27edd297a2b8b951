//! Which query: latency per query template and N+1 detection, from real apps with their real
//! OpenTelemetry auto-instrumentation against a real PostgreSQL whose statement log is the ground truth
//! (Flask + SQLAlchemy ORM, Express + node-postgres), and from hand-made OTLP exports for the bounds
//! (10,000 statements) and for traces split across exports and arriving out of order.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Exposition, Vitals};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, ResourceSpans, ScopeSpans, Span};
use prost::Message;

const QUERY: &str = "vitals_db_query_duration_seconds";
const N_PLUS_ONE: &str = "vitals_db_n_plus_one_total";

/// What PostgreSQL's log says was executed: per statement, its text and (simple protocol) duration.
#[derive(Debug, Default)]
struct Executed {
    text: String,
    seconds: Option<f64>,
}

/// Statements from a log written with `log_statement=all`, `log_min_duration_statement=0` and
/// `log_line_prefix='%p|'`: a `statement:` (simple protocol) or `execute` (extended protocol) line,
/// its continuation lines, then a `duration:` line of the same backend.
fn statement_log(log: &str) -> Vec<Executed> {
    let mut out: Vec<Executed> = Vec::new();
    let mut open: BTreeMap<String, usize> = BTreeMap::new();
    let mut continuing: Option<usize> = None;
    for line in log.lines() {
        let prefixed = line
            .split_once('|')
            .filter(|(pid, _)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
        let Some((pid, rest)) = prefixed else {
            if let Some(i) = continuing {
                out[i].text.push(' ');
                out[i].text.push_str(line.trim());
            }
            continue;
        };
        continuing = None;
        let text = rest
            .strip_prefix("LOG:  statement: ")
            .or_else(|| rest.strip_prefix("LOG:  execute <unnamed>: "));
        if let Some(text) = text {
            out.push(Executed {
                text: text.trim().to_owned(),
                seconds: None,
            });
            open.insert(pid.to_owned(), out.len() - 1);
            continuing = Some(out.len() - 1);
        } else if let Some(d) = rest.strip_prefix("LOG:  duration: ") {
            let ms: Option<f64> = d.split(" ms").next().and_then(|v| v.parse().ok());
            if let (Some(i), Some(ms)) = (open.remove(pid), ms) {
                if out[i].seconds.is_none() {
                    out[i].seconds = Some(ms / 1000.0);
                }
            }
        }
    }
    out
}

/// (count, sum) of the query histogram series whose `query` label satisfies `matches`, and how many
/// series that is.
fn query_totals(
    e: &Exposition,
    service: &str,
    matches: impl Fn(&str) -> bool,
) -> (f64, f64, usize) {
    let mut count = 0.0;
    let mut sum = 0.0;
    let mut series = 0;
    for s in e.all(&format!("{QUERY}_count")) {
        let label = |k: &str| {
            s.labels
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        if label("service") == Some(service) && label("query").is_some_and(&matches) {
            count += s.value;
            series += 1;
            let mut labels: Vec<(&str, &str)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            labels.sort();
            sum += e.get(&format!("{QUERY}_sum"), &labels).unwrap_or(f64::NAN);
        }
    }
    (count, sum, series)
}

/// Every `query` label in the exposition.
fn query_labels(e: &Exposition) -> Vec<String> {
    e.samples
        .iter()
        .filter(|s| s.name.starts_with("vitals_db_"))
        .filter_map(|s| s.labels.iter().find(|(k, _)| k == "query"))
        .map(|(_, v)| v.clone())
        .collect()
}

/// A label holds no literal: no quote, no digit that does not continue a name.
fn assert_no_literal(label: &str) {
    assert!(!label.contains('\''), "a quote in query label {label:?}");
    let b = label.as_bytes();
    for (i, c) in b.iter().enumerate() {
        if c.is_ascii_digit() {
            let prev = if i > 0 { b[i - 1] } else { b' ' };
            assert!(
                prev.is_ascii_alphanumeric() || prev == b'_' || prev == b'$',
                "a number in query label {label:?}"
            );
        }
    }
}

/// The live page's database panel from the first streamed frame that satisfies `until`.
fn live_db_panel(v: &Vitals, until: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    use std::io::BufRead;
    let resp = ureq::get(&format!("http://{}/live/stream", v.metrics))
        .timeout(Duration::from_secs(15))
        .call()
        .expect("GET /live/stream");
    let mut frame_next = false;
    let mut last = serde_json::Value::Null;
    for line in std::io::BufReader::new(resp.into_reader()).lines() {
        let Ok(line) = line else { break };
        if line == "event: frame" {
            frame_next = true;
            continue;
        }
        if let (true, Some(data)) = (frame_next, line.strip_prefix("data: ")) {
            let frame: serde_json::Value = serde_json::from_str(data).expect("a JSON frame");
            if until(&frame["db"]) {
                return frame["db"].clone();
            }
            last = frame["db"].clone();
        }
        frame_next = false;
    }
    panic!("no frame with the expected database panel; last: {last}");
}

fn python_app(pg: &str, endpoint: &str, lazy: u32, eager: u32, batch: u32) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/orm_app.py");
    let out = Command::new(common::sdk_python())
        .arg(script)
        .args(["--pg", pg, "--endpoint", endpoint])
        .args(["--lazy", &lazy.to_string(), "--eager", &eager.to_string()])
        .args(["--batch-size", &batch.to_string()])
        .output()
        .expect("run orm_app.py");
    assert!(
        out.status.success(),
        "orm_app.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("orm_app.py ground truth")
}

fn start_pg() -> common::Postgres {
    common::start_postgres(&[
        "log_statement=all",
        "log_min_duration_statement=0",
        "log_line_prefix=%p|",
    ])
}

fn n_plus_one(e: &Exposition, service: &str, operation: &str) -> Vec<(String, f64)> {
    e.all(N_PLUS_ONE)
        .into_iter()
        .filter(|s| {
            s.matches(
                N_PLUS_ONE,
                &[("service", service), ("operation", operation)],
            )
        })
        .map(|s| {
            let q = s
                .labels
                .iter()
                .find(|(k, _)| k == "query")
                .map(|(_, v)| v.clone());
            (q.unwrap_or_default(), s.value)
        })
        .collect()
}

#[test]
fn flask_sqlalchemy_lazy_load_is_flagged_eager_is_not_and_counts_match_the_statement_log() {
    let pg = start_pg();
    let v = Vitals::start(&["--db-trace-settle", "1s"]);
    let (_, http) = v.otlp_addrs();
    // Four spans per export: every request's 22 spans arrive in six exports.
    let truth = python_app(&pg.url(), &format!("http://{http}"), 3, 3, 4);
    let lazy_traces: Vec<&str> = truth["lazy"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    assert_eq!(lazy_traces.len(), 3);

    let lazy_books = |q: &str| q.contains("FROM books WHERE") && q.contains("= books.author_id");
    let e = v.wait_until(Duration::from_secs(15), "three N+1 runs", |e| {
        n_plus_one(e, "orm-shop", "/authors/lazy")
            .iter()
            .map(|(_, n)| n)
            .sum::<f64>()
            >= 3.0
    });
    // Settled traces are not judged again: still three a settle time later.
    std::thread::sleep(Duration::from_millis(1600));
    let e2 = v.scrape();
    let flagged = n_plus_one(&e2, "orm-shop", "/authors/lazy");
    assert_eq!(flagged.len(), 1, "{flagged:?}");
    assert!(lazy_books(&flagged[0].0), "{flagged:?}");
    assert_eq!(flagged[0].1, 3.0, "one run per lazy request");
    assert!(
        n_plus_one(&e2, "orm-shop", "/authors/eager").is_empty(),
        "the eager endpoint is never flagged:\n{}",
        e2.text
    );
    assert_eq!(e2.all(N_PLUS_ONE).len(), 1, "{}", e2.text);

    // Counts and latency per template against PostgreSQL's own log.
    let log = statement_log(&pg.log());
    type Matches<'a> = &'a dyn Fn(&str) -> bool;
    let cases: [(&str, Matches, f64); 3] = [
        (
            "authors list",
            &|q: &str| {
                q.starts_with("SELECT authors.id") && q.contains("FROM authors ORDER BY authors.id")
            },
            6.0,
        ),
        ("lazy books", &lazy_books, 60.0),
        (
            "eager books",
            &|q: &str| q.contains("FROM books WHERE books.author_id IN"),
            3.0,
        ),
    ];
    for (name, matches, expected) in cases {
        let executed: Vec<&Executed> = log.iter().filter(|x| matches(&x.text)).collect();
        let truth_count = executed.len() as f64;
        let truth_sum: f64 = executed.iter().filter_map(|x| x.seconds).sum();
        assert_eq!(truth_count, expected, "{name}: statements in the log");
        let (count, sum, series) = query_totals(&e, "orm-shop", matches);
        println!(
            "{name}: log {truth_count} statements, {:.1} ms; vitals {count} in {series} series, {:.1} ms",
            truth_sum * 1e3,
            sum * 1e3
        );
        assert_eq!(series, 1, "{name}: literals folded into one series");
        assert_eq!(count, truth_count, "{name}: count");
        // A span covers the server's execution plus the driver and the loopback round trip: never
        // less than the log's duration, and at most 15 ms more per query on a busy two-core machine.
        assert!(sum >= truth_sum * 0.99, "{name}: {sum} < {truth_sum}");
        assert!(
            (sum - truth_sum) / count <= 0.015,
            "{name}: {:.2} ms per query above the server's time",
            (sum - truth_sum) / count * 1e3
        );
    }
    // The counter's exemplar is the latest run's trace (the third lazy request), on OpenMetrics scrapes.
    let (_, _, om) = v.get(
        "/metrics",
        Some("application/openmetrics-text; version=1.0.0"),
    );
    let line = om
        .lines()
        .find(|l| l.starts_with(N_PLUS_ONE) && l.contains("/authors/lazy"))
        .expect("the N+1 counter in the OpenMetrics scrape");
    assert!(
        line.contains(&format!("# {{trace_id=\"{}\"}} 1", lazy_traces[2])),
        "{line}\nlazy traces {lazy_traces:?}"
    );
    // The live page lists the offender beside the slowest queries.
    let db = live_db_panel(&v, |db| {
        db["n_plus_one"].as_array().is_some_and(|a| !a.is_empty())
    });
    assert_eq!(db["n_plus_one"][0]["operation"], "/authors/lazy", "{db}");
    assert_eq!(db["n_plus_one"][0]["runs_total"], 3.0, "{db}");
    assert!(
        db["slowest_queries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|q| lazy_books(q["query"].as_str().unwrap_or(""))),
        "{db}"
    );
    for label in query_labels(&e2) {
        assert_no_literal(&label);
    }
    for literal in ["author 1", "book 101", "pg_sleep(0.004)"] {
        assert!(!e2.text.contains(literal), "{literal} in the exposition");
    }
}

#[test]
fn express_pg_loop_is_flagged_and_the_batch_query_is_not() {
    let pg = start_pg();
    let v = Vitals::start(&["--db-trace-settle", "1s"]);
    let (_, http) = v.otlp_addrs();
    // The schema (and its 4 ms view), made by the ORM app without requests.
    python_app(&pg.url(), &format!("http://{http}"), 0, 0, 512);
    let node = common::require_tool("node", "apt-get install nodejs");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node/pg_app.mjs");
    let out = Command::new(node)
        .arg(script)
        .args(["--pg", &pg.url(), "--endpoint", &format!("http://{http}")])
        .args(["--loop", "3", "--batch", "3"])
        .output()
        .expect("run pg_app.mjs");
    assert!(
        out.status.success(),
        "pg_app.mjs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let loop_query = "SELECT id, title FROM books WHERE id = ?";
    let e = v.wait_until(Duration::from_secs(15), "three N+1 runs", |e| {
        e.get(
            N_PLUS_ONE,
            &[
                ("service", "express-shop"),
                ("operation", "/items/loop"),
                ("query", loop_query),
            ],
        ) == Some(3.0)
    });
    std::thread::sleep(Duration::from_millis(1600));
    let e2 = v.scrape();
    assert_eq!(
        n_plus_one(&e2, "express-shop", "/items/loop"),
        vec![(loop_query.to_owned(), 3.0)]
    );
    assert!(
        n_plus_one(&e2, "express-shop", "/items/batch").is_empty(),
        "{}",
        e2.text
    );
    // Counts against the log (extended protocol: one `execute` line per query).
    let log = statement_log(&pg.log());
    let looped = log
        .iter()
        .filter(|x| x.text == "SELECT id, title FROM books WHERE id = $1")
        .count();
    let batched = log
        .iter()
        .filter(|x| {
            x.text
                .starts_with("SELECT id, title FROM books WHERE id = ANY($1)")
        })
        .count();
    assert_eq!((looped, batched), (60, 3));
    let (count, _, series) = query_totals(&e, "express-shop", |q| q == loop_query);
    assert_eq!((count, series), (60.0, 1));
    let (count, _, _) = query_totals(&e, "express-shop", |q| q.contains("= ANY(?)"));
    assert_eq!(count, 3.0);
    for label in query_labels(&e2) {
        assert_no_literal(&label);
    }
    for s in e2.all(&format!("{QUERY}_count")) {
        println!("express query series: {:?} {}", s.labels, s.value);
    }
    println!(
        "express: loop 60 queries, batch 3, N+1 runs {:?}",
        n_plus_one(&e2, "express-shop", "/items/loop")
    );
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

const T0: u64 = 1_700_000_000_000_000_000;
const MS: u64 = 1_000_000;

fn db_span(trace: u64, parent: u64, id: u64, statement: &str, start_ms: u64, ms: u64) -> Span {
    Span {
        trace_id: trace_id(trace),
        span_id: (id + 1).to_be_bytes().to_vec(),
        parent_span_id: (parent + 1).to_be_bytes().to_vec(),
        name: "SELECT shop".into(),
        kind: SpanKind::Client as i32,
        start_time_unix_nano: T0 + start_ms * MS,
        end_time_unix_nano: T0 + (start_ms + ms) * MS,
        attributes: vec![kv("db.system", "postgresql"), kv("db.statement", statement)],
        ..Default::default()
    }
}

fn trace_id(t: u64) -> Vec<u8> {
    (u128::from(t) + (1 << 100)).to_be_bytes().to_vec()
}

fn server_span(trace: u64, id: u64, route: &str, ms: u64) -> Span {
    Span {
        trace_id: trace_id(trace),
        span_id: (id + 1).to_be_bytes().to_vec(),
        name: format!("GET {route}"),
        kind: SpanKind::Server as i32,
        start_time_unix_nano: T0,
        end_time_unix_nano: T0 + ms * MS,
        attributes: vec![kv("http.route", route)],
        ..Default::default()
    }
}

fn send(http: std::net::SocketAddr, spans: Vec<Span>) {
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "otlp-shop")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let resp = ureq::post(&format!("http://{http}/v1/traces"))
        .set("Content-Type", "application/x-protobuf")
        .timeout(Duration::from_secs(20))
        .send_bytes(&req.encode_to_vec())
        .expect("POST /v1/traces");
    assert_eq!(resp.status(), 200);
}

#[test]
fn ten_thousand_literal_variants_are_one_series_and_distinct_statements_overflow() {
    let v = Vitals::start(&["--series-limit", "100"]);
    let (_, http) = v.otlp_addrs();
    for chunk in 0..10u64 {
        let spans = (0..1000u64)
            .map(|i| {
                let n = chunk * 1000 + i;
                let sql = format!(
                    "SELECT * FROM users WHERE email = 'person{n}@example.com' AND id IN ({n}, {}, {}) AND score > {n}.5",
                    n + 1,
                    n * 7
                );
                db_span(n, 0, n, &sql, 0, 1)
            })
            .collect();
        send(http, spans);
    }
    let e = v.wait_until(Duration::from_secs(10), "10,000 queries", |e| {
        e.sum(&format!("{QUERY}_count"), &[("service", "otlp-shop")]) >= 10_000.0
    });
    let series = e.all(&format!("{QUERY}_count"));
    assert_eq!(series.len(), 1, "{}", e.text);
    assert_eq!(
        series[0]
            .labels
            .iter()
            .find(|(k, _)| k == "query")
            .unwrap()
            .1,
        "SELECT * FROM users WHERE email = ? AND id IN (?) AND score > ?"
    );
    assert_eq!(series[0].value, 10_000.0);
    let overflow_before = e.get("vitals_exporter_series_overflow_total", &[]).unwrap();
    assert_eq!(overflow_before, 0.0);

    // 10,000 truly distinct statements: 99 more series fit under the limit of 100, the rest overflow.
    for chunk in 0..10u64 {
        let spans = (0..1000u64)
            .map(|i| {
                let n = chunk * 1000 + i;
                db_span(
                    n,
                    0,
                    n,
                    &format!("SELECT col FROM table_{n} WHERE k = {n}"),
                    0,
                    1,
                )
            })
            .collect();
        send(http, spans);
    }
    let e = v.wait_until(Duration::from_secs(10), "overflow", |e| {
        e.get("vitals_exporter_series_overflow_total", &[]) == Some(10_000.0 - 99.0)
    });
    let series = e.all(&format!("{QUERY}_count"));
    assert_eq!(series.len(), 101, "100 label sets and the overflow series");
    assert_eq!(
        e.get(
            &format!("{QUERY}_count"),
            &[("otel_metric_overflow", "true")]
        ),
        Some(10_000.0 - 99.0)
    );
    for label in query_labels(&e) {
        assert_no_literal(&label);
    }
    assert!(!e.text.contains("example.com"));
}

#[test]
fn traces_split_across_exports_and_out_of_order_are_judged_whole_within_the_settle_time() {
    let v = Vitals::start(&["--db-trace-settle", "1s"]);
    let (_, http) = v.otlp_addrs();
    let q = |id: u64| format!("SELECT * FROM books WHERE author_id = {id}");
    // Trace 1: a run of 8 (10 ms each) under the server span, spread over four exports, the server
    // span first and the queries in reverse order. Trace 2: the same shape with only 4 repeats.
    // Trace 3: 10 repeats of 2 ms (20 ms in all). Trace 4: 12 repeats in two halves under two parents.
    let mut exports: Vec<Vec<Span>> = vec![Vec::new(); 4];
    exports[0].push(server_span(1, 100, "/one", 200));
    for i in (0..8).rev() {
        exports[(8 - i as usize) % 4].push(db_span(1, 100, i, &q(i), 1 + i * 11, 10));
    }
    for i in 0..4 {
        exports[i as usize].push(db_span(2, 100, i, &q(i), 1 + i * 11, 10));
    }
    exports[3].push(server_span(2, 100, "/two", 100));
    exports[1].push(server_span(3, 100, "/three", 100));
    for i in 0..10 {
        exports[(i % 4) as usize].push(db_span(3, 100, i, &q(i), 1 + i * 3, 2));
    }
    exports[2].push(server_span(4, 100, "/four", 300));
    for i in 0..12 {
        let parent = if i < 6 { 101 } else { 102 };
        exports[3 - (i % 4) as usize].push(db_span(4, parent, i, &q(i), 1 + i * 11, 10));
    }
    for spans in exports {
        send(http, spans);
        std::thread::sleep(Duration::from_millis(150));
    }
    // Beyond the settle time: trace 5 gets 4 repeats, then 4 more after 2.5 s (two parts of 4:
    // neither meets the rule, the stated cost of a split beyond the window); trace 6 gets 6 and 6
    // (counted once, not twice).
    send(http, vec![server_span(5, 100, "/five", 50)]);
    send(http, vec![server_span(6, 100, "/six", 50)]);
    send(
        http,
        (0..4)
            .map(|i| db_span(5, 100, i, &q(i), 1 + i * 11, 10))
            .collect(),
    );
    send(
        http,
        (0..6)
            .map(|i| db_span(6, 100, i, &q(i), 1 + i * 11, 10))
            .collect(),
    );
    std::thread::sleep(Duration::from_millis(2500));
    send(
        http,
        (4..8)
            .map(|i| db_span(5, 100, i, &q(i), 1 + i * 11, 10))
            .collect(),
    );
    send(
        http,
        (6..12)
            .map(|i| db_span(6, 100, i, &q(i), 1 + i * 11, 10))
            .collect(),
    );
    std::thread::sleep(Duration::from_millis(2500));
    let e = v.scrape();
    let run = "SELECT * FROM books WHERE author_id = ?";
    let got: BTreeMap<String, f64> = e
        .all(N_PLUS_ONE)
        .into_iter()
        .map(|s| {
            let op = s
                .labels
                .iter()
                .find(|(k, _)| k == "operation")
                .unwrap()
                .1
                .clone();
            let query = s
                .labels
                .iter()
                .find(|(k, _)| k == "query")
                .unwrap()
                .1
                .clone();
            assert_eq!(query, run);
            (op, s.value)
        })
        .collect();
    let want: BTreeMap<String, f64> = [("/one", 1.0), ("/four", 2.0), ("/six", 1.0)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    println!("N+1 runs by operation: {got:?}");
    assert_eq!(got, want, "{}", e.text);
}

/// (count, sum) of one query's histogram for `service`.
fn one_query(e: &Exposition, service: &str, query: &str) -> (f64, f64) {
    let (count, sum, _) = query_totals(e, service, |q| q == query);
    (count, sum)
}

#[test]
fn a_full_pool_shows_as_waiting_for_a_connection_beside_a_query_that_stays_fast() {
    let pg = start_pg();
    // The Express app is the target, so its pool metrics become vitals' pool signal.
    let v = Vitals::start(&[
        "--process",
        r"pg_app\.mjs",
        "--interval",
        "200ms",
        "--db-trace-settle",
        "1s",
    ]);
    let (_, http) = v.otlp_addrs();
    let endpoint = format!("http://{http}");
    python_app(&pg.url(), &endpoint, 0, 0, 512);
    let node = common::require_tool("node", "apt-get install nodejs");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node/pg_app.mjs");
    // Eight clients, one connection: each query waits for the seven before it.
    let child = Command::new(node)
        .arg(script)
        .args(["--pg", &pg.url(), "--endpoint", &endpoint])
        .args(["--loop", "0", "--batch", "0", "--service", "express-busy"])
        .args(["--pool-max", "1", "--busy-seconds", "8"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start pg_app.mjs");
    let query = "SELECT id, title FROM books WHERE id = ?";
    let db = live_db_panel(&v, |db| {
        let full = db["pools"].as_array().is_some_and(|p| {
            p.iter()
                .any(|p| p["utilization"] == 1.0 && p["pending"].as_f64() >= Some(1.0))
        });
        let listed = |q: &str| {
            db["slowest_queries"]
                .as_array()
                .is_some_and(|s| s.iter().any(|x| x["query"] == q && x["p99"].is_number()))
        };
        // Enough queries in the window that its first ones (the connection being opened) do not
        // decide the medians.
        let busy = db["slowest_queries"].as_array().is_some_and(|s| {
            s.iter()
                .any(|x| x["query"] == query && x["rate"].as_f64() >= Some(5.0))
        });
        full && listed("pg-pool.connect") && listed(query) && busy
    });
    let out = child.wait_with_output().expect("pg_app.mjs");
    assert!(
        out.status.success(),
        "pg_app.mjs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let quantile = |q: &str, which: &str| {
        db["slowest_queries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["query"] == q)
            .and_then(|x| x[which].as_f64())
            .unwrap()
    };
    println!(
        "live page while the pool is full: pg-pool.connect p50 {:.1} ms p99 {:.1} ms, query p50 {:.1} ms p99 {:.1} ms, pools {}",
        quantile("pg-pool.connect", "p50") * 1e3,
        quantile("pg-pool.connect", "p99") * 1e3,
        quantile(query, "p50") * 1e3,
        quantile(query, "p99") * 1e3,
        db["pools"]
    );
    // Medians over the last minute: the typical request waits longer for its connection than its
    // query runs (tails share the top buckets when the machine is busy).
    assert!(
        quantile("pg-pool.connect", "p50") > quantile(query, "p50"),
        "{db}"
    );
    // Over the whole run: the wait is in the connect spans, the query spans stay near the server's time.
    let e = v.wait_until(Duration::from_secs(10), "busy queries", |e| {
        one_query(e, "express-busy", query).0 > 0.0
    });
    let (n, sum) = one_query(&e, "express-busy", query);
    let (waits, wait_sum) = one_query(&e, "express-busy", "pg-pool.connect");
    let log = statement_log(&pg.log());
    let executed = log
        .iter()
        .filter(|x| x.text == "SELECT id, title FROM books WHERE id = $1")
        .count() as f64;
    println!(
        "busy pool: {executed} queries in the log; vitals {n} queries, mean {:.1} ms; {waits} connection waits, mean {:.1} ms",
        sum / n * 1e3,
        wait_sum / waits * 1e3
    );
    assert!(n >= 50.0, "{n} queries in 8 s");
    assert!(
        (executed - n).abs() <= 8.0,
        "log {executed}, vitals {n}: at most the last export's in flight"
    );
    assert!(
        wait_sum / waits > 2.0 * (sum / n),
        "waits {wait_sum}/{waits}, queries {sum}/{n}"
    );
    assert!(
        e.all(N_PLUS_ONE).is_empty(),
        "one query per request is no N+1: {}",
        e.text
    );
}
