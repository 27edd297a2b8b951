//! The forwarder: a queue bounded in bytes between the receiver and each signal's upstream, the senders
//! that drain it with the OTLP specification's retries, its counters, and the drain on shutdown.
//!
//! The receiver offers every accepted request (its uncompressed protobuf bytes) before applying it; a
//! full queue refuses the offer, and the receiver answers the app with a retryable overload so its SDK
//! keeps the data. Forwarding is asynchronous: the app's answer does not wait for the upstream, so the
//! upstream's partial success cannot reach the app; it is counted and logged here instead.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, Semaphore};

use super::retry::{self, Bound, Delivery};
use super::upstream::Sender;
use crate::catalogue;
use crate::config::otlp::ForwardSettings;
use crate::model::{Collector, Metric, Value};
use crate::pipeline::{Onward, QueueFull, Signal};

/// Requests sent to one upstream at once.
const SENDS_IN_FLIGHT: usize = 8;
/// Distinct permanent-failure reasons remembered for logging once each.
const MAX_LOGGED_REASONS: usize = 64;

/// Item and request outcomes.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// The upstream took it.
    Sent = 0,
    /// The upstream refused it for good (permanent error or partial success).
    Rejected = 1,
    /// The queue was full; the app was told to retry.
    Refused = 2,
    /// Still queued when the drain timeout ran out.
    Dropped = 3,
}

const OUTCOMES: [(Outcome, &str); 4] = [
    (Outcome::Sent, "sent"),
    (Outcome::Rejected, "rejected"),
    (Outcome::Refused, "refused"),
    (Outcome::Dropped, "dropped"),
];

/// Upper bounds of the upstream latency histogram, seconds.
const LATENCY_BOUNDS: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Forwarding counters.
#[derive(Default)]
struct ForwardStats {
    items: [[AtomicU64; 4]; 3],
    requests: [[AtomicU64; 4]; 3],
    retries: [AtomicU64; 3],
    latency_buckets: [[AtomicU64; 12]; 3],
    latency_sum_us: [AtomicU64; 3],
}

