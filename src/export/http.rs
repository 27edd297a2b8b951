//! The HTTP server for `/metrics`, `/healthz`, `/readyz`, and the live page at `/` with its stream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::live::stream::LiveBody;
use super::prometheus::{encode, Format};
use crate::store::{series_count, Family, MetricKind, Registry, Value};
use crate::target::status::TargetStatus;

/// What the HTTP handlers read.
#[derive(Clone)]
pub struct HttpState {
    /// The families to expose.
    pub registry: Registry,
    /// The target's state: /readyz answers from it, / shows it.
    pub status: Arc<TargetStatus>,
    /// The live page's frames; `None` serves the page without a stream.
    pub live: Option<Arc<super::live::LiveHub>>,
}

/// Where the live page names the target before its script has drawn the first frame.
const TARGET_PLACEHOLDER: &str = "waiting for the first frame…";

/// Marks the answer to `/live/stream` so [`serve`] swaps in the stream after every check `handle` made.
#[derive(Clone, Copy)]
struct OpenLiveStream;

/// The live page, naming the target's state until the stream takes over; the summary holds a command line,
/// so it is escaped.
fn landing(status: &TargetStatus) -> String {
    let (_, summary) = status.get();
    let mut escaped = String::with_capacity(summary.len());
    for c in summary.chars() {
        match c {
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '&' => escaped.push_str("&amp;"),
            '"' => escaped.push_str("&quot;"),
            _ => escaped.push(c),
        }
    }
    super::live::PAGE.replacen(TARGET_PLACEHOLDER, &escaped, 1)
}

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
        "/readyz" => match state.status.get() {
            (true, summary) => respond(StatusCode::OK, "text/plain", format!("ready: {summary}\n")),
            (false, reason) => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {reason}\n"),
            ),
        },
        "/" | "/live" => respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            landing(&state.status),
        ),
        "/live/stream" => {
            let mut r = respond(StatusCode::OK, "text/event-stream", "");
            r.extensions_mut().insert(OpenLiveStream);
            r
        }
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found; see /\n"),
    })
}

/// Serves until `shutdown` is cancelled, then lets in-flight requests finish for up to a second.
pub async fn serve(listener: TcpListener, state: HttpState, shutdown: CancellationToken) {
    let serve_one = move |req| {
        let state = state.clone();
        async move {
            let live = state.live.clone();
            let r = handle(state, req).await?;
            Ok::<_, Infallible>(match (r.extensions().get::<OpenLiveStream>(), live) {
                (Some(_), Some(hub)) => super::live::stream::open(&hub),
                _ => r.map(LiveBody::Left),
            })
        }
    };
    crate::http_server::serve(listener, "metrics", serve_one, shutdown).await;
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
