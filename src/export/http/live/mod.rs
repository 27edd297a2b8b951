//! The live page: a per-second history of what vitals holds, turned into frames once a second, streamed
//! to browsers as server-sent events, and the self-contained page at `/` that draws them.
//!
//! Memory: the history ring holds 900 points (15 minutes) of 56 bytes, about 49 KiB, plus seven RED
//! snapshots of at most 64 operations (22 buckets each, about 230 KB at most) for the windowed quantiles. Each connected viewer costs one task, a
//! four-message channel and one shared buffer per second: a frame is serialised once, whatever the number
//! of viewers, and viewers are limited ([`VIEWER_LIMIT`]).

pub mod frame;
pub mod history;
pub mod stream;
pub mod thresholds;
pub mod view;

use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::cadence::{Cadence, Watching};
use crate::model::Metric;
use crate::profile::continuous::{Cause, Continuous};
use crate::signal::hints::HintSignal;
use frame::LiveFrames;

/// The page, with its script and styles inline: no CDN, nothing to build, works offline and in a pod.
pub const PAGE: &str = include_str!("page.html");

/// Seconds of per-second history kept (15 minutes).
pub const HISTORY_SECONDS: usize = 900;

/// Browsers streaming at once; one more is answered 503 and its page retries.
pub const VIEWER_LIMIT: usize = 16;

/// What the live page's stream reads: the frame maker, the latest frame, and the viewer slots.
pub struct LiveHub {
    frames_of: Mutex<LiveFrames>,
    frames: watch::Sender<Bytes>,
    viewers: Arc<Semaphore>,
    shutdown: CancellationToken,
    /// The hints derivation, whose latest advice each frame shows.
    hints: Arc<HintSignal>,
    /// The continuous profiler told of each onset of trouble, when it runs.
    captures: OnceLock<Arc<Continuous>>,
    /// The samplers' pace: kept at `--interval` while a viewer is connected or trouble is watched for.
    cadence: OnceLock<Arc<Cadence>>,
    /// Held for good once trouble is watched for (the continuous profiler needs every onset).
    always_watched: OnceLock<Watching>,
}

impl LiveHub {
    /// A hub whose stream ends on `shutdown`, showing the advice of `hints`. `selected_by` describes
    /// how the target was chosen; `otlp_hint` is a sentence telling how an app's SDK reaches the
    /// receivers, or that it cannot.
    pub fn new(
        hints: Arc<HintSignal>,
        selected_by: String,
        otlp_hint: String,
        shutdown: CancellationToken,
    ) -> Self {
        LiveHub {
            frames_of: Mutex::new(LiveFrames::new(HISTORY_SECONDS, selected_by, otlp_hint)),
            frames: watch::channel(Bytes::new()).0,
            viewers: Arc::new(Semaphore::new(VIEWER_LIMIT)),
            shutdown,
            hints,
            captures: OnceLock::new(),
            cadence: OnceLock::new(),
            always_watched: OnceLock::new(),
        }
    }

    /// Keeps `cadence` at its finest pace while anyone watches.
    pub fn pace(&self, cadence: Arc<Cadence>) {
        if self.captures.get().is_some() {
            let _ = self.always_watched.set(cadence.watch());
        }
        let _ = self.cadence.set(cadence);
    }

    /// Holds the samplers at their finest pace for one viewer, until dropped.
    pub(crate) fn watch(&self) -> Option<Watching> {
        self.cadence.get().map(|c| c.watch())
    }

    /// True while a viewer is connected or the continuous profiler waits for trouble: [`LiveHub::tick`]
    /// then builds the frame (and its alert conditions) from a full gather, else only the history point
    /// from [`frame::HISTORY_READS`].
    pub fn watched(&self) -> bool {
        self.captures.get().is_some() || self.viewers.available_permits() < VIEWER_LIMIT
    }

    /// Tells `continuous` of every onset of a latency, pause or saturation condition
    /// ([`thresholds::PROFILED`]), so it keeps the profile around it; the samplers then stay at their
    /// finest pace for good (before or after [`LiveHub::pace`]).
    pub fn capture_on_trouble(&self, continuous: Arc<Continuous>) {
        let _ = self.captures.set(continuous);
        if let Some(c) = self.cadence.get() {
            let _ = self.always_watched.set(c.watch());
        }
    }

