//! History in memory for the dashboard's charts: per route and per upstream, one sample every
//! [`STEP_MS`] for the last [`SLOTS`] steps (16 minutes), served by `GET /v1/series`.
//!
//! The request path does nothing for it. A timer on the control runtime ([`run`]) reads the
//! counters and histograms the proxy already keeps (through each route's cached handles, only
//! those the request path has resolved) and
//! stores the difference since the previous reading: requests, 5xx answers, fallbacks and the
//! p50/p99 latency of that step, interpolated within the histogram's buckets as Prometheus'
//! `histogram_quantile` does. Hold and release are kept as [`Event`]s beside them.
//!
//! Memory is fixed by constants, not by traffic: a route's ring is allocated when it first has
//! a request and dropped once its last request leaves the window. At most [`MAX_ROUTES`]
//! routes (each with at most [`MAX_UPSTREAMS_PER_ROUTE`] per-upstream request rings) and
//! [`MAX_UPSTREAMS`] upstreams are kept; [`bound_bytes`] is the ceiling, [`SeriesStore::bytes`]
//! what is held now. Routes beyond the cap are not recorded (counted in `dropped_routes`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use parking_lot::Mutex;
use prometheus::core::{Collector, Metric};
use serde::{Deserialize, Serialize};

use super::{traffic, CODE_CLASSES};
use crate::health::Availability;
use crate::routing::{RouteTable, TableStore};

/// Milliseconds per sample.
pub const STEP_MS: u64 = 2_000;
/// Samples kept per series: 480 x 2 s = 16 minutes.
pub const SLOTS: usize = 480;
/// Most routes with a series; further routes are not recorded until one leaves the window.
pub const MAX_ROUTES: usize = 1024;
/// Most upstreams with a series.
pub const MAX_UPSTREAMS: usize = 256;
/// Most upstreams a route's request rate is split by (later ones count in the route's total).
pub const MAX_UPSTREAMS_PER_ROUTE: usize = 8;
/// Most hold/release events kept.
pub const MAX_EVENTS: usize = 256;

/// Why a series query was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SeriesError {
    #[error("since={0:?} is not a time in milliseconds since the Unix epoch")]
    BadSince(String),
    #[error("no route {0:?} in the table or in the series")]
    UnknownRoute(String),
}

/// The ceiling of the store's memory: every ring of every series at its cap, in bytes.
pub const fn bound_bytes() -> usize {
    MAX_ROUTES
        * (SLOTS * std::mem::size_of::<RouteSlot>()
            + MAX_UPSTREAMS_PER_ROUTE * SLOTS * std::mem::size_of::<u32>())
        + MAX_UPSTREAMS * SLOTS * std::mem::size_of::<UpstreamSlot>()
}

/// One step of one route.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct RouteSlot {
    requests: u32,
    errors: u32,
    fallbacks: u32,
    p50_ms: f32,
    p99_ms: f32,
}

/// One step of one upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct UpstreamSlot {
    requests: u32,
    errors: u32,
    p50_ms: f32,
    p99_ms: f32,
    /// [`STATES`] index; 0 = no sample.
    state: u8,
}

/// Names of the upstream state codes in [`UpstreamSeries::state`].
pub const STATES: [&str; 4] = ["none", "up", "unhealthy", "ejected"];

fn state_code(a: Availability) -> u8 {
    match a {
        Availability::Up => 1,
        Availability::Unhealthy => 2,
        Availability::Ejected => 3,
    }
}

/// A fixed ring of per-step values indexed by absolute step number.
struct Ring<T> {
    buf: Box<[T]>,
    /// Step number of the newest value.
    newest: u64,
}

impl<T: Copy + Default> Ring<T> {
    fn new(step: u64) -> Ring<T> {
        Ring {
            buf: vec![T::default(); SLOTS].into_boxed_slice(),
            newest: step,
        }
    }

