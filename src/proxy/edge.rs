//! Connection-level defences of the client listener: the whole-head deadline, the minimum
//! request-body rate, the idle timeout of upgraded connections and the caps on open client
//! connections.
//!
//! pingora has no whole-head deadline (every byte received resets its read timer), so the
//! connection loop runs each request inside [`guard`]: a watchdog shares a small per-request
//! [`Watch`] (a task-local, so the proxy's phases reach it without a handle) and drops the
//! request, closing the connection, when the head, the body or an upgraded connection is too
//! slow. The phases report progress through [`head_done`], [`body_started`], [`body_progress`],
//! [`upgraded`] and [`activity`]; these do nothing outside a guarded request.

use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::limits::{Limits, Reject, BODY_TOO_SLOW, HEAD_TIMEOUT, UPGRADED_IDLE};
use crate::metrics::METRICS;

/// Where the request under watch stands.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// The head must be whole by this instant.
    Head(Instant),
    /// The body started at `start`; `bytes` received so far.
    Body { start: Instant, bytes: u64 },
    /// Upgraded: closed after `idle` without a byte either way since `last`.
    Upgraded { idle: Duration, last: Instant },
    /// Nothing left to watch (the body is whole, or there is none).
    Free,
    /// Dropped by [`guard`] for this reason (seen by the request's state as it is dropped).
    Dropped(&'static str),
}

/// The watch state of the request in progress on a connection.
struct Watch {
    phase: Cell<Phase>,
}

tokio::task_local! {
    static WATCH: Watch;
}

fn update(f: impl FnOnce(Phase) -> Phase) {
    let _ = WATCH.try_with(|w| w.phase.set(f(w.phase.get())));
}

/// Called once the request head is parsed: the head deadline no longer applies.
pub fn head_done() {
    update(|_| Phase::Free);
}

/// Called when the request is about to be proxied and has a body: from now on the body must
/// keep the minimum rate. Not earlier, so the time a request is held (see `proxy::hold`)
/// before its body is read does not count against the client.
pub fn body_started() {
    update(|_| Phase::Body {
        start: Instant::now(),
        bytes: 0,
    });
}

/// Called for each piece of request body received; `done` once it is whole.
pub fn body_progress(n: usize, done: bool) {
    update(|p| match p {
        Phase::Body { start, bytes } if !done => Phase::Body {
            start,
            bytes: bytes + n as u64,
        },
        Phase::Body { .. } => Phase::Free,
        other => other,
    });
}

/// Called when the connection is upgraded (101): from now on it closes after `idle` without
/// traffic in either direction.
pub fn upgraded(idle: Duration) {
    update(|_| Phase::Upgraded {
        idle,
        last: Instant::now(),
    });
}

/// Called for bytes crossing an upgraded connection in either direction.
pub fn activity() {
    update(|p| match p {
        Phase::Upgraded { idle, .. } => Phase::Upgraded {
            idle,
            last: Instant::now(),
        },
        other => other,
    });
}

/// Why [`guard`] is dropping the request whose state is being dropped now; `None` when it is
/// not being dropped by the guard.
pub fn dropped_reason() -> Option<&'static str> {
    WATCH
        .try_with(|w| match w.phase.get() {
            Phase::Dropped(reason) => Some(reason),
            _ => None,
        })
        .ok()
        .flatten()
}

/// How often a body's rate is looked at once its grace period is over.
const RECHECK: Duration = Duration::from_secs(1);

/// The verdict on `phase` at `now()`: `Err` when a limit is broken, else when to look again
/// (`None`: not until the phase changes; the clock is not read then).
fn verdict(
    phase: Phase,
    now: impl Fn() -> Instant,
    limits: &Limits,
) -> Result<Option<Instant>, Reject> {
    match phase {
        Phase::Head(deadline) if now() >= deadline => Err(HEAD_TIMEOUT),
        Phase::Head(deadline) => Ok(Some(deadline)),
        Phase::Body { start, bytes } if limits.body_min_rate > 0 => {
            let now = now();
            let elapsed = now.saturating_duration_since(start);
            if elapsed <= limits.body_grace {
                return Ok(Some(start + limits.body_grace + RECHECK));
            }
            let owed = (elapsed - limits.body_grace).as_secs_f64() * limits.body_min_rate as f64;
            if (bytes as f64) < owed {
                Err(BODY_TOO_SLOW)
            } else {
                Ok(Some(now + RECHECK))
            }
        }
        Phase::Upgraded { idle, last } if now().saturating_duration_since(last) >= idle => {
            Err(UPGRADED_IDLE)
        }
        Phase::Upgraded { idle, last } => Ok(Some(last + idle)),
        Phase::Body { .. } | Phase::Free | Phase::Dropped(_) => Ok(None),
    }
}

