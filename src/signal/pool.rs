//! Is it saturated? How full each pool is: DB connection pools and runtime thread pools (from the pool
//! metrics picked out of the app's OTLP exports by the runtime table), file descriptors, threads, pids, listen-socket accept queues and CPU quota (from procfs,
//! cgroups and sock_diag). One metric family per figure, labelled by pool and kind, so one alert covers
//! every kind.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use crate::catalogue;
use crate::catalogue::MetricDef;
use crate::language::PoolFigure;
use crate::model::{write_metric, MetricSink, Streaming, ValueRef};
use crate::probe::cgroup::CgroupSample;
use crate::probe::procfs::ProcSample;
use crate::probe::sockets::{BacklogSource, ListenSocket};
use crate::signal::runtime_metrics::PoolReading;

/// One pool's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolSnapshot {
    /// In use.
    pub used: Option<f64>,
    /// Capacity.
    pub max: Option<f64>,
    /// Waiting for a slot.
    pub pending: Option<f64>,
    /// Open but not in use (connection pools that split their count by state).
    pub idle: Option<f64>,
}

impl PoolSnapshot {
    /// How full the pool is: used / max; for a pool that reports no max but splits its open
    /// connections into used and idle (SQLAlchemy, Node pg), used / (used + idle). That is the share of
    /// the open connections in use, an upper bound of used / max since a pool opens connections only up
    /// to its max; it reaches 1 only when no opened connection is free.
    pub fn utilization(&self) -> Option<f64> {
        let used = self.used?;
        match (self.max, self.idle) {
            (Some(m), _) if m > 0.0 => Some(used / m),
            (Some(_), _) => None,
            (None, Some(idle)) if used + idle > 0.0 => Some(used / (used + idle)),
            (None, _) => None,
        }
    }
}

/// What one tick offers the pool signal.
#[derive(Debug, Default)]
pub struct PoolInputs<'a> {
    /// Seconds on a monotonic clock.
    pub t: f64,
    /// The target's procfs sample.
    pub proc: Option<&'a ProcSample>,
    /// Process CPU seconds (user + system) of the target.
    pub proc_cpu_seconds: Option<f64>,
    /// The target's cgroup sample.
    pub cgroup: Option<&'a CgroupSample>,
    /// kernel.threads-max.
    pub threads_max: Option<u64>,
    /// The target's listening sockets.
    pub listen: &'a [ListenSocket],
    /// DB connection and runtime thread pool figures from the app's OTLP metrics.
    pub app: &'a [PoolReading],
}

/// The pool signal.
pub struct PoolSignal {
    snapshots: Mutex<PoolSnapshots>,
}

/// Each pool's snapshot from the last tick, with the CPU readings averaged over and where the backlog
/// figure came from.
#[derive(Default)]
struct PoolSnapshots {
    pools: BTreeMap<(&'static str, String), PoolSnapshot>,
    cpu: VecDeque<(f64, f64)>,
    backlog_note: Option<BacklogSource>,
}

/// CPU usage is averaged over this many ticks.
const CPU_TICKS: usize = 10;

impl Default for PoolSignal {
    fn default() -> Self {
        Self::new()
    }
}

impl PoolSignal {
    /// A signal that has seen nothing yet.
    pub fn new() -> Self {
        PoolSignal {
            snapshots: Mutex::new(PoolSnapshots::default()),
        }
    }

    /// Recomputes every pool from one tick's inputs.
    pub fn update(&self, inp: &PoolInputs<'_>) {
        let mut st = self.snapshots.lock().unwrap_or_else(|p| p.into_inner());
        let st = &mut *st;
        st.pools.clear();
        // Series of one pool and figure add up (connection counts per state, pools per app instance).
        for r in inp.app {
            let pool = st.pools.entry((r.kind, r.pool.clone())).or_default();
            let figure = match r.figure {
                PoolFigure::Used => &mut pool.used,
                PoolFigure::Max => &mut pool.max,
                PoolFigure::Pending => &mut pool.pending,
                PoolFigure::Idle => &mut pool.idle,
            };
            *figure.get_or_insert(0.0) += r.value;
        }
        let f = |v: Option<u64>| v.map(|v| v as f64);
        if let Some(p) = inp.proc {
            // The fd limit is per process: the tree's process closest to its limit decides.
            let (used, max) = match p.fds_fullest {
                Some((used, max)) => (Some(used), Some(max)),
                None => (p.open_fds, p.max_fds),
            };
            if used.is_some() {
                st.pools.insert(
                    ("fds", "fds".into()),
                    PoolSnapshot {
                        used: f(used),
                        max: f(max),
                        pending: None,
                        idle: None,
                    },
                );
            }
            if let Some(stat) = p.stat {
                let limit = inp.cgroup.and_then(|c| c.pids_limit).or(inp.threads_max);
                st.pools.insert(
                    ("threads", "threads".into()),
                    PoolSnapshot {
                        used: Some(stat.num_threads as f64),
                        max: f(limit),
                        pending: None,
                        idle: None,
                    },
                );
            }
        }
        if let Some(c) = inp.cgroup {
            if c.pids.is_some() {
                st.pools.insert(
                    ("pids", "pids".into()),
                    PoolSnapshot {
                        used: f(c.pids),
                        max: f(c.pids_limit),
                        pending: None,
                        idle: None,
                    },
                );
            }
        }
        st.backlog_note = None;
        for s in inp.listen {
            st.pools.insert(
                ("accept_queue", s.port.to_string()),
                PoolSnapshot {
                    used: Some(s.queue as f64),
                    max: Some(s.backlog as f64),
                    pending: None,
                    idle: None,
                },
            );
            st.backlog_note = Some(s.source);
        }
        // CPU: the cgroup's usage (what its quota limits) when known, else the process's.
        let cpu_total = inp
            .cgroup
            .and_then(|c| c.cpu_usage_us)
            .map(|us| us as f64 / 1e6)
            .or(inp.proc_cpu_seconds);
        match cpu_total {
            Some(c) => {
                st.cpu.push_back((inp.t, c));
                while st.cpu.len() > CPU_TICKS {
                    st.cpu.pop_front();
                }
            }
            None => st.cpu.clear(),
        }
        if let (Some(first), Some(last)) = (st.cpu.front(), st.cpu.back()) {
            if last.0 > first.0 && last.1 >= first.1 {
                let cores = (last.1 - first.1) / (last.0 - first.0);
                st.pools.insert(
                    ("cpu", "cpu".into()),
                    PoolSnapshot {
                        used: Some(cores),
                        max: inp.cgroup.and_then(|c| c.cpu_limit_cores),
                        pending: None,
                        idle: None,
                    },
                );
            }
        }
    }

