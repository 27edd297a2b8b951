//! The fast JVM watch: a small thread that reads a JVM's hsperfdata pause counters every
//! [`POLL_EVERY`] between the sampler's ticks, so every pause's entry and exit times are seen one by one
//! (the counters keep only the last pause's), and finds the file within [`SEARCH_EVERY`] of its creation
//! while the target's program is a JVM. It costs nothing while no JVM is watched or expected: the thread
//! then sleeps on a condition variable with no timer.
//!
//! Why a thread and not a sub-tick of the sampler: the samplers share one thread (`SamplingThread`) whose
//! readings block it, so a slow reading (a large process tree, another target) would delay the polls
//! exactly when pauses are short, and a 20 ms timer there would run that thread's runtime 50 times a
//! second. A thread of its own sleeps on one `Condvar::wait_timeout` per poll, does one `pread` of the few hundred
//! bytes that hold the counters (offsets found once at open), and allocates nothing per poll.
//!
//! Why `pread` and not a mapping: the file belongs to the target, which may truncate it; a read past the
//! end of a shared mapping is SIGBUS for vitals, a short `pread` is a clean error. One small `pread` per
//! poll is a few microseconds.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::hsperf::{self, Counter, HsperfOwner, JvmSample};

/// How often the pause counters of a found JVM are read: pauses that end further apart than this are each
/// seen alone, with their exact length.
pub const POLL_EVERY: Duration = Duration::from_millis(20);

/// How often the file is looked for while the target's program is a JVM without one yet.
pub const SEARCH_EVERY: Duration = Duration::from_millis(100);

/// After this long without a file (a JVM started with `-XX:-UsePerfData`, or its /tmp elsewhere), the
/// search slows to [`SEARCH_EVERY_LATER`].
const SEARCH_FAST_FOR: Duration = Duration::from_secs(30);
const SEARCH_EVERY_LATER: Duration = Duration::from_secs(1);

/// How long occupancy must stay without a fall before its low point counts as the end of a cycle's
/// reclaiming (the falls of one Shenandoah cycle on a 256 MiB heap come within about 100 ms; between
/// cycles the heap only fills).
pub const SETTLE: Duration = Duration::from_secs(1);

/// A collector that never stops falling for [`SETTLE`] (ZGC cycling back to back) has its lowest point
/// handed over this long after the first fall of the group.
pub const SETTLE_AT_MOST: Duration = Duration::from_secs(3);

/// Collectors polled: indices below this (HotSpot uses 0-2).
pub const FAST_COLLECTORS: usize = 4;

/// Polls kept between two ticks (one per change of the pause counters): 1024 polls of 160 bytes. When
/// full, the oldest goes, and the tick compares across the gap as it would without the watch.
const RING: usize = 1024;

/// One collector's pause counters at a poll.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FastCollector {
    /// Pauses begun.
    pub invocations: u64,
    /// Time in pauses, ticks (added when a pause ends).
    pub time_ticks: u64,
    /// JVM clock when the last pause began.
    pub last_entry_ticks: u64,
    /// JVM clock when the last pause ended.
    pub last_exit_ticks: u64,
}

/// The pause counters at one poll, kept when they changed since the previous poll.
#[derive(Debug, Clone, Copy)]
pub struct JvmPoll {
    /// When vitals read them.
    pub at: Instant,
    /// By collector index (below [`FAST_COLLECTORS`]); None where the JVM has no such collector.
    pub collectors: [Option<FastCollector>; FAST_COLLECTORS],
}

/// What the watch saw since the last tick, handed over with the tick's observations.
#[derive(Debug, Clone, Default)]
pub struct JvmFast {
    /// The whole file as read when the watch opened it (a JVM new to vitals), with when: the first reading
    /// of this JVM, before every poll. Only in the first hand-over after the file was opened.
    pub baseline: Option<(Instant, JvmSample)>,
    /// Polls whose pause counters changed, oldest first.
    pub polls: Vec<JvmPoll>,
    /// Polls lost to a full ring since the last hand-over.
    pub dropped: u64,
    /// Heap occupancy (`sun.gc.generation.1.space.0.used`) at the end of a collector's reclaiming: the
    /// lowest it fell to, handed over once it has settled (no further fall for [`SETTLE`], or
    /// [`SETTLE_AT_MOST`] after the first), so the falls of one concurrent cycle (Shenandoah frees immediate garbage after its
    /// Final Mark and the collection set at its end) give one reading, the last and lowest. None when no
    /// fall settled since the last hand-over.
    pub used_low_after_fall: Option<u64>,
}

