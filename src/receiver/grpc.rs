//! OTLP/gRPC: the trace, metrics and logs services on tonic. A guard in front of tonic reads each message
//! under a deadline, charging it to the memory budget as it arrives, inflates it and checks its decoded
//! cost before tonic decodes it; it sheds load (UNAVAILABLE with RetryInfo, which clients retry) and maps tonic's own codes to the
//! OTLP specification's: OUT_OF_RANGE for an oversize message becomes RESOURCE_EXHAUSTED (no retry hint),
//! INTERNAL from a protobuf or gzip decode failure becomes INVALID_ARGUMENT. The trace service is wired
//! by hand ([`TraceExport`]) so that tonic hands it the message's bytes undecoded, to be read in place.

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
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use tokio_util::sync::CancellationToken;
use tonic::codec::{
    Codec, CompressionEncoding, DecodeBuf, Decoder, EnabledCompressionEncodings, EncodeBuf, Encoder,
};
use tonic::transport::server::Connected;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use bytes::{Bytes, BytesMut};

use super::answer::{
    logs_response, metrics_response, trace_response, AT_CONCURRENCY_LIMIT, FORWARD_QUEUE_FULL,
    INTERNAL_ERROR, RETRY_DELAY,
};
use super::cost;
use super::decode::{gunzip, trace_view, DecodeError, Encoding};
use super::{
    ExportRequest, MemoryCharge, OverBudget, PartialSuccess, QueueFull, Receiver, Refusal, Signal,
};

/// The trace, metrics and logs export services, all handing requests to one receiver.
#[derive(Clone)]
struct ExportServices(Arc<Receiver>);

/// The answer to a request whose handling panicked: INTERNAL, which OTLP clients do not retry.
fn internal() -> Status {
    Status::internal(INTERNAL_ERROR)
}

/// The accepted message as it arrived (uncompressed), kept for forwarding.
#[derive(Clone)]
struct ArrivedMessage(Bytes);

impl ExportServices {
    /// Hands the request to the receiver's consumers. A full forwarding queue is answered UNAVAILABLE
    /// with RetryInfo, which OTLP clients retry; a panic while handling it, INTERNAL.
    fn consume<R: ExportRequest + prost::Message>(
        &self,
        req: &Request<R>,
    ) -> Result<PartialSuccess, Status> {
        let arrived = req.extensions().get::<ArrivedMessage>();
        let request = req.get_ref();
        let raw = || match arrived {
            Some(a) => a.0.clone(),
            None => Bytes::from(request.encode_to_vec()),
        };
        self.0
            .isolated(R::SIGNAL, || self.0.deliver(request, raw))
            .ok_or_else(internal)?
            .map_err(queue_full)
    }

    /// Reads a trace export's bytes in place and hands it to the receiver's consumers (forwarding gets
    /// the same bytes). Bytes prost would not decode are answered INVALID_ARGUMENT, as tonic's decode
    /// failure is after [`remap_status`].
    fn consume_traces(&self, message: &Bytes) -> Result<PartialSuccess, Status> {
        let view = trace_view(message).map_err(|e| {
            self.0.stats.refused(Signal::Traces, Refusal::Undecodable);
            Status::invalid_argument(e.to_string())
        })?;
        self.0
            .isolated(Signal::Traces, || self.0.deliver(&view, || message.clone()))
            .ok_or_else(internal)?
            .map_err(queue_full)
    }
}

/// The answer to a request the forwarding queue cannot take: UNAVAILABLE with RetryInfo.
fn queue_full(_: QueueFull) -> Status {
    Status::with_error_details(
        Code::Unavailable,
        FORWARD_QUEUE_FULL,
        ErrorDetails::with_retry_info(Some(RETRY_DELAY)),
    )
}

/// The gRPC path of the trace export method.
const TRACES_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The OTLP trace service, wired by hand as tonic's generated server is but with [`RawTraceCodec`], so
/// the message reaches the handler as bytes and prost never decodes it.
#[derive(Clone)]
struct TraceExport {
    services: ExportServices,
    max_message: usize,
}

impl tonic::server::NamedService for TraceExport {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl tower::Service<http::Request<tonic::body::Body>> for TraceExport {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        if req.uri().path() != TRACES_PATH {
            return Box::pin(async { Ok(Status::unimplemented("").into_http()) });
        }
        let this = self.clone();
        Box::pin(async move {
            let mut accept = EnabledCompressionEncodings::default();
            accept.enable(CompressionEncoding::Gzip);
            let mut grpc = tonic::server::Grpc::new(RawTraceCodec)
                .apply_compression_config(accept, EnabledCompressionEncodings::default())
                .apply_max_message_size_config(Some(this.max_message), None);
            Ok(grpc.unary(this, req).await)
        })
    }
}

