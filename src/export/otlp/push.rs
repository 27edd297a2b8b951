//! The pusher: every interval, vitals' own metrics (a [`Registry`] gather) sent as OTLP metrics to one
//! endpoint, one request in flight, with the OTLP specification's retries until the next push is due;
//! its counters, and one final push at shutdown (its settings, from `--push-*`, are
//! [`crate::config::otlp::PushSettings`]).
//!
//! What is pushed is cumulative, so a push that could not be delivered before the next one is due is
//! dropped rather than queued: the next push carries everything it held.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::metrics_request::{
    convert, resource, PushRequest, StartTimes, FORGET_AFTER_NANOS, START_TIMES_LIMIT,
};
use super::push_resource::{host_name, resource_attributes};
use super::retry::{self, Bound, Delivery};
use super::upstream::Sender;
use crate::catalogue;
use crate::config::otlp::PushSettings;
use crate::model::{Collector, Metric, Registry, Value};
use crate::receiver::Signal;

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
