//! Requests per Host: the evidence that an edge has drained after a DNS move. A fixed table of
//! [`TRACKED_HOSTS_MAX`] hosts plus "other", each with a per-minute count for the last 72 hours,
//! served as [`TrafficView`] by `GET /v1/traffic` and read by `switchyard traffic`, the
//! dashboard and the plans' `wait_drain` step.
//!
//! The request path ([`HostTable::record`]) only hashes the host, probes a small immutable index
//! (one `ArcSwap` load) and adds one to an atomic: no lock and no allocation for a known host.
//! A new host takes the slow path once (a lock, a new index). The control runtime's timer
//! ([`HostTable::tick`]) moves those atomics into the per-minute rings every few seconds.
//!
//! Which hosts get a slot: the first [`TRACKED_HOSTS_MAX`] distinct hosts seen. A host gives its
//! slot up only when the table is full and it has been idle for [`MINUTES`] minutes (nothing in
//! any window this API answers), or when it is a stray: fewer than [`STRAY_MAX`] requests ever
//! and idle for [`STRAY_IDLE_MIN`] minutes (scanners sending made-up Hosts). Its counts then
//! move to "other", minute by minute, so the hosts plus "other" always add up to every request.
//! While the table is full, new hosts are counted in "other". An empty Host, or one longer than
//! 253 bytes, is counted in "other".

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Hosts with a slot of their own; the rest are counted as "other".
pub const TRACKED_HOSTS_MAX: usize = 128;
/// Minutes of per-minute counts kept per host: 72 hours.
pub const MINUTES: usize = 72 * 60;
/// Longest window `GET /v1/traffic` answers.
pub const MAX_WINDOW: Duration = Duration::from_secs(MINUTES as u64 * 60);
/// Default window of `GET /v1/traffic` and `switchyard traffic`.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Most entries in [`Traffic::per_minute`].
pub const PER_MINUTE_MAX: usize = 60;
/// A host with fewer requests than this ever may lose its slot to a new host (see module doc).
pub const STRAY_MAX: u64 = 16;
/// Minutes a stray host must be idle before it loses its slot.
pub const STRAY_IDLE_MIN: u64 = 10;
/// Longest host name counted on its own (DNS limit).
const MAX_HOST_LEN: usize = 253;
/// Index of "other" in the pending counters.
const OTHER: usize = TRACKED_HOSTS_MAX;
/// Index capacity: twice the hosts, a power of two, so probing always meets an empty entry.
const INDEX_CAP: usize = (TRACKED_HOSTS_MAX * 2).next_power_of_two();
const MINUTE_MS: u64 = 60_000;

/// Why a traffic query was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TrafficError {
    #[error("window {0:?}: expected a duration like 30s, 15m, 48h or 2d")]
    BadWindow(String),
    #[error("window {0:?} is longer than the 72h kept")]
    WindowTooLong(String),
}

/// Counts of one host (or of "other") as `GET /v1/traffic` answers them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Traffic {
    /// Requests since the process started (for a host: since it got its slot).
    pub requests: u64,
    /// Requests in the window: every minute that overlaps the window is counted whole, so this
    /// may include up to one minute before the window starts, never less than the window.
    pub in_window: u64,
    /// Time of the last request seen (RFC 3339 UTC, to within the few seconds of the timer);
    /// `null` = none since the process started.
    pub last_seen: Option<String>,
    /// Milliseconds since [`Traffic::last_seen`]; `null` when never seen.
    pub last_seen_ms_ago: Option<u64>,
    /// Requests per minute for the last minutes of the window (at most 60), oldest first; the
    /// last entry is the current, unfinished minute.
    pub per_minute: Vec<u64>,
    /// Since when this entry has been counted (RFC 3339 UTC): `in_window` is exact for windows
    /// starting after it. For "other", the process start.
    pub tracked_since: String,
}

/// One host's entry in [`TrafficView`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostTraffic {
    /// The Host header as matched: lowercase, without port or trailing dot.
    pub host: String,
    #[serde(flatten)]
    pub traffic: Traffic,
}

