//! The answers both front ends give: the export responses built from a partial-success outcome, and the
//! wording and retry delay of the overload answers (503 + Retry-After over HTTP, UNAVAILABLE + RetryInfo
//! over gRPC), so an app hears the same thing whichever protocol it speaks.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};

use super::PartialSuccess;

/// The delay an overloaded receiver asks clients to wait before retrying (Retry-After / RetryInfo).
pub const RETRY_DELAY: Duration = Duration::from_secs(1);

/// The answer when the forwarding queue is full.
pub const FORWARD_QUEUE_FULL: &str =
    "vitals' queue to the upstream OTLP endpoint is full; retry later";

/// The answer when the receiver is at its concurrent request limit.
pub const AT_CONCURRENCY_LIMIT: &str = "vitals is at its concurrent request limit; retry later";

/// The answer to a request whose handling panicked (a bug); clients do not retry it.
pub const INTERNAL_ERROR: &str = "vitals failed handling this request (a bug: please report it)";

/// The trace response for a partial outcome (no partial_success when nothing was rejected).
pub fn trace_response(p: PartialSuccess) -> ExportTraceServiceResponse {
    ExportTraceServiceResponse {
        partial_success: (p.rejected > 0).then_some(ExportTracePartialSuccess {
            rejected_spans: p.rejected as i64,
            error_message: p.message,
        }),
    }
}

/// The metrics response for a partial outcome.
pub fn metrics_response(p: PartialSuccess) -> ExportMetricsServiceResponse {
    ExportMetricsServiceResponse {
        partial_success: (p.rejected > 0).then_some(ExportMetricsPartialSuccess {
            rejected_data_points: p.rejected as i64,
            error_message: p.message,
        }),
    }
}

/// The logs response for a partial outcome.
pub fn logs_response(p: PartialSuccess) -> ExportLogsServiceResponse {
    ExportLogsServiceResponse {
        partial_success: (p.rejected > 0).then_some(ExportLogsPartialSuccess {
            rejected_log_records: p.rejected as i64,
            error_message: p.message,
        }),
    }
}
