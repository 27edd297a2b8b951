//! `vitals inject`: adds the vitals sidecar to the pod templates of Kubernetes manifests (YAML or JSON;
//! Deployments, StatefulSets, DaemonSets, ReplicaSets, ReplicationControllers, Jobs, CronJobs, Pods,
//! and Lists of them) and takes it away again with `--uninject`, leaving everything else as it was.
//!
//! Client-side and idempotent, as `linkerd inject` is: an annotation on each pod template records what
//! inject created, so a second inject first takes its earlier edit away (same flags: the same bytes
//! again) and `--uninject` removes exactly that. The container it adds is built in [`pod`]; YAML is edited
//! as text ([`yaml`]), JSON re-emitted in its own key order and indentation ([`json`]).

pub mod json;
pub mod pod;
pub mod process;
pub mod yaml;

use clap::Args;
use yaml_serde::{Mapping, Value};

use pod::{Created, Plan, TemplateState};

/// The image used when `--image` is not given: built from this repository's Dockerfile and tagged with
/// the crate's version (it is not published; push it to your registry and pass `--image`).
pub const DEFAULT_IMAGE: &str =
    concat!("ghcr.io/vitals-sidecar/vitals:", env!("CARGO_PKG_VERSION"));

/// Largest manifest read, so a runaway pipe cannot exhaust memory.
pub const MAX_INPUT_BYTES: u64 = 64 << 20;

/// `vitals inject`'s own flags. Every vitals option given on the same command line (`--forward-endpoint`,
/// `--push-endpoint`, `--process`, …) is passed on to the sidecar as an argument.
#[derive(Debug, Args, Clone)]
#[command(after_help = "\
Every other vitals option given here (--forward-endpoint, --push-endpoint, --process, --metrics-addr, ...) \
is checked and passed to the sidecar as --name=value. Exit status 2: a document was refused (nothing is \
written). See docs/inject.md.")]
pub struct InjectArgs {
    /// Manifest to read (YAML, one or more documents, or JSON); `-` reads standard input.
    #[arg(value_name = "FILE", default_value = "-")]
    pub file: String,
    /// Remove what an earlier `vitals inject` added, and nothing else.
    #[arg(long)]
    pub uninject: bool,
    /// The vitals image (build it with `docker build`; it is not published).
    #[arg(long, value_name = "IMAGE", default_value = DEFAULT_IMAGE)]
    pub image: String,
    /// Add vitals as a plain container instead of a native sidecar (an init container with
    /// restartPolicy: Always), for clusters older than Kubernetes 1.29.
    #[arg(long)]
    pub legacy_sidecar: bool,
    /// The app container whose command names the process to watch [default: the pod's
    /// kubectl.kubernetes.io/default-container, else its first container].
    #[arg(long, value_name = "NAME")]
    pub container: Option<String>,
    /// One more argument for the sidecar, as it should appear in its args (repeatable), e.g.
    /// `--sidecar-arg=--interval=5s`.
    #[arg(long = "sidecar-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub sidecar_args: Vec<String>,
}

/// What inject adds.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The sidecar's image.
    pub image: String,
    /// A native sidecar (else a plain container).
    pub native: bool,
    /// The app container to read the process from.
    pub container: Option<String>,
    /// Arguments after the derived `--process`; a `--pid`, `--pid-file`, `--process` or `--target`
    /// among them replaces the derived selection.
    pub sidecar_args: Vec<String>,
    /// The `/metrics` port, for the container port.
    pub metrics_port: u16,
}

/// Inject or take away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Add vitals (replacing an earlier inject's edit).
    Inject,
    /// Remove what inject added.
    Uninject,
}

/// The transformed manifest, and one line per pod template for the user.
#[derive(Debug)]
pub struct Outcome {
    /// The manifest.
    pub output: String,
    /// What was done or left alone, and warnings; for stderr.
    pub notes: Vec<String>,
}

/// Why a manifest was refused. Nothing is written when one is.
#[derive(Debug, thiserror::Error)]
#[error("{document}: {reason}")]
pub struct Refused {
    /// The document, e.g. `document 2 (Deployment web, line 14)`.
    pub document: String,
    /// What is wrong and what to do.
    pub reason: String,
}

/// A change decided for one object.
pub struct Decided {
    item: Option<usize>,
    path: &'static [&'static str],
    change: Owned,
}

enum Owned {
    Add(Plan),
    Remove(Created),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    Add,
    Remove,
}

/// Transforms a manifest.
pub fn transform(input: &str, settings: &Settings, mode: Mode) -> Result<Outcome, Refused> {
    let mut notes = Vec::new();
    let json = input.trim_start().starts_with(['{', '[']);
    let pass = |text: &str, p: Pass, notes: &mut Vec<String>| {
        if json {
            json::pass(text, &mut |n, v| {
                decide(v, &json_label(n, v), settings, p, notes)
            })
        } else {
            yaml_pass(text, settings, p, notes)
        }
    };
    let output = match mode {
        Mode::Uninject => pass(input, Pass::Remove, &mut notes)?,
        Mode::Inject => {
            let mut earlier = Vec::new();
            let plain = pass(input, Pass::Remove, &mut earlier)?;
            if !earlier.is_empty() {
                notes.push(format!(
                    "{} pod template(s) already injected: their earlier edit is replaced",
                    earlier.len()
                ));
            }
            pass(&plain, Pass::Add, &mut notes)?
        }
    };
    Ok(Outcome { output, notes })
}

