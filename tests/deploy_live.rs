//! The shipped dashboards and rules against the real thing: vitals fed by the real Python SDK (spans with
//! errors over several routes, runtime and pool metrics) and the Node runtime instrumentation, watching a
//! real child; a real Prometheus scraping it every second with the recording and alerting rules loaded.
//! Every query of every dashboard panel runs through Prometheus' HTTP API with the variables substituted:
//! none errors, and those whose signal is fed return data. The error-ratio alerts become active. Every
//! metric name in the dashboards and rules exists in vitals' exposition or is a recording rule's output.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{prom_api, require_tool, sdk_send, start_prometheus_with_rules, TestChild, Vitals};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "30s")
        .replace("${datasource}", "prometheus")
        .replace("\"$namespace\"", "\".*\"")
        .replace("\"$pod\"", "\".*\"")
        .replace("\"$service\"", "\".*\"")
        .replace("\"$operation\"", "\".*\"")
}

/// Metric names an expression reads: identifiers that are not functions, keywords, label names or
/// grouping labels.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut s = String::new();
    // Drop strings, label matchers and ranges.
    let mut depth_brace = 0;
    let mut in_str = false;
    let mut depth_square = 0;
    for c in expr.chars() {
        match c {
            '"' if depth_brace == 0 => in_str = !in_str,
            _ if in_str => {}
            '{' => depth_brace += 1,
            '}' => depth_brace -= 1,
            '[' => depth_square += 1,
            ']' => depth_square -= 1,
            _ if depth_brace > 0 || depth_square > 0 => {}
            c => s.push(c),
        }
    }
    let durations = regex::Regex::new(r"\b\d+(ms|s|m|h|d|w|y)\b").unwrap();
    let s = durations.replace_all(&s, " ").into_owned();
    let grouping =
        regex::Regex::new(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
            .unwrap();
    let s = grouping.replace_all(&s, " ");
    let ident = regex::Regex::new(r"[a-zA-Z_:][a-zA-Z0-9_:]*(\s*\()?").unwrap();
    let keywords = [
        "and", "or", "unless", "offset", "bool", "inf", "nan", "by", "without",
    ];
    ident
        .find_iter(&s)
        .map(|m| m.as_str())
        .filter(|t| !t.ends_with('('))
        .filter(|t| !keywords.contains(t))
        .filter(|t| !t.chars().next().unwrap().is_ascii_digit())
        .map(str::to_owned)
        .collect()
}

