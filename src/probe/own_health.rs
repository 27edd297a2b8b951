//! vitals' own health: build, CPU and memory of the sidecar itself (read from its own `/proc/self`), and
//! the read errors and sample durations every probe reports here. Named `vitals_exporter_*` so they never mix with the target's `process_*` series.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::kept::KeptFile;
use super::procfs::parse_stat;
use super::{ReadErrorSink, ReadSource};
use crate::catalogue;
use crate::model::{write_metric, MetricSink, Streaming, ValueRef};

/// Counters the sources report into.
pub struct ExporterStats {
    errors: [AtomicU64; ReadSource::ALL.len()],
    durations_ns: [AtomicU64; ReadSource::ALL.len()],
    hz: u64,
    page_size: u64,
    /// `/proc/self/stat`, kept open (a scrape reads it once), with its read buffer.
    own_stat: Mutex<(Option<KeptFile>, Vec<u8>)>,
}

impl ExporterStats {
    /// Fresh counters; `hz` and `page_size` convert the sidecar's own /proc/self figures.
    pub fn new(hz: u64, page_size: u64) -> Self {
        ExporterStats {
            errors: Default::default(),
            durations_ns: Default::default(),
            hz,
            page_size,
            own_stat: Mutex::new((KeptFile::open("/proc/self/stat").ok(), Vec::new())),
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
        if sink.wants(&cpu) || sink.wants(&rss) {
            let mut own = self.own_stat.lock().unwrap_or_else(|p| p.into_inner());
            let (file, buf) = &mut *own;
            if file.is_none() {
                *file = KeptFile::open("/proc/self/stat").ok();
            }
            if let Some(Ok(st)) = file.as_ref().and_then(|f| f.read(buf).ok()).map(parse_stat) {
                let seconds = (st.utime + st.stime) as f64 / self.hz as f64;
                write_metric(sink, &cpu, |sink| {
                    sink.point(&[], 0, ValueRef::Sum(seconds))
                });
                let bytes = (st.rss_pages * self.page_size) as f64;
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
