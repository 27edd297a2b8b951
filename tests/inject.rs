//! `vitals inject` over a corpus of real manifests (tests/fixtures/inject: multi-document files with
//! comments, a kubectl List in YAML and JSON, every workload kind, existing init containers and sidecars,
//! a pod that already runs vitals): the output validates with kubectl kustomize and kubernetes-validate
//! (strict) on the Kubernetes versions vitals supports, meets Pod Security "restricted" (checked rule by
//! rule below), is stable under a second inject and round-trips byte for byte with `--uninject`. Bad input
//! exits 2 naming the document and writes nothing. The shipped example is inject's output, and the
//! `--process` inject derives attaches a real vitals to the real process.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{require_tool, vitals_bin, TestChild, Vitals};
use yaml_serde::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/inject").join(name)
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `vitals inject ARGS`, with `stdin` on standard input.
fn inject(args: &[&str], stdin: &str) -> Run {
    let mut child = Command::new(vitals_bin())
        .arg("inject")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let text = stdin.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(text.as_bytes());
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn inject_ok(args: &[&str], stdin: &str) -> Run {
    let r = inject(args, stdin);
    assert_eq!(r.code, Some(0), "vitals inject {args:?}:\n{}", r.stderr);
    r
}

/// Every object of a YAML stream or JSON document, List items included.
fn objects(text: &str) -> Vec<Value> {
    let docs: Vec<Value> = if text.trim_start().starts_with('{') {
        vec![serde_json::from_str(text).unwrap()]
    } else {
        yaml_serde::Deserializer::from_str(text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect()
    };
    let mut out = Vec::new();
    for d in docs {
        if d["kind"].as_str() == Some("List") {
            out.extend(d["items"].as_sequence().unwrap().iter().cloned());
        } else if !d.is_null() {
            out.push(d);
        }
    }
    out
}

/// The pod spec of a workload object.
fn pod_spec(obj: &Value) -> Option<&Value> {
    let spec = match obj["kind"].as_str()? {
        "Pod" => &obj["spec"],
        "CronJob" => &obj["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            &obj["spec"]["template"]["spec"]
        }
        _ => return None,
    };
    Some(spec)
}

fn all_containers(spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .filter_map(|k| spec[*k].as_sequence())
        .flatten()
        .collect()
}

/// The Pod Security Standard "restricted" (Kubernetes 1.25 and later), rule by rule, on a pod spec: every
/// baseline rule that a pod spec can break, then the restricted ones. Returns what breaks them.
fn restricted_violations(spec: &Value) -> Vec<String> {
    let mut v = Vec::new();
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        if spec[host].as_bool() == Some(true) {
            v.push(format!("{host}: true"));
        }
    }
    const VOLUMES: &[&str] = &[
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    for vol in spec["volumes"].as_sequence().into_iter().flatten() {
        for (k, _) in vol.as_mapping().unwrap() {
            let k = k.as_str().unwrap();
            if k != "name" && !VOLUMES.contains(&k) {
                v.push(format!("volume type {k}"));
            }
        }
    }
    let pod_sc = &spec["securityContext"];
    const SAFE_SYSCTLS: &[&str] = &[
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    ];
    for s in pod_sc["sysctls"].as_sequence().into_iter().flatten() {
        let name = s["name"].as_str().unwrap_or("");
        if !SAFE_SYSCTLS.contains(&name) {
            v.push(format!("sysctl {name}"));
        }
    }
    if pod_sc["runAsUser"].as_u64() == Some(0) {
        v.push("pod runAsUser 0".to_owned());
    }
    let pod_seccomp = pod_sc["seccompProfile"]["type"].as_str();
    let pod_non_root = pod_sc["runAsNonRoot"].as_bool();
    for c in all_containers(spec) {
        let name = c["name"].as_str().unwrap_or("?");
        let sc = &c["securityContext"];
        if sc["privileged"].as_bool() == Some(true) {
            v.push(format!("{name}: privileged"));
        }
        if sc["allowPrivilegeEscalation"].as_bool() != Some(false) {
            v.push(format!("{name}: allowPrivilegeEscalation is not false"));
        }
        let drop: Vec<&str> = sc["capabilities"]["drop"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if !drop.contains(&"ALL") {
            v.push(format!("{name}: capabilities.drop lacks ALL"));
        }
        for add in sc["capabilities"]["add"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            if add.as_str() != Some("NET_BIND_SERVICE") {
                v.push(format!("{name}: adds capability {add:?}"));
            }
        }
        match sc["runAsNonRoot"].as_bool().or(pod_non_root) {
            Some(true) => {}
            _ => v.push(format!("{name}: runAsNonRoot is not true")),
        }
        if sc["runAsUser"].as_u64() == Some(0) {
            v.push(format!("{name}: runAsUser 0"));
        }
        match sc["seccompProfile"]["type"].as_str().or(pod_seccomp) {
            Some("RuntimeDefault") | Some("Localhost") => {}
            other => v.push(format!("{name}: seccompProfile {other:?}")),
        }
        if let Some(pm) = sc["procMount"].as_str() {
            if pm != "Default" {
                v.push(format!("{name}: procMount {pm}"));
            }
        }
        if let Some(t) = sc["seLinuxOptions"]["type"].as_str() {
            if !["container_t", "container_init_t", "container_kvm_t"].contains(&t) {
                v.push(format!("{name}: seLinux type {t}"));
            }
        }
        for p in c["ports"].as_sequence().into_iter().flatten() {
            if p["hostPort"].as_u64().unwrap_or(0) != 0 {
                v.push(format!("{name}: hostPort"));
            }
        }
    }
    v
}

#[test]
fn the_restricted_check_sees_what_it_looks_for() {
    let good: Value = yaml_serde::from_str(
        "securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}\n\
         containers: [{name: a, securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}}]\n",
    )
    .unwrap();
    assert_eq!(restricted_violations(&good), Vec::<String>::new());
    for (patch, expect) in [
        ("hostPID: true", "hostPID"),
        ("volumes: [{name: h, hostPath: {path: /}}]", "volume type hostPath"),
        (
            "initContainers: [{name: i, securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL], add: [SYS_PTRACE]}}}]",
            "i: adds capability",
        ),
        (
            "ephemeralContainers: [{name: e, securityContext: {capabilities: {drop: [ALL]}}}]",
            "e: allowPrivilegeEscalation",
        ),
    ] {
        let mut bad = good.clone();
        let extra: Value = yaml_serde::from_str(patch).unwrap();
        for (k, val) in extra.as_mapping().unwrap() {
            bad.as_mapping_mut().unwrap().insert(k.clone(), val.clone());
        }
        let found = restricted_violations(&bad);
        assert!(
            found.iter().any(|f| f.contains(expect)),
            "{patch}: {found:?}"
        );
    }
    let mut unconfined = good.clone();
    unconfined["securityContext"]["seccompProfile"]["type"] = Value::from("Unconfined");
    unconfined["securityContext"]["runAsNonRoot"] = Value::from(false);
    let found = restricted_violations(&unconfined);
    assert_eq!(
        found,
        [
            "a: runAsNonRoot is not true",
            "a: seccompProfile Some(\"Unconfined\")"
        ]
    );
}

/// The corpus: file, and the `--process` inject must derive for each injected pod (by object name).
fn corpus() -> Vec<(&'static str, Vec<(&'static str, &'static str)>)> {
    vec![
        (
            "multi-doc.yaml",
            vec![
                ("checkout", r"^gunicorn( |$)"),
                ("checkout-consumer", r"^python3 .*checkout\.consumer"),
            ],
        ),
        (
            "workloads.yaml",
            vec![
                ("node-agent", r"^/app/agent( |$)"),
                ("reindex", r"^node .*reindex\.js"),
                ("nightly-report", r"^java .*report\.jar"),
                ("legacy-api", r"(^|[ /])puma( |$)"),
                ("debug-shell", r"^sleep( |$)"),
            ],
        ),
        (
            "existing-sidecars.yaml",
            vec![("orders", r"^/app/orders( |$)")],
        ),
        ("already-vitals.yaml", vec![]),
        ("list.yaml", vec![("cart", r"^/usr/local/bin/cart( |$)")]),
        ("list.json", vec![("cart", r"^/usr/local/bin/cart( |$)")]),
    ]
}

/// Checks the sidecar in every injected pod of `out`; `expect` maps object name to `--process` regex.
fn check_sidecars(file: &str, out: &str, expect: &[(&str, &str)], native: bool) {
    let mut seen = BTreeMap::new();
    for obj in objects(out) {
        let Some(spec) = pod_spec(&obj) else { continue };
        let name = obj["metadata"]["name"].as_str().unwrap().to_owned();
        let violations = restricted_violations(spec);
        assert!(
            violations.is_empty(),
            "{file}: {name} breaks restricted: {violations:?}"
        );
        let list = if native {
            "initContainers"
        } else {
            "containers"
        };
        let Some(sidecar) = spec[list]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|c| c["name"].as_str() == Some("vitals"))
        else {
            continue;
        };
        assert_eq!(
            spec["shareProcessNamespace"].as_bool(),
            Some(true),
            "{file}: {name}"
        );
        assert_eq!(
            sidecar["restartPolicy"].as_str(),
            native.then_some("Always"),
            "{file}: {name}"
        );
        let args: Vec<&str> = sidecar["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        seen.insert(
            name.clone(),
            args[0].trim_start_matches("--process=").to_owned(),
        );
        assert_eq!(args.len(), 1, "{file}: {name}: {args:?}");
        assert_eq!(sidecar["ports"][0]["name"].as_str(), Some("vitals-metrics"));
        assert_eq!(sidecar["ports"][0]["containerPort"].as_u64(), Some(19464));
        assert_eq!(
            sidecar["livenessProbe"]["httpGet"]["path"].as_str(),
            Some("/healthz")
        );
        assert_eq!(
            sidecar["readinessProbe"]["httpGet"]["path"].as_str(),
            Some("/readyz")
        );
        assert_eq!(
            sidecar["resources"]["limits"]["memory"].as_str(),
            Some("96Mi")
        );
        let env: Vec<&str> = sidecar["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        for k in [
            "K8S_POD_NAME",
            "K8S_NAMESPACE_NAME",
            "K8S_NODE_NAME",
            "K8S_POD_UID",
        ] {
            assert!(env.contains(&k), "{file}: {name}: {env:?}");
        }
    }
    let want: BTreeMap<String, String> = expect
        .iter()
        .map(|(n, r)| (n.to_string(), r.to_string()))
        .collect();
    assert_eq!(seen, want, "{file}: the injected pods and their --process");
}

fn validate(files: &[PathBuf], version: &str) -> Result<String, String> {
    let tool = root().join(".venv/bin/kubernetes-validate");
    assert!(
        tool.is_file(),
        "kubernetes-validate missing: .venv/bin/pip install -r tests/python/requirements.txt (.ci/run does)"
    );
    let out = Command::new(tool)
        .args(["--strict", "-k", version])
        .args(files)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// Renders a file through `kubectl kustomize` as a kustomization's only resource.
fn kustomize(file: &Path) -> String {
    let kubectl = require_tool("kubectl", "apt-get install -y kubectl");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(file, dir.path().join("resource.yaml")).unwrap();
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        "resources:\n  - resource.yaml\n",
    )
    .unwrap();
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn corpus_injects_validates_round_trips_and_is_stable() {
    let dir = tempfile::tempdir().unwrap();
    let mut outputs = Vec::new();
    for (file, expect) in corpus() {
        let input = std::fs::read_to_string(fixture(file)).unwrap();
        let first = inject_ok(&[fixture(file).to_str().unwrap()], "");
        check_sidecars(file, &first.stdout, &expect, true);
        for (name, regex) in &expect {
            assert!(
                first.stderr.lines().any(|l| l.contains(&format!(" {name}"))
                    && l.ends_with(&format!("with --process={regex}"))),
                "{file}: stderr names what was chosen for {name}:\n{}",
                first.stderr
            );
        }
        if expect.is_empty() {
            assert_eq!(
                first.stdout, input,
                "{file}: nothing to inject, nothing changed"
            );
            assert!(
                first.stderr.contains("already runs vitals"),
                "{}",
                first.stderr
            );
        }
        // Stable, reversible, and the same through standard input.
        let second = inject_ok(&["-"], &first.stdout);
        assert_eq!(
            second.stdout, first.stdout,
            "{file}: a second inject changed it"
        );
        let back = inject_ok(&["--uninject", "-"], &first.stdout);
        assert_eq!(
            back.stdout, input,
            "{file}: --uninject did not give the input back"
        );
        let path = dir.path().join(file);
        std::fs::write(&path, &first.stdout).unwrap();
        let rendered = kustomize(&path);
        let sidecars = objects(&rendered)
            .iter()
            .filter_map(pod_spec)
            .flat_map(|spec| spec["initContainers"].as_sequence().into_iter().flatten())
            .filter(|c| c["name"].as_str() == Some("vitals"))
            .count();
        assert_eq!(
            sidecars,
            expect.len(),
            "{file}: kustomize sees one sidecar per injected pod:\n{rendered}"
        );
        // kustomize expands Lists, which kubernetes-validate has no schema for.
        let rendered_path = dir.path().join(format!("{file}.rendered.yaml"));
        std::fs::write(&rendered_path, &rendered).unwrap();
        outputs.push(rendered_path);
    }
    // Native sidecars are GA from 1.29 (beta and on by default there); the oldest and newest schemas
    // kubernetes-validate ships around that.
    for version in ["1.29.0", "1.33.0", "1.37.0"] {
        let report = validate(&outputs, version)
            .unwrap_or_else(|e| panic!("kubernetes-validate {version}:\n{e}"));
        // One line per resource: 4 + 5 + 1 + 1 + 2 + 2 (the Lists' items).
        assert_eq!(
            report.matches("passed for resource").count(),
            15,
            "{version}:\n{report}"
        );
    }
}

#[test]
fn legacy_sidecar_fits_clusters_before_native_sidecars() {
    let dir = tempfile::tempdir().unwrap();
    let input = std::fs::read_to_string(fixture("workloads.yaml")).unwrap();
    let legacy = inject_ok(&["--legacy-sidecar", "-"], &input);
    let (_, expect) = &corpus()[1];
    check_sidecars("workloads.yaml", &legacy.stdout, expect, false);
    let back = inject_ok(&["--uninject", "-"], &legacy.stdout);
    assert_eq!(back.stdout, input);
    let legacy_path = dir.path().join("legacy.yaml");
    std::fs::write(&legacy_path, &legacy.stdout).unwrap();
    for version in ["1.25.0", "1.28.0"] {
        let report = validate(std::slice::from_ref(&legacy_path), version)
            .unwrap_or_else(|e| panic!("{version}:\n{e}"));
        assert_eq!(report.matches("passed for resource").count(), 5, "{report}");
    }
    // The validator does reject what a cluster would: a native sidecar's restartPolicy is an unknown
    // field before 1.28.
    let native = inject_ok(&["-"], &input);
    let native_path = dir.path().join("native.yaml");
    std::fs::write(&native_path, &native.stdout).unwrap();
    let e = validate(&[native_path], "1.27.0").expect_err("1.27 has no native sidecars");
    assert!(e.contains("restartPolicy"), "{e}");
    // Re-injecting with other flags replaces the earlier edit instead of adding a second sidecar.
    let switched = inject_ok(&["-"], &legacy.stdout);
    assert_eq!(switched.stdout, native.stdout);
}

#[test]
fn bad_input_exits_2_names_the_document_and_writes_nothing() {
    for (file, expect) in [
        (
            "bad/host-pid.yaml",
            "document 2 (DaemonSet node-debugger, line 8): the pod uses hostPID",
        ),
        (
            "bad/share-false.yaml",
            "document 1 (Deployment isolated, line 1): the pod sets shareProcessNamespace: false",
        ),
        (
            "bad/unknown-kind.yaml",
            "document 1 (Rollout canary, line 1): kind Rollout is unknown to vitals inject",
        ),
        (
            "bad/no-command.yaml",
            "document 1 (Deployment web, line 1): container web has no command or args",
        ),
        (
            "bad/flow-style.yaml",
            "document 1 (Deployment compact, line 1): spec (line 8) is not in block style",
        ),
        ("bad/not-yaml.yaml", "document 1 (line 1): not valid YAML"),
        (
            "bad/no-kind.yaml",
            "document 2 (no kind, line 16): has no kind",
        ),
    ] {
        let path = fixture(file);
        let r = inject(&[path.to_str().unwrap()], "");
        assert_eq!(r.code, Some(2), "{file}: {}", r.stderr);
        assert_eq!(r.stdout, "", "{file}: nothing is written");
        assert!(
            r.stderr.contains(&format!("{}: {expect}", path.display())),
            "{file}: {}",
            r.stderr
        );
    }
    // Uninject refuses an annotation it did not write, naming it.
    let input = std::fs::read_to_string(fixture("workloads.yaml")).unwrap();
    let injected = inject_ok(&["-"], &input).stdout;
    let forged = injected.replacen(
        "native-sidecar initContainers",
        "native-sidecar sometimes",
        1,
    );
    let r = inject(&["--uninject", "-"], &forged);
    assert_eq!(r.code, Some(2));
    assert!(
        r.stderr
            .contains("document 1 (DaemonSet node-agent, line 1)")
            && r.stderr.contains("unknown word \"sometimes\""),
        "{}",
        r.stderr
    );
    // Naming the process by hand gets past a container without a command; a bad regex does not.
    let path = fixture("bad/no-command.yaml");
    let r = inject_ok(&["--process=^nginx", path.to_str().unwrap()], "");
    assert_eq!(r.stdout.matches("- --process=^nginx\n").count(), 2);
    let r = inject(&["--process=(", path.to_str().unwrap()], "");
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("--process"), "{}", r.stderr);
    let r = inject(&["/nonexistent/manifest.yaml"], "");
    assert_eq!(r.code, Some(2));
    assert!(
        r.stderr.contains("/nonexistent/manifest.yaml"),
        "{}",
        r.stderr
    );
}

#[test]
fn options_on_the_command_line_reach_the_sidecar() {
    let input = std::fs::read_to_string(fixture("existing-sidecars.yaml")).unwrap();
    let r = inject_ok(
        &[
            "--image",
            "registry.example.com/vitals:dev",
            "--forward-endpoint",
            "http://otel-collector.observability:4317",
            "--push-endpoint=http://otel-collector.observability:4318",
            "--metrics-addr",
            "0.0.0.0:19500",
            "--sidecar-arg=--pss",
            "--container",
            "log-shipper",
            "-",
        ],
        &input,
    );
    let objs = objects(&r.stdout);
    let spec = pod_spec(&objs[0]).unwrap();
    let names: Vec<&str> = spec["initContainers"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["migrate", "proxy", "vitals"],
        "appended after the pod's own"
    );
    let sidecar = &spec["initContainers"][2];
    assert_eq!(
        sidecar["image"].as_str(),
        Some("registry.example.com/vitals:dev")
    );
    let args: Vec<&str> = sidecar["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args,
        [
            "--process=^shipper( |$)",
            "--metrics-addr=0.0.0.0:19500",
            "--forward-endpoint=http://otel-collector.observability:4317",
            "--push-endpoint=http://otel-collector.observability:4318",
            "--pss",
        ]
    );
    assert_eq!(sidecar["ports"][0]["containerPort"].as_u64(), Some(19500));
    // The pod already shared its process namespace: inject neither added nor records it.
    assert!(
        r.stdout
            .contains("vitals-sidecar.github.io/inject: native-sidecar\n"),
        "{}",
        r.stdout
    );
    let back = inject_ok(&["--uninject", "-"], &r.stdout);
    assert_eq!(back.stdout, input);
    // Named targets replace the derived selection, in the order given.
    let r = inject_ok(
        &[
            "--target",
            "app=process:^/app/orders",
            "--target=shipper=process:^shipper",
            "-",
        ],
        &input,
    );
    let objs = objects(&r.stdout);
    let args: Vec<&str> = pod_spec(&objs[0]).unwrap()["initContainers"][2]["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args,
        [
            "--target=app=process:^/app/orders",
            "--target=shipper=process:^shipper"
        ]
    );
    // A bad value is refused as vitals itself would refuse it.
    let r = inject(&["--interval", "0s", "-"], &input);
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("--interval"), "{}", r.stderr);
    let r = inject(&["--target", "app=socket:80", "-"], &input);
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("unknown kind"), "{}", r.stderr);
}

