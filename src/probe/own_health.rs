//! vitals' own health: build, CPU and memory of the sidecar itself (its CPU from `getrusage`, its resident
//! memory from `/proc/self/statm`), and
//! the read errors and sample durations every probe reports here. Named `vitals_exporter_*` so they never mix with the target's `process_*` series.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::kept::KeptFile;
use super::{ReadErrorSink, ReadSource};
use crate::catalogue;
use crate::model::{write_metric, MetricSink, Streaming, ValueRef};

/// Counters the sources report into.
pub struct ExporterStats {
    errors: [AtomicU64; ReadSource::ALL.len()],
    durations_ns: [AtomicU64; ReadSource::ALL.len()],
    page_size: u64,
    /// `/proc/self/statm`, kept open (a scrape reads it once), with its read buffer. Not `stat`: the
    /// kernel formats `stat` from every thread's times and checks ptrace access to write it (2.9 µs a
    /// read on the development machine against 0.9 µs for `statm` and 0.6 µs for `getrusage`).
    own_statm: Mutex<(Option<KeptFile>, Vec<u8>)>,
}

impl ExporterStats {
    /// Fresh counters; `page_size` converts the sidecar's own resident pages to bytes.
    pub fn new(page_size: u64) -> Self {
        ExporterStats {
            errors: Default::default(),
            durations_ns: Default::default(),
            page_size,
            own_statm: Mutex::new((KeptFile::open("/proc/self/statm").ok(), Vec::new())),
        }
    }

    /// Read errors counted for `source` so far.
    pub fn errors(&self, source: ReadSource) -> u64 {
        self.errors[source.index()].load(Ordering::Relaxed)
    }
}

impl ReadErrorSink for ExporterStats {
    fn read_error(&self, source: ReadSource) {
        self.errors[source.index()].fetch_add(1, Ordering::Relaxed);
    }

    fn read_duration(&self, source: ReadSource, took: Duration) {
        // Zero means "never read", so a real reading is stored as at least 1 ns.
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.durations_ns[source.index()].store(ns, Ordering::Relaxed);
    }
}

/// User plus system CPU time of this process, every thread's (ended ones' too), from `getrusage`.
fn own_cpu_seconds() -> Option<f64> {
    // SAFETY: getrusage writes one `rusage` through the pointer, to a zeroed local that outlives the call.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        (libc::getrusage(libc::RUSAGE_SELF, &mut u) == 0).then_some(u)
    }?;
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(seconds(usage.ru_utime) + seconds(usage.ru_stime))
}

/// The resident pages in a `statm` text (its second field).
fn resident_pages(statm: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(statm).ok()?;
    text.split_ascii_whitespace().nth(1)?.parse().ok()
}

