//! The catalogue of vitals' own metrics: each one declared once, here, with its OpenTelemetry name, unit,
//! kind, labels (and their values where they are a fixed set), description, the question it answers and
//! when it is present. Producers build their [`Metric`] from an entry ([`MetricDef::metric`]), readers (the
//! live page, the hints) look families up by entry ([`MetricDef::is`]), and the tests hold
//! `docs/metrics.md`, the Grafana dashboards, the rule files and the page's thresholds to these entries.
//!
//! Why a Rust table and not a `metadata.yaml` with generated code (the OpenTelemetry Collector's way):
//! the compiler already checks every use of an entry, so a renamed or removed entry fails the build where
//! it is used, with no generator step to run or keep in sync; the exposition name is not stored but derived
//! by the Prometheus exporter's own naming rules, so it cannot disagree with what a scrape shows. The
//! catalogue depends on the model only; every other part may read it.

use std::collections::HashMap;

use crate::model::{Metric, MetricInfo, MetricKind, Origin, Point, Value};

/// Which of the four questions of the design a metric helps answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Question {
    /// Is it slow? (RED, queries)
    Slow,
    /// Is it pausing? (GC, safepoints, throttling, pressure stalls, event-loop delay)
    Pausing,
    /// Is it leaking? (memory and its growth)
    Leaking,
    /// Is it saturated? (pools, fds, threads, pids, CPU quota)
    Saturated,
}

/// The section of `docs/metrics.md` a metric is listed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    /// The target's identity and vitals' own health.
    TargetAndExporter,
    /// The target's process tree, from procfs.
    Process,
    /// The target's cgroup.
    Container,
    /// RED from SERVER and CONSUMER spans.
    Latency,
    /// Database queries from CLIENT spans.
    Queries,
    /// GC pauses, safepoints, event-loop delay.
    Pauses,
    /// Memory growth and heap.
    MemoryGrowth,
    /// Pool saturation.
    Pools,
    /// Tuning hints.
    Hints,
}

impl Area {
    /// The start of the `docs/metrics.md` heading of this section.
    pub fn heading(self) -> &'static str {
        match self {
            Area::TargetAndExporter => "Target and exporter",
            Area::Process => "Process",
            Area::Container => "Container",
            Area::Latency => "Latency",
            Area::Queries => "Which query",
            Area::Pauses => "Pauses",
            Area::MemoryGrowth => "Memory growth",
            Area::Pools => "Pool saturation",
            Area::Hints => "Tuning hints",
        }
    }
}

/// When a metric is in the exposition (the *present when* column of `docs/metrics.md`, which explains
/// each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// In every exposition.
    Always,
    /// Whenever a target is selected.
    Selected,
    /// While a target is attached and the file behind it is readable.
    Target,
    /// Only when the cgroup sets that limit.
    Limit,
    /// Only with `--pss`.
    Pss,
    /// Once the app sent the matching OTLP data.
    Otlp,
    /// A HotSpot JVM target with hsperfdata.
    Jvm,
    /// Once the app sent OTLP runtime metrics, or for a JVM with hsperfdata.
    OtlpOrJvm,
    /// The target listens on TCP.
    Sockets,
    /// Once a growth window holds two thirds of its data.
    Window,
    /// Once the live history has sampled the target.
    Hints,
    /// For each signal with an upstream to forward to.
    Forward,
    /// With `--push-endpoint`.
    Push,
    /// Once a heap value is known.
    Heap,
    /// With `--profile-continuous=true`.
    Continuous,
}

impl Presence {
    /// The word `docs/metrics.md` uses for it.
    pub fn doc(self) -> &'static str {
        match self {
            Presence::Always => "always",
            Presence::Selected => "selected",
            Presence::Target => "target",
            Presence::Limit => "limit",
            Presence::Pss => "pss",
            Presence::Otlp => "otlp",
            Presence::Jvm => "jvm",
            Presence::OtlpOrJvm => "otlp or jvm",
            Presence::Sockets => "sockets",
            Presence::Window => "window",
            Presence::Hints => "hints",
            Presence::Forward => "forward",
            Presence::Push => "push",
            Presence::Heap => "heap",
            Presence::Continuous => "continuous",
        }
    }
}

/// A label a metric's points carry, under its OpenTelemetry attribute key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label {
    /// Attribute key as the model holds it (`cpu.mode`, `statistic`).
    pub key: &'static str,
    /// The values it takes when they are a fixed set; `None` when they come from the target or the app
    /// (bounded by the series limit, not by a list).
    pub values: Option<&'static [&'static str]>,
}

impl Label {
    /// A label whose values come from outside.
    pub const fn any(key: &'static str) -> Label {
        Label { key, values: None }
    }

    /// A label with a fixed set of values.
    pub const fn one_of(key: &'static str, values: &'static [&'static str]) -> Label {
        Label {
            key,
            values: Some(values),
        }
    }
}

/// The label that marks an overflow series, as the OpenTelemetry SDKs name it: the series a bounded
/// family (RED, queries, N+1 runs, log records) sends observations to once `--series-limit` is reached.
pub const OVERFLOW_LABEL: (&str, &str) = ("otel_metric_overflow", "true");

/// Labels every entry may carry besides its own: `target` is added to a named target's families
/// (`--target NAME=SPEC`), [`OVERFLOW_LABEL`] marks a bounded family's overflow series.
pub const SHARED_LABELS: &[&str] = &["target", OVERFLOW_LABEL.0];

/// One metric of vitals' own, declared once.
#[derive(Debug, PartialEq, Eq)]
pub struct MetricDef {
    /// OpenTelemetry name (`vitals.gc.pause.max`).
    pub name: &'static str,
    /// UCUM unit (`s`, `By`, `1`, `{pause}`), empty when it has none.
    pub unit: &'static str,
    /// Kind of instrument.
    pub kind: MetricKind,
    /// The description (the exposition's `# HELP`).
    pub description: &'static str,
    /// The labels its points may carry.
    pub labels: &'static [Label],
    /// The section of `docs/metrics.md` it is listed in.
    pub area: Area,
    /// The question it helps answer, if it answers one.
    pub answers: Option<Question>,
    /// When it is present.
    pub present: Presence,
}

impl MetricDef {
    /// A new metric of this identity, with no points.
    pub fn metric(&'static self) -> Metric {
        self.info().borrowed_metric()
    }

    /// This metric's identity as a streaming collector hands it to a [`crate::model::MetricSink`].
    pub fn info(&'static self) -> MetricInfo<'static> {
        MetricInfo {
            name: self.name,
            description: self.description,
            unit: self.unit,
            kind: self.kind,
            origin: Origin::Vitals,
        }
    }

    /// Whether `m` is this metric (vitals' own, not an app metric of the same name).
    pub fn is(&self, m: &Metric) -> bool {
        m.origin == Origin::Vitals && m.name == self.name
    }

    /// The declared label of this key.
    pub fn label(&self, key: &str) -> Option<&'static Label> {
        self.labels.iter().find(|l| l.key == key)
    }
}

/// The entry of a name.
pub fn by_name(name: &str) -> Option<&'static MetricDef> {
    ALL.iter().copied().find(|d| d.name == name)
}

/// What in `metrics` disagrees with the catalogue: a metric of vitals' own with no entry, or whose unit,
/// kind or description differ from its entry's, or a point with a label the entry does not declare or a
/// value outside the label's fixed set. Empty when all agree. The tests run producers' output through it.
pub fn violations(metrics: &[Metric]) -> Vec<String> {
    let mut out = Vec::new();
    for m in metrics.iter().filter(|m| m.origin == Origin::Vitals) {
        let Some(def) = by_name(&m.name) else {
            out.push(format!("{}: no catalogue entry", m.name));
            continue;
        };
        if m.unit != def.unit || m.kind != def.kind || m.description != def.description {
            out.push(format!(
                "{}: unit, kind or description differ from the entry",
                m.name
            ));
        }
        for p in &m.points {
            for (k, v) in &p.attributes {
                if SHARED_LABELS.contains(&k.as_str()) {
                    continue;
                }
                match def.label(k) {
                    None => out.push(format!("{}: label {k} is not declared", m.name)),
                    Some(Label {
                        values: Some(values),
                        ..
                    }) if !values.contains(&v.as_str()) => {
                        out.push(format!("{}: {k}=\"{v}\" is not one of {values:?}", m.name))
                    }
                    Some(_) => {}
                }
            }
        }
    }
    out
}

