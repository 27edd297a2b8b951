//! The listeners' shared connection handling: a limit on open connections per listener, a deadline
//! for a new connection's first bytes, for any connection that goes idle and for a write the peer does
//! not take, and the HTTP/1 server loop both HTTP endpoints share (`/metrics` and OTLP/HTTP), with a
//! deadline for each request head (see [`HEAD_READ`]), slots that idle connections give up to new ones
//! (see [`slots`]), and a graceful stop that lets in-flight requests finish for up to a second.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

pub mod slots;

use self::slots::{Admission, InProgress, Slots, Standing};

/// Limits on one listener's connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections open at once; further ones wait in the kernel's accept queue.
    pub max_open: usize,
    /// A new connection that sends nothing for this long is closed (HTTP/2 preface, HTTP/1 headers).
    pub first_bytes: Duration,
    /// A connection whose peer sends nothing for this long is closed (gRPC keepalive pings are
    /// answered, so a live gRPC client stays).
    pub idle: Duration,
}

/// A connection whose peer takes none of the bytes written to it for this long is closed: a client that
/// stops reading (a stalled live viewer, a scraper that never reads its answer) must not keep a
/// request in progress, and so its slot, for longer. "Takes" is measured at the peer, not at the
/// socket: on loopback the kernel queues megabytes for a reader that never reads (its send buffer
/// grows), so a write that merely returns proves nothing; what counts is the kernel's count of
/// bytes the peer has not acknowledged going down.
pub const WRITE_STALL: Duration = Duration::from_secs(5);

/// An HTTP/1 request head must arrive whole within this long of its first byte (a head trickled a byte at
/// a time holds a slot no longer). The clock starts at that byte, not when the previous answer was
/// sent: a kept-alive connection waits between requests under the listener's idle deadline, so
/// Prometheus, which keeps its connection to a target open between scrapes, reuses it at a 15 s or 60 s
/// interval, and an SDK exporting every minute does too (a server that closes an idle connection first
/// races the client's next request on it, which fails where the client does not retry).
pub const HEAD_READ: Duration = Duration::from_secs(10);

/// Bytes written to `s` that its peer has not acknowledged yet (SIOCOUTQ); None where unknown.
fn unacknowledged(s: &TcpStream) -> Option<usize> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let mut n: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ for TCP) writes one c_int through the pointer, to a local that
        // outlives the call; the fd is the stream's own, open for as long as `s` is borrowed.
        let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
        if r == 0 {
            return usize::try_from(n).ok();
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = s;
    None
}

/// The peer of the connection a request arrived on, in the request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

impl ConnectionLimits {
    /// For the OTLP listeners: SDKs keep one or a few connections per process.
    pub const OTLP: ConnectionLimits = ConnectionLimits {
        max_open: 256,
        first_bytes: Duration::from_secs(10),
        idle: Duration::from_secs(300),
    };
    /// For `/metrics`: a few scrapers and probes need far fewer, but the port is open to the pod network
    /// and a kubelet probe must not wait behind silent connections (each costs ~16 KiB); idle above the
    /// longest usual scrape interval.
    pub const METRICS: ConnectionLimits = ConnectionLimits {
        max_open: 256,
        first_bytes: Duration::from_secs(10),
        idle: Duration::from_secs(300),
    };
}

/// A connection under a listener's limits: holds one of its slots and fails with `TimedOut` once the
/// peer has sent nothing within the deadline.
pub struct GuardedStream {
    inner: TcpStream,
    deadline: Pin<Box<Sleep>>,
    idle: Duration,
    /// Set while a write waits for the peer to take bytes.
    write_stall: Option<Pin<Box<Sleep>>>,
    /// Unacknowledged bytes right after the last write, and when the peer was last seen taking some.
    queued: usize,
    drained_at: Instant,
    /// The HTTP/1 connection's requests (its slot's standing); `None` on the gRPC listener, whose
    /// HTTP/2 streams this cannot see.
    requests: Option<Arc<Standing>>,
    /// While a request head is being read: the count of requests started when its first byte came,
    /// and its deadline, that byte plus [`HEAD_READ`] (later bytes do not push it). A timer of its own,
    /// dropped when the head is whole: moving the idle deadline earlier and back would leave tokio's
    /// timer wheel an entry that wakes the thread 10 s after every request.
    head: Option<(u64, Pin<Box<Sleep>>)>,
    _slot: Option<OwnedSemaphorePermit>,
}

