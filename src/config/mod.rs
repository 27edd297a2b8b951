//! Configuration from flags, `VITALS_*` environment variables and an optional YAML file, in that order of
//! precedence, validated with messages that name the flag or field at fault.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

pub mod otlp;

use self::otlp::{
    ForwardOptions, ForwardSettings, Named, PushOptions, PushSettings, RetryPolicy, Upstream,
};

/// Default `/metrics` port: outside Prometheus' exporter port allocations (9100-9999 are all taken) and
/// apart from 4317/4318 (OTLP) and 9464 (the OpenTelemetry Prometheus exporter).
pub const DEFAULT_METRICS_PORT: u16 = 19464;

/// Log levels `--log-level` accepts on their own; anything else must be a `target=level` directive.
pub const LOG_LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// An OTLP wire protocol: what the `run` child's SDK is told to use (`--child-otlp-protocol`) and what
/// forwarding and push speak to their upstream (`--forward-protocol`, `--push-protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
pub enum OtlpProtocol {
    /// OTLP/HTTP with protobuf bodies (the specification's default).
    #[value(name = "http/protobuf")]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// OTLP/gRPC.
    #[value(name = "grpc")]
    #[serde(rename = "grpc")]
    Grpc,
}

impl OtlpProtocol {
    /// The name `OTEL_EXPORTER_OTLP_PROTOCOL` and the flags use.
    pub fn name(self) -> &'static str {
        match self {
            OtlpProtocol::HttpProtobuf => "http/protobuf",
            OtlpProtocol::Grpc => "grpc",
        }
    }

    /// The protocol of `name` (surrounding blanks ignored); None for any other, `http/json` included.
    pub fn parse(name: &str) -> Option<Self> {
        [OtlpProtocol::HttpProtobuf, OtlpProtocol::Grpc]
            .into_iter()
            .find(|p| p.name() == name.trim())
    }
}

/// vitals: vital signs (latency, pauses, memory growth, pool saturation) of the process next to it.
#[derive(Debug, Parser)]
#[command(name = "vitals", version, about, long_about = None, after_help = "\
Target selection: give one of --pid, --pid-file or --process, or use `vitals run -- CMD ARGS...`.

Every option can also be set as VITALS_<NAME> (e.g. VITALS_METRICS_ADDR) or in the --config YAML file \
(keys as the long flag names, e.g. `metrics-addr: 0.0.0.0:19464`). Flags win over the environment, which \
wins over the file.")]
pub struct Cli {
    /// Run mode.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options shared by every mode.
    #[command(flatten)]
    pub options: Options,
    /// Where each option given on the command line or in the environment came from (see [`Cli::parse_from_env`]).
    #[arg(skip)]
    pub sources: HashMap<String, ValueSource>,
    /// The options given on the command line, as `--name=value` (`vitals inject` passes them to the sidecar).
    #[arg(skip)]
    pub command_line_options: Vec<String>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start CMD as the target, with its OpenTelemetry SDK pointed at vitals; exit with its status.
    Run {
        /// The command and its arguments.
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "CMD"
        )]
        command: Vec<String>,
    },
    /// Add the vitals sidecar to Kubernetes manifests (or take it away with --uninject); writes stdout.
    Inject(crate::inject::InjectArgs),
    /// Take a CPU profile of --pid for some seconds and write it as gzipped pprof (or folded stacks).
    Profile {
        /// How long to sample.
        #[arg(long, default_value_t = 30, value_name = "N")]
        seconds: u64,
        /// Where to write it; `-` for stdout.
        #[arg(short = 'o', long, default_value = "cpu.pb.gz", value_name = "FILE")]
        output: PathBuf,
        /// `pprof` (gzipped profile.proto) or `folded` (one line per stack).
        #[arg(long, default_value = "pprof", value_name = "FORMAT")]
        format: String,
        /// Samples per second of each thread's CPU time.
        #[arg(long, default_value_t = 99, value_parser = clap::value_parser!(u64).range(1..=999), value_name = "HZ")]
        hz: u64,
    },
}

