//! The HTTP server for `/metrics`, `/healthz`, `/readyz`, and the live page at `/` with its stream.
//! Scrapes are rendered one at a time off the async workers (a small exposition on the sampling thread
//! right after its readings, a large one on a render thread of its own), the stores streaming into the
//! encoder, and shared: a scrape that waited for a rendering which started after it arrived takes that rendering's
//! bytes (gzipped when it accepts gzip and the exposition is large enough to be worth it, see
//! [`GZIP_FROM`]), so any number of concurrent scrapers cost one or two expositions while
//! every answer is as fresh as an unshared one, and `/healthz` and `/readyz` never wait on them.

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
    /// The samplers' thread: a scrape whose last exposition was small is read and rendered there in one
    /// go (see [`NEAR_LIMIT`]). `None` renders every scrape on the render thread.
    pub sampling: Option<tokio::runtime::Handle>,
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

/// How long a scrape waits for the renderer before it is answered 503.
const RENDER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// One rendered exposition, plain and (once asked for) gzipped.
struct Rendered {
    started: std::time::Instant,
    plain: Bytes,
    gzip: Option<Bytes>,
}

/// What the render thread is asked to do.
enum RenderJob {
    /// Render this exposition.
    Render(Exposition, tokio::sync::oneshot::Sender<Bytes>),
    /// Gzip these bytes.
    Gzip(Bytes, tokio::sync::oneshot::Sender<Bytes>),
}

/// Expositions whose last rendering was at most this large are read and rendered on the sampling thread
/// in one go: the scrape's fresh readings, then its rendering, then its gzip, with no other thread woken
/// between them (an idle scrape woke the worker between the readings and the render thread, and the
/// worker again after it). Larger ones (an app's tens of thousands of series: tens of milliseconds on
/// the release build) go to the render thread at a lower priority, so the samplers never wait behind
/// them.
const NEAR_LIMIT: usize = 256 * 1024;

/// The size of the last plain rendering of each exposition, wherever it was rendered.
type Sizes = Arc<[std::sync::atomic::AtomicUsize; Exposition::SLOTS]>;

/// Renders scrapes one at a time and shares each rendering with the scrapes that arrived before it began.
/// Small expositions render on the sampling thread, right after their readings ([`NEAR_LIMIT`]); the
/// rest, and the gzip of those, on one thread of its own: its allocations stay in one malloc arena and
/// its buffers are sized from the last exposition, so RSS does not climb with each scrape as it did
/// when renders ran on whichever blocking-pool thread was free.
struct Renderer {
    turn: tokio::sync::Mutex<[Option<Rendered>; Exposition::SLOTS]>,
    jobs: std::sync::mpsc::Sender<RenderJob>,
    registry: Registry,
    /// The sampling thread and the encoders of the renders there, when there is one.
    near: Option<Near>,
    sizes: Sizes,
}

/// Rendering on the sampling thread: its handle and one encoder per exposition asked for.
struct Near {
    sampling: tokio::runtime::Handle,
    encoders: Arc<std::sync::Mutex<[Option<Encoder>; Exposition::SLOTS]>>,
}

impl Renderer {
    /// Starts the render thread for `registry`; it ends when the renderer is dropped. Small
    /// expositions render on `sampling`, when given.
    fn start(
        registry: Registry,
        sampling: Option<tokio::runtime::Handle>,
    ) -> std::io::Result<Renderer> {
        let (jobs, queue) = std::sync::mpsc::channel::<RenderJob>();
        let sizes: Sizes = Arc::new(Default::default());
        let (thread_registry, thread_sizes) = (registry.clone(), sizes.clone());
        std::thread::Builder::new()
            .name("vitals-scrape".into())
            .spawn(move || {
                lower_priority();
                let (registry, sizes) = (thread_registry, thread_sizes);
                // One encoder per exposition asked for, made on first use.
                let mut encoders: [Option<Encoder>; Exposition::SLOTS] = Default::default();
                for job in queue {
                    match job {
                        RenderJob::Render(format, reply) => {
                            if let Some(text) =
                                render_slot(&mut encoders, &sizes, &registry, format)
                            {
                                let _ = reply.send(Bytes::from(text));
                            }
                        }
                        RenderJob::Gzip(plain, reply) => {
                            let _ = reply.send(gzip(&plain));
                        }
                    }
                }
            })?;
        Ok(Renderer {
            turn: tokio::sync::Mutex::new(Default::default()),
            jobs,
            registry,
            near: sampling.map(|sampling| Near {
                sampling,
                encoders: Arc::new(std::sync::Mutex::new(Default::default())),
            }),
            sizes,
        })
    }

