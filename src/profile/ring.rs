//! The continuous profiler's memory: recent CPU samples as unnamed stacks in fixed-length segments, held
//! under a byte bound that is counted, not guessed, and enforced by dropping the oldest segments.
//!
//! Stacks stay raw addresses here; naming them (which reads the target's files) is left to the moment a
//! capture is made, so the continuous cost is sampling and counting only.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Bytes counted for one distinct stack while its segment is being filled, beside its frames: the map's
/// slot (key and count, 32 bytes), its control byte and spare capacity, and the allocator's header and
/// rounding of the boxed key. Deliberately high, so the count is an upper bound.
const BUILDING_ENTRY_OVERHEAD: usize = 96;

/// One part in this of a segment's bytes is kept for samples counted by their innermost frame alone
/// once the rest is full.
const LEAF_SHARE: usize = 8;

/// One distinct stack of a finished segment: where its words lie in the segment's arena.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Offset of the key words (pid, then frames leaf first) in the arena.
    at: u32,
    /// Number of key words.
    len: u32,
    /// Samples.
    count: u64,
}

/// A finished segment: every distinct stack sampled in it, packed into two vectors, so its size is
/// known exactly.
#[derive(Debug)]
pub struct Segment {
    /// Start, ns since the Unix epoch.
    pub start_ns: u128,
    /// End, ns since the Unix epoch.
    pub end_ns: u128,
    /// Samples taken (kept or not).
    pub samples: u64,
    /// Samples not kept at all: the segment was full even for leaf-only stacks.
    pub dropped: u64,
    /// Samples kept by their innermost frame alone because the segment was full.
    pub leaf_only: u64,
    entries: Vec<Entry>,
    arena: Vec<u64>,
}

impl Segment {
    /// Bytes this segment holds.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Segment>()
            + self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.arena.capacity() * 8
    }

    /// Distinct stacks.
    pub fn stacks(&self) -> usize {
        self.entries.len()
    }

    /// Each stack as (pid, frames leaf first, samples).
    pub fn each(&self) -> impl Iterator<Item = (u32, &[u64], u64)> {
        self.entries.iter().filter_map(|e| {
            let key = self.arena.get(e.at as usize..(e.at + e.len) as usize)?;
            let (&pid, frames) = key.split_first()?;
            Some((pid as u32, frames, e.count))
        })
    }
}

/// The segment being filled: distinct stacks counted in a map, bounded in stacks and in bytes.
pub struct SegmentBuilder {
    start_ns: u128,
    /// Key: pid then frames, so a lookup borrows a reused buffer and allocates nothing.
    stacks: HashMap<Box<[u64]>, u64>,
    key: Vec<u64>,
    bytes: usize,
    max_bytes: usize,
    max_stacks: usize,
    samples: u64,
    dropped: u64,
    leaf_only: u64,
}

impl SegmentBuilder {
    /// An empty segment started at `start_ns`, holding at most `max_stacks` stacks and `max_bytes`.
    pub fn new(start_ns: u128, max_stacks: usize, max_bytes: usize) -> SegmentBuilder {
        SegmentBuilder {
            start_ns,
            stacks: HashMap::new(),
            key: Vec::with_capacity(super::unwind::MAX_FRAMES + 1),
            bytes: std::mem::size_of::<SegmentBuilder>(),
            max_bytes,
            max_stacks,
            samples: 0,
            dropped: 0,
            leaf_only: 0,
        }
    }

    /// Counts one sample.
    pub fn add(&mut self, pid: u32, frames: &[u64]) {
        self.samples += 1;
        self.key.clear();
        self.key.push(u64::from(pid));
        self.key.extend_from_slice(frames);
        if let Some(n) = self.stacks.get_mut(self.key.as_slice()) {
            *n += 1;
            return;
        }
        let cost = self.key.len() * 8 + BUILDING_ENTRY_OVERHEAD;
        let room = self.stacks.len() < self.max_stacks;
        if room && self.bytes + cost <= self.max_bytes - self.max_bytes / LEAF_SHARE {
            self.bytes += cost;
            self.stacks.insert(self.key.as_slice().into(), 1);
            return;
        }
        // Full: the sample is kept by its innermost frame alone, so self time stays right over the
        // whole segment instead of only its first moments, in the part of the budget kept for that.
        self.key.truncate(2);
        if let Some(n) = self.stacks.get_mut(self.key.as_slice()) {
            *n += 1;
            self.leaf_only += 1;
            return;
        }
        let cost = self.key.len() * 8 + BUILDING_ENTRY_OVERHEAD;
        if room && self.key.len() == 2 && self.bytes + cost <= self.max_bytes {
            self.bytes += cost;
            self.leaf_only += 1;
            self.stacks.insert(self.key.as_slice().into(), 1);
        } else {
            self.dropped += 1;
        }
    }

    /// Bytes counted so far (an upper bound of what the map holds).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Samples counted so far.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Packs the segment, which ended at `end_ns`.
    pub fn finish(self, end_ns: u128) -> Segment {
        let words: usize = self.stacks.keys().map(|k| k.len()).sum();
        let mut entries = Vec::with_capacity(self.stacks.len());
        let mut arena = Vec::with_capacity(words);
        for (key, count) in self.stacks {
            entries.push(Entry {
                at: arena.len() as u32,
                len: key.len() as u32,
                count,
            });
            arena.extend_from_slice(&key);
        }
        Segment {
            start_ns: self.start_ns,
            end_ns,
            samples: self.samples,
            dropped: self.dropped,
            leaf_only: self.leaf_only,
            entries,
            arena,
        }
    }
}