    fn put(&mut self, step: u64, v: T) {
        if step > self.newest {
            let gap = (step - self.newest).min(SLOTS as u64);
            for s in (step + 1 - gap)..step {
                self.buf[(s % SLOTS as u64) as usize] = T::default();
            }
            self.newest = step;
        } else if self.newest - step >= SLOTS as u64 {
            return;
        }
        self.buf[(step % SLOTS as u64) as usize] = v;
    }

    fn get(&self, step: u64) -> T {
        if step > self.newest || self.newest - step >= SLOTS as u64 {
            return T::default();
        }
        self.buf[(step % SLOTS as u64) as usize]
    }

    fn bytes(&self) -> usize {
        std::mem::size_of_val(&*self.buf)
    }
}

struct RouteRings {
    ring: Ring<RouteSlot>,
    by_upstream: Vec<(Arc<str>, Ring<u32>)>,
    /// Last step with a request or a fallback.
    active: u64,
}

struct UpstreamRings {
    ring: Ring<UpstreamSlot>,
    /// Last step the upstream was in the table.
    present: u64,
}

/// What happened at a point in time, drawn as a marker on every chart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The same time, RFC 3339 UTC.
    pub time: String,
    /// `version` (a table change), `hold`, `release` or `hold_expired` (the hold's deadline
    /// passed without a release).
    pub kind: String,
    /// The table version a `version` event made live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For a version: `load`, `patch`, `rollback`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// For a version: what changed, in one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Routes held or released.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    /// For a hold: its longest duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<u64>,
}

/// One route's samples in a [`SeriesView`], parallel to its time axis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteSeries {
    pub route: String,
    /// Requests answered per step (any status).
    pub requests: Vec<u32>,
    /// 5xx answers per step (from the upstream or from switchyard).
    pub errors_5xx: Vec<u32>,
    /// Requests moved from one upstream to another per step.
    pub fallbacks: Vec<u32>,
    /// Median latency per step in ms; `null` for a step without requests.
    pub p50_ms: Vec<Option<f32>>,
    /// 99th percentile latency per step in ms; `null` for a step without requests.
    pub p99_ms: Vec<Option<f32>>,
    /// Requests per step by the upstream that answered.
    pub by_upstream: std::collections::BTreeMap<String, Vec<u32>>,
}

/// One upstream's samples in a [`SeriesView`], over all routes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpstreamSeries {
    pub upstream: String,
    pub requests: Vec<u32>,
    pub errors_5xx: Vec<u32>,
    pub p50_ms: Vec<Option<f32>>,
    pub p99_ms: Vec<Option<f32>>,
    /// Health per step as an index into [`SeriesView::states`]: 0 none (not in the table),
    /// 1 up, 2 unhealthy (active checks), 3 ejected (passive).
    pub state: Vec<u8>,
}

/// The answer of `GET /v1/series`: every array has one value per step, the first covering
/// `from_ms .. from_ms + step_ms`, the last ending at `to_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesView {
    pub step_ms: u64,
    /// Most steps kept.
    pub slots: usize,
    pub from_ms: u64,
    pub to_ms: u64,
    pub now_ms: u64,
    /// Names of the upstream state codes.
    pub states: Vec<String>,
    pub routes: Vec<RouteSeries>,
    pub upstreams: Vec<UpstreamSeries>,
    /// Table versions, holds and releases in `from_ms..=now_ms`, oldest first.
    pub events: Vec<Event>,
    /// Route samples not recorded because [`MAX_ROUTES`] routes already had a series.
    pub dropped_routes: u64,
    /// Bytes the store holds now, and its fixed ceiling.
    pub memory_bytes: usize,
    pub memory_bound_bytes: usize,
}

impl SeriesView {
    /// Steps on the time axis (the length of every array).
    pub fn steps(&self) -> usize {
        (self.to_ms.saturating_sub(self.from_ms) / self.step_ms.max(1)) as usize
    }
}

impl RouteSeries {
    /// A route without a request in `steps` steps.
    pub fn zeros(route: &str, steps: usize) -> RouteSeries {
        RouteSeries {
            route: route.to_string(),
            requests: vec![0; steps],
            errors_5xx: vec![0; steps],
            fallbacks: vec![0; steps],
            p50_ms: vec![None; steps],
            p99_ms: vec![None; steps],
            by_upstream: Default::default(),
        }
    }
}