/// Panics with every [`violations`] of `metrics`: for producers' unit tests.
#[cfg(test)]
pub fn assert_agrees(metrics: &[Metric]) {
    let v = violations(metrics);
    assert!(
        v.is_empty(),
        "disagrees with the catalogue:\n{}",
        v.join("\n")
    );
}

/// Every entry's family with one series per value of each fixed label (the other labels at their first
/// value, labels from outside `x`), counters and histograms growing with `step` (gauges stay, so the
/// target's start time and identity do too): for tests of readers that declare what they
/// read.
#[cfg(test)]
pub fn every_family(step: f64) -> Vec<Metric> {
    use crate::model::Value;
    let value = |kind: MetricKind, i: usize| {
        let n = (step as u64 + 1) * (i as u64 + 1);
        match kind {
            MetricKind::Counter | MetricKind::UpDownCounter => Value::Sum(n as f64 * 1.5),
            MetricKind::Gauge => Value::Gauge(0.1 + 0.01 * i as f64),
            MetricKind::Histogram => Value::Histogram {
                buckets: vec![(0.1, n), (1.0, 2 * n), (f64::INFINITY, 3 * n)],
                sum: n as f64,
                count: 3 * n,
                exemplars: Vec::new(),
                native: None,
            },
            MetricKind::Summary => Value::Summary {
                quantiles: vec![(0.5, 0.1 * step), (0.99, 0.2 * step)],
                sum: n as f64,
                count: n,
            },
        }
    };
    ALL.iter()
        .map(|def| {
            let first: Vec<(&str, &str)> = def
                .labels
                .iter()
                .map(|l| {
                    (
                        l.key,
                        l.values.and_then(|v| v.first().copied()).unwrap_or("x"),
                    )
                })
                .collect();
            let mut m = def.metric().with(&first, value(def.kind, 0));
            for (j, l) in def.labels.iter().enumerate() {
                for (i, v) in l.values.unwrap_or(&[]).iter().enumerate().skip(1) {
                    let mut attrs = first.clone();
                    attrs[j].1 = v;
                    m.push(&attrs, value(def.kind, i));
                }
            }
            m
        })
        .collect()
}

/// What a gather for readers that declared `lists` keeps of `all` (as [`gathers`] decides): for tests that
/// compare a reader fed the reduced gather with one fed everything.
#[cfg(test)]
pub fn gathered_for(lists: &[&[&MetricDef]], all: &[Metric]) -> Vec<Metric> {
    all.iter()
        .filter(|m| gathers(lists, &m.name))
        .cloned()
        .collect()
}

/// Every entry, in the order of `docs/metrics.md`.
pub static ALL: &[&MetricDef] = &[
    &TARGET_UP,
    &TARGET_INFO,
    &TARGET_PROCESSES,
    &TARGET_PROCESSES_UNTRACKED,
    &TARGET_EXITS,
    &TARGET_RESTARTS,
    &EXPORTER_BUILD_INFO,
    &EXPORTER_CPU,
    &EXPORTER_RESIDENT_MEMORY,
    &EXPORTER_READ_ERRORS,
    &PROFILER_STATUS,
    &PROFILER_SAMPLES,
    &PROFILER_RING,
    &PROFILER_RING_SPAN,
    &PROFILER_CAPTURES,
    &PROFILER_CAPTURES_KEPT,
    &EXPORTER_SAMPLE_DURATION,
    &EXPORTER_OTLP_ITEMS,
    &EXPORTER_OTLP_REFUSED_REQUESTS,
    &EXPORTER_FORWARD_ITEMS,
    &EXPORTER_FORWARD_REQUESTS,
    &EXPORTER_FORWARD_RETRIES,
    &EXPORTER_FORWARD_UPSTREAM_DURATION,
    &EXPORTER_FORWARD_QUEUE,
    &EXPORTER_FORWARD_QUEUE_LIMIT,
    &EXPORTER_PUSH_REQUESTS,
    &EXPORTER_PUSH_POINTS,
    &EXPORTER_SERIES_OVERFLOW,
    &EXPORTER_SERIES,
    &EXPORTER_HSPERFDATA_STATUS,
    &PROCESS_CPU_TIME,
    &PROCESS_MEMORY_USAGE,
    &PROCESS_MEMORY_VIRTUAL,
    &PROCESS_DISK_IO,
    &PROCESS_THREADS,
    &PROCESS_OPEN_FILE_DESCRIPTORS,
    &PROCESS_CONTEXT_SWITCHES,
    &PROCESS_PAGING_FAULTS,
    &PROCESS_UPTIME,
    &PROCESS_MAX_FDS,
    &PROCESS_START_TIME,
    &PROCESS_SCHEDULER_WAIT,
    &PROCESS_SWAP,
    &PROCESS_PROPORTIONAL_MEMORY,
    &PROCESS_MEMBER_MEMORY_USAGE,
    &PROCESS_MEMBER_CPU_CORES,
    &CGROUP_MEMORY_USAGE,
    &CGROUP_MEMORY_LIMIT,
    &CGROUP_MEMORY_OOM_KILLS,
    &CGROUP_CPU_LIMIT_CORES,
    &CGROUP_CPU_THROTTLED,
    &CGROUP_CPU_THROTTLED_PERIODS,
    &CGROUP_CPU_PERIODS,
    &CGROUP_PIDS,
    &CGROUP_PIDS_LIMIT,
    &PRESSURE_STALLED,
    &REQUEST_DURATION,
    &LOG_RECORDS,
    &DB_QUERY_DURATION,
    &DB_N_PLUS_ONE,
    &DB_N_PLUS_ONE_DROPPED,
    &GC_PAUSE,
    &GC_PAUSES,
    &GC_PAUSE_MAX,
    &SAFEPOINT,
    &SAFEPOINTS,
    &EVENT_LOOP_DELAY,
    &MEMORY_GROWTH,
    &MEMORY_TIME_TO_LIMIT,
    &MEMORY_LEAK_SUSPECTED,
    &MEMORY_GROWTH_STATUS,
    &MEMORY_HEAP,
    &MEMORY_HEAP_LIMIT,
    &POOL_USED,
    &POOL_MAX,
    &POOL_UTILIZATION,
    &POOL_PENDING,
    &POOL_ACCEPT_QUEUE_BACKLOG_SOURCE,
    &RECOMMENDATION_HISTORY,
    &RECOMMENDATION_CORES,
    &RECOMMENDATION_BYTES,
    &RECOMMENDATION_THROTTLED,
    &RECOMMENDATION_CONNECTIONS,
    &RECOMMENDATION_FILES,
];

// Value sets several entries share.

/// `source` of the read errors and read durations: the files a probe reads.
const READ_SOURCES: &[&str] = &[
    "procfs",
    "proc_status",
    "proc_io",
    "proc_fd",
    "proc_limits",
    "proc_schedstat",
    "proc_smaps_rollup",
    "cgroup",
    "pressure",
    "hsperfdata",
];
/// `outcome` of forwarded items and requests.
const FORWARD_OUTCOMES: &[&str] = &["sent", "rejected", "refused", "dropped"];
/// `outcome` of a request or a query.
const OK_OR_ERROR: &[&str] = &["ok", "error"];
/// `source` of a pause.
const PAUSE_SOURCES: &[&str] = &["otlp", "hsperfdata"];
/// `signal` of the memory growth families.
const MEMORY_SIGNALS: &[&str] = &["rss", "heap", "cgroup"];
/// `kind` of a pool.
const POOL_KINDS: &[&str] = &[
    "db",
    "thread",
    "fds",
    "threads",
    "pids",
    "accept_queue",
    "cpu",
];
/// `resource` of a tuning hint.
const HINT_RESOURCES: &[&str] = &[
    "cpu_request",
    "cpu_limit",
    "memory_request",
    "memory_limit",
    "jvm_heap_max",
    "db_pool_max",
    "fd_limit",
];

