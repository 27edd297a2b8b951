//! The live stream: a `text/event-stream` response that sends the history, then each new frame, to one
//! viewer, ending when the viewer leaves or vitals stops.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};
use tokio::sync::mpsc;

use super::LiveHub;

/// Messages queued per viewer; vitals never buffers more for a viewer than this and its socket buffer.
const QUEUE: usize = 4;

/// A viewer whose queue stays full this long has stopped reading (its socket buffer is full too) and
/// is dropped, freeing its place for another viewer; the connection's write deadline closes it.
const STALLED: std::time::Duration = std::time::Duration::from_secs(2);

/// The body of a live stream: messages from the viewer's task.
pub struct EventStream {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for EventStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b))))
    }
}

/// Either a whole answer or a live stream.
pub type LiveBody = http_body_util::Either<Full<Bytes>, EventStream>;

/// Opens a stream for one viewer, or answers 503 when [`super::VIEWER_LIMIT`] viewers are connected.
pub fn open(hub: &Arc<LiveHub>) -> Response<LiveBody> {
    let Ok(permit) = hub.viewers.clone().try_acquire_owned() else {
        let mut r = Response::new(LiveBody::Left(Full::new(Bytes::from_static(
            b"too many live viewers; close another tab or use /metrics\n",
        ))));
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        r.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("5"));
        return r;
    };
    let (tx, rx) = mpsc::channel(QUEUE);
    let opening = hub.opening();
    let mut frames = hub.frames.subscribe();
    frames.mark_unchanged();
    let shutdown = hub.shutdown.clone();
    // The samplers read every --interval while this viewer is connected.
    let watching = hub.watch();
    tokio::spawn(async move {
        let _permit = permit;
        let _watching = watching;
        if !matches!(
            tokio::time::timeout(STALLED, tx.send(opening)).await,
            Ok(Ok(()))
        ) {
            return;
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tx.closed() => break,
                changed = frames.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let frame = frames.borrow_and_update().clone();
                    if !matches!(tokio::time::timeout(STALLED, tx.send(frame)).await, Ok(Ok(()))) {
                        break;
                    }
                }
            }
        }
    });
    let mut r = Response::new(LiveBody::Right(EventStream { rx }));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