/// One step's figures for one route, as the sampler computed them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteSample {
    pub route: Arc<str>,
    pub requests: u32,
    pub errors: u32,
    pub fallbacks: u32,
    pub p50_ms: f32,
    pub p99_ms: f32,
    pub by_upstream: Vec<(Arc<str>, u32)>,
}

/// One step's figures for one upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamSample {
    pub upstream: Arc<str>,
    pub requests: u32,
    pub errors: u32,
    pub p50_ms: f32,
    pub p99_ms: f32,
    pub state: Availability,
}

/// Everything one step recorded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub routes: Vec<RouteSample>,
    pub upstreams: Vec<UpstreamSample>,
}

/// The rings. Written by the sampler once per step, read by `GET /v1/series`.
#[derive(Default)]
pub struct SeriesStore {
    routes: HashMap<Arc<str>, RouteRings>,
    upstreams: HashMap<Arc<str>, UpstreamRings>,
    events: VecDeque<Event>,
    /// First and newest step recorded.
    first: Option<u64>,
    newest: Option<u64>,
    dropped_routes: u64,
}

/// The process's series.
pub static SERIES: LazyLock<Mutex<SeriesStore>> = LazyLock::new(Default::default);

impl SeriesStore {
    /// Stores the sample of step `step` (the step covering `step * STEP_MS ..`): creates the
    /// rings of routes seen for the first time, drops those idle for a whole window.
    pub fn record(&mut self, step: u64, sample: &Sample) {
        self.newest = Some(self.newest.map_or(step, |n| n.max(step)));
        self.first = Some(self.first.map_or(step, |f| f.min(step)));
        let window = SLOTS as u64;
        self.routes.retain(|_, r| r.active + window > step);
        self.upstreams.retain(|_, u| u.present + window > step);
        for s in &sample.routes {
            let busy = s.requests > 0 || s.fallbacks > 0;
            if !self.routes.contains_key(&s.route) {
                if !busy {
                    continue;
                }
                if self.routes.len() >= MAX_ROUTES {
                    self.dropped_routes += 1;
                    continue;
                }
                self.routes.insert(
                    s.route.clone(),
                    RouteRings {
                        ring: Ring::new(step),
                        by_upstream: Vec::new(),
                        active: step,
                    },
                );
            }
            let Some(r) = self.routes.get_mut(&s.route) else {
                continue;
            };
            if busy {
                r.active = step;
            }
            r.ring.put(
                step,
                RouteSlot {
                    requests: s.requests,
                    errors: s.errors,
                    fallbacks: s.fallbacks,
                    p50_ms: s.p50_ms,
                    p99_ms: s.p99_ms,
                },
            );
            for (u, n) in &s.by_upstream {
                match r.by_upstream.iter().position(|(name, _)| name == u) {
                    Some(i) => r.by_upstream[i].1.put(step, *n),
                    None if *n > 0 && r.by_upstream.len() < MAX_UPSTREAMS_PER_ROUTE => {
                        let mut ring = Ring::new(step);
                        ring.put(step, *n);
                        r.by_upstream.push((u.clone(), ring));
                    }
                    None => {}
                }
            }
        }
        for s in &sample.upstreams {
            if !self.upstreams.contains_key(&s.upstream) {
                if self.upstreams.len() >= MAX_UPSTREAMS {
                    continue;
                }
                self.upstreams.insert(
                    s.upstream.clone(),
                    UpstreamRings {
                        ring: Ring::new(step),
                        present: step,
                    },
                );
            }
            if let Some(u) = self.upstreams.get_mut(&s.upstream) {
                u.present = step;
                u.ring.put(
                    step,
                    UpstreamSlot {
                        requests: s.requests,
                        errors: s.errors,
                        p50_ms: s.p50_ms,
                        p99_ms: s.p99_ms,
                        state: state_code(s.state),
                    },
                );
            }
        }
    }

