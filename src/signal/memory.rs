//! Is it leaking? A robust growth slope of RSS, cgroup memory and heap over several windows, the time
//! left until the applicable limit, and a leak verdict with hysteresis.
//!
//! Per window the samples are reduced to per-bucket minima (a GC sawtooth's floor, blind to upward
//! spikes), then to a trailing floor over a sixth of the window (so a sawtooth slower than one bucket is
//! flattened too), and the slope is the Theil–Sen median of pairwise slopes of that floor (robust to the odd
//! drop, e.g. a restart inside the window). A window says nothing until two thirds of it hold data.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::catalogue;
use crate::language::{self, Runtime};
use crate::model::{write_metric, MetricSink, Streaming, ValueRef};
use crate::probe::hsperf::{GcCollector, JvmSample};
use crate::probe::jvm_watch::JvmFast;

const BUCKETS: usize = 30;
const FLOOR_SPAN: usize = BUCKETS / 6;
const READY_BUCKETS: usize = BUCKETS * 2 / 3;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    index: i64,
    t: f64,
    min: f64,
    /// A fresh measurement fell in this bucket, not only a value held from an earlier one.
    measured: bool,
    /// The lowest fresh measurement in the bucket, with its time: a sparse signal's reading.
    fresh: Option<(f64, f64)>,
}

/// One window's estimator.
#[derive(Debug, Clone)]
pub struct Window {
    span: f64,
    width: f64,
    buckets: VecDeque<Bucket>,
    /// The status and slope of the buckets as they are, until the next reading: a scrape and the
    /// page's history point each read every window's slope (a Theil-Sen fit over up to 30 points),
    /// which changes only with a reading.
    fitted: std::cell::Cell<Option<(WindowStatus, Option<f64>)>>,
}

/// Below this many fresh readings a window is fitted on its readings rather than on the floor of its
/// buckets.
const SPARSE_READINGS: usize = 4;

/// Why a window has no slope, or that it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowStatus {
    /// A slope is exported.
    Ready,
    /// Less than two thirds of the span hold data yet.
    Filling,
    /// The span is covered but holds fewer than two fresh readings: the source measures more rarely
    /// than the window is long (a JVM live set between old collections).
    FewReadings,
    /// The signal has no value at all yet (heap: no runtime metric and no old collection seen).
    NoReading,
}

impl WindowStatus {
    /// The `status` label value.
    pub fn label(self) -> &'static str {
        match self {
            WindowStatus::Ready => "ready",
            WindowStatus::Filling => "filling",
            WindowStatus::FewReadings => "few_readings",
            WindowStatus::NoReading => "no_reading",
        }
    }

    const ALL: [WindowStatus; 4] = [
        WindowStatus::Ready,
        WindowStatus::Filling,
        WindowStatus::FewReadings,
        WindowStatus::NoReading,
    ];
}

impl Window {
    /// A window of `span`.
    pub fn new(span: Duration) -> Self {
        let span = span.as_secs_f64().max(1.0);
        Window {
            span,
            width: span / BUCKETS as f64,
            buckets: VecDeque::with_capacity(BUCKETS + 1),
            fitted: std::cell::Cell::new(None),
        }
    }

    /// Adds a sample taken at `t` seconds (any monotonic origin).
    pub fn observe(&mut self, t: f64, v: f64) {
        self.observe_value(t, v, true);
    }

    /// Adds a value held since an earlier measurement (the live set after the last old collection): it
    /// fills the window, but the window says nothing until two buckets hold fresh measurements.
    pub fn observe_held(&mut self, t: f64, v: f64) {
        self.observe_value(t, v, false);
    }

    fn observe_value(&mut self, t: f64, v: f64, measured: bool) {
        if !v.is_finite() {
            return;
        }
        self.fitted.set(None);
        let index = (t / self.width).floor() as i64;
        let fresh = measured.then_some((t, v));
        match self.buckets.back_mut() {
            Some(b) if b.index == index => {
                if v < b.min {
                    b.min = v;
                    b.t = t;
                }
                b.measured |= measured;
                if measured && b.fresh.is_none_or(|(_, m)| v < m) {
                    b.fresh = fresh;
                }
            }
            Some(b) if b.index > index => {} // time went backwards: ignore
            _ => self.buckets.push_back(Bucket {
                index,
                t,
                min: v,
                measured,
                fresh,
            }),
        }
        while self
            .buckets
            .front()
            .is_some_and(|b| (index - b.index) as usize >= BUCKETS)
        {
            self.buckets.pop_front();
        }
    }

    /// Whether the window can give a slope, and if not why.
    pub fn status(&self) -> WindowStatus {
        self.fit().0
    }

    /// The status and the slope, fitted once per reading.
    fn fit(&self) -> (WindowStatus, Option<f64>) {
        if let Some(f) = self.fitted.get() {
            return f;
        }
        let status = self.fit_status();
        let slope = if status == WindowStatus::Ready {
            self.fit_slope()
        } else {
            None
        };
        self.fitted.set(Some((status, slope)));
        (status, slope)
    }

    fn fit_status(&self) -> WindowStatus {
        if self.buckets.is_empty() {
            WindowStatus::NoReading
        } else if self.buckets.len() < READY_BUCKETS {
            WindowStatus::Filling
        } else if self.readings().len() < 2 {
            WindowStatus::FewReadings
        } else {
            WindowStatus::Ready
        }
    }

    /// The fresh readings, one per bucket (its lowest), oldest first.
    fn readings(&self) -> Vec<(f64, f64)> {
        self.buckets.iter().filter_map(|b| b.fresh).collect()
    }

    /// Whether the window holds so few fresh readings (fewer than [`SPARSE_READINGS`]) that the
    /// trailing floor of held values would be a staircase: its slope is then fitted on the readings.
    /// A source read more often (RSS every tick, a ZGC live set after each of its cycles) keeps the
    /// floor, which smooths what each reading carries beside the live set.
    fn sparse(&self) -> bool {
        self.readings().len() < SPARSE_READINGS
    }

    /// The growth in units per second, or None until the window holds enough data (see
    /// [`Window::status`]). A dense signal (one fresh value in most buckets) is fitted on the floor of
    /// its buckets; a sparse one on its fresh readings alone: carried values would make a staircase whose
    /// flat treads pull the median slope to 0 whatever the rises between them.
    pub fn slope(&self) -> Option<f64> {
        self.fit().1
    }