/// Options, each also settable by environment variable or config file. The YAML file has the same
/// schema (keys as the long flag names), so a new option is one field here.
#[derive(Debug, Args, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Options {
    /// Watch the process with this pid.
    #[arg(long, global = true, env = "VITALS_PID", group = "select")]
    pub pid: Option<u32>,
    /// Watch the process whose pid is in this file (re-read when the target exits).
    #[arg(
        long,
        global = true,
        env = "VITALS_PID_FILE",
        group = "select",
        value_name = "PATH"
    )]
    pub pid_file: Option<PathBuf>,
    /// Watch the oldest process whose comm or command line matches this regex; waits for it to appear.
    #[arg(
        long,
        global = true,
        env = "VITALS_PROCESS",
        group = "select",
        value_name = "REGEX"
    )]
    pub process: Option<String>,
    /// A named target, repeatable: NAME=process:REGEX, NAME=pid:N or NAME=pid-file:PATH (for example
    /// `--target app=process:gunicorn --target proxy=process:nginx`). Every target family then carries
    /// `target="NAME"`; the first target (or the one --pid/--pid-file/--process/run selects, named `app`)
    /// gets the app's OTLP-derived signals. In VITALS_TARGET, separate several with `;`.
    #[arg(
        long = "target",
        global = true,
        env = "VITALS_TARGET",
        value_name = "NAME=SPEC",
        value_delimiter = ';'
    )]
    pub target: Vec<String>,
    /// Address of /, /metrics, /healthz and /readyz; HOST:PORT, a host name binds its first address
    /// [default: 0.0.0.0:19464; 127.0.0.1:19464 in `run` mode].
    #[arg(long, global = true, env = "VITALS_METRICS_ADDR", value_name = "ADDR", value_parser = parse_listen_addr)]
    #[serde(deserialize_with = "de_listen_addr")]
    pub metrics_addr: Option<SocketAddr>,
    /// TLS and basic auth for /metrics: a Prometheus exporter-toolkit web config YAML
    /// (tls_server_config.cert_file/key_file, basic_auth_users with bcrypt hashes).
    #[arg(
        long,
        global = true,
        env = "VITALS_WEB_CONFIG_FILE",
        value_name = "FILE"
    )]
    pub web_config_file: Option<PathBuf>,
    /// OTLP/gRPC receiver address, or `off` [default: 127.0.0.1:4317].
    #[arg(
        long,
        global = true,
        env = "VITALS_OTLP_GRPC_ADDR",
        value_name = "ADDR|off",
        value_parser = parse_receiver_addr
    )]
    #[serde(deserialize_with = "de_receiver_addr")]
    pub otlp_grpc_addr: Option<ReceiverAddr>,
    /// OTLP/HTTP receiver address, or `off` [default: 127.0.0.1:4318].
    #[arg(
        long,
        global = true,
        env = "VITALS_OTLP_HTTP_ADDR",
        value_name = "ADDR|off",
        value_parser = parse_receiver_addr
    )]
    #[serde(deserialize_with = "de_receiver_addr")]
    pub otlp_http_addr: Option<ReceiverAddr>,
    /// `run` mode: OTLP protocol the child's SDK is told to use [default: http/protobuf].
    #[arg(long, global = true, value_enum, env = "VITALS_CHILD_OTLP_PROTOCOL")]
    pub child_otlp_protocol: Option<OtlpProtocol>,
    /// Sampling interval, e.g. 1s, 500ms [default: 1s; 100ms..1h].
    #[arg(long, global = true, env = "VITALS_INTERVAL", value_parser = humantime::parse_duration)]
    #[serde(deserialize_with = "de_duration")]
    pub interval: Option<Duration>,
    /// Sampling interval while nobody watches the live page; a scrape or a push still gets readings no
    /// older than --interval [default: 20s; a thirtieth of the shortest --growth-windows when that is
    /// shorter, so every growth bucket gets a reading; never below --interval; at most 1h].
    #[arg(long, global = true, env = "VITALS_IDLE_INTERVAL", value_parser = humantime::parse_duration)]
    #[serde(deserialize_with = "de_duration")]
    pub idle_interval: Option<Duration>,
    /// procfs mount to read [default: /proc].
    #[arg(long, global = true, env = "VITALS_PROC_ROOT", value_name = "PATH")]
    pub proc_root: Option<PathBuf>,
    /// Host cgroup mount, used when the target's own view is not reachable [default: /sys/fs/cgroup].
    #[arg(long, global = true, env = "VITALS_CGROUP_ROOT", value_name = "PATH")]
    pub cgroup_root: Option<PathBuf>,
    /// Read smaps_rollup for PSS: at most every 30 s, backing off when slow, because it holds the target's
    /// memory map lock for 3-20 ms per GiB of RSS (measured; more with small pages and many mappings)
    /// [default: false].
    #[arg(long, global = true, env = "VITALS_PSS", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub pss: Option<bool>,
    /// Label vitals_target_info with the pod's namespace, pod and node names from the Downward API
    /// variables (K8S_NAMESPACE_NAME or POD_NAMESPACE, K8S_POD_NAME, K8S_NODE_NAME), for scrapes that do
    /// not attach them (static configs, federation) [default: false].
    #[arg(long, global = true, env = "VITALS_KUBERNETES_LABELS", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub kubernetes_labels: Option<bool>,
    /// Most processes of the target's tree (the selected process and its descendants) read each tick;
    /// more are counted in vitals_target_processes_untracked and logged, not read. 1 watches the selected
    /// process alone [default: 1000; 1..100000].
    #[arg(
        long,
        global = true,
        env = "VITALS_MAX_TREE_PROCESSES",
        value_name = "N"
    )]
    pub max_tree_processes: Option<usize>,
    /// Log format [default: text].
    #[arg(long, global = true, env = "VITALS_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log level (trace, debug, info, warn, error, off) or tracing directives such as
    /// `warn,vitals::sampler=debug` [default: info].
    #[arg(long, global = true, env = "VITALS_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Write vitals' own log lines to this file (appended) instead of stderr. Without it, `run` mode marks
    /// each text line on stderr with `[vitals] ` so it stands apart from the child's output.
    #[arg(long, global = true, env = "VITALS_LOG_FILE", value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// Largest OTLP request accepted, in bytes after decompression [default: 4194304 (4 MiB)].
    #[arg(
        long,
        global = true,
        env = "VITALS_OTLP_MAX_REQUEST_BYTES",
        value_name = "BYTES"
    )]
    pub otlp_max_request_bytes: Option<usize>,
    /// OTLP requests decoded at once; more are shed with a retry hint [default: 8].
    #[arg(
        long,
        global = true,
        env = "VITALS_OTLP_MAX_CONCURRENT_REQUESTS",
        value_name = "N"
    )]
    pub otlp_max_concurrent_requests: Option<usize>,
    /// Label sets kept per metric before observations go to the overflow series [default: 2000].
    #[arg(long, global = true, env = "VITALS_SERIES_LIMIT", value_name = "N")]
    pub series_limit: Option<usize>,
    /// A series from OTLP not updated for this long is dropped [default: 1h].
    #[arg(long, global = true, env = "VITALS_SERIES_TTL", value_parser = humantime::parse_duration)]
    #[serde(deserialize_with = "de_duration")]
    pub series_ttl: Option<Duration>,
    /// Resource attributes copied as labels onto every app metric series (comma-separated).
    #[arg(
        long,
        global = true,
        env = "VITALS_PROMOTE_RESOURCE_ATTRIBUTES",
        value_delimiter = ',',
        value_name = "ATTR,..."
    )]
    pub promote_resource_attributes: Option<Vec<String>>,
    /// Memory growth windows, comma-separated [default: 15m,1h,6h].
    #[arg(long, global = true, env = "VITALS_GROWTH_WINDOWS", value_delimiter = ',', value_parser = humantime::parse_duration, value_name = "DURATION,...")]
    #[serde(deserialize_with = "de_durations")]
    pub growth_windows: Option<Vec<Duration>>,
    /// Growth that counts as a leak when every ready window exceeds it, bytes per hour [default: 10000000].
    #[arg(
        long,
        global = true,
        env = "VITALS_LEAK_THRESHOLD_BYTES_PER_HOUR",
        value_name = "BYTES"
    )]
    pub leak_threshold_bytes_per_hour: Option<f64>,
    /// History a tuning hint needs before it gives a value [default: 10m].
    #[arg(long, global = true, env = "VITALS_HINTS_MIN_HISTORY", value_parser = humantime::parse_duration)]
    #[serde(deserialize_with = "de_duration")]
    pub hints_min_history: Option<Duration>,
    /// N+1 detection judges a trace once none of its spans arrived for this long (longer than the
    /// app's OTLP batch delay, so a trace split across exports is judged whole) [default: 10s].
    #[arg(long, global = true, env = "VITALS_DB_TRACE_SETTLE", value_parser = humantime::parse_duration)]
    #[serde(deserialize_with = "de_duration")]
    pub db_trace_settle: Option<Duration>,
    /// Forward everything received to this upstream OTLP endpoint (base URL; for http/protobuf
    /// /v1/<signal> is appended) [default: OTEL_EXPORTER_OTLP_ENDPOINT; unset: no forwarding].
    #[arg(
        long,
        global = true,
        env = "VITALS_FORWARD_ENDPOINT",
        value_name = "URL"
    )]
    pub forward_endpoint: Option<String>,
    /// Upstream URL for traces, used as-is [default: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT].
    #[arg(
        long,
        global = true,
        env = "VITALS_FORWARD_TRACES_ENDPOINT",
        value_name = "URL"
    )]
    pub forward_traces_endpoint: Option<String>,
    /// Upstream URL for metrics, used as-is [default: OTEL_EXPORTER_OTLP_METRICS_ENDPOINT].
    #[arg(
        long,
        global = true,
        env = "VITALS_FORWARD_METRICS_ENDPOINT",
        value_name = "URL"
    )]
    pub forward_metrics_endpoint: Option<String>,
    /// Upstream URL for logs, used as-is [default: OTEL_EXPORTER_OTLP_LOGS_ENDPOINT].
    #[arg(
        long,
        global = true,
        env = "VITALS_FORWARD_LOGS_ENDPOINT",
        value_name = "URL"
    )]
    pub forward_logs_endpoint: Option<String>,
    /// Upstream protocol: grpc or http/protobuf [default: OTEL_EXPORTER_OTLP_[SIGNAL_]PROTOCOL, else
    /// http/protobuf].
    #[arg(
        long,
        global = true,
        env = "VITALS_FORWARD_PROTOCOL",
        value_name = "PROTOCOL"
    )]
    pub forward_protocol: Option<String>,
    /// Headers sent upstream, `key=value,...` [default: OTEL_EXPORTER_OTLP_[SIGNAL_]HEADERS].
    #[arg(
        long,
        global = true,
        env = "VITALS_FORWARD_HEADERS",
        value_name = "KEY=VALUE,..."
    )]
    pub forward_headers: Option<String>,
    /// CA certificate (PEM) an https upstream's certificate is checked against
    /// [default: OTEL_EXPORTER_OTLP_[SIGNAL_]CERTIFICATE, else the system's roots].
    #[arg(
        long,
        global = true,
        env = "VITALS_FORWARD_CERTIFICATE",
        value_name = "PEM"
    )]
    pub forward_certificate: Option<String>,
    /// Client certificate (PEM) for mutual TLS with an https upstream
    /// [default: OTEL_EXPORTER_OTLP_[SIGNAL_]CLIENT_CERTIFICATE].
    #[arg(
        long,
        global = true,
        env = "VITALS_FORWARD_CLIENT_CERTIFICATE",
        value_name = "PEM"
    )]
    pub forward_client_certificate: Option<String>,
    /// Private key (PEM) of the client certificate [default: OTEL_EXPORTER_OTLP_[SIGNAL_]CLIENT_KEY].
    #[arg(
        long,
        global = true,
        env = "VITALS_FORWARD_CLIENT_KEY",
        value_name = "PEM"
    )]
    pub forward_client_key: Option<String>,
    /// Upstream compression: gzip or none [default: OTEL_EXPORTER_OTLP_[SIGNAL_]COMPRESSION, else none].
    #[arg(
        long,
        global = true,
        env = "VITALS_FORWARD_COMPRESSION",
        value_name = "gzip|none"
    )]
    pub forward_compression: Option<String>,
    /// Longest wait for the upstream's answer [default: OTEL_EXPORTER_OTLP_[SIGNAL_]TIMEOUT, else 10s].
    #[arg(long, global = true, env = "VITALS_FORWARD_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(deserialize_with = "de_duration")]
    pub forward_timeout: Option<Duration>,
    /// Bytes the forwarding queue holds; beyond it apps are told to retry [default: 16777216 (16 MiB)].
    #[arg(
        long,
        global = true,
        env = "VITALS_FORWARD_QUEUE_BYTES",
        value_name = "BYTES"
    )]
    pub forward_queue_bytes: Option<u64>,
    /// On SIGTERM, longest wait for the forwarding queue to empty [default: 10s].
    #[arg(long, global = true, env = "VITALS_FORWARD_DRAIN_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(deserialize_with = "de_duration")]
    pub forward_drain_timeout: Option<Duration>,
    /// Push vitals' own metrics as OTLP to this endpoint (for http/protobuf a URL without a path gets
    /// /v1/metrics); the OTEL_EXPORTER_OTLP_* variables do not apply [default: unset, no push].
    #[arg(long, global = true, env = "VITALS_PUSH_ENDPOINT", value_name = "URL")]
    pub push_endpoint: Option<String>,
    /// Push protocol: grpc or http/protobuf [default: http/protobuf].
    #[arg(
        long,
        global = true,
        env = "VITALS_PUSH_PROTOCOL",
        value_name = "PROTOCOL"
    )]
    pub push_protocol: Option<String>,
    /// Time between pushes [default: 15s].
    #[arg(long, global = true, env = "VITALS_PUSH_INTERVAL", value_parser = humantime::parse_duration)]
    #[serde(deserialize_with = "de_duration")]
    pub push_interval: Option<Duration>,
    /// Headers sent with every push, `key=value,...` (values percent-decoded).
    #[arg(
        long,
        global = true,
        env = "VITALS_PUSH_HEADERS",
        value_name = "KEY=VALUE,..."
    )]
    pub push_headers: Option<String>,
    /// Push compression: gzip or none [default: none].
    #[arg(
        long,
        global = true,
        env = "VITALS_PUSH_COMPRESSION",
        value_name = "gzip|none"
    )]
    pub push_compression: Option<String>,
    /// Longest wait for the push endpoint's answer [default: 10s].
    #[arg(long, global = true, env = "VITALS_PUSH_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(deserialize_with = "de_duration")]
    pub push_timeout: Option<Duration>,
    /// CA certificate (PEM) for an https push endpoint [default: the system's roots].
    #[arg(
        long,
        global = true,
        env = "VITALS_PUSH_CERTIFICATE",
        value_name = "FILE"
    )]
    pub push_certificate: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS with the push endpoint.
    #[arg(
        long,
        global = true,
        env = "VITALS_PUSH_CLIENT_CERTIFICATE",
        value_name = "FILE"
    )]
    pub push_client_certificate: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS with the push endpoint.
    #[arg(
        long,
        global = true,
        env = "VITALS_PUSH_CLIENT_KEY",
        value_name = "FILE"
    )]
    pub push_client_key: Option<PathBuf>,
    /// `service.name` of the pushed metrics' resource [default: vitals].
    #[arg(
        long,
        global = true,
        env = "VITALS_PUSH_SERVICE_NAME",
        value_name = "NAME"
    )]
    pub push_service_name: Option<String>,
    /// Push histograms kept in exponential buckets (RED, the app's exponential ones) as OTLP
    /// exponential histograms, or always as explicit buckets [default: exponential].
    #[arg(
        long,
        global = true,
        env = "VITALS_PUSH_HISTOGRAMS",
        value_name = "exponential|explicit"
    )]
    pub push_histograms: Option<String>,
    /// CPU profiles of the target on demand at /debug/pprof/profile (perf_event_open; needs
    /// kernel.perf_event_paranoid <= 2 and the target's user, or CAP_PERFMON) [default: true].
    #[arg(long, global = true, env = "VITALS_PROFILING", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub profiling: Option<bool>,
    /// Bytes of user stack copied with each profile sample for DWARF unwinding; 0 walks frame
    /// pointers only [default: 16384; at most 65528].
    #[arg(
        long,
        global = true,
        env = "VITALS_PROFILE_STACK_BYTES",
        value_name = "BYTES"
    )]
    pub profile_stack_bytes: Option<u32>,
    /// Profile the target all the time at a low rate, keeping recent samples in a bounded ring, and keep
    /// the profile around each onset of a latency, pause or saturation alert condition (see
    /// /debug/pprof/captures) [default: false].
    #[arg(long, global = true, env = "VITALS_PROFILE_CONTINUOUS", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub profile_continuous: Option<bool>,
    /// Samples per second of the target's CPU time in continuous mode [default: 19; 1..999].
    #[arg(
        long,
        global = true,
        env = "VITALS_PROFILE_CONTINUOUS_HZ",
        value_name = "HZ"
    )]
    pub profile_continuous_hz: Option<u64>,
    /// Bytes the continuous profiler's ring of recent samples may hold; the kept captures have the same
    /// bound [default: 8388608; 262144..1073741824].
    #[arg(
        long,
        global = true,
        env = "VITALS_PROFILE_RING_BYTES",
        value_name = "BYTES"
    )]
    pub profile_ring_bytes: Option<u64>,
    /// How far back the continuous profiler's ring reaches when its byte bound allows [default: 5m;
    /// 1m..1h].
    #[arg(long, global = true, env = "VITALS_PROFILE_RING_WINDOW", value_parser = humantime::parse_duration)]
    #[serde(deserialize_with = "de_duration")]
    pub profile_ring_window: Option<Duration>,
    /// YAML configuration file.
    #[arg(long, global = true, env = "VITALS_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
}

