//! One upstream OTLP endpoint per signal: its settings (from `--forward-*` flags and the standard
//! `OTEL_EXPORTER_OTLP_*` variables) and the client that sends one request body to it and classifies the
//! answer the way the OTLP specification tells a client to (retry, give up, partial success).

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use http::uri::PathAndQuery;
use http::Uri;
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
use super::tls::{check_files, client_config, TlsFiles, UpstreamConnector};
use crate::config::OtlpProtocol;
use crate::pipeline::Signal;

/// Where and how one signal is forwarded.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Full URL: for HTTP the request URL, for gRPC the server (the method path is added).
    pub url: Uri,
    /// Wire protocol.
    pub protocol: OtlpProtocol,
    /// Extra request headers (gRPC metadata), e.g. an API key.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Compress request bodies with gzip.
    pub gzip: bool,
    /// Longest wait for one answer.
    pub timeout: Duration,
    /// TLS files for an `https://` upstream; None for `http://`.
    pub tls: Option<TlsFiles>,
}

/// The `--forward-*` options as given (flags, `VITALS_FORWARD_*` or the config file); the
/// `OTEL_EXPORTER_OTLP_*` variables fill in what these leave unset.
#[derive(Debug, Clone, Default)]
pub struct ForwardOptions {
    /// `--forward-endpoint`: base URL for every signal.
    pub endpoint: Option<String>,
    /// `--forward-{traces,metrics,logs}-endpoint`: full URL per signal.
    pub signal_endpoints: [Option<String>; 3],
    /// `--forward-protocol`.
    pub protocol: Option<String>,
    /// `--forward-headers`: `key=value,...`.
    pub headers: Option<String>,
    /// `--forward-certificate`: CA file for https upstreams.
    pub certificate: Option<String>,
    /// `--forward-client-certificate`: client certificate file for mutual TLS.
    pub client_certificate: Option<String>,
    /// `--forward-client-key`: the client certificate's key file.
    pub client_key: Option<String>,
    /// `--forward-compression`: gzip or none.
    pub compression: Option<String>,
    /// `--forward-timeout`.
    pub timeout: Option<Duration>,
}

/// Signal part of the per-signal variable names (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`).
fn env_part(s: Signal) -> &'static str {
    match s {
        Signal::Traces => "TRACES",
        Signal::Metrics => "METRICS",
        Signal::Logs => "LOGS",
    }
}