impl GuardedStream {
    /// Wraps an accepted stream. `requests` is the HTTP/1 serve loop's standing for it (whose slot that
    /// loop holds), `slot` the gRPC listener's.
    fn new(
        inner: TcpStream,
        limits: &ConnectionLimits,
        requests: Option<Arc<Standing>>,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Self {
        // Small responses must not wait on Nagle plus delayed ACK.
        let _ = inner.set_nodelay(true);
        GuardedStream {
            inner,
            deadline: Box::pin(tokio::time::sleep(limits.first_bytes)),
            idle: limits.idle,
            write_stall: None,
            queued: 0,
            drained_at: Instant::now(),
            requests,
            head: None,
            _slot: slot,
        }
    }

    /// Follows the request heads of an HTTP/1 connection, on every read and before every write (`got`:
    /// the read brought bytes). A first byte while no request is in progress starts a head and its
    /// [`HEAD_READ`] deadline; once a request has started since (hyper read the head whole), that
    /// deadline is gone and the idle one runs from now. Bytes outside a head (a body; any on the gRPC
    /// listener) push the idle deadline.
    fn follow_heads(&mut self, got: bool) {
        let Some((started, busy)) = self.requests.as_ref().map(|r| (r.started(), r.busy())) else {
            if got {
                self.moved();
            }
            return;
        };
        if self.head.as_ref().is_some_and(|(at, _)| *at != started) {
            self.head = None;
            self.moved();
        }
        if got && self.head.is_none() {
            self.moved();
            if !busy {
                self.head = Some((started, Box::pin(tokio::time::sleep(HEAD_READ))));
            }
        }
    }

    /// Before a write: fails once bytes have waited unacknowledged for [`WRITE_STALL`] without the
    /// peer taking any.
    fn peer_stalled(&mut self) -> bool {
        if self.queued == 0 {
            // The peer had taken every byte at the last write, and nothing was written since: the
            // count is still 0 (one ioctl less per answer on a kept-alive connection).
            self.drained_at = Instant::now();
            return false;
        }
        let Some(now) = unacknowledged(&self.inner) else {
            return false;
        };
        if now == 0 || now < self.queued {
            self.drained_at = Instant::now();
        }
        self.queued = now;
        now > 0 && self.drained_at.elapsed() >= WRITE_STALL
    }

    /// After a write of some bytes: what is now queued, so the next check sees whether it went down.
    fn note_queued(&mut self) {
        if let Some(now) = unacknowledged(&self.inner) {
            if self.queued == 0 {
                self.drained_at = Instant::now();
            }
            self.queued = now;
        }
    }

    /// Pushes the idle deadline to `idle` from now. Only ever later: tokio then keeps the timer where it
    /// is in its wheel and moves it when that time comes, so a kept-alive connection's requests cost no
    /// timer work.
    fn moved(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.idle);
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let head = self
            .head
            .as_mut()
            .is_some_and(|(_, due)| due.as_mut().poll(cx).is_ready());
        head || self.deadline.as_mut().poll(cx).is_ready()
    }

    /// Tracks a write's progress: `Ready` clears the stall deadline, `Pending` starts it (once) and
    /// turns into `TimedOut` when it passes or when the idle deadline does.
    fn written(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match poll {
            Poll::Pending => {
                let stall = self
                    .write_stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_STALL)));
                if stall.as_mut().poll(cx).is_ready() || self.expired(cx) {
                    Poll::Ready(Err(stalled()))
                } else {
                    Poll::Pending
                }
            }
            ready => {
                self.write_stall = None;
                if matches!(ready, Poll::Ready(Ok(n)) if n > 0) {
                    self.note_queued();
                }
                ready
            }
        }
    }
}