    fn fit_slope(&self) -> Option<f64> {
        if self.sparse() {
            return theil_sen(&self.readings());
        }
        let pts: Vec<(f64, f64)> = self.buckets.iter().map(|b| (b.t, b.min)).collect();
        let floor: Vec<(f64, f64)> = (FLOOR_SPAN..pts.len())
            .map(|i| {
                let m = pts[i - FLOOR_SPAN..=i]
                    .iter()
                    .map(|p| p.1)
                    .fold(f64::INFINITY, f64::min);
                (pts[i].0, m)
            })
            .collect();
        theil_sen(&floor)
    }

    /// Whether the window's readings trend rather than scatter, for a source whose value is held between
    /// readings (a JVM live set). Its readings carry what each collection left beside the live set
    /// (Shenandoah's floating garbage): a megabyte up or down from one cycle to the next is a slope of
    /// several kB/s over minutes, above the default threshold, with no growth at all. The readings are
    /// reduced to the lowest per stretch of the trailing floor (a sixth of the window, so the several
    /// readings one cycle may give count once), and two thirds of their pairs must move the same way
    /// (Kendall's score): a steady leak moves every pair up, a single low reading among equal ones
    /// moves none. With fewer than three such points (old collections rarer than a sixth of the window)
    /// there is nothing to score: the slope of a stop-the-world collector's exact live set stands, a
    /// `scattered` source's (a concurrent collector's end-of-cycle occupancy) counts as flat. A source
    /// measured every tick always passes.
    pub fn rise_exceeds_scatter(&self, scatter: LiveSetScatter) -> bool {
        if self.buckets.iter().all(|b| b.measured) {
            return true;
        }
        let mut lows: Vec<(f64, f64)> = Vec::new();
        let mut stretch = None;
        for b in &self.buckets {
            let Some((t, v)) = b.fresh else { continue };
            let k = b.index.div_euclid(FLOOR_SPAN as i64);
            match lows.last_mut() {
                Some(last) if stretch == Some(k) => {
                    if v < last.1 {
                        *last = (t, v);
                    }
                }
                _ => {
                    lows.push((t, v));
                    stretch = Some(k);
                }
            }
        }
        if lows.len() < 3 {
            return scatter == LiveSetScatter::Exact;
        }
        if scatter != LiveSetScatter::FloatingGarbage {
            return true;
        }
        // A trend, not scatter: two thirds of the pairs of readings move the same way (Kendall's score).
        // Equal readings, or a single low one among equals, move no way at all.
        let (mut up, mut down, mut pairs) = (0usize, 0usize, 0usize);
        for (i, a) in lows.iter().enumerate() {
            for b in &lows[i + 1..] {
                pairs += 1;
                if b.1 > a.1 {
                    up += 1;
                } else if b.1 < a.1 {
                    down += 1;
                }
            }
        }
        up.max(down) * 3 >= pairs * 2
    }

    /// The window's span in seconds.
    pub fn span(&self) -> f64 {
        self.span
    }
}

/// Median of pairwise slopes.
pub fn theil_sen(pts: &[(f64, f64)]) -> Option<f64> {
    let mut slopes = Vec::with_capacity(pts.len() * pts.len() / 2);
    for i in 0..pts.len() {
        for j in i + 1..pts.len() {
            let dt = pts[j].0 - pts[i].0;
            if dt > 0.0 {
                slopes.push((pts[j].1 - pts[i].1) / dt);
            }
        }
    }
    if slopes.is_empty() {
        return None;
    }
    slopes.sort_by(|a, b| a.total_cmp(b));
    let n = slopes.len();
    Some(if n % 2 == 1 {
        slopes[n / 2]
    } else {
        (slopes[n / 2 - 1] + slopes[n / 2]) / 2.0
    })
}

/// The three memory signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemorySignal {
    /// Resident set of the target.
    Rss,
    /// Heap in use after GC (runtime metrics or hsperfdata's old generation).
    Heap,
    /// Memory charged to the target's cgroup.
    Cgroup,
}

impl MemorySignal {
    const ALL: [MemorySignal; 3] = [MemorySignal::Rss, MemorySignal::Heap, MemorySignal::Cgroup];
    fn label(self) -> &'static str {
        match self {
            MemorySignal::Rss => "rss",
            MemorySignal::Heap => "heap",
            MemorySignal::Cgroup => "cgroup",
        }
    }
}

/// How far a heap reading is from the live set, which decides what a window of such readings may say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LiveSetScatter {
    /// The live set itself (a stop-the-world collector's old generation right after it was cleaned, a
    /// runtime's own after-GC figure) or a value measured every tick: any window's slope counts.
    #[default]
    Exact,
    /// ZGC's occupancy at the end of a cycle: it carries what the cycle allocated and could not
    /// reclaim, more when a cycle runs longer, so two readings cannot tell growth from that spread. A
    /// window's slope counts from three readings on (one per sixth of the window), and a short window
    /// without readings holds the verdict back (see [`Window::rise_exceeds_scatter`], `Track::able`).
    /// A fresh-clone CI run (2 cores, seven JVMs) flagged a constant ZGC live set at 51 s from two.
    EndOfCycle,
    /// Shenandoah's end-of-cycle occupancy: as [`LiveSetScatter::EndOfCycle`], and its readings must
    /// trend, not scatter, by a megabyte of floating garbage either way (Kendall's score). ZGC is not
    /// held to the trend: at high allocation rates its readings scatter by tens of megabytes around a
    /// leak's rise, and the trend test made its detection of a 1 MiB/s leak flaky.
    FloatingGarbage,
}

/// One tick's readings: value and applicable limit per signal.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryReadings {
    /// RSS and the cgroup limit it counts against.
    pub rss: Option<(f64, Option<f64>)>,
    /// Heap used after GC and the maximum heap.
    pub heap: Option<(f64, Option<f64>)>,
    /// The heap value is held from an earlier collection, not measured this tick (hsperfdata between old
    /// collections).
    pub heap_held: bool,
    /// How far the heap value is from the live set.
    pub heap_scatter: LiveSetScatter,
    /// Cgroup usage and limit.
    pub cgroup: Option<(f64, Option<f64>)>,
    /// The runtime whose heap `heap` is.
    pub heap_runtime: Option<Runtime>,
}

