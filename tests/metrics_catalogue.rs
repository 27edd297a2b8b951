//! docs/metrics.md cannot drift: each row is the catalogue entry (`src/catalogue.rs`) of its name, byte
//! for byte in its name, type, labels and *present when* cells, in the section of the entry's area, and in
//! the catalogue's order; and the whole is compared with a live exposition (vitals watching a real process
//! with a listening socket and `--pss`), label values included where an entry fixes them.
//!
//! `VITALS_WRITE_METRICS_DOC=1 cargo test --test metrics_catalogue` rewrites those four cells of every row
//! from the catalogue (the *meaning* cell is prose and stays), for after a rename; a row added or removed is
//! still written by hand.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::{TestChild, Vitals};
use vitals::catalogue::{self, MetricDef};
use vitals::export::prometheus::naming::{exposition_name, label_name};
use vitals::model::{MetricKind, Origin};

/// One row of the catalogue.
#[derive(Debug)]
struct Row {
    kind: String,
    labels: BTreeSet<String>,
    when: String,
}

fn catalogue() -> BTreeMap<String, Row> {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/metrics.md"))
            .unwrap();
    let mut rows = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        assert_eq!(cells.len(), 5, "docs/metrics.md row: {line}");
        let name = cells[0].trim_matches('`').to_owned();
        let labels = cells[2]
            .split(',')
            .map(|l| l.trim().trim_matches('`').to_owned())
            .filter(|l| !l.is_empty())
            .collect();
        let row = Row {
            kind: cells[1].to_owned(),
            labels,
            when: cells[3].to_owned(),
        };
        assert!(
            rows.insert(name.clone(), row).is_none(),
            "{name} listed twice"
        );
    }
    assert!(rows.len() > 40, "only {} rows parsed", rows.len());
    rows
}

/// Family name → (type, label names) from `# TYPE` lines and samples.
fn live_families(text: &str) -> BTreeMap<String, (String, BTreeSet<String>)> {
    let mut families: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            families.entry(name.to_owned()).or_default().0 = kind.to_owned();
        }
    }
    let exposition = common::Exposition::parse(text);
    for s in &exposition.samples {
        let family = families
            .keys()
            .filter(|f| s.name.starts_with(f.as_str()))
            .max_by_key(|f| f.len())
            .cloned();
        let Some(family) = family else { continue };
        let labels = &mut families.get_mut(&family).unwrap().1;
        for (k, _) in &s.labels {
            if k != "le" {
                labels.insert(k.clone());
            }
        }
    }
    families
}

#[test]
fn catalogue_matches_the_live_exposition() {
    let rows = catalogue();
    let child = TestChild::hold(&["--listen", "16", "--threads", "2"]);
    let pid = child.pid().to_string();
    let v = Vitals::start(&["--pid", &pid, "--pss", "--interval", "100ms"]);
    v.wait_until(Duration::from_secs(10), "target sampled", |e| {
        e.has("process_threads") && e.has("vitals_pool_accept_queue_backlog_source")
    });
    let (_, _, text) = v.get("/metrics", None);
    let live = live_families(&text);
    for (name, (kind, labels)) in &live {
        let row = rows
            .get(name)
            .unwrap_or_else(|| panic!("{name} is exposed but missing from docs/metrics.md"));
        assert_eq!(&row.kind, kind, "{name}: type in docs/metrics.md");
        assert!(
            labels.is_subset(&row.labels),
            "{name}: live labels {labels:?}, documented {:?}",
            row.labels
        );
    }
    // Every live sample's labels are declared by its entry, with a value of the entry's set where it
    // fixes one.
    let wrong = common::catalogue_disagreements(&common::Exposition::parse(&text));
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    for (name, row) in &rows {
        if row.when == "always" || row.when == "target" || row.when == "selected" {
            assert!(
                live.contains_key(name),
                "{name} is documented as present ({}) but not exposed",
                row.when
            );
        }
    }
}