    /// Adds a hold/release event, keeping the newest [`MAX_EVENTS`].
    pub fn push_event(&mut self, e: Event) {
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    /// Bytes held by the rings now.
    pub fn bytes(&self) -> usize {
        let r: usize = self
            .routes
            .values()
            .map(|r| r.ring.bytes() + r.by_upstream.iter().map(|(_, x)| x.bytes()).sum::<usize>())
            .sum();
        let u: usize = self.upstreams.values().map(|u| u.ring.bytes()).sum();
        r + u
    }

    /// Routes and upstreams with a series now.
    pub fn len(&self) -> (usize, usize) {
        (self.routes.len(), self.upstreams.len())
    }

    /// True before the first sample.
    pub fn is_empty(&self) -> bool {
        self.newest.is_none()
    }

    /// The samples of steps from the one containing `since_ms` (or the oldest kept) to the
    /// newest, for `routes` (all when `None`), with the hold/release events in that span.
    /// Version events are added by the caller, which reads the history.
    pub fn view(
        &self,
        since_ms: Option<u64>,
        routes: Option<&[String]>,
        now_ms: u64,
    ) -> SeriesView {
        let (first, last) = match self.newest {
            None => (now_ms / STEP_MS, None),
            Some(n) => {
                // Not before the first sample: a young process shows no made-up zeros.
                let oldest = (n + 1)
                    .saturating_sub(SLOTS as u64)
                    .max(self.first.unwrap_or(0));
                let first = since_ms.map_or(oldest, |s| (s / STEP_MS).clamp(oldest, n + 1));
                (first, Some(n))
            }
        };
        let steps: Vec<u64> = match last {
            Some(l) if first <= l => (first..=l).collect(),
            _ => Vec::new(),
        };
        let lat = |v: f32, n: u32| (n > 0).then_some(v);
        let mut out_routes: Vec<RouteSeries> = Vec::new();
        let mut names: Vec<&Arc<str>> = self.routes.keys().collect();
        names.sort();
        for name in names {
            if routes.is_some_and(|want| !want.iter().any(|w| **w == **name)) {
                continue;
            }
            let r = &self.routes[name];
            let slots: Vec<RouteSlot> = steps.iter().map(|&s| r.ring.get(s)).collect();
            out_routes.push(RouteSeries {
                route: name.to_string(),
                requests: slots.iter().map(|x| x.requests).collect(),
                errors_5xx: slots.iter().map(|x| x.errors).collect(),
                fallbacks: slots.iter().map(|x| x.fallbacks).collect(),
                p50_ms: slots.iter().map(|x| lat(x.p50_ms, x.requests)).collect(),
                p99_ms: slots.iter().map(|x| lat(x.p99_ms, x.requests)).collect(),
                by_upstream: r
                    .by_upstream
                    .iter()
                    .map(|(u, ring)| (u.to_string(), steps.iter().map(|&s| ring.get(s)).collect()))
                    .collect(),
            });
        }
        let mut ups: Vec<&Arc<str>> = self.upstreams.keys().collect();
        ups.sort();
        let out_ups = ups
            .into_iter()
            .map(|name| {
                let slots: Vec<UpstreamSlot> = steps
                    .iter()
                    .map(|&s| self.upstreams[name].ring.get(s))
                    .collect();
                UpstreamSeries {
                    upstream: name.to_string(),
                    requests: slots.iter().map(|x| x.requests).collect(),
                    errors_5xx: slots.iter().map(|x| x.errors).collect(),
                    p50_ms: slots.iter().map(|x| lat(x.p50_ms, x.requests)).collect(),
                    p99_ms: slots.iter().map(|x| lat(x.p99_ms, x.requests)).collect(),
                    state: slots.iter().map(|x| x.state).collect(),
                }
            })
            .collect();
        let from_ms = first * STEP_MS;
        let events_from = since_ms.unwrap_or(0).max(from_ms.min(now_ms));
        SeriesView {
            step_ms: STEP_MS,
            slots: SLOTS,
            from_ms,
            to_ms: (first + steps.len() as u64) * STEP_MS,
            now_ms,
            states: STATES.iter().map(|s| s.to_string()).collect(),
            routes: out_routes,
            upstreams: out_ups,
            events: self
                .events
                .iter()
                .filter(|e| e.time_ms >= events_from)
                .cloned()
                .collect(),
            dropped_routes: self.dropped_routes,
            memory_bytes: self.bytes(),
            memory_bound_bytes: bound_bytes(),
        }
    }

    /// The newest hold event not followed by a release or an expiry.
    fn open_hold(&self) -> Option<&Event> {
        self.events
            .iter()
            .rev()
            .find(|e| e.kind != "version")
            .filter(|e| e.kind == "hold")
    }

    /// Adds a `hold_expired` event when the open hold's deadline has passed by `now_ms`.
    pub fn expire_hold(&mut self, now_ms: u64) {
        let Some(h) = self.open_hold() else { return };
        let until = h.time_ms + h.max_ms.unwrap_or(0);
        if until <= now_ms {
            let routes = h.routes.clone();
            self.push_event(Event {
                time_ms: until,
                time: traffic::rfc3339(until),
                kind: "hold_expired".into(),
                version: None,
                actor: None,
                reason: None,
                action: None,
                summary: None,
                routes,
                max_ms: None,
            });
        }
    }
}

/// Records a hold started through the admin API (called by its handler).
pub fn note_hold<'a>(
    actor: &str,
    routes: impl IntoIterator<Item = &'a String>,
    max_ms: u64,
    reason: Option<&str>,
) {
    let now = traffic::now_ms();
    SERIES.lock().push_event(Event {
        time_ms: now,
        time: traffic::rfc3339(now),
        kind: "hold".into(),
        version: None,
        actor: Some(actor.to_string()),
        reason: reason.map(str::to_string),
        action: None,
        summary: None,
        routes: routes.into_iter().cloned().collect(),
        max_ms: Some(max_ms),
    });
}

