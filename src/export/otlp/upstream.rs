//! The client that sends one request body to an upstream OTLP endpoint (its settings, from `--forward-*`
//! and the standard `OTEL_EXPORTER_OTLP_*` variables, are [`crate::config::otlp::Upstream`]) and
//! classifies the answer the way the OTLP specification tells a client to (retry, give up, partial
//! success).

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use http::uri::PathAndQuery;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, Endpoint};
use tonic::Status;
use tonic_types::StatusExt;

use super::retry::{grpc_code_retryable, http_status_retryable, parse_retry_after};
use super::tls::UpstreamConnector;
use crate::config::otlp::{client_config, Upstream};
use crate::config::OtlpProtocol;
use crate::pipeline::Signal;

/// What became of one send.
#[derive(Debug)]
pub enum Answer {
    /// Taken; `rejected` items refused by the upstream's partial success, with its message.
    Accepted {
        /// Items the upstream refused.
        rejected: u64,
        /// The upstream's message about them.
        message: String,
    },
    /// Retryable failure; `after` is the upstream's Retry-After / RetryInfo when it gave one.
    Retry {
        /// Delay the upstream asked for.
        after: Option<Duration>,
        /// What failed.
        why: String,
    },
    /// Permanent failure: the data is not sent again.
    Permanent {
        /// Short reason, stable per cause (for logging once per reason).
        reason: String,
    },
}

/// A client for one upstream.
#[derive(Clone)]
pub enum Sender {
    /// OTLP/HTTP.
    Http {
        /// Settings.
        up: Upstream,
        /// Pooled hyper client.
        client: Box<Client<UpstreamConnector, Full<Bytes>>>,
    },
    /// OTLP/gRPC.
    Grpc {
        /// Settings.
        up: Upstream,
        /// Lazily connected channel.
        channel: Channel,
        /// Method path for the signal.
        path: PathAndQuery,
    },
}

/// Largest upstream answer body read (an export response is a few bytes; an error status a message).
const MAX_ANSWER: usize = 64 << 10;

impl Sender {
    /// A client for `up` carrying `signal`.
    pub fn new(up: Upstream, signal: Signal) -> Result<Sender, String> {
        let tls = up
            .tls
            .as_ref()
            .map(|f| client_config(f, up.protocol))
            .transpose()?;
        let connector = UpstreamConnector::new(tls);
        match up.protocol {
            OtlpProtocol::HttpProtobuf => {
                let client = Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(30))
                    .build(connector);
                Ok(Sender::Http {
                    up,
                    client: Box::new(client),
                })
            }
            OtlpProtocol::Grpc => {
                let channel = Endpoint::from(up.url.clone())
                    .connect_timeout(up.timeout)
                    .connect_with_connector_lazy(connector);
                let path = match signal {
                    Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                    Signal::Metrics => {
                        "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
                    }
                    Signal::Logs => "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
                };
                Ok(Sender::Grpc {
                    up,
                    channel,
                    path: PathAndQuery::from_static(path),
                })
            }
        }
    }

    /// Sends one uncompressed protobuf request body and classifies the answer.
    pub async fn send(&self, signal: Signal, body: Bytes) -> Answer {
        match self {
            Sender::Http { up, client } => send_http(up, client, signal, body).await,
            Sender::Grpc { up, channel, path } => {
                send_grpc(up, channel.clone(), path.clone(), signal, body).await
            }
        }
    }
}

fn gzip(body: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4 + 64),
        flate2::Compression::fast(),
    );
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(body);
    enc.finish().unwrap_or_default()
}

/// Rejected items and message from an export response body.
fn partial(signal: Signal, body: &[u8]) -> Option<(u64, String)> {
    match signal {
        Signal::Traces => ExportTraceServiceResponse::decode(body)
            .ok()?
            .partial_success
            .map(|p| (p.rejected_spans.max(0) as u64, p.error_message)),
        Signal::Metrics => ExportMetricsServiceResponse::decode(body)
            .ok()?
            .partial_success
            .map(|p| (p.rejected_data_points.max(0) as u64, p.error_message)),
        Signal::Logs => ExportLogsServiceResponse::decode(body)
            .ok()?
            .partial_success
            .map(|p| (p.rejected_log_records.max(0) as u64, p.error_message)),
    }
}

