//! What vitals knows about each language runtime, one row per runtime: the executable names that reveal
//! it, the `telemetry.sdk.language` values its OpenTelemetry SDK sends, and the runtime metrics (OpenTelemetry
//! name, unit, instrument) that carry its GC pauses, heap, thread pools and ready-work delay. Metrics that
//! belong to a library rather than a runtime (DB connection pools) have a table of their own here too, so
//! every metric vitals picks out of the app's OTLP stream is named in this one file. Adding a runtime is
//! adding a row (plus a probe only when it needs an agentless source, as the JVM's hsperfdata does).

/// A language runtime vitals recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Runtime {
    /// The Java virtual machine (HotSpot and others).
    Jvm,
    /// Node.js (V8).
    Node,
    /// .NET (CoreCLR).
    Dotnet,
    /// Go.
    Go,
    /// CPython.
    Python,
}

/// The `runtime` label value when the runtime is not known.
pub const UNKNOWN: &str = "unknown";

impl Runtime {
    /// Every runtime, in table order.
    pub const ALL: [Runtime; 5] = [
        Runtime::Jvm,
        Runtime::Node,
        Runtime::Dotnet,
        Runtime::Go,
        Runtime::Python,
    ];

    /// Its row of the table.
    pub fn profile(self) -> &'static Profile {
        &PROFILES[self as usize]
    }

    /// The value of the `runtime` label.
    pub fn label(self) -> &'static str {
        self.profile().label
    }

    /// The runtime an executable (or, when the executable link is unreadable, a comm) belongs to.
    pub fn from_executable(name: &str) -> Option<Runtime> {
        PROFILES
            .iter()
            .find(|p| {
                p.executables.contains(&name)
                    || p.executable_prefixes.iter().any(|x| name.starts_with(x))
            })
            .map(|p| p.runtime)
    }

    /// The runtime an OTLP resource's `telemetry.sdk.language` names.
    pub fn from_sdk_language(language: &str) -> Option<Runtime> {
        PROFILES
            .iter()
            .find(|p| p.sdk_languages.contains(&language))
            .map(|p| p.runtime)
    }
}

/// The `runtime` label value of a runtime that may be unknown.
pub fn label_of(runtime: Option<Runtime>) -> &'static str {
    runtime.map_or(UNKNOWN, Runtime::label)
}

/// The OTLP instrument shapes a row accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instrument {
    /// An explicit-bucket or exponential histogram.
    Histogram,
    /// A monotonic sum: a cumulative total.
    Counter,
    /// A gauge or a sum (up-down counters are how most runtimes report sizes): the latest value.
    Number,
}

/// A physical quantity, and the units an app may send it in (UCUM case-sensitive, as OpenTelemetry
/// writes them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantity {
    /// Time; base unit seconds (`s`), also accepted in `ms`, `us`, `ns`, `min`, `h`.
    Time,
    /// Information; base unit bytes (`By`), also `KiBy`, `MiBy`, `GiBy`, `kBy`, `MBy`, `GBy`.
    Bytes,
    /// A count: `1`, no unit, a curly-brace annotation such as `{connection}`, or the same annotation
    /// written without braces (`connections`, as SQLAlchemy's and some Java agent releases send it).
    Count,
}

/// Units of other quantities that a bare word could be mistaken for: a count is never sent in these.
const NOT_COUNTS: &[&str] = &[
    "s", "ms", "us", "ns", "min", "h", "d", "wk", "mo", "a", "By", "bit", "Hz", "m", "g", "K",
    "Cel", "W", "J", "V", "A",
];

/// Whether `unit` is a count by meaning: `1`, empty, any `{…}` annotation, or a bare lower-case word
/// (`connections`, `requests`, `threads`) that is not the UCUM symbol of another quantity. UCUM prefixed
/// units (`KiBy`, `MBy`, `kHz`) start with a prefix and end in a unit symbol, so they are refused too.
fn is_count_unit(unit: &str) -> bool {
    if unit.is_empty() || unit == "1" {
        return true;
    }
    if unit.starts_with('{') && unit.ends_with('}') {
        return true;
    }
    let word = unit.len() >= 3
        && unit
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b' ');
    word && !NOT_COUNTS.contains(&unit)
        && Quantity::Time.scale(unit).is_none()
        && Quantity::Bytes.scale(unit).is_none()
}