/// Records a release through the admin API (called by its handler).
pub fn note_release<'a>(actor: &str, routes: impl IntoIterator<Item = &'a String>) {
    let now = traffic::now_ms();
    SERIES.lock().push_event(Event {
        time_ms: now,
        time: traffic::rfc3339(now),
        kind: "release".into(),
        version: None,
        actor: Some(actor.to_string()),
        reason: None,
        action: None,
        summary: None,
        routes: routes.into_iter().cloned().collect(),
        max_ms: None,
    });
}

/// A cumulative reading of one route/upstream pair.
#[derive(Clone, Default)]
struct Reading {
    codes: [u64; 5],
    /// Cumulative bucket counts, then the total count (the `+Inf` bucket).
    buckets: Vec<u64>,
}

/// Turns cumulative counters into per-step figures; keeps the previous reading of every pair.
#[derive(Default)]
pub struct Sampler {
    prev: HashMap<(Arc<str>, Arc<str>), Reading>,
    prev_fallbacks: HashMap<String, u64>,
    bounds: Vec<f64>,
}

impl Sampler {
    /// Reads every route/upstream pair of `table` and returns the change since the last call
    /// (the first call counts from process start). Runs on the control runtime.
    pub fn read(&mut self, table: &RouteTable) -> Sample {
        let fallbacks = self.fallbacks_delta();
        let mut sample = Sample::default();
        let nb = super::BUCKETS.len() + 1;
        // Per upstream index: requests, 5xx, bucket deltas.
        let mut per_up: Vec<(u64, u64, Vec<u64>)> =
            vec![(0, 0, vec![0; nb]); table.upstreams.len()];
        for route in &table.routes {
            let mut ups: Vec<usize> = route.dist.arms().iter().map(|a| a.upstream).collect();
            for &f in &route.dist.fallbacks {
                if !ups.contains(&f) {
                    ups.push(f);
                }
            }
            let mut rs = RouteSample {
                route: route.id.clone(),
                fallbacks: fallbacks.get(&*route.id).copied().unwrap_or(0) as u32,
                ..RouteSample::default()
            };
            let mut buckets = vec![0u64; nb];
            for ui in ups {
                let Some(up) = table.upstreams.get(ui) else {
                    continue;
                };
                // Only pairs the request path has used in this table: reading one does not
                // create it, so `/metrics` keeps listing only pairs that had requests. (Counts
                // of a pair first used later are still caught: `prev` is kept by name.)
                let Some(stats) = route.stats.get(ui).and_then(|c| c.get()) else {
                    continue;
                };
                let cur = read_pair(stats, &mut self.bounds);
                let key = (route.id.clone(), up.name.clone());
                let prev = self.prev.get(&key).cloned().unwrap_or_default();
                let codes: Vec<u64> = (0..CODE_CLASSES.len())
                    .map(|i| cur.codes[i].saturating_sub(prev.codes[i]))
                    .collect();
                let n: u64 = codes.iter().sum();
                let err = codes[4];
                for (i, b) in buckets.iter_mut().enumerate() {
                    let d = cur
                        .buckets
                        .get(i)
                        .copied()
                        .unwrap_or(0)
                        .saturating_sub(prev.buckets.get(i).copied().unwrap_or(0));
                    *b += d;
                    per_up[ui].2[i] += d;
                }
                per_up[ui].0 += n;
                per_up[ui].1 += err;
                rs.requests = rs.requests.saturating_add(n as u32);
                rs.errors = rs.errors.saturating_add(err as u32);
                rs.by_upstream.push((up.name.clone(), n as u32));
                self.prev.insert(key, cur);
            }
            rs.p50_ms = quantile_ms(&self.bounds, &buckets, 0.50);
            rs.p99_ms = quantile_ms(&self.bounds, &buckets, 0.99);
            sample.routes.push(rs);
        }
        for (i, up) in table.upstreams.iter().enumerate() {
            let (n, err, b) = &per_up[i];
            sample.upstreams.push(UpstreamSample {
                upstream: up.name.clone(),
                requests: *n as u32,
                errors: *err as u32,
                p50_ms: quantile_ms(&self.bounds, b, 0.50),
                p99_ms: quantile_ms(&self.bounds, b, 0.99),
                state: up.state.peek(),
            });
        }
        sample
    }

