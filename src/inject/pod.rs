//! The structural edit `vitals inject` makes to one pod template, on the parsed value: what it adds, the
//! record it leaves in an annotation, and how that record takes exactly the same things away again.
//!
//! The YAML path edits text and checks its result against these functions; the JSON path uses them to
//! build its output. Both therefore add and remove the same things in the same order.

use yaml_serde::{Mapping, Value};

use super::process;
use super::Settings;

/// The annotation that marks a pod template vitals inject changed, and records what it created.
pub const ANNOTATION: &str = "vitals-sidecar.github.io/inject";
/// The sidecar container's name (the shipped overlay patches it by this name).
pub const CONTAINER_NAME: &str = "vitals";
/// The container port's name, which the shipped PodMonitor and Service select.
pub const PORT_NAME: &str = "vitals-metrics";

/// What inject created in a pod template, besides the sidecar itself. Written into [`ANNOTATION`] as
/// words, so `--uninject` removes these keys and leaves any the template had before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Created {
    /// The sidecar is a native sidecar in `initContainers` (else a plain container in `containers`).
    pub native: bool,
    /// `initContainers` did not exist.
    pub init_containers: bool,
    /// `shareProcessNamespace` did not exist.
    pub share_process_namespace: bool,
    /// The template's `metadata.annotations` did not exist.
    pub annotations: bool,
    /// The template had no `metadata`.
    pub metadata: bool,
}

impl Created {
    /// The annotation's value: one word per fact, in a fixed order.
    pub fn to_record(self) -> String {
        let mut words = vec![if self.native {
            "native-sidecar"
        } else {
            "container"
        }];
        for (on, word) in [
            (self.init_containers, "initContainers"),
            (self.share_process_namespace, "shareProcessNamespace"),
            (self.annotations, "annotations"),
            (self.metadata, "metadata"),
        ] {
            if on {
                words.push(word);
            }
        }
        words.join(" ")
    }

    /// Reads an annotation value written by [`Created::to_record`].
    pub fn from_record(record: &str) -> Result<Created, String> {
        let mut created = Created::default();
        let mut words = record.split_whitespace();
        match words.next() {
            Some("native-sidecar") => created.native = true,
            Some("container") => created.native = false,
            other => {
                return Err(format!(
                    "annotation {ANNOTATION}: {:?} does not start with native-sidecar or container",
                    other.unwrap_or("")
                ))
            }
        }
        for w in words {
            match w {
                "initContainers" => created.init_containers = true,
                "shareProcessNamespace" => created.share_process_namespace = true,
                "annotations" => created.annotations = true,
                "metadata" => created.metadata = true,
                _ => return Err(format!("annotation {ANNOTATION}: unknown word {w:?}")),
            }
        }
        Ok(created)
    }
}

/// Where an object of a kind keeps its pod template: the keys from the object to the template (the
/// mapping with `metadata` and `spec`). A Pod is its own template.
pub fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => Some(&["spec", "template"]),
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        "Pod" => Some(&[]),
        _ => None,
    }
}

/// Whether a value holds a `containers` key anywhere: an object of a kind inject does not know that
/// holds one has a pod inside that inject would silently leave without vitals.
pub fn holds_containers(v: &Value) -> Option<String> {
    match v {
        Value::Mapping(m) => {
            for (k, v) in m {
                let key = k.as_str().unwrap_or("?");
                if key == "containers" {
                    return Some(key.to_owned());
                }
                if let Some(path) = holds_containers(v) {
                    return Some(format!("{key}.{path}"));
                }
            }
            None
        }
        Value::Sequence(s) => s
            .iter()
            .enumerate()
            .find_map(|(i, v)| holds_containers(v).map(|p| format!("[{i}].{p}"))),
        Value::Tagged(t) => holds_containers(&t.value),
        _ => None,
    }
}

/// What a pod template is, as far as inject is concerned.
#[derive(Debug, PartialEq)]
pub enum TemplateState {
    /// No vitals in it.
    Plain,
    /// Inject added vitals; the record says what it created.
    Injected(Created),
    /// A container that is vitals, put there by hand (named `vitals` or running a `vitals` image) and
    /// not marked by inject: inject leaves the pod as it is.
    RunsVitals(String),
}

