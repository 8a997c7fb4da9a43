//! The client-connection loop of the data plane.
//!
//! pingora's own loop (the blanket `ServerApp` impl for every `HttpServerApp`) enters the
//! proxy's per-request future as soon as a response is done, so an idle keep-alive connection
//! waits for its next request inside that future: about 13 KB of boxed state plus a fresh
//! request-header buffer, for as long as the client keeps the connection open (38 KB per idle
//! connection measured with `bench/compare --scenarios memory`).
//!
//! [`Connections`] runs the same HTTP/1.1 loop but waits for the first byte of the next
//! request while holding only the connection itself, and enters the request future once there
//! is something to read. The byte is read through the connection's small read buffer and
//! put back, so a request costs no extra system call. Idle connections close after the
//! keep-alive timeout, and [`DRAIN`] after the server begins to shut down. Measured: 38 KB →
//! 15 KB per idle connection; what is left is mostly pingora's listener task (bench/RESULTS.md).
//!
//! TLS connections (the `--tls-listen` listener) and h2c (`--h2c`) are handed to
//! pingora's own loop unchanged.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

/// Read buffer per client connection. A request's first read fills it, so waiting for the
/// next request and then parsing it costs one `recv`; headers longer than this are read in
/// more steps, as pingora does with any buffer size.
pub const READ_BUFFER: usize = 1024;

/// An HTTP application served with a connection loop that holds no request state while a
/// keep-alive connection is idle.
pub struct Connections<A> {
    app: Arc<A>,
    /// How long a client connection may sit idle between requests.
    idle: Duration,
}

impl<A> Connections<A> {
    pub fn new(app: A, idle: Duration) -> Self {
        Connections {
            app: Arc::new(app),
            idle,
        }
    }
}

/// How long an idle keep-alive connection may still send its next request once a graceful stop
/// or upgrade has begun; that request is answered with `Connection: close`. A client in the
/// middle of a series of requests sends the next one within microseconds, so it gets a clean
/// close instead of racing the server's close (a request written just as the connection
/// closes fails, and HTTP/1.1 clients do not retry it). Idle clients close after it.
pub const DRAIN: Duration = Duration::from_millis(200);

/// Waits until the client sends the next request's first byte. False when the connection
/// closed, failed, stayed idle for `idle`, or the server is shutting down and nothing came
/// within [`DRAIN`]. The byte stays in the stream for pingora to read.
async fn next_request(stream: &mut Stream, idle: Duration, shutdown: &ShutdownWatch) -> bool {
    let mut shutdown = shutdown.clone();
    let mut first = [0u8; 1];
    let stopping = *shutdown.borrow();
    let wait = if stopping { DRAIN.min(idle) } else { idle };
    let peek = pingora::time::fast_timeout::fast_timeout(wait, stream.try_peek(&mut first));
    let mut peek = std::pin::pin!(peek);
    if !stopping {
        tokio::select! {
            biased;
            // Ok(false): this stream cannot peek; pingora's own read waits instead.
            r = &mut peek => return matches!(r, Ok(Ok(_))),
            _ = shutdown.changed() => {}
        }
    }
    matches!(tokio::time::timeout(DRAIN, peek).await, Ok(Ok(Ok(_))))
}

#[async_trait]
impl<A> ServerApp for Connections<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let h2c = self.app.server_options().is_some_and(|o| o.h2c);
        if h2c || stream.get_ssl_digest().is_some() {
            return ServerApp::process_new(&self.app, stream, shutdown).await;
        }
        let mut settings: Option<HttpPersistentSettings> = None;
        loop {
            if !next_request(&mut stream, self.idle, shutdown).await {
                return None;
            }
            let mut session = ServerSession::new_http1(stream);
            match settings.take() {
                Some(s) => s.apply_to_session(&mut session),
                None => {
                    session.set_keepalive(Some(self.idle.as_secs().max(1)));
                    session.set_keepalive_reuses_remaining(
                        self.app
                            .server_options()
                            .and_then(|o| o.keepalive_request_limit),
                    );
                }
            }
            if *shutdown.borrow() {
                // Answer this request, then close: the server is going away.
                session.set_keepalive(None);
            }
            let reused = self.app.process_new_http(session, shutdown).await?;
            let (next, s) = reused.consume();
            stream = next;
            settings = s;
        }
    }

    /// Runs once the listeners stopped accepting (graceful stop or upgrade). pingora's own
    /// HTTP/1.1 loop (TLS connections) aborts requests parked waiting for their next request
    /// when `http_cleanup` runs; their clients get [`DRAIN`] first, as plain connections do in
    /// `next_request`.
    async fn cleanup(&self) {
        tokio::time::sleep(DRAIN).await;
        self.app.http_cleanup().await;
    }
}