/// `vitals_target_up`, written by `src/signal/target.rs`.
pub static TARGET_UP: MetricDef = MetricDef {
    name: "vitals.target.up",
    unit: "",
    kind: MetricKind::Gauge,
    description: "1 while the target process is attached and readable",
    labels: &[],
    area: Area::TargetAndExporter,
    answers: None,
    present: Presence::Selected,
};

/// `vitals_target_info`, written by `src/signal/target.rs`.
pub static TARGET_INFO: MetricDef = MetricDef {
    name: "vitals.target.info",
    unit: "",
    kind: MetricKind::Gauge,
    description: "The attached target process",
    labels: &[
        Label::any("pid"),
        Label::any("comm"),
        Label::any("runtime"),
        Label::any("runtime_pid"),
        Label::one_of("selected_by", &["pid", "pid_file", "process", "run", "pod"]),
        Label::any("k8s_namespace_name"),
        Label::any("k8s_pod_name"),
        Label::any("k8s_node_name"),
    ],
    area: Area::TargetAndExporter,
    answers: None,
    present: Presence::Target,
};

/// `vitals_target_processes`, written by `src/signal/target.rs`.
pub static TARGET_PROCESSES: MetricDef = MetricDef {
    name: "vitals.target.processes",
    unit: "{process}",
    kind: MetricKind::Gauge,
    description: "Live processes in the target's tree: the selected process and its descendants",
    labels: &[],
    area: Area::TargetAndExporter,
    answers: None,
    present: Presence::Target,
};

/// `vitals_target_processes_untracked`, written by `src/signal/target.rs`.
pub static TARGET_PROCESSES_UNTRACKED: MetricDef = MetricDef {
    name: "vitals.target.processes.untracked",
    unit: "{process}",
    kind: MetricKind::Gauge,
    description: "Processes of the target's tree past --max-tree-processes: counted, not read, missing from the sums",
    labels: &[],
    area: Area::TargetAndExporter,
    answers: None,
    present: Presence::Target,
};

/// `vitals_target_exits_total`, written by `src/signal/target.rs`.
pub static TARGET_EXITS: MetricDef = MetricDef {
    name: "vitals.target.exits",
    unit: "{exit}",
    kind: MetricKind::Counter,
    description:
        "Target instances that ended, by reason (oom_kill when their cgroup counted an OOM kill)",
    labels: &[Label::one_of("reason", &["oom_kill", "other"])],
    area: Area::TargetAndExporter,
    answers: None,
    present: Presence::Target,
};

/// `vitals_target_restarts_total`, written by `src/signal/target.rs`.
pub static TARGET_RESTARTS: MetricDef = MetricDef {
    name: "vitals.target.restarts",
    unit: "{restart}",
    kind: MetricKind::Counter,
    description: "Times a new target instance was attached after a previous one",
    labels: &[],
    area: Area::TargetAndExporter,
    answers: None,
    present: Presence::Selected,
};

/// `vitals_exporter_build_info`, written by `src/probe/own_health.rs`.
pub static EXPORTER_BUILD_INFO: MetricDef = MetricDef {
    name: "vitals.exporter.build.info",
    unit: "",
    kind: MetricKind::Gauge,
    description: "vitals build",
    labels: &[Label::any("version")],
    area: Area::TargetAndExporter,
    answers: None,
    present: Presence::Always,
};

/// `vitals_exporter_cpu_seconds_total`, written by `src/probe/own_health.rs`.
pub static EXPORTER_CPU: MetricDef = MetricDef {
    name: "vitals.exporter.cpu",
    unit: "s",
    kind: MetricKind::Counter,
    description: "CPU time of the vitals sidecar itself",
    labels: &[],
    area: Area::TargetAndExporter,
    answers: None,
    present: Presence::Always,
};

/// `vitals_exporter_resident_memory_bytes`, written by `src/probe/own_health.rs`.
pub static EXPORTER_RESIDENT_MEMORY: MetricDef = MetricDef {
    name: "vitals.exporter.resident.memory",
    unit: "By",
    kind: MetricKind::Gauge,
    description: "Resident memory of the vitals sidecar itself",
    labels: &[],
    area: Area::TargetAndExporter,
    answers: Some(Question::Leaking),
    present: Presence::Always,
};

/// `vitals_exporter_read_errors_total`, written by `src/probe/own_health.rs`.
pub static EXPORTER_READ_ERRORS: MetricDef = MetricDef {
    name: "vitals.exporter.read.errors",
    unit: "{error}",
    kind: MetricKind::Counter,
    description: "Reads of a target file that failed (file left out of /metrics)",
    labels: &[Label::one_of("source", READ_SOURCES)],
    area: Area::TargetAndExporter,
    answers: None,
    present: Presence::Always,
};

/// `vitals_profiler_status`, written by `src/profile/status.rs`.
pub static PROFILER_STATUS: MetricDef = MetricDef {
    name: "vitals.profiler.status",
    unit: "",
    kind: MetricKind::Gauge,
    description: "State of the CPU profiler (1 for the current reason): off, no_target, ok, \
                 no_kernel_frames, not_permitted_*, unsupported, no_symbols, error",
    labels: &[Label::one_of(
        "reason",
        &[
            "off",
            "no_target",
            "ok",
            "no_kernel_frames",
            "not_permitted_perf_event_paranoid",
            "not_permitted_other_user",
            "not_permitted_seccomp_or_capability",
            "unsupported",
            "no_symbols",
            "error",
        ],
    )],
    area: Area::TargetAndExporter,
    answers: None,
    present: Presence::Always,
};

/// `vitals_profiler_samples_total`, written by `src/profile/status.rs`.
pub static PROFILER_SAMPLES: MetricDef = MetricDef {
    name: "vitals.profiler.samples",
    unit: "{sample}",
    kind: MetricKind::Counter,
    description: "CPU samples the profiler has taken of the target",
    labels: &[],
    area: Area::TargetAndExporter,
    answers: None,
    present: Presence::Always,
};

/// `vitals_profiler_ring_bytes`, written by `src/profile/continuous.rs`.
pub static PROFILER_RING: MetricDef = MetricDef {
    name: "vitals.profiler.ring",
    unit: "By",
    kind: MetricKind::Gauge,
    description: "Bytes the continuous profiler's ring of recent CPU samples holds (bounded by \
                 --profile-ring-bytes)",
    labels: &[],
    area: Area::TargetAndExporter,
    answers: None,
    present: Presence::Continuous,
};

/// `vitals_profiler_ring_span_seconds`, written by `src/profile/continuous.rs`.
pub static PROFILER_RING_SPAN: MetricDef = MetricDef {
    name: "vitals.profiler.ring.span",
    unit: "s",
    kind: MetricKind::Gauge,
    description: "Seconds of recent CPU samples the continuous profiler's ring covers",
    labels: &[],
    area: Area::TargetAndExporter,
    answers: None,
    present: Presence::Continuous,
};

/// `vitals_profiler_captures_total`, written by `src/profile/continuous.rs`.
pub static PROFILER_CAPTURES: MetricDef = MetricDef {
    name: "vitals.profiler.captures",
    unit: "{capture}",
    kind: MetricKind::Counter,
    description: "CPU profiles kept because an alert condition began to hold, by the alert",
    labels: &[Label::any("alert")],
    area: Area::TargetAndExporter,
    answers: None,
    present: Presence::Continuous,
};

/// `vitals_profiler_captures_kept_bytes`, written by `src/profile/continuous.rs`.
pub static PROFILER_CAPTURES_KEPT: MetricDef = MetricDef {
    name: "vitals.profiler.captures.kept",
    unit: "By",
    kind: MetricKind::Gauge,
    description: "Bytes of the kept captures (gzipped pprof)",
    labels: &[],
    area: Area::TargetAndExporter,
    answers: None,
    present: Presence::Continuous,
};

/// `vitals_exporter_sample_duration_seconds`, written by `src/probe/own_health.rs`.
pub static EXPORTER_SAMPLE_DURATION: MetricDef = MetricDef {
    name: "vitals.exporter.sample.duration",
    unit: "s",
    kind: MetricKind::Gauge,
    description: "Duration of the latest read of each source",
    labels: &[Label::one_of("source", READ_SOURCES)],
    area: Area::TargetAndExporter,
    answers: None,
    present: Presence::Always,
};

