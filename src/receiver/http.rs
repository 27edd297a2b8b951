//! OTLP/HTTP: `POST /v1/traces`, `/v1/metrics`, `/v1/logs` with protobuf or JSON bodies, optionally gzip.
//! Status codes follow the OTLP specification: 200 with partial_success, 400 undecodable, 404/405,
//! 413 above the size limit (no retry hint), 415 unknown media type, 503 + Retry-After when shedding.
//! Error bodies are `google.rpc.Status` in the request's encoding.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ALLOW, CONNECTION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER,
};
use hyper::{Method, Request, Response, StatusCode};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use prost::Message;
use serde::de::DeserializeOwned;

use super::answer::{
    logs_response, metrics_response, trace_response, AT_CONCURRENCY_LIMIT, FORWARD_QUEUE_FULL,
    INTERNAL_ERROR, RETRY_DELAY,
};
use super::cost;
use super::decode::{decode, gunzip, with_trace_view, DecodeError, Encoding};
use super::{
    ExportRequest, MemoryCharge, OverBudget, PartialSuccess, QueueFull, Receiver, Refusal, Signal,
};

type Resp = Response<Full<Bytes>>;

fn content_type(enc: Encoding) -> &'static str {
    match enc {
        Encoding::Protobuf => "application/x-protobuf",
        Encoding::Json => "application/json",
    }
}

/// A `google.rpc.Status` body in `enc`.
fn status_body(http: StatusCode, grpc_code: i32, message: &str, enc: Encoding) -> Resp {
    let body: Vec<u8> = match enc {
        Encoding::Protobuf => tonic_types::Status {
            code: grpc_code,
            message: message.to_owned(),
            details: vec![],
        }
        .encode_to_vec(),
        Encoding::Json => {
            serde_json::to_vec(&serde_json::json!({ "code": grpc_code, "message": message }))
                .unwrap_or_default()
        }
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = http;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type(enc)));
    r
}

/// The success response. JSON is written here rather than by serde: the proto3 JSON mapping that
/// OTLP/JSON follows spells 64-bit integers (the rejected counts) as strings.
fn ok_body(signal: Signal, p: PartialSuccess, enc: Encoding) -> Resp {
    let body = match enc {
        Encoding::Protobuf => match signal {
            Signal::Traces => trace_response(p).encode_to_vec(),
            Signal::Metrics => metrics_response(p).encode_to_vec(),
            Signal::Logs => logs_response(p).encode_to_vec(),
        },
        Encoding::Json if p.rejected == 0 => b"{}".to_vec(),
        Encoding::Json => {
            let field = match signal {
                Signal::Traces => "rejectedSpans",
                Signal::Metrics => "rejectedDataPoints",
                Signal::Logs => "rejectedLogRecords",
            };
            let v = serde_json::json!({ "partialSuccess": { field: p.rejected.to_string(), "errorMessage": p.message } });
            serde_json::to_vec(&v).unwrap_or_default()
        }
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type(enc)));
    r
}

fn media_type(req: &Request<Incoming>) -> Option<Encoding> {
    let v = req.headers().get(CONTENT_TYPE)?.to_str().ok()?;
    let mt = v.split(';').next()?.trim().to_ascii_lowercase();
    match mt.as_str() {
        "application/x-protobuf" => Some(Encoding::Protobuf),
        "application/json" => Some(Encoding::Json),
        _ => None,
    }
}

const INVALID_ARGUMENT: i32 = 3;
const RESOURCE_EXHAUSTED: i32 = 8;
const UNAVAILABLE: i32 = 14;
const INTERNAL: i32 = 13;

