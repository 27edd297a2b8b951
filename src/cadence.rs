//! When the samplers read the targets: every `--interval` while someone needs readings that fine (a live
//! page viewer, the continuous profiler's trouble triggers), otherwise every idle interval, and in any case
//! right before a consumer reads them (a scrape, a push), so what it reads is never older than
//! `--interval`.
//!
//! Why: a sidecar runs in every pod, and most of its life nobody looks. Everything the kernel keeps as a
//! counter or a high-water mark (CPU time, throttled time, pressure stall totals, OOM kills, peak RSS and
//! peak cgroup usage) is as exact read once per scrape as read every second; the target's exit is an event
//! (its pidfd), not a reading. What needs readings between scrapes is what vitals computes from a series of
//! them: the growth slopes (a reading in each of a window's 30 buckets), the live page's per-second
//! history (only while it is watched) and the tuning hints' CPU percentiles (each reading weighted by the
//! seconds it covers). So with nobody watching, a sampler ticks every idle interval (default 20 s, shorter
//! when a growth window is under 5 minutes: see `config`) and once more when a scrape or a push arrives.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{watch, Notify};

/// How long a reader waits for the samplers to take fresh readings before it reads what is there.
pub const FRESH_WAIT: Duration = Duration::from_millis(250);

/// The pace of the samplers, and the readers asking them for fresh readings.
pub struct Cadence {
    interval: Duration,
    idle_interval: Duration,
    /// Consumers that need a reading every `interval` now (live page viewers, the continuous profiler).
    watchers: AtomicUsize,
    /// Bumped by every request for fresh readings and every change of `watchers`; samplers wait on it.
    asked: watch::Sender<u64>,
    /// The request each sampler answered last.
    samplers: Mutex<Vec<Weak<AtomicU64>>>,
    /// Told whenever a sampler answered a request.
    answered: Notify,
}

/// A sampler's side of the cadence: the requests it answers.
pub struct Turn {
    cadence: Arc<Cadence>,
    asked: watch::Receiver<u64>,
    answered: Arc<AtomicU64>,
}

/// Held while a consumer needs a reading every `interval` (a connected viewer); dropping it lets the
/// samplers slow down again.
pub struct Watching(Arc<Cadence>);

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::Relaxed);
        self.0.asked.send_modify(|g| *g += 1);
    }
}

impl Cadence {
    /// Samplers tick every `interval` while watched and every `idle_interval` (at least `interval`)
    /// otherwise.
    pub fn new(interval: Duration, idle_interval: Duration) -> Arc<Self> {
        Arc::new(Cadence {
            interval,
            idle_interval: idle_interval.max(interval),
            watchers: AtomicUsize::new(0),
            asked: watch::channel(0).0,
            samplers: Mutex::new(Vec::new()),
            answered: Notify::new(),
        })
    }

    /// The finest pace: readings a reader gets are never older than this.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The pace now: `interval` while anyone watches, else the idle interval.
    pub fn period(&self) -> Duration {
        if self.watchers.load(Ordering::Relaxed) > 0 {
            self.interval
        } else {
            self.idle_interval
        }
    }

    /// Keeps the samplers at `interval` until the returned guard is dropped.
    pub fn watch(self: &Arc<Self>) -> Watching {
        self.watchers.fetch_add(1, Ordering::Relaxed);
        self.asked.send_modify(|g| *g += 1);
        Watching(self.clone())
    }

    /// A new sampler's turn. It has answered every request made so far.
    pub fn join(self: &Arc<Self>) -> Turn {
        let asked = self.asked.subscribe();
        let answered = Arc::new(AtomicU64::new(*asked.borrow()));
        let mut samplers = self.samplers.lock().unwrap_or_else(|p| p.into_inner());
        samplers.retain(|s| s.strong_count() > 0);
        samplers.push(Arc::downgrade(&answered));
        drop(samplers);
        Turn {
            cadence: self.clone(),
            asked,
            answered,
        }
    }

