//! The one-direction data flow, checked on the source: which top-level modules may use which. A module's
//! uses are the `crate::…` paths (and `super::…` paths that leave its folder) in its code, test code left
//! out. The rules are those of the layout in the README: the receiver hands requests to consumers and
//! knows nothing downstream, the store knows nothing of sources or exporters, the neutral model depends on
//! nothing, and only the exporters know Prometheus naming.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Source files under `src/`, with the top-level module each belongs to (`receiver`, `store`, `model`…).
fn sources() -> Vec<(String, PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("src is readable").flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = path.strip_prefix(&root).expect("under src");
            let first = rel.components().next().expect("a component");
            let module = first
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_owned();
            let text = std::fs::read_to_string(&path).expect("source is readable");
            out.push((module, path, without_tests(&text)));
        }
    }
    out
}

/// The code with every `#[cfg(test)]` item (a test module or a test-only function) removed.
fn without_tests(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "#[cfg(test)]" {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        // Skip the item that follows: up to the line where its braces close again.
        let mut depth = 0i32;
        let mut opened = false;
        for l in lines.by_ref() {
            for c in l.chars() {
                match c {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            if (opened && depth <= 0) || (!opened && l.trim_end().ends_with(';')) {
                break;
            }
        }
    }
    out
}

/// The top-level modules a file's code uses.
fn uses(module: &str, path: &Path, code: &str) -> BTreeSet<String> {
    let path_re = regex::Regex::new(r"\bcrate::([a-z_]+)").expect("valid regex");
    let mut out: BTreeSet<String> = path_re
        .captures_iter(code)
        .map(|c| c[1].to_owned())
        .collect();
    // Grouped imports: `use crate::{model::Metric, store::X}`.
    let group_re = regex::Regex::new(r"use crate::\{([^}]*)\}").expect("valid regex");
    for c in group_re.captures_iter(code) {
        for part in c[1].split(',') {
            if let Some(first) = part.trim().split("::").next() {
                if !first.is_empty() {
                    out.insert(first.to_owned());
                }
            }
        }
    }
    // `super::` from a top-level file's direct child reaches the top-level module itself; deeper `super`
    // chains stay inside the folder, so only a file directly under src/ could leave with it, and none do.
    let _ = path;
    out.remove(module);
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, path, code) in sources() {
        g.entry(module.clone())
            .or_default()
            .extend(uses(&module, &path, &code));
    }
    g.remove("lib");
    g.remove("main");
    g
}

#[test]
fn data_flows_one_way() {
    let g = graph();
    let mut lines = Vec::new();
    for (m, deps) in &g {
        lines.push(format!(
            "{m} -> {}",
            deps.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    println!("module dependencies:\n{}", lines.join("\n"));
    let forbidden: &[(&str, &[&str], &str)] = &[
        (
            "receiver",
            &[
                "signal", "store", "export", "sampler", "probe", "target", "app",
            ],
            "the receiver hands decoded requests to consumers and knows nothing downstream",
        ),
        (
            "store",
            &[
                "probe", "receiver", "signal", "export", "sampler", "target", "app",
            ],
            "the store holds the neutral model and knows neither sources nor exporters",
        ),
        (
            "model",
            &[
                "probe", "receiver", "signal", "store", "export", "sampler", "target", "app",
                "config", "catalogue",
            ],
            "the neutral model depends on nothing",
        ),
        (
            "probe",
            &["receiver", "signal", "store", "export", "sampler", "app"],
            "probes read the target and know nothing downstream",
        ),
        (
            "profile",
            &[
                "receiver", "signal", "store", "export", "sampler", "app", "config",
            ],
            "the profiler reads the target like a probe and knows nothing downstream",
        ),
        (
            "signal",
            &["store", "export", "sampler", "app"],
            "derivation reads typed inputs, never the store, and feeds the exporters, never the other way",
        ),
        (
            "sampler",
            &["store", "receiver", "export"],
            "the sampler drives the probes and hands observations to derivation; it reads nothing back",
        ),
        (
            "language",
            &[
                "probe", "receiver", "signal", "store", "export", "sampler", "target", "app", "config",
            ],
            "the language runtime table is data every part may read; it depends on nothing",
        ),
        (
            "cadence",
            &[
                "probe", "receiver", "signal", "store", "export", "sampler", "target", "app", "config",
                "pipeline", "model",
            ],
            "the cadence is when samplers read; readers and samplers share it and it depends on nothing",
        ),
        (
            "bounded",
            &[
                "probe", "receiver", "signal", "store", "export", "sampler", "target", "app", "config",
                "pipeline", "model", "catalogue", "language", "cadence", "profile", "inject", "server",
                "logging",
            ],
            "the bounded map is a container the store, derivation and the wiring share; it depends on nothing",
        ),
        (
            "startup_pages",
            &[
                "probe", "receiver", "signal", "store", "export", "sampler", "target", "app", "config",
                "pipeline", "model", "catalogue", "language", "cadence", "profile", "inject", "server",
                "logging", "bounded",
            ],
            "giving back start-up's code pages concerns vitals' own process only; it depends on nothing",
        ),
        (
            "pipeline",
            &[
                "probe", "receiver", "signal", "store", "export", "sampler", "target", "app", "config",
            ],
            "the OTLP seams are what the receiver and its consumers share; they depend on nothing but the model",
        ),
        (
            "inject",
            &[
                "probe", "receiver", "signal", "store", "export", "sampler", "target", "app", "config",
                "pipeline", "model",
            ],
            "inject edits manifests; it needs no part of the running sidecar",
        ),
        (
            "catalogue",
            &[
                "probe", "receiver", "signal", "store", "export", "sampler", "target", "app", "config",
                "pipeline", "language", "cadence", "profile", "inject", "server", "logging",
            ],
            "the catalogue declares vitals' metrics on the model alone; every part may read it",
        ),
        (
            "config",
            &[
                "target", "probe", "signal", "store", "sampler", "receiver", "app", "export",
                "profile", "server",
            ],
            "configuration is read first and depends on no component (the OTLP export settings and their \
             OTEL_EXPORTER_OTLP_* rules are config/otlp.rs; the exporters take them)",
        ),
        (
            "server",
            &[
                "probe", "receiver", "signal", "store", "export", "sampler", "target", "app", "config",
                "pipeline", "model",
            ],
            "the listeners' connection handling serves /metrics and the OTLP receiver alike; it depends on no component",
        ),
    ];
    let mut broken = Vec::new();
    for (module, never, why) in forbidden {
        let Some(deps) = g.get(*module) else {
            broken.push(format!("module {module} not found under src/"));
            continue;
        };
        for d in deps.iter().filter(|d| never.contains(&d.as_str())) {
            broken.push(format!("{module} uses {d}: {why}"));
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn the_live_page_reads_and_the_hints_derive() {
    // The hints' usage history is fed by their derivation alone; an exporter (the live page) only shows
    // the advice.
    let mut broken = Vec::new();
    for (module, path, code) in sources() {
        if module != "export" {
            continue;
        }
        for word in ["UsageHistory", "UsageTick", "hints.observe(", ".advice("] {
            if code.contains(word) {
                broken.push(format!("{} derives hints ({word})", path.display()));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn only_the_exporters_know_prometheus_naming() {
    // Exposition names of vitals' own and the target's metrics, as a bare string literal.
    let literal = regex::Regex::new(r#""(vitals|process)_[a-z_]+""#).expect("valid regex");
    let mut broken = Vec::new();
    for (module, path, code) in sources() {
        // The exporters own the naming; `app` is the composition root that hands their naming rules to
        // the stores.
        if module == "export" || module == "app" {
            continue;
        }
        if code.contains("prometheus::naming") || code.contains("export::prometheus") {
            broken.push(format!(
                "{} uses the Prometheus exporter's naming",
                path.display()
            ));
        }
        for m in literal.find_iter(&code) {
            broken.push(format!(
                "{} names a metric by its Prometheus name {}",
                path.display(),
                m.as_str()
            ));
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// The field reads and value matches that decode an OTLP data point's number, buckets or quantiles.
fn point_reading() -> regex::Regex {
    regex::Regex::new(
        r"\.(bucket_counts|explicit_bounds|quantile_values|zero_count)\b|number_data_point::Value::As\w+\(\w+\)\s*=>",
    )
    .expect("valid regex")
}

#[test]
fn otlp_points_are_read_in_one_place() {
    // The store and derivation read OTLP data points only through `pipeline::points`, so numbers,
    // buckets, validation and deltas mean the same to both (the store may not use derivation, so the
    // shared reading lives in the seams both already depend on).
    let reading = point_reading();
    let mut broken = Vec::new();
    for (module, path, code) in sources() {
        if module != "store" && module != "signal" {
            continue;
        }
        for m in reading.find_iter(&code) {
            broken.push(format!(
                "{} reads an OTLP point itself ({}); use crate::pipeline::points",
                path.display(),
                m.as_str()
            ));
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
    let points = sources()
        .into_iter()
        .find(|(_, p, _)| p.ends_with("pipeline/points.rs"))
        .expect("src/pipeline/points.rs");
    assert!(
        point_reading().find_iter(&points.2).count() >= 4,
        "the rule's pattern finds the reads where they are"
    );
}

#[test]
fn the_checks_see_what_they_look_for() {
    // The parser must find a use where there is one, or the rules above pass for nothing.
    let code = "use crate::store::X;\nfn f() { crate::signal::y(); }\n#[cfg(test)]\nmod tests {\n    use crate::export::Z;\n}\n";
    let found = uses("receiver", Path::new("x.rs"), &without_tests(code));
    assert_eq!(
        found,
        BTreeSet::from(["signal".to_owned(), "store".to_owned()])
    );
    let g = graph();
    assert!(g.len() >= 10, "modules found: {:?}", g.keys());
    assert!(
        g["app"].contains("receiver"),
        "app wires the receiver: {g:?}"
    );
}

#[test]
fn each_metric_name_is_written_once() {
    // The OpenTelemetry name of every catalogue entry is a string literal in src/catalogue.rs and nowhere
    // else in the code (tests left out): producers and readers use the entry.
    let catalogue =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/catalogue.rs"))
            .expect("src/catalogue.rs is readable");
    let name_re = regex::Regex::new(r#"name: "([a-z_.]+)""#).expect("valid regex");
    let names: BTreeSet<String> = name_re
        .captures_iter(&catalogue)
        .map(|c| c[1].to_owned())
        .collect();
    assert!(names.len() > 80, "found only {} names", names.len());
    let mut broken = Vec::new();
    for (_, path, code) in sources() {
        // golden.rs is a test-only module (`#[cfg(test)] mod golden;`) of made-up metrics whose golden
        // expositions must stay byte-identical.
        if path.ends_with("catalogue.rs") || path.ends_with("prometheus/golden.rs") {
            continue;
        }
        for n in &names {
            if code.contains(&format!("\"{n}\"")) {
                broken.push(format!("{} writes the metric name \"{n}\"", path.display()));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn each_catalogue_entry_names_the_file_that_writes_it() {
    // An entry's doc line says `written by `src/…``, so a search for an exposition name leads from the
    // entry to its producer; the named file must use the entry, or the pointer has gone stale.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let catalogue = std::fs::read_to_string(root.join("src/catalogue.rs"))
        .expect("src/catalogue.rs is readable");
    let entry =
        regex::Regex::new(r"written by `(src/[a-z_/]+\.rs)`\.\npub static ([A-Z0-9_]+): MetricDef")
            .expect("valid regex");
    let mut seen = 0;
    let mut broken = Vec::new();
    for c in entry.captures_iter(&catalogue) {
        seen += 1;
        let code = std::fs::read_to_string(root.join(&c[1])).unwrap_or_default();
        if !without_tests(&code).contains(&format!("catalogue::{}", &c[2])) {
            broken.push(format!(
                "{} says it is written by {}, which does not use it",
                &c[2], &c[1]
            ));
        }
    }
    assert!(seen > 80, "only {seen} entries name their producer");
    assert_eq!(
        seen,
        catalogue.matches(": MetricDef = MetricDef {").count(),
        "an entry does not name its producer"
    );
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}
