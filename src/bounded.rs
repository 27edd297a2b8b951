//! A map keyed by outside data with a cardinality limit: keys beyond the limit share one overflow entry,
//! and each overflowed observation is counted, so memory stays bounded whatever a client sends. It
//! depends on no other module, so the store, derivation and the wiring all use it without an edge
//! between them.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hashbrown::HashTable;

/// Counts observations sent to overflow entries, across every limited map (`vitals_exporter_series_overflow_total`).
#[derive(Debug, Default, Clone)]
pub struct OverflowCounter(Arc<AtomicU64>);

impl OverflowCounter {
    /// One more overflowed observation.
    pub fn add(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Total so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value with the time it was last touched, for expiry.
#[derive(Debug, Clone)]
pub struct Touched<V> {
    /// The value.
    pub value: V,
    /// When it was last updated.
    pub at: Instant,
}

/// A bounded map with one overflow entry.
///
/// Entries sit in one vector in the order they were added (a removal moves the last entry into the
/// gap), found through a hash table of their positions. A reader walking every entry, as a scrape does,
/// goes through memory front to back instead of hopping across a table in hash order, and the table
/// holds 4 bytes per slot instead of a whole entry.
#[derive(Debug)]
pub struct LimitedMap<K, V> {
    entries: Vec<(K, Touched<V>)>,
    /// Positions in `entries`, by the hash of their key.
    index: HashTable<u32>,
    hasher: RandomState,
    overflow: Option<Touched<V>>,
    limit: usize,
    counter: OverflowCounter,
}

impl<K: Eq + Hash, V> LimitedMap<K, V> {
    /// A map holding at most `limit` keys (at most `u32::MAX`, the largest position it records).
    pub fn new(limit: usize, counter: OverflowCounter) -> Self {
        LimitedMap {
            entries: Vec::new(),
            index: HashTable::new(),
            hasher: RandomState::new(),
            overflow: None,
            limit: limit.min(u32::MAX as usize),
            counter,
        }
    }

    /// The position of `key` in `entries`.
    fn position<Q>(&self, key: &Q) -> Option<usize>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let entries = &self.entries;
        self.index
            .find(self.hasher.hash_one(key), |&i| {
                entries
                    .get(i as usize)
                    .is_some_and(|(k, _)| k.borrow() == key)
            })
            .map(|&i| i as usize)
    }

    /// Records that `entries[i]` is where its key is found.
    fn index_at(&mut self, i: usize) {
        let (entries, hasher) = (&self.entries, &self.hasher);
        let Some((k, _)) = entries.get(i) else {
            return;
        };
        self.index
            .insert_unique(hasher.hash_one(k), i as u32, |&j| {
                entries
                    .get(j as usize)
                    .map_or(0, |(k, _)| hasher.hash_one(k))
            });
    }

    /// The entry for `key`, created with `init` when there is room; otherwise the overflow entry (and the
    /// observation is counted). `make_key` runs only when a new key is stored, so a hit allocates nothing.
    pub fn entry<Q>(
        &mut self,
        key: &Q,
        make_key: impl FnOnce() -> K,
        init: impl FnOnce() -> V,
        now: Instant,
    ) -> (&mut V, bool)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entry_if(key, make_key, init, now, true)
    }