/// Offsets of the polled counters in the file, found once when it is opened.
#[derive(Debug, Clone, Copy, Default)]
struct Layout {
    little: bool,
    /// First and one-past-last byte read by a poll.
    lo: usize,
    hi: usize,
    /// (invocations, time, lastEntryTime, lastExitTime) offsets per collector.
    collectors: [Option<[usize; 4]>; FAST_COLLECTORS],
    used: Option<usize>,
}

impl Layout {
    fn of(sample_image: &[u8]) -> Option<Layout> {
        let little = hsperf::little_endian(sample_image)?;
        let mut l = Layout {
            little,
            ..Layout::default()
        };
        let mut parts: [[Option<usize>; 4]; FAST_COLLECTORS] = [[None; 4]; FAST_COLLECTORS];
        hsperf::parse_at(sample_image, |name, value, at| {
            if !matches!(value, Counter::Long(_)) {
                return;
            }
            if name == "sun.gc.generation.1.space.0.used" {
                l.used = Some(at);
                return;
            }
            let Some(rest) = name.strip_prefix("sun.gc.collector.") else {
                return;
            };
            let Some((idx, field)) = rest.split_once('.') else {
                return;
            };
            let Ok(i) = idx.parse::<usize>() else { return };
            let Some(slot) = parts.get_mut(i) else { return };
            let k = match field {
                "invocations" => 0,
                "time" => 1,
                "lastEntryTime" => 2,
                "lastExitTime" => 3,
                _ => return,
            };
            slot[k] = Some(at);
        })
        .ok()?;
        for (i, p) in parts.iter().enumerate() {
            if let [Some(a), Some(b), Some(c), Some(d)] = *p {
                l.collectors[i] = Some([a, b, c, d]);
            }
        }
        let offsets = l.collectors.iter().flatten().flatten().chain(l.used.iter());
        l.lo = offsets.clone().copied().min()?;
        l.hi = offsets.copied().max()? + 8;
        Some(l)
    }

    fn value(&self, buf: &[u8], at: usize) -> Option<u64> {
        let b: [u8; 8] = buf.get(at - self.lo..at - self.lo + 8)?.try_into().ok()?;
        let v = if self.little {
            i64::from_le_bytes(b)
        } else {
            i64::from_be_bytes(b)
        };
        Some(u64::try_from(v).unwrap_or(0))
    }
}

/// The file being polled.
struct Open {
    file: File,
    layout: Layout,
    /// The span of the file a poll reads, allocated once.
    buf: Vec<u8>,
    last: [Option<FastCollector>; FAST_COLLECTORS],
    last_used: Option<u64>,
}

impl Open {
    /// Reads the polled counters; false when the file no longer reads (truncated, unreadable).
    fn poll(&mut self, st: &mut Found, at: Instant) -> bool {
        let n = match self.file.read_at(&mut self.buf, self.layout.lo as u64) {
            Ok(n) => n,
            Err(_) => return false,
        };
        if n < self.buf.len() {
            return false;
        }
        let mut cur = [None; FAST_COLLECTORS];
        for (i, offsets) in self.layout.collectors.iter().enumerate() {
            let Some([a, b, c, d]) = *offsets else {
                continue;
            };
            let v = |o| self.layout.value(&self.buf, o).unwrap_or(0);
            cur[i] = Some(FastCollector {
                invocations: v(a),
                time_ticks: v(b),
                last_entry_ticks: v(c),
                last_exit_ticks: v(d),
            });
        }
        if cur != self.last {
            if st.polls.len() == RING {
                st.polls.pop_front();
                st.dropped += 1;
            }
            st.polls.push_back(JvmPoll {
                at,
                collectors: cur,
            });
            self.last = cur;
        }
        if let Some(used) = self
            .layout
            .used
            .and_then(|o| self.layout.value(&self.buf, o))
        {
            if self.last_used.is_some_and(|before| used < before) {
                st.low = Some(st.low.map_or(used, |l| l.min(used)));
                st.first_fall.get_or_insert(at);
                st.activity = Some(at);
            }
            self.last_used = Some(used);
        }
        if let (Some(low), Some(last), Some(first)) = (st.low, st.activity, st.first_fall) {
            if at.saturating_duration_since(last) >= SETTLE
                || at.saturating_duration_since(first) >= SETTLE_AT_MOST
            {
                st.used_low_after_fall = Some(st.used_low_after_fall.map_or(low, |l| l.min(low)));
                st.low = None;
                st.activity = None;
                st.first_fall = None;
            }
        }
        true
    }
}

