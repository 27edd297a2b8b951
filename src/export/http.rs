//! The HTTP server for `/metrics`, `/healthz`, `/readyz` and a landing page at `/`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::prometheus::{encode, Format};
use crate::store::{series_count, Family, MetricKind, Registry, Value};

/// What the HTTP handlers read.
#[derive(Clone)]
pub struct HttpState {
    /// The families to expose.
    pub registry: Registry,
    /// True once the first sample was taken (or there is nothing to sample yet).
    pub ready: Arc<AtomicBool>,
}

const LANDING: &str = "<!doctype html><html><head><title>vitals</title></head><body>\
<h1>vitals</h1><p>Vital signs of the process next to this sidecar.</p><ul>\
<li><a href=\"metrics\">/metrics</a> (Prometheus; OpenMetrics on request)</li>\
<li><a href=\"healthz\">/healthz</a></li><li><a href=\"readyz\">/readyz</a></li></ul></body></html>\n";

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Renders the current exposition in `format`.
pub fn render_metrics(registry: &Registry, format: Format) -> String {
    let mut families = registry.gather();
    let n = series_count(&families) + 1;
    families.push(
        Family::new(
            "vitals_exporter_series",
            "Series in this exposition",
            "",
            MetricKind::Gauge,
        )
        .with(&[], Value::Gauge(n as f64)),
    );
    encode(&families, format)
}

async fn handle(
    state: HttpState,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n",
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Ok(r);
    }
    Ok(match req.uri().path() {
        "/metrics" => {
            let accept = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
            let format = Format::negotiate(accept);
            let registry = state.registry.clone();
            // Gathering takes locks and formats up to tens of thousands of lines: keep it off the reactor.
            let body = tokio::task::spawn_blocking(move || render_metrics(&registry, format))
                .await
                .unwrap_or_default();
            respond(StatusCode::OK, format.content_type(), body)
        }
        "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" => {
            if state.ready.load(Ordering::Acquire) {
                respond(StatusCode::OK, "text/plain", "ready\n")
            } else {
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "waiting for the first sample\n",
                )
            }
        }
        "/" => respond(StatusCode::OK, "text/html; charset=utf-8", LANDING),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found; see /\n"),
    })
}

/// Serves until `shutdown` is cancelled, then lets in-flight requests finish for up to a second.
pub async fn serve(listener: TcpListener, state: HttpState, shutdown: CancellationToken) {
    crate::http_server::serve(
        listener,
        crate::http_server::ConnectionLimits::METRICS,
        "metrics",
        move |req| handle(state.clone(), req),
        shutdown,
    )
    .await;
}

/// Binds the metrics listener, naming the address in the error.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on --metrics-addr {addr}: {e}"),
        )
    })
}
