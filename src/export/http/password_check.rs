//! Password hash checks for basic auth, on one thread of their own behind a bounded, fair queue.
//!
//! bcrypt is slow by design (~75 ms at cost 10). Run where requests are served, a flood of wrong
//! passwords would occupy the threads that answer probes, scrapes and ingest; run one at a time with an
//! unbounded wait, it would make every request wait behind the flood. So checks run on a single thread
//! (a flood costs at most that one core; it keeps the normal priority, since at nice 10 on a busy node a
//! 75 ms check took seconds and the right scraper timed out), at most
//! [`PENDING`] wait from addresses whose last check failed and as many from the others (two at a time
//! from one address; more count as a failing address's), at most [`PER_PEER`] from one address (an IPv6
//! /64 counts as one), and the thread takes peers in turn, those whose last check did not fail first: a scraper at another address than the flood finds room and waits
//! for the one check in progress, not behind the flood. A check that finds no room is not queued; its
//! request is answered 429 at once. Failing addresses are remembered for [`SUSPECT_FOR`], at most
//! [`SUSPECTS`] of them (the oldest forgotten first).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// Checks waiting at most from addresses whose last check failed, and as many from the others.
pub const PENDING: usize = 32;
/// Checks waiting at most from one peer address.
pub const PER_PEER: usize = 4;
/// Checks waiting at once from one address that has not failed, before its others count as a suspect's.
const CLEAN_PER_PEER: usize = 2;
/// How long an address whose check failed waits behind the others.
pub const SUSPECT_FOR: Duration = Duration::from_secs(60);
/// Failing addresses remembered at most.
pub const SUSPECTS: usize = 1024;

struct Job {
    peer: IpAddr,
    /// Counted under `pending[1]` (a suspect's) rather than `pending[0]`.
    suspect: bool,
    password: String,
    hash: Arc<str>,
    reply: oneshot::Sender<bool>,
}

#[derive(Default)]
struct Queue {
    lanes: HashMap<IpAddr, VecDeque<Job>>,
    /// Peers with waiting checks whose last check did not fail, in the order they are served.
    turns: VecDeque<IpAddr>,
    /// The same for peers whose last check failed; served when `turns` is empty.
    suspect_turns: VecDeque<IpAddr>,
    /// Peers whose last check failed, and when.
    suspects: HashMap<IpAddr, Instant>,
    /// Checks waiting from peers that were suspects, and from the others, when they were queued.
    pending: [usize; 2],
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

/// The check queue and its thread; the thread ends when this is dropped.
pub struct PasswordChecks {
    shared: Arc<Shared>,
}

/// The queue had no room for the check.
#[derive(Debug, PartialEq, Eq)]
pub struct QueueFull;

impl PasswordChecks {
    /// Starts the check thread.
    pub fn start() -> std::io::Result<PasswordChecks> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
        });
        let worker = shared.clone();
        std::thread::Builder::new()
            .name("vitals-auth".into())
            .spawn(move || {
                while let Some(job) = next(&worker) {
                    let ok = bcrypt::verify(&job.password, &job.hash).unwrap_or(false);
                    worker.lock().outcome(job.peer, ok);
                    let _ = job.reply.send(ok);
                }
            })?;
        Ok(PasswordChecks { shared })
    }

    /// Whether `password` matches the bcrypt `hash`, checked in turn with the other waiting checks;
    /// `Err(QueueFull)` at once when [`PENDING`] checks wait, or [`PER_PEER`] from `peer`.
    pub async fn check(
        &self,
        peer: IpAddr,
        password: String,
        hash: Arc<str>,
    ) -> Result<bool, QueueFull> {
        let answer = self.enqueue(peer, password, hash)?;
        // The thread always answers; a dropped sender (the thread gone) counts as no match.
        Ok(answer.await.unwrap_or(false))
    }

    fn enqueue(
        &self,
        peer: IpAddr,
        password: String,
        hash: Arc<str>,
    ) -> Result<oneshot::Receiver<bool>, QueueFull> {
        let (reply, answer) = oneshot::channel();
        let peer = peer_key(peer);
        {
            let mut q = self.shared.lock();
            // An address gets two checks at a time among those that have not failed; more wait with
            // the failing ones, so a flood from new addresses cannot fill the room kept for them
            // before each has failed once.
            let suspect = q.suspect(peer)
                || q.lanes
                    .get(&peer)
                    .is_some_and(|l| l.len() >= CLEAN_PER_PEER);
            if q.pending[suspect as usize] >= PENDING
                || q.lanes.get(&peer).is_some_and(|l| l.len() >= PER_PEER)
            {
                return Err(QueueFull);
            }
            q.pending[suspect as usize] += 1;
            let lane = q.lanes.entry(peer).or_default();
            lane.push_back(Job {
                peer,
                suspect,
                password,
                hash,
                reply,
            });
            if lane.len() == 1 {
                q.take_turn(peer);
            }
        }
        self.shared.ready.notify_one();
        Ok(answer)
    }
}

impl Drop for PasswordChecks {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.ready.notify_all();
    }
}

