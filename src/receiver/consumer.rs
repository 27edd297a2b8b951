//! The receiver's consumer boundary: the traits the parts downstream implement to take accepted
//! requests, and the fan-out that hands each request to them in order, keeps one consumer's panic from
//! costing the others, and combines their partial-success answers into the one the app gets.
//!
//! The receiver knows nothing past this boundary. Forwarding ([`Onward`]) takes the request's protobuf
//! bytes first and may refuse it whole (its queue is full) while nothing has been derived from it yet;
//! then every [`Consumer`] of the request's signal takes the request (a trace export as a
//! [`TraceView`] of its bytes, metrics and logs decoded). Each consumer keeps its
//! own bound (the forwarder's queue in bytes, the stores' series limits); all are called on the
//! request's thread and must not block.

use std::sync::Arc;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;

use super::Signal;
pub use crate::pipeline::{
    Consumer, LogsConsumer, MetricsConsumer, Onward, PartialSuccess, QueueFull, TraceView,
    TracesConsumer,
};

/// One of the three OTLP export requests as its consumers take it: its signal, its items, and its
/// consumers in a fan-out.
pub trait ExportRequest: Sized {
    /// The signal this request carries.
    const SIGNAL: Signal;

    /// Spans, data points or log records in the request: the items partial success counts (a metric
    /// without data counts as one, which its consumers reject).
    fn items(&self) -> u64;

    /// This request type's consumers in `fan_out`, in order.
    fn consumers(fan_out: &Consumers) -> &[Arc<dyn Consumer<Self>>];
}

impl<'a> ExportRequest for TraceView<'a> {
    const SIGNAL: Signal = Signal::Traces;

    fn items(&self) -> u64 {
        self.span_count()
    }

    fn consumers(fan_out: &Consumers) -> &[Arc<dyn Consumer<TraceView<'a>>>] {
        &fan_out.traces
    }
}

impl ExportRequest for ExportMetricsServiceRequest {
    const SIGNAL: Signal = Signal::Metrics;

    fn items(&self) -> u64 {
        let metrics = self.resource_metrics.iter().flat_map(|r| &r.scope_metrics);
        metrics
            .flat_map(|s| &s.metrics)
            // A metric without data is one item: the one its consumers reject.
            .map(|m| crate::pipeline::data_points(m).unwrap_or(1) as u64)
            .sum()
    }

    fn consumers(fan_out: &Consumers) -> &[Arc<MetricsConsumer>] {
        &fan_out.metrics
    }
}

impl ExportRequest for ExportLogsServiceRequest {
    const SIGNAL: Signal = Signal::Logs;

    fn items(&self) -> u64 {
        let logs = self.resource_logs.iter().flat_map(|r| &r.scope_logs);
        logs.map(|s| s.log_records.len() as u64).sum()
    }

    fn consumers(fan_out: &Consumers) -> &[Arc<LogsConsumer>] {
        &fan_out.logs
    }
}

/// What the fan-out made of one request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The combined answer for the app.
    pub answer: PartialSuccess,
    /// Consumers that panicked on it (a bug); each cost only its own answer.
    pub panicked: u64,
}

/// The answer a panicking consumer stands for: all the request's items, since it took none of them
/// knowingly; clients log the message and do not retry.
pub const CONSUMER_PANICKED: &str = "vitals failed handling these items (a bug: please report it)";

/// Every consumer of accepted requests, in the order they take them: forwarding first, then each
/// signal's consumers in the order they were added.
#[derive(Default)]
pub struct Consumers {
    onward: Option<Arc<dyn Onward>>,
    traces: Vec<Arc<TracesConsumer>>,
    metrics: Vec<Arc<MetricsConsumer>>,
    logs: Vec<Arc<LogsConsumer>>,
    /// Told after every delivered request (the stores' expiry sleeps without a timer until then).
    delivered: Option<Arc<tokio::sync::Notify>>,
}

impl Consumers {
    /// No consumers: requests are accepted and counted, nothing more.
    pub fn new() -> Self {
        Self::default()
    }

    /// Hands every accepted request's bytes to `onward` before any consumer sees it.
    pub fn onward(mut self, onward: Arc<dyn Onward>) -> Self {
        self.onward = Some(onward);
        self
    }

