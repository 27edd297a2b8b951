//! A map keyed by outside data with a cardinality limit: keys beyond the limit share one overflow entry,
//! and each overflowed observation is counted, so memory stays bounded whatever a client sends.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
#[derive(Debug)]
pub struct LimitedMap<K, V> {
    map: HashMap<K, Touched<V>>,
    overflow: Option<Touched<V>>,
    limit: usize,
    counter: OverflowCounter,
}

impl<K: Eq + Hash, V> LimitedMap<K, V> {
    /// A map holding at most `limit` keys.
    pub fn new(limit: usize, counter: OverflowCounter) -> Self {
        LimitedMap {
            map: HashMap::new(),
            overflow: None,
            limit,
            counter,
        }
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
        if self.map.contains_key(key) {
            let e = self.map.get_mut(key).expect("present");
            e.at = now;
            return (&mut e.value, false);
        }
        if may_grow && self.map.len() < self.limit {
            let e = self.map.entry(make_key()).or_insert(Touched {
                value: init(),
                at: now,
            });
            return (&mut e.value, false);
        }
        self.counter.add();
        let e = self.overflow.get_or_insert_with(|| Touched {
            value: init(),
            at: now,
        });
        e.at = now;
        (&mut e.value, true)
    }

    /// Drops entries (and the overflow entry) not touched within `ttl`.
    pub fn expire(&mut self, now: Instant, ttl: Duration) {
        self.expire_with(now, ttl, |_| {});
    }

    /// Like [`LimitedMap::expire`], calling `dropped` with each key it removes.
    pub fn expire_with(&mut self, now: Instant, ttl: Duration, mut dropped: impl FnMut(&K)) {
        self.map.retain(|k, v| {
            let keep = now.saturating_duration_since(v.at) < ttl;
            if !keep {
                dropped(k);
            }
            keep
        });
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
        self.map.contains_key(key)
    }

    /// Removes one key, returning whether it was there.
    pub fn remove<Q>(&mut self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.remove(key).is_some()
    }

    /// The tracked entries.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.map.iter().map(|(k, v)| (k, &v.value))
    }

    /// The overflow entry, if any observation overflowed and it has not expired.
    pub fn overflow(&self) -> Option<&V> {
        self.overflow.as_ref().map(|o| &o.value)
    }

    /// The entries touched within `ttl` before `now`: what [`LimitedMap::expire`] would keep, read without
    /// changing anything, so readers see exact expiry while the removal runs on its own clock.
    pub fn iter_live(&self, now: Instant, ttl: Duration) -> impl Iterator<Item = (&K, &V)> {
        self.map
            .iter()
            .filter(move |(_, v)| now.saturating_duration_since(v.at) < ttl)
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
        self.map.len()
    }

    /// True when nothing is tracked and nothing overflowed.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty() && self.overflow.is_none()
    }
}

/// The label that marks an overflow series, as the OpenTelemetry SDKs name it.
pub const OVERFLOW_LABEL: (&str, &str) = ("otel_metric_overflow", "true");

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
