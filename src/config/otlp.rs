//! The OTLP export settings: forwarding (`--forward-*` with the standard `OTEL_EXPORTER_OTLP_*`
//! variables filling in what the flags leave unset) and push (`--push-*`), resolved and checked into the
//! settings the forwarder and the pusher are started with: upstream URLs, protocol, headers, compression,
//! timeouts, TLS files (loaded here, so a bad file stops vitals at start naming where it came from) and
//! the retry policy. The exporters in `export/otlp/` take these settings; nothing here sends anything.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::Uri;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use super::OtlpProtocol;
use crate::pipeline::Signal;

/// How long to wait between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Backoff before the first retry when the peer asked for no delay; doubles per retry.
    pub first_backoff: Duration,
    /// Largest backoff.
    pub max_backoff: Duration,
    /// Longest asked-for delay (Retry-After, RetryInfo) honoured; a longer one waits this long.
    pub max_asked_delay: Duration,
}

impl RetryPolicy {
    /// The policy vitals uses: 200 ms doubling to 5 s (the OpenTelemetry SDKs' order of magnitude), asked
    /// delays honoured up to a minute.
    pub const OTLP: RetryPolicy = RetryPolicy {
        first_backoff: Duration::from_millis(200),
        max_backoff: Duration::from_secs(5),
        max_asked_delay: Duration::from_secs(60),
    };
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::OTLP
    }
}

/// TLS files for an upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificates (PEM) that sign the upstream's certificate; None: the system's roots.
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS.
    pub client_cert: Option<PathBuf>,
    /// Client private key (PEM).
    pub client_key: Option<PathBuf>,
}

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{what} {}: {e}", path.display()))?
        .collect();
    let certs = certs.map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: no PEM certificate in the file",
            path.display()
        ));
    }
    Ok(certs)
}

/// The ALPN protocol an upstream speaking `protocol` is offered: `h2` for gRPC, `http/1.1` for HTTP.
fn alpn(protocol: OtlpProtocol) -> &'static [u8] {
    match protocol {
        OtlpProtocol::Grpc => b"h2",
        OtlpProtocol::HttpProtobuf => b"http/1.1",
    }
}

/// Loads `files` as an https upstream speaking `protocol` would, so a bad file stops vitals at start.
/// The error names where the files came from (`named`); when none was given, `origin` (the endpoint's
/// flag or variable) followed by `advice`.
pub fn check_files(
    files: &TlsFiles,
    protocol: OtlpProtocol,
    named: &[String],
    origin: &str,
    advice: &str,
) -> Result<(), String> {
    client_config(files, protocol).map(|_| ()).map_err(|e| {
        if named.is_empty() {
            format!("{origin}: {e}{advice}")
        } else {
            format!("{}: {e}", named.join(", "))
        }
    })
}

/// Builds the rustls client configuration for an upstream speaking `protocol` (its ALPN: `h2` for gRPC,
/// `http/1.1` for OTLP/HTTP).
pub fn client_config(
    files: &TlsFiles,
    protocol: OtlpProtocol,
) -> Result<Arc<ClientConfig>, String> {
    let alpn = alpn(protocol);
    let mut roots = RootCertStore::empty();
    match &files.ca {
        Some(ca) => {
            for c in read_certs(ca, "certificate")? {
                roots
                    .add(c)
                    .map_err(|e| format!("certificate {}: {e}", ca.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                // A system root rustls cannot parse is skipped, as every client does.
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(
                    "no system CA certificates found; set OTEL_EXPORTER_OTLP_CERTIFICATE to the CA \
                     that signs the upstream's certificate"
                        .into(),
                );
            }
        }
    }
    let builder = ClientConfig::builder().with_root_certificates(roots);
    let mut config = match (&files.client_cert, &files.client_key) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert, "client certificate")?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("client key {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate and key: {e}"))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(
                "a client certificate needs its key and the other way round \
                 (OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY)"
                    .into(),
            )
        }
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

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

/// Forwarding settings.
#[derive(Debug, Clone)]
pub struct ForwardSettings {
    /// Upstream per signal (indexed by `Signal as usize`); None leaves that signal at vitals.
    pub upstreams: [Option<Upstream>; 3],
    /// Bytes all queued and in-flight requests may hold together.
    pub queue_bytes: u64,
    /// Longest time shutdown waits for the queue to empty.
    pub drain_timeout: Duration,
    /// Waits between attempts ([`RetryPolicy::OTLP`]).
    pub retry: RetryPolicy,
}

