//! Idle upstream connections of the fast path: one pool per worker thread, keyed by the
//! peer's reuse hash (exact address, TLS, SNI, CA), checked at checkout instead of watched.
//!
//! pingora's pool spawns an idle-watcher task for every released connection (on a random
//! thread with per-thread runtimes) and checkout waits for that task to hand the connection
//! back: two run-queue trips per request. Here a released connection just goes on a
//! thread-local stack; at checkout one non-blocking read tells whether the upstream closed it
//! (or sent bytes nobody asked for) while it sat idle. No task, no lock, no `getpeername`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use pingora::protocols::Stream;
use tokio::io::ReadBuf;

/// Idle connections kept per key on one thread; more are closed when released.
pub const MAX_IDLE_PER_KEY: usize = 256;
/// An idle connection older than this is closed at checkout (pingora's `idle_timeout` the
/// stock path sets on every peer).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

struct Idle {
    stream: Stream,
    /// When it was released, by the coarse monotonic clock ([`super::clock`]): its ages are
    /// compared with a 60-second timeout, so a tick's lag does not matter.
    since: Duration,
}

/// Hashes a key that already is a hash (`Peer::reuse_hash`) by taking it as it is: hashing it
/// again (SipHash) cost more than the rest of a checkout.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Pools = HashMap<u64, Vec<Idle>, BuildHasherDefault<KeyHasher>>;

thread_local! {
    static POOL: RefCell<Pools> = RefCell::new(Pools::default());
}

/// A live idle connection for `key`, most recently released first; `None` when there is
/// none (the caller connects). Connections found closed, readable or too old are dropped.
pub fn take(key: u64) -> Option<Stream> {
    loop {
        let idle = POOL.with(|p| p.borrow_mut().get_mut(&key).and_then(Vec::pop))?;
        if super::clock::coarse_monotonic().saturating_sub(idle.since) < IDLE_TIMEOUT {
            let mut stream = idle.stream;
            if quiet(&mut stream) {
                return Some(stream);
            }
        }
    }
}

/// Keeps `stream` (a finished request's upstream connection, reusable) for the next request
/// to `key` on this thread.
pub fn put(key: u64, stream: Stream) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let list = p.entry(key).or_default();
        if list.len() < MAX_IDLE_PER_KEY {
            list.push(Idle {
                stream,
                since: super::clock::coarse_monotonic(),
            });
        }
    });
}

/// Idle connections held by this thread (for tests and the bench notes).
pub fn idle_count() -> usize {
    POOL.with(|p| p.borrow().values().map(Vec::len).sum())
}

/// True when nothing is waiting to be read on an idle connection: it is open and the
/// upstream sent nothing. One read attempt that does not wait.
fn quiet(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    let mut cx = Context::from_waker(Waker::noop());
    matches!(
        Pin::new(&mut **stream).poll_read(&mut cx, &mut buf),
        Poll::Pending
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn pair() -> (Stream, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        let c = tokio::net::TcpStream::connect(a).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (Box::new(pingora::protocols::l4::stream::Stream::from(c)), s)
    }

    #[tokio::test]
    async fn keys_are_kept_apart() {
        let (a, _pa) = pair().await;
        let (b, _pb) = pair().await;
        put(u64::MAX, a);
        put(1 << 63, b);
        assert!(take(u64::MAX).is_some());
        assert!(take(u64::MAX).is_none());
        assert!(take(1 << 63).is_some());
        assert_eq!(idle_count(), 0);
    }

    #[tokio::test]
    async fn closed_and_chatty_connections_are_not_handed_out() {
        let (open, _keep) = pair().await;
        let (closed, peer) = pair().await;
        drop(peer);
        let (chatty, mut peer2) = pair().await;
        peer2.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        put(7, open);
        put(7, closed);
        put(7, chatty);
        assert!(take(7).is_some(), "the open one");
        assert!(take(7).is_none());
        assert_eq!(idle_count(), 0);
    }
}
