//! One profile from start to finish: open the events, drain and unwind every [`DRAIN_EVERY`] while
//! following new threads, then name every address and build the [`CpuProfile`].

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::perf::{EventSet, OpenRefusal, SamplingPlan};
use super::symbols::{symbolize, KERNEL_START};
use super::unwind::StackWalker;
use super::{jvm, CpuProfile, ProfilerSettings, StackCount};

/// How often the rings are read: at 99 Hz with 16 KiB stacks a CPU writes ~80 KiB in that time, well
/// inside its ring.
const DRAIN_EVERY: Duration = Duration::from_millis(50);
/// How often the thread list is read again for threads started since.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);
/// Distinct stacks kept; samples of further new stacks are counted as dropped.
pub const MAX_STACKS: usize = 100_000;

/// What sampling produced, before names.
pub struct Recording {
    /// (pid, frames leaf first) → samples.
    pub stacks: HashMap<(u32, Box<[u64]>), u64>,
    /// Samples taken.
    pub samples: u64,
    /// Samples whose stack was new when [`MAX_STACKS`] were already kept.
    pub dropped: u64,
    /// Records the kernel lost to full rings.
    pub lost: u64,
    /// Kernel frames were granted.
    pub kernel_frames: bool,
    /// Most threads followed at once.
    pub threads: usize,
    /// Samples unwound by DWARF / by frame pointer alone.
    pub dwarf_stacks: u64,
    /// Samples unwound by frame pointer alone.
    pub fp_stacks: u64,
    /// When sampling started.
    pub started: std::time::SystemTime,
    /// How long it sampled.
    pub duration: Duration,
}

/// The open events of a set of processes and the walker of their stacks: what an on-demand profile and
/// the continuous profiler both drain.
pub struct Sampling {
    events: EventSet,
    walker: StackWalker,
    frames: Vec<u64>,
    pids: Vec<u32>,
    proc_root: std::path::PathBuf,
    last_follow: Instant,
    /// Most threads followed at once.
    pub threads: usize,
}

impl Sampling {
    /// Opens the events of every thread of `pids`.
    pub fn open(settings: &ProfilerSettings, pids: &[u32]) -> Result<Sampling, OpenRefusal> {
        let plan = SamplingPlan {
            frequency_hz: settings.frequency_hz,
            stack_bytes: settings.stack_bytes,
            kernel: settings.kernel,
            ring_pages: settings.ring_pages,
        };
        let root = &settings.proc_root;
        let events = EventSet::open(plan, pids, root)?;
        let threads = events.thread_count();
        Ok(Sampling {
            events,
            walker: StackWalker::new(root),
            frames: Vec::with_capacity(super::unwind::MAX_FRAMES),
            pids: pids.to_vec(),
            proc_root: root.clone(),
            last_follow: Instant::now(),
            threads,
        })
    }

    /// Reads every ring and hands each sample's process and frames (leaf first) to `each`; follows
    /// threads started since, every [`FOLLOW_EVERY`]. Returns the samples read.
    pub fn drain(&mut self, mut each: impl FnMut(u32, &[u64])) -> u64 {
        let mut taken = 0u64;
        let (walker, frames) = (&mut self.walker, &mut self.frames);
        self.events.drain(|sample, stack| {
            walker.walk(sample, stack, frames);
            taken += 1;
            each(sample.pid, frames);
        });
        if self.last_follow.elapsed() >= FOLLOW_EVERY {
            self.threads = self
                .threads
                .max(self.events.follow_new_threads(&self.pids, &self.proc_root));
            self.last_follow = Instant::now();
        }
        taken
    }

    /// The processes sampled.
    pub fn pids(&self) -> &[u32] {
        &self.pids
    }

    /// Kernel frames were asked for and granted.
    pub fn kernel_frames(&self) -> bool {
        self.events.kernel_frames
    }

    /// Records the kernel lost to full rings so far.
    pub fn lost(&self) -> u64 {
        self.events.lost
    }

    /// Samples unwound by DWARF and by frame pointer alone, so far.
    pub fn unwound(&self) -> (u64, u64) {
        (self.walker.dwarf_stacks, self.walker.fp_stacks)
    }
}