impl tonic::server::UnaryService<Bytes> for TraceExport {
    type Response = ExportTraceServiceResponse;
    type Future = std::future::Ready<Result<Response<Self::Response>, Status>>;

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let answer = self.services.consume_traces(req.get_ref());
        std::future::ready(answer.map(|p| Response::new(trace_response(p))))
    }
}

/// Hands a trace export message on as its bytes and encodes the response with prost.
struct RawTraceCodec;

impl Codec for RawTraceCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = Bytes;
    type Encoder = RawTraceCodec;
    type Decoder = RawTraceCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawTraceCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawTraceCodec
    }
}

impl Decoder for RawTraceCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        use bytes::Buf;
        // The buffer holds exactly one message; taking it is a reference, not a copy.
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Encoder for RawTraceCodec {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn encode(
        &mut self,
        item: ExportTraceServiceResponse,
        dst: &mut EncodeBuf<'_>,
    ) -> Result<(), Status> {
        prost::Message::encode(&item, dst).map_err(|e| Status::internal(e.to_string()))
    }
}

#[tonic::async_trait]
impl MetricsService for ExportServices {
    async fn export(
        &self,
        req: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let p = self.consume(&req)?;
        Ok(Response::new(metrics_response(p)))
    }
}

#[tonic::async_trait]
impl LogsService for ExportServices {
    async fn export(
        &self,
        req: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let p = self.consume(&req)?;
        Ok(Response::new(logs_response(p)))
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

/// The tower layer that puts [`AdmissionGuard`] in front of the services.
#[derive(Clone)]
struct AdmissionLayer(Arc<Receiver>);

impl<S> tower::Layer<S> for AdmissionLayer {
    type Service = AdmissionGuard<S>;
    fn layer(&self, inner: S) -> AdmissionGuard<S> {
        AdmissionGuard {
            inner,
            receiver: self.0.clone(),
        }
    }
}

/// Admission control and status mapping around tonic.
#[derive(Clone)]
struct AdmissionGuard<S> {
    inner: S,
    receiver: Arc<Receiver>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S> tower::Service<http::Request<tonic::body::Body>> for AdmissionGuard<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let Some(signal) = signal_of(req.uri().path()) else {
            return Box::pin(self.inner.call(req));
        };
        // The ready clone goes to this request; the one left behind is made ready again by the next
        // poll_ready (tower's usual pattern for a service called from a spawned future).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let receiver = self.receiver.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let mut charge = receiver.memory_charge();
            let frame = match tokio::time::timeout(
                receiver.limits.body_timeout,
                read_message(body, &parts.headers, &receiver, signal, &mut charge),
            )
            .await
            {
                Ok(Ok(read)) => read,
                Ok(Err(status)) => return Ok(status.into_http()),
                Err(_) => {
                    receiver.stats.refused(signal, Refusal::Undecodable);
                    return Ok(Status::unavailable(format!(
                        "request message did not arrive within {:?}",
                        receiver.limits.body_timeout
                    ))
                    .into_http());
                }
            };
            let Some(permit) = receiver.admit(signal) else {
                return Ok(Status::with_error_details(
                    Code::Unavailable,
                    AT_CONCURRENCY_LIMIT,
                    ErrorDetails::with_retry_info(Some(RETRY_DELAY)),
                )
                .into_http());
            };
            let mut parts = parts;
            parts.headers.remove("grpc-encoding");
            // The receiver keeps the message for forwarding only when it forwards (the trace service
            // takes the message's bytes from tonic instead).
            if receiver.forwards() && signal != Signal::Traces {
                parts.extensions.insert(ArrivedMessage(frame.slice(5..)));
            }
            let req = http::Request::from_parts(
                parts,
                tonic::body::Body::new(http_body_util::Full::new(frame)),
            );
            let mut resp = inner.call(req).await?;
            drop(permit);
            drop(charge);
            remap_status(&mut resp, &receiver, signal);
            Ok(resp)
        })
    }
}