struct Track {
    windows: Vec<Window>,
    last: Option<(f64, Option<f64>)>,
    leak: bool,
    /// How far the readings are from the live set (see [`MemoryReadings::heap_scatter`]).
    scatter: LiveSetScatter,
}

impl Track {
    /// The slopes of the windows that have one, shortest first, as the verdict weighs them: a window of
    /// a live set whose readings do not rise by more than their own scatter counts as flat (see
    /// [`Window::rise_exceeds_scatter`]).
    fn ready_slopes(&self) -> Vec<f64> {
        self.windows
            .iter()
            .filter_map(|w| {
                let s = w.slope()?;
                Some(if w.rise_exceeds_scatter(self.scatter) {
                    s
                } else {
                    0.0
                })
            })
            .collect()
    }

    /// Windows that could decide: all but those whose span is covered yet holds fewer than two fresh
    /// readings (a window shorter than the source's measuring interval never can). A concurrent collector's
    /// scattered readings are the exception: a longer window alone, fitted on a handful of them, cannot
    /// tell a warm-up or a megabyte of floating garbage from growth, so a short window without readings
    /// holds the verdict back (its cycles then come rarer than the window is long).
    fn able(&self) -> usize {
        self.windows
            .iter()
            .filter(|w| {
                self.scatter != LiveSetScatter::Exact || w.status() != WindowStatus::FewReadings
            })
            .count()
    }
}

/// The JVM's live set from hsperfdata, which has no "used after GC" counter: the old generation's occupancy
/// read right after a collection that cleaned the old generation, held until the next one. Current old
/// occupancy is not it: garbage promoted between old collections would look like growth. A generational
/// collection cleaned the old generation when it is a full, old or major collection (Serial, Parallel and G1
/// full collections), or when old occupancy fell across it (G1 mixed collections, G1 remark/cleanup
/// reclaiming empty regions; a young collection only promotes). ZGC and Shenandoah collect their single
/// generation concurrently, between pauses: their pause counters (JDK 17 ZGC's "Z concurrent cycle pauses"
/// counts Pause Mark Start, Mark End and Relocate Start) say nothing about reclaiming, so for them only a
/// fall of occupancy counts, whenever it is seen. A clean seen while some pause is still running (its
/// counters are being rewritten) is kept pending and taken at the first sample with no pause running. Until
/// the first clean there is no value.
#[derive(Debug, Default)]
pub struct JvmLiveSet {
    previous: Vec<GcCollector>,
    old_used: Option<u64>,
    live: Option<u64>,
    /// A clean completed while a pause was running: take the occupancy once none runs.
    pending_clean: bool,
}

/// Generational collectors whose every collection cleans the old generation.
fn cleans_old_generation(collector: &str) -> bool {
    let n = collector.to_ascii_lowercase();
    ["full", "old", "major", "marksweep", "compact"]
        .iter()
        .any(|w| n.contains(w))
        && !collects_concurrently(&n)
}

/// How far a JVM's live-set readings are from its live set, by its collectors' names.
pub fn live_set_scatter(j: &JvmSample) -> LiveSetScatter {
    let names = || j.collectors.iter().map(|c| c.name.to_ascii_lowercase());
    if names().any(|n| n.contains("shenandoah")) {
        LiveSetScatter::FloatingGarbage
    } else if names().any(|n| collects_concurrently(&n)) {
        LiveSetScatter::EndOfCycle
    } else {
        LiveSetScatter::Exact
    }
}

/// ZGC and Shenandoah (lower-case name): single-generation collectors that reclaim between their pauses.
fn collects_concurrently(lower_name: &str) -> bool {
    lower_name.starts_with("z ") || lower_name.contains("zgc") || lower_name.contains("shenandoah")
}

impl JvmLiveSet {
    /// Reads one sample: the live set in bytes and whether it was measured in this sample (false: held
    /// from an earlier collection); None until an old collection has been seen.
    pub fn observe(&mut self, j: &JvmSample) -> Option<(f64, bool)> {
        self.observe_with(j, None)
    }

    /// Like [`JvmLiveSet::observe`], with what the fast JVM watch saw since the last sample. For ZGC and
    /// Shenandoah it read the occupancy every poll: the lowest it fell to is the occupancy when a cycle
    /// finished reclaiming (plus at most one poll's allocation), where a tick's reading after a fall
    /// carries whatever was allocated since, up to a whole interval's worth.
    pub fn observe_with(&mut self, j: &JvmSample, fast: Option<&JvmFast>) -> Option<(f64, bool)> {
        let used = j.old_used?;
        let running = j.collectors.iter().any(|c| c.in_pause());
        let fell = self.old_used.is_some_and(|before| used < before);
        let concurrent = j
            .collectors
            .iter()
            .any(|c| collects_concurrently(&c.name.to_ascii_lowercase()));
        if let (true, Some(fast)) = (concurrent, fast) {
            self.previous.clone_from(&j.collectors);
            self.old_used = Some(used);
            let fresh = fast.used_low_after_fall.is_some();
            if let Some(low) = fast.used_low_after_fall {
                tracing::debug!(
                    live_bytes = low,
                    "JVM occupancy at the end of a concurrent cycle"
                );
                self.live = Some(low);
            }
            return self.live.map(|v| (v as f64, fresh));
        }
        let mut cleaned = concurrent && fell;
        for c in &j.collectors {
            let Some(p) = self.previous.iter().find(|p| p.index == c.index) else {
                continue;
            };
            let completed = match (c.last_exit_ticks, p.last_exit_ticks) {
                (Some(now), Some(before)) => now > before,
                _ => c.time_ticks > p.time_ticks,
            };
            cleaned |= completed && !concurrent && (cleans_old_generation(&c.name) || fell);
        }
        self.previous.clone_from(&j.collectors);
        // At most 16 collectors: the parser reads indices below 16 only.
        self.old_used = Some(used);
        // Mid-pause the counters are being rewritten: keep the clean until no pause runs.
        self.pending_clean |= cleaned;
        let fresh = self.pending_clean && !running;
        if fresh {
            tracing::debug!(live_bytes = used, "JVM live set after an old collection");
            self.live = Some(used);
            self.pending_clean = false;
        }
        self.live.map(|v| (v as f64, fresh))
    }
}

