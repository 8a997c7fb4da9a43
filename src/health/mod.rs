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

/// How long a trial request may stay out before another caller may take the trial: a trial
/// whose outcome is never recorded (its client went away) must not keep the upstream out forever.
const TRIAL_TIMEOUT_MS: u64 = 10_000;

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
    /// When the trial request after a cool-off went out (ms since process start, at least 1);
    /// 0 = no trial out.
    trial_at: AtomicU64,
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
            trial_at: AtomicU64::new(0),
        }
    }

    /// Upstream name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether a request may go here now; called once per attempt by `upstream_peer`. After an
    /// ejection's cool-off exactly one caller gets `Up` (the trial) and the others see `Ejected`
    /// until the trial's outcome is recorded, or until [`TRIAL_TIMEOUT_MS`] passes without one.
    #[inline]
    pub fn check(&self) -> Availability {
        if !self.active_healthy.load(Ordering::Relaxed) {
            return Availability::Unhealthy;
        }
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until == 0 {
            return Availability::Up;
        }
        self.check_ejected(until, now_ms())
    }

    /// [`Self::check`] for an ejected upstream, at time `now`.
    fn check_ejected(&self, until: u64, now: u64) -> Availability {
        if now < until {
            return Availability::Ejected;
        }
        let taken = self.trial_at.load(Ordering::Relaxed);
        let free = taken == 0 || now.saturating_sub(taken) >= TRIAL_TIMEOUT_MS;
        if free
            && self
                .trial_at
                .compare_exchange(taken, now.max(1), Ordering::AcqRel, Ordering::Relaxed)
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

    /// Records a request that got an answer the upstream is not blamed for. Ends an ejection
    /// only once its cool-off is over (the trial, or a request that raced it): a request that
    /// was already in flight when the upstream was ejected proves nothing.
    #[inline]
    pub fn record_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until != 0 && now_ms() >= until {
            self.clear_ejection();
            tracing::info!(upstream = %self.name, "upstream back in service after trial request");
        }
    }

    /// Records a failure (connect error, timeout, reset, or a 5xx when the upstream opts in);
    /// ejects after `consecutive_failures` in a row, or at once when the trial after a cool-off
    /// fails. Failures during a cool-off (requests that were already in flight) are ignored, so
    /// they cannot stretch the next cool-off. Does nothing when `consecutive_failures` is 0.
    pub fn record_failure(&self, policy: &OutlierFile) {
        if policy.consecutive_failures == 0 {
            return;
        }
        let until = self.ejected_until.load(Ordering::Relaxed);
        let now = now_ms();
        if until != 0 && now < until {
            return;
        }
        let in_trial = until != 0;
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if in_trial || n >= policy.consecutive_failures {
            let k = self.ejections.fetch_add(1, Ordering::Relaxed).min(16);
            let cool = policy
                .base_ejection_ms
                .saturating_mul(1u64 << k)
                .min(policy.max_ejection_ms);
            self.ejected_until
                .store(now + cool.max(1), Ordering::Relaxed);
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.trial_at.store(0, Ordering::Relaxed);
            METRICS.ejections.with_label_values(&[&self.name]).inc();
            tracing::warn!(upstream = %self.name, cool_off_ms = cool, ejections = k + 1, "upstream ejected");
        }
    }

    fn clear_ejection(&self) {
        self.ejected_until.store(0, Ordering::Relaxed);
        self.ejections.store(0, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.trial_at.store(0, Ordering::Relaxed);
    }

    /// Sets the active checks' verdict (called by [`active`] after `healthy`/`unhealthy` checks
    /// in a row, and with `true` when checks stop); exports it as
    /// `switchyard_upstream_healthy{upstream}` and logs changes with `detail` (the last check's
    /// outcome). Turning healthy also ends a passive ejection: checks that pass are better
    /// evidence than the cool-off clock, and a recovered backend should get traffic back after
    /// `healthy` checks, not after a cool-off that grew while it was down.
    pub fn set_active_healthy(&self, healthy: bool, detail: &str) {
        let was = self.active_healthy.swap(healthy, Ordering::Relaxed);
        METRICS
            .upstream_healthy
            .with_label_values(&[&self.name])
            .set(i64::from(healthy));
        if was != healthy {
            if healthy {
                if self.ejected_until.load(Ordering::Relaxed) != 0 {
                    self.clear_ejection();
                }
                tracing::info!(upstream = %self.name, check = detail, "upstream healthy");
            } else {
                tracing::warn!(upstream = %self.name, check = detail, "upstream unhealthy");
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
        s.set_active_healthy(false, "test");
        assert_eq!(s.check(), Availability::Unhealthy);
        s.set_active_healthy(true, "test");
        assert_eq!(s.check(), Availability::Up);
    }

    #[test]
    fn in_flight_outcomes_during_cool_off_change_nothing() {
        let s = UpstreamState::new("z");
        let p = OutlierFile {
            consecutive_failures: 1,
            count_5xx: false,
            base_ejection_ms: 10_000,
            max_ejection_ms: 60_000,
        };
        s.record_failure(&p);
        assert_eq!(s.check(), Availability::Ejected);
        let until = s.ejected_until.load(Ordering::Relaxed);
        // Requests already in flight when it was ejected fail too: no longer cool-off.
        s.record_failure(&p);
        s.record_failure(&p);
        assert_eq!(s.ejected_until.load(Ordering::Relaxed), until);
        assert_eq!(s.ejections.load(Ordering::Relaxed), 1);
        // Nor does one that succeeds end the ejection early.
        s.record_success();
        assert_eq!(s.check(), Availability::Ejected);
    }

    #[test]
    fn lost_trial_frees_the_slot() {
        let s = UpstreamState::new("t");
        let p = OutlierFile {
            consecutive_failures: 1,
            count_5xx: false,
            base_ejection_ms: 1,
            max_ejection_ms: 1,
        };
        s.record_failure(&p);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(s.check(), Availability::Up, "the trial");
        assert_eq!(s.check(), Availability::Ejected);
        // The trial's client went away: nothing was recorded. Once the trial timeout passes,
        // another request may be the trial.
        let until = s.ejected_until.load(Ordering::Relaxed);
        let later = now_ms() + TRIAL_TIMEOUT_MS;
        assert_eq!(
            s.check_ejected(until, later),
            Availability::Up,
            "a new trial"
        );
        assert_eq!(s.check_ejected(until, later), Availability::Ejected);
    }

    #[test]
    fn recovery_by_active_checks_ends_ejection() {
        let s = UpstreamState::new("r");
        let p = OutlierFile {
            consecutive_failures: 1,
            count_5xx: false,
            base_ejection_ms: 60_000,
            max_ejection_ms: 60_000,
        };
        s.record_failure(&p);
        s.set_active_healthy(false, "down");
        assert_eq!(s.check(), Availability::Unhealthy);
        s.set_active_healthy(true, "up");
        assert_eq!(s.check(), Availability::Up);
    }
}