fn key(s: &str) -> Value {
    Value::String(s.to_owned())
}

fn get<'a>(m: &'a Mapping, k: &str) -> Option<&'a Value> {
    m.get(k)
}

fn containers_of<'a>(spec: &'a Mapping, k: &str) -> impl Iterator<Item = &'a Value> {
    get(spec, k)
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
}

/// Whether a container is vitals: its name, or its image's repository name.
fn is_vitals(c: &Value) -> bool {
    if c.get("name").and_then(Value::as_str) == Some(CONTAINER_NAME) {
        return true;
    }
    let image = c.get("image").and_then(Value::as_str).unwrap_or("");
    let repo = image.split('@').next().unwrap_or("");
    let last = repo.rsplit('/').next().unwrap_or("");
    last.split(':').next() == Some("vitals")
}

fn annotation_of(template: &Mapping) -> Option<&Value> {
    template
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get(ANNOTATION))
}

/// Classifies a template; an annotation that cannot be read is an error.
pub fn state(template: &Mapping) -> Result<TemplateState, String> {
    if let Some(a) = annotation_of(template) {
        let record = a
            .as_str()
            .ok_or_else(|| format!("annotation {ANNOTATION} is not a string"))?;
        return Created::from_record(record).map(TemplateState::Injected);
    }
    let Some(spec) = template.get("spec").and_then(Value::as_mapping) else {
        return Ok(TemplateState::Plain);
    };
    for list in ["initContainers", "containers"] {
        if let Some(c) = containers_of(spec, list).find(|c| is_vitals(c)) {
            let name = c.get("name").and_then(Value::as_str).unwrap_or("?");
            return Ok(TemplateState::RunsVitals(format!("{list} {name}")));
        }
    }
    Ok(TemplateState::Plain)
}

/// Everything decided for one template before any edit: what to create, the container to add, and
/// notes for the user.
#[derive(Debug)]
pub struct Plan {
    /// What will be created (also the record).
    pub created: Created,
    /// The sidecar container.
    pub container: Value,
    /// The annotation's value.
    pub record: String,
    /// What was chosen, for stderr: the container watched and how.
    pub summary: String,
    /// Things the user should know (not errors).
    pub warnings: Vec<String>,
}

/// Decides the edit for a plain template, or says why it cannot be done.
pub fn plan(template: &Mapping, settings: &Settings) -> Result<Plan, String> {
    let spec = template
        .get("spec")
        .and_then(Value::as_mapping)
        .ok_or("the pod template has no spec mapping")?;
    if spec.get("hostPID").and_then(Value::as_bool) == Some(true) {
        return Err(
            "the pod uses hostPID: vitals would share the node's process namespace and could \
                    pick another pod's process; run it in a pod without hostPID"
                .to_owned(),
        );
    }
    let share = spec.get("shareProcessNamespace");
    match share {
        None => {}
        Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => {
            return Err(
                "the pod sets shareProcessNamespace: false, and vitals needs it true to see \
                        the app's processes; remove the line or set it to true"
                    .to_owned(),
            )
        }
        Some(other) => return Err(format!("shareProcessNamespace is {other:?}, not a boolean")),
    }
    let containers = spec
        .get("containers")
        .and_then(Value::as_sequence)
        .filter(|c| !c.is_empty())
        .ok_or("the pod template has no containers list")?;
    for list in ["initContainers", "containers"] {
        if let Some(v) = spec.get(list) {
            if !v.is_sequence() {
                return Err(format!("{list} is not a list"));
            }
        }
    }
    if let Some(m) = template.get("metadata") {
        if !m.is_mapping() {
            return Err("the template's metadata is not a mapping".to_owned());
        }
        if let Some(a) = m.get("annotations") {
            if !a.is_mapping() {
                return Err("the template's metadata.annotations is not a mapping".to_owned());
            }
        }
    }
    let mut warnings = Vec::new();
    let app = choose_app(template, containers, settings)?;
    let app_name = app.get("name").and_then(Value::as_str).unwrap_or("?");
    let summary;
    let selects = settings.sidecar_args.iter().any(|a| {
        ["--pid", "--pid-file", "--process", "--target"]
            .iter()
            .any(|f| a == f || a.starts_with(&format!("{f}=")))
    });
    let mut args: Vec<String> = Vec::new();
    if !selects {
        let strings = |k: &str| -> Vec<String> {
            app.get(k)
                .and_then(Value::as_sequence)
                .map(|s| {
                    s.iter()
                        .map(|v| v.as_str().map(str::to_owned).unwrap_or_default())
                        .collect()
                })
                .unwrap_or_default()
        };
        let regex = process::process_regex(&strings("command"), &strings("args")).ok_or_else(|| {
            format!(
                "container {app_name} has no command or args that name its program, so vitals cannot \
                 tell which process to watch (the image's entrypoint is not in the manifest); give \
                 --process REGEX (matched on the process' comm or command line)"
            )
        })?;
        summary = format!("watching container {app_name} with --process={regex}");
        args.push(format!("--process={regex}"));
    } else {
        summary = "the target selection given on the command line".to_owned();
    }
    args.extend(settings.sidecar_args.iter().cloned());
    let run_as = run_as_of(spec, app, app_name, &mut warnings);
    let container = sidecar(settings, args, run_as);
    let meta = template.get("metadata");
    let created = Created {
        native: settings.native,
        init_containers: settings.native && spec.get("initContainers").is_none(),
        share_process_namespace: share.is_none(),
        annotations: meta.is_some_and(|m| m.get("annotations").is_none()),
        metadata: meta.is_none(),
    };
    Ok(Plan {
        record: created.to_record(),
        created,
        container,
        summary,
        warnings,
    })
}