    /// Fallbacks per route since the previous call (from `switchyard_fallbacks_total`).
    fn fallbacks_delta(&mut self) -> HashMap<String, u64> {
        let mut now: HashMap<String, u64> = HashMap::new();
        for fam in super::METRICS.fallbacks.collect() {
            for m in fam.get_metric() {
                if let Some(r) = m.get_label().iter().find(|l| l.name() == "route") {
                    *now.entry(r.value().to_string()).or_default() +=
                        m.get_counter().get_value() as u64;
                }
            }
        }
        let delta = now
            .iter()
            .map(|(r, &n)| {
                let p = self.prev_fallbacks.get(r).copied().unwrap_or(0);
                (r.clone(), n.saturating_sub(p))
            })
            .collect();
        self.prev_fallbacks = now;
        delta
    }
}

/// The cumulative counts of one pair; fills `bounds` (bucket upper bounds, seconds) once.
fn read_pair(stats: &super::PairStats, bounds: &mut Vec<f64>) -> Reading {
    let codes = std::array::from_fn(|i| stats.codes[i].get());
    let m = stats.duration.metric();
    let h = m.get_histogram();
    if bounds.is_empty() {
        bounds.extend(h.get_bucket().iter().map(|b| b.upper_bound()));
    }
    let mut buckets: Vec<u64> = h
        .get_bucket()
        .iter()
        .map(|b| b.cumulative_count())
        .collect();
    buckets.push(h.get_sample_count());
    Reading { codes, buckets }
}

