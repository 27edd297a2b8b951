//! The continuous profiler: samples the target at a low rate all the time into a bounded ring of
//! [`SEGMENT`]-long segments, and when told that trouble began (an alert condition of the shipped rules
//! started to hold) keeps the profile around that moment — [`BEFORE`] before it to [`AFTER`] after — as a
//! named capture.
//!
//! Memory: the ring of finished segments holds at most 3/4 of the configured bytes and the segment being
//! filled at most 1/4, both counted from what they allocate (see [`super::ring`]), so under a target with
//! very many distinct stacks at least three full segments are kept; captures are kept as
//! gzipped pprof, at most [`MAX_CAPTURES`] of them and at most the configured bytes together, the oldest
//! dropped first.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::ring::{ProfileRing, Segment, SegmentBuilder};
use super::session::{self, Recording, Sampling};
use super::{perf, pprof, CpuProfile, Profiler, ProfilerSettings, Reason};
use crate::catalogue;
use crate::model::{Collector, Metric, Value};

/// Length of one segment of the ring.
pub const SEGMENT: Duration = Duration::from_secs(10);
/// How much of the ring before the trouble began a capture holds.
pub const BEFORE: Duration = Duration::from_secs(60);
/// How long after the trouble began a capture waits and holds.
pub const AFTER: Duration = Duration::from_secs(10);
/// Captures kept; the oldest is dropped for a new one.
pub const MAX_CAPTURES: usize = 10;
/// A second onset of the same alert within this time is no new capture.
pub const COOLDOWN: Duration = Duration::from_secs(300);
/// Distinct stacks one segment keeps (the byte bound usually comes first).
pub const MAX_SEGMENT_STACKS: usize = 50_000;
/// How often the rings are read at most: at the default 19 Hz, a CPU's 64 KiB ring holds twice what it
/// receives in that time.
const DRAIN_EVERY: Duration = Duration::from_millis(100);
/// How often the rings are read at least, whatever the rate.
const DRAIN_AT_MOST_EVERY: Duration = Duration::from_millis(5);

/// How often to read rings of `ring_pages` pages per CPU so that each is at most half full between two
/// reads, sampling at `hz` with `stack_bytes` of user stack per sample (plus up to 1 KiB of header,
/// registers and call chain): a CPU runs one thread at a time, so it takes at most `hz` samples a
/// second. A fixed 100 ms lost most samples at 99 Hz: 163 KiB per CPU between reads into a 64 KiB ring
/// (60 samples a second kept of a 2-CPU target's ~200, measured on `benches/profile_overhead.rs`'s
/// burner, the same at 999 Hz).
pub fn drain_every(hz: u64, ring_pages: usize, stack_bytes: u32) -> Duration {
    let ring = (ring_pages.max(1).next_power_of_two() * 4096) as f64;
    let per_second = hz.max(1) as f64 * (f64::from(stack_bytes) + 1024.0);
    Duration::from_secs_f64(ring / 2.0 / per_second).clamp(DRAIN_AT_MOST_EVERY, DRAIN_EVERY)
}
/// How long to wait before trying again when the target may not be profiled.
const RETRY_EVERY: Duration = Duration::from_secs(10);
/// Captures waiting for their after-part; further onsets are ignored until one is made.
const MAX_PENDING: usize = 4;
/// Alerts named on one capture.
const MAX_CAUSES: usize = 8;
/// Distinct alert names remembered (for the cooldown and the counter); the page's rules are fewer.
const MAX_ALERT_NAMES: usize = 64;

/// How the continuous profiler runs.
#[derive(Debug, Clone)]
pub struct ContinuousSettings {
    /// Samples per second of each thread's CPU time.
    pub hz: u64,
    /// Bytes the ring may hold (segments finished and in progress); also the bound of kept captures.
    pub ring_bytes: usize,
    /// How far back the ring reaches when the byte bound allows.
    pub window: Duration,
}

impl Default for ContinuousSettings {
    fn default() -> Self {
        ContinuousSettings {
            hz: 19,
            ring_bytes: 8 << 20,
            window: Duration::from_secs(300),
        }
    }
}

/// Why a capture was taken: an alert condition that started to hold.
#[derive(Debug, Clone)]
pub struct Cause {
    /// The alert of the shipped rules.
    pub alert: String,
    /// Its severity label.
    pub severity: String,
    /// The value that crossed the threshold.
    pub value: Option<f64>,
    /// The threshold.
    pub threshold: f64,
    /// When the condition began to hold, ns since the Unix epoch.
    pub at_ns: u128,
}

