//! Shared by the HTTP listener fuzz targets: one request stream (the fuzzer's bytes, as a client would
//! send them) through hyper's HTTP/1 server into a listener's real handler, over an in-memory stream,
//! and the bytes the server answered. A panic in the handler is re-raised here so libFuzzer sees it; an
//! exchange that does not end within 5 s is a finding too (the stream is closed after the input, so
//! every answer must be complete by then).
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use hyper::body::{Body, Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

/// Sends `input` to `handle` and returns the answer bytes.
pub fn exchange<H, F, B>(handle: H, input: &[u8]) -> Vec<u8>
where
    H: Fn(Request<Incoming>) -> F + Send + 'static,
    F: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let input = input.to_vec();
    runtime().block_on(async move {
        let (client, server) = tokio::io::duplex(1 << 16);
        let conn = tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(server), hyper::service::service_fn(handle)),
        );
        let (mut rx, mut tx) = tokio::io::split(client);
        let writer = tokio::spawn(async move {
            let _ = tx.write_all(&input).await;
            let _ = tx.shutdown().await;
        });
        let mut out = Vec::new();
        if tokio::time::timeout(Duration::from_secs(5), rx.read_to_end(&mut out))
            .await
            .is_err()
        {
            panic!("no complete answer within 5 s");
        }
        if let Err(e) = conn.await {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        let _ = writer.await;
        // hyper answers an HTTP/1.0 request with an HTTP/1.0 status line (and closes the connection):
        // a 1.0 client reads either, so both are well-formed answers.
        assert!(
            out.is_empty() || out.starts_with(b"HTTP/1.1 ") || out.starts_with(b"HTTP/1.0 "),
            "not an HTTP/1.x answer: {:?}",
            String::from_utf8_lossy(&out[..out.len().min(200)])
        );
        out
    })
}