/// The answer of `GET /v1/traffic?window=DURATION`: shared by the server, the CLI, the
/// dashboard and the plans' `wait_drain` step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrafficView {
    /// The window asked for, in milliseconds.
    pub window_ms: u64,
    /// Tracked hosts, most requests in the window first (then most requests, then by name).
    pub hosts: Vec<HostTraffic>,
    /// Every request not counted under a host above.
    pub other: Traffic,
    /// Hosts with a slot of their own ([`TRACKED_HOSTS_MAX`]).
    pub tracked_hosts_max: usize,
}

impl TrafficView {
    /// The entry of `host` (lowercase, no port), if it has a slot.
    pub fn host(&self, host: &str) -> Option<&Traffic> {
        self.hosts
            .iter()
            .find(|h| h.host == host)
            .map(|h| &h.traffic)
    }
}

/// Parses a window: a whole number followed by `ms`, `s`, `m`, `h` or `d` (`30s`, `15m`,
/// `48h`); at most [`MAX_WINDOW`], at least one millisecond.
pub fn parse_window(s: &str) -> Result<Duration, TrafficError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| TrafficError::BadWindow(s.to_string()))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(MINUTE_MS),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => None,
    }
    .filter(|&ms| ms > 0)
    .ok_or_else(|| TrafficError::BadWindow(s.to_string()))?;
    let d = Duration::from_millis(ms);
    if d > MAX_WINDOW {
        return Err(TrafficError::WindowTooLong(s.to_string()));
    }
    Ok(d)
}

/// A counter alone on its cache line, so two threads counting different hosts do not contend.
#[repr(align(64))]
#[derive(Default)]
struct Pending(AtomicU64);

/// One index entry: the host's hash, name and slot.
#[derive(Clone)]
struct Entry {
    hash: u64,
    host: Arc<str>,
    slot: usize,
}

/// Immutable open-addressing map host -> slot, replaced whole when a host comes or goes.
struct Index {
    entries: Box<[Option<Entry>]>,
}

impl Index {
    fn build<'a>(hosts: impl Iterator<Item = (&'a Arc<str>, usize)>) -> Index {
        let mut entries = vec![None; INDEX_CAP].into_boxed_slice();
        for (host, slot) in hosts {
            let hash = hash(host.as_bytes());
            let mut i = hash as usize & (INDEX_CAP - 1);
            while entries[i].is_some() {
                i = (i + 1) & (INDEX_CAP - 1);
            }
            entries[i] = Some(Entry {
                hash,
                host: host.clone(),
                slot,
            });
        }
        Index { entries }
    }

    #[inline]
    fn get(&self, host: &str) -> Option<usize> {
        let h = hash(host.as_bytes());
        let mut i = h as usize & (INDEX_CAP - 1);
        // At most TRACKED_HOSTS_MAX of INDEX_CAP entries are used: an empty one ends the probe.
        while let Some(e) = &self.entries[i] {
            if e.hash == h && *e.host == *host {
                return Some(e.slot);
            }
            i = (i + 1) & (INDEX_CAP - 1);
        }
        None
    }
}

/// FxHash over 8-byte words: a few instructions for a typical host name.
#[inline]
fn hash(b: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = b.len() as u64;
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    }
    h
}

/// Per-minute counts for the last [`MINUTES`] minutes, in a ring indexed by absolute minute.
struct MinuteRing {
    counts: Box<[u32]>,
    /// Absolute minute (ms since the epoch / 60,000) of the newest bucket.
    newest: u64,
}

impl MinuteRing {
    fn new(minute: u64) -> MinuteRing {
        MinuteRing {
            counts: vec![0; MINUTES].into_boxed_slice(),
            newest: minute,
        }
    }

    /// Moves the newest bucket forward to `minute`, zeroing the minutes skipped.
    fn advance(&mut self, minute: u64) {
        if minute <= self.newest {
            return;
        }
        let gap = (minute - self.newest).min(MINUTES as u64);
        for m in (minute + 1 - gap)..=minute {
            self.counts[(m % MINUTES as u64) as usize] = 0;
        }
        self.newest = minute;
    }

    /// Adds `n` to `minute` (a minute older than the ring, or one from a clock gone back, goes
    /// to the oldest kept or the newest bucket).
    fn add(&mut self, minute: u64, n: u64) {
        self.advance(minute);
        let oldest = (self.newest + 1).saturating_sub(MINUTES as u64);
        let m = minute.clamp(oldest, self.newest);
        let c = &mut self.counts[(m % MINUTES as u64) as usize];
        *c = c.saturating_add(n.min(u64::from(u32::MAX)) as u32);
    }