fn describe(v: &Value) -> String {
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or("no kind");
    match v
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
    {
        Some(name) => format!("{kind} {name}"),
        None => kind.to_owned(),
    }
}

fn json_label(n: usize, v: &Value) -> String {
    format!("document {n} ({})", describe(v))
}

fn yaml_pass(
    input: &str,
    settings: &Settings,
    pass: Pass,
    notes: &mut Vec<String>,
) -> Result<String, Refused> {
    let mut out = String::with_capacity(input.len() + 4096);
    let pieces = yaml::split(input);
    // The stream as a whole must parse as it would for kubectl, not only each piece on its own.
    for doc in yaml_serde::Deserializer::from_str(input) {
        if let Err(e) = <Value as serde::Deserialize>::deserialize(doc) {
            let line = e.location().map_or(1, |l| l.line());
            let n = pieces.iter().rposition(|p| p.line <= line).unwrap_or(0);
            return Err(Refused {
                document: format!("document {} (line {})", n + 1, pieces[n].line),
                reason: format!("not valid YAML: {e}"),
            });
        }
    }
    for (n, piece) in pieces.iter().enumerate() {
        let n = n + 1;
        let value: Value = yaml_serde::from_str(piece.text).map_err(|e| Refused {
            document: format!("document {n} (line {})", piece.line),
            reason: format!("not valid YAML: {e}"),
        })?;
        let label = format!("document {n} ({}, line {})", describe(&value), piece.line);
        let decided = decide(&value, &label, settings, pass, notes)?;
        if decided.is_empty() {
            out.push_str(piece.text);
            continue;
        }
        let changes: Vec<yaml::ObjectEdit<'_>> = decided
            .iter()
            .map(|d| yaml::ObjectEdit {
                item: d.item,
                path: d.path,
                change: match &d.change {
                    Owned::Add(p) => yaml::Change::Add(p),
                    Owned::Remove(c) => yaml::Change::Remove(*c),
                },
            })
            .collect();
        let edited = yaml::edit(piece.text, &value, &changes).map_err(|reason| Refused {
            document: label.clone(),
            reason,
        })?;
        out.push_str(&edited);
    }
    Ok(out)
}

/// One object of a document: its item index in a List (None for the document itself), value and label.
type Object<'a> = (Option<usize>, &'a Value, String);

/// The objects of a document: the document itself, or the items of a List, with their labels.
fn objects<'a>(value: &'a Value, label: &str) -> Result<Vec<Object<'a>>, Refused> {
    if value.get("kind").and_then(Value::as_str) == Some("List") {
        let items = value
            .get("items")
            .and_then(Value::as_sequence)
            .ok_or_else(|| Refused {
                document: label.to_owned(),
                reason: "a List without an items list".to_owned(),
            })?;
        return Ok(items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                (
                    Some(i),
                    v,
                    format!("{label}, item {} ({})", i + 1, describe(v)),
                )
            })
            .collect());
    }
    Ok(vec![(None, value, label.to_owned())])
}

fn template_of<'a>(obj: &'a Value, path: &[&str]) -> Option<&'a Mapping> {
    let mut v = obj;
    for k in path {
        v = v.get(*k)?;
    }
    v.as_mapping()
}

/// Decides what one pass does to each object of a document.
fn decide(
    value: &Value,
    label: &str,
    settings: &Settings,
    pass: Pass,
    notes: &mut Vec<String>,
) -> Result<Vec<Decided>, Refused> {
    if value.is_null() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (item, obj, label) in objects(value, label)? {
        let refuse = |reason: String| Refused {
            document: label.clone(),
            reason,
        };
        if !obj.is_mapping() {
            return Err(refuse(
                "not a Kubernetes object (a mapping with apiVersion and kind)".to_owned(),
            ));
        }
        let Some(kind) = obj.get("kind").and_then(Value::as_str) else {
            return Err(refuse(
                "has no kind, so it is not a Kubernetes object vitals inject can read".to_owned(),
            ));
        };
        let Some(path) = pod::template_path(kind) else {
            if let Some(at) = pod::holds_containers(obj) {
                return Err(refuse(format!(
                    "kind {kind} is unknown to vitals inject (it knows Deployment, StatefulSet, DaemonSet, \
                     ReplicaSet, ReplicationController, Job, CronJob, Pod and List) but holds containers \
                     at {at}; add vitals to its pod template by hand"
                )));
            }
            continue;
        };
        let template = template_of(obj, path).ok_or_else(|| {
            refuse(format!(
                "has no pod template at {}",
                if path.is_empty() {
                    "the top".to_owned()
                } else {
                    path.join(".")
                }
            ))
        })?;
        let state = pod::state(template).map_err(&refuse)?;
        let change = match (pass, state) {
            (Pass::Remove, TemplateState::Injected(c)) => {
                notes.push(format!("{label}: vitals removed"));
                Owned::Remove(c)
            }
            (Pass::Remove, _) => continue,
            (Pass::Add, TemplateState::Plain) => {
                let plan = pod::plan(template, settings).map_err(&refuse)?;
                notes.push(format!("{label}: {}", plan.summary));
                for w in &plan.warnings {
                    notes.push(format!("{label}: warning: {w}"));
                }
                Owned::Add(plan)
            }
            (Pass::Add, TemplateState::RunsVitals(which)) => {
                notes.push(format!(
                    "{label}: already runs vitals ({which}) that vitals inject did not add; left as is"
                ));
                continue;
            }
            (Pass::Add, TemplateState::Injected(_)) => {
                return Err(refuse(
                    "still marked as injected after its earlier edit was taken away".to_owned(),
                ))
            }
        };
        out.push(Decided { item, path, change });
    }
    Ok(out)
}