/// `vitals_exporter_otlp_items_total`, written by `src/receiver/mod.rs`.
pub static EXPORTER_OTLP_ITEMS: MetricDef = MetricDef {
    name: "vitals.exporter.otlp.items",
    unit: "{item}",
    kind: MetricKind::Counter,
    description: "OTLP items (spans, data points, log records) received",
    labels: &[
        Label::one_of("signal", &["traces", "metrics", "logs"]),
        Label::one_of("outcome", &["accepted", "rejected"]),
    ],
    area: Area::TargetAndExporter,
    answers: None,
    present: Presence::Always,
};

/// `vitals_exporter_otlp_refused_requests_total`, written by `src/receiver/mod.rs`.
pub static EXPORTER_OTLP_REFUSED_REQUESTS: MetricDef = MetricDef {
    name: "vitals.exporter.otlp.refused.requests",
    unit: "{request}",
    kind: MetricKind::Counter,
    description: "OTLP requests refused whole, by reason",
    labels: &[
        Label::one_of("signal", &["traces", "metrics", "logs"]),
        Label::one_of(
            "reason",
            &[
                "too_large",
                "undecodable",
                "overloaded",
                "unsupported_media_type",
                "internal_error",
            ],
        ),
    ],
    area: Area::TargetAndExporter,
    answers: None,
    present: Presence::Always,
};

/// `vitals_exporter_forward_items_total`, written by `src/export/otlp/forward.rs`.
pub static EXPORTER_FORWARD_ITEMS: MetricDef = MetricDef {
    name: "vitals.exporter.forward.items",
    unit: "{item}",
    kind: MetricKind::Counter,
    description: "OTLP items (spans, data points, log records) forwarded upstream, by outcome",
    labels: &[
        Label::one_of("signal", &["traces", "metrics", "logs"]),
        Label::one_of("outcome", FORWARD_OUTCOMES),
    ],
    area: Area::TargetAndExporter,
    answers: None,
    present: Presence::Forward,
};

/// `vitals_exporter_forward_requests_total`, written by `src/export/otlp/forward.rs`.
pub static EXPORTER_FORWARD_REQUESTS: MetricDef = MetricDef {
    name: "vitals.exporter.forward.requests",
    unit: "{request}",
    kind: MetricKind::Counter,
    description: "OTLP requests forwarded upstream, by outcome",
    labels: &[
        Label::one_of("signal", &["traces", "metrics", "logs"]),
        Label::one_of("outcome", FORWARD_OUTCOMES),
    ],
    area: Area::TargetAndExporter,
    answers: None,
    present: Presence::Forward,
};

/// `vitals_exporter_forward_retries_total`, written by `src/export/otlp/forward.rs`.
pub static EXPORTER_FORWARD_RETRIES: MetricDef = MetricDef {
    name: "vitals.exporter.forward.retries",
    unit: "{retry}",
    kind: MetricKind::Counter,
    description: "Forwarded requests sent again after a retryable upstream answer",
    labels: &[Label::one_of("signal", &["traces", "metrics", "logs"])],
    area: Area::TargetAndExporter,
    answers: None,
    present: Presence::Forward,
};

/// `vitals_exporter_forward_upstream_duration_seconds`, written by `src/export/otlp/forward.rs`.
pub static EXPORTER_FORWARD_UPSTREAM_DURATION: MetricDef = MetricDef {
    name: "vitals.exporter.forward.upstream.duration",
    unit: "s",
    kind: MetricKind::Histogram,
    description: "Time the upstream took to answer one forwarded request",
    labels: &[Label::one_of("signal", &["traces", "metrics", "logs"])],
    area: Area::TargetAndExporter,
    answers: None,
    present: Presence::Forward,
};

/// `vitals_exporter_forward_queue_bytes`, written by `src/export/otlp/forward.rs`.
pub static EXPORTER_FORWARD_QUEUE: MetricDef = MetricDef {
    name: "vitals.exporter.forward.queue",
    unit: "By",
    kind: MetricKind::Gauge,
    description: "Bytes of forwarded requests queued or in flight",
    labels: &[],
    area: Area::TargetAndExporter,
    answers: None,
    present: Presence::Forward,
};

/// `vitals_exporter_forward_queue_limit_bytes`, written by `src/export/otlp/forward.rs`.
pub static EXPORTER_FORWARD_QUEUE_LIMIT: MetricDef = MetricDef {
    name: "vitals.exporter.forward.queue.limit",
    unit: "By",
    kind: MetricKind::Gauge,
    description: "Bytes the forwarding queue may hold (--forward-queue-bytes)",
    labels: &[],
    area: Area::TargetAndExporter,
    answers: None,
    present: Presence::Forward,
};

/// `vitals_exporter_push_requests_total`, written by `src/export/otlp/push.rs`.
pub static EXPORTER_PUSH_REQUESTS: MetricDef = MetricDef {
    name: "vitals.exporter.push.requests",
    unit: "{request}",
    kind: MetricKind::Counter,
    description: "OTLP push requests sent by vitals, per attempt and outcome",
    labels: &[Label::one_of("outcome", &["sent", "rejected", "failed"])],
    area: Area::TargetAndExporter,
    answers: None,
    present: Presence::Push,
};

/// `vitals_exporter_push_points_total`, written by `src/export/otlp/push.rs`.
pub static EXPORTER_PUSH_POINTS: MetricDef = MetricDef {
    name: "vitals.exporter.push.points",
    unit: "{point}",
    kind: MetricKind::Counter,
    description: "Data points vitals pushed over OTLP, by what became of them",
    labels: &[Label::one_of("outcome", &["sent", "rejected", "dropped"])],
    area: Area::TargetAndExporter,
    answers: None,
    present: Presence::Push,
};

/// `vitals_exporter_series_overflow_total`, written by `src/receiver/mod.rs`.
pub static EXPORTER_SERIES_OVERFLOW: MetricDef = MetricDef {
    name: "vitals.exporter.series.overflow",
    unit: "{observation}",
    kind: MetricKind::Counter,
    description: "Observations sent to an overflow series because a cardinality limit was reached",
    labels: &[],
    area: Area::TargetAndExporter,
    answers: None,
    present: Presence::Always,
};

/// `vitals_exporter_series`, written by `src/export/http/mod.rs`.
pub static EXPORTER_SERIES: MetricDef = MetricDef {
    name: "vitals.exporter.series",
    unit: "{series}",
    kind: MetricKind::Gauge,
    description: "Series in this exposition",
    labels: &[],
    area: Area::TargetAndExporter,
    answers: None,
    present: Presence::Always,
};

/// `vitals_exporter_hsperfdata_status`, written by `src/signal/pause.rs`.
pub static EXPORTER_HSPERFDATA_STATUS: MetricDef = MetricDef {
    name: "vitals.exporter.hsperfdata.status",
    unit: "",
    kind: MetricKind::Gauge,
    description: "1 with the reason the target JVM's hsperfdata is or is not read: reading, absent, \
                     disabled (-XX:-UsePerfData or -XX:+PerfDisableSharedMem), permission_denied, stale \
                     (another user's or a dead JVM's file under the target's pid), unreadable",
    labels: &[Label::one_of("reason", &["reading", "absent", "disabled", "permission_denied", "stale", "unreadable"])],
    area: Area::TargetAndExporter,
    answers: None,
    present: Presence::Jvm,
};

/// `process_cpu_time_seconds_total`, written by `src/signal/target.rs`.
pub static PROCESS_CPU_TIME: MetricDef = MetricDef {
    name: "process.cpu.time",
    unit: "s",
    kind: MetricKind::Counter,
    description: "Total CPU seconds of the target by mode",
    labels: &[Label::one_of("cpu.mode", &["user", "system"])],
    area: Area::Process,
    answers: None,
    present: Presence::Target,
};

/// `process_memory_usage_bytes`, written by `src/signal/target.rs`.
pub static PROCESS_MEMORY_USAGE: MetricDef = MetricDef {
    name: "process.memory.usage",
    unit: "By",
    kind: MetricKind::Gauge,
    description: "Resident set size of the target",
    labels: &[],
    area: Area::Process,
    answers: Some(Question::Leaking),
    present: Presence::Target,
};

