//! Requests in flight per route id: one counter per id, shared by every table that has the
//! route, so a table swap does not lose requests that started on the previous one. Compiled
//! routes carry their counter; the proxy counts, the admin API and the database cutover read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, LazyLock};

use parking_lot::Mutex;

static INFLIGHT: LazyLock<Mutex<HashMap<String, Arc<AtomicI64>>>> = LazyLock::new(Default::default);

/// The in-flight counter of route `id`, made on first use (at compile time, off the request
/// path).
pub fn counter(id: &str) -> Arc<AtomicI64> {
    INFLIGHT.lock().entry(id.to_string()).or_default().clone()
}

/// In-flight requests per route id, sorted by id.
pub fn counts() -> Vec<(String, i64)> {
    let mut v: Vec<_> = INFLIGHT
        .lock()
        .iter()
        .map(|(k, c)| (k.clone(), c.load(Ordering::Relaxed)))
        .collect();
    v.sort();
    v
}
