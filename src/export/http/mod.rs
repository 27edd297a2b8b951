//! The HTTP server for `/metrics`, `/healthz`, `/readyz`, and the live page at `/` with its stream, on a
//! thread of its own (`vitals-metrics`, see [`serve_on_own_thread`]). Scrapes are rendered there, one at
//! a time, the stores streaming into the encoder, and shared: a scrape that waited for a rendering which
//! started after it arrived takes that rendering's bytes (gzip when it accepts it), so any number of
//! concurrent scrapers cost one or two expositions while every answer is as fresh as an unshared one.
//! `/healthz` and `/readyz` wait for a rendering in progress, and for nothing else.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ACCEPT, ACCEPT_ENCODING, ALLOW, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE,
    RETRY_AFTER, VARY, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub mod live;
pub mod password_check;
pub mod profile;
pub mod web_config;

use self::live::stream::LiveBody;
use self::web_config::WebConfig;
use super::prometheus::{Encoder, Exposition, Format};
use crate::catalogue;
use crate::model::{stream_metrics, Registry, Value};
use crate::target::status::TargetStatus;

/// What the HTTP handlers read.
#[derive(Clone)]
pub struct HttpState {
    /// The families to expose.
    pub registry: Registry,
    /// The target's state: /readyz answers from it, / shows it.
    pub status: Arc<TargetStatus>,
    /// The live page's frames; `None` serves the page without a stream.
    pub live: Option<Arc<self::live::LiveHub>>,
    /// TLS and basic auth from `--web-config-file`, if given.
    pub web: Option<Arc<WebConfig>>,
    /// CPU profiles at /debug/pprof/profile; `None` answers 404.
    pub profiler: Option<Arc<crate::profile::Profiler>>,
    /// The continuous profiler's captures at /debug/pprof/captures; `None` when it is off.
    pub continuous: Option<Arc<crate::profile::continuous::Continuous>>,
    /// The samplers' pace: a scrape asks them for readings no older than `--interval` first. `None`
    /// scrapes what is held.
    pub cadence: Option<Arc<crate::cadence::Cadence>>,
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
    self::live::PAGE.replacen(TARGET_PLACEHOLDER, &escaped, 1)
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

/// Renders the current exposition in a text `format`.
pub fn render_metrics(registry: &Registry, format: Format) -> String {
    String::from_utf8(render_with(&mut Encoder::new(format), registry, 0)).unwrap_or_default()
}

/// Renders the current exposition as `exposition` asks (bytes: protobuf is not text).
pub fn render_exposition(registry: &Registry, exposition: Exposition) -> Vec<u8> {
    render_with(&mut Encoder::for_exposition(exposition), registry, 0)
}

/// Renders the current exposition with `encoder` (whose name translations carry over from its last
/// exposition) into a buffer of `capacity` bytes, every collector streaming into it under its own lock,
/// then the series count. The scrape thread passes the last exposition's size.
pub fn render_with(encoder: &mut Encoder, registry: &Registry, capacity: usize) -> Vec<u8> {
    encoder.start(capacity);
    registry.encode_into(encoder);
    let n = encoder.points() + 1;
    let series = catalogue::EXPORTER_SERIES
        .metric()
        .with(&[], Value::Gauge(n as f64));
    stream_metrics(std::slice::from_ref(&series), encoder);
    encoder.finish()
}

/// One rendered exposition, plain and (once asked for) gzipped.
struct Rendered {
    started: std::time::Instant,
    plain: Bytes,
    gzip: Option<Bytes>,
}

/// What the renderer keeps between scrapes: one encoder per exposition asked for (made on first use, its
/// name translations carried over), the size of each one's last exposition (the next buffer's), and the
/// last rendering of each.
#[derive(Default)]
struct RenderState {
    encoders: [Option<Encoder>; Exposition::SLOTS],
    last_len: [usize; Exposition::SLOTS],
    rendered: [Option<Rendered>; Exposition::SLOTS],
}

/// Renders scrapes on the metrics thread, inline, and shares each rendering with the scrapes that
/// arrived before it began. Every rendering and compression happens on that one thread: its allocations
/// stay in one malloc arena and its buffers are sized from the last exposition, so RSS does not climb
/// with each scrape as it did when renders ran on whichever blocking-pool thread was free. A rendering
/// holds the thread (and so `/healthz` and `/readyz`) for as long as it takes: under 0.1 ms for vitals'
/// own families, about 7 ms of CPU for 30,000 app series (the README's scrape rows).
struct Renderer {
    registry: Registry,
    state: std::sync::Mutex<RenderState>,
}

impl Renderer {
    fn new(registry: Registry) -> Renderer {
        Renderer {
            registry,
            state: std::sync::Mutex::new(RenderState::default()),
        }
    }