#[test]
fn every_family_in_the_source_is_documented() {
    let rows = catalogue();
    let names = common::source_exposition_names();
    assert!(names.len() > 20, "found only {names:?}");
    for name in names {
        let with_total = format!("{name}_total");
        assert!(
            rows.contains_key(&name) || rows.contains_key(&with_total),
            "{name} (from the source) has no row in docs/metrics.md"
        );
    }
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

/// The first four cells of an entry's row, as docs/metrics.md writes them.
fn row_start(d: &MetricDef) -> String {
    let kind = match d.kind {
        MetricKind::Counter => "counter",
        MetricKind::UpDownCounter | MetricKind::Gauge => "gauge",
        MetricKind::Histogram => "histogram",
        MetricKind::Summary => "summary",
    };
    let labels: Vec<String> = d
        .labels
        .iter()
        .map(|l| format!("`{}`", label_name(l.key)))
        .collect();
    let labels = if labels.is_empty() {
        String::new()
    } else {
        format!("{} ", labels.join(", "))
    };
    format!(
        "| `{}` | {kind} | {labels}| {} |",
        family_name(d),
        d.present.doc()
    )
}

#[test]
fn docs_rows_are_the_catalogue() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/metrics.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let rows: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.starts_with("| `"))
        .collect();
    let heading_of = |line: usize| {
        text.lines()
            .take(line)
            .filter_map(|l| l.strip_prefix("## "))
            .last()
            .unwrap_or("")
    };
    if std::env::var_os("VITALS_WRITE_METRICS_DOC").is_some() {
        assert_eq!(
            rows.len(),
            catalogue::ALL.len(),
            "rows are rewritten in place: add or remove rows by hand first"
        );
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        for ((i, line), d) in rows.iter().zip(catalogue::ALL) {
            let meaning = line.splitn(6, '|').nth(5).unwrap_or(" |");
            lines[*i] = format!("{}{meaning}", row_start(d));
        }
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        return;
    }
    let mut broken = Vec::new();
    let documented: BTreeSet<&str> = rows
        .iter()
        .map(|(_, l)| l.split('`').nth(1).unwrap_or(""))
        .collect();
    for (k, d) in catalogue::ALL.iter().enumerate() {
        let name = family_name(d);
        let Some((i, line)) = rows
            .iter()
            .find(|(_, l)| l.split('`').nth(1) == Some(&name))
        else {
            broken.push(format!("{name} ({}) has no row in docs/metrics.md", d.name));
            continue;
        };
        let want = row_start(d);
        if !line.starts_with(&want) {
            broken.push(format!(
                "row of {name}:\n  docs:      {line}\n  catalogue: {want} …"
            ));
        }
        if !heading_of(*i).starts_with(d.area.heading()) {
            broken.push(format!(
                "{name} is under \"{}\", its entry's area is \"{}\"",
                heading_of(*i),
                d.area.heading()
            ));
        }
        if rows.get(k).map(|(_, l)| l.split('`').nth(1)) != Some(Some(name.as_str())) {
            broken.push(format!("{name}: row {k} is not in the catalogue's order"));
        }
    }
    let declared: BTreeSet<String> = catalogue::ALL.iter().map(|d| family_name(d)).collect();
    for name in documented {
        if !declared.contains(name) {
            broken.push(format!(
                "docs/metrics.md lists {name}, which has no catalogue entry"
            ));
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn every_catalogue_entry_is_declared_once_and_listed() {
    // Every `pub static X: MetricDef` of the catalogue is in `ALL`, names and exposition names are unique.
    let src =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/catalogue.rs"))
            .unwrap();
    let statics = src.matches(": MetricDef = MetricDef {").count();
    assert_eq!(
        statics,
        catalogue::ALL.len(),
        "an entry is missing from ALL"
    );
    let names: BTreeSet<&str> = catalogue::ALL.iter().map(|d| d.name).collect();
    let families: BTreeSet<String> = catalogue::ALL.iter().map(|d| family_name(d)).collect();
    assert_eq!(
        names.len(),
        catalogue::ALL.len(),
        "a name is declared twice"
    );
    assert_eq!(
        families.len(),
        catalogue::ALL.len(),
        "two entries share an exposition name"
    );
    assert!(
        catalogue::ALL.len() > 80,
        "{} entries",
        catalogue::ALL.len()
    );
}
