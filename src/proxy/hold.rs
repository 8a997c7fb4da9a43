//! Holding requests: while a hold is on, new requests for the held routes wait (queued, not
//! refused) until release or the hold's deadline, then proceed on the then-current table.
//! The database cutover uses this to fence writes for a moment instead of a maintenance window.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::watch;

/// The hold in force, if any.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hold {
    pub routes: BTreeSet<String>,
    pub until: Option<Instant>,
}

impl Hold {
    fn holds(&self, route: &str) -> bool {
        self.until.is_some_and(|u| Instant::now() < u) && self.routes.contains(route)
    }
}

/// Process-wide hold state, read by every request.
pub struct Holds {
    active: AtomicBool,
    tx: watch::Sender<Hold>,
}

/// The process's holds.
pub static HOLDS: LazyLock<Holds> = LazyLock::new(|| Holds {
    active: AtomicBool::new(false),
    tx: watch::channel(Hold::default()).0,
});

impl Holds {
    /// Starts holding `routes` for at most `max`; replaces any hold in force.
    pub fn hold(&self, routes: BTreeSet<String>, max: Duration) {
        self.tx.send_replace(Hold {
            routes,
            until: Some(Instant::now() + max),
        });
        self.active.store(true, Ordering::Release);
    }

    /// Ends the hold; queued requests proceed.
    pub fn release(&self) {
        self.active.store(false, Ordering::Release);
        self.tx.send_replace(Hold::default());
    }

    /// The hold in force (None when released or expired).
    pub fn current(&self) -> Option<Hold> {
        let h = self.tx.borrow().clone();
        h.until.is_some_and(|u| Instant::now() < u).then_some(h)
    }

    /// Waits while `route` is held. Returns how long it waited (zero on the fast path).
    #[inline]
    pub async fn wait(&self, route: &str) -> Duration {
        if !self.active.load(Ordering::Acquire) {
            return Duration::ZERO;
        }
        let start = Instant::now();
        let mut rx = self.tx.subscribe();
        // Counted in `queued_counts` while waiting (also when the client gives up).
        let mut _queued = None;
        loop {
            let until = {
                let h = rx.borrow_and_update();
                if !h.holds(route) {
                    break;
                }
                h.until
            };
            let Some(until) = until else { break };
            if _queued.is_none() {
                _queued = Some(Queued::enter(route));
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { break },
                _ = tokio::time::sleep_until(until.into()) => break,
            }
        }
        start.elapsed()
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

static INFLIGHT: LazyLock<Mutex<HashMap<String, Arc<AtomicI64>>>> = LazyLock::new(Default::default);

/// The in-flight counter of route `id` (shared by every table that has the route).
pub fn inflight(id: &str) -> Arc<AtomicI64> {
    INFLIGHT.lock().entry(id.to_string()).or_default().clone()
}

/// In-flight requests per route id.
pub fn inflight_counts() -> Vec<(String, i64)> {
    let mut v: Vec<_> = INFLIGHT
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

    #[tokio::test]
    async fn hold_release_and_deadline() {
        let h = Holds {
            active: AtomicBool::new(false),
            tx: watch::channel(Hold::default()).0,
        };
        assert_eq!(h.wait("r").await, Duration::ZERO);
        h.hold(["r".to_string()].into(), Duration::from_millis(100));
        let t = Instant::now();
        h.wait("other").await;
        assert!(t.elapsed() < Duration::from_millis(50));
        let waited = h.wait("r").await;
        assert!(waited >= Duration::from_millis(90), "{waited:?}");
        h.hold(["r".to_string()].into(), Duration::from_secs(10));
        let h = Arc::new(h);
        let h2 = h.clone();
        let task = tokio::spawn(async move { h2.wait("r").await });
        tokio::time::sleep(Duration::from_millis(30)).await;
        let queued = |r: &str| {
            queued_counts()
                .into_iter()
                .find(|(k, _)| k == r)
                .map(|(_, n)| n)
        };
        assert_eq!(queued("r"), Some(1));
        h.release();
        let waited = task.await.unwrap();
        assert_eq!(queued("r"), Some(0));
        assert!(
            waited >= Duration::from_millis(25) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
    }
}