impl ForwardStats {
    fn count(&self, s: Signal, o: Outcome, items: u64) {
        self.items[s as usize][o as usize].fetch_add(items, Ordering::Relaxed);
        self.requests[s as usize][o as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn latency(&self, s: Signal, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.latency_buckets[s as usize][i].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us[s as usize].fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }
}

struct Shared {
    settings: ForwardSettings,
    queued_bytes: AtomicU64,
    queued_items: [AtomicU64; 3],
    closed: AtomicBool,
    /// Per signal: the last attempt failed with a retryable answer (for logging the change only).
    failing: [AtomicBool; 3],
    stats: ForwardStats,
    logged: Mutex<HashSet<String>>,
}

/// A queued request.
struct Batch {
    body: Bytes,
    items: u64,
}

/// The forwarder; the receiver holds it as its [`Onward`].
pub struct Forwarder {
    shared: Arc<Shared>,
    queues: [Option<mpsc::UnboundedSender<Batch>>; 3],
}

impl Forwarder {
    /// Starts one sender task per configured signal. Must be called inside the runtime.
    pub fn start(settings: ForwardSettings) -> Result<Arc<Forwarder>, String> {
        let shared = Arc::new(Shared {
            settings: settings.clone(),
            queued_bytes: AtomicU64::new(0),
            queued_items: Default::default(),
            closed: AtomicBool::new(false),
            failing: Default::default(),
            stats: ForwardStats::default(),
            logged: Mutex::new(HashSet::new()),
        });
        let mut queues: [Option<mpsc::UnboundedSender<Batch>>; 3] = [None, None, None];
        for s in [Signal::Traces, Signal::Metrics, Signal::Logs] {
            let Some(up) = settings.upstreams[s as usize].clone() else {
                continue;
            };
            tracing::info!(signal = s.label(), upstream = %up.url, protocol = ?up.protocol, gzip = up.gzip, "forwarding to upstream");
            let sender = Sender::new(up, s)?;
            // Unbounded as a channel, bounded in bytes by `offer`.
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run_sender(shared.clone(), s, sender, rx));
            queues[s as usize] = Some(tx);
        }
        Ok(Arc::new(Forwarder { shared, queues }))
    }

    /// Stops taking requests and waits until everything queued is sent, or the drain timeout passes;
    /// reports (log and `dropped` outcome) what could not be sent.
    pub async fn drain(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + self.shared.settings.drain_timeout;
        while self.shared.queued_bytes.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let bytes = self.shared.queued_bytes.load(Ordering::SeqCst);
        if bytes == 0 {
            tracing::info!("forwarding: queue drained");
            return;
        }
        let mut items = 0;
        for s in [Signal::Traces, Signal::Metrics, Signal::Logs] {
            let n = self.shared.queued_items[s as usize].load(Ordering::SeqCst);
            if n > 0 {
                self.shared.stats.count(s, Outcome::Dropped, n);
            }
            items += n;
        }
        tracing::error!(
            items,
            bytes,
            timeout = ?self.shared.settings.drain_timeout,
            "forwarding: could not send everything upstream within --forward-drain-timeout; these items are lost"
        );
    }

    /// Counters for /metrics.
    pub fn collector(self: &Arc<Self>) -> Arc<dyn Collector> {
        Arc::new(ForwardCollector(self.shared.clone()))
    }
}

impl Onward for Forwarder {
    fn offer(&self, signal: Signal, body: Bytes, items: u64) -> Result<(), QueueFull> {
        let Some(tx) = &self.queues[signal as usize] else {
            return Ok(());
        };
        let sh = &self.shared;
        let len = body.len() as u64;
        if sh.closed.load(Ordering::SeqCst) {
            sh.stats.count(signal, Outcome::Refused, items);
            return Err(QueueFull);
        }
        let limit = sh.settings.queue_bytes;
        let reserved = sh
            .queued_bytes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |q| {
                (q + len <= limit).then_some(q + len)
            });
        if reserved.is_err() {
            sh.stats.count(signal, Outcome::Refused, items);
            return Err(QueueFull);
        }
        sh.queued_items[signal as usize].fetch_add(items, Ordering::SeqCst);
        if tx.send(Batch { body, items }).is_err() {
            // The sender task is gone (only at shutdown): give the reservation back and refuse.
            sh.queued_bytes.fetch_sub(len, Ordering::SeqCst);
            sh.queued_items[signal as usize].fetch_sub(items, Ordering::SeqCst);
            sh.stats.count(signal, Outcome::Refused, items);
            return Err(QueueFull);
        }
        Ok(())
    }
}

async fn run_sender(
    shared: Arc<Shared>,
    signal: Signal,
    sender: Sender,
    mut rx: mpsc::UnboundedReceiver<Batch>,
) {
    let slots = Arc::new(Semaphore::new(SENDS_IN_FLIGHT));
    while let Some(batch) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let shared = shared.clone();
        let sender = sender.clone();
        tokio::spawn(async move {
            deliver(&shared, signal, &sender, batch).await;
            drop(slot);
        });
    }
}

/// Sends one batch until the upstream takes it or refuses it for good; releases its queue bytes.
///
/// No deadline: what the queue holds is bounded in bytes, and while the upstream is away the full queue
/// tells the apps to retry, so their SDKs keep the rest; only the drain at shutdown gives up.
async fn deliver(sh: &Shared, signal: Signal, sender: &Sender, batch: Batch) {
    let len = batch.body.len() as u64;
    let send = || async {
        let started = Instant::now();
        let answer = sender.send(signal, batch.body.clone()).await;
        sh.stats.latency(signal, started.elapsed());
        answer
    };
    let on_retry = |why: &str, wait: Duration| {
        sh.stats.retries[signal as usize].fetch_add(1, Ordering::Relaxed);
        if !sh.failing[signal as usize].swap(true, Ordering::Relaxed) {
            tracing::warn!(
                signal = signal.label(),
                %why,
                "forwarding: the upstream is not taking data; retrying (the queue holds what \
                 was accepted; when it is full apps are told to retry)"
            );
        }
        tracing::debug!(signal = signal.label(), %why, ?wait, "forwarding: retrying");
    };
    match retry::deliver(&sh.settings.retry, Bound::default(), send, on_retry).await {
        Delivery::Accepted { rejected, message } => {
            if sh.failing[signal as usize].swap(false, Ordering::Relaxed) {
                tracing::info!(
                    signal = signal.label(),
                    "forwarding: the upstream takes data again"
                );
            }
            let rejected = rejected.min(batch.items);
            sh.stats
                .count(signal, Outcome::Sent, batch.items - rejected);
            if rejected > 0 {
                sh.stats.items[signal as usize][Outcome::Rejected as usize]
                    .fetch_add(rejected, Ordering::Relaxed);
                log_once(sh, signal, &format!("partial success: {message}"), rejected);
            }
        }
        Delivery::Refused { reason } => {
            sh.stats.count(signal, Outcome::Rejected, batch.items);
            log_once(sh, signal, &reason, batch.items);
        }
        // Unbounded: neither ends a forward.
        Delivery::OutOfTime { .. } | Delivery::Stopped => {}
    }
    sh.queued_bytes.fetch_sub(len, Ordering::SeqCst);
    sh.queued_items[signal as usize].fetch_sub(batch.items, Ordering::SeqCst);
}