/// Runs one request (`request`, pingora's per-request future) under the watch: `None`, with
/// the connection closed and `switchyard_rejected_total{reason}` counted, when the head is not
/// whole by `head_deadline` (its first byte's arrival plus `limits.head_timeout`; the
/// connection loop has usually read the whole head already, see [`read_head`]), the body falls under the
/// minimum rate, or an upgraded connection stays idle too long.
///
/// The phases change only while `request` is polled, in this task, and the watchdog is polled
/// right after it: it sees each change at once and re-arms its single timer then, so a phase
/// with nothing to watch costs no wake-ups.
///
/// `request` is pinned by the caller (its layers here then move a pointer, not the future:
/// measured, seven copies of it a request) in an `Option`, so that a rejected request is
/// dropped here, inside the watch's scope, where its drop can still see why
/// ([`dropped_reason`]). It is `None` afterwards if it was dropped.
pub async fn guard<T, F: Future<Output = Option<T>>>(
    mut request: Pin<&mut Option<F>>,
    limits: &Limits,
    head_deadline: Instant,
) -> Option<T> {
    let deadline = head_deadline;
    let start = Phase::Head(deadline);
    let watch = Watch {
        phase: Cell::new(start),
    };
    WATCH
        .scope(watch, async {
            let polled = std::future::poll_fn(|cx| match request.as_mut().as_pin_mut() {
                Some(r) => r.poll(cx),
                None => std::task::Poll::Ready(None),
            });
            // The timer is made and registered only when a phase has something to watch: the
            // common request is past its head (`Free`) by the watchdog's first poll, and then
            // costs no timer at all.
            let mut sleep = std::pin::pin!(None::<tokio::time::Sleep>);
            let mut armed = false;
            let mut kind = None;
            let watchdog = std::future::poll_fn(|cx| loop {
                let phase = WATCH.with(|w| w.phase.get());
                let elapsed = armed && sleep.as_ref().as_pin_ref().is_some_and(|s| s.is_elapsed());
                if kind != Some(std::mem::discriminant(&phase)) || elapsed {
                    kind = Some(std::mem::discriminant(&phase));
                    match verdict(phase, Instant::now, limits) {
                        Ok(Some(next)) => {
                            armed = true;
                            match sleep.as_mut().as_pin_mut() {
                                Some(s) => s.reset(next.into()),
                                None => sleep.set(Some(tokio::time::sleep_until(next.into()))),
                            }
                        }
                        Ok(None) => armed = false,
                        Err(r) => return std::task::Poll::Ready(r),
                    }
                }
                let waiting = match sleep.as_mut().as_pin_mut() {
                    Some(s) if armed => s.poll(cx).is_pending(),
                    _ => true,
                };
                if waiting {
                    return std::task::Poll::Pending;
                }
            });
            let rejected = tokio::select! {
                biased;
                r = polled => return r,
                r = watchdog => r,
            };
            update(|_| Phase::Dropped(rejected.reason));
            METRICS.rejected.with_label_values(&[rejected.reason]).inc();
            tracing::debug!(reason = rejected.reason, "closing a client connection");
            // Dropped here, still in the scope: its drop sees the reason.
            request.set(None);
            None
        })
        .await
}

/// Longest request head [`read_head`] collects; a longer one goes on to pingora's parser, which
/// reads the rest (under [`guard`]'s deadline) and answers 431.
pub const MAX_HEAD: usize = 64 * 1024;

/// Where the head of a request ends in `buf` (the index past its empty line), `None` if `buf`
/// does not hold a whole head. Accepts bare LF line ends, as pingora's parser does.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = buf[from..].iter().position(|&c| c == b'\n') {
        let at = from + i + 1;
        match buf.get(at) {
            Some(b'\n') => return Some(at + 1),
            Some(b'\r') if buf.get(at + 1) == Some(&b'\n') => return Some(at + 2),
            Some(_) => from = at,
            None => return None,
        }
    }
    None
}

