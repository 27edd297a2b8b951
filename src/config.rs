//! Configuration from flags, `VITALS_*` environment variables and an optional YAML file, in that order of
//! precedence, validated with messages that name the flag or field at fault.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

use crate::target::run::ChildProtocol;

/// Default `/metrics` port: outside Prometheus' exporter port allocations (9100-9999 are all taken) and
/// apart from 4317/4318 (OTLP) and 9464 (the OpenTelemetry Prometheus exporter).
pub const DEFAULT_METRICS_PORT: u16 = 19464;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// vitals: vital signs (latency, pauses, memory growth, pool saturation) of the process next to it.
#[derive(Debug, Parser)]
#[command(name = "vitals", version, about, long_about = None, after_help = "\
Target selection: give one of --pid, --pid-file or --process, or use `vitals run -- CMD ARGS...`.
Every option can also be set as VITALS_<NAME> (e.g. VITALS_METRICS_ADDR) or in the --config YAML file
(keys as the long flag names, e.g. `metrics-addr: 0.0.0.0:19464`). Flags win over the environment, which
wins over the file.")]
pub struct Cli {
    /// Run mode.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options shared by every mode.
    #[command(flatten)]
    pub options: Options,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start CMD as the target, with its OpenTelemetry SDK pointed at vitals; exit with its status.
    Run {
        /// OTLP protocol the child's SDK is told to use.
        #[arg(
            long,
            value_enum,
            env = "VITALS_CHILD_OTLP_PROTOCOL",
            default_value = "http/protobuf"
        )]
        child_otlp_protocol: ChildProtocol,
        /// The command and its arguments.
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "CMD"
        )]
        command: Vec<String>,
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
    /// Address of /metrics, /healthz and /readyz [default: 0.0.0.0:19464].
    #[arg(long, global = true, env = "VITALS_METRICS_ADDR", value_name = "ADDR")]
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
    /// OTLP/gRPC receiver address [default: 127.0.0.1:4317].
    #[arg(
        long,
        global = true,
        env = "VITALS_OTLP_GRPC_ADDR",
        value_name = "ADDR"
    )]
    pub otlp_grpc_addr: Option<SocketAddr>,
    /// OTLP/HTTP receiver address [default: 127.0.0.1:4318].
    #[arg(
        long,
        global = true,
        env = "VITALS_OTLP_HTTP_ADDR",
        value_name = "ADDR"
    )]
    pub otlp_http_addr: Option<SocketAddr>,
    /// Sampling interval, e.g. 1s, 500ms [default: 1s; 100ms..1h].
    #[arg(long, global = true, env = "VITALS_INTERVAL", value_parser = humantime::parse_duration)]
    #[serde(deserialize_with = "de_duration")]
    pub interval: Option<Duration>,
    /// procfs mount to read [default: /proc].
    #[arg(long, global = true, env = "VITALS_PROC_ROOT", value_name = "PATH")]
    pub proc_root: Option<PathBuf>,
    /// Host cgroup mount, used when the target's own view is not reachable [default: /sys/fs/cgroup].
    #[arg(long, global = true, env = "VITALS_CGROUP_ROOT", value_name = "PATH")]
    pub cgroup_root: Option<PathBuf>,
    /// Read smaps_rollup for PSS (at most every 30 s, backing off when slow; it stalls the target's
    /// memory map for ~10 ms per GiB of RSS).
    #[arg(long, global = true, env = "VITALS_PSS", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub pss: Option<bool>,
    /// Log format [default: text].
    #[arg(long, global = true, env = "VITALS_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log level or tracing filter [default: info].
    #[arg(long, global = true, env = "VITALS_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
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
        .map_err(|e| serde::de::Error::custom(format!("interval {s:?}: {e}")))
}

/// How the target is chosen, before the child is spawned.
#[derive(Debug, Clone)]
pub enum TargetSpec {
    /// `--pid`.
    Pid(u32),
    /// `--pid-file`.
    PidFile(PathBuf),
    /// `--process`.
    Process(regex::Regex),
    /// `vitals run`.
    Run {
        /// Command and arguments.
        command: Vec<String>,
        /// OTLP protocol for the child.
        protocol: ChildProtocol,
    },
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Target selection; None means "serve only, no target" (useful for the OTLP receiver alone).
    pub target: Option<TargetSpec>,
    /// /metrics address.
    pub metrics_addr: SocketAddr,
    /// `--web-config-file`: TLS and basic auth for /metrics.
    pub web_config_file: Option<PathBuf>,
    /// OTLP/gRPC address.
    pub otlp_grpc_addr: SocketAddr,
    /// OTLP/HTTP address.
    pub otlp_http_addr: SocketAddr,
    /// Sampling interval.
    pub interval: Duration,
    /// procfs root.
    pub proc_root: PathBuf,
    /// Host cgroup root.
    pub cgroup_root: PathBuf,
    /// PSS reading enabled.
    pub pss: bool,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log_level: String,
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
}

