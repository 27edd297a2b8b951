//! docs/metrics.md cannot drift: compared with a live exposition (vitals watching a real process with a
//! listening socket and `--pss`) and with every family name in the source.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::{TestChild, Vitals};

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