impl Quantity {
    /// The factor that turns a value sent in `unit` into the base unit, or None when `unit` does not
    /// measure this quantity (a `jvm.gc.duration` in `By` is not a pause time, and one with no unit could be
    /// in anything).
    pub fn scale(self, unit: &str) -> Option<f64> {
        match self {
            Quantity::Time => match unit {
                "s" => Some(1.0),
                "ms" => Some(1e-3),
                "us" | "µs" => Some(1e-6),
                "ns" => Some(1e-9),
                "min" => Some(60.0),
                "h" => Some(3600.0),
                _ => None,
            },
            Quantity::Bytes => match unit {
                "By" => Some(1.0),
                "KiBy" => Some(1024.0),
                "MiBy" => Some(1024.0 * 1024.0),
                "GiBy" => Some(1024.0 * 1024.0 * 1024.0),
                "kBy" => Some(1e3),
                "MBy" => Some(1e6),
                "GBy" => Some(1e9),
                _ => None,
            },
            Quantity::Count => is_count_unit(unit).then_some(1.0),
        }
    }
}

/// A runtime metric that carries GC pauses.
#[derive(Debug)]
pub struct PauseMetric {
    /// OpenTelemetry name.
    pub name: &'static str,
    /// The unit the convention gives it (a pause time; other time units are scaled).
    pub unit: &'static str,
    /// Histogram of pause durations, or counter of total pause time (no count: pause counts and the
    /// longest pause come only from its growth between exports).
    pub instrument: Instrument,
    /// Attribute naming the collector, or None for a runtime-wide figure (`collector="all"`).
    pub collector_key: Option<&'static str>,
    /// Collector values that are concurrent cycles running beside the app, not pauses.
    pub concurrent: fn(&str) -> bool,
}

/// A runtime metric of heap in use after GC (the best leak signal), with the heap's limit.
#[derive(Debug)]
pub struct HeapMetric {
    /// OpenTelemetry name of the used figure.
    pub used: &'static str,
    /// OpenTelemetry name of the limit, if the runtime reports one.
    pub limit: Option<&'static str>,
    /// Only points with this attribute value count (the JVM reports heap and non-heap pools together).
    pub only: Option<(&'static str, &'static str)>,
}

/// Which figure of a pool a metric reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolFigure {
    /// Slots in use.
    Used,
    /// Capacity.
    Max,
    /// Requests waiting for a slot.
    Pending,
    /// Open slots not in use (a connection pool's idle connections).
    Idle,
}

/// The attribute keys a pool's name may come under: the current convention's first, then the one before
/// 1.26 (`pool.name`), which the Java agent keeps even when it sends the current metric names.
pub const DB_POOL_NAME_KEYS: &[&str] = &["db.client.connection.pool.name", "pool.name"];

/// The attribute keys a connection's state may come under, current first.
pub const DB_STATE_KEYS: &[&str] = &["db.client.connection.state", "state"];

/// Which figure a pool metric's point reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolFigures {
    /// Always this figure.
    One(PoolFigure),
    /// A count split by connection state: `used` is [`PoolFigure::Used`], `idle` is
    /// [`PoolFigure::Idle`], other states are ignored. The state comes under the first of these keys
    /// present.
    ByState(&'static [&'static str]),
}

/// A metric reporting one figure of a pool.
#[derive(Debug)]
pub struct PoolMetric {
    /// OpenTelemetry name.
    pub name: &'static str,
    /// Which figure.
    pub figure: PoolFigures,
    /// The `kind` label: `db` or `thread`.
    pub kind: &'static str,
    /// Attributes that may name the pool, the first present wins.
    pub pool_keys: &'static [&'static str],
    /// The pool's name when no such attribute is present.
    pub default_pool: &'static str,
}