/// What the watch found and read, waiting for the tick.
#[derive(Default)]
struct Found {
    /// Path of the file found (by the watch or handed to it), until the probe takes it.
    path: Option<PathBuf>,
    /// When the watch found the file (for the log and the test of its delay).
    found_at: Option<Instant>,
    baseline: Option<(Instant, JvmSample)>,
    polls: VecDeque<JvmPoll>,
    dropped: u64,
    used_low_after_fall: Option<u64>,
    /// The lowest occupancy since a fall that has not settled yet, when it last fell, and when the
    /// first fall of the group came.
    low: Option<u64>,
    activity: Option<Instant>,
    first_fall: Option<Instant>,
}

/// The search for one JVM's hsperfdata file: what the probe asked the watch to do, and what it found.
#[derive(Default)]
struct HsperfSearch {
    stop: bool,
    /// The target whose file to find, with whether its program is a JVM (only then is it searched for).
    owner: Option<(HsperfOwner, bool)>,
    /// Since when the file is looked for.
    searching_since: Option<Instant>,
    open: Option<Open>,
    found: Found,
}

struct Shared {
    state: Mutex<HsperfSearch>,
    wake: Condvar,
    proc_root: PathBuf,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, HsperfSearch> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The watch and its thread (started at the first JVM, ended when dropped).
pub struct JvmWatch {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// True when some `hsperfdata_*/<nspid>` file exists under the target's /tmp: a directory listing and a
/// `stat` or two, cheap enough every [`SEARCH_EVERY`].
fn file_exists(proc_root: &Path, owner: &HsperfOwner) -> bool {
    let tmp = proc_root.join(owner.pid.to_string()).join("root/tmp");
    let Ok(dirs) = std::fs::read_dir(&tmp) else {
        return false;
    };
    let name = owner.nspid.to_string();
    dirs.flatten().take(1024).any(|d| {
        d.file_name()
            .to_str()
            .is_some_and(|n| n.starts_with("hsperfdata_"))
            && d.path().join(&name).is_file()
    })
}

/// Opens `path` for polling: reads it whole once (the baseline and the counters' offsets).
fn open_file(path: &Path) -> Option<(Open, JvmSample)> {
    let file = File::open(path).ok()?;
    let len = file.metadata().ok()?.len().min(1 << 20) as usize;
    let mut image = vec![0u8; len];
    let n = file.read_at(&mut image, 0).ok()?;
    image.truncate(n);
    let sample = hsperf::sample(&image).ok()?;
    let layout = Layout::of(&image)?;
    let mut open = Open {
        file,
        layout,
        buf: vec![0u8; layout.hi - layout.lo],
        last: [None; FAST_COLLECTORS],
        last_used: None,
    };
    // The baseline's counters are the first poll's "before".
    let mut scratch = Found::default();
    open.poll(&mut scratch, Instant::now());
    Some((open, sample))
}

impl JvmWatch {
    /// A watch reading files under `proc_root`; its thread starts with the first target.
    pub fn new(proc_root: &Path) -> Self {
        JvmWatch {
            shared: Arc::new(Shared {
                state: Mutex::new(HsperfSearch::default()),
                wake: Condvar::new(),
                proc_root: proc_root.to_path_buf(),
            }),
            thread: None,
        }
    }

    /// Watches for `owner`'s file from now on, searching every [`SEARCH_EVERY`] when `jvm` (its program
    /// looks like a JVM); forgets any file of an earlier program.
    pub fn watch(&mut self, owner: HsperfOwner, jvm: bool) {
        {
            let mut st = self.shared.lock();
            st.owner = Some((owner, jvm));
            st.searching_since = Some(Instant::now());
            st.open = None;
            st.found = Found::default();
        }
        self.shared.wake.notify_all();
        if self.thread.is_none() {
            let shared = self.shared.clone();
            self.thread = std::thread::Builder::new()
                .name("vitals-jvm-watch".into())
                .spawn(move || run(&shared))
                .map_err(|e| tracing::warn!(error = %e, "cannot start the JVM watch thread"))
                .ok();
        }
    }