/// The app container whose command names the process: `--container`, else the pod's
/// `kubectl.kubernetes.io/default-container`, else the first container.
fn choose_app<'a>(
    template: &Mapping,
    containers: &'a [Value],
    settings: &Settings,
) -> Result<&'a Value, String> {
    let default = template
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get("kubectl.kubernetes.io/default-container"))
        .and_then(Value::as_str);
    let wanted = settings.container.as_deref().or(default);
    match wanted {
        Some(name) => containers
            .iter()
            .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
            .ok_or_else(|| format!("no container named {name} (from --container or the default-container annotation)")),
        None => Ok(&containers[0]),
    }
}

/// The user and group vitals runs as: the app container's own, when it sets them (the pod's apply to
/// both by themselves). vitals must run as the app's UID to read its /proc files with no capability.
fn run_as_of(spec: &Mapping, app: &Value, app_name: &str, warnings: &mut Vec<String>) -> Mapping {
    let mut out = Mapping::new();
    let app_sc = app.get("securityContext");
    let pod_sc = spec.get("securityContext");
    let user = app_sc
        .and_then(|s| s.get("runAsUser"))
        .or_else(|| pod_sc.and_then(|s| s.get("runAsUser")));
    match user.and_then(Value::as_u64) {
        Some(0) => warnings.push(format!(
            "container {app_name} runs as root; vitals runs as a non-root user and cannot read a root \
             process' /proc/PID/{{io,fd,root}} without CAP_SYS_PTRACE (see deploy/kubernetes/overlays/sys-ptrace)"
        )),
        Some(_) => {
            for k in ["runAsUser", "runAsGroup"] {
                if let Some(v) = app_sc.and_then(|s| s.get(k)) {
                    out.insert(key(k), v.clone());
                }
            }
        }
        None => warnings.push(format!(
            "neither container {app_name} nor the pod sets runAsUser: vitals runs as its image's user \
             (65532) and can read the app's /proc files only if the app runs as that user too; set \
             the pod's securityContext.runAsUser to the app's UID"
        )),
    }
    out
}

fn map(pairs: Vec<(&str, Value)>) -> Value {
    let mut m = Mapping::new();
    for (k, v) in pairs {
        m.insert(key(k), v);
    }
    Value::Mapping(m)
}

fn s(v: &str) -> Value {
    Value::String(v.to_owned())
}

fn n(v: u64) -> Value {
    Value::Number(v.into())
}

fn field_env(name: &str, path: &str) -> Value {
    map(vec![
        ("name", s(name)),
        (
            "valueFrom",
            map(vec![("fieldRef", map(vec![("fieldPath", s(path))]))]),
        ),
    ])
}

