//! Derivation: plain synchronous code that turns observations into the signals of the catalogue, one file
//! per question. [`TickSignals`] runs the three tick-driven ones (pauses, memory growth, pools) from the
//! sampler's readings and the runtime metrics picked out of the app's OTLP exports
//! ([`runtime_metrics::RuntimeMetrics`]).

pub mod hints;
pub mod latency;
pub mod memory;
pub mod n_plus_one;
pub mod pause;
pub mod pool;
pub mod query;
pub mod runtime_metrics;
pub mod sql_template;
pub mod target;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::language::{Runtime, PROFILES};
use crate::probe::hsperf::JvmSample;
use crate::probe::jvm_watch::JvmFast;
use crate::probe::Observations;

use memory::{JvmLiveSet, MemoryGrowth, MemoryReadings};
use pause::PauseSignal;
use pool::{PoolInputs, PoolSignal};
use runtime_metrics::{HeapReading, RuntimeMetrics};

/// The signals derived on each sampler tick (pauses, memory growth, pool saturation), with what they
/// share: the runtime metrics picked from the app's exports and the JVM live-set tracker.
pub struct TickSignals {
    /// Pauses.
    pub pause: Arc<PauseSignal>,
    /// Memory growth.
    pub memory: Arc<MemoryGrowth>,
    /// Pool saturation.
    pub pool: Arc<PoolSignal>,
    runtime: Arc<RuntimeMetrics>,
    jvm_live: Mutex<JvmLiveSet>,
    origin: Instant,
}

/// Heap after GC and its limit from the picked heap series: the first heap row of the runtime table
/// (in table order) that has a used figure, its series summed (the JVM reports one per heap pool).
#[cfg(test)]
fn runtime_heap(heap: &[HeapReading]) -> Option<(f64, Option<f64>)> {
    runtime_heap_row(heap).map(|(v, l, _)| (v, l))
}

/// Like [`runtime_heap`], with the position of the heap row it came from.
fn runtime_heap_row(heap: &[HeapReading]) -> Option<(f64, Option<f64>, usize)> {
    let order = heap.iter().filter(|h| !h.limit).map(|h| h.order).min()?;
    let sum = |limit: bool| {
        heap.iter()
            .filter(|h| h.order == order && h.limit == limit)
            .map(|h| h.value)
            .reduce(|a, b| a + b)
    };
    Some((sum(false)?, sum(true).filter(|l| *l > 0.0), order))
}

/// A heap value: bytes, its limit, whether held from an earlier collection, its runtime, and whether it
/// is a concurrent collector's end-of-cycle occupancy.
type HeapValue = (
    f64,
    Option<f64>,
    bool,
    Option<Runtime>,
    memory::LiveSetScatter,
);

/// The runtime of the heap row at `order` (rows numbered across the table in table order).
fn heap_row_runtime(order: usize) -> Option<Runtime> {
    PROFILES
        .iter()
        .flat_map(|p| p.heap.iter().map(move |_| p.runtime))
        .nth(order)
}

impl TickSignals {
    /// Wires the signals to the runtime metrics picked from the app's OTLP exports.
    pub fn new(runtime: Arc<RuntimeMetrics>, memory: MemoryGrowth) -> Self {
        TickSignals {
            pause: Arc::new(PauseSignal::new()),
            memory: Arc::new(memory),
            pool: Arc::new(PoolSignal::new()),
            runtime,
            jvm_live: Mutex::new(JvmLiveSet::default()),
            origin: Instant::now(),
        }
    }

    /// The runtime the exporting app's `telemetry.sdk.language` names, if any.
    pub fn sdk_runtime(&self) -> Option<Runtime> {
        self.runtime.sdk_runtime()
    }

    /// Heap after GC, its limit, and whether the value is held from an earlier collection: from the
    /// runtime's OTLP metrics, else the JVM's live set from hsperfdata (see [`JvmLiveSet`]).
    fn heap(
        &self,
        picked: &[HeapReading],
        jvm: Option<&JvmSample>,
        fast: Option<&JvmFast>,
    ) -> Option<HeapValue> {
        // The live set tracker follows every hsperfdata sample, used or not, so it never misses a collection.
        let live = jvm.and_then(|j| {
            let mut l = self.jvm_live.lock().unwrap_or_else(|p| p.into_inner());
            let scatter = memory::live_set_scatter(j);
            l.observe_with(j, fast).map(|(v, fresh)| {
                (
                    v,
                    j.heap_max().map(|m| m as f64),
                    !fresh,
                    Some(Runtime::Jvm),
                    scatter,
                )
            })
        });
        runtime_heap_row(picked)
            .map(|(used, limit, order)| {
                (
                    used,
                    limit,
                    false,
                    heap_row_runtime(order),
                    memory::LiveSetScatter::Exact,
                )
            })
            .or(live)
    }

    /// One interval's derivation.
    pub fn tick(&self, inp: &Observations) {
        let now = Instant::now();
        let t = now.duration_since(self.origin).as_secs_f64();
        let picked = self.runtime.readings(now);
        self.pause
            .update_from_otlp(&picked.pauses, &picked.delays, now);
        self.pause
            .update_from_hsperf_with(inp.jvm.as_ref(), inp.jvm_fast.as_ref(), now);
        let cg_limit = inp.cgroup.and_then(|c| c.memory_limit).map(|l| l as f64);
        let heap = self.heap(&picked.heap, inp.jvm.as_ref(), inp.jvm_fast.as_ref());
        self.memory.observe(
            t,
            &MemoryReadings {
                rss: inp.rss.map(|r| (r, cg_limit)),
                heap: heap.map(|(v, limit, ..)| (v, limit)),
                heap_held: heap.is_some_and(|h| h.2),
                heap_scatter: heap.map(|h| h.4).unwrap_or_default(),
                heap_runtime: heap.and_then(|h| h.3),
                cgroup: inp
                    .cgroup
                    .and_then(|c| c.memory_usage)
                    .map(|u| (u as f64, cg_limit)),
            },
        );
        self.pool.update(&PoolInputs {
            t,
            proc: inp.proc.as_ref(),
            proc_cpu_seconds: inp.proc_cpu_seconds,
            cgroup: inp.cgroup.as_ref(),
            threads_max: inp.threads_max,
            listen: &inp.listen,
            app: &picked.pools,
        });
    }

    /// A new target instance: growth and CPU history start over.
    pub fn target_changed(&self) {
        self.memory.reset();
        *self.jvm_live.lock().unwrap_or_else(|p| p.into_inner()) = JvmLiveSet::default();
        self.pool.reset_target();
        self.pause.reset_target();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_from_the_first_row_with_a_used_figure() {
        let h = |order, limit, value| HeapReading {
            order,
            limit,
            value,
        };
        // Two JVM heap pools add up; their limit too; a later row (Node) is not mixed in.
        let picked = [
            h(0, false, 100.0),
            h(0, false, 50.0),
            h(0, true, 1000.0),
            h(0, true, 24.0),
            h(1, false, 7.0),
        ];
        assert_eq!(runtime_heap(&picked), Some((150.0, Some(1024.0))));
        // A limit alone is no heap reading; a limit of 0 (unlimited) is no limit.
        assert_eq!(runtime_heap(&[h(0, true, 10.0)]), None);
        assert_eq!(
            runtime_heap(&[h(1, true, 0.0), h(1, false, 5.0)]),
            Some((5.0, None))
        );
    }
}
