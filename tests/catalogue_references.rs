//! The shipped artefacts name only what the catalogue declares: every `vitals_*` series a Grafana
//! dashboard (and its builder), a rule file (the Prometheus rules, the PrometheusRule, the promtool tests)
//! or the live page's threshold table reads is the exposition name of a catalogue entry (a histogram's
//! `_bucket`/`_count`/`_sum` included), and every label those queries match on or group by is a label the
//! entries they read declare, or one that target naming, Prometheus or Kubernetes adds. Recording rules'
//! outputs (`vitals:…:…`) are defined by the rule files themselves and carry the labels of what they read.
//! No tool is needed: this reads the files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use vitals::catalogue::{self, MetricDef};
use vitals::export::prometheus::naming::{exposition_name, label_name};
use vitals::model::{MetricKind, Origin};

/// Labels no entry declares that a query may still use besides the catalogue's shared ones (`target`, the
/// overflow series' label): the ones Prometheus or the PodMonitor add to every scraped series, `le` of a
/// histogram's buckets and `__name__`.
const ADDED_LABELS: &[&str] = &["namespace", "pod", "job", "instance", "le", "__name__"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The family name an entry has in the Prometheus text format (counters end in `_total`).
fn family_name(d: &MetricDef) -> String {
    let name = exposition_name(d.name, d.unit, d.kind, Origin::Vitals);
    if d.kind == MetricKind::Counter {
        format!("{name}_total")
    } else {
        name
    }
}

/// Exposition name → entry.
fn entries() -> BTreeMap<String, &'static MetricDef> {
    catalogue::ALL
        .iter()
        .map(|d| (family_name(d), *d))
        .collect()
}

/// The entry a series name belongs to: its family, or a histogram's `_bucket`, `_count` or `_sum`.
fn entry_of<'a>(
    entries: &'a BTreeMap<String, &'static MetricDef>,
    series: &str,
) -> Option<&'a MetricDef> {
    if let Some(d) = entries.get(series) {
        return Some(d);
    }
    ["_bucket", "_count", "_sum"].iter().find_map(|s| {
        let d = entries.get(series.strip_suffix(s)?)?;
        (d.kind == MetricKind::Histogram).then_some(*d)
    })
}

/// Exposition names of an entry's labels.
fn declared(d: &MetricDef) -> BTreeSet<String> {
    d.labels.iter().map(|l| label_name(l.key)).collect()
}

/// What one query reads: selectors (a metric name with the labels its matchers use), the labels it
/// groups or joins by, and whether it reads anything that is neither vitals' own nor a recording rule.
#[derive(Debug, Default, PartialEq)]
struct Query {
    selectors: Vec<(String, BTreeSet<String>)>,
    grouping: BTreeSet<String>,
    others: BTreeSet<String>,
}

const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "inf",
    "nan",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// PromQL's aggregation operators.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "limitk",
    "limit_ratio",
];