/// Samples the threads of `pids` for `duration`, or until `stop`; counts each sample into `counter`.
pub fn record(
    settings: &ProfilerSettings,
    pids: &[u32],
    duration: Duration,
    stop: &AtomicBool,
    counter: &AtomicU64,
) -> Result<Recording, OpenRefusal> {
    let started = std::time::SystemTime::now();
    let begin = Instant::now();
    let mut sampling = Sampling::open(settings, pids)?;
    let mut rec = Recording {
        stacks: HashMap::new(),
        samples: 0,
        dropped: 0,
        lost: 0,
        kernel_frames: sampling.kernel_frames(),
        threads: sampling.threads,
        dwarf_stacks: 0,
        fp_stacks: 0,
        started,
        duration,
    };
    loop {
        let done = begin.elapsed() >= duration || stop.load(Ordering::Relaxed);
        let (stacks, dropped) = (&mut rec.stacks, &mut rec.dropped);
        let taken = sampling.drain(|pid, frames| {
            if let Some(n) = stacks.get_mut(&(pid, frames.into())) {
                *n += 1;
            } else if stacks.len() < MAX_STACKS {
                stacks.insert((pid, frames.into()), 1);
            } else {
                *dropped += 1;
            }
        });
        rec.samples += taken;
        counter.fetch_add(taken, Ordering::Relaxed);
        if done {
            break;
        }
        let left = duration.saturating_sub(begin.elapsed());
        std::thread::sleep(DRAIN_EVERY.min(left).max(Duration::from_millis(1)));
    }
    rec.duration = begin.elapsed();
    rec.threads = sampling.threads;
    rec.lost = sampling.lost();
    (rec.dwarf_stacks, rec.fp_stacks) = sampling.unwound();
    Ok(rec)
}

/// Names the recording's addresses (after asking a JVM for a fresh perf map) and builds the profile.
pub fn finish(settings: &ProfilerSettings, pids: &[u32], rec: Recording) -> CpuProfile {
    let root = &settings.proc_root;
    let mut notes = Vec::new();
    if settings.jvm_attach {
        for &pid in pids.iter().filter(|&&p| jvm::is_jvm(root, p)) {
            // The map is written at the end, so it names the code the profile sampled.
            if let Err(e) = jvm::jcmd(root, pid, "Compiler.perfmap") {
                tracing::warn!("JIT names of the JVM are missing: {e}");
                notes.push(format!("JVM perf map not written: {e}"));
            }
        }
    }
    let mut by_pid: HashMap<u32, BTreeSet<u64>> = HashMap::new();
    for ((pid, frames), _) in rec.stacks.iter() {
        by_pid.entry(*pid).or_default().extend(frames.iter());
    }
    let symbols = symbolize(root, &by_pid);
    let stacks = rec
        .stacks
        .into_iter()
        .map(|((pid, frames), count)| StackCount {
            pid,
            locations: frames
                .iter()
                .filter_map(|&a| {
                    let key = if a >= KERNEL_START { (0, a) } else { (pid, a) };
                    symbols.index.get(&key).copied()
                })
                .collect(),
            count,
        })
        .collect();
    if !rec.kernel_frames {
        notes.push(
            "kernel frames not permitted (kernel.perf_event_paranoid >= 2 without CAP_PERFMON)"
                .to_owned(),
        );
    }
    if rec.lost > 0 {
        notes.push(format!("{} records lost to full ring buffers", rec.lost));
    }
    if rec.dropped > 0 {
        notes.push(format!(
            "{} samples dropped: more than {MAX_STACKS} distinct stacks",
            rec.dropped
        ));
    }
    notes.push(format!(
        "{} samples at {} Hz of CPU time; {} threads; stacks by DWARF {} / frame pointer {}; \
         {} of {} user addresses named ({} JIT), {} build ids checked, {} mismatched",
        rec.samples,
        settings.frequency_hz,
        rec.threads,
        rec.dwarf_stacks,
        rec.fp_stacks,
        symbols.stats.named,
        symbols.stats.user,
        symbols.stats.jit,
        symbols.stats.build_ids_checked,
        symbols.stats.build_id_mismatches,
    ));
    CpuProfile {
        started_unix_ns: rec
            .started
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
        duration: rec.duration,
        period_ns: 1_000_000_000 / settings.frequency_hz.max(1),
        stacks,
        symbols,
        samples: rec.samples,
        notes,
    }
}
