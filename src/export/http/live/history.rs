//! The live page's history: a fixed-capacity ring of compact points (twelve `f32` values and the time), so
//! its memory is known in advance: 900 points (15 minutes of one a second) take 900 × 56 bytes ≈ 49 KiB.
//! Points older than 15 minutes are dropped too: while nobody watches they come every idle interval.

use std::collections::VecDeque;

/// Names of a point's values, in order; the page reads them by these names.
pub const POINT_FIELDS: [&str; 12] = [
    "rate",
    "error_ratio",
    "p99",
    "gc_seconds_per_second",
    "gc_max_seconds",
    "throttled_seconds_per_second",
    "rss_bytes",
    "heap_after_gc_bytes",
    "cgroup_bytes",
    "pool_max_utilization",
    "cpu_cores",
    "psi_cpu_some",
];

/// One second of sparkline values; NaN where a value was unknown.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HistoryPoint {
    /// Unix time, seconds.
    pub t: f64,
    /// Values in [`POINT_FIELDS`] order.
    pub values: [f32; 12],
}

/// A ring of the last `capacity` points.
#[derive(Debug)]
pub struct History {
    points: VecDeque<HistoryPoint>,
    capacity: usize,
}

impl History {
    /// An empty ring; its storage is allocated once, here.
    pub fn new(capacity: usize) -> Self {
        History {
            points: VecDeque::with_capacity(capacity),
            capacity: capacity.max(1),
        }
    }

    /// Appends a point, dropping the oldest when full and those older than `capacity` seconds (points
    /// come every second while the page is watched, every idle interval otherwise).
    pub fn push(&mut self, p: HistoryPoint) {
        if self.points.len() == self.capacity {
            self.points.pop_front();
        }
        while self
            .points
            .front()
            .is_some_and(|f| f.t < p.t - self.capacity as f64)
        {
            self.points.pop_front();
        }
        self.points.push_back(p);
    }

    /// Points held.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Bytes of point storage when full.
    pub fn capacity_bytes(&self) -> usize {
        self.capacity * std::mem::size_of::<HistoryPoint>()
    }

    /// The points held, oldest first.
    pub fn points(&self) -> impl ExactSizeIterator<Item = &HistoryPoint> + Clone {
        self.points.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_is_bounded_and_sized_as_documented() {
        let mut h = History::new(900);
        for i in 0..2000 {
            h.push(HistoryPoint {
                t: i as f64,
                values: [i as f32; 12],
            });
        }
        assert_eq!(h.len(), 900);
        assert_eq!(std::mem::size_of::<HistoryPoint>(), 56);
        assert_eq!(h.capacity_bytes(), 50_400);
        let j = serde_json::to_value(&h).unwrap();
        assert_eq!(j["t"][0], 1100.0);
        assert_eq!(j["rate"].as_array().unwrap().len(), 900);
    }
}
