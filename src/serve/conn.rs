//! The client-connection loop of the data plane.
//!
//! pingora's own loop (the blanket `ServerApp` impl for every `HttpServerApp`) enters the
//! proxy's per-request future as soon as a response is done, so an idle keep-alive connection
//! waits for its next request inside that future: about 13 KB of boxed state plus a fresh
//! request-header buffer, for as long as the client keeps the connection open (38 KB per idle
//! connection measured with `bench/compare --scenarios memory`).
//!
//! [`Connections`] runs the same HTTP/1.1 loop on a task of its own (pingora's task for the
//! connection ends after the accept and the TLS handshake, whose room it would otherwise keep)
//! and waits for the next request while holding only the connection itself: no read buffer
//! (the listener's socket buffer is off, and a waking connection reads through a per-thread
//! scratch buffer, [`next_request`]), no request state (one box per request, freed once it
//! is answered). Idle connections close after the keep-alive timeout, and [`DRAIN`] after the
//! server begins to shut down. Measured per idle connection: 38 KB in pingora's loop, 15 KB
//! with this loop in pingora's task, 5.0 KB on its own task (bench/RESULTS.md).
//!
//! The request head is then read here too ([`edge::read_head`], under the whole-head
//! deadline) before any per-request state is built, so a client sending its head slowly costs
//! its connection and a head buffer, nothing more. Each request then runs under
//! [`edge::guard`] (body rate, idle upgraded connections), connections over the caps of
//! [`Limits`] are closed at once, and requests pipelined behind another are served in order
//! from the bytes already buffered.
//!
//! With the fast engine (`serve --engine fast`, the default) each request is first offered to
//! [`fast::Engine`]: it serves common HTTP/1.1 requests itself and hands anything else back,
//! with the bytes it read, to pingora's `HttpProxy` on the same connection.
//!
//! HTTP/1.1 over TLS (the `--tls-listen` listener) runs in the same loop. HTTP/2 (ALPN `h2`,
//! or `--h2c`) goes to pingora's own loop unchanged; the connection caps apply to it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use tokio::io::AsyncRead;

use crate::proxy::edge::{self, Slots};
use crate::proxy::fast::{self, Served};
use crate::proxy::limits::Limits;
use crate::proxy::timer::Timer;

use super::wbuf;

/// Smallest head buffer of a request (it grows as a long head needs).
pub const READ_BUFFER: usize = 1024;

/// An HTTP application served with a connection loop that holds no request state while a
/// keep-alive connection is idle.
pub struct Connections<A> {
    app: Arc<A>,
    /// How long a client connection may sit idle between requests.
    idle: Duration,
    /// Head deadline, body rate and connection caps (default [`Limits::default`]).
    limits: Arc<Limits>,
    slots: Arc<Slots>,
    /// The fast path, when on: offered every plain HTTP/1.1 request first.
    fast: Option<Arc<fast::Engine>>,
}

impl<A> Connections<A> {
    pub fn new(app: A, idle: Duration) -> Self {
        let limits = Limits::default();
        Connections {
            app: Arc::new(app),
            idle,
            fast: None,
            slots: Slots::new(&limits),
            limits: Arc::new(limits),
        }
    }

    /// The same loop with `limits` (their caps count connections of this listener only).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.slots = Slots::new(&limits);
        self.limits = Arc::new(limits);
        self
    }

    /// Serves plain HTTP/1.1 requests with `fast` first (`None`: stock only, the default of
    /// [`Connections::new`]).
    pub fn with_fast(mut self, fast: Option<Arc<fast::Engine>>) -> Self {
        self.fast = fast;
        self
    }
}

impl<A: HttpServerApp> Connections<A> {
    /// Whether the stock path's per-connection settings matter for the next request (a
    /// keep-alive request limit counts down in them), so it must stay on the stock path.
    fn keeps_state(&self) -> bool {
        self.app
            .server_options()
            .is_some_and(|o| o.keepalive_request_limit.is_some())
    }
}