/// How [`read_head`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    /// `buf` holds a whole head (and maybe more), or [`MAX_HEAD`] bytes of one.
    Read,
    /// The client closed or failed before its head was whole: nothing to answer.
    Closed,
    /// The head was not whole by the deadline (counted as `head_timeout`): close.
    TimedOut,
}

/// Reads a request head from `stream` into `buf` (which may already hold its first bytes)
/// until it is whole, [`MAX_HEAD`] bytes, or `deadline`.
///
/// The connection loop calls this before it builds any per-request state, so a client that
/// sends its head slowly holds only its connection and this buffer (grown from the
/// `buf.capacity()` it is given, as the head needs) until the head is there. A head that came
/// in one read costs no more reads than pingora's own parser would.
pub async fn read_head<S>(stream: &mut S, buf: &mut bytes::BytesMut, deadline: Instant) -> Head
where
    S: tokio::io::AsyncRead + Unpin + ?Sized,
{
    use tokio::io::AsyncReadExt;
    // Usually the whole head came with the first read: no timer then.
    if head_end(buf).is_some() || buf.len() >= MAX_HEAD {
        return Head::Read;
    }
    let read = async {
        loop {
            if head_end(buf).is_some() || buf.len() >= MAX_HEAD {
                return Head::Read;
            }
            if buf.capacity() == buf.len() {
                buf.reserve(buf.capacity().max(512));
            }
            match stream.read_buf(buf).await {
                Ok(0) | Err(_) => return Head::Closed,
                Ok(_) => {}
            }
        }
    };
    match tokio::time::timeout_at(deadline.into(), read).await {
        Ok(h) => h,
        Err(_) => {
            METRICS
                .rejected
                .with_label_values(&[HEAD_TIMEOUT.reason])
                .inc();
            tracing::debug!(reason = HEAD_TIMEOUT.reason, "closing a client connection");
            Head::TimedOut
        }
    }
}

/// Whether the previous request on a connection left bytes of the next (pipelined) request
/// in its buffer. Those bytes are not in the socket any more, so waiting for the socket to
/// become readable would stall the connection. pingora keeps them in a private field of
/// `HttpPersistentSettings`; its `Debug` output is the only public view of it, read here
/// without allocating (pinned by the pipelining tests of `tests/edge.rs`).
pub fn has_pipelined_prefix(settings: &pingora::apps::HttpPersistentSettings) -> bool {
    use std::fmt::Write;
    /// Scans the `Debug` output for the field and stops writing once it is found.
    struct Scan {
        len: usize,
        found: Option<bool>,
    }
    const FIELD: &[u8] = b"pipelined_prefix: ";
    impl Write for Scan {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            for &b in s.as_bytes() {
                if self.len == FIELD.len() {
                    self.found = Some(b == b'S');
                    return Err(std::fmt::Error);
                }
                if b == FIELD[self.len] {
                    self.len += 1;
                } else {
                    self.len = usize::from(b == FIELD[0]);
                }
            }
            Ok(())
        }
    }
    let mut scan = Scan {
        len: 0,
        found: None,
    };
    let _ = write!(scan, "{settings:?}");
    scan.found.unwrap_or(false)
}

/// One upgraded connection, counted in `switchyard_websocket_active` while it lives (also
/// when the request is dropped by [`guard`], since the count goes with the request's state).
pub struct Upgraded(());

impl Upgraded {
    /// Counts a connection that was just upgraded.
    pub fn start() -> Upgraded {
        METRICS.websocket_active.inc();
        Upgraded(())
    }
}

impl Drop for Upgraded {
    fn drop(&mut self) {
        METRICS.websocket_active.dec();
    }
}

/// Open client connections, in total and per address, against the caps of [`Limits`].
pub struct Slots {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    max: usize,
    max_per_ip: usize,
}

/// One open connection's place; released when dropped.
pub struct Slot {
    slots: Arc<Slots>,
    ip: Option<IpAddr>,
}

impl Slots {
    /// Caps from `limits` (0 = no cap).
    pub fn new(limits: &Limits) -> Arc<Slots> {
        Arc::new(Slots {
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            max: limits.max_connections,
            max_per_ip: limits.max_connections_per_ip,
        })
    }