    /// Count of `minute`, 0 outside the ring.
    fn get(&self, minute: u64) -> u64 {
        if minute > self.newest || self.newest - minute >= MINUTES as u64 {
            return 0;
        }
        u64::from(self.counts[(minute % MINUTES as u64) as usize])
    }

    /// Sum of the minutes `from..=to`.
    fn sum(&self, from: u64, to: u64) -> u64 {
        (from..=to).map(|m| self.get(m)).sum()
    }

    fn merge_into(&self, other: &mut MinuteRing) {
        let oldest = self.newest.saturating_sub(MINUTES as u64 - 1);
        for m in oldest..=self.newest {
            let n = self.get(m);
            if n > 0 {
                other.add(m, n);
            }
        }
    }
}

/// What is known of one host (or of "other"), kept under the lock.
struct Counts {
    total: u64,
    last_seen_ms: Option<u64>,
    since_ms: u64,
    minutes: MinuteRing,
}

impl Counts {
    fn new(now_ms: u64) -> Counts {
        Counts {
            total: 0,
            last_seen_ms: None,
            since_ms: now_ms,
            minutes: MinuteRing::new(now_ms / MINUTE_MS),
        }
    }

    fn add(&mut self, n: u64, now_ms: u64) {
        self.minutes.advance(now_ms / MINUTE_MS);
        if n > 0 {
            self.total += n;
            self.minutes.add(now_ms / MINUTE_MS, n);
            self.last_seen_ms = Some(self.last_seen_ms.map_or(now_ms, |l| l.max(now_ms)));
        }
    }

    fn view(&self, now_ms: u64, window_ms: u64) -> Traffic {
        let now_min = now_ms / MINUTE_MS;
        let first = now_ms.saturating_sub(window_ms) / MINUTE_MS;
        let shown = (now_min - first + 1).min(PER_MINUTE_MAX as u64);
        Traffic {
            requests: self.total,
            in_window: self.minutes.sum(first, now_min),
            last_seen: self.last_seen_ms.map(rfc3339),
            last_seen_ms_ago: self.last_seen_ms.map(|l| now_ms.saturating_sub(l)),
            per_minute: ((now_min + 1 - shown)..=now_min)
                .map(|m| self.minutes.get(m))
                .collect(),
            tracked_since: rfc3339(self.since_ms),
        }
    }
}

/// Slots and their hosts, changed by new hosts, the timer and views.
struct State {
    hosts: Vec<Option<(Arc<str>, Counts)>>,
    free: Vec<usize>,
    /// Slots given up at the last tick: a request that loaded the old index may still count
    /// on them, so their counts go to "other" at the next tick before they are reused.
    quarantine: Vec<usize>,
    other: Counts,
}

/// The per-Host counters.
pub struct HostTable {
    index: ArcSwap<Index>,
    pending: Box<[Pending]>,
    /// Set when every slot is taken: unknown hosts go straight to "other" without the lock.
    full: AtomicBool,
    /// Time of the last tick or view: "tracked since" of a host given a slot meanwhile.
    clock_ms: AtomicU64,
    state: Mutex<State>,
}

/// The process's per-Host counters, fed by the proxy's `request_filter` phase.
pub static HOSTS: LazyLock<HostTable> = LazyLock::new(|| HostTable::new(now_ms()));

impl HostTable {
    /// An empty table whose "other" is counted from `now_ms`.
    pub fn new(now_ms: u64) -> HostTable {
        HostTable {
            index: ArcSwap::from_pointee(Index::build(std::iter::empty())),
            pending: (0..=TRACKED_HOSTS_MAX)
                .map(|_| Pending::default())
                .collect(),
            full: AtomicBool::new(false),
            clock_ms: AtomicU64::new(now_ms),
            state: Mutex::new(State {
                hosts: (0..TRACKED_HOSTS_MAX).map(|_| None).collect(),
                free: (0..TRACKED_HOSTS_MAX).rev().collect(),
                quarantine: Vec::new(),
                other: Counts::new(now_ms),
            }),
        }
    }