async fn send_http(
    up: &Upstream,
    client: &Client<UpstreamConnector, Full<Bytes>>,
    signal: Signal,
    body: Bytes,
) -> Answer {
    let body = if up.gzip {
        Bytes::from(gzip(&body))
    } else {
        body
    };
    let mut req = http::Request::post(up.url.clone())
        .header(CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(body));
    let req = match req.as_mut() {
        Ok(r) => {
            if up.gzip {
                r.headers_mut()
                    .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            for (k, v) in &up.headers {
                r.headers_mut().insert(k.clone(), v.clone());
            }
            req
        }
        Err(_) => req,
    };
    let req = match req {
        Ok(r) => r,
        Err(e) => {
            return Answer::Permanent {
                reason: format!("cannot build the request: {e}"),
            }
        }
    };
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| {
            let mut s = e.to_string();
            if let Some(src) = std::error::Error::source(&e) {
                s = format!("{s}: {src}");
            }
            s
        })?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        Ok::<_, String>((status, retry_after, body))
    };
    match tokio::time::timeout(up.timeout, exchange).await {
        Err(_) => Answer::Retry {
            after: None,
            why: format!("no answer within {:?}", up.timeout),
        },
        Ok(Err(e)) => Answer::Retry {
            after: None,
            why: format!("connection: {e}"),
        },
        Ok(Ok((status, after, body))) => {
            if status.is_success() {
                let (rejected, message) = partial(signal, &body).unwrap_or_default();
                Answer::Accepted { rejected, message }
            } else if http_status_retryable(status.as_u16()) {
                Answer::Retry {
                    after,
                    why: format!("HTTP {}", status.as_u16()),
                }
            } else {
                Answer::Permanent {
                    reason: format!("HTTP {}", status.as_u16()),
                }
            }
        }
    }
}

/// Passes the already-encoded protobuf message through tonic unchanged, both ways.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        use bytes::BufMut;
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

async fn send_grpc(
    up: &Upstream,
    channel: Channel,
    path: PathAndQuery,
    signal: Signal,
    body: Bytes,
) -> Answer {
    let mut grpc = tonic::client::Grpc::new(channel);
    if up.gzip {
        grpc = grpc.send_compressed(CompressionEncoding::Gzip);
    }
    grpc = grpc.accept_compressed(CompressionEncoding::Gzip);
    let mut req = tonic::Request::new(body);
    req.set_timeout(up.timeout);
    for (k, v) in &up.headers {
        req.metadata_mut().as_mut().insert(k.clone(), v.clone());
    }
    let call = async {
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(format!("connection: {e}")))?;
        grpc.unary(req, path, RawCodec).await
    };
    let result = match tokio::time::timeout(up.timeout, call).await {
        Ok(r) => r,
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no answer within {:?}",
            up.timeout
        ))),
    };
    match result {
        Ok(resp) => {
            let (rejected, message) = partial(signal, resp.get_ref()).unwrap_or_default();
            Answer::Accepted { rejected, message }
        }
        Err(status) => classify_grpc(&status),
    }
}

/// A gRPC error status as an [`Answer`], by the retry rules in [`super::retry`].
fn classify_grpc(status: &Status) -> Answer {
    let info = status.get_details_retry_info().and_then(|r| r.retry_delay);
    if grpc_code_retryable(status.code(), info.is_some()) {
        Answer::Retry {
            after: info,
            why: format!("gRPC {:?}: {}", status.code(), status.message()),
        }
    } else {
        Answer::Permanent {
            reason: format!("gRPC {:?}", status.code()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn grpc_retry_rules() {
        assert!(matches!(
            classify_grpc(&Status::unavailable("x")),
            Answer::Retry { .. }
        ));
        assert!(matches!(
            classify_grpc(&Status::resource_exhausted("x")),
            Answer::Permanent { .. }
        ));
        let with_info = Status::with_error_details(
            Code::ResourceExhausted,
            "x",
            tonic_types::ErrorDetails::with_retry_info(Some(Duration::from_secs(3))),
        );
        match classify_grpc(&with_info) {
            Answer::Retry { after, .. } => assert_eq!(after, Some(Duration::from_secs(3))),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify_grpc(&Status::invalid_argument("x")),
            Answer::Permanent { .. }
        ));
    }
}
