//! Holding requests: while a hold is on, new requests for the held routes wait (queued, not
//! refused) until release or the hold's deadline, then proceed on the then-current table.
//! The database cutover uses this to fence writes for a moment instead of a maintenance window.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::watch;

/// Requests queued at once over all held routes when the hold does not say (nginx's
/// `worker_connections` order of magnitude: a moment's traffic, not an unbounded backlog).
pub const DEFAULT_MAX_QUEUED: u64 = 10_000;
/// Request bytes (head + declared body) queued at once when the hold does not say.
pub const DEFAULT_MAX_QUEUED_BYTES: u64 = 64 * 1024 * 1024;
/// `Retry-After` seconds sent with a hold's 503.
pub const RETRY_AFTER_SECS: u64 = 1;

/// What a hold does when its deadline passes before a release.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum OnExpiry {
    /// Held requests proceed on the table current then (the default: an operator's hold).
    #[default]
    Proceed,
    /// Held requests, and every later request for the held routes, are answered 503 with
    /// `Retry-After` until a release: the database cutover's choice, because after its deadline
    /// nobody has confirmed that the upstream's database is writable.
    Reject,
}

/// The hold in force, if any.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hold {
    pub routes: BTreeSet<String>,
    pub until: Option<Instant>,
    pub on_expiry: OnExpiry,
    pub max_queued: u64,
    pub max_queued_bytes: u64,
}

/// What a held request is to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go on (after waiting this long; zero when the route was not held).
    Proceed(Duration),
    /// Answer 503 with `Retry-After`: the queue is full.
    QueueFull,
    /// Answer 503 with `Retry-After`: a `reject` hold's deadline passed without a release.
    Expired,
}

/// Where a route stands against a hold at one instant.
enum State {
    Free,
    Held(Instant),
    Refused,
}

impl Hold {
    fn state(&self, route: &str, now: Instant) -> State {
        match self.until {
            Some(u) if self.routes.contains(route) => {
                if now < u {
                    State::Held(u)
                } else if self.on_expiry == OnExpiry::Reject {
                    State::Refused
                } else {
                    State::Free
                }
            }
            _ => State::Free,
        }
    }

    /// True while the hold has an effect: before its deadline, and after it for `reject`.
    fn in_force(&self, now: Instant) -> bool {
        self.until
            .is_some_and(|u| now < u || self.on_expiry == OnExpiry::Reject)
    }
}

/// Process-wide hold state, read by every request.
pub struct Holds {
    active: AtomicBool,
    tx: watch::Sender<Hold>,
    queued: AtomicU64,
    queued_bytes: AtomicU64,
    overflowed: AtomicU64,
}

/// The process's holds.
pub static HOLDS: LazyLock<Holds> = LazyLock::new(Holds::new);

impl Holds {
    fn new() -> Holds {
        Holds {
            active: AtomicBool::new(false),
            tx: watch::channel(Hold::default()).0,
            queued: AtomicU64::new(0),
            queued_bytes: AtomicU64::new(0),
            overflowed: AtomicU64::new(0),
        }
    }

    /// Starts holding `routes` until `max` from now, then `on_expiry`; replaces any hold in
    /// force (requests already queued stay queued under the new deadline).
    pub fn hold(
        &self,
        routes: BTreeSet<String>,
        max: Duration,
        on_expiry: OnExpiry,
        max_queued: u64,
        max_queued_bytes: u64,
    ) {
        self.overflowed.store(0, Ordering::Relaxed);
        self.tx.send_replace(Hold {
            routes,
            until: Some(Instant::now() + max),
            on_expiry,
            max_queued,
            max_queued_bytes,
        });
        self.active.store(true, Ordering::Release);
    }

    /// Ends the hold; queued requests proceed on the table current now.
    pub fn release(&self) {
        self.active.store(false, Ordering::Release);
        self.tx.send_replace(Hold::default());
    }

    /// The hold in force (None when released, or expired with `proceed`).
    pub fn current(&self) -> Option<Hold> {
        let h = self.tx.borrow().clone();
        h.in_force(Instant::now()).then_some(h)
    }

    /// Requests answered 503 because the queue was full, since the hold began.
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// Waits while `route` is held. `bytes` tells what the request would keep queued (head and
    /// declared body), asked only when a hold is on. Returns at once with `Proceed(ZERO)` when nothing is held (one atomic
    /// load on the request path).
    #[inline]
    pub async fn wait(&self, route: &str, bytes: impl FnOnce() -> u64) -> Verdict {
        if !self.active.load(Ordering::Acquire) {
            return Verdict::Proceed(Duration::ZERO);
        }
        self.wait_held(route, bytes()).await
    }

    async fn wait_held(&self, route: &str, bytes: u64) -> Verdict {
        let start = Instant::now();
        let mut rx = self.tx.subscribe();
        // Counted in `queued_counts` and against the caps while waiting (also when the client
        // gives up: the guard's drop undoes both).
        let mut slot: Option<Slot> = None;
        loop {
            let until = {
                let h = rx.borrow_and_update();
                match h.state(route, Instant::now()) {
                    State::Free => break,
                    State::Refused => return Verdict::Expired,
                    State::Held(until) => {
                        if slot.is_none() {
                            match Slot::take(self, route, bytes, &h) {
                                Some(s) => slot = Some(s),
                                None => return Verdict::QueueFull,
                            }
                        }
                        until
                    }
                }
            };
            tokio::select! {
                r = rx.changed() => if r.is_err() { break },
                _ = tokio::time::sleep_until(until.into()) => {},
            }
        }
        // Zero when the route was never held (another route's hold was on).
        Verdict::Proceed(if slot.is_some() {
            start.elapsed()
        } else {
            Duration::ZERO
        })
    }
}