/// Finished segments, newest last, held under a byte bound and a time window.
pub struct ProfileRing {
    segments: VecDeque<Arc<Segment>>,
    bytes: usize,
    limit: usize,
    window_ns: u128,
    /// Segments dropped to keep under the byte bound before they left the window.
    pub evicted: u64,
}

impl ProfileRing {
    /// A ring of at most `limit` bytes of finished segments, none older than `window_ns`.
    pub fn new(limit: usize, window_ns: u128) -> ProfileRing {
        ProfileRing {
            segments: VecDeque::new(),
            bytes: 0,
            limit,
            window_ns,
            evicted: 0,
        }
    }

    /// Adds a finished segment; drops segments past the window, then the oldest while over the bound.
    pub fn push(&mut self, segment: Segment) {
        let newest_end = segment.end_ns;
        self.bytes += segment.bytes();
        self.segments.push_back(Arc::new(segment));
        while let Some(old) = self.segments.front() {
            let aged = newest_end.saturating_sub(old.end_ns) >= self.window_ns;
            let over = self.bytes > self.limit;
            if !aged && !over {
                break;
            }
            if over && !aged {
                self.evicted += 1;
            }
            self.bytes -= old.bytes();
            self.segments.pop_front();
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Segments held.
    pub fn len(&self) -> usize {
        self.segments.len()
    }

    /// Whether no segment is held.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// End of the newest segment, ns since the Unix epoch.
    pub fn newest_end(&self) -> Option<u128> {
        self.segments.back().map(|s| s.end_ns)
    }

    /// Nanoseconds from the oldest segment's start to the newest's end.
    pub fn span_ns(&self) -> u128 {
        match (self.segments.front(), self.segments.back()) {
            (Some(a), Some(b)) => b.end_ns.saturating_sub(a.start_ns),
            _ => 0,
        }
    }

    /// The segments overlapping [from_ns, to_ns], oldest first.
    pub fn between(&self, from_ns: u128, to_ns: u128) -> Vec<Arc<Segment>> {
        self.segments
            .iter()
            .filter(|s| s.end_ns > from_ns && s.start_ns < to_ns)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u128 = 1_000_000_000;

    fn segment(start: u128, stacks: usize, depth: usize) -> Segment {
        let mut b = SegmentBuilder::new(start * S, usize::MAX, usize::MAX);
        for i in 0..stacks {
            let frames: Vec<u64> = (0..depth as u64)
                .map(|d| 0x40_0000 + d * 16 + i as u64)
                .collect();
            b.add(7, &frames);
            b.add(7, &frames);
        }
        b.finish((start + 10) * S)
    }

    #[test]
    fn a_segment_counts_repeats_and_gives_its_stacks_back() {
        let mut b = SegmentBuilder::new(0, 10, 1 << 20);
        b.add(1, &[3, 2, 1]);
        b.add(1, &[3, 2, 1]);
        b.add(2, &[3, 2, 1]);
        b.add(1, &[9]);
        let s = b.finish(10 * S);
        assert_eq!(s.samples, 4);
        let mut got: Vec<(u32, Vec<u64>, u64)> =
            s.each().map(|(p, f, n)| (p, f.to_vec(), n)).collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                (1, vec![3, 2, 1], 2),
                (1, vec![9], 1),
                (2, vec![3, 2, 1], 1)
            ]
        );
        // Exact size: the struct, 3 entries of 16 bytes, 4+4+2 words.
        assert_eq!(s.bytes(), std::mem::size_of::<Segment>() + 3 * 16 + 10 * 8);
    }

    #[test]
    fn a_full_segment_drops_new_stacks_but_counts_known_ones() {
        let mut b = SegmentBuilder::new(0, 2, 1 << 20);
        b.add(1, &[1]);
        b.add(1, &[2]);
        b.add(1, &[3]);
        b.add(1, &[1]);
        let s = b.finish(S);
        assert_eq!((s.samples, s.dropped, s.stacks()), (4, 1, 2));
        // The byte bound: full stacks until 7/8 of it, then leaf-only stacks, then nothing.
        let frames: Vec<u64> = (0..64).collect();
        let limit = 16 << 10;
        let mut b = SegmentBuilder::new(0, usize::MAX, limit);
        for pid in 0..200 {
            b.add(pid, &frames);
            assert!(b.bytes() <= limit, "{} bytes", b.bytes());
        }
        let s = b.finish(S);
        let full = s.each().filter(|(_, f, _)| f.len() == 64).count();
        let leaf = s.each().filter(|(_, f, _)| f.len() == 1).count();
        assert_eq!(
            full,
            (limit - limit / 8) / (65 * 8 + BUILDING_ENTRY_OVERHEAD)
        );
        assert_eq!(leaf as u64, s.leaf_only);
        assert!(leaf > 0 && s.dropped > 0);
        assert_eq!(full as u64 + s.leaf_only + s.dropped, 200);
    }

    #[test]
    fn the_ring_keeps_its_byte_bound_and_its_window() {
        let one = segment(0, 100, 20).bytes();
        let mut r = ProfileRing::new(3 * one + one / 2, 60 * S);
        for i in 0..5 {
            r.push(segment(i * 10, 100, 20));
            assert!(r.bytes() <= 3 * one + one / 2, "{} bytes", r.bytes());
        }
        assert_eq!(r.len(), 3);
        assert_eq!(r.evicted, 2);
        assert_eq!(r.span_ns(), 30 * S);
        assert_eq!(r.between(25 * S, 35 * S).len(), 2);
        // The window: a ring with room for all keeps only the last 60 s.
        let mut r = ProfileRing::new(usize::MAX, 60 * S);
        for i in 0..10 {
            r.push(segment(i * 10, 1, 1));
        }
        assert_eq!(r.len(), 6);
        assert_eq!(r.evicted, 0);
        assert_eq!(r.span_ns(), 60 * S);
    }
}