/// A kept profile of the time around an onset of trouble.
#[derive(Debug)]
pub struct Capture {
    /// Its number, from 1.
    pub id: u64,
    /// The alert that triggered it first, then others whose condition began within [`AFTER`].
    pub causes: Vec<Cause>,
    /// First and last moment sampled, ns since the Unix epoch.
    pub from_ns: u128,
    /// See `from_ns`.
    pub to_ns: u128,
    /// Samples it holds.
    pub samples: u64,
    /// Functions with the most samples at the leaf: (name, share of all samples).
    pub top: Vec<(String, f64)>,
    /// The profile, gzipped pprof.
    pub pprof_gz: Vec<u8>,
}

struct Pending {
    id: u64,
    causes: Vec<Cause>,
}

#[derive(Default)]
struct Shared {
    pending: Vec<Pending>,
    captures: VecDeque<Arc<Capture>>,
    captures_bytes: usize,
    last_onset: HashMap<String, u128>,
    taken: HashMap<String, u64>,
}

/// The ring's state as the metrics and the listing show it.
#[derive(Debug, Clone, Copy, Default)]
pub struct RingState {
    /// Bytes held by finished segments and the one being filled.
    pub bytes: usize,
    /// Seconds the finished segments cover.
    pub span_seconds: f64,
    /// Finished segments held.
    pub segments: usize,
    /// Segments dropped for the byte bound before they left the window.
    pub evicted: u64,
    /// Samples not kept because their segment was full.
    pub dropped_samples: u64,
    /// Samples kept by their innermost frame alone because their segment was full.
    pub leaf_only_samples: u64,
}

/// The continuous profiler: its ring runs on a thread of its own ([`Continuous::run`]); onsets come in
/// through [`Continuous::trigger`]; captures go out through [`Continuous::captures`].
pub struct Continuous {
    profiler: Arc<Profiler>,
    /// How it runs.
    pub settings: ContinuousSettings,
    shared: Mutex<Shared>,
    ring: Mutex<RingState>,
    next_id: AtomicU64,
    building: AtomicBool,
}

