//! Derivation: plain synchronous code that turns observations into the signals of the catalogue, one file
//! per question. [`Derived`] runs the three tick-driven ones (pauses, memory growth, pools) from the
//! sampler's readings and the app's OTLP metrics.

pub mod hints;
pub mod latency;
pub mod memory;
pub mod pause;
pub mod pool;
pub mod target;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::probe::cgroup::CgroupSample;
use crate::probe::hsperf::JvmSample;
use crate::probe::procfs::ProcSample;
use crate::probe::sockets::ListenSocket;
use crate::store::app_metrics::{AppMetrics, Reading};

use memory::{JvmLiveSet, MemoryGrowth, MemoryReadings};
use pause::PauseSignal;
use pool::{PoolInputs, PoolSignal};

/// One tick's readings of the target (all absent when there is none).
#[derive(Debug, Default)]
pub struct TickInputs<'a> {
    /// procfs sample.
    pub proc: Option<&'a ProcSample>,
    /// cgroup sample.
    pub cgroup: Option<&'a CgroupSample>,
    /// JVM hsperfdata sample.
    pub jvm: Option<&'a JvmSample>,
    /// Listening sockets.
    pub listen: &'a [ListenSocket],
    /// Process CPU seconds.
    pub proc_cpu_seconds: Option<f64>,
    /// Resident set, bytes.
    pub rss: Option<f64>,
    /// kernel.threads-max.
    pub threads_max: Option<u64>,
}

/// Heap metrics of the runtimes' semantic conventions: (used, limit, label filter).
struct HeapMetric {
    used: String,
    limit: Option<String>,
    filter: Option<(String, &'static str)>,
}

/// The tick-driven signals.
pub struct Derived {
    /// Pauses.
    pub pause: Arc<PauseSignal>,
    /// Memory growth.
    pub memory: Arc<MemoryGrowth>,
    /// Pool saturation.
    pub pool: Arc<PoolSignal>,
    app: Arc<AppMetrics>,
    heap: Vec<HeapMetric>,
    jvm_live: Mutex<JvmLiveSet>,
    origin: Instant,
}

impl Derived {
    /// Wires the signals to the app metric store.
    pub fn new(app: Arc<AppMetrics>, memory: MemoryGrowth) -> Self {
        let heap_type = Some(("jvm.memory.type".to_owned(), "heap"));
        Derived {
            pause: Arc::new(PauseSignal::new()),
            memory: Arc::new(memory),
            pool: Arc::new(PoolSignal::new()),
            app,
            heap: vec![
                HeapMetric {
                    used: "jvm.memory.used_after_last_gc".to_owned(),
                    limit: Some("jvm.memory.limit".to_owned()),
                    filter: heap_type,
                },
                HeapMetric {
                    used: "v8js.memory.heap.used".to_owned(),
                    limit: Some("v8js.memory.heap.limit".to_owned()),
                    filter: None,
                },
                HeapMetric {
                    used: "dotnet.gc.last_collection.heap.size".to_owned(),
                    limit: None,
                    filter: None,
                },
                HeapMetric {
                    used: "go.memory.used".to_owned(),
                    limit: Some("go.memory.limit".to_owned()),
                    filter: None,
                },
            ],
            jvm_live: Mutex::new(JvmLiveSet::default()),
            origin: Instant::now(),
        }
    }

    fn sum(&self, name: &str, filter: &Option<(String, &'static str)>) -> Option<f64> {
        let mut total = None;
        self.app.visit(name, |labels, r| {
            if let Some((k, v)) = filter {
                if !labels.iter().any(|(lk, lv)| lk == k && lv == v) {
                    return;
                }
            }
            if let Reading::Number(x) = r {
                *total.get_or_insert(0.0) += x;
            }
        });
        total
    }

    /// Heap after GC, its limit, and whether the value is held from an earlier collection: from the
    /// runtime's OTLP metrics, else the JVM's live set from hsperfdata (see [`JvmLiveSet`]).
    fn heap(&self, jvm: Option<&JvmSample>) -> Option<(f64, Option<f64>, bool)> {
        // The live set tracker follows every hsperfdata sample, used or not, so it never misses a collection.
        let live = jvm.and_then(|j| {
            let mut l = self.jvm_live.lock().unwrap_or_else(|p| p.into_inner());
            l.observe(j)
                .map(|(v, fresh)| (v, j.old_max.map(|m| m as f64), !fresh))
        });
        for h in &self.heap {
            if let Some(used) = self.sum(&h.used, &h.filter) {
                let limit = h
                    .limit
                    .as_ref()
                    .and_then(|l| self.sum(l, &h.filter))
                    .filter(|l| *l > 0.0);
                return Some((used, limit, false));
            }
        }
        live
    }

    /// One interval's derivation.
    pub fn tick(&self, inp: &TickInputs<'_>) {
        let now = Instant::now();
        let t = now.duration_since(self.origin).as_secs_f64();
        self.pause.update_from_otlp(&self.app, now);
        self.pause.update_from_hsperf(inp.jvm, now);
        let cg_limit = inp.cgroup.and_then(|c| c.memory_limit).map(|l| l as f64);
        let heap = self.heap(inp.jvm);
        self.memory.observe(
            t,
            &MemoryReadings {
                rss: inp.rss.map(|r| (r, cg_limit)),
                heap: heap.map(|(v, limit, _)| (v, limit)),
                heap_held: heap.is_some_and(|h| h.2),
                cgroup: inp
                    .cgroup
                    .and_then(|c| c.memory_usage)
                    .map(|u| (u as f64, cg_limit)),
            },
        );
        self.pool.update(
            &PoolInputs {
                t,
                proc: inp.proc,
                proc_cpu_seconds: inp.proc_cpu_seconds,
                cgroup: inp.cgroup,
                threads_max: inp.threads_max,
                listen: inp.listen,
            },
            &self.app,
        );
    }

    /// A new target instance: growth and CPU history start over.
    pub fn target_changed(&self) {
        self.memory.reset();
        *self.jvm_live.lock().unwrap_or_else(|p| p.into_inner()) = JvmLiveSet::default();
        self.pool.reset_target();
        self.pause.reset_target();
    }
}