/// A configuration that cannot be used. Each message names the flag or file field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("--config {0}: {1}")]
    ReadFile(PathBuf, std::io::Error),
    /// The config file is not valid YAML for vitals.
    #[error("--config {0}: {1}")]
    ParseFile(PathBuf, String),
    /// A value is out of range.
    #[error("{field}: {reason}")]
    Invalid {
        /// Flag or field name.
        field: &'static str,
        /// What is wrong and what to do.
        reason: String,
    },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Reads and parses the YAML file.
pub fn load_file(path: &Path) -> Result<Options, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigError::ReadFile(path.to_path_buf(), e))?;
    if text.trim().is_empty() {
        return Ok(Options::default());
    }
    serde_yaml::from_str(&text)
        .map_err(|e| ConfigError::ParseFile(path.to_path_buf(), e.to_string()))
}

impl Cli {
    /// Merges flags/env (already in `self`) over the file over defaults, and validates.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let o = self.options;
        let file = match &o.config {
            Some(p) => load_file(p)?,
            None => Options::default(),
        };
        let flag_selected = o.pid.is_some() || o.pid_file.is_some() || o.process.is_some();
        // A selection on the command line or in the environment replaces the file's as a whole.
        let (pid, pid_file, process) = if flag_selected {
            (o.pid, o.pid_file, o.process)
        } else {
            (file.pid, file.pid_file, file.process)
        };
        let chosen = [pid.is_some(), pid_file.is_some(), process.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if chosen > 1 {
            return Err(invalid(
                "pid/pid-file/process",
                "give only one of --pid, --pid-file and --process",
            ));
        }
        let mut target = match (pid, pid_file, process) {
            (Some(0), _, _) => return Err(invalid("--pid", "0 is not a process id")),
            (Some(p), _, _) => Some(TargetSpec::Pid(p)),
            (_, Some(f), _) => Some(TargetSpec::PidFile(f)),
            (_, _, Some(re)) => Some(TargetSpec::Process(
                regex::Regex::new(&re)
                    .map_err(|e| invalid("--process", format!("not a valid regex: {e}")))?,
            )),
            _ => None,
        };
        if let Some(Command::Run {
            command,
            child_otlp_protocol,
        }) = self.command
        {
            if target.is_some() {
                return Err(invalid(
                    "run",
                    "`vitals run` watches its own child; drop --pid, --pid-file and --process",
                ));
            }
            target = Some(TargetSpec::Run {
                command,
                protocol: child_otlp_protocol,
            });
        }
        let interval = o
            .interval
            .or(file.interval)
            .unwrap_or(Duration::from_secs(1));
        if interval < Duration::from_millis(100) || interval > Duration::from_secs(3600) {
            return Err(invalid(
                "--interval",
                format!(
                    "{} is outside 100ms..1h",
                    humantime::format_duration(interval)
                ),
            ));
        }
        let metrics_addr = o
            .metrics_addr
            .or(file.metrics_addr)
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], DEFAULT_METRICS_PORT)));
        let otlp_grpc_addr = o
            .otlp_grpc_addr
            .or(file.otlp_grpc_addr)
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 4317)));
        let otlp_http_addr = o
            .otlp_http_addr
            .or(file.otlp_http_addr)
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 4318)));
        if metrics_addr.port() != 0
            && (metrics_addr == otlp_grpc_addr || metrics_addr == otlp_http_addr)
        {
            return Err(invalid(
                "--metrics-addr",
                format!("{metrics_addr} is also an OTLP receiver address"),
            ));
        }
        let otlp_max_request_bytes = o
            .otlp_max_request_bytes
            .or(file.otlp_max_request_bytes)
            .unwrap_or(4 << 20);
        if !(1024..=256 << 20).contains(&otlp_max_request_bytes) {
            return Err(invalid(
                "--otlp-max-request-bytes",
                format!("{otlp_max_request_bytes} is outside 1 KiB..256 MiB"),
            ));
        }
        let otlp_max_concurrent_requests = o
            .otlp_max_concurrent_requests
            .or(file.otlp_max_concurrent_requests)
            .unwrap_or(8);
        if !(1..=1024).contains(&otlp_max_concurrent_requests) {
            return Err(invalid("--otlp-max-concurrent-requests", "must be 1..1024"));
        }
        let series_limit = o.series_limit.or(file.series_limit).unwrap_or(2000);
        if !(1..=1_000_000).contains(&series_limit) {
            return Err(invalid("--series-limit", "must be 1..1000000"));
        }
        let series_ttl = o
            .series_ttl
            .or(file.series_ttl)
            .unwrap_or(Duration::from_secs(3600));
        if series_ttl < Duration::from_secs(1) {
            return Err(invalid("--series-ttl", "must be at least 1s"));
        }
        let growth_windows = o.growth_windows.or(file.growth_windows).unwrap_or_else(|| {
            vec![
                Duration::from_secs(900),
                Duration::from_secs(3600),
                Duration::from_secs(6 * 3600),
            ]
        });
        if growth_windows.is_empty()
            || growth_windows.len() > 6
            || growth_windows
                .iter()
                .any(|w| *w < Duration::from_secs(10) || *w > Duration::from_secs(7 * 86400))
        {
            return Err(invalid(
                "--growth-windows",
                "give 1 to 6 windows, each 10s..7d",
            ));
        }
        let per_hour = o
            .leak_threshold_bytes_per_hour
            .or(file.leak_threshold_bytes_per_hour)
            .unwrap_or(10e6);
        if !(per_hour.is_finite() && per_hour > 0.0) {
            return Err(invalid(
                "--leak-threshold-bytes-per-hour",
                "must be a positive number",
            ));
        }
        Ok(Config {
            growth_windows,
            leak_threshold: per_hour / 3600.0,
            otlp_max_request_bytes,
            otlp_max_concurrent_requests,
            series_limit,
            series_ttl,
            promote_resource_attributes: o
                .promote_resource_attributes
                .or(file.promote_resource_attributes)
                .unwrap_or_default(),
            target,
            metrics_addr,
            web_config_file: o.web_config_file.clone(),
            otlp_grpc_addr,
            otlp_http_addr,
            interval,
            proc_root: o
                .proc_root
                .or(file.proc_root)
                .unwrap_or_else(|| PathBuf::from("/proc")),
            cgroup_root: o
                .cgroup_root
                .or(file.cgroup_root)
                .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup")),
            pss: o.pss.or(file.pss).unwrap_or(false),
            log_format: o.log_format.or(file.log_format).unwrap_or(LogFormat::Text),
            log_level: o
                .log_level
                .or(file.log_level)
                .unwrap_or_else(|| "info".to_owned()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let cli = Cli::try_parse_from(std::iter::once("vitals").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.resolve().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let c = parse(&["--pid", "42"]).unwrap();
        assert!(matches!(c.target, Some(TargetSpec::Pid(42))));
        assert_eq!(c.metrics_addr.to_string(), "0.0.0.0:19464");
        assert_eq!(c.otlp_grpc_addr.to_string(), "127.0.0.1:4317");
        assert_eq!(c.interval, Duration::from_secs(1));
        assert!(!c.pss);
    }

    #[test]
    fn run_takes_the_rest_of_the_line() {
        let c = parse(&["--interval", "500ms", "run", "--", "sh", "-c", "exit 3"]).unwrap();
        match c.target {
            Some(TargetSpec::Run { command, protocol }) => {
                assert_eq!(command, ["sh", "-c", "exit 3"]);
                assert_eq!(protocol, ChildProtocol::HttpProtobuf);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.interval, Duration::from_millis(500));
        let c = parse(&["run", "--metrics-addr", "127.0.0.1:1", "--", "true"]).unwrap();
        assert_eq!(c.metrics_addr.to_string(), "127.0.0.1:1");
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
        assert!(matches!(c.target, Some(TargetSpec::Process(_))));
        let c = parse(&["--config", f.to_str().unwrap(), "--pid", "5"]).unwrap();
        assert!(
            matches!(c.target, Some(TargetSpec::Pid(5))),
            "a flag selection replaces the file's"
        );
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
        assert!(e.contains("interval"), "{e}");
        let e = parse(&["--config", "/nonexistent/v.yaml"]).unwrap_err();
        assert!(e.contains("/nonexistent/v.yaml"), "{e}");
    }
}