/// The address a peer is counted under: itself, or its /64 for IPv6 (one host can hold a whole /64).
fn peer_key(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(_) => peer,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Queue {
    /// Whether `peer`'s last check failed within [`SUSPECT_FOR`].
    fn suspect(&mut self, peer: IpAddr) -> bool {
        match self.suspects.get(&peer) {
            Some(t) if t.elapsed() < SUSPECT_FOR => true,
            Some(_) => {
                self.suspects.remove(&peer);
                false
            }
            None => false,
        }
    }

    /// Puts `peer` at the end of the turn queue of its next check's class.
    fn take_turn(&mut self, peer: IpAddr) {
        let next_suspect = self
            .lanes
            .get(&peer)
            .and_then(|l| l.front())
            .is_none_or(|j| j.suspect);
        if next_suspect {
            self.suspect_turns.push_back(peer);
        } else {
            self.turns.push_back(peer);
        }
    }

    /// Remembers how `peer`'s check went.
    fn outcome(&mut self, peer: IpAddr, ok: bool) {
        if ok {
            self.suspects.remove(&peer);
            return;
        }
        if self.suspects.len() >= SUSPECTS && !self.suspects.contains_key(&peer) {
            self.suspects.retain(|_, t| t.elapsed() < SUSPECT_FOR);
            if self.suspects.len() >= SUSPECTS {
                let oldest = self
                    .suspects
                    .iter()
                    .min_by_key(|(_, t)| **t)
                    .map(|(p, _)| *p);
                if let Some(oldest) = oldest {
                    self.suspects.remove(&oldest);
                }
            }
        }
        self.suspects.insert(peer, Instant::now());
    }
}

/// The next check, from the peer whose turn it is; None once closed.
fn next(shared: &Shared) -> Option<Job> {
    let mut q = shared.lock();
    loop {
        if q.closed {
            return None;
        }
        if let Some(peer) = q.turns.pop_front().or_else(|| q.suspect_turns.pop_front()) {
            let (job, more) = match q.lanes.get_mut(&peer) {
                Some(lane) => (lane.pop_front(), !lane.is_empty()),
                None => (None, false),
            };
            if more {
                q.take_turn(peer);
            } else {
                q.lanes.remove(&peer);
            }
            if let Some(job) = job {
                q.pending[job.suspect as usize] -= 1;
                return Some(job);
            }
            continue;
        }
        q = shared.ready.wait(q).unwrap_or_else(|p| p.into_inner());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queue without its thread, to look at the order checks are taken in.
    fn queue_only() -> PasswordChecks {
        PasswordChecks {
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue::default()),
                ready: Condvar::new(),
            }),
        }
    }

    #[test]
    fn checks_are_bounded_per_peer_and_overall_and_taken_in_turn() {
        let checks = queue_only();
        let hash: Arc<str> = "h".into();
        let flood = IpAddr::from([10, 0, 0, 1]);
        let scraper = IpAddr::from([10, 0, 0, 2]);
        for _ in 0..PER_PEER {
            assert!(checks.enqueue(flood, "f".into(), hash.clone()).is_ok());
        }
        assert_eq!(
            checks.enqueue(flood, "f".into(), hash.clone()).err(),
            Some(QueueFull)
        );
        assert!(checks.enqueue(scraper, "s".into(), hash.clone()).is_ok());
        // The scraper's check is second, not behind the flood's four.
        let order: Vec<String> = (0..PER_PEER + 1)
            .map(|_| next(&checks.shared).unwrap().password)
            .collect();
        assert_eq!(order, ["f", "s", "f", "f", "f"]);
        // (The flood's first two checks were taken as a new address's, its other two as a suspect's.)
        // Once the flood's address has failed, a scraper's check goes first even when it comes last.
        checks.shared.lock().outcome(flood, false);
        for _ in 0..PER_PEER {
            checks.enqueue(flood, "f".into(), hash.clone()).unwrap();
        }
        checks.enqueue(scraper, "s".into(), hash.clone()).unwrap();
        assert_eq!(next(&checks.shared).unwrap().password, "s");
        for _ in 0..PER_PEER {
            assert_eq!(next(&checks.shared).unwrap().password, "f");
        }
        // The overall bound holds across peers, for failing addresses and the others apart: a flood
        // from many failing addresses leaves room for a scraper that has not failed.
        for i in 0..PENDING + 1 {
            let peer = IpAddr::from([10, 1, (i / 200) as u8, (i % 200) as u8]);
            checks.shared.lock().outcome(peer, false);
            let queued = checks.enqueue(peer, "p".into(), hash.clone());
            assert_eq!(queued.is_ok(), i < PENDING, "failing address {i}");
        }
        assert!(checks.enqueue(scraper, "s".into(), hash.clone()).is_ok());
        for i in 0..PENDING - 1 {
            let peer = IpAddr::from([10, 2, (i / 200) as u8, (i % 200) as u8]);
            assert!(checks.enqueue(peer, "p".into(), hash.clone()).is_ok());
        }
        assert_eq!(
            checks
                .enqueue(IpAddr::from([10, 3, 0, 0]), "p".into(), hash.clone())
                .err(),
            Some(QueueFull)
        );
        // One IPv6 /64 is one peer.
        let v6 = |last: u16| IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, last]);
        assert_eq!(peer_key(v6(1)), peer_key(v6(2)));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_thread_answers_each_check() {
        let checks = PasswordChecks::start().unwrap();
        // Cost 4 keeps the test short; the queue does not depend on the cost.
        let hash: Arc<str> = bcrypt::hash("right", 4).unwrap().into();
        let peer = IpAddr::from([10, 0, 0, 1]);
        assert_eq!(
            checks.check(peer, "right".into(), hash.clone()).await,
            Ok(true)
        );
        assert_eq!(checks.check(peer, "wrong".into(), hash).await, Ok(false));
    }
}