/// What a connection carries from one request to the next: bytes of the next request already
/// read, and the stock path's settings when they matter for it.
struct Carry {
    stream: Stream,
    read: Option<BytesMut>,
    settings: Option<HttpPersistentSettings>,
    /// The connection's timer, for all its waits.
    timer: Timer,
}

impl<A: HttpServerApp + Send + Sync + 'static> Connections<A> {
    /// The HTTP/1.x loop of one client connection, on its own task. While the connection
    /// waits for a request or receives its head, this future holds the stream, the head read
    /// so far and a timer; everything a request needs beyond that lives in one box per
    /// request ([`Connections::request`]), freed once it is answered.
    async fn serve_h1(self: Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) {
        // The write buffer exists only while a response is written (the listener's is off).
        let mut stream: Stream = Box::new(wbuf::Buffered::new(stream));
        let mut settings: Option<HttpPersistentSettings> = None;
        // Bytes of the next request already read (by the fast path, or past a request's end).
        let mut read: Option<BytesMut> = None;
        let mut timer = Timer::new();
        loop {
            // A pipelined request already read with the previous one is not waited for.
            let pipelined =
                read.is_some() || settings.as_ref().is_some_and(edge::has_pipelined_prefix);
            if !pipelined {
                match next_request(&mut stream, self.idle, shutdown, &mut timer).await {
                    Next::Read(b) => read = Some(b),
                    Next::Stop => return,
                }
            }
            // The head deadline counts from the first byte of the request.
            let head_deadline = Instant::now() + self.limits.head_timeout;
            // The head is read here, before any per-request state exists: until it is whole
            // the connection holds only its stream and this buffer. (A pipelined head that
            // pingora kept in the settings is read on by pingora, under the same deadline.)
            if !settings.as_ref().is_some_and(edge::has_pipelined_prefix) {
                let mut head = read
                    .take()
                    .unwrap_or_else(|| BytesMut::with_capacity(READ_BUFFER));
                match edge::read_head(&mut stream, &mut head, head_deadline).await {
                    edge::Head::Read => read = Some(head),
                    edge::Head::Closed | edge::Head::TimedOut => return,
                }
            }
            let carry = Carry {
                stream,
                read: read.take(),
                settings: settings.take(),
                timer,
            };
            match Box::pin(self.request(carry, head_deadline, shutdown)).await {
                Some(next) => {
                    (stream, read, settings, timer) =
                        (next.stream, next.read, next.settings, next.timer)
                }
                None => return,
            }
        }
    }

    /// One request, its head read (in `carry.read`, or in the stock settings' pipelined
    /// bytes): the fast path first when it is on, else or when it hands the request back,
    /// pingora's `HttpProxy`; both under [`edge::guard`]. What the next request needs, or
    /// `None` once the connection is closed.
    async fn request(
        &self,
        carry: Carry,
        head_deadline: Instant,
        shutdown: &ShutdownWatch,
    ) -> Option<Carry> {
        let Carry {
            mut stream,
            mut read,
            settings,
            mut timer,
        } = carry;
        if let (Some(engine), None) = (&self.fast, &settings) {
            let prefix = read.take().unwrap_or_default();
            // Pinned here and handed to the guard by reference (see `edge::guard`).
            let served = {
                let served = std::pin::pin!(Some(async {
                    Some(engine.serve(stream, prefix, shutdown, &mut timer).await)
                }));
                edge::guard(served, &self.limits, head_deadline).await?
            };
            match served {
                Served::Again(stream) => {
                    // A connection that stays for more requests sheds pingora's socket layers.
                    return Some(Carry {
                        stream: wbuf::take_over(stream)?,
                        read: None,
                        settings: None,
                        timer,
                    });
                }
                Served::Closed => return None,
                Served::Stock(s, bytes) => {
                    stream = s;
                    read = Some(BytesMut::from(bytes));
                }
            }
        }
        let mut session = ServerSession::new_http1(stream);
        match settings {
            Some(s) => s.apply_to_session(&mut session),
            None => {
                session.set_pipelining_enabled(true);
                session.set_keepalive(Some(self.idle.as_secs().max(1)));
                session.set_keepalive_reuses_remaining(
                    self.app
                        .server_options()
                        .and_then(|o| o.keepalive_request_limit),
                );
            }
        }
        if let (Some(bytes), ServerSession::H1(s)) = (read, &mut session) {
            s.set_pipelined_prefix(bytes);
        }
        if *shutdown.borrow() {
            // Answer this request, then close: the server is going away.
            session.set_keepalive(None);
        }
        let reused = {
            let request = std::pin::pin!(Some(self.app.process_new_http(session, shutdown)));
            edge::guard(request, &self.limits, head_deadline).await?
        };
        let (stream, s) = reused.consume();
        // Settings that carry nothing for the next request (no request limit, no pipelined
        // bytes) let it go to the fast path again.
        let settings = s
            .filter(|s| self.fast.is_none() || self.keeps_state() || edge::has_pipelined_prefix(s));
        Some(Carry {
            stream,
            read: None,
            settings,
            timer,
        })
    }
}