/// One request's place in the queue: counted while it lives.
struct Slot<'a> {
    holds: &'a Holds,
    bytes: u64,
    _route: Queued,
}

impl<'a> Slot<'a> {
    /// Takes a place if both caps allow it; counts an overflow otherwise.
    fn take(holds: &'a Holds, route: &str, bytes: u64, h: &Hold) -> Option<Slot<'a>> {
        let n = holds.queued.fetch_add(1, Ordering::AcqRel) + 1;
        let b = holds.queued_bytes.fetch_add(bytes, Ordering::AcqRel) + bytes;
        if n > h.max_queued || b > h.max_queued_bytes {
            holds.queued.fetch_sub(1, Ordering::AcqRel);
            holds.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
            holds.overflowed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Slot {
            holds,
            bytes,
            _route: Queued::enter(route),
        })
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.holds.queued.fetch_sub(1, Ordering::AcqRel);
        self.holds
            .queued_bytes
            .fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

static QUEUED: LazyLock<Mutex<HashMap<String, Arc<AtomicI64>>>> = LazyLock::new(Default::default);

/// One request waiting out a hold: counted while it lives.
struct Queued(Arc<AtomicI64>);

impl Queued {
    fn enter(route: &str) -> Queued {
        let c = QUEUED.lock().entry(route.to_string()).or_default().clone();
        c.fetch_add(1, Ordering::Relaxed);
        Queued(c)
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Requests waiting out a hold, per route id (routes that never had one are absent).
pub fn queued_counts() -> Vec<(String, i64)> {
    let mut v: Vec<_> = QUEUED
        .lock()
        .iter()
        .map(|(k, c)| (k.clone(), c.load(Ordering::Relaxed)))
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(h: &Holds, route: &str, ms: u64, on_expiry: OnExpiry, max_queued: u64, max_bytes: u64) {
        h.hold(
            [route.to_string()].into(),
            Duration::from_millis(ms),
            on_expiry,
            max_queued,
            max_bytes,
        );
    }

    #[tokio::test]
    async fn hold_release_and_deadline() {
        let h = Holds::new();
        assert_eq!(h.wait("r1", || 0).await, Verdict::Proceed(Duration::ZERO));
        hold(&h, "r1", 100, OnExpiry::Proceed, 10, 1000);
        let t = Instant::now();
        h.wait("other", || 0).await;
        assert!(t.elapsed() < Duration::from_millis(50));
        let Verdict::Proceed(waited) = h.wait("r1", || 0).await else {
            panic!("refused")
        };
        assert!(waited >= Duration::from_millis(90), "{waited:?}");
        assert!(h.current().is_none(), "a proceed hold ends at its deadline");
        hold(&h, "r1", 10_000, OnExpiry::Proceed, 10, 1000);
        let h = Arc::new(h);
        let h2 = h.clone();
        let task = tokio::spawn(async move { h2.wait("r1", || 0).await });
        tokio::time::sleep(Duration::from_millis(30)).await;
        let queued = |r: &str| {
            queued_counts()
                .into_iter()
                .find(|(k, _)| k == r)
                .map(|(_, n)| n)
        };
        assert_eq!(queued("r1"), Some(1));
        h.release();
        let Verdict::Proceed(waited) = task.await.unwrap() else {
            panic!("refused")
        };
        assert_eq!(queued("r1"), Some(0));
        assert!(
            waited >= Duration::from_millis(25) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn queue_caps_count_and_bytes() {
        let h = Arc::new(Holds::new());
        hold(&h, "r2", 10_000, OnExpiry::Proceed, 2, 100);
        let spawn = |bytes| {
            let h = h.clone();
            tokio::spawn(async move { h.wait("r2", || bytes).await })
        };
        let a = spawn(10);
        let b = spawn(10);
        tokio::time::sleep(Duration::from_millis(30)).await;
        // A third request is over the count cap, at once.
        assert_eq!(h.wait("r2", || 1).await, Verdict::QueueFull);
        assert_eq!(h.overflowed(), 1);
        h.release();
        assert!(matches!(a.await.unwrap(), Verdict::Proceed(_)));
        assert!(matches!(b.await.unwrap(), Verdict::Proceed(_)));
        // Bytes: 60 + 50 > 100.
        hold(&h, "r2", 10_000, OnExpiry::Proceed, 10, 100);
        let c = spawn(60);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(h.wait("r2", || 50).await, Verdict::QueueFull);
        assert_eq!(h.overflowed(), 1);
        h.release();
        assert!(matches!(c.await.unwrap(), Verdict::Proceed(_)));
        assert_eq!(h.queued.load(Ordering::Relaxed), 0);
        assert_eq!(h.queued_bytes.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn reject_hold_refuses_after_its_deadline_until_release() {
        let h = Arc::new(Holds::new());
        hold(&h, "r3", 80, OnExpiry::Reject, 10, 1000);
        let h2 = h.clone();
        let queued = tokio::spawn(async move { h2.wait("r3", || 0).await });
        assert_eq!(queued.await.unwrap(), Verdict::Expired);
        // Later requests too, until a release; other routes are free.
        assert_eq!(h.wait("r3", || 0).await, Verdict::Expired);
        assert_eq!(h.wait("x", || 0).await, Verdict::Proceed(Duration::ZERO));
        assert!(h.current().is_some(), "still in force after the deadline");
        h.release();
        assert_eq!(h.wait("r3", || 0).await, Verdict::Proceed(Duration::ZERO));
        assert!(h.current().is_none());
    }
}