    fn all_answered(&self, request: u64) -> bool {
        let samplers = self.samplers.lock().unwrap_or_else(|p| p.into_inner());
        samplers
            .iter()
            .filter_map(Weak::upgrade)
            .all(|a| a.load(Ordering::Acquire) >= request)
    }

    /// Asks every sampler for readings no older than `interval` and waits until each has them, or
    /// [`FRESH_WAIT`] has passed (a sampler busy with a large process tree, or none running).
    ///
    /// The bound's timer is armed only when the samplers have not answered by this task's second turn.
    /// A sampler on this task's thread was woken by the request before this task yields, so it reads and
    /// answers first; arming a timer earlier than the runtime's next wake-up makes tokio wake its own
    /// driver (an eventfd write and one more `epoll_wait`) at every scrape, for a bound that is not needed.
    pub async fn fresh(&self) {
        let mut request = 0;
        self.asked.send_modify(|g| {
            *g += 1;
            request = *g;
        });
        let deadline = tokio::time::Instant::now() + FRESH_WAIT;
        if !self.all_answered(request) {
            YieldOnce(false).await;
        }
        loop {
            let answered = self.answered.notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            if self.all_answered(request) {
                return;
            }
            if tokio::time::timeout_at(deadline, answered).await.is_err() {
                return;
            }
        }
    }
}

/// Pending once (the task woken at once, behind the tasks already woken), then ready: unlike
/// `tokio::task::yield_now`, which on a current-thread runtime defers the task until the driver has
/// been polled (one more `epoll_wait`).
struct YieldOnce(bool);

impl std::future::Future for YieldOnce {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

impl Turn {
    /// Waits for the next request (a reader asking for fresh readings, or the pace changing). Pending
    /// forever once the cadence is gone.
    pub async fn asked(&mut self) {
        if self.asked.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// The pace now.
    pub fn period(&self) -> Duration {
        self.cadence.period()
    }

    /// The finest pace.
    pub fn interval(&self) -> Duration {
        self.cadence.interval
    }

    /// Says the readings asked for so far are taken.
    pub fn answer(&mut self) {
        let request = *self.asked.borrow_and_update();
        self.answered.store(request, Ordering::Release);
        self.cadence.answered.notify_waiters();
    }
}

/// A deadline the kernel keeps: a one-shot timerfd in the runtime's epoll set, so the thread wakes once,
/// at the deadline. tokio's timer wheel wakes its thread at each level on the way to a far deadline:
/// for the 20 s idle interval about 4 s and 64 ms before it, then at it, and each of those wake-ups cost
/// 30–70 µs of CPU on an idle machine (schedstat of the sampling thread), a quarter of an idle reading's.
pub struct Deadline {
    fd: tokio::io::unix::AsyncFd<TimerFd>,
}

/// An open timerfd, closed on drop.
struct TimerFd(std::os::fd::OwnedFd);

impl std::os::fd::AsRawFd for TimerFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

impl Deadline {
    /// A disarmed deadline on the current runtime; an error where timerfds are unavailable (the caller
    /// uses tokio's timer then).
    pub fn new() -> std::io::Result<Deadline> {
        use std::os::fd::FromRawFd;
        // SAFETY: timerfd_create takes a clock id and flags and returns a new descriptor or -1; no
        // memory is passed.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by timerfd_create and nothing else owns it.
        let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: the TimerFd owns its descriptor, which stays valid and the same until the AsyncFd
        // that owns the TimerFd is dropped.
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(
                TimerFd(owned),
                tokio::io::Interest::READABLE,
            )
        }?;
        Ok(Deadline { fd })
    }

