//! Upstream health: the state the proxy reads to decide whether an upstream may take a request.
//! Two writers feed it: active checks ([`active`]) and passive outlier detection (request
//! outcomes recorded by the proxy). State is kept by upstream name in a process-wide registry,
//! so it survives table reloads.

pub mod active;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::OutlierFile;
use crate::metrics::METRICS;

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

/// Health of one upstream (by name).
#[derive(Debug)]
pub struct UpstreamState {
    name: String,
    /// Last verdict of active checks; true when none are configured.
    active_healthy: AtomicBool,
    consecutive_failures: AtomicU32,
    /// Times ejected in a row without a successful trial; grows the cool-off.
    ejections: AtomicU32,
    /// Ejected until this time (ms since process start); 0 = not ejected.
    ejected_until: AtomicU64,
    /// After a cool-off, the one trial request is out.
    trial_taken: AtomicBool,
}

/// Whether an upstream may take a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Up,
    /// Active checks say it is down.
    Unhealthy,
    /// Passive detection ejected it (or its trial request is already out).
    Ejected,
}

impl UpstreamState {
    fn new(name: &str) -> UpstreamState {
        UpstreamState {
            name: name.to_string(),
            active_healthy: AtomicBool::new(true),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            trial_taken: AtomicBool::new(false),
        }
    }

    /// Upstream name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether a request may go here now. After an ejection's cool-off exactly one caller gets
    /// `Up` (the trial); the others see `Ejected` until the trial's outcome is recorded.
    #[inline]
    pub fn check(&self) -> Availability {
        if !self.active_healthy.load(Ordering::Relaxed) {
            return Availability::Unhealthy;
        }
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until == 0 {
            return Availability::Up;
        }
        if now_ms() < until {
            return Availability::Ejected;
        }
        if self
            .trial_taken
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            Availability::Up
        } else {
            Availability::Ejected
        }
    }

    /// Whether a request may go here, without taking the trial slot (for display).
    pub fn peek(&self) -> Availability {
        if !self.active_healthy.load(Ordering::Relaxed) {
            Availability::Unhealthy
        } else if self.ejected_until.load(Ordering::Relaxed) != 0
            && now_ms() < self.ejected_until.load(Ordering::Relaxed)
        {
            Availability::Ejected
        } else {
            Availability::Up
        }
    }

    /// Time left in the current ejection.
    pub fn ejected_for(&self) -> Option<Duration> {
        let until = self.ejected_until.load(Ordering::Relaxed);
        let now = now_ms();
        (until > now).then(|| Duration::from_millis(until - now))
    }

    /// Active checks' verdict.
    pub fn is_active_healthy(&self) -> bool {
        self.active_healthy.load(Ordering::Relaxed)
    }

    /// Records a request that got an answer the upstream is not blamed for.
    #[inline]
    pub fn record_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if self.ejected_until.load(Ordering::Relaxed) != 0 {
            // The trial succeeded: back in service.
            self.ejected_until.store(0, Ordering::Relaxed);
            self.ejections.store(0, Ordering::Relaxed);
            self.trial_taken.store(false, Ordering::Relaxed);
            tracing::info!(upstream = %self.name, "upstream back in service after trial request");
        }
    }

    /// Records a failure (connect error, timeout, or a 5xx when the upstream opts in); ejects
    /// after `consecutive_failures` in a row, or at once when a trial request fails.
    pub fn record_failure(&self, policy: &OutlierFile) {
        if policy.consecutive_failures == 0 {
            return;
        }
        let in_trial = self.ejected_until.load(Ordering::Relaxed) != 0;
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if in_trial || n >= policy.consecutive_failures {
            let k = self.ejections.fetch_add(1, Ordering::Relaxed).min(16);
            let cool = policy
                .base_ejection_ms
                .saturating_mul(1u64 << k)
                .min(policy.max_ejection_ms);
            self.ejected_until.store(now_ms() + cool, Ordering::Relaxed);
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.trial_taken.store(false, Ordering::Relaxed);
            METRICS.ejections.with_label_values(&[&self.name]).inc();
            tracing::warn!(upstream = %self.name, cool_off_ms = cool, ejections = k + 1, "upstream ejected");
        }
    }

    /// Sets the active checks' verdict; logs and exports changes.
    pub fn set_active_healthy(&self, healthy: bool) {
        let was = self.active_healthy.swap(healthy, Ordering::Relaxed);
        METRICS
            .upstream_healthy
            .with_label_values(&[&self.name])
            .set(i64::from(healthy));
        if was != healthy {
            if healthy {
                tracing::info!(upstream = %self.name, "upstream healthy");
            } else {
                tracing::warn!(upstream = %self.name, "upstream unhealthy");
            }
        }
    }
}

static REGISTRY: LazyLock<Mutex<HashMap<String, Arc<UpstreamState>>>> =
    LazyLock::new(Default::default);

/// The state of upstream `name`, created on first use (healthy, not ejected).
pub fn state(name: &str) -> Arc<UpstreamState> {
    REGISTRY
        .lock()
        .entry(name.to_string())
        .or_insert_with(|| Arc::new(UpstreamState::new(name)))
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejection_and_trial() {
        let s = UpstreamState::new("x");
        let p = OutlierFile {
            consecutive_failures: 2,
            count_5xx: false,
            base_ejection_ms: 30,
            max_ejection_ms: 100,
        };
        s.record_failure(&p);
        assert_eq!(s.check(), Availability::Up);
        s.record_failure(&p);
        assert_eq!(s.check(), Availability::Ejected);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(s.check(), Availability::Up, "one trial");
        assert_eq!(s.check(), Availability::Ejected, "only one trial");
        s.record_failure(&p); // trial failed: ejected again, for longer (60 ms)
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(s.check(), Availability::Ejected);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(s.check(), Availability::Up);
        s.record_success();
        assert_eq!(s.check(), Availability::Up);
        assert_eq!(s.check(), Availability::Up);
    }

    #[test]
    fn active_verdict() {
        let s = UpstreamState::new("y");
        s.set_active_healthy(false);
        assert_eq!(s.check(), Availability::Unhealthy);
        s.set_active_healthy(true);
        assert_eq!(s.check(), Availability::Up);
    }
}