/// Reads a PromQL expression (or a promtool series notation, or a Grafana `label_values(…)` query).
fn parse(expr: &str) -> Query {
    let c: Vec<char> = expr.chars().collect();
    let mut q = Query::default();
    let mut i = 0;
    let skip_string = |i: &mut usize| {
        let quote = c[*i];
        *i += 1;
        let start = *i;
        while *i < c.len() && c[*i] != quote {
            if c[*i] == '\\' {
                *i += 1;
            }
            *i += 1;
        }
        let s: String = c[start..(*i).min(c.len())].iter().collect();
        *i += 1;
        s
    };
    let ident_at = |i: usize| c[i].is_ascii_alphabetic() || c[i] == '_' || c[i] == ':';
    let mut last_function = String::new();
    while i < c.len() {
        match c[i] {
            '"' | '\'' | '`' => {
                skip_string(&mut i);
            }
            '[' => {
                while i < c.len() && c[i] != ']' {
                    i += 1;
                }
                i += 1;
            }
            '{' => {
                // A selector without a metric name: its names are in `__name__`.
                let (labels, names) = matchers(&c, &mut i);
                for n in names {
                    q.selectors.push((n, labels.clone()));
                }
            }
            _ if ident_at(i) => {
                let start = i;
                while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_' || c[i] == ':') {
                    i += 1;
                }
                let word: String = c[start..i].iter().collect();
                let mut j = i;
                while j < c.len() && c[j].is_whitespace() {
                    j += 1;
                }
                let next = c.get(j).copied();
                if matches!(
                    word.as_str(),
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                ) {
                    if next == Some('(') {
                        let end = c[j..]
                            .iter()
                            .position(|x| *x == ')')
                            .map_or(c.len(), |p| j + p);
                        let list: String = c[j + 1..end].iter().collect();
                        q.grouping.extend(
                            list.split(',')
                                .map(|l| l.trim().to_owned())
                                .filter(|l| !l.is_empty()),
                        );
                        i = end + 1;
                    }
                    continue;
                }
                // A function, or an aggregation whose `by (…)` comes before its argument.
                if next == Some('(') || (AGGREGATIONS.contains(&word.as_str()) && next != Some('{'))
                {
                    last_function = word;
                    continue;
                }
                if KEYWORDS.contains(&word.as_str()) {
                    continue;
                }
                let mut labels = BTreeSet::new();
                if next == Some('{') {
                    i = j;
                    let (l, _) = matchers(&c, &mut i);
                    labels = l;
                }
                if word.starts_with("vitals_") || word.contains(':') {
                    q.selectors.push((word, labels));
                } else {
                    q.others.insert(word);
                }
            }
            ',' if last_function == "label_values" => {
                // `label_values(selector, label)`: the label is read from the selector's series.
                i += 1;
                let start = i;
                while i < c.len() && c[i] != ')' {
                    i += 1;
                }
                let l: String = c[start..i].iter().collect();
                q.grouping.insert(l.trim().to_owned());
            }
            _ => i += 1,
        }
    }
    q
}

/// The label names of a `{…}` matcher list at `i` (left just past the `}`), and the `vitals_` names a
/// `__name__` matcher's value names.
fn matchers(c: &[char], i: &mut usize) -> (BTreeSet<String>, Vec<String>) {
    let mut labels = BTreeSet::new();
    let mut names = Vec::new();
    *i += 1;
    let name_re = regex::Regex::new(r"vitals_[a-z0-9_]*[a-z0-9]").expect("valid regex");
    while *i < c.len() && c[*i] != '}' {
        if c[*i].is_ascii_alphabetic() || c[*i] == '_' {
            let start = *i;
            while *i < c.len() && (c[*i].is_ascii_alphanumeric() || c[*i] == '_') {
                *i += 1;
            }
            let label: String = c[start..*i].iter().collect();
            // Up to the value's opening quote.
            while *i < c.len() && c[*i] != '"' && c[*i] != '\'' {
                *i += 1;
            }
            let quote = c.get(*i).copied().unwrap_or('"');
            *i += 1;
            let vstart = *i;
            while *i < c.len() && c[*i] != quote {
                if c[*i] == '\\' {
                    *i += 1;
                }
                *i += 1;
            }
            let value: String = c[vstart..(*i).min(c.len())].iter().collect();
            *i += 1;
            if label == "__name__" {
                names.extend(name_re.find_iter(&value).map(|m| m.as_str().to_owned()));
            }
            labels.insert(label);
        } else {
            *i += 1;
        }
    }
    *i += 1;
    (labels, names)
}

/// The recording rules of the shipped rule file: output name → the labels of the series it reads (its
/// grouping labels when it aggregates with `by`, else everything the series it reads declare).
fn recorded(entries: &BTreeMap<String, &'static MetricDef>) -> BTreeMap<String, BTreeSet<String>> {
    let rules: yaml_serde::Value =
        yaml_serde::from_str(&read("deploy/prometheus/vitals.rules.yml")).expect("rules parse");
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for g in rules["groups"].as_sequence().expect("groups") {
        for r in g["rules"].as_sequence().expect("rules") {
            let Some(name) = r.get("record").and_then(|v| v.as_str()) else {
                continue;
            };
            let q = parse(r["expr"].as_str().expect("expr"));
            let mut labels = q.grouping.clone();
            if labels.is_empty() {
                for (s, _) in &q.selectors {
                    if let Some(d) = entry_of(entries, s) {
                        labels.extend(declared(d));
                    }
                    if let Some(l) = out.get(s) {
                        labels.extend(l.iter().cloned());
                    }
                }
            }
            out.entry(name.to_owned()).or_default().extend(labels);
        }
    }
    out
}