    /// Resolves at `at` (at once when it has passed). Each call arms the timer again, replacing what an
    /// earlier call set: a call whose future was dropped early leaves the timer armed until the next
    /// call (the sampler makes one at once), or at worst one wake-up that the next call clears.
    pub async fn until(&self, at: tokio::time::Instant) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let left = at.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: libc::time_t::try_from(left.as_secs()).unwrap_or(libc::time_t::MAX),
                tv_nsec: libc::c_long::from(left.subsec_nanos().max(1)),
            },
        };
        let raw = self.fd.get_ref().as_raw_fd();
        // SAFETY: `raw` is the timerfd this struct owns; `spec` is a valid itimerspec read during the
        // call, and the old value is not asked for (null).
        if unsafe { libc::timerfd_settime(raw, 0, &spec, std::ptr::null_mut()) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        loop {
            let mut ready = self.fd.readable().await?;
            // Setting the time cleared any earlier expiry, but the runtime may still hold the old
            // readiness: a read that would block clears it and the wait goes on.
            let fired = ready.try_io(|fd| {
                let mut count = [0u8; 8];
                // SAFETY: reads at most 8 bytes into a local buffer of 8 bytes from the owned fd.
                let n =
                    unsafe { libc::read(fd.get_ref().as_raw_fd(), count.as_mut_ptr().cast(), 8) };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            });
            if let Ok(result) = fired {
                return result;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_reader_waits_for_every_sampler_and_no_longer_than_the_bound() {
        let c = Cadence::new(Duration::from_secs(1), Duration::from_secs(10));
        // No sampler: nothing to wait for.
        c.fresh().await;
        let mut a = c.join();
        let mut b = c.join();
        let reader = {
            let c = c.clone();
            tokio::spawn(async move {
                let t = tokio::time::Instant::now();
                c.fresh().await;
                t.elapsed()
            })
        };
        a.asked().await;
        a.answer();
        tokio::task::yield_now().await;
        assert!(!reader.is_finished(), "one sampler has not answered");
        b.asked().await;
        b.answer();
        let waited = reader.await.unwrap();
        assert!(waited < FRESH_WAIT, "{waited:?}");
        // A sampler that never answers holds a reader for FRESH_WAIT only.
        let t = tokio::time::Instant::now();
        c.fresh().await;
        assert_eq!(t.elapsed(), FRESH_WAIT);
    }

    #[tokio::test(start_paused = true)]
    async fn watching_sets_the_pace_and_wakes_the_samplers() {
        let c = Cadence::new(Duration::from_secs(1), Duration::from_secs(10));
        let mut s = c.join();
        assert_eq!(s.period(), Duration::from_secs(10));
        let w = c.watch();
        s.asked().await;
        assert_eq!(s.period(), Duration::from_secs(1));
        drop(w);
        s.asked().await;
        assert_eq!(s.period(), Duration::from_secs(10));
        // An idle interval below the interval is the interval.
        let c = Cadence::new(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(c.period(), Duration::from_secs(5));
    }

    /// The deadline fires at its time and not before, once per arming; arming it again before it fired
    /// moves it (the stale readiness of an earlier expiry does not end a later wait early).
    #[tokio::test]
    async fn a_kernel_deadline_fires_at_its_time_and_can_be_moved() {
        let d = Deadline::new().expect("timerfd");
        let t = tokio::time::Instant::now();
        d.until(t + Duration::from_millis(50)).await.unwrap();
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(50), "{took:?}");
        assert!(took < Duration::from_millis(500), "{took:?}");

        // Armed, then dropped early: a later, longer wait is not ended by it.
        let t = tokio::time::Instant::now();
        let early = tokio::time::timeout(
            Duration::from_millis(20),
            d.until(t + Duration::from_millis(30)),
        )
        .await;
        assert!(early.is_err(), "fired before its time");
        tokio::time::sleep(Duration::from_millis(40)).await;
        let t = tokio::time::Instant::now();
        d.until(t + Duration::from_millis(80)).await.unwrap();
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(80),
            "an old expiry ended the wait after {took:?}"
        );

        // A deadline in the past resolves at once.
        d.until(tokio::time::Instant::now()).await.unwrap();
    }
}