/// How long an idle keep-alive connection may still send its next request once a graceful stop
/// or upgrade has begun; that request is answered with `Connection: close`. A client in the
/// middle of a series of requests sends the next one within microseconds, so it gets a clean
/// close instead of racing the server's close (a request written just as the connection
/// closes fails, and HTTP/1.1 clients do not retry it). Idle clients close after it.
pub const DRAIN: Duration = Duration::from_millis(200);

/// Waits until the client sends the next request and reads what came:
/// [`Next::Stop`] when the connection closed, failed, stayed idle for `idle`, or the server is
/// shutting down and nothing came within [`DRAIN`].
///
/// While it waits, nothing is allocated for the connection: each poll reads into a per-thread
/// scratch buffer ([`SCRATCH`]) and only bytes that arrived are copied into a head buffer of
/// their own (at least [`READ_BUFFER`]). So an idle connection holds no read buffer at all,
/// plain or TLS, and the first read of a request is its only read when the head fits.
async fn next_request(
    stream: &mut Stream,
    idle: Duration,
    shutdown: &ShutdownWatch,
    timer: &mut Timer,
) -> Next {
    // A busy client's next request is often there already: one read first, without the
    // timers below (about 2,500 instructions a request).
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(read_arrived(stream, cx))).await;
    if let std::task::Poll::Ready(r) = first {
        return r.unwrap_or(Next::Stop);
    }
    let mut shutdown = shutdown.clone();
    let stopping = *shutdown.borrow();
    let wait = if stopping { DRAIN.min(idle) } else { idle };
    let arrived = std::future::poll_fn(|cx| read_arrived(stream, cx));
    // The connection's timer, moved lazily (not pingora's `fast_timeout`, which boxes a timer
    // and registers it with a shared manager on every wait).
    let peek = timer.within(wait, arrived);
    let mut peek = std::pin::pin!(peek);
    let settle = |r: Result<std::io::Result<Next>, _>| match r {
        Ok(Ok(n)) => n,
        _ => Next::Stop,
    };
    if !stopping {
        tokio::select! {
            biased;
            r = &mut peek => return settle(r),
            _ = shutdown.changed() => {}
        }
    }
    match tokio::time::timeout(DRAIN, peek).await {
        Ok(r) => settle(r),
        Err(_) => Next::Stop,
    }
}

/// Bytes one read of an idle connection takes at most (a whole ordinary head; a longer one
/// is read on by [`edge::read_head`]).
const SCRATCH: usize = 16 * 1024;

thread_local! {
    /// The buffer every idle connection of this thread reads into when it wakes up.
    static SCRATCH_BUF: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0u8; SCRATCH].into_boxed_slice());
}