    /// Asks the samplers for fresh readings and renders `format` (and its gzip when `coding` calls for
    /// one at its size) on the sampling thread. None when the rendering panicked or the thread is gone.
    async fn render_near(
        &self,
        near: &Near,
        format: Exposition,
        coding: Coding,
        cadence: Option<Arc<crate::cadence::Cadence>>,
    ) -> Option<(Bytes, Option<Bytes>)> {
        let (registry, encoders, sizes) = (
            self.registry.clone(),
            near.encoders.clone(),
            self.sizes.clone(),
        );
        let job = near.sampling.spawn(async move {
            if let Some(c) = cadence {
                c.fresh().await;
            }
            let mut held = encoders.lock().unwrap_or_else(|p| p.into_inner());
            let plain = Bytes::from(render_slot(&mut held, &sizes, &registry, format)?);
            let gzipped = coding.gzip_for(plain.len()).then(|| gzip(&plain));
            Some((plain, gzipped))
        });
        job.await.ok().flatten()
    }

    async fn run(
        &self,
        job: impl FnOnce(tokio::sync::oneshot::Sender<Bytes>) -> RenderJob,
    ) -> Option<Bytes> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.jobs.send(job(reply)).ok()?;
        answer.await.ok()
    }
}

/// Renders `format` with its encoder of `encoders` (made on first use, remembering its last exposition's
/// lines) into a buffer sized from its last
/// rendering, and records this one's size. A panic costs this scrape (None), not every later one: the
/// encoder is dropped and a fresh one carries on.
fn render_slot(
    encoders: &mut [Option<Encoder>; Exposition::SLOTS],
    sizes: &Sizes,
    registry: &Registry,
    format: Exposition,
) -> Option<Vec<u8>> {
    let i = format.slot();
    let last = sizes[i].load(std::sync::atomic::Ordering::Relaxed);
    let encoder = encoders[i].get_or_insert_with(|| Encoder::for_exposition(format).remembering());
    let rendered = std::panic::catch_unwind(AssertUnwindSafe(|| {
        render_with(encoder, registry, last + last / 8)
    }));
    match rendered {
        Ok(text) => {
            sizes[i].store(text.len(), std::sync::atomic::Ordering::Relaxed);
            Some(text)
        }
        Err(_) => {
            tracing::error!("rendering the exposition panicked");
            encoders[i] = None;
            None
        }
    }
}

/// Puts the calling thread at nice 10: when the cores are busy, the reactor threads answering
/// `/healthz`, `/readyz` and OTLP requests run first and a scrape takes what is left.
pub(crate) fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority only read and set the calling thread's own scheduling value.
        let failed = unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10) != 0
        };
        if failed {
            tracing::debug!(
                "cannot lower the scrape thread's priority: {}",
                std::io::Error::last_os_error()
            );
        }
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

/// An exposition smaller than this goes out as it is, even to a scraper that accepts gzip (Prometheus
/// always does). Measured on vitals' own exposition of one process (about 15 KB): gzip took about
/// 200 µs of a scrape's 460, on loopback where the bytes it saves cost the kernel some 25 µs; across a
/// pod network 15 KB every 15 s is 1 KB/s. A large exposition (an app's thousands of series, MBs) is
/// still compressed: there the bytes count.
pub const GZIP_FROM: usize = 64 * 1024;

/// What a scraper's `Accept-Encoding` allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coding {
    /// gzip is accepted.
    pub gzip: bool,
    /// The body as it is is refused (`identity;q=0`, or `*;q=0` with no `identity`).
    pub identity_refused: bool,
}

impl Coding {
    /// Reads the `Accept-Encoding` header values (RFC 9110 §12.5.3; no header accepts anything).
    pub fn from_headers<'a>(values: impl Iterator<Item = &'a str>) -> Coding {
        let (mut gzip, mut identity, mut star) = (None, None, None);
        for coding in values.flat_map(|v| v.split(',')) {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    == Some(0.0)
            });
            let accepted = Some(!refused);
            if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
                gzip = accepted;
            } else if name.eq_ignore_ascii_case("identity") {
                identity = accepted;
            } else if name == "*" {
                star = accepted;
            }
        }
        Coding {
            gzip: gzip.or(star).unwrap_or(false),
            identity_refused: identity.or(star) == Some(false),
        }
    }

    /// Whether an exposition of `len` bytes goes out gzipped: where gzip is accepted and the size
    /// is worth it ([`GZIP_FROM`]), or the body as it is refused.
    pub fn gzip_for(&self, len: usize) -> bool {
        self.gzip && (len >= GZIP_FROM || self.identity_refused)
    }
}