fn de_durations<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<Duration>>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    v.iter()
        .map(|s| {
            humantime::parse_duration(s)
                .map_err(|e| serde::de::Error::custom(format!("duration {s:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("duration {s:?}: {e}")))
}

/// A receiver's listen address, or `off` for no receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiverAddr {
    /// Not started.
    Off,
    /// Listen here.
    At(SocketAddr),
}

/// Parses HOST:PORT; a host name is resolved and its first address used (`localhost:19464` binds
/// whichever of 127.0.0.1 and ::1 the resolver lists first).
pub fn parse_listen_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if !s.contains(':') {
        return Err(format!("{s:?} is not HOST:PORT (e.g. 127.0.0.1:19464)"));
    }
    let mut addrs = s
        .to_socket_addrs()
        .map_err(|e| format!("{s:?} is not HOST:PORT with a known host: {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("{s:?}: the host name has no address"))
}

/// Parses a receiver address: `off` or HOST:PORT as in [`parse_listen_addr`].
pub fn parse_receiver_addr(s: &str) -> Result<ReceiverAddr, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(ReceiverAddr::Off);
    }
    parse_listen_addr(s).map(ReceiverAddr::At)
}

fn de_listen_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    parse_listen_addr(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn de_receiver_addr<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<ReceiverAddr>, D::Error> {
    let s = String::deserialize(d)?;
    parse_receiver_addr(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// Checks a `--log-level` value: a bare word must be one of [`LOG_LEVELS`] (so `warning` or `inf` is an
/// error rather than a filter for a target of that name, which would silence every log line); other
/// directives are `target=level` or span filters, checked by the tracing filter parser.
pub fn check_log_level(filter: &str) -> Result<(), String> {
    let valid_level = |l: &str| LOG_LEVELS.contains(&l.to_ascii_lowercase().as_str());
    for directive in filter.split(',').map(str::trim) {
        if directive.is_empty() {
            continue;
        }
        let level = match directive.rsplit_once('=') {
            Some((_, level)) => level,
            None if directive.contains('[') => continue,
            None => directive,
        };
        if !valid_level(level) {
            return Err(format!(
                "{directive:?} is not a log level; use one of {} or target=level directives",
                LOG_LEVELS.join(", ")
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(filter)
        .map(|_| ())
        .map_err(|e| format!("{filter:?}: {e}"))
}

/// Which running process to watch, as `--pid`, `--pid-file`, `--process` or `--target NAME=SPEC` give
/// it. The target finder follows it (`target::Selector::Given`).
#[derive(Debug, Clone)]
pub enum Selection {
    /// `--pid`, `pid:N`.
    Pid(u32),
    /// `--pid-file`, `pid-file:PATH`.
    PidFile(PathBuf),
    /// `--process`, `process:REGEX`.
    Process(regex::Regex),
}

/// How the main target is chosen, before the child is spawned.
#[derive(Debug, Clone)]
pub enum TargetSpec {
    /// A running process.
    Select(Selection),
    /// `vitals run`.
    Run {
        /// Command and arguments.
        command: Vec<String>,
        /// OTLP protocol for the child.
        protocol: OtlpProtocol,
    },
}

/// A target with a name, from `--target NAME=SPEC`.
#[derive(Debug, Clone)]
pub struct NamedTarget {
    /// The `target` label value.
    pub name: String,
    /// How it is selected.
    pub selection: Selection,
}

/// The name the selected (unnamed) target gets when named targets are given beside it.
pub const MAIN_TARGET_NAME: &str = "app";

/// Parses `NAME=process:REGEX`, `NAME=pid:N` or `NAME=pid-file:PATH`.
pub fn parse_named_target(text: &str) -> Result<NamedTarget, String> {
    let (name, spec) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not NAME=SPEC (for example app=process:gunicorn)"))?;
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !name_ok {
        return Err(format!(
            "target name {name:?}: use 1-64 letters, digits, '_', '-' or '.'"
        ));
    }
    let (kind, value) = spec.split_once(':').ok_or_else(|| {
        format!("target {name}: {spec:?} is not KIND:VALUE (process:REGEX, pid:N, pid-file:PATH)")
    })?;
    let selection = match kind {
        "process" => Selection::Process(
            regex::Regex::new(value)
                .map_err(|e| format!("target {name}: not a valid regex: {e}"))?,
        ),
        "pid" => match value.parse::<u32>() {
            Ok(p) if p > 0 => Selection::Pid(p),
            _ => return Err(format!("target {name}: {value:?} is not a process id")),
        },
        "pid-file" if !value.is_empty() => Selection::PidFile(PathBuf::from(value)),
        _ => {
            return Err(format!(
                "target {name}: unknown kind {kind:?}; use process:REGEX, pid:N or pid-file:PATH"
            ))
        }
    };
    Ok(NamedTarget {
        name: name.to_owned(),
        selection,
    })
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Settings that were understood but not applied, to log once logging is up.
    pub warnings: Vec<String>,
    /// Target selection; None means "serve only, no target" (useful for the OTLP receiver alone).
    pub target: Option<TargetSpec>,
    /// The main target's name when several are watched (its families carry `target`); None for one
    /// unnamed target, whose exposition has no `target` label.
    pub target_name: Option<String>,
    /// Further named targets, each sampled on its own.
    pub more_targets: Vec<NamedTarget>,
    /// /metrics address.
    pub metrics_addr: SocketAddr,
    /// `--web-config-file`: TLS and basic auth for /metrics.
    pub web_config_file: Option<PathBuf>,
    /// OTLP/gRPC address; None when turned off.
    pub otlp_grpc_addr: Option<SocketAddr>,
    /// OTLP/HTTP address; None when turned off.
    pub otlp_http_addr: Option<SocketAddr>,
    /// Sampling interval.
    pub interval: Duration,
    /// Sampling interval while nobody watches (at least `interval`).
    pub idle_interval: Duration,
    /// procfs root.
    pub proc_root: PathBuf,
    /// Host cgroup root.
    pub cgroup_root: PathBuf,
    /// PSS reading enabled.
    pub pss: bool,
    /// Label vitals_target_info with the Downward API's namespace, pod and node names.
    pub kubernetes_labels: bool,
    /// Cap on the processes of the target's tree read each tick.
    pub max_tree_processes: usize,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter, checked by [`check_log_level`].
    pub log_level: String,
    /// Log file; None for stderr.
    pub log_file: Option<PathBuf>,
    /// OTLP request size limit after decompression.
    pub otlp_max_request_bytes: usize,
    /// OTLP requests decoded at once.
    pub otlp_max_concurrent_requests: usize,
    /// Label sets per metric.
    pub series_limit: usize,
    /// Expiry of idle OTLP series.
    pub series_ttl: Duration,
    /// Resource attributes promoted to labels.
    pub promote_resource_attributes: Vec<String>,
    /// Memory growth windows.
    pub growth_windows: Vec<Duration>,
    /// Leak threshold, bytes per second.
    pub leak_threshold: f64,
    /// History a tuning hint needs before it gives a value.
    pub hints_min_history: Duration,
    /// Quiet time after which N+1 detection judges a trace.
    pub db_trace_settle: Duration,
    /// Forwarding to upstream OTLP endpoints; None when no endpoint is configured.
    pub forward: Option<ForwardSettings>,
    /// Pushing vitals' own metrics over OTLP; None when no push endpoint is configured.
    pub push: Option<PushSettings>,
    /// On-demand CPU profiles allowed.
    pub profiling: bool,
    /// Bytes of user stack copied per profile sample.
    pub profile_stack_bytes: u32,
    /// Continuous profiling and captures on trouble; None when off.
    pub profile_continuous: Option<ContinuousProfile>,
}

/// Continuous profiling: the rate and the ring's bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct ContinuousProfile {
    /// Samples per second of CPU time.
    pub hz: u64,
    /// Bytes the ring (and, apart, the kept captures) may hold.
    pub ring_bytes: u64,
    /// How far back the ring reaches.
    pub window: Duration,
}

/// The continuous profiling settings, or None when it is off; refuses it with profiling off.
fn continuous_settings(
    o: &Options,
    file: &Options,
    origins: &Origins<'_>,
    profiling: bool,
) -> Result<Option<ContinuousProfile>, ConfigError> {
    let from_cli = o.profile_continuous.is_some();
    if !o
        .profile_continuous
        .or(file.profile_continuous)
        .unwrap_or(false)
    {
        return Ok(None);
    }
    if !profiling {
        return Err(invalid(
            origins.name("profile_continuous", from_cli),
            "needs profiling on (--profiling=false turns it off)",
        ));
    }
    let layers = Layers {
        cli: o,
        file,
        origins,
    };
    let hz = layers.pick(
        "profile_continuous_hz",
        |o| o.profile_continuous_hz,
        || 19,
        within(1..=999, "must be between 1 and 999"),
    )?;
    let ring_bytes = layers.pick(
        "profile_ring_bytes",
        |o| o.profile_ring_bytes,
        || 8 << 20,
        within(
            256 << 10..=1 << 30,
            "must be between 262144 (256 KiB) and 1073741824 (1 GiB)",
        ),
    )?;
    let window = layers.pick(
        "profile_ring_window",
        |o| o.profile_ring_window,
        || Duration::from_secs(300),
        within(
            Duration::from_secs(60)..=Duration::from_secs(3600),
            "must be between 1m and 1h",
        ),
    )?;
    Ok(Some(ContinuousProfile {
        hz,
        ring_bytes,
        window,
    }))
}

/// A configuration that cannot be used. Each message names where the bad value came from: the flag, the
/// environment variable or the config file and field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("config file {0}: {1}")]
    ReadFile(PathBuf, std::io::Error),
    /// The config file is not valid YAML for vitals; the message names the field when one is at fault.
    #[error("config file {0}: {1}")]
    ParseFile(PathBuf, String),
    /// A forwarding setting is unusable; the message names the flag or variable.
    #[error("{0}")]
    Forward(String),
    /// A push setting is unusable; the message names the flag, variable or file field.
    #[error("{0}")]
    Push(String),
    /// A value is out of range.
    #[error("{origin}: {reason}")]
    Invalid {
        /// Where the value came from, e.g. `--interval`, `environment variable VITALS_INTERVAL` or
        /// `config file /etc/vitals.yaml: field interval (line 3)`.
        origin: String,
        /// What is wrong and what to do.
        reason: String,
    },
}

fn invalid(origin: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        origin: origin.into(),
        reason: reason.into(),
    }
}

/// Names the source of an option's value for error messages.
struct Origins<'a> {
    sources: &'a HashMap<String, ValueSource>,
    file: Option<&'a Path>,
}

impl Origins<'_> {
    /// `id` is the option's field name (`metrics_addr`); `from_cli` says whether the flag or its variable
    /// gave the value (else the file did, or the default).
    fn name(&self, id: &str, from_cli: bool) -> String {
        let long = id.replace('_', "-");
        if from_cli {
            if self.sources.get(id) == Some(&ValueSource::EnvVariable) {
                return format!("environment variable VITALS_{}", id.to_ascii_uppercase());
            }
            return format!("--{long}");
        }
        match self.file {
            Some(f) => {
                // The key's line: the file is read again on this error path only.
                let line = std::fs::read_to_string(f).ok().and_then(|text| {
                    let keys = top_level_keys(&text);
                    keys.iter().find(|(k, _)| *k == long).map(|(_, n)| *n)
                });
                let at = line.map(|n| format!(" (line {n})")).unwrap_or_default();
                format!("config file {}: field {long}{at}", f.display())
            }
            None => format!("--{long}"),
        }
    }
}

/// The layers an option's value comes from: the flag or its `VITALS_*` variable (clap merged those two),
/// then the config file, then the default. [`Layers::pick`] is the one place the layering, the default
/// and the check of an option meet, so `Cli::resolve` reads as a table of options.
struct Layers<'a> {
    cli: &'a Options,
    file: &'a Options,
    origins: &'a Origins<'a>,
}

impl Layers<'_> {
    /// Option `id` (its field name): the flag's or variable's value, else the file's, else `default`,
    /// refused with `check`'s reason, named after where it came from, when out of range.
    fn pick<T>(
        &self,
        id: &str,
        field: impl Fn(&Options) -> Option<T>,
        default: impl FnOnce() -> T,
        check: impl FnOnce(&T) -> Result<(), String>,
    ) -> Result<T, ConfigError> {
        let from_cli = field(self.cli);
        let given = from_cli.is_some();
        let value = from_cli
            .or_else(|| field(self.file))
            .unwrap_or_else(default);
        check(&value).map_err(|reason| invalid(self.origin(id, given), reason))?;
        Ok(value)
    }

    /// Option `id` with no check.
    fn value<T>(&self, field: impl Fn(&Options) -> Option<T>, default: impl FnOnce() -> T) -> T {
        field(self.cli)
            .or_else(|| field(self.file))
            .unwrap_or_else(default)
    }

    /// Where option `id`'s value came from, for an error: `given` says the flag or variable gave it.
    fn origin(&self, id: &str, given: bool) -> String {
        self.origins.name(id, given)
    }
}

/// A check that accepts values in `range`, refusing others with `reason`.
fn within<T: PartialOrd>(
    range: std::ops::RangeInclusive<T>,
    reason: &'static str,
) -> impl FnOnce(&T) -> Result<(), String> {
    move |v| {
        if range.contains(v) {
            Ok(())
        } else {
            Err(reason.to_owned())
        }
    }
}

/// Reads and parses the YAML file.
pub fn load_file(path: &Path) -> Result<Options, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigError::ReadFile(path.to_path_buf(), e))?;
    if text.trim().is_empty() {
        return Ok(Options::default());
    }
    let whole_file_error = match yaml_serde::from_str::<Options>(&text) {
        Ok(options) => return Ok(options),
        Err(e) => e.to_string(),
    };
    // serde reports a bad value without its key: find the first key that fails on its own.
    let keys = top_level_keys(&text);
    let Ok(map) = yaml_serde::from_str::<yaml_serde::Mapping>(&text) else {
        // Not a mapping, or a key given twice (yaml_serde places that error at the mapping's start).
        let twice = keys.iter().enumerate().find_map(|(i, (key, line))| {
            let (_, again) = keys[i + 1..].iter().find(|(k, _)| k == key)?;
            Some(format!(
                "field {key}: given twice, at lines {line} and {again}"
            ))
        });
        return Err(ConfigError::ParseFile(
            path.to_path_buf(),
            twice.unwrap_or(whole_file_error),
        ));
    };
    let bad_field = map.into_iter().find_map(|(key, value)| {
        let mut one = yaml_serde::Mapping::new();
        one.insert(key.clone(), value);
        let e = yaml_serde::from_value::<Options>(yaml_serde::Value::Mapping(one)).err()?;
        let key = key
            .as_str()
            .map_or_else(|| format!("{key:?}"), str::to_owned);
        let at = keys
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, line)| format!(" (line {line})"))
            .unwrap_or_default();
        Some(format!("field {key}{at}: {e}"))
    });
    Err(ConfigError::ParseFile(
        path.to_path_buf(),
        bad_field.unwrap_or(whole_file_error),
    ))
}