fn log_once(sh: &Shared, signal: Signal, reason: &str, items: u64) {
    let key = format!("{}:{reason}", signal.label());
    let first = match sh.logged.lock() {
        Ok(mut seen) => seen.len() < MAX_LOGGED_REASONS && seen.insert(key),
        Err(_) => false,
    };
    if first {
        tracing::warn!(
            signal = signal.label(),
            reason,
            items,
            "forwarding: the upstream refused data for good (not retried; logged once per reason, \
             counted in vitals_exporter_forward_items_total{{outcome=\"rejected\"}})"
        );
    }
}

struct ForwardCollector(Arc<Shared>);

impl Collector for ForwardCollector {
    fn collect(&self, out: &mut Vec<Metric>) {
        let sh = &self.0;
        let mut items = catalogue::EXPORTER_FORWARD_ITEMS.metric();
        let mut requests = catalogue::EXPORTER_FORWARD_REQUESTS.metric();
        let mut retries = catalogue::EXPORTER_FORWARD_RETRIES.metric();
        let mut latency = catalogue::EXPORTER_FORWARD_UPSTREAM_DURATION.metric();
        for s in [Signal::Traces, Signal::Metrics, Signal::Logs] {
            if sh.settings.upstreams[s as usize].is_none() {
                continue;
            }
            let i = s as usize;
            for (o, name) in OUTCOMES {
                let labels = [("signal", s.label()), ("outcome", name)];
                items.push(
                    &labels,
                    Value::Sum(sh.stats.items[i][o as usize].load(Ordering::Relaxed) as f64),
                );
                requests.push(
                    &labels,
                    Value::Sum(sh.stats.requests[i][o as usize].load(Ordering::Relaxed) as f64),
                );
            }
            retries.push(
                &[("signal", s.label())],
                Value::Sum(sh.stats.retries[i].load(Ordering::Relaxed) as f64),
            );
            let mut cum = 0u64;
            let mut buckets = Vec::with_capacity(12);
            for (b, bound) in LATENCY_BOUNDS
                .iter()
                .copied()
                .chain(std::iter::once(f64::INFINITY))
                .enumerate()
            {
                cum += sh.stats.latency_buckets[i][b].load(Ordering::Relaxed);
                buckets.push((bound, cum));
            }
            latency.push(
                &[("signal", s.label())],
                Value::Histogram {
                    buckets,
                    sum: sh.stats.latency_sum_us[i].load(Ordering::Relaxed) as f64 / 1e6,
                    count: cum,
                    exemplars: Vec::new(),
                    native: None,
                },
            );
        }
        out.push(items);
        out.push(requests);
        out.push(retries);
        out.push(latency);
        out.push(catalogue::EXPORTER_FORWARD_QUEUE.metric().with(
            &[],
            Value::Gauge(sh.queued_bytes.load(Ordering::Relaxed) as f64),
        ));
        out.push(
            catalogue::EXPORTER_FORWARD_QUEUE_LIMIT
                .metric()
                .with(&[], Value::Gauge(sh.settings.queue_bytes as f64)),
        );
    }
}