fn probe(path: &str, period: u64, failures: Option<u64>) -> Value {
    let mut pairs = vec![
        (
            "httpGet",
            map(vec![("path", s(path)), ("port", s(PORT_NAME))]),
        ),
        ("periodSeconds", n(period)),
    ];
    if let Some(f) = failures {
        pairs.push(("failureThreshold", n(f)));
    }
    map(pairs)
}

/// The sidecar container. Its settings are those of `deploy/kubernetes` (which is this function's output):
/// probes on /healthz (startup, liveness) and /readyz (readiness: the pod is not Ready while vitals cannot
/// find the app, so a wrong `--process` shows in `kubectl get pods`), the measured resources with the
/// 96 MiB limit, the Downward API variables the OTLP push puts on its resource, and a securityContext that
/// meets Pod Security "restricted" on its own.
fn sidecar(settings: &Settings, args: Vec<String>, run_as: Mapping) -> Value {
    let mut pairs = vec![("name", s(CONTAINER_NAME)), ("image", s(&settings.image))];
    if settings.native {
        pairs.push(("restartPolicy", s("Always")));
    }
    pairs.push(("args", Value::Sequence(args.iter().map(|a| s(a)).collect())));
    pairs.push((
        "env",
        Value::Sequence(vec![
            map(vec![("name", s("VITALS_LOG_FORMAT")), ("value", s("json"))]),
            field_env("K8S_POD_NAME", "metadata.name"),
            field_env("K8S_NAMESPACE_NAME", "metadata.namespace"),
            field_env("K8S_NODE_NAME", "spec.nodeName"),
            field_env("K8S_POD_UID", "metadata.uid"),
            map(vec![
                ("name", s("K8S_CONTAINER_NAME")),
                ("value", s(CONTAINER_NAME)),
            ]),
        ]),
    ));
    pairs.push((
        "ports",
        Value::Sequence(vec![map(vec![
            ("name", s(PORT_NAME)),
            ("containerPort", n(u64::from(settings.metrics_port))),
        ])]),
    ));
    pairs.push(("startupProbe", probe("/healthz", 1, Some(30))));
    pairs.push(("livenessProbe", probe("/healthz", 10, None)));
    pairs.push(("readinessProbe", probe("/readyz", 5, None)));
    pairs.push((
        "resources",
        map(vec![
            (
                "requests",
                map(vec![("cpu", s("10m")), ("memory", s("24Mi"))]),
            ),
            (
                "limits",
                map(vec![("cpu", s("500m")), ("memory", s("96Mi"))]),
            ),
        ]),
    ));
    let mut sc = vec![
        ("allowPrivilegeEscalation", Value::Bool(false)),
        ("readOnlyRootFilesystem", Value::Bool(true)),
        ("runAsNonRoot", Value::Bool(true)),
    ];
    let run_as: Vec<(String, Value)> = run_as
        .into_iter()
        .map(|(k, v)| (k.as_str().unwrap_or("").to_owned(), v))
        .collect();
    for (k, v) in &run_as {
        sc.push((k.as_str(), v.clone()));
    }
    sc.push((
        "capabilities",
        map(vec![("drop", Value::Sequence(vec![s("ALL")]))]),
    ));
    sc.push(("seccompProfile", map(vec![("type", s("RuntimeDefault"))])));
    pairs.push(("securityContext", map(sc)));
    map(pairs)
}

/// Inserts `k: v` before key `before` (at the end when absent), keeping every other key's place.
fn insert_before(m: &mut Mapping, before: &str, k: &str, v: Value) {
    let old = std::mem::take(m);
    let mut placed = false;
    for (ok, ov) in old {
        if !placed && ok.as_str() == Some(before) {
            m.insert(key(k), v.clone());
            placed = true;
        }
        m.insert(ok, ov);
    }
    if !placed {
        m.insert(key(k), v);
    }
}

fn mapping_mut<'a>(m: &'a mut Mapping, k: &str) -> Result<&'a mut Mapping, String> {
    m.get_mut(k)
        .and_then(Value::as_mapping_mut)
        .ok_or_else(|| format!("{k} is not a mapping"))
}