/// The keys of a block mapping at the top of a config file, with their lines (from 1): lines that start
/// at column 0 with a plain or quoted key and a `:`, up to a second document. yaml_serde's tree keeps
/// no positions and its errors place some at the mapping's start, so a bad field's line is found here;
/// a flow-style file (`{a: 1}`) has none and its errors name no line.
fn top_level_keys(text: &str) -> Vec<(&str, usize)> {
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with("---") || line.starts_with("...") {
            if keys.is_empty() {
                continue;
            }
            break;
        }
        let Some(first) = line.chars().next() else {
            continue;
        };
        let (key, rest) = match first {
            q @ ('\'' | '"') => {
                let Some(end) = line[1..].find(q) else {
                    continue;
                };
                (&line[1..=end], &line[end + 2..])
            }
            c if c.is_whitespace() || "#-{[%&*!|>?:".contains(c) => continue,
            _ => {
                // A plain key ends at the first `:` followed by a space or the line's end.
                let Some((colon, _)) = line
                    .match_indices(':')
                    .find(|(i, _)| line[i + 1..].chars().next().is_none_or(char::is_whitespace))
                else {
                    continue;
                };
                (line[..colon].trim_end(), &line[colon..])
            }
        };
        if rest.trim_start().starts_with(':') {
            keys.push((key, n + 1));
        }
    }
    keys
}