/// `process_memory_virtual_bytes`, written by `src/signal/target.rs`.
pub static PROCESS_MEMORY_VIRTUAL: MetricDef = MetricDef {
    name: "process.memory.virtual",
    unit: "By",
    kind: MetricKind::Gauge,
    description: "Virtual memory size of the target",
    labels: &[],
    area: Area::Process,
    answers: Some(Question::Leaking),
    present: Presence::Target,
};

/// `process_disk_io_bytes_total`, written by `src/signal/target.rs`.
pub static PROCESS_DISK_IO: MetricDef = MetricDef {
    name: "process.disk.io",
    unit: "By",
    kind: MetricKind::Counter,
    description: "Bytes the target read from and wrote to storage",
    labels: &[Label::one_of("disk.io.direction", &["read", "write"])],
    area: Area::Process,
    answers: None,
    present: Presence::Target,
};

/// `process_threads`, written by `src/signal/target.rs`.
pub static PROCESS_THREADS: MetricDef = MetricDef {
    name: "process.threads",
    unit: "{threads}",
    kind: MetricKind::Gauge,
    description: "Threads of the target",
    labels: &[],
    area: Area::Process,
    answers: Some(Question::Saturated),
    present: Presence::Target,
};

/// `process_open_file_descriptors`, written by `src/signal/target.rs`.
pub static PROCESS_OPEN_FILE_DESCRIPTORS: MetricDef = MetricDef {
    name: "process.open_file_descriptors",
    unit: "{count}",
    kind: MetricKind::Gauge,
    description: "Open file descriptors of the target",
    labels: &[],
    area: Area::Process,
    answers: Some(Question::Saturated),
    present: Presence::Target,
};

/// `process_context_switches_total`, written by `src/signal/target.rs`.
pub static PROCESS_CONTEXT_SWITCHES: MetricDef = MetricDef {
    name: "process.context_switches",
    unit: "{context_switch}",
    kind: MetricKind::Counter,
    description: "Context switches of the target",
    labels: &[Label::one_of(
        "process.context_switch.type",
        &["voluntary", "involuntary"],
    )],
    area: Area::Process,
    answers: None,
    present: Presence::Target,
};

/// `process_paging_faults_total`, written by `src/signal/target.rs`.
pub static PROCESS_PAGING_FAULTS: MetricDef = MetricDef {
    name: "process.paging.faults",
    unit: "{fault}",
    kind: MetricKind::Counter,
    description: "Page faults of the target",
    labels: &[Label::one_of(
        "system.paging.fault.type",
        &["major", "minor"],
    )],
    area: Area::Process,
    answers: None,
    present: Presence::Target,
};

/// `process_uptime_seconds`, written by `src/signal/target.rs`.
pub static PROCESS_UPTIME: MetricDef = MetricDef {
    name: "process.uptime",
    unit: "s",
    kind: MetricKind::Gauge,
    description: "Seconds since the target started",
    labels: &[],
    area: Area::Process,
    answers: None,
    present: Presence::Target,
};

/// `vitals_process_max_fds`, written by `src/signal/target.rs`.
pub static PROCESS_MAX_FDS: MetricDef = MetricDef {
    name: "vitals.process.max_fds",
    unit: "{fd}",
    kind: MetricKind::Gauge,
    description: "Soft limit on the target's open file descriptors",
    labels: &[],
    area: Area::Process,
    answers: Some(Question::Saturated),
    present: Presence::Target,
};

/// `vitals_process_start_time_seconds`, written by `src/signal/target.rs`.
pub static PROCESS_START_TIME: MetricDef = MetricDef {
    name: "vitals.process.start_time",
    unit: "s",
    kind: MetricKind::Gauge,
    description: "Start time of the target, Unix seconds",
    labels: &[],
    area: Area::Process,
    answers: None,
    present: Presence::Target,
};

/// `vitals_process_scheduler_wait_seconds_total`, written by `src/signal/target.rs`.
pub static PROCESS_SCHEDULER_WAIT: MetricDef = MetricDef {
    name: "vitals.process.scheduler.wait",
    unit: "s",
    kind: MetricKind::Counter,
    description: "Time the target's threads waited on a run queue (schedstat)",
    labels: &[],
    area: Area::Process,
    answers: Some(Question::Pausing),
    present: Presence::Target,
};

/// `vitals_process_swap_bytes`, written by `src/signal/target.rs`.
pub static PROCESS_SWAP: MetricDef = MetricDef {
    name: "vitals.process.swap",
    unit: "By",
    kind: MetricKind::Gauge,
    description: "Target memory swapped out (VmSwap)",
    labels: &[],
    area: Area::Process,
    answers: Some(Question::Leaking),
    present: Presence::Target,
};

/// `vitals_process_proportional_memory_bytes`, written by `src/signal/target.rs`.
pub static PROCESS_PROPORTIONAL_MEMORY: MetricDef = MetricDef {
    name: "vitals.process.proportional_memory",
    unit: "By",
    kind: MetricKind::Gauge,
    description: "Proportional set size of the target (smaps_rollup, opt-in)",
    labels: &[],
    area: Area::Process,
    answers: Some(Question::Leaking),
    present: Presence::Pss,
};

/// `vitals_process_member_memory_usage_bytes`, written by `src/signal/target.rs`.
pub static PROCESS_MEMBER_MEMORY_USAGE: MetricDef = MetricDef {
    name: "vitals.process.member.memory.usage",
    unit: "By",
    kind: MetricKind::Gauge,
    description:
        "Resident set of the tree's largest and busiest processes (at most 10 named at a time)",
    labels: &[Label::any("pid"), Label::any("comm")],
    area: Area::Process,
    answers: Some(Question::Leaking),
    present: Presence::Target,
};

/// `vitals_process_member_cpu_cores`, written by `src/signal/target.rs`.
pub static PROCESS_MEMBER_CPU_CORES: MetricDef = MetricDef {
    name: "vitals.process.member.cpu.cores",
    unit: "{cpu}",
    kind: MetricKind::Gauge,
    description: "CPU of the tree's largest and busiest processes over the last interval, in cores",
    labels: &[Label::any("pid"), Label::any("comm")],
    area: Area::Process,
    answers: None,
    present: Presence::Target,
};

/// `vitals_cgroup_memory_usage_bytes`, written by `src/signal/target.rs`.
pub static CGROUP_MEMORY_USAGE: MetricDef = MetricDef {
    name: "vitals.cgroup.memory.usage",
    unit: "By",
    kind: MetricKind::Gauge,
    description: "Memory charged to the target's cgroup",
    labels: &[],
    area: Area::Container,
    answers: Some(Question::Leaking),
    present: Presence::Target,
};

/// `vitals_cgroup_memory_limit_bytes`, written by `src/signal/target.rs`.
pub static CGROUP_MEMORY_LIMIT: MetricDef = MetricDef {
    name: "vitals.cgroup.memory.limit",
    unit: "By",
    kind: MetricKind::Gauge,
    description: "Memory limit of the target's cgroup (absent when unlimited)",
    labels: &[],
    area: Area::Container,
    answers: Some(Question::Leaking),
    present: Presence::Limit,
};

/// `vitals_cgroup_memory_oom_kills_total`, written by `src/signal/target.rs`.
pub static CGROUP_MEMORY_OOM_KILLS: MetricDef = MetricDef {
    name: "vitals.cgroup.memory.oom_kills",
    unit: "{kill}",
    kind: MetricKind::Counter,
    description: "OOM kills of the target's cgroup, counted across the target's restarts (for a target in another cgroup namespace, only kills read before its cgroup is removed)",
    labels: &[],
    area: Area::Container,
    answers: Some(Question::Leaking),
    present: Presence::Target,
};

/// `vitals_cgroup_cpu_limit_cores`, written by `src/signal/target.rs`.
pub static CGROUP_CPU_LIMIT_CORES: MetricDef = MetricDef {
    name: "vitals.cgroup.cpu.limit_cores",
    unit: "{cpu}",
    kind: MetricKind::Gauge,
    description: "CPU quota of the target's cgroup in cores (absent when unlimited)",
    labels: &[],
    area: Area::Container,
    answers: Some(Question::Saturated),
    present: Presence::Limit,
};