/// The leak verdict from the ready windows' slopes, with hysteresis: suspected when every ready window grows
/// faster than `threshold`, cleared only when every ready window has fallen below half of it. A single
/// window never decides alone while a longer one is configured: a cache warming up for less than the
/// shortest window, or a sawtooth slower than its floor, looks like growth there and flat in the next one,
/// so nothing is said until two windows are ready. A steady leak is therefore flagged once the second
/// shortest window is ready (two thirds of its span), within the longest ready window. `windows` counts
/// the windows able to decide: one that can never hold two readings of a sparse source does not hold
/// the verdict back, so a JVM whose old collections are rarer than the shortest window is judged on
/// the longer ones. While too few windows are ready the verdict stands.
pub fn verdict(was: bool, ready_slopes: &[f64], windows: usize, threshold: f64) -> bool {
    // Too few ready windows is no new evidence: the verdict stands (a sparse source's window can
    // hold a single reading for a while between two old collections).
    if ready_slopes.len() < windows.min(2) || ready_slopes.is_empty() {
        return was;
    }
    if ready_slopes.iter().all(|s| *s > threshold) {
        true
    } else if ready_slopes.iter().all(|s| *s < threshold / 2.0) {
        false
    } else {
        was
    }
}

/// The memory growth signal over configured windows.
pub struct MemoryGrowth {
    names: Vec<String>,
    spans: Vec<Duration>,
    /// Growth (bytes/s) that counts as a leak when every ready window exceeds it.
    threshold: f64,
    tracks: Mutex<[Track; 3]>,
    /// The heap's runtime as `Runtime as u8 + 1`, 0 when unknown.
    heap_runtime: AtomicU8,
}

/// Default leak threshold: 10 MB per hour, in bytes per second.
pub const DEFAULT_LEAK_THRESHOLD: f64 = 10e6 / 3600.0;