    /// Stops watching (the target went away): the thread sleeps until the next target.
    pub fn unwatch(&self) {
        let mut st = self.shared.lock();
        st.owner = None;
        st.open = None;
        st.found = Found::default();
    }

    /// The probe found the file itself (at a tick, for a program that did not look like a JVM): poll it
    /// from now on. The baseline is read here, before the probe's own first reading.
    pub fn adopt(&self, path: &Path) {
        let mut st = self.shared.lock();
        st.found.path = None;
        if st.open.is_some() {
            return;
        }
        if let Some((open, sample)) = open_file(path) {
            st.open = Some(open);
            st.found.baseline = Some((Instant::now(), sample));
            st.found.path = None;
        }
        drop(st);
        self.shared.wake.notify_all();
    }

    /// A file the watch found that the probe has not opened yet, with when it was found.
    pub fn take_found(&self) -> Option<(PathBuf, Instant)> {
        let mut st = self.shared.lock();
        let path = st.found.path.take()?;
        Some((path, st.found.found_at.unwrap_or_else(Instant::now)))
    }

    /// Hands over what was seen since the last call; None while no file is polled.
    pub fn drain(&self) -> Option<JvmFast> {
        let mut st = self.shared.lock();
        st.open.as_ref()?;
        let f = &mut st.found;
        let out = JvmFast {
            baseline: f.baseline.take(),
            polls: f.polls.drain(..).collect(),
            dropped: std::mem::take(&mut f.dropped),
            used_low_after_fall: f.used_low_after_fall.take(),
        };
        Some(out)
    }
}

impl Drop for JvmWatch {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The watch thread: sleeps with no timer while there is nothing to do; polls an open file every
/// [`POLL_EVERY`]; looks for a JVM's file every [`SEARCH_EVERY`] (every [`SEARCH_EVERY_LATER`] once
/// it has been missing for [`SEARCH_FAST_FOR`]).
fn run(shared: &Shared) {
    let mut st = shared.lock();
    loop {
        if st.stop {
            return;
        }
        let state = &mut *st;
        let wait = match (&mut state.open, state.owner) {
            (Some(open), _) => {
                if !open.poll(&mut state.found, Instant::now()) {
                    // The file no longer reads: the probe's tick says why; poll no more.
                    state.open = None;
                }
                Some(POLL_EVERY)
            }
            (None, Some((owner, true))) if state.found.path.is_none() => {
                let since = state.searching_since.get_or_insert_with(Instant::now);
                let every = if since.elapsed() < SEARCH_FAST_FOR {
                    SEARCH_EVERY
                } else {
                    SEARCH_EVERY_LATER
                };
                // The search reads the target's /tmp: not under the lock, so the probe is never held up.
                drop(st);
                let exists = file_exists(&shared.proc_root, &owner);
                let opened = if exists {
                    hsperf::open_for_target(&shared.proc_root, &owner)
                        .ok()
                        .and_then(|(_, path)| open_file(&path).map(|o| (o, path)))
                } else {
                    None
                };
                st = shared.lock();
                let state = &mut *st;
                // Once the file exists the next look is one poll period away, not a search period: a
                // file just opened is polled from now on (a JVM's first pauses come tens of ms apart, and
                // of three or more that end before the first poll all but the last are known only by
                // their mean), and one being created is ready within moments (the JVM marks it so at the
                // end of its start-up).
                let every = if exists { POLL_EVERY } else { every };
                let same = state
                    .owner
                    .is_some_and(|(o, _)| o.pid == owner.pid && o.nspid == owner.nspid);
                if let (Some(((open, sample), path)), true, None) = (opened, same, &state.open) {
                    let now = Instant::now();
                    let found_unix_ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    tracing::info!(path = %path.display(), found_unix_ms, "JVM hsperfdata found by the JVM watch");
                    state.open = Some(open);
                    state.found.baseline = Some((now, sample));
                    state.found.path = Some(path);
                    state.found.found_at = Some(now);
                }
                Some(every)
            }
            _ => None,
        };
        st = match wait {
            Some(d) => {
                shared
                    .wake
                    .wait_timeout(st, d)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
            None => shared.wake.wait(st).unwrap_or_else(|p| p.into_inner()),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image as the JVM lays it out (hsperf's test builder), with the layout's offsets checked
    /// against a full parse, in both byte orders, and a poll reading what was written.
    #[test]
    fn layout_finds_the_polled_counters() {
        for little in [false, true] {
            let img = hsperf::tests::image(
                little,
                &[
                    ("sun.os.hrt.frequency", Counter::Long(1_000_000_000)),
                    ("sun.gc.collector.0.name", Counter::Text("young".into())),
                    ("sun.gc.collector.0.invocations", Counter::Long(3)),
                    ("sun.gc.collector.0.time", Counter::Long(30)),
                    ("sun.gc.collector.0.lastEntryTime", Counter::Long(100)),
                    ("sun.gc.collector.0.lastExitTime", Counter::Long(110)),
                    ("sun.gc.collector.9.invocations", Counter::Long(1)),
                    ("sun.gc.generation.1.space.0.used", Counter::Long(4096)),
                ],
            );
            let l = Layout::of(&img).unwrap();
            assert!(l.collectors[0].is_some());
            assert!(l.collectors[1].is_none());
            let span = &img[l.lo..l.hi];
            let [a, b, c, d] = l.collectors[0].unwrap();
            assert_eq!(l.value(span, a), Some(3));
            assert_eq!(l.value(span, b), Some(30));
            assert_eq!(l.value(span, c), Some(100));
            assert_eq!(l.value(span, d), Some(110));
            assert_eq!(l.value(span, l.used.unwrap()), Some(4096));
        }
    }

    /// Polls of a file rewritten in place: a change of the counters is kept once, an unchanged poll not
    /// at all; the low point after a fall of occupancy is kept; a truncated file ends polling.
    #[test]
    fn polls_keep_changes_and_the_low_point_after_a_fall() {
        let write = |path: &Path, inv: i64, exit: i64, used: i64| {
            let img = hsperf::tests::image(
                true,
                &[
                    ("sun.os.hrt.frequency", Counter::Long(1_000_000_000)),
                    ("sun.gc.collector.0.name", Counter::Text("young".into())),
                    ("sun.gc.collector.0.invocations", Counter::Long(inv)),
                    ("sun.gc.collector.0.time", Counter::Long(inv * 10)),
                    ("sun.gc.collector.0.lastEntryTime", Counter::Long(exit - 10)),
                    ("sun.gc.collector.0.lastExitTime", Counter::Long(exit)),
                    ("sun.gc.generation.1.space.0.used", Counter::Long(used)),
                ],
            );
            std::fs::write(path, img).unwrap();
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("123");
        write(&path, 1, 100, 500);
        let (mut open, base) = open_file(&path).unwrap();
        assert_eq!(base.collectors[0].invocations, 1);
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut f = Found::default();
        assert!(open.poll(&mut f, ms(0)));
        assert!(f.polls.is_empty(), "unchanged since the baseline");
        // A first fall (immediate garbage), a pause, a lower fall (the collection set): one reading, the
        // lowest, once it stopped falling for SETTLE.
        write(&path, 1, 100, 400);
        assert!(open.poll(&mut f, ms(20)));
        write(&path, 2, 200, 420);
        assert!(open.poll(&mut f, ms(40)));
        write(&path, 2, 200, 250);
        assert!(open.poll(&mut f, ms(60)));
        write(&path, 2, 200, 260);
        assert!(open.poll(&mut f, ms(80)));
        assert_eq!(f.used_low_after_fall, None, "not settled yet");
        assert!(open.poll(&mut f, ms(60) + SETTLE));
        assert_eq!(f.polls.len(), 1);
        assert_eq!(
            f.polls[0].collectors[0],
            Some(FastCollector {
                invocations: 2,
                time_ticks: 20,
                last_entry_ticks: 190,
                last_exit_ticks: 200
            })
        );
        assert_eq!(f.used_low_after_fall, Some(250));
        std::fs::write(&path, b"").unwrap();
        assert!(
            !open.poll(&mut f, Instant::now()),
            "a truncated file ends polling"
        );
    }
}
