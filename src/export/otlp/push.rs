//! The pusher: every interval, vitals' own metrics (a [`Registry`] gather) sent as OTLP metrics to one
//! endpoint, one request in flight, with the OTLP specification's retries until the next push is due;
//! its settings (`--push-*`), its counters, and one final push at shutdown.
//!
//! What is pushed is cumulative, so a push that could not be delivered before the next one is due is
//! dropped rather than queued: the next push carries everything it held.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::metrics_request::{
    convert, resource, Histograms, PushRequest, StartTimes, FORGET_AFTER_NANOS, START_TIMES_LIMIT,
};
use super::push_resource::{host_name, resource_attributes};
use super::retry::{self, Bound, Delivery, RetryPolicy};
use super::tls::{check_files, TlsFiles};
use super::upstream::{parse_endpoint, parse_headers, Sender, Upstream};
use crate::catalogue;
use crate::config::OtlpProtocol;
use crate::model::{Collector, Metric, Registry, Value};
use crate::receiver::Signal;

/// A `--push-*` value with the name of where it came from (flag, `VITALS_PUSH_*` variable or config
/// file field), for error messages.
pub type Named<T> = Option<(T, String)>;

/// The `--push-*` options as given.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// `--push-endpoint`: where to push; unset turns pushing off.
    pub endpoint: Named<String>,
    /// `--push-protocol`: grpc or http/protobuf.
    pub protocol: Named<String>,
    /// `--push-interval`.
    pub interval: Named<Duration>,
    /// `--push-headers`: `key=value,...`.
    pub headers: Named<String>,
    /// `--push-compression`: gzip or none.
    pub compression: Named<String>,
    /// `--push-timeout`.
    pub timeout: Named<Duration>,
    /// `--push-certificate`: CA (PEM) for an https endpoint.
    pub certificate: Named<PathBuf>,
    /// `--push-client-certificate` (PEM).
    pub client_certificate: Named<PathBuf>,
    /// `--push-client-key` (PEM).
    pub client_key: Named<PathBuf>,
    /// `--push-service-name`.
    pub service_name: Named<String>,
    /// `--push-histograms`: exponential or explicit.
    pub histograms: Named<String>,
}

/// Where, how often and as whom vitals pushes.
#[derive(Debug, Clone)]
pub struct PushSettings {
    /// The endpoint (full URL for HTTP; the server for gRPC).
    pub upstream: Upstream,
    /// Time between pushes.
    pub interval: Duration,
    /// `service.name` of the pushed resource.
    pub service_name: String,
    /// Longest time the final push at shutdown may take (`--forward-drain-timeout`).
    pub grace: Duration,
    /// Which OTLP type histograms are pushed as.
    pub histograms: Histograms,
    /// Waits between attempts ([`RetryPolicy::OTLP`]); a push is retried until the next is due.
    pub retry: RetryPolicy,
}

impl PushSettings {
    /// Default push interval.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(15);
    /// Default `service.name`.
    pub const DEFAULT_SERVICE_NAME: &'static str = "vitals";
}

fn origin_of<T>(v: &Named<T>, flag: &str) -> String {
    v.as_ref()
        .map_or_else(|| flag.to_owned(), |(_, o)| o.clone())
}

