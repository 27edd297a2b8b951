//! The OTLP receiver: gRPC and HTTP front ends share one [`Ingest`], which holds the memory budget every
//! request is charged against before it is decoded, bounds concurrent processing, hands decoded requests
//! to the stores, and counts items and refused requests.

pub mod cost;
pub mod decode;
pub mod grpc;
pub mod http;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::model::{Collector, Metric, MetricKind, Value};
use crate::signal::latency::{facts, RedStore};
use crate::signal::runtime_metrics::RuntimeMetrics;
use crate::store::app_metrics::{service_name, AppMetrics};
use crate::store::limited::OverflowCounter;
use crate::store::logs::LogCounts;

/// The three OTLP signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Spans.
    Traces,
    /// Metric data points.
    Metrics,
    /// Log records.
    Logs,
}

impl Signal {
    const ALL: [Signal; 3] = [Signal::Traces, Signal::Metrics, Signal::Logs];

    /// The `signal` label value.
    pub fn label(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
        }
    }
}

/// Why a whole request was refused before its items could be counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Above the size limit (compressed or after inflating).
    TooLarge,
    /// Not decodable as the declared encoding.
    Undecodable,
    /// Too many requests in flight.
    Overloaded,
    /// A content type or encoding the receiver does not speak.
    UnsupportedMediaType,
    /// Handling it panicked (a bug): only this request is lost.
    InternalError,
}

impl Refusal {
    const ALL: [Refusal; 5] = [
        Refusal::TooLarge,
        Refusal::Undecodable,
        Refusal::Overloaded,
        Refusal::UnsupportedMediaType,
        Refusal::InternalError,
    ];

    fn label(self) -> &'static str {
        match self {
            Refusal::TooLarge => "too_large",
            Refusal::Undecodable => "undecodable",
            Refusal::Overloaded => "overloaded",
            Refusal::UnsupportedMediaType => "unsupported_media_type",
            Refusal::InternalError => "internal_error",
        }
    }
}

/// The forwarding queue cannot take a request now; the app is answered with a retryable overload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

/// Where accepted requests go on unchanged (the forwarder); the receiver knows nothing past this.
pub trait Onward: Send + Sync {
    /// Takes one accepted request: its uncompressed protobuf bytes and item count. Called after the
    /// request decoded and before it is applied, so a refusal leaves nothing half-counted.
    fn offer(&self, signal: Signal, body: bytes::Bytes, items: u64) -> Result<(), QueueFull>;
}

/// Receiver limits.
#[derive(Debug, Clone, Copy)]
pub struct OtlpLimits {
    /// Largest request body accepted, after decompression.
    pub max_body: usize,
    /// Requests decoded at once; more are shed with a retry hint.
    pub max_concurrent: usize,
    /// Bytes all requests in flight may hold together: bodies as read, inflated, and decoded (by the
    /// estimate of [`cost::cost`]). A request that alone needs more is too large; one that would need
    /// more than is left waits for nothing and is shed with a retry hint.
    pub memory_budget: usize,
    /// Spans, data points or log records in one request.
    pub max_items: u64,
    /// Longest time a request body may take to arrive.
    pub body_timeout: std::time::Duration,
}

impl OtlpLimits {
    /// Default memory budget. With the process at ~7 MiB, app series bounded at 24 MiB and scrapes
    /// sharing one rendering, it keeps vitals under the 96 MiB the shipped manifest gives it, whatever
    /// the clients send.
    pub const DEFAULT_MEMORY_BUDGET: usize = 32 << 20;
    /// Default items per request: about 100 times the SDKs' default batch of 512 (more than a Collector's
    /// batch processor sends by default).
    pub const DEFAULT_MAX_ITEMS: u64 = 50_000;

    /// Limits with the given body size and concurrency, the rest at their defaults.
    pub fn new(max_body: usize, max_concurrent: usize) -> Self {
        OtlpLimits {
            max_body,
            max_concurrent,
            memory_budget: Self::DEFAULT_MEMORY_BUDGET,
            max_items: Self::DEFAULT_MAX_ITEMS,
            body_timeout: std::time::Duration::from_secs(10),
        }
    }
}