fn dashboard_targets() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root().join("grafana/dashboards")).unwrap() {
        let path = entry.unwrap().path();
        let d: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push((
                    file.clone(),
                    p["title"].as_str().unwrap().to_owned(),
                    t["expr"].as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    out
}

fn rule_exprs() -> Vec<(String, String)> {
    let rules: yaml_serde::Value = yaml_serde::from_str(
        &std::fs::read_to_string(root().join("deploy/prometheus/vitals.rules.yml")).unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    for g in rules["groups"].as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            let name = r
                .get("alert")
                .or(r.get("record"))
                .and_then(|v| v.as_str())
                .unwrap()
                .to_owned();
            out.push((name, r["expr"].as_str().unwrap().to_owned()));
        }
    }
    out
}

#[test]
fn dashboards_and_rules_against_live_prometheus() {
    let (child, _) = TestChild::script(
        "hold.py",
        &["--listen", "16", "--fds", "10", "--threads", "3"],
    );
    let v = Vitals::start(&[
        "--pid",
        &child.pid().to_string(),
        "--interval",
        "250ms",
        "--pss",
        "--growth-windows",
        "10s",
    ]);
    let (grpc, http) = v.otlp_addrs();
    let rules = root().join("deploy/prometheus/vitals.rules.yml");
    let prom = start_prometheus_with_rules(
        &v.metrics.to_string(),
        &["--enable-feature=exemplar-storage"],
        &[rules.as_path()],
    );

    // Traffic only once Prometheus scrapes, spread over several scrapes: a counter that first appears
    // with its final value gives rate() nothing to work with.
    let deadline = Instant::now() + Duration::from_secs(60);
    while common::query(&prom, "up{job=\"vitals\"}") != Some(1.0) {
        assert!(Instant::now() < deadline, "Prometheus never scraped vitals");
        std::thread::sleep(Duration::from_millis(200));
    }
    let endpoint = format!("http://{http}");
    let feeder = std::thread::spawn(move || {
        let mut truths = Vec::new();
        for _ in 0..4 {
            truths.push(sdk_send(
                "http",
                &endpoint,
                "red",
                "live",
                &["--spans", "80"],
            ));
            std::thread::sleep(Duration::from_millis(1500));
        }
        truths
    });
    sdk_send("grpc", &format!("http://{grpc}"), "metrics", "live", &[]);
    sdk_send("grpc", &format!("http://{grpc}"), "runtime", "live", &[]);
    let node = Command::new(require_tool("node", "apt-get install -y nodejs npm"))
        .arg("--expose-gc")
        .arg(root().join("tests/node/runtime.mjs"))
        .args(["--endpoint", &format!("http://{http}"), "--seconds", "2"])
        .output()
        .unwrap();
    assert!(
        node.status.success(),
        "{}",
        String::from_utf8_lossy(&node.stderr)
    );
    let truths = feeder.join().unwrap();
    assert_eq!(truths.len(), 4);

    // The error-ratio alerts become active (pending until their `for:` passes, then firing).
    let deadline = Instant::now() + Duration::from_secs(60);
    let active = loop {
        let r = prom_api(&prom, "/api/v1/alerts", &[]);
        let names: Vec<(String, String)> = r["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                (
                    a["labels"]["alertname"].as_str().unwrap_or("").to_owned(),
                    a["state"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        if names.iter().any(|(n, _)| n == "VitalsErrorRatioCritical")
            && names.iter().any(|(n, _)| n == "VitalsErrorRatioHigh")
        {
            break names;
        }
        assert!(
            Instant::now() < deadline,
            "error-ratio alerts never became active: {r}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        active.iter().all(|(n, _)| n != "VitalsTargetDown"),
        "target is up: {active:?}"
    );
    // The growth window (10 s) needs a few seconds of samples before growth is exposed.
    v.wait_until(Duration::from_secs(30), "growth ready", |e| {
        e.has("vitals_memory_growth_bytes_per_second")
    });
    std::thread::sleep(Duration::from_secs(2));

    // Every dashboard query: no error; the fed ones return data.
    let mut with_data = BTreeSet::new();
    for (file, title, expr) in dashboard_targets() {
        let r = prom_api(&prom, "/api/v1/query", &[("query", &substitute(&expr))]);
        assert_eq!(r["status"], "success", "{file} / {title}: {expr}\n{r}");
        if r["data"]["result"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
        {
            with_data.insert(format!("{file} / {title}"));
        }
    }
    let fed = [
        "vitals-overview.json / Target attached",
        "vitals-overview.json / What is watched",
        "vitals-overview.json / Requests per second by operation",
        "vitals-overview.json / Error ratio by operation",
        "vitals-overview.json / Apdex (T = 100 ms)",
        "vitals-overview.json / p99 latency by operation",
        "vitals-overview.json / p95 latency by operation",
        "vitals-overview.json / p50 latency by operation",
        "vitals-overview.json / Share of time in GC pauses",
        "vitals-overview.json / Longest GC pause (last minute)",
        "vitals-overview.json / Pressure stalls",
        "vitals-overview.json / Ready work waiting to run (Node event loop, Go scheduler)",
        "vitals-overview.json / Memory vs limit",
        "vitals-overview.json / Growth per window",
        "vitals-overview.json / Leak suspected",
        "vitals-overview.json / Pool utilisation",
        "vitals-overview.json / Waiting for a pool slot",
        "vitals-overview.json / File descriptors",
        "vitals-overview.json / Threads",
        "vitals-overview.json / Accept queues",
        "vitals-pauses.json / Pause time by collector",
        "vitals-pauses.json / CPU time by mode",
        "vitals-memory.json / Resident, virtual, swap",
        "vitals-saturation.json / Used by pool",
    ];
    for f in fed {
        assert!(
            with_data.contains(f),
            "{f} returned no data; panels with data: {with_data:#?}"
        );
    }
    // Recording rules produce data, and the error ratio is what was sent.
    let sent: f64 = truths
        .iter()
        .flat_map(|t| t["requests"].as_object().unwrap().iter())
        .filter(|(k, _)| k.ends_with("|error"))
        .map(|(_, n)| n.as_f64().unwrap())
        .sum();
    let total: f64 = truths
        .iter()
        .flat_map(|t| t["requests"].as_object().unwrap().values())
        .map(|n| n.as_f64().unwrap())
        .sum();
    for rec in [
        "vitals:request_rate:rate5m",
        "vitals:service_errors:ratio_rate5m",
        "vitals:request_duration_seconds:p99_5m",
        "vitals:apdex:ratio_rate5m",
        "vitals:gc_pause_time:ratio_rate5m",
    ] {
        let r = prom_api(&prom, "/api/v1/query", &[("query", rec)]);
        assert!(
            r["data"]["result"]
                .as_array()
                .is_some_and(|a| !a.is_empty()),
            "{rec} has no data: {r}"
        );
    }
    assert!(
        sent / total > 0.10,
        "the fed error ratio {} is above the critical threshold",
        sent / total
    );

    // Every metric name in dashboards and rules is exposed by vitals (live), recorded by a rule, or one of
    // the few that need conditions this test cannot create (then it must be a name the source exposes).
    let exposed: BTreeSet<String> = v.scrape().samples.iter().map(|s| s.name.clone()).collect();
    let recorded: BTreeSet<String> = rule_exprs()
        .iter()
        .filter(|(n, _)| n.contains(':'))
        .map(|(n, _)| n.clone())
        .collect();
    let pass_through = ["resilience4j_circuitbreaker_state"];
    let conditional = [
        (
            "vitals_memory_time_to_limit_seconds",
            "needs a memory limit",
        ),
        (
            "vitals_db_n_plus_one_total",
            "needs an N+1 run in the app's database spans",
        ),
        (
            "vitals_db_query_duration_seconds_bucket",
            "needs the app's database spans",
        ),
        (
            "vitals_db_query_duration_seconds_count",
            "needs the app's database spans",
        ),
        (
            "vitals_db_query_duration_seconds_sum",
            "needs the app's database spans",
        ),
        ("vitals_safepoint_seconds_total", "needs a JVM target"),
        ("vitals_safepoints_total", "needs a JVM target"),
        (
            "vitals_cgroup_memory_limit_bytes",
            "needs a memory-limited cgroup",
        ),
        ("vitals_cgroup_cpu_limit_cores", "needs a CPU quota"),
        (
            "vitals_exporter_forward_items_total",
            "needs an upstream (--forward-endpoint)",
        ),
        (
            "vitals_cgroup_pids",
            "needs a pids controller on the target's cgroup",
        ),
        ("vitals_cgroup_pids_limit", "needs a pids limit"),
        (
            "vitals_cgroup_memory_oom_kills_total",
            "needs a memory cgroup",
        ),
        ("vitals_cgroup_memory_usage_bytes", "needs a memory cgroup"),
        (
            "vitals_cgroup_cpu_throttled_periods_total",
            "needs a cpu cgroup",
        ),
        ("vitals_cgroup_cpu_periods_total", "needs a cpu cgroup"),
        (
            "vitals_exporter_series_overflow_total",
            "always exposed; listed for symmetry",
        ),
        (
            "vitals_recommendation_cores",
            "needs --hints-min-history of data",
        ),
        (
            "vitals_recommendation_bytes",
            "needs --hints-min-history of data",
        ),
        ("vitals_recommendation_throttled_ratio", "needs a CPU quota"),
        (
            "vitals_recommendation_connections",
            "needs a saturated DB pool",
        ),
        ("vitals_recommendation_files", "needs fds near their limit"),
    ];
    let src = common::source_exposition_names();
    let mut names = BTreeSet::new();
    for (_, _, e) in dashboard_targets() {
        names.extend(metric_names(&e));
    }
    for (_, e) in rule_exprs() {
        names.extend(metric_names(&e));
    }
    assert!(names.len() > 30, "name extraction found only {names:?}");
    for n in &names {
        if exposed.contains(n) || recorded.contains(n) || pass_through.contains(&n.as_str()) {
            continue;
        }
        // A native-histogram query names the family itself; the classic scrape exposes its `_count`.
        let classic = format!("{n}_count");
        if exposed.contains(&classic) {
            continue;
        }
        let Some((_, why)) = conditional.iter().find(|(c, _)| c == n || *c == classic) else {
            panic!("{n} is used in a dashboard or rule but vitals does not expose it (typo?)");
        };
        let stem = n.trim_end_matches("_total");
        // A histogram's series are named after its family.
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| n.strip_suffix(s))
            .unwrap_or(stem);
        assert!(
            src.contains(stem) || src.contains(n) || src.contains(family),
            "{n} ({why}) is not a name vitals' source exposes"
        );
    }
    drop(child);
}

#[test]
fn name_extraction() {
    let n = metric_names(
        r#"sum by (service, le) (rate(vitals_request_duration_seconds_bucket{outcome="ok", le="0.1"}[5m])) / 2 or on (pod) up offset 1h > bool 0.5"#,
    );
    assert_eq!(
        n,
        BTreeSet::from([
            "up".to_owned(),
            "vitals_request_duration_seconds_bucket".to_owned()
        ])
    );
}