/// How a ready-work delay metric reports (time ready work waits to run: Node's event-loop delay, Go's
/// goroutine scheduling latency).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DelayShape {
    /// A gauge holding one statistic over the app's last export interval (`p99`, `max`, …).
    Statistic(&'static str),
    /// A cumulative histogram of delays: statistics come from the observations of its last export interval.
    Histogram,
}

/// A runtime metric of ready-work delay.
#[derive(Debug)]
pub struct DelayMetric {
    /// OpenTelemetry name.
    pub name: &'static str,
    /// The unit the convention gives it (a time).
    pub unit: &'static str,
    /// How it reports.
    pub shape: DelayShape,
}

/// One runtime's row.
#[derive(Debug)]
pub struct Profile {
    /// The runtime.
    pub runtime: Runtime,
    /// The `runtime` label value.
    pub label: &'static str,
    /// Executable names (exact).
    pub executables: &'static [&'static str],
    /// Executable name prefixes (`python3.11`).
    pub executable_prefixes: &'static [&'static str],
    /// `telemetry.sdk.language` values.
    pub sdk_languages: &'static [&'static str],
    /// GC pause metrics.
    pub pauses: &'static [PauseMetric],
    /// Heap-after-GC metrics, in order of preference.
    pub heap: &'static [HeapMetric],
    /// Thread pool metrics.
    pub pools: &'static [PoolMetric],
    /// Ready-work delay metrics.
    pub delay: &'static [DelayMetric],
}

/// Concurrent JVM collector cycles run beside the application and are not pauses: "G1 Concurrent GC",
/// "ZGC Cycles", "ZGC Major Cycles", "Shenandoah Cycles" (JMX/OTLP names) and hsperfdata's "Shenandoah
/// concurrent phases". Their "… Pauses" twins are pauses, and so is hsperfdata's "Z concurrent cycle
/// pauses" (JDK 17 ZGC). Case does not matter: hsperfdata writes these names in lower case.
pub fn is_concurrent_cycle(jvm_gc_name: &str) -> bool {
    let n = jvm_gc_name.to_ascii_lowercase();
    !n.contains("pauses") && (n.contains("concurrent") || n.ends_with("cycles"))
}

/// For runtimes whose every reported collection is a pause.
fn never_concurrent(_: &str) -> bool {
    false
}