impl ForwardSettings {
    /// Default queue bound: 16 MiB, within the 96 MiB the shipped manifest gives vitals beside the
    /// receiver's 32 MiB budget.
    pub const DEFAULT_QUEUE_BYTES: u64 = 16 << 20;
    /// Default drain timeout.
    pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

    /// True when at least one signal has an upstream.
    pub fn enabled(&self) -> bool {
        self.upstreams.iter().any(Option::is_some)
    }
}

/// Which OTLP type a histogram is pushed as (`--push-histograms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Histograms {
    /// An ExponentialHistogram where every point of the metric keeps exponential buckets (RED, the
    /// app's exponential histograms), an explicit-bucket Histogram where it does not.
    #[default]
    Exponential,
    /// Always the explicit (classic) buckets: for a receiver that cannot store exponential histograms
    /// (a Prometheus without native histograms enabled).
    Explicit,
}

/// A `--push-*` value with the name of where it came from (flag, `VITALS_PUSH_*` variable or config
/// file field), for error messages.
pub type Named<T> = Option<(T, String)>;

/// The `--push-*` options as given.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// `--push-endpoint`: where to push; unset turns pushing off.
    pub endpoint: Named<String>,
    /// `--push-protocol`: grpc or http/protobuf.
    pub protocol: Named<String>,
    /// `--push-interval`.
    pub interval: Named<Duration>,
    /// `--push-headers`: `key=value,...`.
    pub headers: Named<String>,
    /// `--push-compression`: gzip or none.
    pub compression: Named<String>,
    /// `--push-timeout`.
    pub timeout: Named<Duration>,
    /// `--push-certificate`: CA (PEM) for an https endpoint.
    pub certificate: Named<PathBuf>,
    /// `--push-client-certificate` (PEM).
    pub client_certificate: Named<PathBuf>,
    /// `--push-client-key` (PEM).
    pub client_key: Named<PathBuf>,
    /// `--push-service-name`.
    pub service_name: Named<String>,
    /// `--push-histograms`: exponential or explicit.
    pub histograms: Named<String>,
}

/// Where, how often and as whom vitals pushes.
#[derive(Debug, Clone)]
pub struct PushSettings {
    /// The endpoint (full URL for HTTP; the server for gRPC).
    pub upstream: Upstream,
    /// Time between pushes.
    pub interval: Duration,
    /// `service.name` of the pushed resource.
    pub service_name: String,
    /// Longest time the final push at shutdown may take (`--forward-drain-timeout`).
    pub grace: Duration,
    /// Which OTLP type histograms are pushed as.
    pub histograms: Histograms,
    /// Waits between attempts ([`RetryPolicy::OTLP`]); a push is retried until the next is due.
    pub retry: RetryPolicy,
}

impl PushSettings {
    /// Default push interval.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(15);
    /// Default `service.name`.
    pub const DEFAULT_SERVICE_NAME: &'static str = "vitals";
}

fn origin_of<T>(v: &Named<T>, flag: &str) -> String {
    v.as_ref()
        .map_or_else(|| flag.to_owned(), |(_, o)| o.clone())
}