    /// Like [`LimitedMap::entry`], but a new key is stored only when `may_grow` too (a limit the caller
    /// keeps across several maps); otherwise it goes to the overflow entry.
    pub fn entry_if<Q>(
        &mut self,
        key: &Q,
        make_key: impl FnOnce() -> K,
        init: impl FnOnce() -> V,
        now: Instant,
        may_grow: bool,
    ) -> (&mut V, bool)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let at = match self.position(key) {
            Some(i) => i,
            None if may_grow && self.entries.len() < self.limit => {
                self.entries.push((
                    make_key(),
                    Touched {
                        value: init(),
                        at: now,
                    },
                ));
                let i = self.entries.len() - 1;
                self.index_at(i);
                i
            }
            None => {
                self.counter.add();
                let e = self.overflow.get_or_insert_with(|| Touched {
                    value: init(),
                    at: now,
                });
                e.at = now;
                return (&mut e.value, true);
            }
        };
        // `at` is a position just found or just filled.
        let e = &mut self.entries[at].1;
        e.at = now;
        (&mut e.value, false)
    }

    /// Drops entries (and the overflow entry) not touched within `ttl`.
    pub fn expire(&mut self, now: Instant, ttl: Duration) {
        self.expire_with(now, ttl, |_| {});
    }

    /// Like [`LimitedMap::expire`], calling `dropped` with each key it removes.
    pub fn expire_with(&mut self, now: Instant, ttl: Duration, mut dropped: impl FnMut(&K)) {
        let before = self.entries.len();
        self.entries.retain(|(k, v)| {
            let keep = now.saturating_duration_since(v.at) < ttl;
            if !keep {
                dropped(k);
            }
            keep
        });
        if self.entries.len() < before {
            self.index.clear();
            for i in 0..self.entries.len() {
                self.index_at(i);
            }
        }
        if self
            .overflow
            .as_ref()
            .is_some_and(|o| now.saturating_duration_since(o.at) >= ttl)
        {
            self.overflow = None;
        }
    }

    /// True when `key` is tracked (the overflow entry aside).
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.position(key).is_some()
    }

    /// Removes one key, returning whether it was there.
    pub fn remove<Q>(&mut self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let entries = &self.entries;
        let Ok(slot) = self.index.find_entry(self.hasher.hash_one(key), |&i| {
            entries
                .get(i as usize)
                .is_some_and(|(k, _)| k.borrow() == key)
        }) else {
            return false;
        };
        let (i, _) = slot.remove();
        let (i, last) = (i as usize, self.entries.len() - 1);
        self.entries.swap_remove(i);
        // The last entry moved into the gap: point its slot at where it is now.
        if let Some((k, _)) = self.entries.get(i) {
            let moved = &mut self.index;
            if let Some(slot) = moved.find_mut(self.hasher.hash_one(k), |&j| j as usize == last) {
                *slot = i as u32;
            }
        }
        true
    }

    /// The tracked entries.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(k, v)| (k, &v.value))
    }

    /// The overflow entry, if any observation overflowed and it has not expired.
    pub fn overflow(&self) -> Option<&V> {
        self.overflow.as_ref().map(|o| &o.value)
    }

    /// The entries touched within `ttl` before `now`: what [`LimitedMap::expire`] would keep, read without
    /// changing anything, so readers see exact expiry while the removal runs on its own clock.
    pub fn iter_live(&self, now: Instant, ttl: Duration) -> impl Iterator<Item = (&K, &V)> {
        // `now - at < ttl` is `at > now - ttl`: one comparison per entry instead of a subtraction. When
        // `now - ttl` is before any instant, every entry is live.
        let cutoff = now.checked_sub(ttl);
        self.entries
            .iter()
            .filter(move |(_, v)| cutoff.is_none_or(|c| v.at > c))
            .map(|(k, v)| (k, &v.value))
    }

    /// The overflow entry if it was touched within `ttl` before `now`.
    pub fn overflow_live(&self, now: Instant, ttl: Duration) -> Option<&V> {
        self.overflow
            .as_ref()
            .filter(|o| now.saturating_duration_since(o.at) < ttl)
            .map(|o| &o.value)
    }

    /// True when some entry (or the overflow entry) was touched within `ttl` before `now`.
    pub fn any_live(&self, now: Instant, ttl: Duration) -> bool {
        self.overflow_live(now, ttl).is_some() || self.iter_live(now, ttl).next().is_some()
    }

    /// Number of tracked keys (the overflow entry not included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is tracked and nothing overflowed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.overflow.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beyond_the_limit_goes_to_overflow_and_is_counted() {
        let c = OverflowCounter::default();
        let mut m: LimitedMap<String, u64> = LimitedMap::new(2, c.clone());
        let now = Instant::now();
        for k in ["a", "b", "c", "d", "a"] {
            *m.entry(k, || k.to_owned(), || 0, now).0 += 1;
        }
        assert_eq!(m.len(), 2);
        assert_eq!(*m.overflow().unwrap(), 2);
        assert_eq!(c.get(), 2);
        let a = m.iter().find(|(k, _)| k.as_str() == "a").unwrap().1;
        assert_eq!(*a, 2);
    }

    #[test]
    fn removal_and_expiry_leave_every_other_key_found() {
        let mut m: LimitedMap<String, usize> = LimitedMap::new(100, OverflowCounter::default());
        let t0 = Instant::now();
        for i in 0..60 {
            let k = i.to_string();
            // Even keys old, odd keys new.
            let at = t0 + Duration::from_secs(if i % 2 == 0 { 0 } else { 10 });
            *m.entry(k.as_str(), || k.clone(), || 0, at).0 = i;
        }
        for i in [0, 59, 30, 31] {
            assert!(m.remove(i.to_string().as_str()), "{i}");
            assert!(!m.remove(i.to_string().as_str()), "{i} twice");
        }
        m.expire(t0 + Duration::from_secs(12), Duration::from_secs(5));
        let mut left: Vec<usize> = m.iter().map(|(_, v)| *v).collect();
        left.sort_unstable();
        let want: Vec<usize> = (0..60)
            .filter(|i| i % 2 == 1 && *i != 59 && *i != 31)
            .collect();
        assert_eq!(left, want);
        for i in 0..60 {
            let k = i.to_string();
            assert_eq!(m.contains_key(k.as_str()), want.contains(&i), "{i}");
            let (v, overflowed) = m.entry(k.as_str(), || k.clone(), || i, t0);
            assert!(!overflowed);
            assert_eq!(*v, i);
        }
        assert_eq!(m.len(), 60);
        // Every entry was touched at t0 just now.
        assert_eq!(m.iter_live(t0, Duration::from_secs(5)).count(), 60);
        let later = t0 + Duration::from_secs(5);
        assert_eq!(m.iter_live(later, Duration::from_secs(5)).count(), 0);
    }

    #[test]
    fn expiry_frees_room() {
        let c = OverflowCounter::default();
        let mut m: LimitedMap<String, u64> = LimitedMap::new(1, c.clone());
        let t0 = Instant::now();
        m.entry("a", || "a".into(), || 1, t0);
        m.entry("b", || "b".into(), || 1, t0);
        m.expire(t0 + Duration::from_secs(10), Duration::from_secs(5));
        assert!(m.is_empty());
        let (_, overflowed) = m.entry("b", || "b".into(), || 1, t0 + Duration::from_secs(11));
        assert!(!overflowed);
    }
}