    /// Takes a place for a new connection from `ip`, or says which cap it is over (counted in
    /// `switchyard_rejected_total`); the caller then closes the connection.
    pub fn acquire(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Slot, Reject> {
        let n = self.total.fetch_add(1, Ordering::AcqRel) + 1;
        let mut slot = Slot {
            slots: self.clone(),
            ip: None,
        };
        if self.max > 0 && n > self.max {
            METRICS
                .rejected
                .with_label_values(&[super::limits::CONNECTION_CAP.reason])
                .inc();
            return Err(super::limits::CONNECTION_CAP);
        }
        if let (Some(ip), true) = (ip, self.max_per_ip > 0) {
            let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            let c = map.entry(ip).or_insert(0);
            if *c >= self.max_per_ip {
                drop(map);
                let r = super::limits::CONNECTION_CAP_IP;
                METRICS.rejected.with_label_values(&[r.reason]).inc();
                return Err(r);
            }
            *c += 1;
            slot.ip = Some(ip);
        }
        Ok(slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            let mut map = self.slots.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = map.get_mut(&ip) {
                *c -= 1;
                if *c == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_deadline() {
        let l = Limits::default();
        let t = Instant::now();
        let d = t + Duration::from_secs(10);
        assert_eq!(verdict(Phase::Head(d), || t, &l), Ok(Some(d)));
        assert_eq!(verdict(Phase::Head(d), || d, &l), Err(HEAD_TIMEOUT));
    }

    #[test]
    fn body_rate_after_grace() {
        let l = Limits {
            body_min_rate: 100,
            body_grace: Duration::from_secs(2),
            ..Limits::default()
        };
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        assert!(verdict(Phase::Body { start, bytes: 0 }, || at(1), &l).is_ok());
        assert!(verdict(Phase::Body { start, bytes: 300 }, || at(5), &l).is_ok());
        assert_eq!(
            verdict(Phase::Body { start, bytes: 299 }, || at(6), &l),
            Err(BODY_TOO_SLOW)
        );
    }

    #[test]
    fn upgraded_idle() {
        let l = Limits::default();
        let last = Instant::now();
        let idle = Duration::from_secs(3);
        let p = Phase::Upgraded { idle, last };
        assert_eq!(verdict(p, || last, &l), Ok(Some(last + idle)));
        assert_eq!(verdict(p, || last + idle, &l), Err(UPGRADED_IDLE));
        // Nothing to watch: no timer, and the clock is not read.
        let never = || -> Instant { panic!("the clock was read") };
        assert_eq!(verdict(Phase::Free, never, &l), Ok(None));
        let no_rate = Limits {
            body_min_rate: 0,
            ..Limits::default()
        };
        let body = Phase::Body {
            start: last,
            bytes: 0,
        };
        assert_eq!(verdict(body, never, &no_rate), Ok(None));
    }

    #[test]
    fn head_end_accepts_lf_and_crlf() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nxyz"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\nA: b\n\n"), Some(21));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r"), None);
    }

    #[tokio::test]
    async fn read_head_in_pieces_until_whole_closed_or_late() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let far = Instant::now() + Duration::from_secs(5);
        let mut buf = bytes::BytesMut::from(&b"GET / HT"[..]);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for piece in [&b"TP/1.1\r\nHost: x\r\n"[..], b"\r\n", b"next"] {
                client.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            client
        });
        assert_eq!(read_head(&mut server, &mut buf, far).await, Head::Read);
        assert!(buf.starts_with(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        // Half a head, then nothing: the deadline.
        let mut client = writer.await.unwrap();
        let mut buf = bytes::BytesMut::new();
        tokio::io::AsyncWriteExt::write_all(&mut client, b"GET / HTTP/1.1\r\n")
            .await
            .unwrap();
        let soon = Instant::now() + Duration::from_millis(100);
        assert_eq!(read_head(&mut server, &mut buf, soon).await, Head::TimedOut);
        // Half a head, then a close.
        drop(client);
        let mut buf = bytes::BytesMut::from(&b"GET"[..]);
        assert_eq!(read_head(&mut server, &mut buf, far).await, Head::Closed);
    }

    #[test]
    fn caps() {
        let l = Limits {
            max_connections: 2,
            max_connections_per_ip: 1,
            ..Limits::default()
        };
        let s = Slots::new(&l);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let one = s.acquire(Some(a)).unwrap();
        assert_eq!(
            s.acquire(Some(a)).err(),
            Some(super::super::limits::CONNECTION_CAP_IP)
        );
        let two = s.acquire(Some(b)).unwrap();
        assert_eq!(
            s.acquire(None).err(),
            Some(super::super::limits::CONNECTION_CAP)
        );
        drop(one);
        drop(two);
        assert!(s.acquire(Some(a)).is_ok());
    }
}
