//! Every shipped artefact checked by the tool that consumes it: promtool (rules and their unit tests),
//! amtool (the Alertmanager example and its routes), hadolint (the Dockerfile), kubectl kustomize and
//! kubernetes-validate (the manifests), and the dashboards' generator. Plus the house rules the tools do
//! not know: every alert has severity, summary, description and a runbook section; the PrometheusRule
//! equals the plain rule file; the base pod meets the "restricted" Pod Security Standard.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::require_tool;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

fn venv_tool(name: &str) -> PathBuf {
    let p = root().join(".venv/bin").join(name);
    assert!(
        p.is_file(),
        "{name} missing: .venv/bin/pip install -r tests/python/requirements.txt (.ci/run does)"
    );
    p
}

fn yaml(path: &Path) -> yaml_serde::Value {
    yaml_serde::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn alerts(rules: &yaml_serde::Value) -> Vec<yaml_serde::Value> {
    rules["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap().clone())
        .filter(|r| r.get("alert").is_some())
        .collect()
}

#[test]
fn prometheus_rules_check_and_unit_tests_pass() {
    let promtool = require_tool("promtool", "apt-get install -y prometheus");
    let dir = root().join("deploy/prometheus");
    run(Command::new(&promtool)
        .args(["check", "rules"])
        .arg(dir.join("vitals.rules.yml")));
    let out = run(Command::new(&promtool)
        .args(["test", "rules"])
        .arg(dir.join("tests/alerts.test.yml")));
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_alert_is_documented_tested_and_labelled() {
    let rules = yaml(&root().join("deploy/prometheus/vitals.rules.yml"));
    let runbook = std::fs::read_to_string(root().join("docs/runbook.md")).unwrap();
    let tests = yaml(&root().join("deploy/prometheus/tests/alerts.test.yml"));
    let cases: Vec<&yaml_serde::Value> = tests["tests"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_sequence().unwrap())
        .collect();
    let all = alerts(&rules);
    // The default alerts of DESIGN.md, plus a single long stop-the-world pause and event-loop delay
    // (issue 20), plus the N+1 query alert (issue 23).
    assert_eq!(
        all.len(),
        21,
        "the default alerts of DESIGN.md, issue 20 and issue 23"
    );
    for a in &all {
        let name = a["alert"].as_str().unwrap();
        let sev = a["labels"]["severity"].as_str().unwrap_or("");
        assert!(
            sev == "warning" || sev == "critical",
            "{name}: severity {sev:?}"
        );
        for key in ["summary", "description", "runbook_url"] {
            assert!(
                a["annotations"][key]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{name}: no {key}"
            );
        }
        assert!(
            a["annotations"]["description"]
                .as_str()
                .unwrap()
                .contains("{{"),
            "{name}: description without value or labels"
        );
        let url = a["annotations"]["runbook_url"].as_str().unwrap();
        let anchor = url
            .strip_prefix(&format!("{}#", runbook_base()))
            .unwrap_or_else(|| {
                panic!("{name}: runbook_url {url} is not the documented base + #anchor")
            });
        assert_eq!(anchor, name.to_lowercase(), "{name}: anchor");
        assert!(
            runbook.lines().any(|l| l == format!("## {name}")),
            "{name}: no runbook section"
        );
        let mine: Vec<_> = cases
            .iter()
            .filter(|c| c["alertname"].as_str() == Some(name))
            .collect();
        assert!(
            mine.iter()
                .any(|c| !c["exp_alerts"].as_sequence().unwrap().is_empty()),
            "{name}: no firing case"
        );
        assert!(
            mine.iter()
                .any(|c| c["exp_alerts"].as_sequence().unwrap().is_empty()),
            "{name}: no silent case"
        );
    }
}

/// The runbook base URL documented at the top of the rule file: one absolute URL shared by every alert, so
/// Alertmanager's links open and one substitution moves them all.
fn runbook_base() -> String {
    let text = std::fs::read_to_string(root().join("deploy/prometheus/vitals.rules.yml")).unwrap();
    let base = text
        .lines()
        .find_map(|l| l.strip_prefix("# RUNBOOK_BASE = "))
        .expect("the rule file documents RUNBOOK_BASE")
        .trim()
        .to_owned();
    assert!(base.starts_with("https://"), "{base}");
    base
}

#[test]
fn runbook_links_are_absolute_and_agree_everywhere() {
    let base = runbook_base();
    for file in [
        "deploy/prometheus/vitals.rules.yml",
        "deploy/kubernetes/base/prometheusrule.yaml",
        "deploy/prometheus/tests/alerts.test.yml",
    ] {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        for line in text.lines().filter(|l| l.contains("runbook_url:")) {
            let url = line
                .split_once("runbook_url:")
                .map(|(_, u)| u.trim().trim_matches('"'))
                .unwrap_or_default();
            assert!(
                url.starts_with(&format!("{base}#")),
                "{file}: {url} does not start with the documented base {base}"
            );
        }
    }
}

#[test]
fn prometheus_rule_resource_equals_the_rule_file() {
    let rules = yaml(&root().join("deploy/prometheus/vitals.rules.yml"));
    let cr = yaml(&root().join("deploy/kubernetes/base/prometheusrule.yaml"));
    assert_eq!(cr["kind"].as_str(), Some("PrometheusRule"));
    assert_eq!(
        cr["spec"]["groups"], rules["groups"],
        "regenerate deploy/kubernetes/base/prometheusrule.yaml from the rule file"
    );
}

#[test]
fn alertmanager_config_and_routes() {
    let amtool = require_tool("amtool", "apt-get install -y prometheus-alertmanager");
    let cfg = root().join("deploy/alertmanager/alertmanager.yml");
    run(Command::new(&amtool).arg("check-config").arg(&cfg));
    for (labels, receiver) in [
        (
            vec!["severity=critical", "alertname=VitalsTargetDown"],
            "oncall-pager",
        ),
        (
            vec![
                "severity=critical",
                "alertname=VitalsErrorRatioCritical",
                "service=shop",
            ],
            "oncall-pager",
        ),
        (
            vec!["severity=warning", "alertname=VitalsPoolSaturated"],
            "team-chat",
        ),
        (vec!["alertname=SomethingElse"], "tickets"),
    ] {
        let out = run(Command::new(&amtool)
            .args(["config", "routes", "test"])
            .arg(format!("--config.file={}", cfg.display()))
            .args(&labels));
        assert_eq!(
            out.lines().next().unwrap_or("").trim(),
            receiver,
            "{labels:?}: {out}"
        );
    }
}

#[test]
fn dockerfile_passes_hadolint() {
    run(Command::new(venv_tool("hadolint")).arg(root().join("Dockerfile")));
    assert!(root().join(".dockerignore").is_file());
}

fn render(dir: &str) -> String {
    let kubectl = require_tool("kubectl", "apt-get install -y kubectl");
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(root().join(dir))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn kubernetes_manifests_render_validate_and_meet_restricted() {
    let base = render("deploy/kubernetes/base");
    let overlay = render("deploy/kubernetes/overlays/sys-ptrace");
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [("base.yaml", &base), ("overlay.yaml", &overlay)] {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        let out = run(Command::new(venv_tool("kubernetes-validate"))
            .args(["--strict", "-k", "1.32.0"])
            .arg(&p));
        assert!(out.contains("passed for resource deployment/shop"), "{out}");
    }
    let docs: Vec<yaml_serde::Value> = yaml_serde::Deserializer::from_str(&base)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    for k in ["Deployment", "Service", "PodMonitor", "PrometheusRule"] {
        assert!(kinds.contains(&k), "{k} missing from the base: {kinds:?}");
    }
    let dep = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("Deployment"))
        .unwrap();
    let spec = &dep["spec"]["template"]["spec"];
    assert_eq!(spec["shareProcessNamespace"].as_bool(), Some(true));
    assert_eq!(
        spec["securityContext"]["runAsNonRoot"].as_bool(),
        Some(true)
    );
    assert_eq!(
        spec["securityContext"]["seccompProfile"]["type"].as_str(),
        Some("RuntimeDefault")
    );
    let sidecar = spec["initContainers"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str() == Some("vitals"))
        .unwrap();
    assert_eq!(
        sidecar["restartPolicy"].as_str(),
        Some("Always"),
        "a native sidecar"
    );
    assert_eq!(
        sidecar["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert_eq!(
        sidecar["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert!(sidecar["resources"]["limits"]["memory"].as_str().is_some());
    for c in spec["initContainers"]
        .as_sequence()
        .unwrap()
        .iter()
        .chain(spec["containers"].as_sequence().unwrap())
    {
        let sc = &c["securityContext"];
        assert_eq!(
            sc["allowPrivilegeEscalation"].as_bool(),
            Some(false),
            "{:?}",
            c["name"]
        );
        assert_eq!(
            sc["readOnlyRootFilesystem"].as_bool(),
            Some(true),
            "{:?}",
            c["name"]
        );
        assert_eq!(
            sc["capabilities"]["drop"][0].as_str(),
            Some("ALL"),
            "{:?}",
            c["name"]
        );
        assert!(
            sc["capabilities"]["add"].is_null(),
            "restricted allows no added capability here"
        );
    }
    assert!(
        overlay.contains("SYS_PTRACE"),
        "the overlay adds SYS_PTRACE"
    );
}

#[test]
fn dashboards_are_built_from_their_generator_and_well_formed() {
    run(Command::new("python3")
        .arg(root().join("grafana/build.py"))
        .arg("--check"));
    for entry in std::fs::read_dir(root().join("grafana/dashboards")).unwrap() {
        let path = entry.unwrap().path();
        let d: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let vars: Vec<&str> = d["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        for v in ["datasource", "namespace", "pod", "service"] {
            assert!(vars.contains(&v), "{}: no ${v} variable", path.display());
        }
        for p in d["panels"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["type"] != "row")
        {
            assert!(
                p["fieldConfig"]["defaults"]["unit"]
                    .as_str()
                    .is_some_and(|u| !u.is_empty()),
                "{}: {} has no unit",
                path.display(),
                p["title"]
            );
            assert_eq!(p["datasource"]["uid"], "${datasource}");
        }
    }
}
