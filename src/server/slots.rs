//! Connection slots of an HTTP/1 listener: who holds one, whether it is in the middle of a request, and
//! which connection gives its slot up when a new one arrives and every slot is taken.
//!
//! A connection between requests (kept alive, or still sending its request head) has been promised
//! nothing, so when the listener is full the newcomer takes the slot of such a connection instead of
//! waiting behind it: the one whose peer address holds the most slots, and of those the one idle the
//! longest. A connection with a request in progress (its handler running or its response being written)
//! keeps its slot; those requests end within their own deadlines. A connection younger than [`GRACE`]
//! that has not sent a request yet is taken last: a probe's request follows its handshake at once, but
//! when hundreds of clients reconnect together vitals may accept hundreds more before it reads that
//! request (a debug build lost probes that way, each evicted by a later attacker from the same address).
//! So a fresh connection (a kubelet probe, a scrape, an SDK export) is served whatever number of idle,
//! trickling or kept-alive connections other clients hold; only as many requests in progress as there
//! are slots can make it wait.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// One connection's standing, shared between its task and the slot table.
pub struct Standing {
    /// Requests in progress (0 or 1 on HTTP/1).
    busy: AtomicUsize,
    /// Milliseconds since the table's epoch at which the connection last became idle (or opened).
    idle_since: AtomicU64,
    /// Cancelled when the connection loses its slot; its task then closes it.
    evicted: CancellationToken,
    epoch: Instant,
    /// Milliseconds since the epoch at which the connection was accepted.
    opened_ms: u64,
    /// Requests started on this connection (their heads read whole).
    started: AtomicU64,
}

impl Standing {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Marks a request as started; the returned guard marks it finished when dropped (the response
    /// body has been handed to the connection, or the request was abandoned).
    pub fn request(self: &Arc<Self>) -> InProgress {
        self.busy.fetch_add(1, Ordering::AcqRel);
        self.started.fetch_add(1, Ordering::AcqRel);
        InProgress(self.clone())
    }

    /// Requests started so far: a request head read since a count was taken has completed.
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Acquire)
    }

    /// Whether a request is in progress (its handler running or its response being handed over).
    pub fn busy(&self) -> bool {
        self.busy.load(Ordering::Acquire) > 0
    }

    /// Resolves when the connection has lost its slot.
    pub fn evicted(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.evicted.cancelled()
    }
}

/// A request in progress on a connection; see [`Standing::request`].
pub struct InProgress(Arc<Standing>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.idle_since.store(self.0.now_ms(), Ordering::Release);
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Entry {
    peer: IpAddr,
    standing: Arc<Standing>,
}

struct Table {
    entries: Vec<Option<Entry>>,
    free: Vec<usize>,
}

/// How long a new connection that has not sent a request yet is spared while another idle connection
/// can give its slot up. Far above the time a live client takes to send its request head; far below the
/// 10 s a request head may take, so a silent connection is spared only for its first second.
pub const GRACE: Duration = Duration::from_secs(1);

/// The slots of one listener.
pub struct Slots {
    table: Mutex<Table>,
    epoch: Instant,
    grace_ms: u64,
}

/// A held slot; dropping it frees the slot (unless it was already given to another connection).
pub struct Slot {
    slots: Arc<Slots>,
    index: usize,
    /// The connection's standing.
    pub standing: Arc<Standing>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self.slots.lock();
        let mine = t.entries[self.index]
            .as_ref()
            .is_some_and(|e| Arc::ptr_eq(&e.standing, &self.standing));
        if mine {
            t.entries[self.index] = None;
            t.free.push(self.index);
        }
    }
}

/// What [`Slots::admit`] did.
pub enum Admission {
    /// A free slot was taken.
    Free(Slot),
    /// The slot of an idle connection from `from` was taken; that connection is being closed.
    Evicted {
        /// The new connection's slot.
        slot: Slot,
        /// The evicted connection's peer.
        from: IpAddr,
    },
    /// Every slot has a request in progress.
    Full,
}

impl Slots {
    /// `max_open` slots.
    pub fn new(max_open: usize) -> Arc<Slots> {
        Slots::with_grace(max_open, GRACE)
    }

    /// `max_open` slots, sparing new connections for `grace` (see [`GRACE`]).
    fn with_grace(max_open: usize, grace: Duration) -> Arc<Slots> {
        let max_open = max_open.max(1);
        Arc::new(Slots {
            table: Mutex::new(Table {
                entries: (0..max_open).map(|_| None).collect(),
                free: (0..max_open).rev().collect(),
            }),
            epoch: Instant::now(),
            grace_ms: grace.as_millis() as u64,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connections holding a slot.
    pub fn open(&self) -> usize {
        let t = self.lock();
        t.entries.len() - t.free.len()
    }

    /// A slot for a new connection from `peer`: a free one, else the slot of an idle connection (see the
    /// module documentation), else none.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Admission {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        let standing = Arc::new(Standing {
            busy: AtomicUsize::new(0),
            idle_since: AtomicU64::new(now_ms),
            evicted: CancellationToken::new(),
            epoch: self.epoch,
            opened_ms: now_ms,
            started: AtomicU64::new(0),
        });
        let mut t = self.lock();
        let (index, from) = match t.free.pop() {
            Some(i) => (i, None),
            None => match victim(&t.entries, now_ms, self.grace_ms) {
                Some(i) => {
                    let old = t.entries[i].take().map(|e| {
                        e.standing.evicted.cancel();
                        e.peer
                    });
                    (i, old)
                }
                None => return Admission::Full,
            },
        };
        t.entries[index] = Some(Entry {
            peer,
            standing: standing.clone(),
        });
        drop(t);
        let slot = Slot {
            slots: self.clone(),
            index,
            standing,
        };
        match from {
            Some(from) => Admission::Evicted { slot, from },
            None => Admission::Free(slot),
        }
    }
}