/// One poll of an idle connection's read: `Pending` holds nothing; bytes that came are
/// returned in a buffer of their own.
fn read_arrived(
    stream: &mut Stream,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<std::io::Result<Next>> {
    use std::task::Poll;
    SCRATCH_BUF.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let mut rb = tokio::io::ReadBuf::new(&mut scratch[..]);
        match std::pin::Pin::new(&mut *stream).poll_read(cx, &mut rb) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) if rb.filled().is_empty() => Poll::Ready(Ok(Next::Stop)),
            Poll::Ready(Ok(())) => {
                let got = rb.filled();
                let mut buf = BytesMut::with_capacity(got.len().max(READ_BUFFER));
                buf.extend_from_slice(got);
                Poll::Ready(Ok(Next::Read(buf)))
            }
        }
    })
}

/// What came while a connection waited for its next request.
enum Next {
    /// The first bytes of the request.
    Read(BytesMut),
    /// Closed, failed, idle too long, or the server is stopping.
    Stop,
}

#[async_trait]
impl<A> ServerApp for Connections<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let ip = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        // Over a cap: closed before anything is read; the client may retry.
        let slot = self.slots.acquire(ip).ok()?;
        let h2c = self.app.server_options().is_some_and(|o| o.h2c);
        // HTTP/2 (by ALPN over TLS, or h2c) is pingora's own loop; HTTP/1.1 over TLS is served
        // here like plain HTTP/1.1.
        if h2c || matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            let _slot = slot;
            return ServerApp::process_new(&self.app, stream, shutdown).await;
        }
        // HTTP/1.x goes on in a task of its own, whose state is only this loop's: pingora's
        // task for the connection ends here, and with it the room its accept and TLS
        // handshake took, which every idle connection would otherwise keep.
        let this = self.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            this.serve_h1(stream, &shutdown).await;
        });
        None
    }

    /// Runs once the listeners stopped accepting (graceful stop or upgrade). pingora's own
    /// loop (HTTP/2 connections) ends idle connections when `http_cleanup` runs; their clients
    /// get [`DRAIN`] first, as HTTP/1.x connections do in `next_request`.
    async fn cleanup(&self) {
        tokio::time::sleep(DRAIN).await;
        self.app.http_cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTP application that answers nothing (only the loop's own state is measured).
    struct Nothing;

    #[async_trait]
    impl HttpServerApp for Nothing {
        async fn process_new_http(
            self: &Arc<Self>,
            _session: ServerSession,
            _shutdown: &ShutdownWatch,
        ) -> Option<pingora::apps::ReusedHttpStream> {
            None
        }
    }

    /// The task of every HTTP/1.x connection is this future: what an idle connection holds
    /// besides its stream. Request state inlined into it (instead of the per-request box)
    /// would cost every idle connection kilobytes (512 bytes in a debug build today).
    #[test]
    fn the_connection_task_and_the_request_box_are_small() {
        let c = Arc::new(Connections::new(Nothing, Duration::from_secs(1)));
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let (a, _b) = tokio::io::duplex(1);
        let stream: Stream = Box::new(a);
        let task = async move { c.serve_h1(stream, &rx).await };
        let size = std::mem::size_of_val(&task);
        assert!(size <= 1024, "the connection task's future is {size} bytes");
        let c = Arc::new(Connections::new(Nothing, Duration::from_secs(1)));
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let (a, _b) = tokio::io::duplex(1);
        let carry = Carry {
            stream: Box::new(a),
            read: None,
            settings: None,
            timer: Timer::new(),
        };
        let req = async move { c.request(carry, Instant::now(), &rx).await };
        // Moved into its box once per request: a large one costs every request a large copy
        // (1,552 bytes in a debug build today; it was about 35 KB before the fast path boxed
        // its sessions).
        let size = std::mem::size_of_val(&req);
        assert!(size <= 4096, "the per-request future is {size} bytes");
    }
}