impl Cli {
    /// Parses `args` (the first is the program name) and records where each value came from, so errors
    /// can name the environment variable rather than the flag. A value clap itself rejects from a
    /// `VITALS_*` variable is reported under the variable's name.
    pub fn parse_from_env<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        let matches = Cli::command()
            .try_get_matches_from(args.iter().cloned())
            .map_err(|e| name_env_in_error(e, &args))?;
        let mut cli = Cli::from_arg_matches(&matches)?;
        cli.sources = value_sources(&matches);
        cli.command_line_options = command_line_options(&matches);
        Ok(cli)
    }

    /// Merges flags/env (already in `self`) over the file over defaults, and validates.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let o = self.options;
        let file = match &o.config {
            Some(p) => load_file(p)?,
            None => Options::default(),
        };
        let origins = Origins {
            sources: &self.sources,
            file: o.config.as_deref(),
        };
        let layers = Layers {
            cli: &o,
            file: &file,
            origins: &origins,
        };
        let profiling = layers.value(|o| o.profiling, || true);
        let profile_continuous = continuous_settings(&o, &file, &origins, profiling)?;
        let forward = ForwardFlags::merge(&o, &file);
        let push = push_options(&o, &file, &origins);
        let flag_selected = o.pid.is_some() || o.pid_file.is_some() || o.process.is_some();
        // A selection on the command line or in the environment replaces the file's as a whole.
        let (pid, pid_file, process) = if flag_selected {
            (o.pid, o.pid_file.clone(), o.process.clone())
        } else {
            (file.pid, file.pid_file.clone(), file.process.clone())
        };
        let chosen = [pid.is_some(), pid_file.is_some(), process.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if chosen > 1 {
            let place = if flag_selected {
                "pid/pid-file/process".to_owned()
            } else {
                origins.name("pid/pid-file/process", false)
            };
            return Err(invalid(
                place,
                "give only one of --pid, --pid-file and --process",
            ));
        }
        let mut target = match (pid, pid_file, process) {
            (Some(0), _, _) => {
                return Err(invalid(
                    origins.name("pid", flag_selected),
                    "0 is not a process id",
                ))
            }
            (Some(p), _, _) => Some(TargetSpec::Select(Selection::Pid(p))),
            (_, Some(f), _) => Some(TargetSpec::Select(Selection::PidFile(f))),
            (_, _, Some(re)) => Some(TargetSpec::Select(Selection::Process(
                regex::Regex::new(&re).map_err(|e| {
                    invalid(
                        origins.name("process", flag_selected),
                        format!("not a valid regex: {e}"),
                    )
                })?,
            ))),
            _ => None,
        };
        let protocol = layers.value(|o| o.child_otlp_protocol, || OtlpProtocol::HttpProtobuf);
        if let Some(Command::Run { command }) = self.command {
            if target.is_some() {
                return Err(invalid(
                    "run",
                    "`vitals run` watches its own child; drop --pid, --pid-file and --process \
                     (and pid, pid-file, process from the config file and VITALS_* variables)",
                ));
            }
            target = Some(TargetSpec::Run { command, protocol });
        }
        // Named targets: the first becomes the main target unless --pid/--pid-file/--process/run chose one,
        // which is then named `app`.
        let named_from_cli = !o.target.is_empty();
        let named_texts = if named_from_cli {
            &o.target
        } else {
            &file.target
        };
        let mut named = Vec::new();
        for text in named_texts {
            let t = parse_named_target(text)
                .map_err(|e| invalid(origins.name("target", named_from_cli), e))?;
            if named.iter().any(|n: &NamedTarget| n.name == t.name)
                || (target.is_some() && t.name == MAIN_TARGET_NAME)
            {
                return Err(invalid(
                    origins.name("target", named_from_cli),
                    format!("target name {:?} is used twice", t.name),
                ));
            }
            named.push(t);
        }
        let (target_name, more_targets) = match (&target, named.is_empty()) {
            (_, true) => (None, Vec::new()),
            (Some(_), false) => (Some(MAIN_TARGET_NAME.to_owned()), named),
            (None, false) => {
                let first = named.remove(0);
                target = Some(TargetSpec::Select(first.selection));
                (Some(first.name), named)
            }
        };
        let run_mode = matches!(target, Some(TargetSpec::Run { .. }));
        let interval = layers.pick(
            "interval",
            |o| o.interval,
            || Duration::from_secs(1),
            |v| {
                if (Duration::from_millis(100)..=Duration::from_secs(3600)).contains(v) {
                    Ok(())
                } else {
                    Err(format!(
                        "{} is outside 100ms..1h",
                        humantime::format_duration(*v)
                    ))
                }
            },
        )?;
        // In `run` mode vitals usually runs on a workstation: keep /metrics off the network unless asked.
        let default_metrics_ip = if run_mode {
            [127, 0, 0, 1]
        } else {
            [0, 0, 0, 0]
        };
        let metrics_from = origins.name("metrics_addr", o.metrics_addr.is_some());
        let metrics_addr = o
            .metrics_addr
            .or(file.metrics_addr)
            .unwrap_or(SocketAddr::from((default_metrics_ip, DEFAULT_METRICS_PORT)));
        let receiver = |v: Option<ReceiverAddr>, port: u16| match v {
            Some(ReceiverAddr::Off) => None,
            Some(ReceiverAddr::At(a)) => Some(a),
            None => Some(SocketAddr::from(([127, 0, 0, 1], port))),
        };
        let otlp_grpc_addr = receiver(o.otlp_grpc_addr.or(file.otlp_grpc_addr), 4317);
        let otlp_http_addr = receiver(o.otlp_http_addr.or(file.otlp_http_addr), 4318);
        let mut warnings = Vec::new();
        let forward = resolve_forward(
            forward,
            &origins,
            [otlp_grpc_addr, otlp_http_addr],
            &mut warnings,
        )?;
        let push = push
            .resolve(
                o.forward_drain_timeout
                    .or(file.forward_drain_timeout)
                    .unwrap_or(ForwardSettings::DEFAULT_DRAIN_TIMEOUT),
            )
            .map_err(ConfigError::Push)?;
        if let Some(p) = &push {
            let url = &p.upstream.url;
            let local = matches!(
                url.host(),
                Some("127.0.0.1" | "localhost" | "[::1]" | "0.0.0.0" | "[::]")
            );
            if local
                && [otlp_grpc_addr, otlp_http_addr]
                    .iter()
                    .flatten()
                    .any(|a| Some(a.port()) == url.port_u16())
            {
                return Err(ConfigError::Push(format!(
                    "push endpoint {url} is vitals' own OTLP receiver (check --push-endpoint)"
                )));
            }
        }
        if metrics_addr.port() != 0
            && (Some(metrics_addr) == otlp_grpc_addr || Some(metrics_addr) == otlp_http_addr)
        {
            return Err(invalid(
                metrics_from,
                format!("{metrics_addr} is also an OTLP receiver address"),
            ));
        }
        let otlp_max_request_bytes = layers.pick(
            "otlp_max_request_bytes",
            |o| o.otlp_max_request_bytes,
            || 4 << 20,
            |v| {
                if (1024..=256 << 20).contains(v) {
                    Ok(())
                } else {
                    Err(format!("{v} is outside 1 KiB..256 MiB"))
                }
            },
        )?;
        let otlp_max_concurrent_requests = layers.pick(
            "otlp_max_concurrent_requests",
            |o| o.otlp_max_concurrent_requests,
            || 8,
            within(1..=1024, "must be 1..1024"),
        )?;
        let series_limit = layers.pick(
            "series_limit",
            |o| o.series_limit,
            || 2000,
            within(1..=1_000_000, "must be 1..1000000"),
        )?;
        let series_ttl = layers.pick(
            "series_ttl",
            |o| o.series_ttl,
            || Duration::from_secs(3600),
            within(
                Duration::from_secs(1)..=Duration::MAX,
                "must be at least 1s",
            ),
        )?;
        let growth_windows = layers.pick(
            "growth_windows",
            |o| o.growth_windows.clone(),
            || {
                vec![
                    Duration::from_secs(900),
                    Duration::from_secs(3600),
                    Duration::from_secs(6 * 3600),
                ]
            },
            |w: &Vec<Duration>| {
                let each = Duration::from_secs(10)..=Duration::from_secs(7 * 86400);
                if w.is_empty() || w.len() > 6 || w.iter().any(|w| !each.contains(w)) {
                    Err("give 1 to 6 windows, each 10s..7d".to_owned())
                } else {
                    Ok(())
                }
            },
        )?;
        let idle_interval = layers.pick(
            "idle_interval",
            |o| o.idle_interval,
            || idle_interval_for(interval, &growth_windows),
            |v| {
                if *v < interval || *v > Duration::from_secs(3600) {
                    Err(format!(
                        "{} is outside {}..1h (at least the interval)",
                        humantime::format_duration(*v),
                        humantime::format_duration(interval)
                    ))
                } else {
                    Ok(())
                }
            },
        )?;
        let per_hour = layers.pick(
            "leak_threshold_bytes_per_hour",
            |o| o.leak_threshold_bytes_per_hour,
            || 10e6,
            |v| {
                if v.is_finite() && *v > 0.0 {
                    Ok(())
                } else {
                    Err("must be a positive number".to_owned())
                }
            },
        )?;
        let log_level = layers.pick(
            "log_level",
            |o| o.log_level.clone(),
            || "info".to_owned(),
            |v| check_log_level(v),
        )?;
        let hints_min_history = layers.pick(
            "hints_min_history",
            |o| o.hints_min_history,
            || Duration::from_secs(600),
            within(
                Duration::from_secs(1)..=Duration::MAX,
                "must be at least 1s",
            ),
        )?;
        let max_tree_processes = layers.pick(
            "max_tree_processes",
            |o| o.max_tree_processes,
            || DEFAULT_MAX_TREE_PROCESSES,
            within(1..=100_000, "must be between 1 and 100000"),
        )?;
        let profile_stack_bytes = layers.pick(
            "profile_stack_bytes",
            |o| o.profile_stack_bytes,
            || 16 << 10,
            within(0..=65_528, "must be 0..65528 (the kernel's limit)"),
        )?;
        let db_trace_settle = layers.pick(
            "db_trace_settle",
            |o| o.db_trace_settle,
            || Duration::from_secs(10),
            within(
                Duration::from_millis(100)..=Duration::from_secs(50),
                "must be between 100ms and 50s (a trace is judged at 60s of age anyway)",
            ),
        )?;
        Ok(Config {
            profiling,
            profile_stack_bytes,
            profile_continuous,
            forward,
            push,
            warnings,
            hints_min_history,
            db_trace_settle,
            growth_windows,
            leak_threshold: per_hour / 3600.0,
            otlp_max_request_bytes,
            otlp_max_concurrent_requests,
            series_limit,
            series_ttl,
            promote_resource_attributes: layers
                .value(|o| o.promote_resource_attributes.clone(), Vec::new),
            target,
            target_name,
            more_targets,
            metrics_addr,
            web_config_file: o.web_config_file.clone(),
            otlp_grpc_addr,
            otlp_http_addr,
            interval,
            idle_interval,
            proc_root: layers.value(|o| o.proc_root.clone(), || PathBuf::from("/proc")),
            cgroup_root: layers.value(
                |o| o.cgroup_root.clone(),
                || PathBuf::from("/sys/fs/cgroup"),
            ),
            pss: layers.value(|o| o.pss, || false),
            kubernetes_labels: layers.value(|o| o.kubernetes_labels, || false),
            max_tree_processes,
            log_format: layers.value(|o| o.log_format, || LogFormat::Text),
            log_level,
            log_file: layers.value(|o| o.log_file.clone().map(Some), || None),
        })
    }
}

/// Default cap on the processes of the target's tree read each tick (see `--max-tree-processes`).
pub const DEFAULT_MAX_TREE_PROCESSES: usize = 1000;

/// How often a sampler reads its target while nobody watches the live page (see [`crate::cadence`]), at
/// most: scrapes and pushes get fresher readings, and each reading puts the next idle one off by this
/// much. 20 s is two thirds of a bucket of the default 15-minute growth window (30 s), so timer jitter
/// never leaves a bucket without a reading, and longer than the common 15 s scrape interval, whose
/// readings are then the only ones taken.
pub const DEFAULT_IDLE_INTERVAL: Duration = Duration::from_secs(20);

/// Buckets of a memory growth window (`signal::memory`, whose tests keep the two equal): the idle pace
/// leaves none without a reading.
pub const GROWTH_WINDOW_BUCKETS: u32 = 30;

/// The idle interval when none is given: [`DEFAULT_IDLE_INTERVAL`], shorter when a growth window is so
/// short that a reading every 10 s would leave its buckets empty (a thirtieth of the shortest window), and
/// never below the interval.
fn idle_interval_for(interval: Duration, growth_windows: &[Duration]) -> Duration {
    let shortest = growth_windows
        .iter()
        .min()
        .copied()
        .unwrap_or(Duration::MAX);
    DEFAULT_IDLE_INTERVAL
        .min(shortest / GROWTH_WINDOW_BUCKETS)
        .max(interval)
}