/// The `q` quantile in ms from cumulative bucket counts (the last entry is the total),
/// interpolated linearly within the bucket that holds it; 0 without observations. Beyond the
/// last finite bound the answer is that bound.
pub fn quantile_ms(bounds: &[f64], cumulative: &[u64], q: f64) -> f32 {
    let Some(&total) = cumulative.last() else {
        return 0.0;
    };
    if total == 0 {
        return 0.0;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    let mut lower = 0.0;
    for (i, &c) in cumulative.iter().enumerate() {
        let Some(&upper) = bounds.get(i) else {
            return (lower * 1000.0) as f32;
        };
        if c as f64 >= rank && c > below {
            let frac = (rank - below as f64) / (c - below) as f64;
            return ((lower + (upper - lower) * frac.clamp(0.0, 1.0)) * 1000.0) as f32;
        }
        below = c;
        lower = upper;
    }
    (lower * 1000.0) as f32
}

/// Samples every [`STEP_MS`] on the control runtime until the process ends; also moves the
/// per-host counters into their per-minute rings and notes a hold that ran out.
pub async fn run(store: Arc<TableStore>) {
    let mut sampler = Sampler::default();
    loop {
        let now = traffic::now_ms();
        let next = (now / STEP_MS + 1) * STEP_MS;
        tokio::time::sleep(Duration::from_millis(next - now)).await;
        let now = traffic::now_ms();
        // The step that just ended.
        let step = (now / STEP_MS).saturating_sub(1);
        let sample = sampler.read(&store.load());
        {
            let mut s = SERIES.lock();
            s.record(step, &sample);
            s.expire_hold(now);
        }
        traffic::HOSTS.tick(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, requests: u32, errors: u32) -> RouteSample {
        RouteSample {
            route: Arc::from(name),
            requests,
            errors,
            fallbacks: 0,
            p50_ms: 1.0,
            p99_ms: 9.0,
            by_upstream: vec![
                (Arc::from("a"), requests / 2),
                (Arc::from("b"), requests - requests / 2),
            ],
        }
    }

    fn upstream(name: &str) -> UpstreamSample {
        UpstreamSample {
            upstream: Arc::from(name),
            requests: 1,
            errors: 0,
            p50_ms: 1.0,
            p99_ms: 2.0,
            state: Availability::Up,
        }
    }

    #[test]
    fn view_lines_up_steps_and_fills_gaps() {
        let mut s = SeriesStore::default();
        s.record(
            100,
            &Sample {
                routes: vec![route("r", 10, 1)],
                upstreams: vec![upstream("a")],
            },
        );
        // Steps 101 and 102 missing (e.g. the timer was late): zeros.
        s.record(
            103,
            &Sample {
                routes: vec![route("r", 4, 0)],
                upstreams: vec![upstream("a")],
            },
        );
        let v = s.view(None, None, 104 * STEP_MS);
        assert_eq!(v.from_ms, 100 * STEP_MS);
        assert_eq!(v.to_ms, 104 * STEP_MS);
        let r = &v.routes[0];
        assert_eq!(r.requests, vec![10, 0, 0, 4]);
        assert_eq!(r.errors_5xx, vec![1, 0, 0, 0]);
        assert_eq!(r.p99_ms, vec![Some(9.0), None, None, Some(9.0)]);
        assert_eq!(r.by_upstream["a"], vec![5, 0, 0, 2]);
        assert_eq!(r.by_upstream["b"], vec![5, 0, 0, 2]);
        assert_eq!(v.upstreams[0].state, vec![1, 0, 0, 1]);
        let v = s.view(
            Some(102 * STEP_MS + 5),
            Some(&["r".to_string()]),
            104 * STEP_MS,
        );
        assert_eq!(v.routes[0].requests, vec![0, 4]);
        assert_eq!(v.from_ms, 102 * STEP_MS);
        let v = s.view(None, Some(&["x".to_string()]), 104 * STEP_MS);
        assert!(v.routes.is_empty());
    }

    /// A long run with a fake clock: 12,000 steps (6.7 hours, 25 windows), routes coming and going, more
    /// routes than the cap: the memory never passes the bound and idle routes leave.
    #[test]
    fn stays_within_bound_over_a_long_run() {
        let mut s = SeriesStore::default();
        let mut seed: u64 = 7;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut max_bytes = 0;
        for step in 0..12_000u64 {
            let n = (rnd() % 40) as usize;
            let routes = (0..n)
                .map(|_| {
                    let id = rnd() % 3000;
                    let mut r = route(&format!("route-{id}"), (rnd() % 1000) as u32, 1);
                    r.by_upstream = (0..12).map(|u| (Arc::from(format!("u{u}")), 1)).collect();
                    r
                })
                .collect();
            let ups = (0..(rnd() % 5))
                .map(|i| upstream(&format!("up-{}", (rnd() % 500) + i)))
                .collect();
            s.record(
                step,
                &Sample {
                    routes,
                    upstreams: ups,
                },
            );
            let b = s.bytes();
            max_bytes = max_bytes.max(b);
            assert!(b <= bound_bytes(), "step {step}: {b} > {}", bound_bytes());
            let (r, u) = s.len();
            assert!(r <= MAX_ROUTES && u <= MAX_UPSTREAMS);
            if step % 1000 == 0 {
                for rr in s.routes.values() {
                    assert_eq!(rr.ring.buf.len(), SLOTS);
                    assert!(rr.by_upstream.len() <= MAX_UPSTREAMS_PER_ROUTE);
                }
            }
        }
        assert!(s.dropped_routes > 0, "the cap was reached");
        assert!(max_bytes > bound_bytes() / 2, "{max_bytes}");
        // Quiet for a window: everything leaves.
        s.record(12_000 + SLOTS as u64, &Sample::default());
        assert_eq!(s.len(), (0, 0));
        assert_eq!(s.bytes(), 0);
    }

    #[test]
    fn events_bounded_and_hold_expiry() {
        let mut s = SeriesStore::default();
        for i in 0..(MAX_EVENTS + 10) {
            s.push_event(Event {
                time_ms: i as u64,
                time: String::new(),
                kind: "release".into(),
                version: None,
                actor: None,
                reason: None,
                action: None,
                summary: None,
                routes: vec![],
                max_ms: None,
            });
        }
        assert_eq!(s.events.len(), MAX_EVENTS);
        s.push_event(Event {
            time_ms: 1_000,
            time: String::new(),
            kind: "hold".into(),
            version: None,
            actor: Some("admin".into()),
            reason: None,
            action: None,
            summary: None,
            routes: vec!["r".into()],
            max_ms: Some(500),
        });
        s.expire_hold(1_400);
        assert_eq!(s.events.back().unwrap().kind, "hold");
        s.expire_hold(1_600);
        let e = s.events.back().unwrap();
        assert_eq!((e.kind.as_str(), e.time_ms), ("hold_expired", 1_500));
        s.expire_hold(2_000);
        assert_eq!(
            s.events.iter().filter(|e| e.kind == "hold_expired").count(),
            1
        );
    }

    #[test]
    fn quantiles_interpolate() {
        let bounds = [0.001, 0.01, 0.1];
        // 100 observations: 50 under 1 ms, 49 in 1..10 ms, 1 in 10..100 ms.
        let c = [50, 99, 100, 100];
        assert!((quantile_ms(&bounds, &c, 0.5) - 1.0).abs() < 1e-6);
        let p99 = quantile_ms(&bounds, &c, 0.99);
        assert!((p99 - 10.0).abs() < 1e-4, "{p99}");
        assert!(quantile_ms(&bounds, &c, 0.995) > 10.0);
        assert_eq!(quantile_ms(&bounds, &[0, 0, 0, 0], 0.5), 0.0);
        // Everything beyond the last bound: the last bound.
        assert_eq!(quantile_ms(&bounds, &[0, 0, 0, 5], 0.5), 100.0);
    }

    #[test]
    fn bound_is_as_documented() {
        assert_eq!(std::mem::size_of::<RouteSlot>(), 20);
        assert_eq!(std::mem::size_of::<UpstreamSlot>(), 20);
        // 1024 x (480 x 20 + 8 x 480 x 4) + 256 x 480 x 20
        assert_eq!(bound_bytes(), 1024 * (9_600 + 15_360) + 256 * 9_600);
    }
}