    /// Adds a consumer of traces.
    pub fn traces(mut self, c: Arc<TracesConsumer>) -> Self {
        self.traces.push(c);
        self
    }

    /// Adds a consumer of metrics.
    pub fn metrics(mut self, c: Arc<MetricsConsumer>) -> Self {
        self.metrics.push(c);
        self
    }

    /// Adds a consumer of logs.
    pub fn logs(mut self, c: Arc<LogsConsumer>) -> Self {
        self.logs.push(c);
        self
    }

    /// Tells `delivered` after each request the consumers took: whoever sleeps until the stores hold
    /// something wakes then.
    pub fn on_delivery(mut self, delivered: Arc<tokio::sync::Notify>) -> Self {
        self.delivered = Some(delivered);
        self
    }

    /// True when accepted requests are forwarded.
    pub fn forwards(&self) -> bool {
        self.onward.is_some()
    }

    /// Hands one decoded request with `items` items to forwarding (its protobuf bytes made by `raw`,
    /// called only when forwarding is on), then to every consumer of its type. A full forwarding
    /// queue refuses the request before anything is derived from it. A consumer that panics answers
    /// for all the items and is counted; the others still run.
    pub fn deliver<R: ExportRequest>(
        &self,
        request: &R,
        items: u64,
        raw: impl FnOnce() -> Bytes,
    ) -> Result<Delivered, QueueFull> {
        let mut out = Delivered::default();
        if let Some(onward) = &self.onward {
            match isolated(|| onward.offer(R::SIGNAL, raw(), items)) {
                Some(admitted) => admitted?,
                None => {
                    out.panicked += 1;
                    out.answer = PartialSuccess::rejecting(items, CONSUMER_PANICKED);
                }
            }
        }
        for c in R::consumers(self) {
            let answer = isolated(|| c.consume(request)).unwrap_or_else(|| {
                out.panicked += 1;
                PartialSuccess::rejecting(items, CONSUMER_PANICKED)
            });
            out.answer.combine(answer);
        }
        if let Some(d) = &self.delivered {
            d.notify_one();
        }
        Ok(out)
    }
}