/// Looks a setting up: the flag, else the per-signal variable, else the general variable. Returns the
/// value and the name of where it came from, for error messages.
fn lookup(
    flag: Option<&String>,
    flag_name: &str,
    key: &str,
    s: Signal,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<(String, String)> {
    if let Some(v) = flag {
        return Some((v.clone(), flag_name.to_owned()));
    }
    let specific = format!("OTEL_EXPORTER_OTLP_{}_{key}", env_part(s));
    if let Some(v) = env(&specific).filter(|v| !v.trim().is_empty()) {
        return Some((v, format!("environment variable {specific}")));
    }
    let general = format!("OTEL_EXPORTER_OTLP_{key}");
    env(&general)
        .filter(|v| !v.trim().is_empty())
        .map(|v| (v, format!("environment variable {general}")))
}

impl ForwardOptions {
    /// Resolves one upstream per signal (None where no endpoint is configured). `env` reads vitals' own
    /// environment. The error names the flag or variable at fault and what to do.
    pub fn resolve(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<[Option<Upstream>; 3], String> {
        let mut out: [Option<Upstream>; 3] = [None, None, None];
        for s in [Signal::Traces, Signal::Metrics, Signal::Logs] {
            out[s as usize] = self.resolve_one(s, env)?;
        }
        Ok(out)
    }

    fn resolve_one(
        &self,
        s: Signal,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Upstream>, String> {
        let lower = s.label();
        // A per-signal endpoint is used as-is; a base endpoint gets /v1/<signal> appended for HTTP (the
        // OTLP exporter rules).
        let specific_flag = format!("--forward-{lower}-endpoint");
        let specific_var = format!("OTEL_EXPORTER_OTLP_{}_ENDPOINT", env_part(s));
        let (endpoint, origin, is_base) = if let Some(v) = &self.signal_endpoints[s as usize] {
            (v.clone(), specific_flag, false)
        } else if let Some(v) = self.endpoint.clone() {
            (v, "--forward-endpoint".to_owned(), true)
        } else if let Some(v) = env(&specific_var).filter(|v| !v.trim().is_empty()) {
            (v, format!("environment variable {specific_var}"), false)
        } else if let Some(v) = env("OTEL_EXPORTER_OTLP_ENDPOINT").filter(|v| !v.trim().is_empty())
        {
            (
                v,
                "environment variable OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
                true,
            )
        } else {
            return Ok(None);
        };
        let protocol = match lookup(
            self.protocol.as_ref(),
            "--forward-protocol",
            "PROTOCOL",
            s,
            env,
        ) {
            None => OtlpProtocol::HttpProtobuf,
            Some((v, o)) => match OtlpProtocol::parse(&v) {
                Some(p) => p,
                None if v.trim() == "http/json" => {
                    return Err(format!(
                    "{o}: http/json is not offered for forwarding (vitals forwards the protobuf \
                         bytes it received); use http/protobuf or grpc"
                ))
                }
                None => return Err(format!("{o}: {:?} is not grpc or http/protobuf", v.trim())),
            },
        };
        let (url, https) = parse_endpoint(&origin, &endpoint)?;
        // Certificates apply to https endpoints only (the OTLP exporter rules); they are read and
        // checked here so a bad file stops vitals at start with the variable's name.
        let tls = if https {
            let mut files = TlsFiles::default();
            let mut origins = Vec::new();
            for (flag, flag_name, key, slot) in [
                (
                    &self.certificate,
                    "--forward-certificate",
                    "CERTIFICATE",
                    &mut files.ca,
                ),
                (
                    &self.client_certificate,
                    "--forward-client-certificate",
                    "CLIENT_CERTIFICATE",
                    &mut files.client_cert,
                ),
                (
                    &self.client_key,
                    "--forward-client-key",
                    "CLIENT_KEY",
                    &mut files.client_key,
                ),
            ] {
                if let Some((v, o)) = lookup(flag.as_ref(), flag_name, key, s, env) {
                    *slot = Some(PathBuf::from(v.trim()));
                    origins.push(o);
                }
            }
            check_files(&files, protocol, &origins, &origin, "")?;
            Some(files)
        } else {
            None
        };
        let url = if is_base && protocol == OtlpProtocol::HttpProtobuf {
            let base = endpoint.trim_end_matches('/');
            let full = format!("{base}/v1/{lower}");
            full.parse()
                .map_err(|e| format!("{origin}: {full:?} is not a URL: {e}"))?
        } else {
            url
        };
        let headers = match lookup(
            self.headers.as_ref(),
            "--forward-headers",
            "HEADERS",
            s,
            env,
        ) {
            None => Vec::new(),
            Some((v, o)) => parse_headers(&v).map_err(|e| format!("{o}: {e}"))?,
        };
        let gzip = match lookup(
            self.compression.as_ref(),
            "--forward-compression",
            "COMPRESSION",
            s,
            env,
        ) {
            None => false,
            Some((v, o)) => match v.trim() {
                "gzip" => true,
                "none" | "" => false,
                other => return Err(format!("{o}: {other:?} is not gzip or none")),
            },
        };
        let timeout = match self.timeout {
            Some(t) => t,
            None => match lookup(None, "", "TIMEOUT", s, env) {
                None => Duration::from_secs(10),
                Some((v, o)) => Duration::from_millis(
                    v.trim()
                        .parse::<u64>()
                        .map_err(|_| format!("{o}: {v:?} is not a whole number of milliseconds"))?,
                ),
            },
        };
        if timeout.is_zero() {
            return Err(format!("timeout for forwarding {lower}: must be above 0"));
        }
        Ok(Some(Upstream {
            url,
            protocol,
            headers,
            gzip,
            timeout,
            tls,
        }))
    }
}

/// Parses `key=value,key2=value2` (values percent-decoded, as the OTLP exporter variables specify).
pub fn parse_headers(s: &str) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    let mut out = Vec::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("header {pair:?} is not key=value"))?;
        let name = HeaderName::from_bytes(k.trim().to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("header name {k:?} is not valid"))?;
        let value = HeaderValue::from_bytes(&percent_decode(v.trim()))
            .map_err(|_| format!("value of header {k:?} is not valid"))?;
        out.push((name, value));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(v) = hex {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

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

/// An OTLP endpoint URL as given by `origin` (a flag or variable, for the error): the URL and whether it
/// is `https`. It needs an `http` or `https` scheme and a host.
pub fn parse_endpoint(origin: &str, endpoint: &str) -> Result<(Uri, bool), String> {
    let endpoint = endpoint.trim();
    let url: Uri = endpoint
        .parse()
        .map_err(|e| format!("{origin}: {endpoint:?} is not a URL: {e}"))?;
    let https = match url.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => {
            return Err(format!(
                "{origin}: {endpoint:?} needs a scheme and host, e.g. http://collector:4318"
            ))
        }
    };
    if url.host().is_none() {
        return Err(format!("{origin}: {endpoint:?} has no host"));
    }
    Ok((url, https))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn base_endpoint_gets_signal_path_for_http_only() {
        let env = env_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://up:4318/")]);
        let u = ForwardOptions::default().resolve(&env).unwrap();
        assert_eq!(u[0].as_ref().unwrap().url, "http://up:4318/v1/traces");
        assert_eq!(u[2].as_ref().unwrap().url, "http://up:4318/v1/logs");
        let env = env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://up:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:9/x"),
        ]);
        let u = ForwardOptions::default().resolve(&env).unwrap();
        assert_eq!(u[0].as_ref().unwrap().url, "http://up:4317/");
        assert_eq!(u[0].as_ref().unwrap().protocol, OtlpProtocol::Grpc);
        assert_eq!(u[1].as_ref().unwrap().url, "http://m:9/x");
    }

    #[test]
    fn flags_win_and_per_signal_variables_beat_general_ones() {
        let env = env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
            ("OTEL_EXPORTER_OTLP_LOGS_COMPRESSION", "gzip"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=a%20b,X-Team=ops"),
        ]);
        let o = ForwardOptions {
            endpoint: Some("http://flag:4318".into()),
            ..Default::default()
        };
        let u = o.resolve(&env).unwrap();
        let t = u[0].as_ref().unwrap();
        assert_eq!(t.url, "http://flag:4318/v1/traces");
        assert!(!t.gzip);
        assert!(u[2].as_ref().unwrap().gzip);
        assert_eq!(t.timeout, Duration::from_millis(2500));
        assert_eq!(t.headers.len(), 2);
        assert_eq!(t.headers[0].0, "api-key");
        assert_eq!(t.headers[0].1, "a b");
    }

    #[test]
    fn certificate_flags_win_over_the_variables_and_errors_name_them() {
        let env = env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://up:4318"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/env-ca.pem"),
        ]);
        let o = ForwardOptions {
            certificate: Some("/nonexistent/flag-ca.pem".into()),
            ..Default::default()
        };
        let e = o.resolve(&env).unwrap_err();
        assert!(
            e.contains("--forward-certificate") && e.contains("flag-ca.pem"),
            "the flag is the one read: {e}"
        );
        let o = ForwardOptions {
            client_key: Some("/nonexistent/key.pem".into()),
            ..Default::default()
        };
        let e = o.resolve(&env).unwrap_err();
        assert!(e.contains("--forward-client-key"), "{e}");
    }

    #[test]
    fn errors_name_the_variable() {
        let env = env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://up:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "thrift"),
        ]);
        let e = ForwardOptions::default().resolve(&env).unwrap_err();
        assert!(e.contains("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"), "{e}");
        let env = env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://up:4318"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem"),
        ]);
        let e = ForwardOptions::default().resolve(&env).unwrap_err();
        assert!(
            e.contains("OTEL_EXPORTER_OTLP_CERTIFICATE") && e.contains("/nonexistent/ca.pem"),
            "{e}"
        );
        // Certificates are for https only: an http endpoint ignores them.
        let env = env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://up:4318"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem"),
        ]);
        let u = ForwardOptions::default().resolve(&env).unwrap();
        assert!(u[0].as_ref().unwrap().tls.is_none());
        let none = env_of(&[]);
        assert!(ForwardOptions::default()
            .resolve(&none)
            .unwrap()
            .iter()
            .all(Option::is_none));
    }

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