/// Bytes of the memory budget a request holds; given back when dropped.
pub struct Charge(Option<OwnedSemaphorePermit>);

/// Why a charge against the memory budget failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverBudget {
    /// The request alone needs more than the whole budget: refuse it for good (413 / RESOURCE_EXHAUSTED).
    TooLarge,
    /// Other requests hold the rest of the budget now: shed it with a retry hint.
    Busy,
}

/// One KiB unit of the memory budget semaphore.
const BUDGET_UNIT: u64 = 1024;

impl Charge {
    /// Adds `bytes` to this charge.
    pub fn grow(&mut self, ingest: &Ingest, bytes: u64) -> Result<(), OverBudget> {
        let have = self.0.as_ref().map_or(0, |p| p.num_permits() as u64);
        let units = bytes.div_ceil(BUDGET_UNIT);
        if have + units > ingest.budget_units {
            return Err(OverBudget::TooLarge);
        }
        if units == 0 {
            return Ok(());
        }
        let units = u32::try_from(units).map_err(|_| OverBudget::TooLarge)?;
        let p = ingest
            .budget
            .clone()
            .try_acquire_many_owned(units)
            .map_err(|_| OverBudget::Busy)?;
        match &mut self.0 {
            Some(held) => held.merge(p),
            None => self.0 = Some(p),
        }
        Ok(())
    }
}

/// Per-request result for the response: items rejected and why.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Partial {
    /// Items refused.
    pub rejected: u64,
    /// First reason.
    pub message: String,
}

/// Counters of the receiver.
#[derive(Default)]
pub struct OtlpStats {
    items: [[AtomicU64; 2]; 3],
    refused: [[AtomicU64; 5]; 3],
    overflow: OverflowCounter,
}

impl OtlpStats {
    fn items(&self, s: Signal, accepted: u64, rejected: u64) {
        self.items[s as usize][0].fetch_add(accepted, Ordering::Relaxed);
        self.items[s as usize][1].fetch_add(rejected, Ordering::Relaxed);
    }

    /// Counts a refused request.
    pub fn refused(&self, s: Signal, r: Refusal) {
        self.refused[s as usize][r as usize].fetch_add(1, Ordering::Relaxed);
    }
}

impl Collector for OtlpStats {
    fn collect(&self, out: &mut Vec<Metric>) {
        let mut items = Metric::new(
            "vitals.exporter.otlp.items",
            "OTLP items (spans, data points, log records) received",
            "{item}",
            MetricKind::Counter,
        );
        let mut refused = Metric::new(
            "vitals.exporter.otlp.refused.requests",
            "OTLP requests refused whole, by reason",
            "{request}",
            MetricKind::Counter,
        );
        for s in Signal::ALL {
            for (i, outcome) in ["accepted", "rejected"].iter().enumerate() {
                items.push(
                    &[("signal", s.label()), ("outcome", outcome)],
                    Value::Sum(self.items[s as usize][i].load(Ordering::Relaxed) as f64),
                );
            }
            for r in Refusal::ALL {
                refused.push(
                    &[("signal", s.label()), ("reason", r.label())],
                    Value::Sum(self.refused[s as usize][r as usize].load(Ordering::Relaxed) as f64),
                );
            }
        }
        out.push(items);
        out.push(refused);
        out.push(
            Metric::new(
                "vitals.exporter.series.overflow",
                "Observations sent to an overflow series because a cardinality limit was reached",
                "{observation}",
                MetricKind::Counter,
            )
            .with(&[], Value::Sum(self.overflow.get() as f64)),
        );
    }
}

/// Everything a front end needs: limits, the stores, the counters.
pub struct Ingest {
    /// Receiver limits.
    pub limits: OtlpLimits,
    /// Counters.
    pub stats: Arc<OtlpStats>,
    permits: Arc<Semaphore>,
    budget: Arc<Semaphore>,
    budget_units: u64,
    red: Arc<RedStore>,
    app: Arc<AppMetrics>,
    logs: Arc<LogCounts>,
    onward: Option<Arc<dyn Onward>>,
    runtime: Option<Arc<RuntimeMetrics>>,
}