/// `vitals_cgroup_cpu_throttled_seconds_total`, written by `src/signal/target.rs`.
pub static CGROUP_CPU_THROTTLED: MetricDef = MetricDef {
    name: "vitals.cgroup.cpu.throttled",
    unit: "s",
    kind: MetricKind::Counter,
    description: "Time the target's cgroup was throttled by its CPU quota",
    labels: &[],
    area: Area::Container,
    answers: Some(Question::Pausing),
    present: Presence::Target,
};

/// `vitals_cgroup_cpu_throttled_periods_total`, written by `src/signal/target.rs`.
pub static CGROUP_CPU_THROTTLED_PERIODS: MetricDef = MetricDef {
    name: "vitals.cgroup.cpu.throttled_periods",
    unit: "{period}",
    kind: MetricKind::Counter,
    description: "Enforcement periods in which the cgroup was throttled",
    labels: &[],
    area: Area::Container,
    answers: Some(Question::Pausing),
    present: Presence::Target,
};

/// `vitals_cgroup_cpu_periods_total`, written by `src/signal/target.rs`.
pub static CGROUP_CPU_PERIODS: MetricDef = MetricDef {
    name: "vitals.cgroup.cpu.periods",
    unit: "{period}",
    kind: MetricKind::Counter,
    description: "Enforcement periods of the cgroup's CPU quota",
    labels: &[],
    area: Area::Container,
    answers: Some(Question::Saturated),
    present: Presence::Target,
};

/// `vitals_cgroup_pids`, written by `src/signal/target.rs`.
pub static CGROUP_PIDS: MetricDef = MetricDef {
    name: "vitals.cgroup.pids",
    unit: "{pid}",
    kind: MetricKind::Gauge,
    description: "Tasks in the target's cgroup",
    labels: &[],
    area: Area::Container,
    answers: Some(Question::Saturated),
    present: Presence::Limit,
};

/// `vitals_cgroup_pids_limit`, written by `src/signal/target.rs`.
pub static CGROUP_PIDS_LIMIT: MetricDef = MetricDef {
    name: "vitals.cgroup.pids.limit",
    unit: "{pid}",
    kind: MetricKind::Gauge,
    description: "Task limit of the target's cgroup (absent when unlimited)",
    labels: &[],
    area: Area::Container,
    answers: Some(Question::Saturated),
    present: Presence::Limit,
};

/// `vitals_pressure_stalled_seconds_total`, written by `src/signal/target.rs`.
pub static PRESSURE_STALLED: MetricDef = MetricDef {
    name: "vitals.pressure.stalled",
    unit: "s",
    kind: MetricKind::Counter,
    description: "Time tasks stalled waiting for a resource (PSI)",
    labels: &[
        Label::one_of("resource", &["cpu", "memory", "io"]),
        Label::one_of("kind", &["some", "full"]),
        Label::one_of("scope", &["cgroup", "system"]),
    ],
    area: Area::Container,
    answers: Some(Question::Pausing),
    present: Presence::Target,
};

/// `vitals_request_duration_seconds`, written by `src/signal/latency.rs`.
pub static REQUEST_DURATION: MetricDef = MetricDef {
    name: "vitals.request.duration",
    unit: "s",
    kind: MetricKind::Histogram,
    description:
        "Duration of requests (SERVER and CONSUMER spans) by service, operation, kind and outcome",
    labels: &[
        Label::any("service"),
        Label::any("operation"),
        Label::any("kind"),
        Label::one_of("outcome", OK_OR_ERROR),
    ],
    area: Area::Latency,
    answers: Some(Question::Slow),
    present: Presence::Otlp,
};

/// `vitals_log_records_total`, written by `src/store/logs.rs`.
pub static LOG_RECORDS: MetricDef = MetricDef {
    name: "vitals.log.records",
    unit: "{record}",
    kind: MetricKind::Counter,
    description: "Log records received over OTLP by service and severity",
    labels: &[Label::any("service"), Label::any("severity")],
    area: Area::Latency,
    answers: Some(Question::Slow),
    present: Presence::Otlp,
};

/// `vitals_db_query_duration_seconds`, written by `src/signal/query.rs`.
pub static DB_QUERY_DURATION: MetricDef = MetricDef {
    name: "vitals.db.query.duration",
    unit: "s",
    kind: MetricKind::Histogram,
    description: "Duration of database queries (CLIENT spans with a database system) by service, db system, query template and outcome",
    labels: &[Label::any("service"), Label::any("db_system"), Label::any("query"), Label::one_of("outcome", OK_OR_ERROR)],
    area: Area::Queries,
    answers: Some(Question::Slow),
    present: Presence::Otlp,
};

/// `vitals_db_n_plus_one_total`, written by `src/signal/n_plus_one.rs`.
pub static DB_N_PLUS_ONE: MetricDef = MetricDef {
    name: "vitals.db.n_plus_one",
    unit: "{run}",
    kind: MetricKind::Counter,
    description: "N+1 query runs (one query repeated under one parent span) by service, request operation and query",
    labels: &[Label::any("service"), Label::any("operation"), Label::any("query")],
    area: Area::Queries,
    answers: Some(Question::Slow),
    present: Presence::Otlp,
};

/// `vitals_db_n_plus_one_dropped_total`, written by `src/signal/n_plus_one.rs`.
pub static DB_N_PLUS_ONE_DROPPED: MetricDef = MetricDef {
    name: "vitals.db.n_plus_one.dropped",
    unit: "{span}",
    kind: MetricKind::Counter,
    description: "Spans not held for N+1 detection because a bound was reached, by reason",
    labels: &[Label::one_of("reason", &["trace_limit", "call_limit"])],
    area: Area::Queries,
    answers: Some(Question::Slow),
    present: Presence::Always,
};

/// `vitals_gc_pause_seconds_total`, written by `src/signal/pause.rs`.
pub static GC_PAUSE: MetricDef = MetricDef {
    name: "vitals.gc.pause",
    unit: "s",
    kind: MetricKind::Counter,
    description: "Time the target stood still in GC pauses",
    labels: &[
        Label::any("runtime"),
        Label::any("collector"),
        Label::one_of("source", PAUSE_SOURCES),
    ],
    area: Area::Pauses,
    answers: Some(Question::Pausing),
    present: Presence::OtlpOrJvm,
};

/// `vitals_gc_pauses_total`, written by `src/signal/pause.rs`.
pub static GC_PAUSES: MetricDef = MetricDef {
    name: "vitals.gc.pauses",
    unit: "{pause}",
    kind: MetricKind::Counter,
    description: "GC pauses of the target",
    labels: &[
        Label::any("runtime"),
        Label::any("collector"),
        Label::one_of("source", PAUSE_SOURCES),
    ],
    area: Area::Pauses,
    answers: Some(Question::Pausing),
    present: Presence::OtlpOrJvm,
};

/// `vitals_gc_pause_max_seconds`, written by `src/signal/pause.rs`.
pub static GC_PAUSE_MAX: MetricDef = MetricDef {
    name: "vitals.gc.pause.max",
    unit: "s",
    kind: MetricKind::Gauge,
    description:
        "Longest GC pause in the last minute (an upper bound when only buckets or totals are known)",
    labels: &[
        Label::any("runtime"),
        Label::one_of("source", PAUSE_SOURCES),
    ],
    area: Area::Pauses,
    answers: Some(Question::Pausing),
    present: Presence::OtlpOrJvm,
};

/// `vitals_safepoint_seconds_total`, written by `src/signal/pause.rs`.
pub static SAFEPOINT: MetricDef = MetricDef {
    name: "vitals.safepoint",
    unit: "s",
    kind: MetricKind::Counter,
    description: "Time JVM threads spent at safepoints",
    labels: &[],
    area: Area::Pauses,
    answers: Some(Question::Pausing),
    present: Presence::Jvm,
};

/// `vitals_safepoints_total`, written by `src/signal/pause.rs`.
pub static SAFEPOINTS: MetricDef = MetricDef {
    name: "vitals.safepoints",
    unit: "{safepoint}",
    kind: MetricKind::Counter,
    description: "JVM safepoints",
    labels: &[],
    area: Area::Pauses,
    answers: Some(Question::Pausing),
    present: Presence::Jvm,
};