    /// Counts one request for `host` (lowercase, without port). Runs on the request path, once
    /// per request, where the proxy matches the request (the host is already normalised there).
    #[inline]
    pub fn record(&self, host: &str) {
        let slot = match self.index.load().get(host) {
            Some(s) => s,
            None => self.claim(host),
        };
        self.pending[slot].0.fetch_add(1, Ordering::Relaxed);
    }

    /// The slow path for a host not in the index: gives it a free slot, or "other".
    #[cold]
    fn claim(&self, host: &str) -> usize {
        if host.is_empty() || host.len() > MAX_HOST_LEN || self.full.load(Ordering::Relaxed) {
            return OTHER;
        }
        let mut st = self.state.lock();
        if let Some(s) = self.index.load().get(host) {
            return s;
        }
        let Some(slot) = st.free.pop() else {
            self.full.store(true, Ordering::Relaxed);
            return OTHER;
        };
        let since = self.clock_ms.load(Ordering::Relaxed);
        st.hosts[slot] = Some((Arc::from(host), Counts::new(since)));
        self.publish(&st);
        slot
    }

    fn publish(&self, st: &State) {
        let index = Index::build(
            st.hosts
                .iter()
                .enumerate()
                .filter_map(|(i, h)| h.as_ref().map(|(name, _)| (name, i))),
        );
        self.index.store(Arc::new(index));
    }

    /// Moves the counters into the per-minute rings and gives up slots as the module doc says.
    /// Runs on the control runtime's timer (every few seconds) and before every view.
    pub fn tick(&self, now_ms: u64) {
        let mut st = self.state.lock();
        self.drain(&mut st, now_ms);
        if !st.free.is_empty() {
            return;
        }
        let idle_all = MINUTES as u64 * MINUTE_MS;
        let idle_stray = STRAY_IDLE_MIN * MINUTE_MS;
        let mut evicted = Vec::new();
        for (i, h) in st.hosts.iter().enumerate() {
            if let Some((_, c)) = h {
                let idle = now_ms.saturating_sub(c.last_seen_ms.unwrap_or(c.since_ms));
                if idle >= idle_all || (c.total < STRAY_MAX && idle >= idle_stray) {
                    evicted.push(i);
                }
            }
        }
        if evicted.is_empty() {
            return;
        }
        for &i in &evicted {
            if let Some((host, c)) = st.hosts[i].take() {
                tracing::debug!(%host, requests = c.total, "per-host traffic: slot given up");
                st.other.total += c.total;
                c.minutes.merge_into(&mut st.other.minutes);
                if let Some(l) = c.last_seen_ms {
                    st.other.last_seen_ms = Some(st.other.last_seen_ms.map_or(l, |o| o.max(l)));
                }
            }
        }
        st.quarantine.extend(evicted);
        self.publish(&st);
    }

    fn drain(&self, st: &mut State, now_ms: u64) {
        self.clock_ms.fetch_max(now_ms, Ordering::Relaxed);
        let quarantined = std::mem::take(&mut st.quarantine);
        for &i in &quarantined {
            let n = self.pending[i].0.swap(0, Ordering::Relaxed);
            st.other.add(n, now_ms);
        }
        if !quarantined.is_empty() {
            st.free.extend(quarantined);
            self.full.store(false, Ordering::Relaxed);
        }
        for i in 0..TRACKED_HOSTS_MAX {
            let n = self.pending[i].0.swap(0, Ordering::Relaxed);
            match &mut st.hosts[i] {
                Some((_, c)) => c.add(n, now_ms),
                // Counted on a slot just emptied: belongs to "other".
                None => st.other.add(n, now_ms),
            }
        }
        let n = self.pending[OTHER].0.swap(0, Ordering::Relaxed);
        st.other.add(n, now_ms);
    }