/// The table: a row per runtime, in the order of [`Runtime::ALL`].
pub static PROFILES: [Profile; 5] = [
    Profile {
        runtime: Runtime::Jvm,
        label: "jvm",
        executables: &["java", "javaw"],
        executable_prefixes: &[],
        sdk_languages: &["java"],
        pauses: &[PauseMetric {
            name: "jvm.gc.duration",
            unit: "s",
            instrument: Instrument::Histogram,
            collector_key: Some("jvm.gc.name"),
            concurrent: is_concurrent_cycle,
        }],
        heap: &[HeapMetric {
            used: "jvm.memory.used_after_last_gc",
            limit: Some("jvm.memory.limit"),
            only: Some(("jvm.memory.type", "heap")),
        }],
        pools: &[],
        delay: &[],
    },
    Profile {
        runtime: Runtime::Node,
        label: "node",
        executables: &["node", "nodejs"],
        executable_prefixes: &[],
        sdk_languages: &["nodejs", "webjs"],
        pauses: &[PauseMetric {
            name: "v8js.gc.duration",
            unit: "s",
            instrument: Instrument::Histogram,
            collector_key: Some("v8js.gc.type"),
            concurrent: never_concurrent,
        }],
        heap: &[HeapMetric {
            used: "v8js.memory.heap.used",
            limit: Some("v8js.memory.heap.limit"),
            only: None,
        }],
        pools: &[],
        delay: &[
            DelayMetric {
                name: "nodejs.eventloop.delay.min",
                unit: "s",
                shape: DelayShape::Statistic("min"),
            },
            DelayMetric {
                name: "nodejs.eventloop.delay.p50",
                unit: "s",
                shape: DelayShape::Statistic("p50"),
            },
            DelayMetric {
                name: "nodejs.eventloop.delay.p90",
                unit: "s",
                shape: DelayShape::Statistic("p90"),
            },
            DelayMetric {
                name: "nodejs.eventloop.delay.p99",
                unit: "s",
                shape: DelayShape::Statistic("p99"),
            },
            DelayMetric {
                name: "nodejs.eventloop.delay.max",
                unit: "s",
                shape: DelayShape::Statistic("max"),
            },
        ],
    },
    Profile {
        runtime: Runtime::Dotnet,
        label: "dotnet",
        executables: &["dotnet"],
        executable_prefixes: &[],
        sdk_languages: &["dotnet"],
        pauses: &[PauseMetric {
            name: "dotnet.gc.pause.time",
            unit: "s",
            instrument: Instrument::Counter,
            collector_key: None,
            concurrent: never_concurrent,
        }],
        heap: &[HeapMetric {
            used: "dotnet.gc.last_collection.heap.size",
            limit: None,
            only: None,
        }],
        pools: &[
            PoolMetric {
                name: "dotnet.thread_pool.thread.count",
                figure: PoolFigures::One(PoolFigure::Used),
                kind: "thread",
                pool_keys: &[],
                default_pool: "dotnet",
            },
            PoolMetric {
                name: "dotnet.thread_pool.queue.length",
                figure: PoolFigures::One(PoolFigure::Pending),
                kind: "thread",
                pool_keys: &[],
                default_pool: "dotnet",
            },
        ],
        delay: &[],
    },
    Profile {
        runtime: Runtime::Go,
        label: "go",
        // Go programs are named after themselves: only the SDK language reveals them.
        executables: &[],
        executable_prefixes: &[],
        sdk_languages: &["go"],
        pauses: &[
            PauseMetric {
                name: "go.memory.gc.pause.duration",
                unit: "s",
                instrument: Instrument::Histogram,
                collector_key: None,
                concurrent: never_concurrent,
            },
            // The contrib runtime instrumentation before the semantic conventions.
            PauseMetric {
                name: "process.runtime.go.gc.pause_ns",
                unit: "ns",
                instrument: Instrument::Histogram,
                collector_key: None,
                concurrent: never_concurrent,
            },
        ],
        heap: &[HeapMetric {
            used: "go.memory.used",
            limit: Some("go.memory.limit"),
            only: None,
        }],
        pools: &[],
        delay: &[DelayMetric {
            name: "go.schedule.duration",
            unit: "s",
            shape: DelayShape::Histogram,
        }],
    },
    Profile {
        runtime: Runtime::Python,
        label: "python",
        executables: &[],
        executable_prefixes: &["python"],
        sdk_languages: &["python"],
        pauses: &[],
        heap: &[],
        pools: &[],
        delay: &[],
    },
];

/// Pool metrics of libraries rather than runtimes: the DB client connection pool conventions, current
/// (`db.client.connection.*`, with `.max` renamed `.limit` in the newest conventions) and deprecated
/// (`db.client.connections.*`, still sent by the Java agent without the stability opt-in, SQLAlchemy and
/// Npgsql). Units differ between them (`{connection}`, `{connections}`, `connections`, none) and are all
/// counts; the pool's name and the connection's state are read under either convention's key.
pub static LIBRARY_POOLS: &[PoolMetric] = &[
    db_pool(
        "db.client.connection.count",
        PoolFigures::ByState(DB_STATE_KEYS),
    ),
    db_pool(
        "db.client.connection.max",
        PoolFigures::One(PoolFigure::Max),
    ),
    db_pool(
        "db.client.connection.limit",
        PoolFigures::One(PoolFigure::Max),
    ),
    db_pool(
        "db.client.connection.pending_requests",
        PoolFigures::One(PoolFigure::Pending),
    ),
    db_pool(
        "db.client.connections.usage",
        PoolFigures::ByState(DB_STATE_KEYS),
    ),
    db_pool(
        "db.client.connections.max",
        PoolFigures::One(PoolFigure::Max),
    ),
    db_pool(
        "db.client.connections.pending_requests",
        PoolFigures::One(PoolFigure::Pending),
    ),
];