/// The `--push-*` options, flags over file, each with the name of where it came from.
fn push_options(o: &Options, file: &Options, origins: &Origins<'_>) -> PushOptions {
    fn named<T: Clone>(
        cli: &Option<T>,
        file: &Option<T>,
        id: &str,
        origins: &Origins<'_>,
    ) -> Named<T> {
        match (cli, file) {
            (Some(v), _) => Some((v.clone(), origins.name(id, true))),
            (None, Some(v)) => Some((v.clone(), origins.name(id, false))),
            (None, None) => None,
        }
    }
    PushOptions {
        endpoint: named(
            &o.push_endpoint,
            &file.push_endpoint,
            "push_endpoint",
            origins,
        ),
        protocol: named(
            &o.push_protocol,
            &file.push_protocol,
            "push_protocol",
            origins,
        ),
        interval: named(
            &o.push_interval,
            &file.push_interval,
            "push_interval",
            origins,
        ),
        headers: named(&o.push_headers, &file.push_headers, "push_headers", origins),
        compression: named(
            &o.push_compression,
            &file.push_compression,
            "push_compression",
            origins,
        ),
        timeout: named(&o.push_timeout, &file.push_timeout, "push_timeout", origins),
        certificate: named(
            &o.push_certificate,
            &file.push_certificate,
            "push_certificate",
            origins,
        ),
        client_certificate: named(
            &o.push_client_certificate,
            &file.push_client_certificate,
            "push_client_certificate",
            origins,
        ),
        client_key: named(
            &o.push_client_key,
            &file.push_client_key,
            "push_client_key",
            origins,
        ),
        service_name: named(
            &o.push_service_name,
            &file.push_service_name,
            "push_service_name",
            origins,
        ),
        histograms: named(
            &o.push_histograms,
            &file.push_histograms,
            "push_histograms",
            origins,
        ),
    }
}

/// The `--forward-*` options, flags over file, taken before the options are consumed.
struct ForwardFlags {
    options: ForwardOptions,
    queue_bytes: Option<u64>,
    queue_bytes_from_cli: bool,
    drain_timeout: Option<Duration>,
}

impl ForwardFlags {
    fn merge(o: &Options, file: &Options) -> Self {
        let pick = |a: &Option<String>, b: &Option<String>| a.clone().or_else(|| b.clone());
        ForwardFlags {
            options: ForwardOptions {
                endpoint: pick(&o.forward_endpoint, &file.forward_endpoint),
                signal_endpoints: [
                    pick(&o.forward_traces_endpoint, &file.forward_traces_endpoint),
                    pick(&o.forward_metrics_endpoint, &file.forward_metrics_endpoint),
                    pick(&o.forward_logs_endpoint, &file.forward_logs_endpoint),
                ],
                protocol: pick(&o.forward_protocol, &file.forward_protocol),
                headers: pick(&o.forward_headers, &file.forward_headers),
                certificate: pick(&o.forward_certificate, &file.forward_certificate),
                client_certificate: pick(
                    &o.forward_client_certificate,
                    &file.forward_client_certificate,
                ),
                client_key: pick(&o.forward_client_key, &file.forward_client_key),
                compression: pick(&o.forward_compression, &file.forward_compression),
                timeout: o.forward_timeout.or(file.forward_timeout),
            },
            queue_bytes: o.forward_queue_bytes.or(file.forward_queue_bytes),
            queue_bytes_from_cli: o.forward_queue_bytes.is_some(),
            drain_timeout: o.forward_drain_timeout.or(file.forward_drain_timeout),
        }
    }
}

/// The forwarding settings from the `--forward-*` options over the file, with the standard
/// `OTEL_EXPORTER_OTLP_*` variables of vitals' own environment filling in.
fn resolve_forward(
    flags: ForwardFlags,
    origins: &Origins<'_>,
    receivers: [Option<SocketAddr>; 2],
    warnings: &mut Vec<String>,
) -> Result<Option<ForwardSettings>, ConfigError> {
    let options = flags.options;
    let env = |k: &str| std::env::var(k).ok();
    let mut upstreams = options.resolve(&env).map_err(ConfigError::Forward)?;
    refuse_loops(&options, &mut upstreams, receivers, warnings)?;
    let queue_bytes = flags
        .queue_bytes
        .unwrap_or(ForwardSettings::DEFAULT_QUEUE_BYTES);
    if !(64 << 10..=4 << 30).contains(&queue_bytes) {
        return Err(invalid(
            origins.name("forward_queue_bytes", flags.queue_bytes_from_cli),
            format!("{queue_bytes} is outside 64 KiB..4 GiB"),
        ));
    }
    let settings = ForwardSettings {
        upstreams,
        queue_bytes,
        drain_timeout: flags
            .drain_timeout
            .unwrap_or(ForwardSettings::DEFAULT_DRAIN_TIMEOUT),
        retry: RetryPolicy::OTLP,
    };
    Ok(settings.enabled().then_some(settings))
}

/// Forwarding into vitals' own receiver would loop every request forever. Asked for with an option, that
/// is an error; taken from an `OTEL_EXPORTER_OTLP_*` variable (a developer's shell that points SDKs at
/// localhost:4318, where vitals now listens), that signal is left unforwarded with a warning.
fn refuse_loops(
    options: &ForwardOptions,
    upstreams: &mut [Option<Upstream>; 3],
    receivers: [Option<SocketAddr>; 2],
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    for (signal, slot) in upstreams.iter_mut().enumerate() {
        let Some(up) = slot else { continue };
        let local = matches!(
            up.url.host(),
            Some("127.0.0.1" | "localhost" | "[::1]" | "0.0.0.0" | "[::]")
        );
        let port = up.url.port_u16();
        if !(local && receivers.iter().flatten().any(|a| Some(a.port()) == port)) {
            continue;
        }
        let from_option = options.endpoint.is_some() || options.signal_endpoints[signal].is_some();
        if from_option {
            return Err(ConfigError::Forward(format!(
                "forwarding endpoint {} is vitals' own OTLP receiver (check --forward-endpoint)",
                up.url
            )));
        }
        warnings.push(format!(
            "not forwarding to {}: OTEL_EXPORTER_OTLP_* in vitals' environment points at vitals' own \
             OTLP receiver",
            up.url
        ));
        *slot = None;
    }
    Ok(())
}

/// Where each option in `matches` came from (command line or environment), by field name.
fn value_sources(matches: &ArgMatches) -> HashMap<String, ValueSource> {
    let mut sources = HashMap::new();
    for id in matches.ids() {
        if let Some(src) = matches.value_source(id.as_str()) {
            sources.insert(id.as_str().to_owned(), src);
        }
    }
    sources
}

/// The shared options given on the command line, each as `--name=value` (`--name` for a flag).
fn command_line_options(matches: &ArgMatches) -> Vec<String> {
    let mut out = Vec::new();
    for arg in Cli::command().get_arguments() {
        let (Some(long), id) = (arg.get_long(), arg.get_id().as_str()) else {
            continue;
        };
        if matches.value_source(id) != Some(ValueSource::CommandLine) {
            continue;
        }
        match matches.get_raw(id) {
            Some(values) if arg.get_action().takes_values() => {
                out.extend(values.map(|v| format!("--{long}={}", v.to_string_lossy())))
            }
            _ => out.push(format!("--{long}")),
        }
    }
    out
}