/// Answers one OTLP/HTTP request. The caller serves it on a listener (connection limits, deadlines,
/// graceful stop); the receiver speaks the protocol.
pub async fn handle(
    receiver: Arc<Receiver>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let signal = match req.uri().path() {
        "/v1/traces" => Signal::Traces,
        "/v1/metrics" => Signal::Metrics,
        "/v1/logs" => Signal::Logs,
        _ => {
            return Ok(status_body(
                StatusCode::NOT_FOUND,
                5,
                "unknown path; OTLP/HTTP serves /v1/traces, /v1/metrics, /v1/logs",
                Encoding::Protobuf,
            ))
        }
    };
    if req.method() != Method::POST {
        let mut r = status_body(
            StatusCode::METHOD_NOT_ALLOWED,
            12,
            "OTLP/HTTP takes POST",
            Encoding::Protobuf,
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return Ok(r);
    }
    let Some(enc) = media_type(&req) else {
        receiver
            .stats
            .refused(signal, Refusal::UnsupportedMediaType);
        return Ok(status_body(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            INVALID_ARGUMENT,
            "Content-Type must be application/x-protobuf or application/json",
            Encoding::Protobuf,
        ));
    };
    let gzip = match req
        .headers()
        .get(CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
    {
        None => false,
        Some(e) if e == "identity" || e.is_empty() => false,
        Some(e) if e == "gzip" => true,
        Some(_) => {
            receiver
                .stats
                .refused(signal, Refusal::UnsupportedMediaType);
            return Ok(status_body(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                INVALID_ARGUMENT,
                "Content-Encoding must be gzip or absent",
                enc,
            ));
        }
    };
    let limit = receiver.limits.max_body;
    let refuse = |receiver: &Receiver, e: OverBudget, message: &str| match e {
        OverBudget::TooLarge => status_body(
            StatusCode::PAYLOAD_TOO_LARGE,
            RESOURCE_EXHAUSTED,
            message,
            enc,
        ),
        OverBudget::Busy => {
            let _ = receiver;
            let mut r = status_body(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE, message, enc);
            r.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(RETRY_DELAY.as_secs()));
            r
        }
    };
    let too_large_message = DecodeError::TooLarge { limit }.to_string();
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        // Read the refused body away (not stored) so the client gets this answer rather than a reset
        // connection, which SDKs take for a network error and retry.
        drain(req.into_body()).await;
        receiver.stats.refused(signal, Refusal::TooLarge);
        return Ok(refuse(&receiver, OverBudget::TooLarge, &too_large_message));
    }
    // Everything this request holds (body as read, inflated, decoded) is charged to the memory budget
    // as it grows; nothing else is held while the body arrives, so a stalled body blocks no one.
    let mut charge = receiver.memory_charge();
    let read = tokio::time::timeout(
        receiver.limits.body_timeout,
        read_limited(req.into_body(), limit, &receiver, &mut charge),
    )
    .await;
    let raw = match read {
        Ok(Ok(b)) => b,
        Ok(Err(BodyError::TooLarge)) => {
            receiver.stats.refused(signal, Refusal::TooLarge);
            return Ok(refuse(&receiver, OverBudget::TooLarge, &too_large_message));
        }
        Ok(Err(BodyError::Budget(e))) => {
            let (e, m) = receiver.over_budget(signal, e);
            return Ok(refuse(&receiver, e, &m));
        }
        Ok(Err(BodyError::Transport(e))) => {
            receiver.stats.refused(signal, Refusal::Undecodable);
            return Ok(status_body(
                StatusCode::BAD_REQUEST,
                INVALID_ARGUMENT,
                &format!("cannot read request body: {e}"),
                enc,
            ));
        }
        Err(_) => {
            receiver.stats.refused(signal, Refusal::Undecodable);
            let mut r = status_body(
                StatusCode::REQUEST_TIMEOUT,
                UNAVAILABLE,
                &format!(
                    "request body did not arrive within {:?}",
                    receiver.limits.body_timeout
                ),
                enc,
            );
            r.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            return Ok(r);
        }
    };
    let undecodable = |e: DecodeError| {
        receiver.stats.refused(signal, Refusal::Undecodable);
        status_body(
            StatusCode::BAD_REQUEST,
            INVALID_ARGUMENT,
            &e.to_string(),
            enc,
        )
    };
    let body: std::borrow::Cow<'_, [u8]> = if gzip {
        match gunzip(&raw, limit, |n| charge.grow(&receiver, n)) {
            Ok(b) => b.into(),
            Err(DecodeError::TooLarge { .. }) => {
                receiver.stats.refused(signal, Refusal::TooLarge);
                return Ok(refuse(&receiver, OverBudget::TooLarge, &too_large_message));
            }
            Err(DecodeError::OverBudget(e)) => {
                let (e, m) = receiver.over_budget(signal, e);
                return Ok(refuse(&receiver, e, &m));
            }
            Err(e) => return Ok(undecodable(e)),
        }
    } else {
        raw.as_ref().into()
    };
    let cost = match cost::cost(signal, &body, enc) {
        Ok(c) => c,
        Err(e) => return Ok(undecodable(e)),
    };
    if let Err((e, m)) = receiver.charge_decoded(signal, &mut charge, cost) {
        return Ok(refuse(&receiver, e, &m));
    }
    let Some(_permit) = receiver.admit(signal) else {
        return Ok(refuse(&receiver, OverBudget::Busy, AT_CONCURRENCY_LIMIT));
    };
    // Forwarding takes the request before it is applied: a full queue answers a retryable overload
    // and nothing of the request is counted, so the SDK's retry is not counted twice.
    let handled = receiver.isolated(signal, || {
        let delivered = match signal {
            Signal::Traces => consume_traces(&receiver, &body, enc),
            Signal::Metrics => consume::<ExportMetricsServiceRequest>(&receiver, &body, enc),
            Signal::Logs => consume::<ExportLogsServiceRequest>(&receiver, &body, enc),
        };
        match delivered {
            Ok(Ok(p)) => ok_body(signal, p, enc),
            Ok(Err(QueueFull)) => refuse(&receiver, OverBudget::Busy, FORWARD_QUEUE_FULL),
            Err(e) => undecodable(e),
        }
    });
    let resp = handled.unwrap_or_else(|| {
        status_body(
            StatusCode::INTERNAL_SERVER_ERROR,
            INTERNAL,
            INTERNAL_ERROR,
            enc,
        )
    });
    drop(charge);
    Ok(resp)
}