/// Sidecar arguments a YAML 1.1 reader would take for a boolean, null, number or date (kubectl reads
/// manifests with go-yaml v2, kubernetes-validate with PyYAML; yaml_serde is YAML 1.2) are written quoted,
/// so every reader gets the same strings back.
#[test]
fn sidecar_args_stay_strings_for_yaml_1_1_readers() {
    let odd = [
        "on",
        "yes",
        "y",
        "N",
        "Off",
        "~",
        "null",
        "0777",
        "1:20",
        "1_000",
        "0x1F",
        "2001-12-14",
        "<<",
        "--pss",
    ];
    let input = std::fs::read_to_string(fixture("existing-sidecars.yaml")).unwrap();
    let flags: Vec<String> = odd.iter().map(|a| format!("--sidecar-arg={a}")).collect();
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.push("-");
    let r = inject_ok(&args, &input);
    let tail = |all: Vec<String>| all[all.len().saturating_sub(odd.len())..].to_vec();
    // YAML 1.2, as vitals reads it.
    let objs = objects(&r.stdout);
    let sidecar = pod_spec(&objs[0]).unwrap()["initContainers"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str() == Some("vitals"))
        .unwrap()
        .clone();
    let got: Vec<String> = sidecar["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(tail(got), odd);
    // YAML 1.1, as PyYAML reads it: `on` would be True, `0777` 511, `1:20` 80, `2001-12-14` a date.
    let python = root().join(".venv/bin/python");
    assert!(
        python.is_file(),
        "python venv missing: python3 -m venv .venv && .venv/bin/pip install -r tests/python/requirements.txt (.ci/run does)"
    );
    let script = "import json, sys, yaml\n\
        for d in yaml.safe_load_all(sys.stdin):\n\
        \x20   for c in (d or {}).get('spec', {}).get('template', {}).get('spec', {}).get('initContainers', []):\n\
        \x20       if c['name'] == 'vitals': print(json.dumps(c['args'], default=repr))\n";
    let mut child = Command::new(&python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(r.stdout.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "PyYAML cannot read the injected manifest: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read: Vec<serde_json::Value> =
        serde_json::from_str(String::from_utf8(out.stdout).unwrap().trim()).unwrap();
    let read: Vec<String> = read.iter().map(|a| a.to_string()).collect();
    let want: Vec<String> = odd.iter().map(|a| format!("{a:?}")).collect();
    assert_eq!(tail(read), want, "PyYAML reads other values");
    // go-yaml v2 also reads y/Y/n/N as booleans, which PyYAML does not: those are quoted in the text.
    for a in ["y", "N"] {
        assert!(
            r.stdout.contains(&format!("- '{a}'\n")),
            "{a}:\n{}",
            r.stdout
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("injected.yaml");
    std::fs::write(&path, &r.stdout).unwrap();
    validate(&[path], "1.33.0").unwrap_or_else(|e| panic!("kubernetes-validate:\n{e}"));
    let second = inject_ok(&args, &r.stdout);
    assert_eq!(second.stdout, r.stdout, "a second inject changed it");
    let back = inject_ok(&["--uninject", "-"], &r.stdout);
    assert_eq!(back.stdout, input);
}

#[test]
fn shipped_example_is_inject_output() {
    let app = root().join("deploy/kubernetes/app/deployment.yaml");
    let r = inject_ok(&[app.to_str().unwrap()], "");
    let shipped =
        std::fs::read_to_string(root().join("deploy/kubernetes/base/deployment.yaml")).unwrap();
    assert!(
        r.stdout == shipped,
        "deploy/kubernetes/base/deployment.yaml is not `vitals inject deploy/kubernetes/app/deployment.yaml`; \
         regenerate it with: cargo run -- inject deploy/kubernetes/app/deployment.yaml > deploy/kubernetes/base/deployment.yaml"
    );
    let back = inject_ok(&["--uninject", "-"], &shipped);
    assert_eq!(back.stdout, std::fs::read_to_string(&app).unwrap());
}

/// The selector inject derives, run by a real vitals against real processes: a program started the
/// way the manifest says is found, not an older process that only names it in its arguments.
#[test]
fn derived_process_attaches_to_the_real_program() {
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("shop-server");
    std::fs::copy("/bin/sleep", &program).unwrap();
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: shop\nspec:\n  securityContext:\n    runAsUser: 1000\n  containers:\n    - name: shop\n      image: shop:1\n      command: [\"{}\", \"300\"]\n",
        program.display()
    );
    let r = inject_ok(&["-"], &manifest);
    let objs = objects(&r.stdout);
    let args: Vec<String> = objs[0]["spec"]["initContainers"][0]["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    // Older, and holds the program's path in its arguments only.
    let decoy = TestChild {
        child: Command::new("python3")
            .args(["-c", "import time; time.sleep(300)"])
            .arg(&program)
            .spawn()
            .unwrap(),
    };
    std::thread::sleep(Duration::from_millis(50));
    let app = TestChild {
        child: Command::new(&program).arg("300").spawn().unwrap(),
    };
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let vitals = Vitals::start(&arg_refs);
    let pid = app.pid().to_string();
    let e = vitals.wait_until(Duration::from_secs(15), "the program as target", |e| {
        e.find("vitals_target_info", &[("selected_by", "process")])
            .is_some()
    });
    let info = e
        .find("vitals_target_info", &[("selected_by", "process")])
        .unwrap();
    assert!(
        info.labels.iter().any(|(k, v)| k == "pid" && *v == pid),
        "{args:?} selected {:?}, not the program (pid {pid}; the decoy is {})",
        info.labels,
        decoy.pid()
    );
}