    fn live_frames(&self) -> std::sync::MutexGuard<'_, LiveFrames> {
        self.frames_of.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one frame at unix time `t` from `families` (one gather of vitals' own metrics, the app's
    /// are never shown) and hands it to every viewer. With nobody watching (`watched`, asked of
    /// [`LiveHub::watched`] before the gather, which then held only the history's families), only the
    /// history point is kept: no frame is built for nobody.
    pub fn tick(&self, families: &[Metric], t: f64, watched: bool) {
        if !watched {
            if !self.frames.borrow().is_empty() {
                // A viewer who connects later gets no frame from the last time anyone watched.
                self.frames.send_replace(Bytes::new());
            }
            self.live_frames().observe(t, families);
            return;
        }
        let hints = self.hints.current();
        let (message, onsets) = {
            let mut s = self.live_frames();
            let frame = s.tick(t, families, hints);
            (sse_message("frame", &frame), s.take_onsets())
        };
        if let Some(c) = self.captures.get() {
            for o in onsets
                .iter()
                .filter(|o| thresholds::PROFILED.contains(&o.rule.measure))
            {
                c.trigger(Cause {
                    alert: o.rule.alert.to_owned(),
                    severity: o.rule.severity.to_owned(),
                    value: o.value,
                    threshold: o.rule.threshold,
                    at_ns: (o.t.max(0.0) * 1e9) as u128,
                });
            }
        }
        self.frames.send_replace(message);
    }

    /// The latest frame message, as viewers receive it.
    pub fn latest(&self) -> Bytes {
        self.frames.borrow().clone()
    }

    /// The first message for a new viewer: the history so far and the latest frame.
    pub fn opening(&self) -> Bytes {
        let history = sse_message("history", self.live_frames().history());
        let latest = self.frames.borrow().clone();
        let mut out = b"retry: 1000\n".to_vec();
        out.extend_from_slice(&history);
        out.extend_from_slice(&latest);
        Bytes::from(out)
    }

    /// Bytes of the history ring when full.
    pub fn history_bytes(&self) -> usize {
        self.live_frames().history_bytes()
    }
}

/// One server-sent event named `event` carrying `data` as JSON, serialised once, straight into the
/// message's bytes.
fn sse_message<T: serde::Serialize>(event: &str, data: &T) -> Bytes {
    let mut out = Vec::with_capacity(4096);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    // Writing plain structs of numbers and strings into a Vec cannot fail; a failure would leave a
    // truncated message, so it is logged and the event carries `null`.
    if let Err(e) = serde_json::to_writer(&mut out, data) {
        tracing::warn!(error = %e, event, "live page message not serialised");
        out.truncate(b"event: \ndata: ".len() + event.len());
        out.extend_from_slice(b"null");
    }
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::continuous::ContinuousSettings;
    use crate::profile::{Profiler, ProfilerSettings};
    use std::time::Duration;

    fn continuous() -> Arc<Continuous> {
        let profiler = Arc::new(Profiler::new(
            ProfilerSettings::default(),
            Arc::new(Vec::new),
        ));
        Arc::new(Continuous::new(profiler, ContinuousSettings::default()))
    }

    fn hub() -> LiveHub {
        LiveHub::new(
            Arc::new(HintSignal::new(crate::signal::hints::HintPolicy::default())),
            "test".into(),
            String::new(),
            CancellationToken::new(),
        )
    }

    #[test]
    fn the_continuous_profiler_keeps_the_finest_pace_whichever_is_wired_first() {
        let (fine, idle) = (Duration::from_secs(1), Duration::from_secs(10));
        // Paced first, then told of the profiler.
        let a = Cadence::new(fine, idle);
        let first = hub();
        first.pace(a.clone());
        assert_eq!(a.period(), idle, "nobody watches yet");
        first.capture_on_trouble(continuous());
        assert_eq!(a.period(), fine);
        // Told of the profiler, then paced.
        let b = Cadence::new(fine, idle);
        let second = hub();
        second.capture_on_trouble(continuous());
        second.pace(b.clone());
        assert_eq!(b.period(), fine);
        // A hub without the profiler leaves the idle pace alone.
        let c = Cadence::new(fine, idle);
        hub().pace(c.clone());
        assert_eq!(c.period(), idle);
    }
}