    /// The exposition in `format`, gzipped when `gz`: the last rendering if it began after this scrape
    /// arrived at `arrived`, else rendered now. None when the rendering panicked (this scrape is answered
    /// 500; the next one gets a fresh encoder).
    fn scrape(&self, format: Exposition, gz: bool, arrived: std::time::Instant) -> Option<Bytes> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let RenderState {
            encoders,
            last_len,
            rendered,
        } = &mut *state;
        let i = format.slot();
        let fresh = rendered[i].as_ref().is_some_and(|r| r.started >= arrived);
        if !fresh {
            let started = std::time::Instant::now();
            let capacity = last_len[i] + last_len[i] / 8;
            let encoder = encoders[i].get_or_insert_with(|| Encoder::for_exposition(format));
            // A panic costs this scrape, not every later one: a fresh encoder carries on.
            let text = match std::panic::catch_unwind(AssertUnwindSafe(|| {
                render_with(encoder, &self.registry, capacity)
            })) {
                Ok(text) => text,
                Err(_) => {
                    tracing::error!("rendering the exposition panicked");
                    encoders[i] = None;
                    rendered[i] = None;
                    return None;
                }
            };
            last_len[i] = text.len();
            rendered[i] = Some(Rendered {
                started,
                plain: Bytes::from(text),
                gzip: None,
            });
        }
        let r = rendered[i].as_mut()?;
        if !gz {
            return Some(r.plain.clone());
        }
        Some(r.gzip.get_or_insert_with(|| gzip(&r.plain)).clone())
    }
}

fn gzip(data: &[u8]) -> Bytes {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 8),
        flate2::Compression::fast(),
    );
    // Writing to a Vec cannot fail.
    let _ = e.write_all(data);
    Bytes::from(e.finish().unwrap_or_default())
}

fn accepts_gzip(req: &Request<Incoming>) -> bool {
    req.headers()
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    == Some(0.0)
            });
            name.eq_ignore_ascii_case("gzip") && !refused
        })
}

async fn handle(
    state: HttpState,
    renderer: Arc<Renderer>,
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
    // Probes stay open (they reveal nothing and kubelet sends no credentials); everything else needs
    // the basic-auth user when the web config names users.
    let probe = matches!(req.uri().path(), "/healthz" | "/readyz");
    if let Some(web) = state.web.as_ref().filter(|w| w.needs_auth() && !probe) {
        let header = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let peer = req
            .extensions()
            .get::<crate::server::Peer>()
            .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |p| p.0.ip());
        match web.authorize(header, peer).await {
            web_config::Authorization::Allowed => {}
            web_config::Authorization::Denied => {
                let mut r = respond(
                    StatusCode::UNAUTHORIZED,
                    "text/plain",
                    "user and password required\n",
                );
                r.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"vitals\""),
                );
                return Ok(r);
            }
            web_config::Authorization::Busy => {
                let mut r = respond(
                    StatusCode::TOO_MANY_REQUESTS,
                    "text/plain",
                    "too many password checks waiting; retry\n",
                );
                r.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                return Ok(r);
            }
        }
    }
    Ok(match req.uri().path() {
        "/metrics" => {
            let accept = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
            let format = Exposition::negotiate(accept);
            let gz = accepts_gzip(&req);
            let arrived = std::time::Instant::now();
            if let Some(c) = &state.cadence {
                // Readings no older than --interval, however slowly the samplers go while idle.
                c.fresh().await;
            }
            match renderer.scrape(format, gz, arrived) {
                Some(body) => {
                    let mut r = respond(StatusCode::OK, format.content_type(), body);
                    r.headers_mut()
                        .insert(VARY, HeaderValue::from_static("Accept, Accept-Encoding"));
                    if gz {
                        r.headers_mut()
                            .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                    }
                    r
                }
                None => respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    "rendering the exposition failed; see the log\n",
                ),
            }
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
            self::profile::with_captures(
                self::profile::with_last(landing(&state.status), state.profiler.as_ref()),
                state.continuous.as_ref(),
            ),
        ),
        "/debug/pprof/profile" => {
            self::profile::answer(state.profiler.as_ref(), req.uri().query()).await
        }
        "/debug/pprof/last" => self::profile::last(state.profiler.as_ref(), req.uri().query()),
        "/debug/pprof/captures" => self::profile::captures(state.continuous.as_ref()),
        path if path.starts_with("/debug/pprof/capture/") => self::profile::capture(
            state.continuous.as_ref(),
            &path["/debug/pprof/capture/".len()..],
            req.uri().query(),
        ),
        "/live/stream" => {
            let mut r = respond(StatusCode::OK, "text/event-stream", "");
            r.extensions_mut().insert(OpenLiveStream);
            r
        }
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found; see /\n"),
    })
}