fn sequence_mut<'a>(m: &'a mut Mapping, k: &str) -> Result<&'a mut Vec<Value>, String> {
    m.get_mut(k)
        .and_then(Value::as_sequence_mut)
        .ok_or_else(|| format!("{k} is not a list"))
}

/// Applies a plan to the template value.
pub fn add(template: &mut Mapping, plan: &Plan) -> Result<(), String> {
    let c = plan.created;
    let spec = mapping_mut(template, "spec")?;
    if c.share_process_namespace {
        insert_before(
            spec,
            "containers",
            "shareProcessNamespace",
            Value::Bool(true),
        );
    }
    if c.native && c.init_containers {
        insert_before(
            spec,
            "containers",
            "initContainers",
            Value::Sequence(vec![plan.container.clone()]),
        );
    } else {
        let list = if c.native {
            "initContainers"
        } else {
            "containers"
        };
        sequence_mut(spec, list)?.push(plan.container.clone());
    }
    let note = map(vec![(ANNOTATION, s(&plan.record))]);
    if c.metadata {
        insert_before(
            template,
            "spec",
            "metadata",
            map(vec![("annotations", note)]),
        );
    } else if c.annotations {
        mapping_mut(template, "metadata")?.insert(key("annotations"), note);
    } else {
        let meta = mapping_mut(template, "metadata")?;
        mapping_mut(meta, "annotations")?.insert(key(ANNOTATION), s(&plan.record));
    }
    Ok(())
}

/// Removes what the record says inject added; the inverse of [`add`].
pub fn remove(template: &mut Mapping, c: Created) -> Result<(), String> {
    let spec = mapping_mut(template, "spec")?;
    let list = if c.native {
        "initContainers"
    } else {
        "containers"
    };
    let items = sequence_mut(spec, list)?;
    let at = items
        .iter()
        .rposition(|i| i.get("name").and_then(Value::as_str) == Some(CONTAINER_NAME))
        .ok_or_else(|| format!("{list} has no container named {CONTAINER_NAME}"))?;
    items.remove(at);
    if c.native && c.init_containers && items.is_empty() {
        spec.shift_remove("initContainers");
    }
    if c.share_process_namespace {
        if spec.get("shareProcessNamespace") != Some(&Value::Bool(true)) {
            return Err("shareProcessNamespace is no longer the true inject added".to_owned());
        }
        spec.shift_remove("shareProcessNamespace");
    }
    let meta = mapping_mut(template, "metadata")?;
    let notes = mapping_mut(meta, "annotations")?;
    notes.shift_remove(ANNOTATION);
    if (c.annotations || c.metadata) && notes.is_empty() {
        meta.shift_remove("annotations");
    }
    if c.metadata && meta.is_empty() {
        template.shift_remove("metadata");
    }
    Ok(())
}

/// The template inside an object, by its kind's path.
pub fn template_mut<'a>(obj: &'a mut Value, path: &[&str]) -> Option<&'a mut Mapping> {
    let mut v = obj;
    for k in path {
        v = v.get_mut(*k)?;
    }
    v.as_mapping_mut()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips() {
        for created in [
            Created::default(),
            Created {
                native: true,
                init_containers: true,
                share_process_namespace: true,
                annotations: true,
                metadata: true,
            },
            Created {
                native: true,
                share_process_namespace: true,
                ..Created::default()
            },
        ] {
            assert_eq!(Created::from_record(&created.to_record()), Ok(created));
        }
        assert!(Created::from_record("native-sidecar bogus").is_err());
        assert!(Created::from_record("").is_err());
    }

    #[test]
    fn vitals_is_known_by_name_or_image() {
        let c = |y: &str| yaml_serde::from_str::<Value>(y).unwrap();
        assert!(is_vitals(&c("name: vitals\nimage: x")));
        assert!(is_vitals(&c(
            "name: metrics\nimage: reg.io:5000/team/vitals:0.1"
        )));
        assert!(is_vitals(&c("name: m\nimage: vitals@sha256:00")));
        assert!(!is_vitals(&c("name: m\nimage: reg.io/vitals-other:1")));
        assert!(!is_vitals(&c("name: m\nimage: reg.io/vitals/app:1")));
    }
}