/// Every query of the artefacts, with where it comes from.
fn queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    // Dashboards: every `expr` and every variable's `query`.
    let dir = root().join("grafana/dashboards");
    for entry in std::fs::read_dir(&dir).expect("dashboards dir").flatten() {
        let path = entry.path();
        let d: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard readable"))
                .expect("dashboard parses");
        let file = path
            .file_name()
            .expect("a name")
            .to_string_lossy()
            .into_owned();
        let mut stack = vec![&d];
        while let Some(v) = stack.pop() {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, v) in m {
                        if let (true, Some(s)) = (k == "expr" || k == "query", v.as_str()) {
                            out.push((format!("{file} {k}"), s.to_owned()));
                        }
                        stack.push(v);
                    }
                }
                serde_json::Value::Array(a) => stack.extend(a),
                _ => {}
            }
        }
    }
    // Rule files: Prometheus rules and the PrometheusRule.
    for (rel, groups) in [
        ("deploy/prometheus/vitals.rules.yml", &["groups"][..]),
        (
            "deploy/kubernetes/base/prometheusrule.yaml",
            &["spec", "groups"][..],
        ),
    ] {
        let mut v: yaml_serde::Value = yaml_serde::from_str(&read(rel)).expect("yaml parses");
        for k in groups {
            v = v[*k].clone();
        }
        for g in v.as_sequence().expect("groups") {
            for r in g["rules"].as_sequence().expect("rules") {
                let name = r.get("alert").or(r.get("record")).and_then(|v| v.as_str());
                out.push((
                    format!("{rel} {}", name.unwrap_or("?")),
                    r["expr"].as_str().expect("expr").to_owned(),
                ));
            }
        }
    }
    // promtool tests: the input series and the expressions they evaluate.
    let rel = "deploy/prometheus/tests/alerts.test.yml";
    let t: yaml_serde::Value = yaml_serde::from_str(&read(rel)).expect("tests parse");
    for test in t["tests"].as_sequence().expect("tests") {
        for s in test["input_series"].as_sequence().into_iter().flatten() {
            out.push((
                format!("{rel} input"),
                s["series"].as_str().expect("series").to_owned(),
            ));
        }
        for e in test["promql_expr_test"].as_sequence().into_iter().flatten() {
            out.push((
                format!("{rel} expr"),
                e["expr"].as_str().expect("expr").to_owned(),
            ));
        }
    }
    // The page's thresholds: every string literal that reads a series.
    let rel = "src/export/http/live/thresholds.rs";
    let literal = regex::Regex::new(r#""((?:[^"\\]|\\.)*)""#).expect("valid regex");
    for m in literal.captures_iter(&read(rel)) {
        if m[1].contains("vitals_") {
            out.push((rel.to_owned(), m[1].replace("\\\"", "\"")));
        }
    }
    out
}

/// What in the artefacts disagrees with the catalogue.
fn disagreements(queries: &[(String, String)]) -> Vec<String> {
    let entries = entries();
    let recorded = recorded(&entries);
    let mut broken = Vec::new();
    for (from, expr) in queries {
        let q = parse(expr);
        let mut readable: BTreeSet<String> = ADDED_LABELS
            .iter()
            .chain(catalogue::SHARED_LABELS)
            .map(|s| s.to_string())
            .collect();
        for (series, labels) in &q.selectors {
            let declared_here = if let Some(l) = recorded.get(series) {
                l.clone()
            } else if let Some(d) = entry_of(&entries, series) {
                declared(d)
            } else {
                broken.push(format!(
                    "{from}: {series} is not the exposition name of a catalogue entry (in `{expr}`)"
                ));
                continue;
            };
            for l in labels {
                let added = ADDED_LABELS.contains(&l.as_str())
                    || catalogue::SHARED_LABELS.contains(&l.as_str());
                if !declared_here.contains(l) && !added {
                    broken.push(format!(
                        "{from}: {series} has no label {l} (declared: {declared_here:?})"
                    ));
                }
            }
            readable.extend(declared_here);
        }
        // Grouping labels are checked when every series the query reads is vitals' own.
        if q.others.is_empty() && !q.selectors.is_empty() {
            for l in &q.grouping {
                if !readable.contains(l) {
                    broken.push(format!(
                        "{from}: groups by {l}, which no series it reads declares (in `{expr}`)"
                    ));
                }
            }
        }
    }
    broken
}