impl PushOptions {
    /// The push settings, or None when no endpoint is set. `grace` bounds the final push. The error names
    /// the flag, variable or file field at fault and what to do.
    pub fn resolve(&self, grace: Duration) -> Result<Option<PushSettings>, String> {
        let Some((endpoint, origin)) = &self.endpoint else {
            return Ok(None);
        };
        let protocol = match &self.protocol {
            None => OtlpProtocol::HttpProtobuf,
            Some((v, o)) => OtlpProtocol::parse(v)
                .ok_or_else(|| format!("{o}: {:?} is not grpc or http/protobuf", v.trim()))?,
        };
        let (url, https) = parse_endpoint(origin, endpoint)?;
        // For OTLP/HTTP a URL without a path gets the standard metrics path; one with a path (Prometheus'
        // /api/v1/otlp/v1/metrics) is used as given.
        let url = if protocol == OtlpProtocol::HttpProtobuf && matches!(url.path(), "" | "/") {
            let full = format!("{}/v1/metrics", endpoint.trim_end_matches('/'));
            full.parse()
                .map_err(|e| format!("{origin}: {full:?} is not a URL: {e}"))?
        } else {
            url
        };
        let files = TlsFiles {
            ca: self.certificate.as_ref().map(|(p, _)| p.clone()),
            client_cert: self.client_certificate.as_ref().map(|(p, _)| p.clone()),
            client_key: self.client_key.as_ref().map(|(p, _)| p.clone()),
        };
        let tls =
            if https {
                let named: Vec<String> = [
                    &self.certificate,
                    &self.client_certificate,
                    &self.client_key,
                ]
                .into_iter()
                .filter_map(|n| n.as_ref().map(|(_, o)| o.clone()))
                .collect();
                check_files(
                    &files,
                    protocol,
                    &named,
                    origin,
                    " (set --push-certificate to the CA)",
                )?;
                Some(files)
            } else {
                if files != TlsFiles::default() {
                    return Err(format!(
                    "{}: certificates apply to an https:// endpoint, and {origin} is {endpoint:?}",
                    [&self.certificate, &self.client_certificate, &self.client_key]
                        .into_iter()
                        .filter_map(|n| n.as_ref().map(|(_, o)| o.clone()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                }
                None
            };
        let headers = match &self.headers {
            None => Vec::new(),
            Some((v, o)) => parse_headers(v).map_err(|e| format!("{o}: {e}"))?,
        };
        let gzip = match &self.compression {
            None => false,
            Some((v, o)) => match v.trim() {
                "gzip" => true,
                "none" | "" => false,
                other => return Err(format!("{o}: {other:?} is not gzip or none")),
            },
        };
        let timeout = self
            .timeout
            .as_ref()
            .map_or(Duration::from_secs(10), |(t, _)| *t);
        if timeout.is_zero() {
            return Err(format!(
                "{}: must be above 0",
                origin_of(&self.timeout, "--push-timeout")
            ));
        }
        let interval = self
            .interval
            .as_ref()
            .map_or(PushSettings::DEFAULT_INTERVAL, |(t, _)| *t);
        if interval < Duration::from_secs(1) || interval > Duration::from_secs(3600) {
            return Err(format!(
                "{}: {} is outside 1s..1h",
                origin_of(&self.interval, "--push-interval"),
                humantime::format_duration(interval)
            ));
        }
        let service_name = match &self.service_name {
            None => PushSettings::DEFAULT_SERVICE_NAME.to_owned(),
            Some((v, o)) => {
                let v = v.trim();
                if v.is_empty() {
                    return Err(format!("{o}: must not be empty"));
                }
                v.to_owned()
            }
        };
        let histograms = match &self.histograms {
            None => Histograms::Exponential,
            Some((v, o)) => match v.trim() {
                "exponential" => Histograms::Exponential,
                "explicit" => Histograms::Explicit,
                other => return Err(format!("{o}: {other:?} is not exponential or explicit")),
            },
        };
        Ok(Some(PushSettings {
            upstream: Upstream {
                url,
                protocol,
                headers,
                gzip,
                timeout,
                tls,
            },
            interval,
            service_name,
            grace,
            histograms,
            retry: RetryPolicy::OTLP,
        }))
    }
}

/// Request attempts by outcome.
#[derive(Debug, Clone, Copy)]
enum RequestOutcome {
    /// Taken by the endpoint (a partial success included).
    Sent = 0,
    /// Refused for good: not sent again.
    Rejected = 1,
    /// A retryable failure (answer, connection, timeout).
    Failed = 2,
}

const REQUEST_OUTCOMES: [(RequestOutcome, &str); 3] = [
    (RequestOutcome::Sent, "sent"),
    (RequestOutcome::Rejected, "rejected"),
    (RequestOutcome::Failed, "failed"),
];

/// Data points by what finally became of them.
#[derive(Debug, Clone, Copy)]
enum PointOutcome {
    /// Delivered.
    Sent = 0,
    /// Refused by the endpoint (permanent answer or partial success).
    Rejected = 1,
    /// Not delivered before the next push was due or the shutdown grace ran out.
    Dropped = 2,
}

const POINT_OUTCOMES: [(PointOutcome, &str); 3] = [
    (PointOutcome::Sent, "sent"),
    (PointOutcome::Rejected, "rejected"),
    (PointOutcome::Dropped, "dropped"),
];

/// Largest encoded request; a larger gather is split (4 MiB is the usual gRPC receive limit).
const MAX_REQUEST_BYTES: usize = 3 << 20;
/// Distinct permanent-failure reasons logged, once each.
const MAX_LOGGED_REASONS: usize = 32;

#[derive(Default)]
struct PushStats {
    requests: [AtomicU64; 3],
    points: [AtomicU64; 3],
}

impl PushStats {
    fn request(&self, o: RequestOutcome) {
        self.requests[o as usize].fetch_add(1, Ordering::Relaxed);
    }
    fn points(&self, o: PointOutcome, n: u64) {
        self.points[o as usize].fetch_add(n, Ordering::Relaxed);
    }
}

struct Shared {
    stats: PushStats,
    logged: Mutex<HashSet<String>>,
    failing: std::sync::atomic::AtomicBool,
}

/// The running pusher.
pub struct Pusher {
    shared: Arc<Shared>,
    stop: CancellationToken,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn unix_nanos_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Pusher {
    /// Starts pushing `registry`'s metrics; the first push is one interval from now. Must be called
    /// inside the runtime.
    /// `cadence`, when given, is asked for fresh readings before each push.
    pub fn start(
        settings: PushSettings,
        registry: Registry,
        cadence: Option<Arc<crate::cadence::Cadence>>,
    ) -> Result<Arc<Pusher>, String> {
        let sender = Sender::new(settings.upstream.clone(), Signal::Metrics)?;
        let attributes = resource_attributes(
            &settings.service_name,
            &|k| std::env::var(k).ok(),
            &host_name(),
            std::process::id(),
        );
        tracing::info!(
            endpoint = %settings.upstream.url,
            protocol = ?settings.upstream.protocol,
            interval = ?settings.interval,
            resource = ?attributes,
            "pushing vitals' metrics over OTLP"
        );
        let shared = Arc::new(Shared {
            stats: PushStats::default(),
            logged: Mutex::new(HashSet::new()),
            failing: Default::default(),
        });
        let stop = CancellationToken::new();
        let job = PushJob {
            shared: shared.clone(),
            sender,
            registry,
            resource: resource(&attributes),
            scope: InstrumentationScope {
                name: "vitals".to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                ..Default::default()
            },
            starts: StartTimes::new(
                unix_nanos_now(),
                START_TIMES_LIMIT,
                FORGET_AFTER_NANOS.max(3 * settings.interval.as_nanos() as u64),
            ),
            settings,
            cadence,
        };
        let task = tokio::spawn(job.run(stop.clone()));
        Ok(Arc::new(Pusher {
            shared,
            stop,
            task: Mutex::new(Some(task)),
        }))
    }

    /// Counters for the exposition.
    pub fn collector(&self) -> Arc<dyn Collector> {
        Arc::new(PushCollector(self.shared.clone()))
    }

    /// Stops the interval, makes one final push within the grace period and returns when it is done.
    pub async fn finish(&self) {
        self.stop.cancel();
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = task {
            let _ = t.await;
        }
    }
}

struct PushJob {
    shared: Arc<Shared>,
    sender: Sender,
    registry: Registry,
    resource: Resource,
    scope: InstrumentationScope,
    starts: StartTimes,
    settings: PushSettings,
    /// Asked for fresh readings before each interval push.
    cadence: Option<Arc<crate::cadence::Cadence>>,
}

/// Why a push ended early.
enum Cut {
    /// The time for this push ran out.
    Deadline,
    /// Shutdown began (only for interval pushes: the final push replaces this one).
    Stop,
}

impl PushJob {
    async fn run(mut self, stop: CancellationToken) {
        let mut ticker = tokio::time::interval(self.settings.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate; the target is not sampled yet, so the first push waits an interval.
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.cancelled() => break,
            }
            let deadline = Instant::now() + self.settings.interval;
            self.push(deadline, Some(&stop)).await;
        }
        let deadline = Instant::now() + self.settings.grace;
        self.push(deadline, None).await;
        tracing::info!("push: final push done");
    }

    /// Gathers and sends; requests not delivered by `deadline` (or when `stop` fires) are dropped.
    async fn push(&mut self, deadline: Instant, stop: Option<&CancellationToken>) {
        if let (Some(c), Some(_)) = (&self.cadence, stop) {
            // Readings no older than --interval, as a scrape gets (not at shutdown: the samplers stop).
            c.fresh().await;
        }
        // Gather and conversion are synchronous work (about 60 ms for 30k points, `cargo bench --bench
        // push`); on the multi-threaded runtime the worker hands its other tasks over meanwhile, so
        // /healthz and ingest are not held up.
        let mut work = || {
            let metrics: Vec<Metric> = self.registry.gather();
            convert(
                &metrics,
                self.settings.histograms,
                &self.resource,
                &self.scope,
                &mut self.starts,
                unix_nanos_now(),
                MAX_REQUEST_BYTES,
            )
        };
        let multi_thread = tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread;
        let converted = if multi_thread {
            tokio::task::block_in_place(work)
        } else {
            work()
        };
        if converted.skipped > 0 {
            tracing::debug!(
                points = converted.skipped,
                "push: points whose value does not fit their metric's kind were left out"
            );
        }
        let mut requests = converted.requests.into_iter();
        while let Some(req) = requests.next() {
            if let Err(cut) = self.deliver(&req, deadline, stop).await {
                let left: u64 = req.points + requests.map(|r| r.points).sum::<u64>();
                self.shared.stats.points(PointOutcome::Dropped, left);
                match cut {
                    Cut::Deadline if stop.is_some() => tracing::debug!(
                        points = left,
                        "push: not delivered before the next push; that one carries these values"
                    ),
                    Cut::Deadline => tracing::warn!(
                        points = left,
                        grace = ?self.settings.grace,
                        "push: the final push was not delivered within --forward-drain-timeout"
                    ),
                    Cut::Stop => {}
                }
                return;
            }
        }
    }

    /// Sends one request until it is taken or refused for good (Ok), or time runs out (Err).
    async fn deliver(
        &self,
        req: &PushRequest,
        deadline: Instant,
        stop: Option<&CancellationToken>,
    ) -> Result<(), Cut> {
        let sh = &self.shared;
        let send = || self.sender.send(Signal::Metrics, req.body.clone());
        let on_retry = |why: &str, _: Duration| {
            sh.stats.request(RequestOutcome::Failed);
            if !sh.failing.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    %why,
                    endpoint = %self.settings.upstream.url,
                    "push: the endpoint is not taking data; retrying until the next push is due"
                );
            }
        };
        let bound = Bound {
            deadline: Some(deadline),
            stop,
        };
        match retry::deliver(&self.settings.retry, bound, send, on_retry).await {
            Delivery::Accepted { rejected, message } => {
                sh.stats.request(RequestOutcome::Sent);
                if sh.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("push: the endpoint takes data again");
                }
                let rejected = rejected.min(req.points);
                sh.stats.points(PointOutcome::Sent, req.points - rejected);
                if rejected > 0 {
                    sh.stats.points(PointOutcome::Rejected, rejected);
                    self.log_once(&format!("partial success: {message}"), rejected);
                }
                Ok(())
            }
            Delivery::Refused { reason } => {
                sh.stats.request(RequestOutcome::Rejected);
                sh.stats.points(PointOutcome::Rejected, req.points);
                self.log_once(&reason, req.points);
                Ok(())
            }
            Delivery::OutOfTime { in_flight } => {
                if in_flight {
                    sh.stats.request(RequestOutcome::Failed);
                }
                Err(Cut::Deadline)
            }
            Delivery::Stopped => Err(Cut::Stop),
        }
    }

    fn log_once(&self, reason: &str, points: u64) {
        let first = match self.shared.logged.lock() {
            Ok(mut seen) => seen.len() < MAX_LOGGED_REASONS && seen.insert(reason.to_owned()),
            Err(_) => false,
        };
        if first {
            tracing::warn!(
                reason,
                points,
                endpoint = %self.settings.upstream.url,
                "push: the endpoint refused data for good (not retried; logged once per reason, \
                 counted in vitals_exporter_push_points_total{{outcome=\"rejected\"}})"
            );
        }
    }
}

struct PushCollector(Arc<Shared>);

impl Collector for PushCollector {
    fn collect(&self, out: &mut Vec<Metric>) {
        let stats = &self.0.stats;
        let mut requests = catalogue::EXPORTER_PUSH_REQUESTS.metric();
        for (o, name) in REQUEST_OUTCOMES {
            requests.push(
                &[("outcome", name)],
                Value::Sum(stats.requests[o as usize].load(Ordering::Relaxed) as f64),
            );
        }
        let mut points = catalogue::EXPORTER_PUSH_POINTS.metric();
        for (o, name) in POINT_OUTCOMES {
            points.push(
                &[("outcome", name)],
                Value::Sum(stats.points[o as usize].load(Ordering::Relaxed) as f64),
            );
        }
        out.push(requests);
        out.push(points);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MetricKind;

    fn named<T>(v: T, o: &str) -> Named<T> {
        Some((v, o.to_owned()))
    }

    #[test]
    fn http_endpoint_without_path_gets_the_metrics_path() {
        let o = PushOptions {
            endpoint: named("http://collector:4318".into(), "--push-endpoint"),
            ..Default::default()
        };
        let s = o.resolve(Duration::from_secs(3)).unwrap().unwrap();
        assert_eq!(s.upstream.url, "http://collector:4318/v1/metrics");
        assert_eq!(s.interval, PushSettings::DEFAULT_INTERVAL);
        assert_eq!(s.service_name, "vitals");
        assert_eq!(s.grace, Duration::from_secs(3));
        assert_eq!(s.histograms, Histograms::Exponential);
        let o = PushOptions {
            endpoint: named(
                "http://prom:9090/api/v1/otlp/v1/metrics".into(),
                "--push-endpoint",
            ),
            ..Default::default()
        };
        let s = o.resolve(Duration::ZERO).unwrap().unwrap();
        assert_eq!(s.upstream.url, "http://prom:9090/api/v1/otlp/v1/metrics");
        let o = PushOptions {
            endpoint: named("http://collector:4317".into(), "--push-endpoint"),
            protocol: named("grpc".into(), "--push-protocol"),
            headers: named("api-key=a%20b".into(), "--push-headers"),
            compression: named("gzip".into(), "--push-compression"),
            ..Default::default()
        };
        let s = o.resolve(Duration::ZERO).unwrap().unwrap();
        assert_eq!(s.upstream.url, "http://collector:4317/");
        assert_eq!(s.upstream.protocol, OtlpProtocol::Grpc);
        assert!(s.upstream.gzip);
        assert_eq!(s.upstream.headers[0].1, "a b");
        let s = PushOptions {
            histograms: named("explicit".into(), "--push-histograms"),
            ..o
        }
        .resolve(Duration::ZERO)
        .unwrap()
        .unwrap();
        assert_eq!(s.histograms, Histograms::Explicit);
        assert!(PushOptions::default()
            .resolve(Duration::ZERO)
            .unwrap()
            .is_none());
    }

    #[test]
    fn errors_name_where_the_value_came_from() {
        let base = PushOptions {
            endpoint: named("http://c:4318".into(), "--push-endpoint"),
            ..Default::default()
        };
        let e = PushOptions {
            protocol: named(
                "http/json".into(),
                "environment variable VITALS_PUSH_PROTOCOL",
            ),
            ..base.clone()
        }
        .resolve(Duration::ZERO)
        .unwrap_err();
        assert!(
            e.starts_with("environment variable VITALS_PUSH_PROTOCOL"),
            "{e}"
        );
        let e = PushOptions {
            interval: named(Duration::from_millis(500), "--push-interval"),
            ..base.clone()
        }
        .resolve(Duration::ZERO)
        .unwrap_err();
        assert!(e.starts_with("--push-interval: 500ms is outside"), "{e}");
        let e = PushOptions {
            histograms: named(
                "native".into(),
                "environment variable VITALS_PUSH_HISTOGRAMS",
            ),
            ..base.clone()
        }
        .resolve(Duration::ZERO)
        .unwrap_err();
        assert!(
            e.starts_with("environment variable VITALS_PUSH_HISTOGRAMS: \"native\" is not"),
            "{e}"
        );
        let e = PushOptions {
            endpoint: named(
                "collector:4318".into(),
                "config file v.yaml: field push-endpoint",
            ),
            ..Default::default()
        }
        .resolve(Duration::ZERO)
        .unwrap_err();
        assert!(
            e.starts_with("config file v.yaml: field push-endpoint"),
            "{e}"
        );
        let e = PushOptions {
            endpoint: named("https://c:4318".into(), "--push-endpoint"),
            certificate: named("/nonexistent/ca.pem".into(), "--push-certificate"),
            ..Default::default()
        }
        .resolve(Duration::ZERO)
        .unwrap_err();
        assert!(
            e.starts_with("--push-certificate") && e.contains("/nonexistent/ca.pem"),
            "{e}"
        );
        let e = PushOptions {
            certificate: named("/tmp/ca.pem".into(), "--push-certificate"),
            ..base
        }
        .resolve(Duration::ZERO)
        .unwrap_err();
        assert!(e.contains("https://"), "{e}");
    }

    #[test]
    fn collector_reports_outcomes_under_otel_names() {
        let shared = Arc::new(Shared {
            stats: PushStats::default(),
            logged: Mutex::new(HashSet::new()),
            failing: Default::default(),
        });
        shared.stats.request(RequestOutcome::Sent);
        shared.stats.request(RequestOutcome::Failed);
        shared.stats.request(RequestOutcome::Failed);
        shared.stats.points(PointOutcome::Sent, 40);
        shared.stats.points(PointOutcome::Dropped, 7);
        let mut out = Vec::new();
        PushCollector(shared).collect(&mut out);
        assert_eq!(out[0].name, "vitals.exporter.push.requests");
        assert_eq!(out[0].unit, "{request}");
        assert_eq!(out[0].kind, MetricKind::Counter);
        let value = |m: &Metric, outcome: &str| {
            m.points
                .iter()
                .find(|p| p.attributes == [("outcome".to_owned(), outcome.to_owned())])
                .map(|p| p.value.clone())
        };
        assert_eq!(value(&out[0], "failed"), Some(Value::Sum(2.0)));
        assert_eq!(value(&out[0], "sent"), Some(Value::Sum(1.0)));
        assert_eq!(out[1].name, "vitals.exporter.push.points");
        assert_eq!(value(&out[1], "sent"), Some(Value::Sum(40.0)));
        assert_eq!(value(&out[1], "dropped"), Some(Value::Sum(7.0)));
        assert_eq!(value(&out[1], "rejected"), Some(Value::Sum(0.0)));
    }
}