impl Ingest {
    /// Wires the stores. `stats` must hold the overflow counter the stores were built with.
    pub fn new(
        limits: OtlpLimits,
        red: Arc<RedStore>,
        app: Arc<AppMetrics>,
        logs: Arc<LogCounts>,
        stats: Arc<OtlpStats>,
    ) -> Self {
        let budget_units = (limits.memory_budget as u64 / BUDGET_UNIT).max(1);
        Ingest {
            permits: Arc::new(Semaphore::new(limits.max_concurrent)),
            budget: Arc::new(Semaphore::new(budget_units as usize)),
            budget_units,
            limits,
            stats,
            red,
            app,
            logs,
            onward: None,
            runtime: None,
        }
    }

    /// Hands every metrics export to `runtime` as well, which picks the runtime metrics derivation reads.
    pub fn with_runtime_metrics(mut self, runtime: Arc<RuntimeMetrics>) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// Hands every accepted request to `onward` (forwarding) as well.
    pub fn with_onward(mut self, onward: Arc<dyn Onward>) -> Self {
        self.onward = Some(onward);
        self
    }

    /// Offers an accepted request onward; `body` makes its protobuf bytes (only called when forwarding
    /// is on). On refusal the request is counted as overloaded and must be answered with a retry hint.
    pub fn hand_on(
        &self,
        signal: Signal,
        items: u64,
        body: impl FnOnce() -> bytes::Bytes,
    ) -> Result<(), QueueFull> {
        let Some(o) = &self.onward else {
            return Ok(());
        };
        let r = o.offer(signal, body(), items);
        if r.is_err() {
            self.stats.refused(signal, Refusal::Overloaded);
        }
        r
    }

    /// Stats with the given overflow counter.
    pub fn stats_with(overflow: OverflowCounter) -> OtlpStats {
        OtlpStats {
            overflow,
            ..Default::default()
        }
    }

    /// An empty charge against the memory budget, to grow as a request's body arrives.
    pub fn charge(&self) -> Charge {
        Charge(None)
    }

    /// Checks a body's decoded cost against the item limit and charges it to `charge`. On refusal the
    /// request is counted and the caller answers with the returned error.
    pub fn charge_decoded(
        &self,
        signal: Signal,
        charge: &mut Charge,
        cost: cost::Cost,
    ) -> Result<(), (OverBudget, String)> {
        if cost.items > self.limits.max_items {
            self.stats.refused(signal, Refusal::TooLarge);
            return Err((
                OverBudget::TooLarge,
                format!(
                    "request holds {} items; vitals accepts at most {} per request (split the batch)",
                    cost.items, self.limits.max_items
                ),
            ));
        }
        charge
            .grow(self, cost.bytes)
            .map_err(|e| self.over_budget(signal, e))
    }

    /// Counts a budget refusal and words it for the client.
    pub fn over_budget(&self, signal: Signal, e: OverBudget) -> (OverBudget, String) {
        match e {
            OverBudget::TooLarge => {
                self.stats.refused(signal, Refusal::TooLarge);
                (
                    e,
                    format!(
                        "request would take more than vitals' {}-byte memory budget once decoded (split the batch)",
                        self.limits.memory_budget
                    ),
                )
            }
            OverBudget::Busy => {
                self.stats.refused(signal, Refusal::Overloaded);
                (
                    e,
                    "vitals' memory budget is held by other requests; retry later".to_owned(),
                )
            }
        }
    }

    /// A slot to process one request (decode and apply, never while its body is still arriving), or
    /// None when the receiver is at its concurrency limit.
    pub fn admit(&self, signal: Signal) -> Option<OwnedSemaphorePermit> {
        let p = self.permits.clone().try_acquire_owned().ok();
        if p.is_none() {
            self.stats.refused(signal, Refusal::Overloaded);
        }
        p
    }