/// The metrics listener's answers: `state` and the scrape renderer.
pub struct MetricsService {
    state: HttpState,
    renderer: Arc<Renderer>,
}

impl MetricsService {
    /// The answers for `state`'s registry.
    pub fn new(state: HttpState) -> MetricsService {
        let renderer = Arc::new(Renderer::new(state.registry.clone()));
        MetricsService { state, renderer }
    }

    /// Answers one request; `/live/stream` opens a stream when the live page is on.
    pub async fn answer(&self, req: Request<Incoming>) -> Result<Response<LiveBody>, Infallible> {
        let r = handle(self.state.clone(), self.renderer.clone(), req).await?;
        Ok(
            match (
                r.extensions().get::<OpenLiveStream>(),
                self.state.live.as_ref(),
            ) {
                (Some(_), Some(hub)) => self::live::stream::open(hub),
                _ => r.map(LiveBody::Left),
            },
        )
    }
}

/// Serves on the calling task's runtime until `shutdown` is cancelled, then lets in-flight requests
/// finish for up to a second.
pub async fn serve(listener: TcpListener, state: HttpState, shutdown: CancellationToken) {
    let tls = state.web.as_ref().and_then(|w| w.tls.clone());
    let service = Arc::new(MetricsService::new(state));
    let serve_one = move |req| {
        let service = service.clone();
        async move { service.answer(req).await }
    };
    crate::server::serve(
        listener,
        crate::server::ConnectionLimits::METRICS,
        tls,
        "metrics",
        serve_one,
        shutdown,
    )
    .await;
}

/// Serves `listener` (bound on any runtime) on a thread of its own, `vitals-metrics`, with a
/// single-threaded runtime, until `shutdown`; the returned task ends when that thread has stopped.
///
/// Why a thread of its own: an idle scrape is a few hundred microseconds of work handed between threads,
/// and each hand-over wakes one. On the shared workers a scrape woke a worker to accept, the sampling
/// thread for the reading, a worker again, a render thread, and a worker once more (often the other
/// one, to steal nothing). Here it wakes this thread and the sampling thread, and renders where it
/// answers. The probes (`/healthz`, `/readyz`) are answered here too, so a flood of OTLP requests
/// keeping the workers busy does not hold them up; a rendering does, for as long as it takes.
pub fn serve_on_own_thread(
    listener: TcpListener,
    state: HttpState,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = listener.into_std()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (done, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("vitals-metrics".into())
        .spawn(move || {
            runtime.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => serve(listener, state, shutdown).await,
                    Err(e) => tracing::error!("cannot serve /metrics: {e}"),
                }
            });
            // A profile still being taken on its blocking thread is not waited for.
            runtime.shutdown_timeout(std::time::Duration::from_millis(100));
            let _ = done.send(());
        })?;
    Ok(tokio::spawn(async move {
        let _ = stopped.await;
    }))
}

/// Binds the metrics listener, naming the address in the error.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    crate::server::listen(addr).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on --metrics-addr {addr}: {e}"),
        )
    })
}