impl PushOptions {
    /// The push settings, or None when no endpoint is set. `grace` bounds the final push. The error names
    /// the flag, variable or file field at fault and what to do.
    pub fn resolve(&self, grace: Duration) -> Result<Option<PushSettings>, String> {
        let Some((endpoint, origin)) = &self.endpoint else {
            return Ok(None);
        };
        let protocol = match &self.protocol {
            None => OtlpProtocol::HttpProtobuf,
            Some((v, o)) => OtlpProtocol::parse(v)
                .ok_or_else(|| format!("{o}: {:?} is not grpc or http/protobuf", v.trim()))?,
        };
        let (url, https) = parse_endpoint(origin, endpoint)?;
        // For OTLP/HTTP a URL without a path gets the standard metrics path; one with a path (Prometheus'
        // /api/v1/otlp/v1/metrics) is used as given.
        let url = if protocol == OtlpProtocol::HttpProtobuf && matches!(url.path(), "" | "/") {
            let full = format!("{}/v1/metrics", endpoint.trim_end_matches('/'));
            full.parse()
                .map_err(|e| format!("{origin}: {full:?} is not a URL: {e}"))?
        } else {
            url
        };
        let files = TlsFiles {
            ca: self.certificate.as_ref().map(|(p, _)| p.clone()),
            client_cert: self.client_certificate.as_ref().map(|(p, _)| p.clone()),
            client_key: self.client_key.as_ref().map(|(p, _)| p.clone()),
        };
        let tls =
            if https {
                let named: Vec<String> = [
                    &self.certificate,
                    &self.client_certificate,
                    &self.client_key,
                ]
                .into_iter()
                .filter_map(|n| n.as_ref().map(|(_, o)| o.clone()))
                .collect();
                check_files(
                    &files,
                    protocol,
                    &named,
                    origin,
                    " (set --push-certificate to the CA)",
                )?;
                Some(files)
            } else {
                if files != TlsFiles::default() {
                    return Err(format!(
                    "{}: certificates apply to an https:// endpoint, and {origin} is {endpoint:?}",
                    [&self.certificate, &self.client_certificate, &self.client_key]
                        .into_iter()
                        .filter_map(|n| n.as_ref().map(|(_, o)| o.clone()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                }
                None
            };
        let headers = match &self.headers {
            None => Vec::new(),
            Some((v, o)) => parse_headers(v).map_err(|e| format!("{o}: {e}"))?,
        };
        let gzip = match &self.compression {
            None => false,
            Some((v, o)) => match v.trim() {
                "gzip" => true,
                "none" | "" => false,
                other => return Err(format!("{o}: {other:?} is not gzip or none")),
            },
        };
        let timeout = self
            .timeout
            .as_ref()
            .map_or(Duration::from_secs(10), |(t, _)| *t);
        if timeout.is_zero() {
            return Err(format!(
                "{}: must be above 0",
                origin_of(&self.timeout, "--push-timeout")
            ));
        }
        let interval = self
            .interval
            .as_ref()
            .map_or(PushSettings::DEFAULT_INTERVAL, |(t, _)| *t);
        if interval < Duration::from_secs(1) || interval > Duration::from_secs(3600) {
            return Err(format!(
                "{}: {} is outside 1s..1h",
                origin_of(&self.interval, "--push-interval"),
                humantime::format_duration(interval)
            ));
        }
        let service_name = match &self.service_name {
            None => PushSettings::DEFAULT_SERVICE_NAME.to_owned(),
            Some((v, o)) => {
                let v = v.trim();
                if v.is_empty() {
                    return Err(format!("{o}: must not be empty"));
                }
                v.to_owned()
            }
        };
        let histograms = match &self.histograms {
            None => Histograms::Exponential,
            Some((v, o)) => match v.trim() {
                "exponential" => Histograms::Exponential,
                "explicit" => Histograms::Explicit,
                other => return Err(format!("{o}: {other:?} is not exponential or explicit")),
            },
        };
        Ok(Some(PushSettings {
            upstream: Upstream {
                url,
                protocol,
                headers,
                gzip,
                timeout,
                tls,
            },
            interval,
            service_name,
            grace,
            histograms,
            retry: RetryPolicy::OTLP,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named<T>(v: T, o: &str) -> Named<T> {
        Some((v, o.to_owned()))
    }

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
    fn http_endpoint_without_path_gets_the_metrics_path() {
        let o = PushOptions {
            endpoint: named("http://collector:4318".into(), "--push-endpoint"),
            ..Default::default()
        };
        let s = o.resolve(Duration::from_secs(3)).unwrap().unwrap();
        assert_eq!(s.upstream.url, "http://collector:4318/v1/metrics");
        assert_eq!(s.interval, PushSettings::DEFAULT_INTERVAL);
        assert_eq!(s.service_name, "vitals");
        assert_eq!(s.grace, Duration::from_secs(3));
        assert_eq!(s.histograms, Histograms::Exponential);
        let o = PushOptions {
            endpoint: named(
                "http://prom:9090/api/v1/otlp/v1/metrics".into(),
                "--push-endpoint",
            ),
            ..Default::default()
        };
        let s = o.resolve(Duration::ZERO).unwrap().unwrap();
        assert_eq!(s.upstream.url, "http://prom:9090/api/v1/otlp/v1/metrics");
        let o = PushOptions {
            endpoint: named("http://collector:4317".into(), "--push-endpoint"),
            protocol: named("grpc".into(), "--push-protocol"),
            headers: named("api-key=a%20b".into(), "--push-headers"),
            compression: named("gzip".into(), "--push-compression"),
            ..Default::default()
        };
        let s = o.resolve(Duration::ZERO).unwrap().unwrap();
        assert_eq!(s.upstream.url, "http://collector:4317/");
        assert_eq!(s.upstream.protocol, OtlpProtocol::Grpc);
        assert!(s.upstream.gzip);
        assert_eq!(s.upstream.headers[0].1, "a b");
        let s = PushOptions {
            histograms: named("explicit".into(), "--push-histograms"),
            ..o
        }
        .resolve(Duration::ZERO)
        .unwrap()
        .unwrap();
        assert_eq!(s.histograms, Histograms::Explicit);
        assert!(PushOptions::default()
            .resolve(Duration::ZERO)
            .unwrap()
            .is_none());
    }

    #[test]
    fn errors_name_where_the_value_came_from() {
        let base = PushOptions {
            endpoint: named("http://c:4318".into(), "--push-endpoint"),
            ..Default::default()
        };
        let e = PushOptions {
            protocol: named(
                "http/json".into(),
                "environment variable VITALS_PUSH_PROTOCOL",
            ),
            ..base.clone()
        }
        .resolve(Duration::ZERO)
        .unwrap_err();
        assert!(
            e.starts_with("environment variable VITALS_PUSH_PROTOCOL"),
            "{e}"
        );
        let e = PushOptions {
            interval: named(Duration::from_millis(500), "--push-interval"),
            ..base.clone()
        }
        .resolve(Duration::ZERO)
        .unwrap_err();
        assert!(e.starts_with("--push-interval: 500ms is outside"), "{e}");
        let e = PushOptions {
            histograms: named(
                "native".into(),
                "environment variable VITALS_PUSH_HISTOGRAMS",
            ),
            ..base.clone()
        }
        .resolve(Duration::ZERO)
        .unwrap_err();
        assert!(
            e.starts_with("environment variable VITALS_PUSH_HISTOGRAMS: \"native\" is not"),
            "{e}"
        );
        let e = PushOptions {
            endpoint: named(
                "collector:4318".into(),
                "config file v.yaml: field push-endpoint",
            ),
            ..Default::default()
        }
        .resolve(Duration::ZERO)
        .unwrap_err();
        assert!(
            e.starts_with("config file v.yaml: field push-endpoint"),
            "{e}"
        );
        let e = PushOptions {
            endpoint: named("https://c:4318".into(), "--push-endpoint"),
            certificate: named("/nonexistent/ca.pem".into(), "--push-certificate"),
            ..Default::default()
        }
        .resolve(Duration::ZERO)
        .unwrap_err();
        assert!(
            e.starts_with("--push-certificate") && e.contains("/nonexistent/ca.pem"),
            "{e}"
        );
        let e = PushOptions {
            certificate: named("/tmp/ca.pem".into(), "--push-certificate"),
            ..base
        }
        .resolve(Duration::ZERO)
        .unwrap_err();
        assert!(e.contains("https://"), "{e}");
    }

    #[test]
    fn a_bad_file_is_named_after_where_it_came_from() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("ca.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let files = TlsFiles {
            ca: Some(empty.clone()),
            ..TlsFiles::default()
        };
        let named = vec!["--push-certificate".to_owned()];
        let e = check_files(
            &files,
            OtlpProtocol::Grpc,
            &named,
            "--push-endpoint",
            " (advice)",
        )
        .unwrap_err();
        assert!(e.starts_with("--push-certificate: certificate "), "{e}");
        assert!(e.contains("no PEM certificate"), "{e}");
        assert!(!e.contains("advice"), "{e}");
        // No file was given: the endpoint's origin is named, with the advice.
        let missing = TlsFiles {
            ca: Some(dir.path().join("absent.pem")),
            ..TlsFiles::default()
        };
        let e = check_files(
            &missing,
            OtlpProtocol::HttpProtobuf,
            &[],
            "OTEL_X",
            " (advice)",
        )
        .unwrap_err();
        assert!(e.starts_with("OTEL_X: "), "{e}");
        assert!(e.ends_with(" (advice)"), "{e}");
    }
}