    /// Runs one request's handling so that a panic in it (a bug) costs that request only: the release
    /// build unwinds, the stores recover their locks from poisoning, and the request is counted and
    /// answered as an internal error.
    pub fn isolated<T>(&self, signal: Signal, work: impl FnOnce() -> T) -> Option<T> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
            Ok(t) => Some(t),
            Err(_) => {
                self.stats.refused(signal, Refusal::InternalError);
                None
            }
        }
    }

    /// RED from a trace export; spans that are not requests are accepted and ignored.
    pub fn traces(&self, req: &ExportTraceServiceRequest) -> Partial {
        let mut partial = Partial::default();
        let mut accepted = 0u64;
        for rs in &req.resource_spans {
            let service = service_name(
                rs.resource
                    .as_ref()
                    .map(|r| r.attributes.as_slice())
                    .unwrap_or(&[]),
            );
            let spans = rs.scope_spans.iter().flat_map(|ss| ss.spans.iter());
            let mut usable = Vec::new();
            for span in spans {
                match facts(span) {
                    Ok(f) => {
                        accepted += 1;
                        if let Some(f) = f {
                            usable.push(f);
                        }
                    }
                    Err(why) => {
                        partial.rejected += 1;
                        if partial.message.is_empty() {
                            partial.message = why.to_string();
                        }
                    }
                }
            }
            self.red.observe(&service, usable);
        }
        self.stats.items(Signal::Traces, accepted, partial.rejected);
        partial
    }

    /// App metrics from a metrics export.
    pub fn metrics(&self, req: &ExportMetricsServiceRequest) -> Partial {
        let out = self.app.ingest(req);
        if let Some(r) = &self.runtime {
            r.ingest(req);
        }
        self.stats
            .items(Signal::Metrics, out.accepted, out.rejected);
        Partial {
            rejected: out.rejected,
            message: out.message,
        }
    }

    /// Log counts from a logs export.
    pub fn logs(&self, req: &ExportLogsServiceRequest) -> Partial {
        let n = self.logs.ingest(req);
        self.stats.items(Signal::Logs, n, 0);
        Partial::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_panic_in_one_request_is_contained_and_counted() {
        let o = OverflowCounter::default();
        let ttl = Duration::from_secs(60);
        let stats = Arc::new(Ingest::stats_with(o.clone()));
        let ingest = Ingest::new(
            OtlpLimits::new(1 << 20, 1),
            Arc::new(RedStore::new(10, ttl, o.clone())),
            Arc::new(AppMetrics::for_tests(10)),
            Arc::new(LogCounts::new(10, ttl, o)),
            stats.clone(),
        );
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let out = ingest.isolated(Signal::Metrics, || -> u32 { panic!("a bug") });
        std::panic::set_hook(hook);
        assert_eq!(out, None);
        assert_eq!(ingest.isolated(Signal::Metrics, || 7), Some(7));
        let refused = &stats.refused[Signal::Metrics as usize][Refusal::InternalError as usize];
        assert_eq!(refused.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_budget_refuses_what_it_cannot_hold_and_comes_back() {
        let o = OverflowCounter::default();
        let ttl = Duration::from_secs(60);
        let mut limits = OtlpLimits::new(1 << 20, 1);
        limits.memory_budget = 64 << 10;
        let ingest = Ingest::new(
            limits,
            Arc::new(RedStore::new(10, ttl, o.clone())),
            Arc::new(AppMetrics::for_tests(10)),
            Arc::new(LogCounts::new(10, ttl, o.clone())),
            Arc::new(Ingest::stats_with(o)),
        );
        let mut a = ingest.charge();
        assert_eq!(a.grow(&ingest, 65 << 10), Err(OverBudget::TooLarge));
        a.grow(&ingest, 40 << 10).unwrap();
        let mut b = ingest.charge();
        assert_eq!(b.grow(&ingest, 30 << 10), Err(OverBudget::Busy));
        drop(a);
        b.grow(&ingest, 30 << 10).unwrap();
    }
}
