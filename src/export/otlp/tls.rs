//! The connection to an upstream: TCP, then TLS (rustls) for an `https://` endpoint, with the CA and
//! client certificate of the `OTEL_EXPORTER_OTLP_*CERTIFICATE` / `*CLIENT_KEY` settings. One connector
//! serves both the hyper (OTLP/HTTP) and the tonic (OTLP/gRPC) clients.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use crate::config::OtlpProtocol;

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

/// A plain or TLS connection.
pub enum UpstreamStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The connection as hyper sees it.
pub struct UpstreamIo(TokioIo<UpstreamStream>);

impl hyper::rt::Read for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        let c = Connected::new();
        match self.0.inner() {
            UpstreamStream::Tls(s) if s.get_ref().1.alpn_protocol() == Some(b"h2") => {
                c.negotiated_h2()
            }
            _ => c,
        }
    }
}

/// Connects to the URI's host and port, with TLS when a configuration is given (https endpoints).
#[derive(Clone)]
pub struct UpstreamConnector {
    tls: Option<Arc<ClientConfig>>,
}

impl UpstreamConnector {
    /// A connector; `tls` is Some for an `https://` upstream.
    pub fn new(tls: Option<Arc<ClientConfig>>) -> Self {
        UpstreamConnector { tls }
    }
}

type ConnectFuture = Pin<Box<dyn Future<Output = io::Result<UpstreamIo>> + Send>>;

impl tower::Service<Uri> for UpstreamConnector {
    type Response = UpstreamIo;
    type Error = io::Error;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> ConnectFuture {
        let tls = self.tls.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host in URL"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri
                .port_u16()
                .unwrap_or(if tls.is_some() { 443 } else { 80 });
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let stream = match tls {
                None => UpstreamStream::Plain(tcp),
                Some(cfg) => {
                    let name = ServerName::try_from(host)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                    let s = tokio_rustls::TlsConnector::from(cfg)
                        .connect(name, tcp)
                        .await?;
                    UpstreamStream::Tls(Box::new(s))
                }
            };
            Ok(UpstreamIo(TokioIo::new(stream)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