/// The idle connection to evict: one past its grace (opened `grace_ms` or more before `now_ms`, or
/// having sent a request) if any, then from the peer holding the most slots, the one idle the longest.
fn victim(entries: &[Option<Entry>], now_ms: u64, grace_ms: u64) -> Option<usize> {
    let mut per_peer: HashMap<IpAddr, usize> = HashMap::new();
    for e in entries.iter().flatten() {
        *per_peer.entry(e.peer).or_default() += 1;
    }
    entries
        .iter()
        .enumerate()
        .filter_map(|(i, e)| e.as_ref().map(|e| (i, e)))
        .filter(|(_, e)| !e.standing.busy())
        .max_by_key(|(_, e)| {
            let spared = e.standing.started() == 0 && e.standing.opened_ms + grace_ms > now_ms;
            (
                !spared,
                per_peer.get(&e.peer).copied().unwrap_or(0),
                std::cmp::Reverse(e.standing.idle_since.load(Ordering::Acquire)),
            )
        })
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    fn slot(a: Admission) -> Slot {
        match a {
            Admission::Free(s) | Admission::Evicted { slot: s, .. } => s,
            Admission::Full => panic!("no slot"),
        }
    }

    #[test]
    fn a_full_table_evicts_an_idle_connection_of_the_busiest_peer() {
        let slots = Slots::new(4);
        let a = slot(slots.admit(ip(1)));
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b1 = slot(slots.admit(ip(2)));
        let b2 = slot(slots.admit(ip(2)));
        let b3 = slot(slots.admit(ip(2)));
        assert_eq!(slots.open(), 4);
        // Peer .2 holds three slots: its longest-idle connection goes, although .1's is older.
        let _busy = b1.standing.request();
        match slots.admit(ip(3)) {
            Admission::Evicted { from, slot } => {
                assert_eq!(from, ip(2));
                assert!(b2.standing.evicted.is_cancelled() || b3.standing.evicted.is_cancelled());
                assert!(!b1.standing.evicted.is_cancelled(), "busy connections stay");
                assert!(!a.standing.evicted.is_cancelled());
                drop(slot);
            }
            _ => panic!("expected an eviction"),
        }
        // The evicted connection's own drop must not free the slot the newcomer took.
        let evicted = if b2.standing.evicted.is_cancelled() {
            b2
        } else {
            b3
        };
        let kept = slot(slots.admit(ip(3)));
        let before = slots.open();
        drop(evicted);
        assert_eq!(slots.open(), before);
        drop(kept);
    }

    #[test]
    fn a_new_connection_that_has_not_asked_yet_goes_last() {
        let slots = Slots::with_grace(3, Duration::from_millis(40));
        // Two silent connections from one peer, past their grace.
        let old1 = slot(slots.admit(ip(2)));
        let old2 = slot(slots.admit(ip(2)));
        std::thread::sleep(Duration::from_millis(60));
        // A probe from the same peer, just accepted, that has not sent its request yet. The two older
        // connections then each answer a request (kept alive), so they are idle more recently than the
        // probe opened: without the grace the probe, idle the longest, would go first.
        let probe = slot(slots.admit(ip(2)));
        drop(old1.standing.request());
        drop(old2.standing.request());
        let newcomer = slot(slots.admit(ip(2)));
        assert!(
            !probe.standing.evicted.is_cancelled(),
            "the probe is spared"
        );
        assert!(old1.standing.evicted.is_cancelled() || old2.standing.evicted.is_cancelled());
        // Past its grace, still silent, it is the first to go.
        std::thread::sleep(Duration::from_millis(60));
        let (a, b) = (old1.standing.clone(), old2.standing.clone());
        let survivor = if a.evicted.is_cancelled() { b } else { a };
        drop(survivor.request());
        let _later = slot(slots.admit(ip(2)));
        assert!(
            probe.standing.evicted.is_cancelled(),
            "a silent connection past its grace goes"
        );
        assert!(!survivor.evicted.is_cancelled());
        drop(newcomer);
    }

    #[test]
    fn a_table_of_requests_in_progress_refuses() {
        let slots = Slots::new(2);
        let a = slot(slots.admit(ip(1)));
        let b = slot(slots.admit(ip(1)));
        let _ra = a.standing.request();
        let rb = b.standing.request();
        assert!(matches!(slots.admit(ip(2)), Admission::Full));
        drop(rb);
        assert!(matches!(slots.admit(ip(2)), Admission::Evicted { .. }));
    }
}