/// `vitals_event_loop_delay_seconds`, written by `src/signal/pause.rs`.
pub static EVENT_LOOP_DELAY: MetricDef = MetricDef {
    name: "vitals.event_loop.delay",
    unit: "s",
    kind: MetricKind::Gauge,
    description: "How long ready work waited to run over the app's last export interval, by runtime and \
                 statistic: Node.js event-loop delay as Node measures it (each sample includes the sampling \
                 resolution, 10 ms by default, so an idle loop reads about 10 ms); Go goroutine scheduling \
                 latency as bucket upper bounds of go.schedule.duration's observations in that interval",
    labels: &[Label::any("runtime"), Label::one_of("statistic", &["min", "p50", "p90", "p99", "max"])],
    area: Area::Pauses,
    answers: Some(Question::Pausing),
    present: Presence::Otlp,
};

/// `vitals_memory_growth_bytes_per_second`, written by `src/signal/memory.rs`.
pub static MEMORY_GROWTH: MetricDef = MetricDef {
    name: "vitals.memory.growth",
    unit: "By/s",
    kind: MetricKind::Gauge,
    description: "Robust memory growth slope per signal and window (absent until the window holds enough data)",
    labels: &[Label::one_of("signal", MEMORY_SIGNALS), Label::any("window")],
    area: Area::MemoryGrowth,
    answers: Some(Question::Leaking),
    present: Presence::Window,
};

/// `vitals_memory_time_to_limit_seconds`, written by `src/signal/memory.rs`.
pub static MEMORY_TIME_TO_LIMIT: MetricDef = MetricDef {
    name: "vitals.memory.time_to_limit",
    unit: "s",
    kind: MetricKind::Gauge,
    description: "Time until the signal reaches its limit at the longest ready window's growth",
    labels: &[Label::one_of("signal", MEMORY_SIGNALS)],
    area: Area::MemoryGrowth,
    answers: Some(Question::Leaking),
    present: Presence::Window,
};

/// `vitals_memory_leak_suspected`, written by `src/signal/memory.rs`.
pub static MEMORY_LEAK_SUSPECTED: MetricDef = MetricDef {
    name: "vitals.memory.leak.suspected",
    unit: "",
    kind: MetricKind::Gauge,
    description: "1 while growth is sustained above the leak threshold in every ready window",
    labels: &[Label::one_of("signal", MEMORY_SIGNALS)],
    area: Area::MemoryGrowth,
    answers: Some(Question::Leaking),
    present: Presence::Target,
};

/// `vitals_memory_growth_status`, written by `src/signal/memory.rs`.
pub static MEMORY_GROWTH_STATUS: MetricDef = MetricDef {
    name: "vitals.memory.growth.status",
    unit: "",
    kind: MetricKind::Gauge,
    description:
        "1 for the state of each growth window: ready, filling, few_readings (the source measures \
             more rarely than the window is long) or no_reading (no value yet); 0 for the others",
    labels: &[
        Label::one_of("signal", MEMORY_SIGNALS),
        Label::any("window"),
        Label::one_of(
            "status",
            &["ready", "filling", "few_readings", "no_reading"],
        ),
    ],
    area: Area::MemoryGrowth,
    answers: Some(Question::Leaking),
    present: Presence::Always,
};

/// `vitals_memory_heap_bytes`, written by `src/signal/memory.rs`.
pub static MEMORY_HEAP: MetricDef = MetricDef {
    name: "vitals.memory.heap",
    unit: "By",
    kind: MetricKind::Gauge,
    description:
        "Heap in use after GC the heap growth is computed on: the runtime's OTLP metric, else the \
             JVM's live set after its last old collection (absent until one is seen)",
    labels: &[Label::any("runtime")],
    area: Area::MemoryGrowth,
    answers: Some(Question::Leaking),
    present: Presence::Heap,
};

/// `vitals_memory_heap_limit_bytes`, written by `src/signal/memory.rs`.
pub static MEMORY_HEAP_LIMIT: MetricDef = MetricDef {
    name: "vitals.memory.heap.limit",
    unit: "By",
    kind: MetricKind::Gauge,
    description:
        "The limit of the heap in vitals_memory_heap_bytes (JVM maximum heap, V8 heap limit)",
    labels: &[Label::any("runtime")],
    area: Area::MemoryGrowth,
    answers: Some(Question::Leaking),
    present: Presence::Heap,
};

/// `vitals_pool_used`, written by `src/signal/pool.rs`.
pub static POOL_USED: MetricDef = MetricDef {
    name: "vitals.pool.used",
    unit: "{slot}",
    kind: MetricKind::Gauge,
    description: "Slots in use per pool",
    labels: &[Label::any("pool"), Label::one_of("kind", POOL_KINDS)],
    area: Area::Pools,
    answers: Some(Question::Saturated),
    present: Presence::Target,
};

/// `vitals_pool_max`, written by `src/signal/pool.rs`.
pub static POOL_MAX: MetricDef = MetricDef {
    name: "vitals.pool.max",
    unit: "{slot}",
    kind: MetricKind::Gauge,
    description: "Capacity per pool (accept_queue: the socket backlog)",
    labels: &[Label::any("pool"), Label::one_of("kind", POOL_KINDS)],
    area: Area::Pools,
    answers: Some(Question::Saturated),
    present: Presence::Target,
};

/// `vitals_pool_utilization_ratio`, written by `src/signal/pool.rs`.
pub static POOL_UTILIZATION: MetricDef = MetricDef {
    name: "vitals.pool.utilization",
    unit: "1",
    kind: MetricKind::Gauge,
    description: "Used / max per pool (a DB pool that reports no max: used / open connections)",
    labels: &[Label::any("pool"), Label::one_of("kind", POOL_KINDS)],
    area: Area::Pools,
    answers: Some(Question::Saturated),
    present: Presence::Target,
};

/// `vitals_pool_pending`, written by `src/signal/pool.rs`.
pub static POOL_PENDING: MetricDef = MetricDef {
    name: "vitals.pool.pending",
    unit: "{request}",
    kind: MetricKind::Gauge,
    description: "Requests waiting for a slot per pool",
    labels: &[Label::any("pool"), Label::one_of("kind", POOL_KINDS)],
    area: Area::Pools,
    answers: Some(Question::Saturated),
    present: Presence::Otlp,
};

/// `vitals_pool_accept_queue_backlog_source`, written by `src/signal/pool.rs`.
pub static POOL_ACCEPT_QUEUE_BACKLOG_SOURCE: MetricDef = MetricDef {
    name: "vitals.pool.accept_queue.backlog_source",
    unit: "",
    kind: MetricKind::Gauge,
    description: "Where accept_queue capacity came from (somaxconn: an upper bound)",
    labels: &[Label::one_of("source", &["netlink", "somaxconn"])],
    area: Area::Pools,
    answers: Some(Question::Saturated),
    present: Presence::Sockets,
};

/// `vitals_recommendation_history_seconds`, written by `src/signal/hints.rs`.
pub static RECOMMENDATION_HISTORY: MetricDef = MetricDef {
    name: "vitals.recommendation.history",
    unit: "s",
    kind: MetricKind::Gauge,
    description: "Seconds of history a tuning hint rests on",
    labels: &[
        Label::one_of("resource", HINT_RESOURCES),
        Label::any("pool"),
    ],
    area: Area::Hints,
    answers: None,
    present: Presence::Hints,
};

/// `vitals_recommendation_cores`, written by `src/signal/hints.rs`.
pub static RECOMMENDATION_CORES: MetricDef = MetricDef {
    name: "vitals.recommendation.cores",
    unit: "{cpu}",
    kind: MetricKind::Gauge,
    description: "Recommended CPU, in cores",
    labels: &[Label::one_of("resource", HINT_RESOURCES)],
    area: Area::Hints,
    answers: None,
    present: Presence::Hints,
};

/// `vitals_recommendation_bytes`, written by `src/signal/hints.rs`.
pub static RECOMMENDATION_BYTES: MetricDef = MetricDef {
    name: "vitals.recommendation.bytes",
    unit: "By",
    kind: MetricKind::Gauge,
    description: "Recommended memory size, in bytes",
    labels: &[Label::one_of("resource", HINT_RESOURCES)],
    area: Area::Hints,
    answers: None,
    present: Presence::Hints,
};

