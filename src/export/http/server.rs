//! The listeners' shared connection handling: a limit on open connections per listener, a deadline
//! for a new connection's first bytes and for any connection that goes idle, and the HTTP/1 server
//! loop both HTTP endpoints share (`/metrics` and OTLP/HTTP), with a header-read timeout and a graceful
//! stop that lets in-flight requests finish for up to a second.

use std::convert::Infallible;
use std::future::Future;
use std::io;
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
    _slot: OwnedSemaphorePermit,
}

impl GuardedStream {
    fn moved(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.idle);
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
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
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.moved();
                }
                Poll::Ready(Ok(()))
            }
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
        match Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            other => other,
        }
    }

    // Vectored writes let hyper send a shared response body without copying it into a per-connection
    // buffer (without them 200 concurrent scrapes of one 3 MB exposition took 160 MiB).
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            other => other,
        }
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

/// Accepts connections on one listener within its limits.
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
        // Small responses must not wait on Nagle plus delayed ACK.
        let _ = stream.set_nodelay(true);
        Ok(GuardedStream {
            inner: stream,
            deadline: Box::pin(tokio::time::sleep(self.limits.first_bytes)),
            idle: self.limits.idle,
            _slot: slot,
        })
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

/// Serves `handle` on `listener` until `shutdown`, over TLS when `tls` is given (the handshake must
/// finish within the first-bytes deadline). `what` names the listener in logs.
pub async fn serve<H, F, B>(
    listener: TcpListener,
    limits: ConnectionLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    what: &'static str,
    handle: H,
    shutdown: CancellationToken,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    // Any body: most answers are one buffer, the live stream is an open-ended one.
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = GuardedListener::new(listener, limits);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // Once stopping, responses carry `Connection: close` and hyper closes each connection after its
    // answer, so a request already sent on a kept-alive connection is answered instead of reset.
    let closing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handle = {
        let closing = closing.clone();
        move |req: Request<Incoming>| {
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
                Ok::<_, Infallible>(resp)
            }
        }
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, listener = what, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let handle = handle.clone();
                let builder = {
                    let mut b = hyper::server::conn::http1::Builder::new();
                    b.timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(10));
                    b
                };
                match &tls {
                    None => {
                        let conn = graceful.watch(
                            builder.serve_connection(TokioIo::new(stream), service_fn(handle)),
                        );
                        tokio::spawn(async move {
                            if let Err(e) = conn.await {
                                tracing::debug!(error = %e, listener = what, "connection ended with an error");
                            }
                        });
                    }
                    Some(acceptor) => {
                        let acceptor = acceptor.clone();
                        let watcher = graceful.watcher();
                        let deadline = limits.first_bytes;
                        tokio::spawn(async move {
                            let stream = match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => {
                                    tracing::debug!(error = %e, listener = what, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => return,
                            };
                            let conn = watcher.watch(
                                builder.serve_connection(TokioIo::new(stream), service_fn(handle)),
                            );
                            if let Err(e) = conn.await {
                                tracing::debug!(error = %e, listener = what, "connection ended with an error");
                            }
                        });
                    }
                }
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
