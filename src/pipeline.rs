//! The seams of the OTLP path: what the receiver hands on and what the parts downstream answer. The
//! receiver and its consumers (RED, the app metric store, log counts, the forwarder) both depend on these
//! few types and on nothing of each other, so the receiver knows nothing downstream and no consumer
//! knows the receiver. Trace exports reach their consumers as a borrowed view of the request's bytes
//! ([`trace_view`]); metrics and logs as prost-decoded requests.

pub mod trace_view;
pub mod wire;

pub mod attributes;
pub mod points;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;

pub use trace_view::TraceView;

/// The data points an OTLP metric carries, or None when it has no data (how many items that counts as is
/// the caller's: the receiver counts one, the item its consumers reject; a push request counts none).
pub fn data_points(m: &opentelemetry_proto::tonic::metrics::v1::Metric) -> Option<usize> {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    m.data.as_ref().map(|d| match d {
        Data::Gauge(g) => g.data_points.len(),
        Data::Sum(s) => s.data_points.len(),
        Data::Histogram(h) => h.data_points.len(),
        Data::ExponentialHistogram(h) => h.data_points.len(),
        Data::Summary(s) => s.data_points.len(),
    })
}

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
    /// Every signal, in label order.
    pub const ALL: [Signal; 3] = [Signal::Traces, Signal::Metrics, Signal::Logs];

    /// The `signal` label value.
    pub fn label(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
        }
    }
}

/// One consumer's answer to one request, and the combined answer the app gets: items rejected and why.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PartialSuccess {
    /// Items (spans, data points, log records) not taken.
    pub rejected: u64,
    /// Why, for the first rejection (empty when nothing was rejected).
    pub message: String,
}

impl PartialSuccess {
    /// An answer rejecting `rejected` items for `message`.
    pub fn rejecting(rejected: u64, message: impl Into<String>) -> Self {
        PartialSuccess {
            rejected,
            message: message.into(),
        }
    }

    /// Adds `items` rejected items; `why` words the reason when it is the first.
    pub fn reject(&mut self, items: u64, why: impl FnOnce() -> String) {
        if items == 0 {
            return;
        }
        self.rejected += items;
        if self.message.is_empty() {
            self.message = why();
        }
    }

    /// Folds in the answer of a later consumer of the same request. Every consumer sees every item,
    /// so two consumers' rejections may be the same items: the combined count is the larger of the
    /// two (at least that many items were not taken), never their sum, which could count an item
    /// twice or pass the request's item count. The message is the first consumer's that rejected
    /// anything.
    pub fn combine(&mut self, later: PartialSuccess) {
        if later.rejected == 0 {
            return;
        }
        if self.message.is_empty() {
            self.message = later.message;
        }
        self.rejected = self.rejected.max(later.rejected);
    }
}

/// The forwarding queue cannot take a request now; the app is answered with a retryable overload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

/// Where accepted requests go on unchanged (the forwarder): it takes the request's uncompressed
/// protobuf bytes before any consumer derives from it, and may refuse the whole request.
pub trait Onward: Send + Sync {
    /// Takes one accepted request: its uncompressed protobuf bytes and item count. A refusal leaves
    /// nothing of the request counted or derived, so the SDK's retry is not counted twice.
    fn offer(&self, signal: Signal, body: Bytes, items: u64) -> Result<(), QueueFull>;
}

/// A part downstream of the receiver that takes requests of one type (RED from trace views, app
/// metrics, log counts).
pub trait Consumer<R>: Send + Sync {
    /// Takes one accepted request; answers with the items it could not take. Called on the request's
    /// thread: must not block, and must bound what it keeps.
    fn consume(&self, request: &R) -> PartialSuccess;
}

/// A consumer of trace exports (RED, database queries): it reads each request in place, for any
/// lifetime of its bytes.
pub type TracesConsumer = dyn for<'a> Consumer<TraceView<'a>>;
/// A consumer of metric exports (the app metric store).
pub type MetricsConsumer = dyn Consumer<ExportMetricsServiceRequest>;
/// A consumer of log exports (the log counts).
pub type LogsConsumer = dyn Consumer<ExportLogsServiceRequest>;