/// `vitals_recommendation_throttled_ratio`, written by `src/signal/hints.rs`.
pub static RECOMMENDATION_THROTTLED: MetricDef = MetricDef {
    name: "vitals.recommendation.throttled",
    unit: "1",
    kind: MetricKind::Gauge,
    description: "Share of CFS periods throttled by the CPU limit over the history",
    labels: &[Label::one_of("resource", HINT_RESOURCES)],
    area: Area::Hints,
    answers: Some(Question::Pausing),
    present: Presence::Hints,
};

/// `vitals_recommendation_connections`, written by `src/signal/hints.rs`.
pub static RECOMMENDATION_CONNECTIONS: MetricDef = MetricDef {
    name: "vitals.recommendation.connections",
    unit: "{connection}",
    kind: MetricKind::Gauge,
    description: "Recommended DB connection pool size",
    labels: &[
        Label::one_of("resource", HINT_RESOURCES),
        Label::any("pool"),
    ],
    area: Area::Hints,
    answers: None,
    present: Presence::Hints,
};

/// `vitals_recommendation_files`, written by `src/signal/hints.rs`.
pub static RECOMMENDATION_FILES: MetricDef = MetricDef {
    name: "vitals.recommendation.files",
    unit: "{file}",
    kind: MetricKind::Gauge,
    description: "Recommended open-file limit",
    labels: &[Label::one_of("resource", HINT_RESOURCES)],
    area: Area::Hints,
    answers: None,
    present: Presence::Hints,
};

/// The value of label `name` of a point.
pub fn label<'a>(s: &'a Point, name: &str) -> Option<&'a str> {
    s.attributes
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A point's number, for sums and gauges.
pub fn scalar(s: &Point) -> Option<f64> {
    match s.value {
        Value::Sum(v) | Value::Gauge(v) | Value::SumWithExemplar(v, _) => Some(v),
        _ => None,
    }
}

/// True when a gather for readers that declared `lists` (see [`Families::declared`]) must keep the family
/// named `name`.
pub fn gathers(lists: &[&[&MetricDef]], name: &str) -> bool {
    lists.iter().any(|l| l.iter().any(|d| d.name == name))
}

/// One instance of the main target, as [`Families::follow_instance`] holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetInstance {
    pid: String,
    start_bits: u64,
}

/// Read access to one gather's families by catalogue entry: what the live page and the hints read.
pub struct Families<'a> {
    by_name: crate::model::FastMap<&'a str, &'a Metric>,
    /// The entries a reader declared it reads ([`Families::declared`]); reading another is a bug.
    declared: Option<&'static [&'static MetricDef]>,
}

impl<'a> Families<'a> {
    /// The families of vitals' own in `families` (the app's are left out).
    pub fn new(families: &'a [Metric]) -> Self {
        // Sized once: collected through a filter, the map grew (and rehashed) four times for a
        // gather of vitals' own families.
        let mut by_name =
            crate::model::FastMap::with_capacity_and_hasher(families.len(), Default::default());
        by_name.extend(
            families
                .iter()
                .filter(|f| f.origin == Origin::Vitals)
                .map(|f| (&*f.name, f)),
        );
        Families {
            by_name,
            declared: None,
        }
    }

    /// As [`Families::new`], for a reader that reads only the entries in `declared`: a gather made for it
    /// may hold only those ([`gathers`]), so in debug builds (the tests) reading another panics.
    pub fn declared(families: &'a [Metric], declared: &'static [&'static MetricDef]) -> Self {
        Families {
            declared: Some(declared),
            ..Families::new(families)
        }
    }

    /// The points of `def`'s family.
    pub fn series(&self, def: &MetricDef) -> std::slice::Iter<'a, Point> {
        debug_assert!(
            self.declared
                .is_none_or(|d| d.iter().any(|e| e.name == def.name)),
            "{} is read but not declared by its reader: a gather made for it leaves it out",
            def.name
        );
        match self.by_name.get(def.name) {
            Some(f) => f.points.iter(),
            None => [].iter(),
        }
    }

    /// Sum of the matching series' values; `None` when no series matches.
    pub fn sum(&self, def: &MetricDef, labels: &[(&str, &str)]) -> Option<f64> {
        let mut out = None;
        for s in self.series(def) {
            if labels.iter().all(|(k, v)| label(s, k) == Some(v)) {
                if let Some(v) = scalar(s) {
                    *out.get_or_insert(0.0) += v;
                }
            }
        }
        out
    }

    /// Maximum over the matching series.
    pub fn max(&self, def: &MetricDef, labels: &[(&str, &str)]) -> Option<f64> {
        self.series(def)
            .filter(|s| labels.iter().all(|(k, v)| label(s, k) == Some(v)))
            .filter_map(scalar)
            .fold(None, |m, v| Some(m.map_or(v, |m: f64| m.max(v))))
    }

    /// Follows the main target's instance (its pid and start time) in `held`, the one the last gather
    /// showed: true when this gather shows another one (another process, whose counters start again),
    /// not for the first. A gather with no target attached leaves `held` as it is. Compared as read,
    /// with no text built (a `pid@start` string formatted per reading cost a float's formatting twice a
    /// reading).
    pub fn follow_instance(&self, held: &mut Option<TargetInstance>) -> bool {
        let Some(pid) = self
            .series(&TARGET_INFO)
            .next()
            .and_then(|s| label(s, "pid"))
        else {
            return false;
        };
        let start = self.sum(&PROCESS_START_TIME, &[]).unwrap_or(0.0).to_bits();
        match held {
            Some(h) if h.pid == pid && h.start_bits == start => false,
            _ => {
                let another = held.is_some();
                *held = Some(TargetInstance {
                    pid: pid.to_owned(),
                    start_bits: start,
                });
                another
            }
        }
    }

    /// Sum per value of `by`, then the largest sum (the rules' `max by (runtime) (sum by (source))`).
    pub fn max_of_sums(&self, def: &MetricDef, by: &str) -> Option<f64> {
        let mut sums: HashMap<&str, f64> = HashMap::new();
        for s in self.series(def) {
            if let Some(v) = scalar(s) {
                *sums.entry(label(s, by).unwrap_or("")).or_default() += v;
            }
        }
        sums.values()
            .copied()
            .fold(None, |m, v| Some(m.map_or(v, |m: f64| m.max(v))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Value;

    #[test]
    fn violations_name_what_disagrees() {
        let good = GC_PAUSE_MAX.metric().with(
            &[
                ("runtime", "jvm"),
                ("source", "hsperfdata"),
                ("target", "app"),
            ],
            Value::Gauge(0.1),
        );
        assert_eq!(
            violations(std::slice::from_ref(&good)),
            Vec::<String>::new()
        );
        let undeclared = GC_PAUSE_MAX
            .metric()
            .with(&[("collector", "G1")], Value::Gauge(0.1));
        let off_set = GC_PAUSE_MAX
            .metric()
            .with(&[("source", "jfr")], Value::Gauge(0.1));
        let mut renamed = GC_PAUSE_MAX.metric();
        renamed.name = "vitals.gc.pause.maximum".into();
        let mut other_unit = GC_PAUSE_MAX.metric();
        other_unit.unit = "ms".into();
        let app = Metric::new("vitals.anything", "app's", "", MetricKind::Gauge)
            .from_app()
            .with(&[("x", "y")], Value::Gauge(1.0));
        let got = violations(&[undeclared, off_set, renamed, other_unit, app]);
        assert_eq!(
            got,
            [
                "vitals.gc.pause.max: label collector is not declared",
                "vitals.gc.pause.max: source=\"jfr\" is not one of [\"otlp\", \"hsperfdata\"]",
                "vitals.gc.pause.maximum: no catalogue entry",
                "vitals.gc.pause.max: unit, kind or description differ from the entry",
            ]
        );
    }

    #[test]
    fn entries_are_found_by_name_and_labels_by_key() {
        assert_eq!(by_name("vitals.gc.pause.max"), Some(&GC_PAUSE_MAX));
        assert_eq!(by_name("vitals.gc.pause.maximum"), None);
        assert_eq!(
            PROCESS_CPU_TIME.label("cpu.mode").and_then(|l| l.values),
            Some(&["user", "system"][..])
        );
        assert!(GC_PAUSE_MAX.is(&GC_PAUSE_MAX.metric()));
        assert!(!GC_PAUSE_MAX.is(&GC_PAUSE_MAX.metric().from_app()));
    }
}