/// Reads the one length-prefixed message of a unary call under the size limit and the memory budget,
/// inflates it if it is compressed, and checks its decoded cost. Returns the message re-framed
/// uncompressed, or the status to answer with.
async fn read_message(
    mut body: tonic::body::Body,
    headers: &http::HeaderMap,
    receiver: &Receiver,
    signal: Signal,
    charge: &mut MemoryCharge,
) -> Result<Bytes, Status> {
    use http_body_util::BodyExt;
    let limit = receiver.limits.max_body;
    let over = |e: OverBudget| {
        let (e, m) = receiver.over_budget(signal, e);
        match e {
            OverBudget::TooLarge => Status::resource_exhausted(m),
            OverBudget::Busy => Status::with_error_details(
                Code::Unavailable,
                m,
                ErrorDetails::with_retry_info(Some(RETRY_DELAY)),
            ),
        }
    };
    let too_large = || {
        receiver.stats.refused(signal, Refusal::TooLarge);
        Status::resource_exhausted(DecodeError::TooLarge { limit }.to_string())
    };
    let undecodable = |m: String| {
        receiver.stats.refused(signal, Refusal::Undecodable);
        Status::invalid_argument(m)
    };
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| undecodable(format!("cannot read request: {e}")))?;
        if let Some(d) = frame.data_ref() {
            // 5 bytes of gRPC framing precede the message.
            if buf.len() + d.len() > limit + 5 {
                return Err(too_large());
            }
            charge.grow(receiver, 2 * d.len() as u64).map_err(over)?;
            buf.extend_from_slice(d);
            if buf.len() >= 5 {
                let declared = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                if declared > limit {
                    return Err(too_large());
                }
            }
        }
    }
    if buf.len() < 5 {
        return Err(undecodable("no gRPC message in the request".into()));
    }
    let compressed = buf[0] == 1;
    let declared = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if buf[0] > 1 || buf.len() != 5 + declared {
        return Err(undecodable(
            "a unary OTLP export carries exactly one gRPC message".into(),
        ));
    }
    let message = buf.freeze().slice(5..);
    let message = if compressed {
        let gzip = headers
            .get("grpc-encoding")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
        if !gzip {
            return Err(Status::unimplemented(
                "compressed message without grpc-encoding: gzip; vitals accepts gzip",
            ));
        }
        match gunzip(&message, limit, |n| charge.grow(receiver, n)) {
            Ok(m) => Bytes::from(m),
            Err(DecodeError::TooLarge { .. }) => return Err(too_large()),
            Err(DecodeError::OverBudget(e)) => return Err(over(e)),
            Err(e) => return Err(undecodable(e.to_string())),
        }
    } else {
        message
    };
    let c =
        cost::cost(signal, &message, Encoding::Protobuf).map_err(|e| undecodable(e.to_string()))?;
    receiver
        .charge_decoded(signal, charge, c)
        .map_err(|(e, m)| match e {
            OverBudget::TooLarge => Status::resource_exhausted(m),
            OverBudget::Busy => Status::with_error_details(
                Code::Unavailable,
                m,
                ErrorDetails::with_retry_info(Some(RETRY_DELAY)),
            ),
        })?;
    charge
        .grow(receiver, 5 + message.len() as u64)
        .map_err(over)?;
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.extend_from_slice(&[0]);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    Ok(framed.freeze())
}

/// Rewrites a trailers-only error response from tonic's decoding to the code OTLP prescribes.
fn remap_status(resp: &mut http::Response<tonic::body::Body>, receiver: &Receiver, signal: Signal) {
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
    receiver.stats.refused(signal, refusal);
    resp.headers_mut()
        .insert("grpc-status", HeaderValue::from(new as i32));
}

/// Serves OTLP/gRPC on the connections `incoming` yields until `shutdown`. The caller owns accepting
/// (connection limits, deadlines, TCP_NODELAY); the receiver speaks the protocol.
pub async fn serve<I, IO, IE>(incoming: I, receiver: Arc<Receiver>, shutdown: CancellationToken)
where
    I: tokio_stream::Stream<Item = Result<IO, IE>>,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limit = receiver.limits.max_body;
    let svc = ExportServices(receiver.clone());
    let result = tonic::transport::Server::builder()
        // Pings find dead peers; a request that takes longer than the body deadline plus processing
        // is cancelled; no connection holds more streams than the receiver could process.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .timeout(Duration::from_secs(30))
        .max_concurrent_streams(Some(32))
        .layer(AdmissionLayer(receiver))
        .add_service(TraceExport {
            services: svc.clone(),
            max_message: limit,
        })
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
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "OTLP/gRPC server stopped");
    }
}
