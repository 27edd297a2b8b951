//! The OTLP receiver: gRPC and HTTP front ends share one [`Receiver`], which holds the memory budget
//! every request is charged against before it is decoded, bounds concurrent processing, hands decoded
//! requests to its [`Consumers`] and counts items and refused requests. It knows nothing downstream of
//! the consumer boundary (`consumer.rs`).

pub mod answer;
pub mod consumer;
pub mod cost;
pub mod decode;
pub mod grpc;
pub mod http;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use consumer::{
    Consumer, Consumers, ExportRequest, LogsConsumer, MetricsConsumer, Onward, PartialSuccess,
    QueueFull, TraceView, TracesConsumer,
};

use crate::catalogue;
use crate::model::{write_metric, MetricSink, Streaming, ValueRef};

pub use crate::pipeline::Signal;

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
pub struct MemoryCharge(Option<OwnedSemaphorePermit>);

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

impl MemoryCharge {
    /// Adds `bytes` to this charge.
    pub fn grow(&mut self, receiver: &Receiver, bytes: u64) -> Result<(), OverBudget> {
        let have = self.0.as_ref().map_or(0, |p| p.num_permits() as u64);
        let units = bytes.div_ceil(BUDGET_UNIT);
        if have + units > receiver.budget_units {
            return Err(OverBudget::TooLarge);
        }
        if units == 0 {
            return Ok(());
        }
        let units = u32::try_from(units).map_err(|_| OverBudget::TooLarge)?;
        let p = receiver
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

/// The count of observations the stores sent to an overflow series because a cardinality limit was
/// reached: kept by the stores, published beside the receiver's counters.
pub trait OverflowCount: Send + Sync {
    /// Total so far.
    fn get(&self) -> u64;
}

impl<F: Fn() -> u64 + Send + Sync> OverflowCount for F {
    fn get(&self) -> u64 {
        self()
    }
}

/// Counters of the receiver.
pub struct OtlpStats {
    items: [[AtomicU64; 2]; 3],
    refused: [[AtomicU64; 5]; 3],
    overflow: Arc<dyn OverflowCount>,
}

impl OtlpStats {
    /// Zeroed counters, publishing `overflow` beside them.
    pub fn new(overflow: impl OverflowCount + 'static) -> Self {
        OtlpStats {
            items: Default::default(),
            refused: Default::default(),
            overflow: Arc::new(overflow),
        }
    }

    fn items(&self, s: Signal, accepted: u64, rejected: u64) {
        self.items[s as usize][0].fetch_add(accepted, Ordering::Relaxed);
        self.items[s as usize][1].fetch_add(rejected, Ordering::Relaxed);
    }

    /// Counts a refused request.
    pub fn refused(&self, s: Signal, r: Refusal) {
        self.refused[s as usize][r as usize].fetch_add(1, Ordering::Relaxed);
    }
}

impl Streaming for OtlpStats {
    /// Streams the counters (borrowed labels, nothing built per scrape).
    fn write(&self, sink: &mut dyn MetricSink) {
        write_metric(sink, &catalogue::EXPORTER_OTLP_ITEMS.info(), |sink| {
            for s in Signal::ALL {
                for (i, outcome) in ["accepted", "rejected"].iter().enumerate() {
                    let n = self.items[s as usize][i].load(Ordering::Relaxed);
                    sink.point(
                        &[("signal", s.label()), ("outcome", outcome)],
                        0,
                        ValueRef::Sum(n as f64),
                    );
                }
            }
        });
        write_metric(
            sink,
            &catalogue::EXPORTER_OTLP_REFUSED_REQUESTS.info(),
            |sink| {
                for s in Signal::ALL {
                    for r in Refusal::ALL {
                        let n = self.refused[s as usize][r as usize].load(Ordering::Relaxed);
                        sink.point(
                            &[("signal", s.label()), ("reason", r.label())],
                            0,
                            ValueRef::Sum(n as f64),
                        );
                    }
                }
            },
        );
        write_metric(sink, &catalogue::EXPORTER_SERIES_OVERFLOW.info(), |sink| {
            sink.point(&[], 0, ValueRef::Sum(self.overflow.get() as f64));
        });
    }
}

/// Everything a front end needs: limits, the memory budget, the consumers, the counters.
pub struct Receiver {
    /// Receiver limits.
    pub limits: OtlpLimits,
    /// Counters.
    pub stats: Arc<OtlpStats>,
    permits: Arc<Semaphore>,
    budget: Arc<Semaphore>,
    budget_units: u64,
    consumers: Consumers,
}

impl Receiver {
    /// A receiver handing accepted requests to `consumers`.
    pub fn new(limits: OtlpLimits, consumers: Consumers, stats: Arc<OtlpStats>) -> Self {
        let budget_units = (limits.memory_budget as u64 / BUDGET_UNIT).max(1);
        Receiver {
            permits: Arc::new(Semaphore::new(limits.max_concurrent)),
            budget: Arc::new(Semaphore::new(budget_units as usize)),
            budget_units,
            limits,
            stats,
            consumers,
        }
    }

    /// True when accepted requests are forwarded, so their protobuf bytes are worth keeping.
    pub fn forwards(&self) -> bool {
        self.consumers.forwards()
    }

    /// An empty charge against the memory budget, to grow as a request's body arrives.
    pub fn memory_charge(&self) -> MemoryCharge {
        MemoryCharge(None)
    }

    /// Checks a body's decoded cost against the item limit and charges it to `charge`. On refusal the
    /// request is counted and the caller answers with the returned error.
    pub fn charge_decoded(
        &self,
        signal: Signal,
        charge: &mut MemoryCharge,
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

    /// Hands one decoded request to the consumers (forwarding first, its protobuf bytes made by `raw`
    /// only when forwarding is on) and counts its items. A full forwarding queue refuses it, counted as
    /// overloaded; the caller answers with a retry hint. A consumer that panicked is counted as an
    /// internal error and its answer rejects the request's items.
    pub fn deliver<R: ExportRequest>(
        &self,
        request: &R,
        raw: impl FnOnce() -> Bytes,
    ) -> Result<PartialSuccess, QueueFull> {
        let signal = R::SIGNAL;
        let items = request.items();
        let delivered = match self.consumers.deliver(request, items, raw) {
            Ok(d) => d,
            Err(full) => {
                self.stats.refused(signal, Refusal::Overloaded);
                return Err(full);
            }
        };
        for _ in 0..delivered.panicked {
            self.stats.refused(signal, Refusal::InternalError);
        }
        let rejected = delivered.answer.rejected;
        self.stats
            .items(signal, items.saturating_sub(rejected), rejected);
        Ok(delivered.answer)
    }

    /// [`Receiver::deliver`] for a metrics or logs request that arrived decoded (benchmarks, fuzzing):
    /// forwarding gets it encoded again.
    pub fn deliver_decoded<R: ExportRequest + prost::Message>(
        &self,
        request: &R,
    ) -> Result<PartialSuccess, QueueFull> {
        self.deliver(request, || Bytes::from(request.encode_to_vec()))
    }

    /// [`Receiver::deliver`] for a trace export: forwarding gets a copy of the bytes it came as, or
    /// the protobuf encoding of a decoded one.
    pub fn deliver_traces(&self, view: &TraceView<'_>) -> Result<PartialSuccess, QueueFull> {
        self.deliver(view, || view.to_protobuf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;

    fn receiver(limits: OtlpLimits, consumers: Consumers) -> (Receiver, Arc<OtlpStats>) {
        let stats = Arc::new(OtlpStats::new(|| 0));
        (Receiver::new(limits, consumers, stats.clone()), stats)
    }

    fn count(c: &[AtomicU64]) -> Vec<u64> {
        c.iter().map(|a| a.load(Ordering::Relaxed)).collect()
    }

    #[test]
    fn a_panic_in_one_request_is_contained_and_counted() {
        let (receiver, stats) = receiver(OtlpLimits::new(1 << 20, 1), Consumers::new());
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let out = receiver.isolated(Signal::Metrics, || -> u32 { panic!("a bug") });
        std::panic::set_hook(hook);
        assert_eq!(out, None);
        assert_eq!(receiver.isolated(Signal::Metrics, || 7), Some(7));
        let refused = &stats.refused[Signal::Metrics as usize][Refusal::InternalError as usize];
        assert_eq!(refused.load(Ordering::Relaxed), 1);
    }

    /// Rejects one span per request, or panics.
    struct OneBadSpan {
        panics: bool,
    }

    impl<'a> Consumer<TraceView<'a>> for OneBadSpan {
        fn consume(&self, _: &TraceView<'a>) -> PartialSuccess {
            if self.panics {
                panic!("a bug in a consumer");
            }
            PartialSuccess::rejecting(1, "one span had no end time")
        }
    }

    #[test]
    fn delivered_items_and_consumer_panics_are_counted() {
        let consumers = Consumers::new()
            .traces(Arc::new(OneBadSpan { panics: false }))
            .traces(Arc::new(OneBadSpan { panics: true }));
        let (receiver, stats) = receiver(OtlpLimits::new(1 << 20, 1), consumers);
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span::default(); 3],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec();
        let req = TraceView::parse(&req).unwrap();
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let answer = receiver.deliver_traces(&req);
        std::panic::set_hook(hook);
        // The panicking consumer answers for all three spans; the first message is kept.
        assert_eq!(
            answer,
            Ok(PartialSuccess::rejecting(3, "one span had no end time"))
        );
        let t = Signal::Traces as usize;
        assert_eq!(count(&stats.items[t]), vec![0, 3]);
        assert_eq!(
            count(&stats.refused[t]),
            vec![0, 0, 0, 0, 1],
            "one internal error, nothing else"
        );
    }

    #[test]
    fn a_full_forwarding_queue_is_counted_as_overload_and_nothing_else() {
        struct Full;
        impl Onward for Full {
            fn offer(&self, _: Signal, _: Bytes, _: u64) -> Result<(), QueueFull> {
                Err(QueueFull)
            }
        }
        let consumers = Consumers::new()
            .onward(Arc::new(Full))
            .traces(Arc::new(OneBadSpan { panics: false }));
        let (receiver, stats) = receiver(OtlpLimits::new(1 << 20, 1), consumers);
        assert!(receiver.forwards());
        let req = TraceView::parse(&[]).unwrap();
        assert_eq!(receiver.deliver_traces(&req), Err(QueueFull));
        let t = Signal::Traces as usize;
        assert_eq!(count(&stats.items[t]), vec![0, 0]);
        let overloaded = stats.refused[t][Refusal::Overloaded as usize].load(Ordering::Relaxed);
        assert_eq!(overloaded, 1);
    }

    #[test]
    fn the_budget_refuses_what_it_cannot_hold_and_comes_back() {
        let mut limits = OtlpLimits::new(1 << 20, 1);
        limits.memory_budget = 64 << 10;
        let (receiver, _) = receiver(limits, Consumers::new());
        let mut a = receiver.memory_charge();
        assert_eq!(a.grow(&receiver, 65 << 10), Err(OverBudget::TooLarge));
        a.grow(&receiver, 40 << 10).unwrap();
        let mut b = receiver.memory_charge();
        assert_eq!(b.grow(&receiver, 30 << 10), Err(OverBudget::Busy));
        drop(a);
        b.grow(&receiver, 30 << 10).unwrap();
    }
}
