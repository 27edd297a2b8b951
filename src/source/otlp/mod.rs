//! The OTLP receiver: gRPC and HTTP front ends share one [`Ingest`], which bounds concurrent requests,
//! hands decoded requests to the stores, and counts items and refused requests.

pub mod decode;
pub mod grpc;
pub mod http;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::signal::latency::{facts, RedStore};
use crate::store::app_metrics::{service_name, AppMetrics};
use crate::store::limited::OverflowCounter;
use crate::store::logs::LogCounts;
use crate::store::{Collector, Family, MetricKind, Value};

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
}

impl Refusal {
    const ALL: [Refusal; 4] = [
        Refusal::TooLarge,
        Refusal::Undecodable,
        Refusal::Overloaded,
        Refusal::UnsupportedMediaType,
    ];

    fn label(self) -> &'static str {
        match self {
            Refusal::TooLarge => "too_large",
            Refusal::Undecodable => "undecodable",
            Refusal::Overloaded => "overloaded",
            Refusal::UnsupportedMediaType => "unsupported_media_type",
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
    refused: [[AtomicU64; 4]; 3],
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
    fn collect(&self, out: &mut Vec<Family>) {
        let mut items = Family::new(
            "vitals_exporter_otlp_items",
            "OTLP items (spans, data points, log records) received",
            "",
            MetricKind::Counter,
        );
        let mut refused = Family::new(
            "vitals_exporter_otlp_refused_requests",
            "OTLP requests refused whole, by reason",
            "",
            MetricKind::Counter,
        );
        for s in Signal::ALL {
            for (i, outcome) in ["accepted", "rejected"].iter().enumerate() {
                items.push(
                    &[("signal", s.label()), ("outcome", outcome)],
                    Value::Counter(self.items[s as usize][i].load(Ordering::Relaxed) as f64),
                );
            }
            for r in Refusal::ALL {
                refused.push(
                    &[("signal", s.label()), ("reason", r.label())],
                    Value::Counter(
                        self.refused[s as usize][r as usize].load(Ordering::Relaxed) as f64
                    ),
                );
            }
        }
        out.push(items);
        out.push(refused);
        out.push(
            Family::new(
                "vitals_exporter_series_overflow",
                "Observations sent to an overflow series because a cardinality limit was reached",
                "",
                MetricKind::Counter,
            )
            .with(&[], Value::Counter(self.overflow.get() as f64)),
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
    red: Arc<RedStore>,
    app: Arc<AppMetrics>,
    logs: Arc<LogCounts>,
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
        Ingest {
            permits: Arc::new(Semaphore::new(limits.max_concurrent)),
            limits,
            stats,
            red,
            app,
            logs,
        }
    }

    /// Stats with the given overflow counter.
    pub fn stats_with(overflow: OverflowCounter) -> OtlpStats {
        OtlpStats {
            overflow,
            ..Default::default()
        }
    }

    /// A slot for one request, or None when the receiver is at its concurrency limit (shed before
    /// reading or decoding anything).
    pub fn admit(&self, signal: Signal) -> Option<OwnedSemaphorePermit> {
        let p = self.permits.clone().try_acquire_owned().ok();
        if p.is_none() {
            self.stats.refused(signal, Refusal::Overloaded);
        }
        p
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