/// Runs one consumer so that a panic in it (a bug) unwinds no further: the release build unwinds,
/// the stores recover their locks from poisoning, and the caller answers for the consumer.
fn isolated<T>(work: impl FnOnce() -> T) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A consumer that rejects a fixed number of items with a fixed message, or panics, and counts
    /// the requests it saw.
    struct Scripted {
        rejects: u64,
        message: &'static str,
        panics: bool,
        seen: AtomicU64,
    }

    impl Scripted {
        fn new(rejects: u64, message: &'static str) -> Arc<Self> {
            Arc::new(Scripted {
                rejects,
                message,
                panics: false,
                seen: AtomicU64::new(0),
            })
        }

        fn panicking() -> Arc<Self> {
            Arc::new(Scripted {
                rejects: 0,
                message: "",
                panics: true,
                seen: AtomicU64::new(0),
            })
        }
    }

    impl<'a> Consumer<TraceView<'a>> for Scripted {
        fn consume(&self, _: &TraceView<'a>) -> PartialSuccess {
            self.seen.fetch_add(1, Ordering::Relaxed);
            if self.panics {
                panic!("a bug in a consumer");
            }
            PartialSuccess::rejecting(self.rejects, self.message)
        }
    }

    /// An onward that refuses when `full`, else records what it took.
    #[derive(Default)]
    struct Queue {
        full: bool,
        taken: std::sync::Mutex<Vec<(Signal, usize, u64)>>,
    }

    impl Onward for Queue {
        fn offer(&self, signal: Signal, body: Bytes, items: u64) -> Result<(), QueueFull> {
            if self.full {
                return Err(QueueFull);
            }
            let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
            taken.push((signal, body.len(), items));
            Ok(())
        }
    }

    /// A trace export of `n` empty spans, encoded.
    fn spans(n: usize) -> Vec<u8> {
        use prost::Message;
        opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span::default(); n],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec()
    }

    fn quiet_panics<T>(f: impl FnOnce() -> T) -> T {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let out = f();
        std::panic::set_hook(hook);
        out
    }

    #[test]
    fn answers_combine_to_the_largest_rejection_with_the_first_message() {
        let a = Scripted::new(0, "");
        let b = Scripted::new(2, "b: two spans lack an id");
        let c = Scripted::new(3, "c: three spans over a limit");
        let fan_out = Consumers::new()
            .traces(a.clone())
            .traces(b.clone())
            .traces(c.clone());
        let bytes = spans(5);
        let req = TraceView::parse(&bytes).unwrap();
        let got = fan_out.deliver(&req, req.items(), Bytes::new).unwrap();
        assert_eq!(got.panicked, 0);
        // Max, not sum: b's two may be among c's three.
        assert_eq!(
            got.answer,
            PartialSuccess::rejecting(3, "b: two spans lack an id")
        );
        for s in [&a, &b, &c] {
            assert_eq!(s.seen.load(Ordering::Relaxed), 1);
        }
        let none = Consumers::new().traces(a);
        let got = none.deliver(&req, 5, Bytes::new).unwrap();
        assert_eq!(got.answer, PartialSuccess::default());
    }

    #[test]
    fn a_panicking_consumer_costs_only_its_own_answer_and_is_counted() {
        let before = Scripted::new(1, "before: one span rejected");
        let bad = Scripted::panicking();
        let after = Scripted::new(0, "");
        let queue = Arc::new(Queue::default());
        let fan_out = Consumers::new()
            .onward(queue.clone())
            .traces(before.clone())
            .traces(bad.clone())
            .traces(after.clone());
        let bytes = spans(4);
        let req = TraceView::parse(&bytes).unwrap();
        let got =
            quiet_panics(|| fan_out.deliver(&req, req.items(), || Bytes::from_static(b"raw")));
        let got = got.unwrap();
        assert_eq!(got.panicked, 1);
        // The panicking consumer answers for all four items; the message stays the first rejection's.
        assert_eq!(
            got.answer,
            PartialSuccess::rejecting(4, "before: one span rejected")
        );
        // The consumer after it still ran, and forwarding had the request first.
        assert_eq!(after.seen.load(Ordering::Relaxed), 1);
        assert_eq!(bad.seen.load(Ordering::Relaxed), 1);
        let taken = queue.taken.lock().unwrap().clone();
        assert_eq!(taken, vec![(Signal::Traces, 3, 4)]);
        // The next request is handled as usual.
        let fan_out = Consumers::new().traces(after.clone());
        let got = fan_out.deliver(&req, 4, Bytes::new).unwrap();
        assert_eq!(got, Delivered::default());
    }

    #[test]
    fn a_full_queue_refuses_the_request_before_any_consumer_sees_it() {
        let red = Scripted::new(0, "");
        let fan_out = Consumers::new()
            .onward(Arc::new(Queue {
                full: true,
                ..Default::default()
            }))
            .traces(red.clone());
        let bytes = spans(2);
        let req = TraceView::parse(&bytes).unwrap();
        assert_eq!(fan_out.deliver(&req, 2, Bytes::new), Err(QueueFull));
        assert_eq!(red.seen.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn raw_bytes_are_made_only_when_forwarding() {
        let fan_out = Consumers::new().traces(Scripted::new(0, ""));
        let bytes = spans(1);
        let req = TraceView::parse(&bytes).unwrap();
        let got = fan_out.deliver(&req, 1, || panic!("raw bytes made without a forwarder"));
        assert_eq!(got.map(|d| d.panicked), Ok(0));
    }

    #[test]
    fn items_are_counted_per_signal() {
        use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
        use opentelemetry_proto::tonic::metrics::v1::{
            Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
        };
        assert_eq!(TraceView::parse(&spans(7)).unwrap().items(), 7);
        let gauge = |n| Metric {
            data: Some(Data::Gauge(Gauge {
                data_points: vec![NumberDataPoint::default(); n],
            })),
            ..Default::default()
        };
        let metrics = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![gauge(2), gauge(3), Metric::default()],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        assert_eq!(
            metrics.items(),
            6,
            "two, three, and one for the metric without data"
        );
        let logs = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![LogRecord::default(); 4],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        assert_eq!(logs.items(), 4);
    }
}
