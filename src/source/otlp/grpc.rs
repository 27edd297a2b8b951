//! OTLP/gRPC: the trace, metrics and logs services on tonic. A guard in front of tonic sheds load before
//! any decoding (UNAVAILABLE with RetryInfo, which clients retry) and maps tonic's own codes to the
//! OTLP specification's: OUT_OF_RANGE for an oversize message becomes RESOURCE_EXHAUSTED (no retry hint),
//! INTERNAL from a protobuf or gzip decode failure becomes INVALID_ARGUMENT.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderValue;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::http::{logs_response, metrics_response, trace_response};
use super::{Ingest, Refusal, Signal};

#[derive(Clone)]
struct Otlp(Arc<Ingest>);

#[tonic::async_trait]
impl TraceService for Otlp {
    async fn export(
        &self,
        req: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        Ok(Response::new(trace_response(self.0.traces(req.get_ref()))))
    }
}

#[tonic::async_trait]
impl MetricsService for Otlp {
    async fn export(
        &self,
        req: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        Ok(Response::new(metrics_response(
            self.0.metrics(req.get_ref()),
        )))
    }
}

#[tonic::async_trait]
impl LogsService for Otlp {
    async fn export(
        &self,
        req: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        Ok(Response::new(logs_response(self.0.logs(req.get_ref()))))
    }
}

fn signal_of(path: &str) -> Option<Signal> {
    match path {
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export" => Some(Signal::Traces),
        "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export" => Some(Signal::Metrics),
        "/opentelemetry.proto.collector.logs.v1.LogsService/Export" => Some(Signal::Logs),
        _ => None,
    }
}

/// The tower layer that puts [`Guard`] in front of the services.
#[derive(Clone)]
struct GuardLayer(Arc<Ingest>);

impl<S> tower::Layer<S> for GuardLayer {
    type Service = Guard<S>;
    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            ingest: self.0.clone(),
        }
    }
}

/// Admission control and status mapping around tonic.
#[derive(Clone)]
struct Guard<S> {
    inner: S,
    ingest: Arc<Ingest>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Guard<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let signal = signal_of(req.uri().path());
        let permit = match signal {
            Some(s) => match self.ingest.admit(s) {
                Some(p) => Some(p),
                None => {
                    let status = Status::with_error_details(
                        Code::Unavailable,
                        "vitals is at its concurrent request limit; retry later",
                        ErrorDetails::with_retry_info(Some(Duration::from_secs(1))),
                    );
                    return Box::pin(async move { Ok(status.into_http()) });
                }
            },
            None => None,
        };
        let ingest = self.ingest.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            drop(permit);
            if let Some(signal) = signal {
                remap_status(&mut resp, &ingest, signal);
            }
            Ok(resp)
        })
    }
}

/// Rewrites a trailers-only error response from tonic's decoding to the code OTLP prescribes.
fn remap_status(resp: &mut http::Response<tonic::body::Body>, ingest: &Ingest, signal: Signal) {
    let code = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok());
    let (new, refusal) = match code {
        Some(c) if c == Code::OutOfRange as i32 => (Code::ResourceExhausted, Refusal::TooLarge),
        Some(c) if c == Code::ResourceExhausted as i32 => {
            (Code::ResourceExhausted, Refusal::TooLarge)
        }
        Some(c) if c == Code::Internal as i32 => (Code::InvalidArgument, Refusal::Undecodable),
        _ => return,
    };
    ingest.stats.refused(signal, refusal);
    resp.headers_mut()
        .insert("grpc-status", HeaderValue::from(new as i32));
}

/// Serves OTLP/gRPC until `shutdown`.
pub async fn serve(listener: TcpListener, ingest: Arc<Ingest>, shutdown: CancellationToken) {
    let limit = ingest.limits.max_body;
    let svc = Otlp(ingest.clone());
    let result = tonic::transport::Server::builder()
        .layer(GuardLayer(ingest))
        .add_service(
            TraceServiceServer::new(svc.clone())
                .max_decoding_message_size(limit)
                .accept_compressed(CompressionEncoding::Gzip),
        )
        .add_service(
            MetricsServiceServer::new(svc.clone())
                .max_decoding_message_size(limit)
                .accept_compressed(CompressionEncoding::Gzip),
        )
        .add_service(
            LogsServiceServer::new(svc)
                .max_decoding_message_size(limit)
                .accept_compressed(CompressionEncoding::Gzip),
        )
        .serve_with_incoming_shutdown(
            // Small unary responses must not wait on Nagle + delayed ACK (4-5 ms per request otherwise).
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown.cancelled_owned(),
        )
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "OTLP/gRPC server stopped");
    }
}