/// A DB connection pool row.
const fn db_pool(name: &'static str, figure: PoolFigures) -> PoolMetric {
    PoolMetric {
        name,
        figure,
        kind: "db",
        pool_keys: DB_POOL_NAME_KEYS,
        default_pool: "default",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_in_enum_order_and_names_are_unique() {
        for r in Runtime::ALL {
            assert_eq!(r.profile().runtime, r);
        }
        let mut names: Vec<&str> = PROFILES
            .iter()
            .flat_map(|p| {
                p.pauses
                    .iter()
                    .map(|m| m.name)
                    .chain(
                        p.heap
                            .iter()
                            .flat_map(|h| [Some(h.used), h.limit])
                            .flatten(),
                    )
                    .chain(p.pools.iter().map(|m| m.name))
                    .chain(p.delay.iter().map(|m| m.name))
            })
            .chain(LIBRARY_POOLS.iter().map(|m| m.name))
            .collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "a metric name in two rows");
    }

    #[test]
    fn executables_and_sdk_languages() {
        assert_eq!(Runtime::from_executable("java"), Some(Runtime::Jvm));
        assert_eq!(
            Runtime::from_executable("python3.11"),
            Some(Runtime::Python)
        );
        assert_eq!(Runtime::from_executable("node"), Some(Runtime::Node));
        assert_eq!(Runtime::from_executable("dotnet"), Some(Runtime::Dotnet));
        assert_eq!(Runtime::from_executable("myapp"), None);
        assert_eq!(Runtime::from_sdk_language("java"), Some(Runtime::Jvm));
        assert_eq!(Runtime::from_sdk_language("webjs"), Some(Runtime::Node));
        assert_eq!(Runtime::from_sdk_language("go"), Some(Runtime::Go));
        assert_eq!(Runtime::from_sdk_language("rust"), None);
        assert_eq!(label_of(None), "unknown");
        assert_eq!(label_of(Some(Runtime::Dotnet)), "dotnet");
    }

    #[test]
    fn units_scale_to_base_units_or_are_refused() {
        assert_eq!(Quantity::Time.scale("ms"), Some(1e-3));
        assert_eq!(Quantity::Time.scale("ns"), Some(1e-9));
        assert_eq!(
            Quantity::Time.scale(""),
            None,
            "a bare number could be anything"
        );
        assert_eq!(Quantity::Time.scale("By"), None);
        assert_eq!(Quantity::Bytes.scale("MiBy"), Some(1048576.0));
        assert_eq!(Quantity::Count.scale("{connection}"), Some(1.0));
        assert_eq!(Quantity::Count.scale("s"), None);
    }

    #[test]
    fn counts_are_matched_by_meaning_not_spelling() {
        // What each instrumentation sends for its pool counts (checked against their releases).
        for unit in [
            "connections",   // SQLAlchemy (opentelemetry-instrumentation-sqlalchemy 0.66b1)
            "{connections}", // Java agent DbConnectionPoolMetrics (HikariCP, c3p0, …)
            "{connection}",  // semantic conventions, Node pg, Npgsql
            "{requests}",    // Java agent pending requests
            "{request}",     // Node pg, Npgsql pending requests
            "1",
            "",
        ] {
            assert_eq!(Quantity::Count.scale(unit), Some(1.0), "{unit:?}");
        }
        for unit in [
            "ms", "By", "KiBy", "min", "bit", "Hz", "s", "%", "Cel", "m/s",
        ] {
            assert_eq!(Quantity::Count.scale(unit), None, "{unit:?}");
        }
    }

    #[test]
    fn concurrent_cycles_are_not_pauses() {
        for n in [
            "G1 Concurrent GC",
            "ZGC Cycles",
            "ZGC Major Cycles",
            "Shenandoah Cycles",
            "Shenandoah concurrent phases",
        ] {
            assert!(is_concurrent_cycle(n), "{n}");
        }
        for n in [
            "G1 Young Generation",
            "G1 Old Generation",
            "ZGC Pauses",
            "ZGC Major Pauses",
            "Shenandoah Pauses",
            "PS MarkSweep",
            "Z concurrent cycle pauses",
            "Shenandoah pauses",
            "Shenandoah full",
            "G1 stop-the-world full collections",
        ] {
            assert!(!is_concurrent_cycle(n), "{n}");
        }
    }
}