/// Rewrites clap's "invalid value for '--interval <INTERVAL>'" when the value came from `VITALS_INTERVAL`
/// rather than the command line, so the user looks in the right place.
fn name_env_in_error(e: clap::Error, args: &[std::ffi::OsString]) -> clap::Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return e;
    }
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return e;
    };
    let Some(long) = arg
        .split_whitespace()
        .next()
        .and_then(|a| a.strip_prefix("--"))
    else {
        return e;
    };
    let on_command_line = args.iter().any(|a| {
        a.to_str()
            .is_some_and(|a| a == format!("--{long}") || a.starts_with(&format!("--{long}=")))
    });
    let var = format!("VITALS_{}", long.replace('-', "_").to_ascii_uppercase());
    match std::env::var(&var) {
        Ok(value) if !on_command_line => {
            let reason = std::error::Error::source(&e)
                .map(|c| c.to_string())
                .unwrap_or_else(|| "not accepted".to_owned());
            let valid = match e.get(ContextKind::ValidValue) {
                Some(v) => format!(" (possible values: {v})"),
                None => String::new(),
            };
            clap::Error::raw(
                ErrorKind::ValueValidation,
                format!("environment variable {var}: invalid value {value:?}: {reason}{valid}\n"),
            )
        }
        _ => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let cli = Cli::parse_from_env(std::iter::once("vitals").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.resolve().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let c = parse(&["--pid", "42"]).unwrap();
        assert!(matches!(
            c.target,
            Some(TargetSpec::Select(Selection::Pid(42)))
        ));
        assert_eq!(c.metrics_addr.to_string(), "0.0.0.0:19464");
        assert_eq!(c.otlp_grpc_addr, Some("127.0.0.1:4317".parse().unwrap()));
        assert_eq!(c.interval, Duration::from_secs(1));
        assert!(!c.pss);
    }

    /// Each option's default is written in its help (`[default: X]`) and applied in `resolve`: the two
    /// are checked equal here, so neither can change alone.
    #[test]
    fn every_default_in_the_help_is_the_default_applied() {
        let help: HashMap<String, String> = Cli::command()
            .get_arguments()
            .filter_map(|a| Some((a.get_long()?.to_owned(), a.get_help()?.to_string())))
            .collect();
        let shown = |long: &str| -> String {
            let h = help.get(long).unwrap_or_else(|| panic!("no --{long}"));
            let at = h
                .find("[default: ")
                .unwrap_or_else(|| panic!("--{long} gives no default: {h}"));
            h[at + "[default: ".len()..]
                .split([']', ';', ',', '('])
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        let d = parse(&["--pid", "1"]).unwrap();
        let human = |v: Duration| humantime::format_duration(v).to_string();
        let bytes = |v: u64| format!("{v}");
        let mut applied: Vec<(&str, String)> = vec![
            ("interval", human(d.interval)),
            ("idle-interval", human(d.idle_interval)),
            ("metrics-addr", d.metrics_addr.to_string()),
            ("otlp-grpc-addr", format!("{:?}", d.otlp_grpc_addr.unwrap())),
            ("otlp-http-addr", format!("{:?}", d.otlp_http_addr.unwrap())),
            ("proc-root", d.proc_root.display().to_string()),
            ("cgroup-root", d.cgroup_root.display().to_string()),
            ("pss", d.pss.to_string()),
            ("kubernetes-labels", d.kubernetes_labels.to_string()),
            ("profiling", d.profiling.to_string()),
            ("profile-stack-bytes", bytes(d.profile_stack_bytes as u64)),
            (
                "otlp-max-request-bytes",
                bytes(d.otlp_max_request_bytes as u64),
            ),
            (
                "otlp-max-concurrent-requests",
                d.otlp_max_concurrent_requests.to_string(),
            ),
            ("series-limit", d.series_limit.to_string()),
            ("series-ttl", human(d.series_ttl)),
            ("growth-windows", human(d.growth_windows[0])),
            (
                "leak-threshold-bytes-per-hour",
                format!("{}", d.leak_threshold * 3600.0),
            ),
            ("hints-min-history", human(d.hints_min_history)),
            ("max-tree-processes", d.max_tree_processes.to_string()),
            ("db-trace-settle", human(d.db_trace_settle)),
            ("log-level", d.log_level.clone()),
            ("log-format", format!("{:?}", d.log_format).to_lowercase()),
            (
                "profile-continuous",
                d.profile_continuous.is_some().to_string(),
            ),
        ];
        let mut wrong = Vec::new();
        for (long, value) in &applied {
            if shown(long) != *value {
                wrong.push(format!(
                    "--{long}: help says {:?}, resolve applies {value:?}",
                    shown(long)
                ));
            }
        }
        let c = parse(&["--pid", "1", "--profile-continuous"]).unwrap();
        let c = c.profile_continuous.unwrap();
        for (long, value) in [
            ("profile-continuous-hz", c.hz.to_string()),
            ("profile-ring-bytes", c.ring_bytes.to_string()),
            ("profile-ring-window", human(c.window)),
        ] {
            if shown(long) != value {
                wrong.push(format!(
                    "--{long}: help says {:?}, resolve applies {value:?}",
                    shown(long)
                ));
            }
            applied.push((long, value));
        }
        // docs/reference.md's option table gives the same defaults.
        let reference = include_str!("../../docs/reference.md");
        for (long, value) in &applied {
            let row = reference
                .lines()
                .find(|l| l.starts_with(&format!("| `--{long}` |")))
                .unwrap_or_else(|| panic!("docs/reference.md has no row for --{long}"));
            let cell = row.split('|').nth(2).unwrap_or_default().trim();
            let documented = match cell.split(['`', ';']).find(|t| !t.trim().is_empty()) {
                Some("off") => "false",
                Some("on") => "true",
                Some(t) => t.trim().split(',').next().unwrap_or_default(),
                None => "",
            };
            if documented != value {
                wrong.push(format!(
                    "--{long}: docs/reference.md says {documented:?}, resolve applies {value:?}"
                ));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        // The run mode's own default address.
        let r = parse(&["run", "--", "true"]).unwrap();
        assert!(help["metrics-addr"].contains(&format!("{} in `run` mode", r.metrics_addr)));
    }

    #[test]
    fn the_idle_interval_leaves_no_growth_bucket_empty() {
        let c = parse(&["--pid", "1"]).unwrap();
        assert_eq!(c.idle_interval, Duration::from_secs(20));
        // A 5-minute window's buckets are 10 s.
        let c = parse(&["--pid", "1", "--growth-windows", "5m,1h"]).unwrap();
        assert_eq!(c.idle_interval, Duration::from_secs(10));
        // 20 s windows have buckets of 0.67 s: readings that often, but never faster than the interval.
        let c = parse(&[
            "--pid",
            "1",
            "--interval",
            "250ms",
            "--growth-windows",
            "20s,40s",
        ])
        .unwrap();
        assert_eq!(c.idle_interval, Duration::from_secs(20) / 30);
        let c = parse(&["--pid", "1", "--interval", "2s", "--growth-windows", "20s"]).unwrap();
        assert_eq!(c.idle_interval, Duration::from_secs(2));
        let c = parse(&["--pid", "1", "--interval", "30s"]).unwrap();
        assert_eq!(c.idle_interval, Duration::from_secs(30));
        // Given, it is kept, within --interval..1h.
        let c = parse(&["--pid", "1", "--idle-interval", "1m"]).unwrap();
        assert_eq!(c.idle_interval, Duration::from_secs(60));
        let e = parse(&["--pid", "1", "--interval", "5s", "--idle-interval", "1s"]).unwrap_err();
        assert!(
            e.starts_with("--idle-interval: 1s is outside 5s..1h"),
            "{e}"
        );
    }

    #[test]
    fn continuous_profiling_is_off_by_default_and_its_bounds_are_checked() {
        assert_eq!(parse(&["--pid", "1"]).unwrap().profile_continuous, None);
        let c = parse(&["--pid", "1", "--profile-continuous=true"]).unwrap();
        assert_eq!(
            c.profile_continuous,
            Some(ContinuousProfile {
                hz: 19,
                ring_bytes: 8 << 20,
                window: Duration::from_secs(300),
            })
        );
        let e = parse(&["--profile-continuous", "--profile-continuous-hz", "0"]).unwrap_err();
        assert!(e.contains("--profile-continuous-hz"), "{e}");
        let e = parse(&["--profile-continuous", "--profile-ring-bytes", "1000"]).unwrap_err();
        assert!(
            e.contains("--profile-ring-bytes") && e.contains("262144"),
            "{e}"
        );
        let e = parse(&["--profile-continuous", "--profile-ring-window", "10s"]).unwrap_err();
        assert!(e.contains("--profile-ring-window"), "{e}");
        let e = parse(&["--profile-continuous", "--profiling=false"]).unwrap_err();
        assert!(
            e.contains("--profile-continuous") && e.contains("profiling"),
            "{e}"
        );
        // Without the flag the other settings are not checked: nothing runs with them.
        assert!(parse(&["--profile-continuous-hz", "0"]).is_ok());
    }

    #[test]
    fn run_takes_the_rest_of_the_line() {
        let c = parse(&["--interval", "500ms", "run", "--", "sh", "-c", "exit 3"]).unwrap();
        match c.target {
            Some(TargetSpec::Run { command, protocol }) => {
                assert_eq!(command, ["sh", "-c", "exit 3"]);
                assert_eq!(protocol, OtlpProtocol::HttpProtobuf);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.interval, Duration::from_millis(500));
        assert_eq!(
            c.metrics_addr.to_string(),
            "127.0.0.1:19464",
            "run mode keeps /metrics on loopback by default"
        );
        let c = parse(&["run", "--metrics-addr", "127.0.0.1:1", "--", "true"]).unwrap();
        assert_eq!(c.metrics_addr.to_string(), "127.0.0.1:1");
        let c = parse(&["run", "--child-otlp-protocol", "grpc", "--", "true"]).unwrap();
        assert!(matches!(
            c.target,
            Some(TargetSpec::Run {
                protocol: OtlpProtocol::Grpc,
                ..
            })
        ));
    }

    #[test]
    fn host_names_and_off() {
        let c = parse(&[
            "--metrics-addr",
            "localhost:0",
            "--otlp-grpc-addr",
            "off",
            "--otlp-http-addr",
            "OFF",
        ])
        .unwrap();
        assert!(c.metrics_addr.ip().is_loopback(), "{}", c.metrics_addr);
        assert_eq!(c.otlp_grpc_addr, None);
        assert_eq!(c.otlp_http_addr, None);
        let e = parse(&["--metrics-addr", "19464"]).unwrap_err();
        assert!(
            e.contains("--metrics-addr") && e.contains("HOST:PORT"),
            "{e}"
        );
        let e = parse(&["--metrics-addr", "no-such-host.invalid:1"]).unwrap_err();
        assert!(e.contains("--metrics-addr"), "{e}");
    }

    #[test]
    fn log_levels() {
        for ok in [
            "info",
            "WARN",
            "off",
            "warn,vitals::sampler=debug",
            "vitals=trace",
        ] {
            check_log_level(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["warning", "inf", "vitals=loud", "info,verbose"] {
            let e = check_log_level(bad).unwrap_err();
            assert!(e.contains("not a log level"), "{bad}: {e}");
        }
        let e = parse(&["--log-level", "warning"]).unwrap_err();
        assert!(e.starts_with("--log-level: "), "{e}");
    }

    #[test]
    fn errors_name_the_flag() {
        assert!(parse(&["--pid", "1", "--process", "x"])
            .unwrap_err()
            .contains("--process"));
        assert!(parse(&["--process", "("])
            .unwrap_err()
            .contains("--process"));
        assert!(parse(&["--interval", "10ms", "--pid", "1"])
            .unwrap_err()
            .contains("--interval"));
        assert!(parse(&["--interval", "soon"])
            .unwrap_err()
            .contains("--interval"));
        assert!(parse(&["--pid", "1", "run", "--", "true"])
            .unwrap_err()
            .contains("run"));
    }

    #[test]
    fn file_fills_in_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("vitals.yaml");
        std::fs::write(
            &f,
            "process: 'java'\ninterval: 2s\nmetrics-addr: 127.0.0.1:9999\n",
        )
        .unwrap();
        let c = parse(&[
            "--config",
            f.to_str().unwrap(),
            "--metrics-addr",
            "127.0.0.1:7777",
        ])
        .unwrap();
        assert_eq!(c.interval, Duration::from_secs(2));
        assert_eq!(c.metrics_addr.to_string(), "127.0.0.1:7777");
        assert!(matches!(
            c.target,
            Some(TargetSpec::Select(Selection::Process(_)))
        ));
        let c = parse(&["--config", f.to_str().unwrap(), "--pid", "5"]).unwrap();
        assert!(
            matches!(c.target, Some(TargetSpec::Select(Selection::Pid(5)))),
            "a flag selection replaces the file's"
        );
    }

    #[test]
    fn named_targets() {
        let c = parse(&[
            "--target",
            "web=process:gunicorn: master",
            "--target",
            "proxy=pid-file:/run/nginx.pid",
        ])
        .unwrap();
        assert_eq!(c.target_name.as_deref(), Some("web"));
        assert!(
            matches!(&c.target, Some(TargetSpec::Select(Selection::Process(re))) if re.as_str() == "gunicorn: master")
        );
        assert_eq!(c.more_targets.len(), 1);
        assert_eq!(c.more_targets[0].name, "proxy");
        // Beside run (or --pid, --pid-file, --process), the selected target is `app`.
        let c = parse(&["--target", "proxy=pid:7", "run", "--", "sleep", "1"]).unwrap();
        assert_eq!(c.target_name.as_deref(), Some("app"));
        assert!(matches!(c.target, Some(TargetSpec::Run { .. })));
        // One unnamed selector: no name, no label.
        assert_eq!(parse(&["--pid", "3"]).unwrap().target_name, None);
        for (bad, says) in [
            ("proxy", "NAME=SPEC"),
            ("a b=pid:1", "target name"),
            ("x=pid:0", "not a process id"),
            ("x=socket:1", "unknown kind"),
            ("x=process:(", "not a valid regex"),
        ] {
            let err = parse(&["--target", bad]).unwrap_err();
            assert!(
                err.contains(says) && err.contains("--target"),
                "{bad}: {err}"
            );
        }
        let err = parse(&["--target", "a=pid:1", "--target", "a=pid:2"]).unwrap_err();
        assert!(err.contains("used twice"), "{err}");
        let err = parse(&["--target", "app=pid:1", "--pid", "2"]).unwrap_err();
        assert!(err.contains("used twice"), "{err}");
        let err = parse(&["--max-tree-processes", "0", "--pid", "2"]).unwrap_err();
        assert!(err.contains("--max-tree-processes"), "{err}");
    }

    #[test]
    fn forwarding_options() {
        assert!(parse(&[]).unwrap().forward.is_none());
        let c = parse(&[
            "--forward-endpoint",
            "http://collector:4318",
            "--forward-queue-bytes",
            "1048576",
            "--forward-drain-timeout",
            "3s",
        ])
        .unwrap();
        let f = c.forward.unwrap();
        assert_eq!(
            f.upstreams[0].as_ref().unwrap().url,
            "http://collector:4318/v1/traces"
        );
        assert_eq!(f.queue_bytes, 1 << 20);
        assert_eq!(f.drain_timeout, Duration::from_secs(3));
        // Forwarding into vitals' own receiver would loop.
        let e = parse(&["--forward-endpoint", "http://127.0.0.1:4318"]).unwrap_err();
        assert!(e.contains("own OTLP receiver"), "{e}");
        // From the environment (a developer's shell pointing SDKs at localhost:4318), that signal is
        // left unforwarded with a warning instead.
        let env = |k: &str| {
            (k == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://localhost:4318".to_owned())
        };
        let options = ForwardOptions::default();
        let mut upstreams = options.resolve(&env).unwrap();
        let mut warnings = Vec::new();
        let receivers = [None, Some("127.0.0.1:4318".parse().unwrap())];
        refuse_loops(&options, &mut upstreams, receivers, &mut warnings).unwrap();
        let env_only = upstreams;
        assert!(env_only.iter().all(Option::is_none), "{env_only:?}");
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings[0].contains("own OTLP receiver"), "{warnings:?}");
        let e = parse(&[
            "--forward-endpoint",
            "http://collector:4318",
            "--forward-queue-bytes",
            "10",
        ])
        .unwrap_err();
        assert!(e.starts_with("--forward-queue-bytes: 10 is outside"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vitals.yaml");
        std::fs::write(
            &file,
            "forward-endpoint: http://collector:4317\nforward-protocol: grpc\n",
        )
        .unwrap();
        let c = parse(&["--config", file.to_str().unwrap()]).unwrap();
        let up = c.forward.unwrap().upstreams[2].clone().unwrap();
        assert_eq!(up.url, "http://collector:4317/");
        assert_eq!(up.protocol, OtlpProtocol::Grpc);
    }

    #[test]
    fn push_options() {
        assert!(parse(&[]).unwrap().push.is_none());
        let c = parse(&[
            "--push-endpoint",
            "http://collector:4318",
            "--push-interval",
            "30s",
            "--push-service-name",
            "shop-vitals",
            "--forward-drain-timeout",
            "4s",
        ])
        .unwrap();
        let p = c.push.unwrap();
        assert_eq!(p.upstream.url, "http://collector:4318/v1/metrics");
        assert_eq!(p.interval, Duration::from_secs(30));
        assert_eq!(p.service_name, "shop-vitals");
        assert_eq!(p.grace, Duration::from_secs(4));
        assert!(c.forward.is_none(), "push does not turn forwarding on");
        let e = parse(&["--push-endpoint", "http://127.0.0.1:4318"]).unwrap_err();
        assert!(e.contains("own OTLP receiver"), "{e}");
        let e = parse(&[
            "--push-endpoint",
            "http://c:4318",
            "--push-interval",
            "100ms",
        ])
        .unwrap_err();
        assert!(e.starts_with("--push-interval: 100ms is outside"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vitals.yaml");
        std::fs::write(
            &file,
            "push-endpoint: http://collector:4317\npush-protocol: grpc2\n",
        )
        .unwrap();
        let e = parse(&["--config", file.to_str().unwrap()]).unwrap_err();
        assert!(e.contains("field push-protocol"), "{e}");
    }

    #[test]
    fn file_errors_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("vitals.yaml");
        std::fs::write(&f, "intervl: 2s\n").unwrap();
        let e = parse(&["--config", f.to_str().unwrap()]).unwrap_err();
        assert!(e.contains("intervl") && e.contains("vitals.yaml"), "{e}");
        std::fs::write(&f, "interval: whenever\n").unwrap();
        let e = parse(&["--config", f.to_str().unwrap()]).unwrap_err();
        assert!(
            e.starts_with(&format!(
                "config file {}: field interval (line 1): ",
                f.display()
            )),
            "{e}"
        );
        std::fs::write(&f, "interval: 10ms\n").unwrap();
        let e = parse(&["--config", f.to_str().unwrap()]).unwrap_err();
        assert_eq!(
            e,
            format!(
                "config file {}: field interval (line 1): 10ms is outside 100ms..1h",
                f.display()
            )
        );
        std::fs::write(&f, "log-level: inf\n").unwrap();
        let e = parse(&["--config", f.to_str().unwrap()]).unwrap_err();
        assert!(
            e.contains("field log-level") && e.contains("\"inf\""),
            "{e}"
        );
        std::fs::write(&f, "child-otlp-protocol: grpc\notlp-http-addr: 'off'\n").unwrap();
        let c = parse(&["--config", f.to_str().unwrap(), "run", "--", "true"]).unwrap();
        assert!(matches!(
            c.target,
            Some(TargetSpec::Run {
                protocol: OtlpProtocol::Grpc,
                ..
            })
        ));
        assert_eq!(c.otlp_http_addr, None);
        let e = parse(&["--config", "/nonexistent/v.yaml"]).unwrap_err();
        assert!(e.contains("/nonexistent/v.yaml"), "{e}");
    }

    /// The file is read as YAML 1.2 (yaml_serde): what YAML 1.1 readers take for booleans, octal or
    /// merged mappings is refused with the field and line, never read as a guess.
    #[test]
    fn file_yaml_1_1_forms_are_refused_with_field_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("vitals.yaml");
        let file = f.to_str().unwrap();
        let refused = |yaml: &str| {
            std::fs::write(&f, yaml).unwrap();
            parse(&["--config", file]).unwrap_err()
        };
        let head = format!("config file {}: ", f.display());
        for (yaml, want) in [
            (
                "interval: 2s\npss: yes\n",
                "field pss (line 2): invalid type: string \"yes\", expected a boolean",
            ),
            (
                "# comment\n\nprofiling: on\n",
                "field profiling (line 3): invalid type: string \"on\", expected a boolean",
            ),
            (
                "interval: 2s\nseries-limit: 0777\n",
                "field series-limit (line 2): invalid type: string \"0777\", expected usize",
            ),
            (
                "series-limit: 1_000\n",
                "field series-limit (line 1): invalid type: string \"1_000\", expected usize",
            ),
            (
                "interval: 2s\nseries-limit: 99999999999999999999999\n",
                // Too big for yaml_serde's own tree too: the whole file's error, which names it.
                "series-limit: invalid type: integer `99999999999999999999999` as u128, expected usize at line 2 column 15",
            ),
            (
                "series-limit: '100'\n",
                "field series-limit (line 1): invalid type: string \"100\", expected usize",
            ),
        ] {
            assert_eq!(refused(yaml), format!("{head}{want}"), "{yaml}");
        }
        // A merge key is not merged: `<<` is a field vitals does not know.
        let e = refused("interval: 2s\n<<: {pss: true}\n");
        assert!(
            e.starts_with(&format!("{head}field << (line 2): unknown field `<<`")),
            "{e}"
        );
        // A key given twice is refused, not last-wins.
        let e = refused("interval: 2s\npss: true\n\"interval\" : 5s\n");
        assert_eq!(
            e,
            format!("{head}field interval: given twice, at lines 1 and 3")
        );
        // A bad value's line is its key's, also for a null the library places at the file's start.
        let e = refused("# vitals\npss: true\ninterval: ~\n");
        assert_eq!(
            e,
            format!("{head}field interval (line 3): invalid type: unit value, expected a string")
        );
        let e = refused("{pss: true, interval: 3}\n");
        assert_eq!(
            e,
            format!("{head}field interval: invalid type: integer `3`, expected a string"),
            "a flow mapping's keys have no line of their own"
        );
        let e = refused("pss: true\n---\npss: false\n");
        assert!(e.contains("more than one document"), "{e}");
        // What 1.2 reads as strings or null reaches vitals as such.
        std::fs::write(
            &f,
            "otlp-http-addr: off\npss: True\nprocess: !!str 0777\nseries-limit: 0x100\n",
        )
        .unwrap();
        let c = parse(&["--config", file]).unwrap();
        assert_eq!(
            c.otlp_http_addr, None,
            "unquoted off turns the receiver off"
        );
        assert!(c.pss);
        assert_eq!(c.series_limit, 256);
        match c.target {
            Some(TargetSpec::Select(Selection::Process(r))) => assert_eq!(r.as_str(), "0777"),
            other => panic!("{other:?}"),
        }
    }
}