    /// The counts over `window` at `now_ms` (drains the counters first, so a request counted
    /// just before is in the answer).
    pub fn view(&self, now_ms: u64, window: Duration) -> TrafficView {
        let window_ms = window.as_millis() as u64;
        let mut st = self.state.lock();
        self.drain(&mut st, now_ms);
        let mut hosts: Vec<HostTraffic> = st
            .hosts
            .iter()
            .flatten()
            .map(|(host, c)| HostTraffic {
                host: host.to_string(),
                traffic: c.view(now_ms, window_ms),
            })
            .collect();
        hosts.sort_by(|a, b| {
            (b.traffic.in_window, b.traffic.requests)
                .cmp(&(a.traffic.in_window, a.traffic.requests))
                .then_with(|| a.host.cmp(&b.host))
        });
        TrafficView {
            window_ms,
            hosts,
            other: st.other.view(now_ms, window_ms),
            tracked_hosts_max: TRACKED_HOSTS_MAX,
        }
    }

    /// Hosts with a slot now, and the bytes their counts take (for the notes on memory).
    pub fn footprint(&self) -> (usize, usize) {
        let st = self.state.lock();
        let n = st.hosts.iter().flatten().count();
        (n, (n + 1) * MINUTES * std::mem::size_of::<u32>())
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `ms` since the epoch as RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const T0: u64 = 1_800_000_000_000;

    /// The hosts with a slot, and their slots.
    fn tracked(table: &HostTable) -> HashMap<String, usize> {
        let st = table.state.lock();
        st.hosts
            .iter()
            .enumerate()
            .filter_map(|(i, h)| h.as_ref().map(|(n, _)| (n.to_string(), i)))
            .collect()
    }

    #[test]
    fn windows_parse() {
        assert_eq!(parse_window("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_window("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_window("48h"), Ok(Duration::from_secs(48 * 3600)));
        assert_eq!(parse_window("3d"), Ok(Duration::from_secs(72 * 3600)));
        assert_eq!(parse_window("250ms"), Ok(Duration::from_millis(250)));
        assert!(matches!(
            parse_window("73h"),
            Err(TrafficError::WindowTooLong(_))
        ));
        for bad in [
            "",
            "h",
            "10",
            "10x",
            "0s",
            "-5m",
            "1.5h",
            "99999999999999999999d",
        ] {
            assert!(
                matches!(parse_window(bad), Err(TrafficError::BadWindow(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn counts_per_host_minute_and_window() {
        let t = HostTable::new(T0);
        for _ in 0..5 {
            t.record("a.example");
        }
        t.record("b.example");
        t.record("");
        t.tick(T0 + 1_000);
        // 30 minutes later: 2 more for a.
        let later = T0 + 30 * MINUTE_MS;
        t.record("a.example");
        t.record("a.example");
        t.tick(later);
        let v = t.view(later, Duration::from_secs(15 * 60));
        assert_eq!(v.hosts[0].host, "a.example");
        assert_eq!(v.hosts[0].traffic.requests, 7);
        assert_eq!(v.hosts[0].traffic.in_window, 2);
        assert_eq!(v.hosts[0].traffic.per_minute.len(), 16);
        assert_eq!(v.hosts[0].traffic.per_minute.last(), Some(&2));
        assert_eq!(v.hosts[0].traffic.last_seen_ms_ago, Some(0));
        let b = v.host("b.example").unwrap();
        assert_eq!((b.requests, b.in_window), (1, 0));
        assert_eq!(b.last_seen_ms_ago, Some(30 * MINUTE_MS - 1_000));
        assert_eq!(v.other.requests, 1);
        let v = t.view(later, Duration::from_secs(3600));
        assert_eq!(v.host("a.example").unwrap().in_window, 7);
        assert_eq!(v.host("a.example").unwrap().per_minute.len(), 60);
        // A window that starts inside a minute counts that minute whole.
        let v = t.view(later + 59_000, Duration::from_secs(1));
        assert_eq!(v.host("a.example").unwrap().in_window, 2);
    }

    #[test]
    fn exact_over_72_hours_and_nothing_after() {
        let t = HostTable::new(T0);
        // One request every 10 minutes for 72 hours.
        let mut now = T0;
        for _ in 0..(72 * 6) {
            t.record("old-edge.example");
            t.tick(now);
            now += 10 * MINUTE_MS;
        }
        let end = now - 10 * MINUTE_MS;
        let v = t.view(end, MAX_WINDOW);
        assert_eq!(v.host("old-edge.example").unwrap().in_window, 72 * 6);
        let v = t.view(end, Duration::from_secs(48 * 3600));
        assert_eq!(v.host("old-edge.example").unwrap().in_window, 48 * 6 + 1);
        // 48 quiet hours later: nothing in the last 48 h, the total kept.
        let v = t.view(
            end + 48 * 3_600_000 + MINUTE_MS,
            Duration::from_secs(48 * 3600),
        );
        let h = v.host("old-edge.example").unwrap();
        assert_eq!((h.in_window, h.requests), (0, 72 * 6));
    }

    #[test]
    fn bounded_hosts_and_other_adds_up() {
        let t = HostTable::new(T0);
        let mut sent = 0u64;
        for i in 0..(TRACKED_HOSTS_MAX + 50) {
            let h = format!("h{i}.example");
            for _ in 0..20 {
                t.record(&h);
                sent += 1;
            }
        }
        t.record("h0.example");
        sent += 1;
        t.tick(T0 + 1_000);
        let v = t.view(T0 + 1_000, MAX_WINDOW);
        assert_eq!(v.hosts.len(), TRACKED_HOSTS_MAX);
        assert_eq!(v.other.requests, 50 * 20);
        let sum: u64 = v.hosts.iter().map(|h| h.traffic.requests).sum::<u64>() + v.other.requests;
        assert_eq!(sum, sent);
        assert_eq!(v.hosts[0].host, "h0.example");
        // Busy hosts keep their slots while idle less than 72 h.
        t.tick(T0 + 71 * 3_600_000);
        assert_eq!(tracked(&t).len(), TRACKED_HOSTS_MAX);
        // After 72 idle hours the slots free up; the counts move to "other".
        t.tick(T0 + 72 * 3_600_000 + 1_000);
        assert!(tracked(&t).is_empty());
        t.tick(T0 + 72 * 3_600_000 + 2_000);
        t.record("new.example");
        let v = t.view(T0 + 72 * 3_600_000 + 3_000, MAX_WINDOW);
        assert_eq!(v.hosts.len(), 1);
        assert_eq!(v.other.requests, sent);
    }

    #[test]
    fn strays_give_way() {
        let t = HostTable::new(T0);
        for i in 0..TRACKED_HOSTS_MAX {
            t.record(&format!("scan{i}.invalid"));
        }
        t.record("late.example");
        t.tick(T0 + 1_000);
        assert!(!tracked(&t).contains_key("late.example"));
        // Strays idle 10 minutes give their slots up; after the quarantine tick a new host gets one.
        t.tick(T0 + 11 * MINUTE_MS);
        t.tick(T0 + 11 * MINUTE_MS + 2_000);
        t.record("late.example");
        let v = t.view(T0 + 11 * MINUTE_MS + 3_000, MAX_WINDOW);
        assert_eq!(v.hosts.len(), 1);
        assert_eq!(v.hosts[0].host, "late.example");
        assert_eq!(v.other.requests, TRACKED_HOSTS_MAX as u64 + 1);
        assert_eq!(v.other.in_window, TRACKED_HOSTS_MAX as u64 + 1);
    }

    #[test]
    fn hashes_differ_and_index_finds_all() {
        let names: Vec<Arc<str>> = (0..TRACKED_HOSTS_MAX)
            .map(|i| Arc::from(format!("host-{i}.example.com")))
            .collect();
        let idx = Index::build(names.iter().enumerate().map(|(i, n)| (n, i)));
        for (i, n) in names.iter().enumerate() {
            assert_eq!(idx.get(n), Some(i));
        }
        assert_eq!(idx.get("host-x.example.com"), None);
        assert_ne!(hash(b"a"), hash(b"b"));
        assert_ne!(hash(b"abcdefgh1"), hash(b"abcdefgh2"));
    }

    #[test]
    fn view_roundtrips_as_json() {
        let t = HostTable::new(T0);
        t.record("api.example.com");
        let v = t.view(T0 + 5_000, DEFAULT_WINDOW);
        let j = serde_json::to_value(&v).unwrap();
        assert_eq!(j["hosts"][0]["host"], "api.example.com");
        assert_eq!(j["hosts"][0]["in_window"], 1);
        assert!(j["other"]["last_seen"].is_null());
        assert_eq!(j["tracked_hosts_max"], TRACKED_HOSTS_MAX);
        let back: TrafficView = serde_json::from_value(j).unwrap();
        assert_eq!(back, v);
    }
}