    /// Forgets the CPU history of a target that went away.
    pub fn reset_target(&self) {
        let mut st = self.snapshots.lock().unwrap_or_else(|p| p.into_inner());
        st.cpu.clear();
    }
}

/// One figure of a pool's snapshot, as one family writes it.
type PoolFigureOf = fn(&PoolSnapshot) -> Option<f64>;

/// Streams the pools under the snapshot's lock (borrowed pool names; no owned metric built per scrape
/// or per reading, where collecting them was about a twelfth of an idle scrape's instructions).
impl Streaming for PoolSignal {
    fn write(&self, sink: &mut dyn MetricSink) {
        let st = self.snapshots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(src) = st.backlog_note {
            let src = match src {
                BacklogSource::Netlink => "netlink",
                BacklogSource::Somaxconn => "somaxconn",
            };
            write_metric(
                sink,
                &catalogue::POOL_ACCEPT_QUEUE_BACKLOG_SOURCE.info(),
                |sink| sink.point(&[("source", src)], 0, ValueRef::Gauge(1.0)),
            );
        }
        let figures: [(&MetricDef, PoolFigureOf); 4] = [
            (&catalogue::POOL_USED, |s| s.used),
            (&catalogue::POOL_MAX, |s| s.max),
            (&catalogue::POOL_PENDING, |s| s.pending),
            (&catalogue::POOL_UTILIZATION, PoolSnapshot::utilization),
        ];
        for (def, figure) in figures {
            write_metric(sink, &def.info(), |sink| {
                for ((kind, pool), s) in &st.pools {
                    if let Some(v) = figure(s) {
                        sink.point(
                            &[("pool", pool.as_str()), ("kind", kind)],
                            0,
                            ValueRef::Gauge(v),
                        );
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Collector, Value};
    use crate::probe::procfs::Stat;

    #[test]
    fn process_and_cgroup_pools() {
        let sig = PoolSignal::new();
        let proc = ProcSample {
            stat: Some(Stat {
                num_threads: 30,
                ..Default::default()
            }),
            open_fds: Some(900),
            max_fds: Some(1024),
            ..Default::default()
        };
        let cg = CgroupSample {
            pids: Some(31),
            pids_limit: Some(100),
            cpu_limit_cores: Some(2.0),
            ..Default::default()
        };
        let listen = [ListenSocket {
            port: 8080,
            queue: 5,
            backlog: 8,
            source: BacklogSource::Netlink,
            inode: 1,
        }];
        for (t, cpu) in [(0.0, 10.0), (1.0, 11.5)] {
            sig.update(&PoolInputs {
                t,
                proc: Some(&proc),
                proc_cpu_seconds: Some(cpu),
                cgroup: Some(&cg),
                threads_max: Some(5000),
                listen: &listen,
                app: &[],
            });
        }
        let mut out = vec![];
        sig.collect(&mut out);
        crate::catalogue::assert_agrees(&out);
        let ratio = out
            .iter()
            .find(|f| f.name == catalogue::POOL_UTILIZATION.name)
            .unwrap();
        let get = |kind: &str| {
            ratio
                .points
                .iter()
                .find(|s| s.attributes[1].1 == kind)
                .map(|s| s.value.clone())
        };
        assert_eq!(get("fds"), Some(Value::Gauge(900.0 / 1024.0)));
        assert_eq!(
            get("threads"),
            Some(Value::Gauge(0.3)),
            "threads against the pids limit"
        );
        assert_eq!(get("pids"), Some(Value::Gauge(0.31)));
        assert_eq!(get("accept_queue"), Some(Value::Gauge(5.0 / 8.0)));
        assert_eq!(
            get("cpu"),
            Some(Value::Gauge(0.75)),
            "1.5 cores of a 2-core quota"
        );
        assert!(ratio.points.iter().any(|s| s.attributes
            == vec![
                ("pool".to_string(), "8080".to_string()),
                ("kind".to_string(), "accept_queue".to_string())
            ]));
    }
}