impl Streaming for ExporterStats {
    /// Streams vitals' own health; `/proc/self/stat` is read only when its figures are wanted.
    fn write(&self, sink: &mut dyn MetricSink) {
        write_metric(sink, &catalogue::EXPORTER_BUILD_INFO.info(), |sink| {
            sink.point(
                &[("version", env!("CARGO_PKG_VERSION"))],
                0,
                ValueRef::Gauge(1.0),
            );
        });
        let (cpu, rss) = (
            catalogue::EXPORTER_CPU.info(),
            catalogue::EXPORTER_RESIDENT_MEMORY.info(),
        );
        if sink.wants(&cpu) {
            if let Some(seconds) = own_cpu_seconds() {
                write_metric(sink, &cpu, |sink| {
                    sink.point(&[], 0, ValueRef::Sum(seconds))
                });
            }
        }
        if sink.wants(&rss) {
            let mut own = self.own_statm.lock().unwrap_or_else(|p| p.into_inner());
            let (file, buf) = &mut *own;
            if file.is_none() {
                *file = KeptFile::open("/proc/self/statm").ok();
            }
            let pages = file
                .as_ref()
                .and_then(|f| f.read(buf).ok())
                .and_then(resident_pages);
            if let Some(pages) = pages {
                let bytes = (pages * self.page_size) as f64;
                write_metric(sink, &rss, |sink| {
                    sink.point(&[], 0, ValueRef::Gauge(bytes))
                });
            }
        }
        write_metric(sink, &catalogue::EXPORTER_READ_ERRORS.info(), |sink| {
            for s in ReadSource::ALL {
                let n = self.errors(s) as f64;
                sink.point(&[("source", s.label())], 0, ValueRef::Sum(n));
            }
        });
        write_metric(sink, &catalogue::EXPORTER_SAMPLE_DURATION.info(), |sink| {
            for s in ReadSource::ALL {
                let ns = self.durations_ns[s.index()].load(Ordering::Relaxed);
                if ns > 0 {
                    sink.point(
                        &[("source", s.label())],
                        0,
                        ValueRef::Gauge(ns as f64 / 1e9),
                    );
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::MetricDef;
    use crate::model::{Collector, Value};

    /// The CPU and resident-memory figures `stats` writes, through the `Collector` every streaming
    /// collector is.
    fn own(stats: &ExporterStats) -> (Option<f64>, Option<f64>) {
        let mut out = Vec::new();
        stats.collect(&mut out);
        let value = |def: &MetricDef| {
            let point = out.iter().find(|m| m.name == def.name)?.points.first()?;
            match point.value {
                Value::Sum(v) | Value::Gauge(v) => Some(v),
                _ => None,
            }
        };
        (
            value(&catalogue::EXPORTER_CPU),
            value(&catalogue::EXPORTER_RESIDENT_MEMORY),
        )
    }

    /// (utime + stime) in seconds and resident bytes, as the kernel's `stat` of this process says.
    fn from_proc_stat() -> (f64, f64) {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split(' ').collect();
        // SAFETY: sysconf only reads configuration values.
        let (hz, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK) as f64,
                libc::sysconf(libc::_SC_PAGESIZE) as f64,
            )
        };
        let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
        (ticks / hz, f[21].parse::<f64>().unwrap() * page)
    }

    #[test]
    fn statm_resident_field() {
        assert_eq!(
            resident_pages(b"30570 1423 1100 240 0 1388 0\n"),
            Some(1423)
        );
        assert_eq!(resident_pages(b"30570\n"), None);
        assert_eq!(resident_pages(b"30570 x 1\n"), None);
        assert_eq!(resident_pages(b"\xff\xfe 12"), None);
    }

    #[test]
    fn own_cpu_and_memory_agree_with_the_kernel_s_stat() {
        // SAFETY: sysconf only reads configuration values.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
        let stats = ExporterStats::new(page);
        let before = own(&stats).0.expect("a CPU time");
        // Burn 150 ms of this thread's CPU (its own clock: a loaded machine may hold it off the CPU
        // for part of any wall-clock span); the process's figure must grow by about that much.
        let thread_cpu = || {
            // SAFETY: clock_gettime writes one timespec through the pointer, to a zeroed local.
            let mut t: libc::timespec = unsafe { std::mem::zeroed() };
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
            t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
        };
        let start = thread_cpu();
        let mut x = 0u64;
        while thread_cpu() - start < 0.15 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let (ticks_low, _) = from_proc_stat();
        let (cpu, rss) = own(&stats);
        let (ticks_high, rss_stat) = from_proc_stat();
        let cpu = cpu.expect("a CPU time");
        assert!(
            cpu - before >= 0.145,
            "grew {} s over 150 ms of this thread's CPU",
            cpu - before
        );
        // Other test threads run too: the figure lies between two readings of the kernel's stat, which
        // rounds its user and its system time down to clock ticks each (up to two ticks low in all).
        // SAFETY: sysconf only reads configuration values.
        let tick = 1.0 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        assert!(
            cpu >= ticks_low - 1e-5 && cpu <= ticks_high + 2.0 * tick + 0.001,
            "getrusage {cpu} s, /proc/self/stat {ticks_low}..{ticks_high} s"
        );
        let rss = rss.expect("a resident size");
        assert!(
            rss > 0.0 && (rss - rss_stat).abs() <= 0.25 * rss_stat,
            "statm {rss} B, stat {rss_stat} B"
        );
    }
}
