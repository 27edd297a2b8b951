//! The HTTP/1 server loop both HTTP endpoints share (`/metrics` and OTLP/HTTP): accept, TCP_NODELAY, a
//! header-read timeout, and a graceful stop that lets in-flight requests finish for up to a second.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves `handle` on `listener` until `shutdown`. `what` names the listener in logs.
pub async fn serve<H, F, B>(
    listener: TcpListener,
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
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, listener = what, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Small responses must not wait on Nagle plus delayed ACK.
                let _ = stream.set_nodelay(true);
                let handle = handle.clone();
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service_fn(handle));
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, listener = what, "connection ended with an error");
                    }
                });
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_millis(900), graceful.shutdown()).await;
}