/// Applies decided changes to a parsed document (the JSON path).
fn apply_value(value: &mut Value, decided: &[Decided]) -> Result<(), String> {
    for d in decided {
        let obj = match d.item {
            None => &mut *value,
            Some(i) => value
                .get_mut("items")
                .and_then(|v| v.get_mut(i))
                .ok_or("items changed")?,
        };
        let t = pod::template_mut(obj, d.path).ok_or("no template mapping")?;
        match &d.change {
            Owned::Add(p) => pod::add(t, p)?,
            Owned::Remove(c) => pod::remove(t, *c)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            image: DEFAULT_IMAGE.to_owned(),
            native: true,
            container: None,
            sidecar_args: Vec::new(),
            metrics_port: 19464,
        }
    }

    const DEPLOYMENT: &str = "\
# the app
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web   # trailing comment
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      securityContext:
        runAsUser: 1000
      # the app itself
      containers:
        - name: web
          command: [\"/srv/web\", \"--port=80\"]
---
apiVersion: v1
kind: Service
metadata: {name: web}
";

    #[test]
    fn inject_keeps_comments_and_round_trips() {
        let out = transform(DEPLOYMENT, &settings(), Mode::Inject).unwrap();
        let text = out.output;
        assert!(text.starts_with("# the app\n"), "{text}");
        assert!(text.contains("  name: web   # trailing comment\n"));
        assert!(text.contains(
            "      shareProcessNamespace: true\n      initContainers:\n        - name: vitals\n"
        ), "{text}");
        assert!(
            text.contains("      # the app itself\n      containers:\n"),
            "comment stays on its key: {text}"
        );
        assert!(
            text.contains("          - --process=^/srv/web( |$)\n"),
            "{text}"
        );
        assert!(text.ends_with("---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\n"));
        let again = transform(&text, &settings(), Mode::Inject).unwrap().output;
        assert_eq!(again, text, "a second inject changes nothing");
        let back = transform(&text, &settings(), Mode::Uninject)
            .unwrap()
            .output;
        assert_eq!(back, DEPLOYMENT);
    }

    #[test]
    fn crlf_quoted_keys_no_final_newline_and_compact_json_round_trip() {
        let crlf = DEPLOYMENT
            .split("---")
            .next()
            .unwrap()
            .replace("      containers:", "      \"containers\":")
            .trim_end()
            .replace('\n', "\r\n");
        let json = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[{"name":"a","command":["/a"]}]}}"#;
        for input in [crlf.as_str(), json] {
            let out = transform(input, &settings(), Mode::Inject).unwrap().output;
            assert!(out.contains("vitals-sidecar.github.io/inject"), "{out}");
            assert_eq!(out.contains("\r\n"), input.contains("\r\n"));
            assert!(!out.ends_with('\n'), "no final newline added");
            assert_eq!(
                transform(&out, &settings(), Mode::Inject).unwrap().output,
                out
            );
            assert_eq!(
                transform(&out, &settings(), Mode::Uninject).unwrap().output,
                input
            );
        }
    }

    #[test]
    fn refusals_name_the_document() {
        let host_pid = DEPLOYMENT.replace(
            "      securityContext:",
            "      hostPID: true\n      securityContext:",
        );
        let e = transform(&host_pid, &settings(), Mode::Inject).unwrap_err();
        assert_eq!(e.document, "document 1 (Deployment web, line 1)");
        assert!(e.reason.contains("hostPID"), "{e}");
        // Found by fuzzing: a control character in a comment-only document made the output unparseable.
        let nul = format!("# a\0b\n---\n{DEPLOYMENT}");
        let e = transform(&nul, &settings(), Mode::Inject).unwrap_err();
        assert!(e.reason.contains("control characters"), "{e}");
        let rollout = DEPLOYMENT.replace("kind: Deployment", "kind: Rollout");
        let e = transform(&rollout, &settings(), Mode::Inject).unwrap_err();
        assert!(e.reason.contains("kind Rollout is unknown"), "{e}");
        assert!(e.reason.contains("spec.template.spec.containers"), "{e}");
    }
}