fn coding_of(req: &Request<Incoming>) -> Coding {
    Coding::from_headers(
        req.headers()
            .get_all(ACCEPT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    )
}

impl Renderer {
    /// The exposition in `format` and whether it is gzipped (as `coding` calls for at its size): the
    /// last rendering if it began after this scrape arrived, else rendered now, from readings no older
    /// than `--interval` when `cadence` is given. None when the renderer stayed busy for [`RENDER_WAIT`].
    async fn scrape(
        &self,
        format: Exposition,
        coding: Coding,
        cadence: Option<&Arc<crate::cadence::Cadence>>,
    ) -> Option<(Bytes, bool)> {
        let arrived = std::time::Instant::now();
        let mut slots = tokio::time::timeout(RENDER_WAIT, self.turn.lock())
            .await
            .ok()?;
        let slot = &mut slots[format.slot()];
        let fresh = slot.as_ref().is_some_and(|r| r.started >= arrived);
        if !fresh {
            let started = std::time::Instant::now();
            let last = self.sizes[format.slot()].load(std::sync::atomic::Ordering::Relaxed);
            let near = self.near.as_ref().filter(|_| last <= NEAR_LIMIT);
            let rendered = match near {
                Some(near) => {
                    self.render_near(near, format, coding, cadence.cloned())
                        .await
                }
                None => {
                    if let Some(c) = cadence {
                        c.fresh().await;
                    }
                    None
                }
            };
            let (plain, gzip) = match rendered {
                Some(r) => r,
                None => (
                    self.run(|reply| RenderJob::Render(format, reply))
                        .await
                        .unwrap_or_default(),
                    None,
                ),
            };
            *slot = Some(Rendered {
                started,
                plain,
                gzip,
            });
        }
        let r = slot.as_mut()?;
        if !coding.gzip_for(r.plain.len()) {
            return Some((r.plain.clone(), false));
        }
        if r.gzip.is_none() {
            let plain = r.plain.clone();
            r.gzip = self.run(|reply| RenderJob::Gzip(plain, reply)).await;
        }
        Some((r.gzip.clone()?, true))
    }
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
            let coding = coding_of(&req);
            // Readings no older than --interval, however slowly the samplers go while idle.
            match renderer
                .scrape(format, coding, state.cadence.as_ref())
                .await
            {
                Some((body, gz)) => {
                    let mut r = respond(StatusCode::OK, format.content_type(), body);
                    r.headers_mut()
                        .insert(VARY, HeaderValue::from_static("Accept, Accept-Encoding"));
                    if gz {
                        r.headers_mut()
                            .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                    }
                    r
                }
                None => {
                    let mut r = respond(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        "the exposition is still being rendered for other scrapes; retry\n",
                    );
                    r.headers_mut()
                        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                    r
                }
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
    /// Starts the render thread for `state`'s registry.
    pub fn start(state: HttpState) -> std::io::Result<MetricsService> {
        let renderer = Arc::new(Renderer::start(
            state.registry.clone(),
            state.sampling.clone(),
        )?);
        Ok(MetricsService { state, renderer })
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

/// Serves until `shutdown` is cancelled, then lets in-flight requests finish for up to a second. With
/// `spill`, this runs on the sampling thread and serves its first connections there (see
/// [`crate::server::serve`]).
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    shutdown: CancellationToken,
    spill: Option<crate::server::Spill>,
) {
    let tls = state.web.as_ref().and_then(|w| w.tls.clone());
    let service = match MetricsService::start(state) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            tracing::error!("cannot start the scrape render thread: {e}; /metrics is not served");
            return;
        }
    };
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
        spill,
    )
    .await;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn coding(header: &[&str]) -> Coding {
        Coding::from_headers(header.iter().copied())
    }

    #[test]
    fn accept_encoding_is_read_as_rfc_9110_has_it() {
        let none = Coding {
            gzip: false,
            identity_refused: false,
        };
        let gzip = Coding {
            gzip: true,
            identity_refused: false,
        };
        // What Prometheus sends, and what curl and Python send.
        assert_eq!(coding(&["gzip"]), gzip);
        assert_eq!(coding(&["gzip, deflate, br"]), gzip);
        assert_eq!(coding(&[]), none);
        assert_eq!(coding(&["deflate"]), none);
        assert_eq!(coding(&["GZip;q=0.5"]), gzip);
        assert_eq!(coding(&["x-gzip"]), gzip);
        assert_eq!(coding(&["*"]), gzip);
        // Refusals: gzip refused outright or by a later entry; identity refused by name or by `*`.
        assert_eq!(coding(&["gzip;q=0"]), none);
        assert_eq!(coding(&["deflate", "gzip; q=0.0"]), none);
        assert_eq!(
            coding(&["gzip, identity;q=0"]),
            Coding {
                gzip: true,
                identity_refused: true
            }
        );
        assert_eq!(
            coding(&["*;q=0"]),
            Coding {
                gzip: false,
                identity_refused: true
            }
        );
        assert_eq!(coding(&["gzip, identity, *;q=0"]), gzip);
    }

    #[test]
    fn only_an_exposition_worth_it_is_gzipped_unless_the_body_as_it_is_is_refused() {
        let prometheus = coding(&["gzip"]);
        assert!(!prometheus.gzip_for(15_000));
        assert!(!prometheus.gzip_for(GZIP_FROM - 1));
        assert!(prometheus.gzip_for(GZIP_FROM));
        assert!(!coding(&[]).gzip_for(10 * GZIP_FROM));
        assert!(coding(&["gzip, identity;q=0"]).gzip_for(100));
        // Nothing acceptable but the body as it is: it goes out as it is.
        assert!(!coding(&["identity;q=0"]).gzip_for(10 * GZIP_FROM));
    }
}