fn stalled() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "peer took no bytes within the write deadline",
    )
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection idle past its deadline")
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.follow_heads(matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before);
        match poll {
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            other => other,
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        // Only the peer's bytes count as life: a server preface or keepalive ping written to a
        // silent peer must not keep its connection open.
        self.follow_heads(false);
        if self.peer_stalled() {
            return Poll::Ready(Err(stalled()));
        }
        let poll = Pin::new(&mut self.inner).poll_write(cx, data);
        self.written(cx, poll)
    }

    // Vectored writes let hyper send a shared response body without copying it into a per-connection
    // buffer (without them 200 concurrent scrapes of one 3 MB exposition took 160 MiB).
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.follow_heads(false);
        if self.peer_stalled() {
            return Poll::Ready(Err(stalled()));
        }
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.written(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for GuardedStream {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// A response body that keeps its request in progress (see [`slots::Standing::request`]) until hyper has
/// taken all of it.
pub struct InProgressBody<B> {
    body: B,
    _in_progress: InProgress,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for InProgressBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Depth of every listener's accept queue (the kernel caps it at `net.core.somaxconn`, 4096 by default
/// since Linux 5.4). The usual 128 overflows when hundreds of hostile clients reconnect at once: the
/// kernel then drops a probe's SYN, and its retry comes a second later, past a kubelet probe's default
/// timeout (measured: one probe in about 100 lost in 2 of 5 runs of the all-at-once attack at 128, none in
/// 4 of 4 at 4096). The queue holds only handshakes: vitals accepts at once and sheds by slots.
pub const ACCEPT_QUEUE: u32 = 4096;

/// Listens on `addr` with SO_REUSEADDR (as `TcpListener::bind` does) and an [`ACCEPT_QUEUE`]-deep queue.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_QUEUE)
}

/// Accepts connections on one listener within its limits (the gRPC listener: tonic serves HTTP/2
/// streams, whose progress this cannot see, so a connection holds its slot until it closes).
pub struct GuardedListener {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    limits: ConnectionLimits,
}

impl GuardedListener {
    /// Wraps `listener`.
    pub fn new(listener: TcpListener, limits: ConnectionLimits) -> Self {
        GuardedListener {
            listener,
            slots: Arc::new(Semaphore::new(limits.max_open)),
            limits,
        }
    }

    /// The next connection, once a slot is free (until then new connections wait in the accept queue).
    pub async fn accept(&self) -> io::Result<GuardedStream> {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| io::Error::other("listener closed"))?;
        let (stream, _) = self.listener.accept().await?;
        Ok(GuardedStream::new(stream, &self.limits, None, Some(slot)))
    }

    /// The connections as a stream, for tonic. Accept errors (fd exhaustion, mostly) are logged and
    /// retried after a pause rather than ending the server.
    pub fn into_stream(
        self,
        what: &'static str,
    ) -> impl tokio_stream::Stream<Item = io::Result<GuardedStream>> + Send + 'static {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = tx.closed() => return,
                    a = self.accept() => a,
                };
                match accepted {
                    Ok(s) => {
                        if tx.send(Ok(s)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, listener = what, "accept failed");
                        tokio::select! {
                            _ = tx.closed() => return,
                            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                        }
                    }
                }
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

/// A listener served on a thread of its own that keeps its first few connections there and hands the
/// rest to the async workers: see [`serve`].
pub struct Spill {
    /// The runtime of the async workers.
    pub workers: tokio::runtime::Handle,
    /// Connections served on the listener's own thread at once; a further one goes to the workers.
    pub local_max: usize,
}

/// Counts a connection served on the listener's own thread while it lives.
struct Local(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Local {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Serves `handle` on `listener` until `shutdown`, over TLS when `tls` is given (the handshake must
/// finish within the first-bytes deadline). `what` names the listener in logs. Every connection is
/// accepted at once: it takes a free slot, or the slot of an idle connection (see [`slots`]), or,
/// when every slot has a request in progress, it is closed. With `spill`, the loop runs on a thread of
/// its own (a current-thread runtime): up to `local_max` connections are served there, the rest by
/// the async workers, so a scrape on a quiet listener wakes no other thread, and a crowd of clients
/// is spread over the workers instead of queued on one thread (a probe shares the listener's thread
/// with fewer than `local_max` other connections).
pub async fn serve<H, F, B>(
    listener: TcpListener,
    limits: ConnectionLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    what: &'static str,
    handle: H,
    shutdown: CancellationToken,
    spill: Option<Spill>,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    // Any body: most answers are one buffer, the live stream is an open-ended one.
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let slots = Slots::new(limits.max_open);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // Once stopping, responses carry `Connection: close` and hyper closes each connection after its
    // answer, so a request already sent on a kept-alive connection is answered instead of reset.
    let closing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let local = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, listener = what, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let slot = match slots.admit(peer.ip()) {
            Admission::Free(slot) => slot,
            Admission::Evicted { slot, from } => {
                tracing::debug!(listener = what, %from, "closed an idle connection to make room");
                slot
            }
            Admission::Full => {
                tracing::debug!(listener = what, %peer, "every connection has a request in progress; closed a new one");
                continue;
            }
        };
        let standing = slot.standing.clone();
        let handle = handle.clone();
        let closing = closing.clone();
        let service = service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(Peer(peer));
            let in_progress = standing.request();
            let answer = handle(req);
            let closing = closing.clone();
            async move {
                let mut resp = answer.await?;
                if closing.load(std::sync::atomic::Ordering::Relaxed) {
                    resp.headers_mut().insert(
                        hyper::header::CONNECTION,
                        hyper::header::HeaderValue::from_static("close"),
                    );
                }
                // The request stays in progress until its body has been handed to the connection.
                Ok::<_, Infallible>(resp.map(|body| InProgressBody {
                    body,
                    _in_progress: in_progress,
                }))
            }
        });
        // The head deadline is the stream's (see [`HEAD_READ`]): hyper's starts as soon as an answer
        // is sent, so it closed a kept-alive connection 10 s after every answer.
        let builder = {
            let mut b = hyper::server::conn::http1::Builder::new();
            b.header_read_timeout(None);
            b
        };
        let tls = tls.clone();
        let watcher = graceful.watcher();
        // The connection's whole life, on whichever runtime it is handed to: the stream's deadlines and
        // its reactor registration belong to the runtime that polls it.
        let connection = move |stream: TcpStream| async move {
            let stream = GuardedStream::new(stream, &limits, Some(slot.standing.clone()), None);
            let evicted = slot.standing.clone();
            let serve = async {
                match tls {
                    None => {
                        let conn =
                            watcher.watch(builder.serve_connection(TokioIo::new(stream), service));
                        conn.await
                    }
                    Some(acceptor) => {
                        let stream = match tokio::time::timeout(
                            limits.first_bytes,
                            acceptor.accept(stream),
                        )
                        .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, listener = what, "TLS handshake failed");
                                return Ok(());
                            }
                            Err(_) => return Ok(()),
                        };
                        let conn =
                            watcher.watch(builder.serve_connection(TokioIo::new(stream), service));
                        conn.await
                    }
                }
            };
            tokio::select! {
                ended = serve => {
                    if let Err(e) = ended {
                        tracing::debug!(error = %e, listener = what, "connection ended with an error");
                    }
                }
                _ = evicted.evicted() => {}
            }
            drop(slot);
        };
        match &spill {
            Some(spill) if local.load(std::sync::atomic::Ordering::Relaxed) >= spill.local_max => {
                // Moved to the workers' reactor: its readiness then wakes a worker, not this thread.
                match stream.into_std() {
                    Ok(std_stream) => {
                        spill.workers.spawn(async move {
                            match TcpStream::from_std(std_stream) {
                                Ok(stream) => connection(stream).await,
                                Err(e) => {
                                    tracing::debug!(error = %e, listener = what, "cannot hand a connection to the workers");
                                }
                            }
                        });
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, listener = what, "cannot hand a connection to the workers");
                    }
                }
            }
            Some(_) => {
                local.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let counted = Local(local.clone());
                tokio::spawn(async move {
                    let _counted = counted;
                    connection(stream).await;
                });
            }
            None => {
                tokio::spawn(connection(stream));
            }
        }
    }
    // Keep serving open connections for up to half a second (each closes after its next answer), then
    // close the idle rest and let in-flight requests finish for up to 0.4 s more.
    closing.store(true, std::sync::atomic::Ordering::Relaxed);
    let drain_until = tokio::time::Instant::now() + Duration::from_millis(500);
    while graceful.count() > 0 && tokio::time::Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = tokio::time::timeout(Duration::from_millis(400), graceful.shutdown()).await;
}