fn window_name(d: Duration) -> String {
    let s = d.as_secs();
    if s % 3600 == 0 {
        format!("{}h", s / 3600)
    } else if s % 60 == 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

impl MemoryGrowth {
    /// Estimators for `windows` (shortest first is not required) and a leak threshold in bytes/s.
    pub fn new(windows: &[Duration], threshold: f64) -> Self {
        let mut spans = windows.to_vec();
        spans.sort();
        let track = || Track {
            windows: spans.iter().map(|d| Window::new(*d)).collect(),
            last: None,
            leak: false,
            scatter: LiveSetScatter::Exact,
        };
        MemoryGrowth {
            names: spans.iter().map(|d| window_name(*d)).collect(),
            spans: spans.clone(),
            threshold,
            tracks: Mutex::new([track(), track(), track()]),
            heap_runtime: AtomicU8::new(0),
        }
    }

    /// Adds one tick's readings at `t` seconds.
    pub fn observe(&self, t: f64, r: &MemoryReadings) {
        let mut tracks = self.tracks.lock().unwrap_or_else(|p| p.into_inner());
        for (i, sig) in MemorySignal::ALL.iter().enumerate() {
            let reading = match sig {
                MemorySignal::Rss => r.rss,
                MemorySignal::Heap => r.heap,
                MemorySignal::Cgroup => r.cgroup,
            };
            let track = &mut tracks[i];
            track.last = reading;
            let held = matches!(sig, MemorySignal::Heap) && r.heap_held;
            track.scatter = if matches!(sig, MemorySignal::Heap) {
                r.heap_scatter
            } else {
                LiveSetScatter::Exact
            };
            if let Some((v, _)) = reading {
                for w in &mut track.windows {
                    if held {
                        w.observe_held(t, v);
                    } else {
                        w.observe(t, v);
                    }
                }
            }
            track.leak = verdict(
                track.leak,
                &track.ready_slopes(),
                track.able(),
                self.threshold,
            );
            if matches!(sig, MemorySignal::Heap) {
                self.heap_runtime
                    .store(r.heap_runtime.map_or(0, |r| r as u8 + 1), Ordering::Relaxed);
            }
        }
    }

    /// Starts over (a new target instance).
    pub fn reset(&self) {
        let mut tracks = self.tracks.lock().unwrap_or_else(|p| p.into_inner());
        for t in tracks.iter_mut() {
            t.windows = self.spans.iter().map(|d| Window::new(*d)).collect();
            t.last = None;
            t.leak = false;
        }
    }
}

impl Streaming for MemoryGrowth {
    /// Streams the growth families under the tracks' lock, one pass per family (borrowed labels,
    /// nothing built per scrape).
    fn write(&self, sink: &mut dyn MetricSink) {
        let tracks = self.tracks.lock().unwrap_or_else(|p| p.into_inner());
        let read = || {
            MemorySignal::ALL
                .iter()
                .zip(tracks.iter())
                .filter(|(_, t)| t.last.is_some())
        };
        write_metric(sink, &catalogue::MEMORY_GROWTH.info(), |sink| {
            for (sig, track) in read() {
                for (w, name) in track.windows.iter().zip(&self.names) {
                    if let Some(s) = w.slope() {
                        let labels = [("signal", sig.label()), ("window", name.as_str())];
                        sink.point(&labels, 0, ValueRef::Gauge(s));
                    }
                }
            }
        });
        write_metric(sink, &catalogue::MEMORY_TIME_TO_LIMIT.info(), |sink| {
            for (sig, track) in read() {
                // The slope of the longest window that has one.
                let longest = track.windows.iter().filter_map(|w| w.slope()).last();
                if let (Some(slope), Some((v, Some(limit)))) = (longest, track.last) {
                    if slope > 0.0 {
                        let left = ((limit - v) / slope).max(0.0);
                        sink.point(&[("signal", sig.label())], 0, ValueRef::Gauge(left));
                    }
                }
            }
        });
        write_metric(sink, &catalogue::MEMORY_LEAK_SUSPECTED.info(), |sink| {
            for (sig, track) in read() {
                let v = if track.leak { 1.0 } else { 0.0 };
                sink.point(&[("signal", sig.label())], 0, ValueRef::Gauge(v));
            }
        });
        write_metric(sink, &catalogue::MEMORY_GROWTH_STATUS.info(), |sink| {
            for (sig, track) in MemorySignal::ALL.iter().zip(tracks.iter()) {
                for (w, name) in track.windows.iter().zip(&self.names) {
                    let now = if track.last.is_none() {
                        WindowStatus::NoReading
                    } else {
                        w.status()
                    };
                    for st in WindowStatus::ALL {
                        let labels = [
                            ("signal", sig.label()),
                            ("window", name.as_str()),
                            ("status", st.label()),
                        ];
                        let v = if st == now { 1.0 } else { 0.0 };
                        sink.point(&labels, 0, ValueRef::Gauge(v));
                    }
                }
            }
        });
        let heap = tracks
            .iter()
            .zip(MemorySignal::ALL.iter())
            .find(|(_, sig)| matches!(sig, MemorySignal::Heap))
            .and_then(|(t, _)| t.last);
        let runtime = match self.heap_runtime.load(Ordering::Relaxed) {
            0 => None,
            n => Runtime::ALL.get(usize::from(n - 1)).copied(),
        };
        let labels = [("runtime", language::label_of(runtime))];
        write_metric(sink, &catalogue::MEMORY_HEAP.info(), |sink| {
            if let Some((v, _)) = heap {
                sink.point(&labels, 0, ValueRef::Gauge(v));
            }
        });
        write_metric(sink, &catalogue::MEMORY_HEAP_LIMIT.info(), |sink| {
            if let Some((_, Some(l))) = heap {
                sink.point(&labels, 0, ValueRef::Gauge(l));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Collector, Metric, Value};

    fn run(series: impl Fn(f64) -> f64, secs: f64, step: f64) -> Window {
        let mut w = Window::new(Duration::from_secs(600));
        let mut t = 0.0;
        while t < secs {
            w.observe(t, series(t));
            t += step;
        }
        w
    }

    #[test]
    fn the_idle_pace_counts_the_same_buckets() {
        // The configuration picks the idle interval so that each of these buckets gets a reading.
        assert_eq!(BUCKETS, crate::config::GROWTH_WINDOW_BUCKETS as usize);
    }

    #[test]
    fn slope_through_sawtooth_and_spikes() {
        let rate = 1000.0;
        // 1000 B/s growth, a 50 kB GC sawtooth every 7 s, and a 10 MB spike every 97 s.
        let f = |t: f64| {
            1e6 + rate * t
                + 50_000.0 * ((t % 7.0) / 7.0)
                + if (t as u64) % 97 == 0 { 1e7 } else { 0.0 }
        };
        let s = run(f, 600.0, 1.0).slope().unwrap();
        assert!((s - rate).abs() / rate < 0.05, "slope {s}");
    }

    #[test]
    fn flat_sawtooth_is_not_growth() {
        let f = |t: f64| 5e7 + 2e7 * ((t % 20.0) / 20.0);
        let s = run(f, 600.0, 1.0).slope().unwrap();
        assert!(s.abs() < 100.0, "slope {s}");
    }

    #[test]
    fn silent_until_enough_data_and_after_gaps() {
        let w = run(|t| t, 300.0, 1.0);
        assert_eq!(w.slope(), None, "half a window is not enough");
        let mut w = Window::new(Duration::from_secs(600));
        w.observe(0.0, 1.0);
        w.observe(590.0, 2.0);
        assert_eq!(w.slope(), None, "two buckets are not enough");
    }

    #[test]
    fn restart_drop_does_not_flip_the_sign() {
        // Growing 1000 B/s, then a restart at 500 s drops memory back and growth resumes.
        let f = |t: f64| {
            if t < 500.0 {
                1e6 + 1000.0 * t
            } else {
                1e6 + 1000.0 * (t - 500.0)
            }
        };
        let s = run(f, 600.0, 1.0).slope().unwrap();
        assert!(s > 0.0, "slope {s}");
    }

    /// Feeds a heap that is measured only at old collections (`fresh(t)` gives a reading when one
    /// happens at tick `t`) and held between, once a second for `secs`; returns for each second whether
    /// a leak was suspected, and the collector's last output.
    fn sparse_heap(
        windows: &[u64],
        threshold: f64,
        secs: u64,
        fresh: impl Fn(u64) -> Option<f64>,
    ) -> (Vec<bool>, Vec<Metric>) {
        let spans: Vec<Duration> = windows.iter().map(|s| Duration::from_secs(*s)).collect();
        let m = MemoryGrowth::new(&spans, threshold);
        let mut held = None;
        let mut flags = Vec::new();
        for t in 0..secs {
            let now = fresh(t);
            if now.is_some() {
                held = now;
            }
            m.observe(
                t as f64,
                &MemoryReadings {
                    heap: held.map(|v| (v, None)),
                    heap_held: now.is_none(),
                    heap_runtime: Some(Runtime::Jvm),
                    ..Default::default()
                },
            );
            let mut out = vec![];
            m.collect(&mut out);
            crate::catalogue::assert_agrees(&out);
            flags.push(
                out.iter()
                    .find(|f| f.name == catalogue::MEMORY_LEAK_SUSPECTED.name)
                    .is_some_and(|f| f.points.iter().any(|p| p.value == Value::Gauge(1.0))),
            );
        }
        let mut out = vec![];
        m.collect(&mut out);
        crate::catalogue::assert_agrees(&out);
        (flags, out)
    }

    fn heap_series(out: &[Metric], name: &str, labels: &[(&str, &str)]) -> Option<Value> {
        out.iter()
            .find(|f| f.name == name)?
            .points
            .iter()
            .find(|p| {
                labels
                    .iter()
                    .all(|(k, v)| p.attributes.iter().any(|(a, b)| a == k && b == v))
            })
            .map(|p| p.value.clone())
    }

    /// The case: a live set growing 210 kB/s read at old collections every 110 s, windows
    /// 1m,3m, the default threshold. The 1 m window never holds two readings and says so; the 3 m one
    /// fits the readings (not the staircase of held values, whose treads read 0) and the leak is
    /// flagged once that window holds 20 of its 30 six-second buckets (from the first reading at 110 s)
    /// and the second reading (at 220 s): at 222 s.
    #[test]
    fn rare_old_collections_still_show_a_leak() {
        let rate = 210_000.0;
        let (flags, out) = sparse_heap(&[60, 180], DEFAULT_LEAK_THRESHOLD, 600, |t| {
            (t % 110 == 0 && t > 0).then_some(50e6 + rate * t as f64)
        });
        let first = flags.iter().position(|f| *f);
        assert_eq!(first, Some(222), "flagged once the 3 m window is ready");
        assert!(flags[222..].iter().all(|f| *f), "and it stays flagged");
        fn window(w: &str) -> [(&str, &str); 2] {
            [("signal", "heap"), ("window", w)]
        }
        assert_eq!(
            heap_series(&out, catalogue::MEMORY_GROWTH.name, &window("1m")),
            None,
            "no slope from one reading"
        );
        assert_eq!(
            heap_series(
                &out,
                catalogue::MEMORY_GROWTH_STATUS.name,
                &[
                    ("signal", "heap"),
                    ("window", "1m"),
                    ("status", "few_readings")
                ]
            ),
            Some(Value::Gauge(1.0))
        );
        match heap_series(&out, catalogue::MEMORY_GROWTH.name, &window("3m")) {
            Some(Value::Gauge(s)) => assert!((s - rate).abs() < 1.0, "{s}"),
            v => panic!("{v:?}"),
        }
        assert_eq!(
            heap_series(&out, catalogue::MEMORY_HEAP.name, &[("runtime", "jvm")]),
            Some(Value::Gauge(50e6 + rate * 550.0))
        );
    }

    #[test]
    fn leak_verdict_with_hysteresis_and_time_to_limit() {
        let m = MemoryGrowth::new(&[Duration::from_secs(60), Duration::from_secs(120)], 100.0);
        let mut t = 0.0;
        let mut v = 1e6;
        while t < 120.0 {
            m.observe(
                t,
                &MemoryReadings {
                    rss: Some((v, Some(2e6))),
                    ..Default::default()
                },
            );
            t += 1.0;
            v += 1000.0;
        }
        let mut out = vec![];
        m.collect(&mut out);
        crate::catalogue::assert_agrees(&out);
        let leak = out
            .iter()
            .find(|f| f.name == catalogue::MEMORY_LEAK_SUSPECTED.name)
            .unwrap();
        assert_eq!(leak.points[0].value, Value::Gauge(1.0));
        let ttl = out
            .iter()
            .find(|f| f.name == catalogue::MEMORY_TIME_TO_LIMIT.name)
            .unwrap();
        match ttl.points[0].value {
            Value::Gauge(s) => assert!((s - (2e6 - 1.119e6) / 1000.0).abs() < 5.0, "{s}"),
            _ => unreachable!(),
        }
        let growth = out
            .iter()
            .find(|f| f.name == catalogue::MEMORY_GROWTH.name)
            .unwrap();
        assert_eq!(growth.points.len(), 2);
        assert_eq!(growth.points[0].attributes[1].1, "1m");
        // Growth slows to 70 B/s: below the threshold but above half of it, the verdict holds.
        while t < 400.0 {
            m.observe(
                t,
                &MemoryReadings {
                    rss: Some((v, None)),
                    ..Default::default()
                },
            );
            t += 1.0;
            v += 70.0;
        }
        let mut out = vec![];
        m.collect(&mut out);
        crate::catalogue::assert_agrees(&out);
        assert_eq!(
            out.iter()
                .find(|f| f.name == catalogue::MEMORY_LEAK_SUSPECTED.name)
                .unwrap()
                .points[0]
                .value,
            Value::Gauge(1.0)
        );
        while t < 700.0 {
            m.observe(
                t,
                &MemoryReadings {
                    rss: Some((v, None)),
                    ..Default::default()
                },
            );
            t += 1.0;
        }
        let mut out = vec![];
        m.collect(&mut out);
        crate::catalogue::assert_agrees(&out);
        assert_eq!(
            out.iter()
                .find(|f| f.name == catalogue::MEMORY_LEAK_SUSPECTED.name)
                .unwrap()
                .points[0]
                .value,
            Value::Gauge(0.0)
        );
    }

    #[test]
    fn one_window_never_decides_alone() {
        // Only the shortest of two is ready and grows fast: no verdict yet.
        assert!(!verdict(false, &[1e6], 2, 100.0));
        // Too few ready windows is no new evidence either way: the verdict stands.
        assert!(verdict(true, &[1e6], 3, 100.0));
        assert!(verdict(true, &[], 2, 100.0));
        // Both agree.
        assert!(verdict(false, &[1e6, 500.0], 3, 100.0));
        // A warm-up that has plateaued: the short window is flat, the long one still sees the ramp.
        assert!(!verdict(false, &[0.0, 5e5], 2, 100.0));
        // Hysteresis between half the threshold and the threshold.
        assert!(verdict(true, &[70.0, 80.0], 2, 100.0));
        assert!(!verdict(true, &[40.0, 30.0], 2, 100.0));
        // With one window configured, it is all there is.
        assert!(verdict(false, &[1e6], 1, 100.0));
    }

    /// A live set held between readings: a constant one whose readings step by a megabyte from one cycle
    /// to the next (Shenandoah's floating garbage; the GC log said 48, 47, 48, … MiB) rises by less than
    /// its scatter, so its windows count as flat for the verdict whatever the slope of their floor; a
    /// leak of 200 kB/s read in pairs 14 MiB apart (Shenandoah's immediate-garbage and final cleanups)
    /// rises far above it.
    #[test]
    fn a_live_set_must_rise_above_its_scatter() {
        const MIB: f64 = 1048576.0;
        let feed = |reading: &dyn Fn(u32) -> Option<f64>| {
            let mut w = Window::new(Duration::from_secs(60));
            let mut held = 48.0 * MIB;
            for tick in 0..80u32 {
                match reading(tick) {
                    Some(v) => {
                        held = v;
                        w.observe(tick as f64, v);
                    }
                    None => w.observe_held(tick as f64, held),
                }
            }
            w
        };
        // A reading every 13 s; the second one a megabyte low.
        let constant =
            feed(&|t| (t % 13 == 0).then_some(if t == 13 { 47.0 * MIB } else { 48.0 * MIB }));
        assert!(!constant.rise_exceeds_scatter(LiveSetScatter::FloatingGarbage));
        // ZGC's readings are not held to the trend once there are three.
        assert!(constant.rise_exceeds_scatter(LiveSetScatter::EndOfCycle));
        let leak = feed(&|t| match t % 7 {
            0 => Some(60.0 * MIB + 200_000.0 * t as f64 + 14.0 * MIB),
            3 => Some(60.0 * MIB + 200_000.0 * t as f64),
            _ => None,
        });
        assert!(leak.rise_exceeds_scatter(LiveSetScatter::FloatingGarbage));
        let s = leak.slope().unwrap();
        assert!((s - 200_000.0).abs() < 40_000.0, "{s}");
        // Two rare readings (a full collection every 35 s) leave no scatter to measure: the slope of a
        // stop-the-world collector's exact live set stands.
        let rare = feed(&|t| (t % 35 == 5).then_some(48.0 * MIB + 210_000.0 * t as f64));
        assert!(rare.rise_exceeds_scatter(LiveSetScatter::Exact));
        // The same two from a concurrent collector cannot tell growth from its scatter.
        assert!(!rare.rise_exceeds_scatter(LiveSetScatter::FloatingGarbage));
        assert!(!rare.rise_exceeds_scatter(LiveSetScatter::EndOfCycle));
    }

    /// The live set a G1 JVM with a constant 48 MiB live set showed after its old collections (vitals'
    /// debug log, `-XX:+UseG1GC -Xmx256m -Xmn32m`, tests/children/LiveSet.java churning 32 MiB/s): garbage
    /// left in mostly-live regions adds 10-16 MiB, varying by 5.6 MiB from one collection to the next.
    const G1_LIVE_SET_MIB: [(f64, f64); 8] = [
        (0.6, 56.61),
        (3.9, 55.36),
        (7.1, 56.18),
        (14.6, 58.68),
        (22.4, 60.42),
        (29.9, 57.18),
        (37.4, 60.74),
        (44.9, 57.49),
    ];

    /// Feeds the held live set every 250 ms with windows 20s,40s and a threshold in bytes per second, plus
    /// `leak` bytes per second; returns when it was first flagged.
    fn first_flag_of_g1_live_set(threshold: f64, leak: f64) -> Option<f64> {
        let m = MemoryGrowth::new(
            &[Duration::from_secs(20), Duration::from_secs(40)],
            threshold,
        );
        let mut flagged = None;
        for tick in 0..200 {
            let t = tick as f64 * 0.25;
            let Some(i) = G1_LIVE_SET_MIB.iter().rposition(|(at, _)| *at <= t) else {
                continue;
            };
            let (at, mib) = G1_LIVE_SET_MIB[i];
            let fresh = t - at < 0.25;
            m.observe(
                t,
                &MemoryReadings {
                    heap: Some((mib * 1048576.0 + leak * at, None)),
                    heap_held: !fresh,
                    ..Default::default()
                },
            );
            if m.tracks.lock().unwrap()[1].leak {
                flagged.get_or_insert(t);
            }
        }
        flagged
    }

    #[test]
    fn g1_garbage_noise_is_not_a_leak_but_a_leak_through_it_is() {
        // Four readings in a row rise by 5 MiB over 18 s (270 kB/s): at a 125 kB/s threshold no estimator
        // can tell that from a leak with 20 s and 40 s windows, and it is flagged. A window has to
        // be long against the noise: the live set's spread over the threshold (5.6 MiB / 125 kB/s = 45 s).
        assert!(first_flag_of_g1_live_set(125_000.0, 0.0).is_some());
        // At 400 kB/s (the spread over 14 s) the same noise is not a leak, and a 1 MiB/s leak through it is
        // flagged once the 40 s window is ready.
        assert_eq!(first_flag_of_g1_live_set(400_000.0, 0.0), None);
        let at =
            first_flag_of_g1_live_set(400_000.0, 1048576.0).expect("a 1 MiB/s leak is flagged");
        assert!(at <= 40.0, "flagged at {at} s");
    }

    #[test]
    fn warm_up_then_plateau_is_not_a_leak() {
        // 4 kB/s for 30 s, then flat, with windows of 60 s and 120 s sampled every second.
        let m = MemoryGrowth::new(&[Duration::from_secs(60), Duration::from_secs(120)], 100.0);
        let mut flagged_at = None;
        for t in 0..400 {
            let v = 1e6 + 4000.0 * (t.min(30) as f64);
            m.observe(
                t as f64,
                &MemoryReadings {
                    rss: Some((v, None)),
                    ..Default::default()
                },
            );
            let tracks = m.tracks.lock().unwrap();
            if tracks[0].leak && flagged_at.is_none() {
                flagged_at = Some(t);
            }
        }
        assert_eq!(flagged_at, None);
    }

    fn jvm(young: (u64, u64), full: (u64, u64), old_used: u64) -> JvmSample {
        let c = |index: usize, name: &str, (entry, exit): (u64, u64)| GcCollector {
            index,
            name: name.into(),
            invocations: entry,
            time_ticks: exit,
            last_entry_ticks: Some(entry),
            last_exit_ticks: Some(exit),
        };
        JvmSample {
            frequency: 1000,
            collectors: vec![
                c(0, "Parallel young collection pauses", young),
                c(1, "Parallel full collection pauses", full),
            ],
            old_used: Some(old_used),
            old_max: Some(1 << 30),
            ..Default::default()
        }
    }

    #[test]
    fn jvm_live_set_is_old_occupancy_after_old_collections_only() {
        let mut l = JvmLiveSet::default();
        assert_eq!(l.observe(&jvm((10, 11), (5, 6), 100)), None, "baseline");
        // Young collections promote garbage: old occupancy climbs, no live set yet.
        assert_eq!(l.observe(&jvm((20, 21), (5, 6), 150)), None);
        // A full collection ended: measured.
        assert_eq!(l.observe(&jvm((20, 21), (30, 31), 60)), Some((60.0, true)));
        // Promotion again: the live set is held, not the occupancy.
        assert_eq!(l.observe(&jvm((40, 41), (30, 31), 90)), Some((60.0, false)));
        // A full collection still running: wait for it.
        assert_eq!(l.observe(&jvm((40, 41), (50, 31), 90)), Some((60.0, false)));
        assert_eq!(l.observe(&jvm((40, 41), (50, 52), 62)), Some((62.0, true)));
        // A young-named pause after which old occupancy fell (a G1 mixed collection) cleaned it too.
        assert_eq!(l.observe(&jvm((60, 61), (50, 52), 61)), Some((61.0, true)));
    }

    #[test]
    fn full_collection_completed_while_a_young_pause_runs_is_taken_after_it() {
        let mut l = JvmLiveSet::default();
        assert_eq!(l.observe(&jvm((10, 11), (5, 6), 100)), None, "baseline");
        // The full collection ended and a young pause began before the sample: wait for the young pause.
        assert_eq!(l.observe(&jvm((30, 11), (20, 21), 55)), None);
        // Young pause over, no new full collection and occupancy up by the promotion: the clean still counts.
        assert_eq!(l.observe(&jvm((30, 31), (20, 21), 58)), Some((58.0, true)));
        // Nothing pending any more: held from here on.
        assert_eq!(l.observe(&jvm((40, 41), (20, 21), 70)), Some((58.0, false)));
    }

    /// JDK 17 ZGC's only hsperfdata collector (checked with `jcmd PID PerfCounter.print` on a
    /// `-XX:+UseZGC` JVM: `sun.gc.collector.2.name="Z concurrent cycle pauses"`), one sample per entry.
    fn zgc(pauses: u64, running: bool, used: u64) -> JvmSample {
        let exit = pauses * 10;
        JvmSample {
            frequency: 1000,
            collectors: vec![GcCollector {
                index: 2,
                name: "Z concurrent cycle pauses".into(),
                invocations: pauses,
                time_ticks: pauses,
                last_entry_ticks: Some(if running { exit + 5 } else { exit - 1 }),
                last_exit_ticks: Some(exit),
            }],
            old_used: Some(used),
            old_max: Some(1 << 30),
            ..Default::default()
        }
    }

    #[test]
    fn zgc_live_set_is_occupancy_after_it_fell_never_before_a_cycle() {
        let mut l = JvmLiveSet::default();
        assert_eq!(l.observe(&zgc(3, false, 100)), None, "baseline");
        // Pause Mark Start and Mark End ended; occupancy still rising: not a live set.
        assert_eq!(l.observe(&zgc(5, false, 180)), None);
        // Relocate Start ended; relocation frees pages between pauses.
        assert_eq!(l.observe(&zgc(6, false, 140)), Some((140.0, true)));
        assert_eq!(l.observe(&zgc(6, false, 90)), Some((90.0, true)));
        // The next cycle's Mark Start at a higher occupancy: the live set is held.
        assert_eq!(l.observe(&zgc(7, false, 200)), Some((90.0, false)));
        // A fall seen while a pause runs waits for it to end.
        assert_eq!(l.observe(&zgc(9, true, 95)), Some((90.0, false)));
        assert_eq!(l.observe(&zgc(9, false, 97)), Some((97.0, true)));
    }

    #[test]
    fn held_values_need_two_measurements() {
        let mut w = Window::new(Duration::from_secs(60));
        w.observe(0.0, 5.0);
        for t in 1..60 {
            w.observe_held(t as f64, 5.0);
        }
        assert_eq!(
            w.slope(),
            None,
            "one measurement held for a minute says nothing"
        );
        w.observe(59.5, 6.0);
        assert!(w.slope().is_some());
    }

    /// The growth families stream into a scrape (their own pass per family, under the lock) and are
    /// collected for a gather from the same code: a registry holding a streamed main target's and an
    /// attributed second target's scrapes exactly what its gather encodes, and a filtered gather keeps
    /// both targets' points of a family it wants.
    #[test]
    fn streamed_and_gathered_growth_agree_with_a_second_target_merged_in() {
        use crate::export::prometheus::{encode, Format};
        use crate::model::{Attributed, Registry};
        use std::sync::Arc;
        let windows = [Duration::from_secs(60), Duration::from_secs(600)];
        let (main, other) = (
            Arc::new(MemoryGrowth::new(&windows, 1e6)),
            Arc::new(MemoryGrowth::new(&windows, 1e6)),
        );
        for t in 0..120 {
            let t = f64::from(t);
            main.observe(
                t,
                &MemoryReadings {
                    rss: Some((1e8 + 5e5 * t, Some(1e9))),
                    heap: Some((5e7 + 1e3 * t, Some(2e8))),
                    heap_runtime: Some(Runtime::Jvm),
                    cgroup: Some((2e8, None)),
                    ..Default::default()
                },
            );
            other.observe(
                t,
                &MemoryReadings {
                    rss: Some((3e7, Some(1e9))),
                    ..Default::default()
                },
            );
        }
        let r = Registry::new();
        r.register(main.clone());
        r.register(Arc::new(Attributed::new(other, "target", "b")));
        let rendered = crate::export::http::render_metrics(&r, Format::Text);
        // The scrape ends with its own series count.
        let (scraped, _) = rendered
            .split_once("# HELP vitals_exporter_series ")
            .unwrap();
        assert_eq!(scraped, encode(&r.gather(), Format::Text));
        for want in [
            "vitals_memory_growth_bytes_per_second{signal=\"rss\",window=\"1m\"} 500000",
            "vitals_memory_growth_bytes_per_second{target=\"b\",signal=\"rss\",window=\"1m\"} 0",
            "vitals_memory_time_to_limit_seconds{signal=\"rss\"} ",
            "vitals_memory_heap_bytes{runtime=\"jvm\"} ",
            "vitals_memory_growth_status{target=\"b\",signal=\"heap\",window=\"10m\",status=\"no_reading\"} 1",
        ] {
            assert!(scraped.contains(want), "{want} not in\n{scraped}");
        }
        let kept = r.gather_where(|m| m.name == catalogue::MEMORY_LEAK_SUSPECTED.name);
        assert_eq!(kept.len(), 1);
        let targets: Vec<_> = kept[0]
            .points
            .iter()
            .map(|p| p.attributes.iter().any(|(k, _)| k == "target"))
            .collect();
        // Three signals read for the main target (its own labels), one for the second (rss only).
        assert_eq!(targets, [false, false, false, true]);
    }
}