fn unix_ns(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Continuous {
    /// A continuous profiler of `profiler`'s target (its pids, status and sample count).
    pub fn new(profiler: Arc<Profiler>, settings: ContinuousSettings) -> Continuous {
        Continuous {
            profiler,
            settings,
            shared: Mutex::new(Shared::default()),
            ring: Mutex::new(RingState::default()),
            next_id: AtomicU64::new(1),
            building: AtomicBool::new(false),
        }
    }

    /// The ring's state now.
    pub fn ring_state(&self) -> RingState {
        *lock(&self.ring)
    }

    /// Kept captures, newest last.
    pub fn captures(&self) -> Vec<Arc<Capture>> {
        lock(&self.shared).captures.iter().cloned().collect()
    }

    /// The capture numbered `id`, if still kept.
    pub fn capture(&self, id: u64) -> Option<Arc<Capture>> {
        lock(&self.shared)
            .captures
            .iter()
            .find(|c| c.id == id)
            .cloned()
    }

    /// Onsets waiting for their after-part: (id, alert, ns since the epoch).
    pub fn pending(&self) -> Vec<(u64, String, u128)> {
        lock(&self.shared)
            .pending
            .iter()
            .filter_map(|p| p.causes.first().map(|c| (p.id, c.alert.clone(), c.at_ns)))
            .collect()
    }

    /// Captures taken since start, per triggering alert.
    pub fn taken(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = lock(&self.shared)
            .taken
            .iter()
            .map(|(a, n)| (a.clone(), *n))
            .collect();
        v.sort();
        v
    }

    /// Bytes the kept captures hold.
    pub fn captures_bytes(&self) -> usize {
        lock(&self.shared).captures_bytes
    }

    /// An alert condition began to hold: a capture of the time around `cause.at_ns` will be made once
    /// [`AFTER`] has been sampled. Returns whether it starts (or joins) a capture. An onset of the same
    /// alert within [`COOLDOWN`] of its last one is ignored, so a flapping condition costs one capture.
    pub fn trigger(&self, cause: Cause) -> bool {
        let mut s = lock(&self.shared);
        let after = AFTER.as_nanos();
        if let Some(p) = s.pending.last_mut() {
            let first = p.causes.first().map_or(0, |c| c.at_ns);
            if cause.at_ns.saturating_sub(first) < after {
                if p.causes.len() < MAX_CAUSES && !p.causes.iter().any(|c| c.alert == cause.alert) {
                    p.causes.push(cause);
                }
                return true;
            }
        }
        let recent = s
            .last_onset
            .get(&cause.alert)
            .is_some_and(|&t| cause.at_ns.saturating_sub(t) < COOLDOWN.as_nanos());
        if recent || s.pending.len() >= MAX_PENDING {
            return false;
        }
        if s.last_onset.len() >= MAX_ALERT_NAMES && !s.last_onset.contains_key(&cause.alert) {
            s.last_onset.clear();
        }
        s.last_onset.insert(cause.alert.clone(), cause.at_ns);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            "{} began at {}; keeping the CPU profile around it as capture {id}",
            cause.alert,
            cause.at_ns / 1_000_000_000
        );
        s.pending.push(Pending {
            id,
            causes: vec![cause],
        });
        true
    }

    fn sampling_settings(&self) -> ProfilerSettings {
        let mut s = self.profiler.settings.clone();
        s.frequency_hz = self.settings.hz.max(1);
        s.ring_pages = perf::CONTINUOUS_RING_PAGES;
        s
    }

    /// Samples until `stop`: opens the target's events, fills segments, follows a new target, and makes
    /// the captures that are due. Blocks; run it on a thread of its own.
    pub fn run(self: &Arc<Self>, stop: &AtomicBool) {
        let settings = self.sampling_settings();
        let building_bytes = self.settings.ring_bytes / 4;
        let mut ring = ProfileRing::new(
            self.settings.ring_bytes - building_bytes,
            self.settings.window.as_nanos(),
        );
        let (mut dropped, mut leaf_only) = (0u64, 0u64);
        let mut warned: Option<Reason> = None;
        while !stop.load(Ordering::Relaxed) {
            let pids = (self.profiler.pids)();
            if pids.is_empty() {
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            let mut sampling = match Sampling::open(&settings, &pids) {
                Ok(s) => s,
                Err(e) => {
                    let reason = Reason::from_refusal(e, &settings, pids[0]);
                    self.profiler.set_status(reason);
                    if warned != Some(reason) {
                        tracing::warn!("continuous profiling paused: {}", reason.advice());
                        warned = Some(reason);
                    }
                    sleep_unless(stop, RETRY_EVERY);
                    continue;
                }
            };
            warned = None;
            let new_segment = || {
                SegmentBuilder::new(
                    unix_ns(SystemTime::now()),
                    MAX_SEGMENT_STACKS,
                    building_bytes,
                )
            };
            let mut segment = new_segment();
            let mut lost_warned = false;
            let mut started = Instant::now();
            let mut checked = Instant::now();
            let drain = drain_every(
                settings.frequency_hz,
                settings.ring_pages,
                settings.stack_bytes,
            );
            loop {
                std::thread::sleep(drain);
                let n = sampling.drain(|pid, frames| segment.add(pid, frames));
                self.profiler.samples.fetch_add(n, Ordering::Relaxed);
                let stopping = stop.load(Ordering::Relaxed);
                let moved = checked.elapsed() >= Duration::from_secs(1) && {
                    checked = Instant::now();
                    (self.profiler.pids)() != sampling.pids()
                };
                if started.elapsed() >= SEGMENT || stopping || moved {
                    let full = std::mem::replace(&mut segment, new_segment());
                    started = Instant::now();
                    let finished = full.finish(unix_ns(SystemTime::now()));
                    dropped += finished.dropped;
                    if sampling.lost() > 0 && !lost_warned {
                        lost_warned = true;
                        tracing::warn!(
                            lost = sampling.lost(),
                            hz = settings.frequency_hz,
                            "the continuous profiler's rings overflowed between reads; samples were lost (a lower --profile-continuous-hz keeps them)"
                        );
                    }
                    leaf_only += finished.leaf_only;
                    ring.push(finished);
                    self.make_due_captures(&ring, &settings);
                }
                *lock(&self.ring) = RingState {
                    bytes: ring.bytes() + segment.bytes(),
                    span_seconds: ring.span_ns() as f64 / 1e9,
                    segments: ring.len(),
                    evicted: ring.evicted,
                    dropped_samples: dropped,
                    leaf_only_samples: leaf_only,
                };
                if stopping || moved {
                    break;
                }
            }
        }
    }

    /// Starts making, on a thread of its own, the first pending capture whose after-part the ring holds.
    fn make_due_captures(self: &Arc<Self>, ring: &ProfileRing, settings: &ProfilerSettings) {
        let Some(newest) = ring.newest_end() else {
            return;
        };
        let due = {
            let mut s = lock(&self.shared);
            let at = |p: &Pending| p.causes.first().map_or(0, |c| c.at_ns);
            match s
                .pending
                .iter()
                .position(|p| at(p) + AFTER.as_nanos() <= newest)
            {
                Some(i) if !self.building.load(Ordering::Acquire) => Some(s.pending.remove(i)),
                _ => None,
            }
        };
        let Some(pending) = due else { return };
        let at = pending.causes.first().map_or(0, |c| c.at_ns);
        let segments = ring.between(at.saturating_sub(BEFORE.as_nanos()), at + AFTER.as_nanos());
        self.building.store(true, Ordering::Release);
        let (me, settings) = (self.clone(), settings.clone());
        let spawned = std::thread::Builder::new()
            .name("vitals-capture".into())
            .spawn(move || {
                let capture = build(pending, &segments, &settings);
                me.keep(capture);
                me.building.store(false, Ordering::Release);
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start the thread that names a capture: {e}");
            self.building.store(false, Ordering::Release);
        }
    }

    fn keep(&self, capture: Capture) {
        let mut s = lock(&self.shared);
        if let Some(c) = capture.causes.first() {
            if s.taken.len() < MAX_ALERT_NAMES || s.taken.contains_key(&c.alert) {
                *s.taken.entry(c.alert.clone()).or_default() += 1;
            }
        }
        s.captures_bytes += capture.pprof_gz.len();
        s.captures.push_back(Arc::new(capture));
        while s.captures.len() > MAX_CAPTURES
            || (s.captures.len() > 1 && s.captures_bytes > self.settings.ring_bytes)
        {
            if let Some(old) = s.captures.pop_front() {
                s.captures_bytes -= old.pprof_gz.len();
            }
        }
    }
}

fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let until = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Merges the segments into one profile, names it (reading the target's files now) and labels it.
fn build(pending: Pending, segments: &[Arc<Segment>], settings: &ProfilerSettings) -> Capture {
    let mut stacks: HashMap<(u32, Box<[u64]>), u64> = HashMap::new();
    let (mut samples, mut dropped, mut leaf_only) = (0u64, 0u64, 0u64);
    let mut pids: Vec<u32> = Vec::new();
    for s in segments {
        samples += s.samples;
        dropped += s.dropped;
        leaf_only += s.leaf_only;
        for (pid, frames, n) in s.each() {
            *stacks.entry((pid, frames.into())).or_default() += n;
            if !pids.contains(&pid) {
                pids.push(pid);
            }
        }
    }
    let from_ns = segments.first().map_or(0, |s| s.start_ns);
    let to_ns = segments.last().map_or(0, |s| s.end_ns);
    let rec = Recording {
        stacks,
        samples,
        dropped: 0,
        lost: 0,
        kernel_frames: true,
        threads: 0,
        dwarf_stacks: 0,
        fp_stacks: 0,
        started: UNIX_EPOCH + Duration::from_nanos(from_ns as u64),
        duration: Duration::from_nanos(to_ns.saturating_sub(from_ns) as u64),
    };
    let mut profile = session::finish(settings, &pids, rec);
    if dropped > 0 {
        profile.notes.insert(
            0,
            format!("{dropped} samples not kept: their segment of the ring was full"),
        );
    }
    if leaf_only > 0 {
        profile.notes.insert(
            0,
            format!(
                "{leaf_only} samples kept by their innermost function only: their segment of the \
                 ring was full (--profile-ring-bytes)"
            ),
        );
    }
    for c in pending.causes.iter().rev() {
        profile.notes.insert(0, describe(c));
    }
    let top = top_functions(&profile, 5);
    Capture {
        id: pending.id,
        causes: pending.causes,
        from_ns,
        to_ns,
        samples,
        top,
        pprof_gz: pprof::to_pprof_gzip(&profile),
    }
}

/// "captured on VitalsLatencyP99High (warning) beginning at 1733380000.2 s: value 0.71 above 0.5".
pub fn describe(c: &Cause) -> String {
    format!(
        "captured on {} ({}) beginning at {:.1} s since the Unix epoch: value {} against threshold {}",
        c.alert,
        c.severity,
        c.at_ns as f64 / 1e9,
        c.value.map_or("-".to_owned(), |v| format!("{v:.4}")),
        c.threshold
    )
}

/// The `n` functions with the most samples at the leaf (innermost frame), with their share.
pub fn top_functions(p: &CpuProfile, n: usize) -> Vec<(String, f64)> {
    let total: u64 = p.stacks.iter().map(|s| s.count).sum();
    let mut flat: HashMap<&str, u64> = HashMap::new();
    for s in &p.stacks {
        let leaf = s
            .locations
            .first()
            .and_then(|&l| p.symbols.locations.get(l))
            .and_then(|loc| loc.lines.first())
            .map_or("[unknown]", |l| l.function.as_str());
        *flat.entry(leaf).or_default() += s.count;
    }
    let mut v: Vec<(String, f64)> = flat
        .into_iter()
        .map(|(f, c)| (f.to_owned(), c as f64 / total.max(1) as f64))
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

impl Collector for Continuous {
    fn collect(&self, out: &mut Vec<Metric>) {
        let ring = self.ring_state();
        out.push(
            catalogue::PROFILER_RING
                .metric()
                .with(&[], Value::Gauge(ring.bytes as f64)),
        );
        out.push(
            catalogue::PROFILER_RING_SPAN
                .metric()
                .with(&[], Value::Gauge(ring.span_seconds)),
        );
        let mut taken = catalogue::PROFILER_CAPTURES.metric();
        for (alert, n) in self.taken() {
            taken = taken.with(&[("alert", alert.as_str())], Value::Sum(n as f64));
        }
        out.push(taken);
        out.push(
            catalogue::PROFILER_CAPTURES_KEPT
                .metric()
                .with(&[], Value::Gauge(self.captures_bytes() as f64)),
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rings_are_read_before_they_are_half_full() {
        use super::{drain_every, Duration};
        let pages = crate::profile::perf::CONTINUOUS_RING_PAGES;
        // The default 19 Hz fills half a ring in ~99 ms; 99 Hz with 16 KiB stacks in ~19 ms.
        let at19 = drain_every(19, pages, 16 << 10);
        assert!(at19 > Duration::from_millis(90), "{at19:?}");
        let at99 = drain_every(99, pages, 16 << 10);
        assert!(
            at99 > Duration::from_millis(15) && at99 < Duration::from_millis(25),
            "{at99:?}"
        );
        assert_eq!(drain_every(999, pages, 16 << 10), Duration::from_millis(5));
        // Frame pointers only: a sample is about 1 KiB.
        assert_eq!(drain_every(99, pages, 0), Duration::from_millis(100));
    }

    use super::*;

    fn cause(alert: &str, at_s: u128) -> Cause {
        Cause {
            alert: alert.into(),
            severity: "warning".into(),
            value: Some(0.7),
            threshold: 0.5,
            at_ns: at_s * 1_000_000_000,
        }
    }

    fn continuous() -> Continuous {
        let profiler = Arc::new(Profiler::new(
            ProfilerSettings::default(),
            Arc::new(Vec::new),
        ));
        Continuous::new(profiler, ContinuousSettings::default())
    }

    #[test]
    fn onsets_join_a_pending_capture_and_a_flapping_alert_costs_one() {
        let c = continuous();
        assert!(c.trigger(cause("VitalsLatencyP99High", 1000)));
        // Another alert within AFTER joins the same capture.
        assert!(c.trigger(cause("VitalsCpuQuotaHigh", 1005)));
        assert_eq!(c.pending().len(), 1);
        assert_eq!(lock(&c.shared).pending[0].causes.len(), 2);
        // The same alert again after AFTER but within the cooldown: ignored.
        assert!(!c.trigger(cause("VitalsLatencyP99High", 1100)));
        // After the cooldown: a new capture.
        assert!(c.trigger(cause("VitalsLatencyP99High", 1400)));
        assert_eq!(c.pending().len(), 2);
    }

    #[test]
    fn kept_captures_are_bounded_in_count_and_bytes() {
        let c = continuous();
        for id in 1..=15 {
            c.keep(Capture {
                id,
                causes: vec![cause("VitalsPoolSaturated", id as u128)],
                from_ns: 0,
                to_ns: 0,
                samples: 0,
                top: Vec::new(),
                pprof_gz: vec![0; 1000],
            });
        }
        let kept = c.captures();
        assert_eq!(kept.len(), MAX_CAPTURES);
        assert_eq!(kept[0].id, 6);
        assert_eq!(c.captures_bytes(), MAX_CAPTURES * 1000);
        assert_eq!(c.taken(), vec![("VitalsPoolSaturated".to_owned(), 15)]);
        c.keep(Capture {
            id: 16,
            causes: Vec::new(),
            from_ns: 0,
            to_ns: 0,
            samples: 0,
            top: Vec::new(),
            pprof_gz: vec![0; 8 << 20],
        });
        // One capture larger than the bound is kept alone.
        assert_eq!(c.captures().len(), 1);
    }
}
