//! The README's "Start here" as a new user runs it: the scrape configuration of step 3, taken from the
//! README, run by a real Prometheus against a real vitals watching a real process, gives the dashboards'
//! own `namespace` and `pod` variable queries a value, and a panel query answers with them substituted.
//! Step 2's inject lines are covered by tests/inject.rs, step 1's command by tests/first_command.rs.

mod common;

use std::time::{Duration, Instant};

use common::{prom_api, start_prometheus_config_with, TestChild, Vitals};

/// The YAML block under the README's step 3.
fn readme_scrape_config() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let step = readme
        .split("### 3. See the dashboards")
        .nth(1)
        .expect("README has step 3, \"See the dashboards\"");
    let block = step
        .split("```yaml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("step 3 holds a yaml block");
    block.to_owned()
}

/// A dashboard variable's `label_values(METRIC{…}, LABEL)` query, as (metric selector, label).
fn variable(name: &str) -> (String, String) {
    let d: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/grafana/dashboards/vitals-overview.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let q = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .and_then(|v| v["query"]["query"].as_str())
        .unwrap_or_else(|| panic!("no ${name} variable"))
        .to_owned();
    let inner = q
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("${name} is not a label_values query: {q}"));
    let (selector, label) = inner.rsplit_once(',').unwrap();
    (selector.trim().to_owned(), label.trim().to_owned())
}

#[test]
fn readme_scrape_config_fills_the_dashboard_variables() {
    let app = TestChild::hold(&[]);
    let pid = app.pid().to_string();
    let vitals = Vitals::start(&["--pid", &pid]);
    let config = readme_scrape_config();
    assert!(
        config.contains("127.0.0.1:19464"),
        "the README scrapes the default port: {config}"
    );
    let config = config
        .replace("127.0.0.1:19464", &vitals.metrics.to_string())
        .replace("scrape_interval: 15s", "scrape_interval: 1s");
    let prom = start_prometheus_config_with(&config, &[]);
    let (ns_selector, ns_label) = variable("namespace");
    let (pod_selector, pod_label) = variable("pod");
    let deadline = Instant::now() + Duration::from_secs(30);
    let values = |selector: &str, label: &str| -> Vec<String> {
        let r = std::panic::catch_unwind(|| {
            prom_api(
                &prom,
                &format!("/api/v1/label/{label}/values"),
                &[("match[]", selector)],
            )
        });
        r.ok()
            .and_then(|v| v["data"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let namespaces = loop {
        let v = values(&ns_selector, &ns_label);
        if !v.is_empty() || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(namespaces, ["local"], "$namespace from {ns_selector}");
    let pod_selector = pod_selector.replace("$namespace", "local");
    assert_eq!(
        values(&pod_selector, &pod_label),
        ["my-laptop"],
        "$pod from {pod_selector}"
    );
    let up = prom_api(
        &prom,
        "/api/v1/query",
        &[(
            "query",
            "vitals_target_up{namespace=~\"local\", pod=~\"my-laptop\"}",
        )],
    );
    assert_eq!(
        up["data"]["result"][0]["value"][1].as_str(),
        Some("1"),
        "{up}"
    );
}