/// Reads a trace export body in place (an OTLP/JSON one decoded by serde, read through the same view)
/// and hands it to the receiver's consumers; forwarding gets a copy of the body (rather than a slice
/// of the read buffer, whose capacity may be up to twice the body: the queue bound then is the memory
/// the queue holds), or a JSON body's request encoded to protobuf.
fn consume_traces(
    receiver: &Receiver,
    body: &[u8],
    enc: Encoding,
) -> Result<Result<PartialSuccess, QueueFull>, DecodeError> {
    with_trace_view(body, enc, |view| receiver.deliver_traces(view))
}

/// Decodes a metrics or logs body as `R` and hands it to the receiver's consumers.
fn consume<R>(
    receiver: &Receiver,
    body: &[u8],
    enc: Encoding,
) -> Result<Result<PartialSuccess, QueueFull>, DecodeError>
where
    R: ExportRequest + prost::Message + DeserializeOwned + Default,
{
    let request = decode::<R>(body, enc)?;
    Ok(receiver.deliver(&request, || match enc {
        // A copy rather than a slice of the read buffer, whose capacity may be up to twice the body:
        // the queue bound then is the memory the queue holds.
        Encoding::Protobuf => Bytes::copy_from_slice(body),
        Encoding::Json => Bytes::from(request.encode_to_vec()),
    }))
}

/// Most bytes read away from a refused body, and for how long, before the connection is dropped instead.
const DRAIN_MAX: usize = 64 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Why a body could not be read.
enum BodyError {
    /// Past the size limit (the rest was drained).
    TooLarge,
    /// The memory budget could not hold it.
    Budget(OverBudget),
    /// The connection failed.
    Transport(hyper::Error),
}

/// Reads a body of at most `limit` bytes, charging what it holds to `charge` (twice the bytes read:
/// the buffer grows by doubling).
async fn read_limited(
    mut body: Incoming,
    limit: usize,
    receiver: &Receiver,
    charge: &mut MemoryCharge,
) -> Result<Bytes, BodyError> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::Transport)?;
        if let Some(d) = frame.data_ref() {
            if buf.len() + d.len() > limit {
                drain(body).await;
                return Err(BodyError::TooLarge);
            }
            charge
                .grow(receiver, 2 * d.len() as u64)
                .map_err(BodyError::Budget)?;
            buf.extend_from_slice(d);
        }
    }
    Ok(buf.freeze())
}

async fn drain(mut body: Incoming) {
    let work = async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > DRAIN_MAX {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, work).await;
}