#[test]
fn dashboards_rules_and_thresholds_name_only_catalogue_entries() {
    let qs = queries();
    let vitals_queries = qs.iter().filter(|(_, e)| e.contains("vitals")).count();
    assert!(
        vitals_queries > 100,
        "only {vitals_queries} queries read vitals' series: {qs:?}"
    );
    let broken = disagreements(&qs);
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn the_dashboard_builder_names_only_catalogue_entries() {
    // The builder writes the dashboards (tests/deploy_artifacts.rs checks they are its output); every
    // series name it spells must still be an entry's, so a rename cannot hide in a string it joins.
    let entries = entries();
    let text = read("grafana/build.py");
    let name = regex::Regex::new(r"[A-Za-z0-9_:]*vitals_[a-z0-9_]*[a-z0-9*]").expect("valid regex");
    let mut seen = 0;
    for m in name.find_iter(&text) {
        let n = m.as_str();
        if n.contains(':') || n.ends_with('*') || !n.starts_with("vitals_") {
            continue;
        }
        seen += 1;
        assert!(
            entry_of(&entries, n).is_some(),
            "grafana/build.py names {n}, which is no catalogue entry's exposition name"
        );
    }
    assert!(seen > 40, "only {seen} names found in grafana/build.py");
}

#[test]
fn a_wrong_name_or_label_is_found() {
    // The checks above must be able to fail: a renamed series, an undeclared matcher, an undeclared
    // grouping label, a wrong `__name__` regex and a recording rule's lost label are each reported.
    let qs: Vec<(String, String)> = [
        "rate(vitals_gc_pause_second_total[5m])",
        r#"vitals_gc_pause_max_seconds{collector="g1"}"#,
        "sum by (operation) (vitals_gc_pause_max_seconds)",
        r#"label_values({__name__=~"vitals_request_duration(_count)?"}, operation)"#,
        "sum by (le) (vitals:request_rate:rate5m) > 0 and vitals:apdex:ratio_rate5m{statistic=\"x\"}",
    ]
    .iter()
    .map(|e| ("test".to_owned(), (*e).to_owned()))
    .collect();
    let broken = disagreements(&qs);
    for expected in [
        "vitals_gc_pause_second_total is not",
        "vitals_gc_pause_max_seconds has no label collector",
        "groups by operation",
        "vitals_request_duration is not",
        "vitals:apdex:ratio_rate5m has no label statistic",
    ] {
        assert!(
            broken.iter().any(|b| b.contains(expected)),
            "not reported: {expected}; got {broken:#?}"
        );
    }
    assert_eq!(broken.len(), 6, "{broken:#?}");
    // And the parser sees what a query reads.
    let q = parse(
        r#"sum by (service, le) (rate(vitals_request_duration_seconds_bucket{outcome="ok", le="0.1"}[5m])) / on (pod) up"#,
    );
    assert_eq!(
        q.selectors,
        [(
            "vitals_request_duration_seconds_bucket".to_owned(),
            BTreeSet::from(["le".to_owned(), "outcome".to_owned()])
        )]
    );
    assert_eq!(
        q.grouping,
        BTreeSet::from(["le".to_owned(), "pod".to_owned(), "service".to_owned()])
    );
    assert_eq!(q.others, BTreeSet::from(["up".to_owned()]));
}
