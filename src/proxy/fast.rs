//! The fast path: serves a common HTTP/1.1 request on a client connection without
//! pingora-proxy's generic request machinery, with the same decisions and the same bytes.
//!
//! One request: read the head with pingora's own parser and validation
//! (`v1::server::HttpSession::read_request`), route and hold with [`Proxy::admit`], take an
//! upstream connection from the per-thread [`pool`](super::pool) (or connect), send the
//! request built by [`sanitize::upstream_request`] plus pingora's post-filter checks and relay
//! the response through [`h1`] (pingora's wire rules, close-delimited answers turned chunked),
//! and keep both connections only when both messages completed. Failures go through the same
//! [`Ctx`] functions as the stock phases (fallback, retry, outlier ejection) and are answered
//! with the same 502/504 bodies; metrics and the access log come from [`Proxy::finish`].
//!
//! Requests it does not serve itself ([`stock_reason`]: CONNECT, upgrades, `Expect`,
//! `Transfer-Encoding`, bodies over 64 KiB, anything but origin-form HTTP/1.1, a head the
//! parser rejects) are handed back to the connection loop with the bytes read so far, and the
//! stock `HttpProxy` serves them on the same connection.

use bytes::{Bytes, BytesMut};
use http::{header, Method, Version};
use pingora::connectors::TransportConnector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::v1::server::HttpSession as ClientSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use pingora::upstreams::peer::Peer;
use pingora::{Error, ErrorType};
use tokio::io::AsyncReadExt;

use super::{
    client_ip, edge, failure_answer, failure_body, h1, limits, plain, pool, sanitize, timer::Timer,
    Ctx, Proxy,
};

/// Largest request body the fast path reads whole before sending (pingora's retry buffer:
/// a bigger body could not be replayed on the stock path either). Bigger bodies go stock.
pub const MAX_BODY: u64 = 64 * 1024;
/// First read of a request head; longer heads are read in more steps.
const HEAD_BUFFER: usize = 4096;

/// The fast path's shared state: the proxy's decisions and an upstream connector.
pub struct Engine {
    proxy: Proxy,
    connector: TransportConnector,
    /// Keep-alive timeout of client connections, seconds.
    idle_secs: u64,
}

/// What became of a client connection after one request.
pub enum Served {
    /// The request was answered and the connection may carry another one.
    Again(Stream),
    /// The connection is closed (or must be).
    Closed,
    /// Not served here: the stock path serves it, starting with these bytes already read.
    Stock(Stream, Bytes),
}

/// Why a parsed request goes to the stock path; `None` = the fast path serves it.
pub fn stock_reason(req: &RequestHeader) -> Option<&'static str> {
    if req.version != Version::HTTP_11 {
        return Some("not HTTP/1.1");
    }
    if req.method == Method::CONNECT {
        return Some("CONNECT");
    }
    if !req.raw_path().starts_with(b"/") {
        return Some("not origin-form");
    }
    let h = &req.headers;
    // One pass over the (few) names instead of a lookup for each.
    let (mut upgrade, mut expect, mut te, mut connection, mut length) =
        (false, false, false, false, false);
    for name in h.keys() {
        upgrade |= *name == header::UPGRADE;
        expect |= *name == header::EXPECT;
        te |= *name == header::TRANSFER_ENCODING;
        connection |= *name == header::CONNECTION;
        length |= *name == header::CONTENT_LENGTH;
    }
    if upgrade {
        return Some("upgrade");
    }
    if expect {
        return Some("expect");
    }
    if te {
        return Some("transfer-encoding");
    }
    if connection && sanitize::check_connection(req).is_err() {
        return Some("connection nominations");
    }
    if !length {
        return None;
    }
    let mut lengths = h.get_all(header::CONTENT_LENGTH).iter();
    if let Some(cl) = lengths.next() {
        let n = cl.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok());
        if lengths.next().is_some() || n.is_none_or(|n| n > MAX_BODY) {
            return Some("body framing or size");
        }
    }
    None
}

/// Reads a request head into `buf` until its end is there, the client stops, or
/// [`edge::MAX_HEAD`]. The connection loop has usually read it already ([`edge::read_head`],
/// under the head deadline); `Ok(false)`: the client closed before sending anything.
async fn read_head(stream: &mut Stream, buf: &mut BytesMut) -> std::io::Result<bool> {
    loop {
        if edge::head_end(buf).is_some() || buf.len() >= edge::MAX_HEAD {
            return Ok(true);
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(HEAD_BUFFER);
        }
        if stream.read_buf(buf).await? == 0 {
            return Ok(!buf.is_empty());
        }
    }
}

impl Engine {
    /// The fast path over `proxy`'s routes, with pingora's connector for new upstream
    /// connections (sized like the stock path's) and client keep-alive of `idle_secs`.
    pub fn new(
        proxy: Proxy,
        conf: &pingora::server::configuration::ServerConf,
        idle_secs: u64,
    ) -> Engine {
        let options = pingora::connectors::ConnectorOptions::from_server_conf(conf);
        Engine {
            proxy,
            connector: TransportConnector::new(Some(options)),
            idle_secs: idle_secs.max(1),
        }
    }

    /// Serves the next request on `stream`, whose first bytes are `prefix` (the connection
    /// loop reads the head before it calls this: the whole head, maybe more).
    pub async fn serve(
        &self,
        stream: Stream,
        prefix: BytesMut,
        shutdown: &ShutdownWatch,
        timer: &mut Timer,
    ) -> Served {
        // The request's state lives in its own box, built small (the HTTP/1 sessions are boxed
        // too, connecting is boxed): the caller's future, which the connection loop boxes and
        // its guard moves on every request, then holds only this pointer. Inline, the state
        // was kilobytes, copied several times per request.
        Box::pin(self.serve_boxed(stream, prefix, shutdown, timer)).await
    }

    /// [`Engine::serve`], in its box.
    async fn serve_boxed(
        &self,
        mut stream: Stream,
        prefix: BytesMut,
        shutdown: &ShutdownWatch,
        timer: &mut Timer,
    ) -> Served {
        let mut buf = if prefix.is_empty() {
            BytesMut::with_capacity(HEAD_BUFFER)
        } else {
            prefix
        };
        match read_head(&mut stream, &mut buf).await {
            Ok(true) => {}
            Ok(false) | Err(_) => return Served::Closed,
        }
        let raw = buf.freeze();
        if edge::head_end(&raw).is_none() {
            // A head longer than MAX_HEAD, or cut short: pingora's parser reads on from here.
            return Served::Stock(stream, raw);
        }
        let mut client = Box::new(ClientSession::new(stream));
        // As the stock loop does before pingora reads the head.
        client.set_server_keepalive(Some(self.idle_secs));
        client.set_pipelined_prefix(BytesMut::from(&raw[..]));
        // Bytes past this request's end (a pipelined next request) are kept for the next
        // session, as on the stock path (`serve::conn`).
        client.set_pipelining_enabled(true);
        match client.read_request().await {
            Ok(Some(_)) => {}
            // Unparsable: the stock path parses it again and answers as it does. (The whole
            // head was in the prefix, so the parser read nothing more from the stream.)
            _ => return Served::Stock(client.into_inner(), raw),
        }
        // The head is whole: its deadline (`edge::guard`) is over.
        edge::head_done();
        // A head over a limit goes to the stock path too, which answers 414/431 the same way
        // for both engines.
        let head_len = edge::head_end(&raw).unwrap_or(raw.len());
        if stock_reason(client.req_header()).is_some()
            || limits::check_head(head_len, client.req_header(), &self.proxy.limits).is_err()
        {
            return Served::Stock(client.into_inner(), raw);
        }
        drop(raw);
        if *shutdown.borrow() {
            client.set_server_keepalive(None);
        }
        self.request(client, timer).await
    }

    /// One request on `client`, its head read: admitted, proxied, answered and logged.
    async fn request(&self, mut client: Box<ClientSession>, timer: &mut Timer) -> Served {
        let mut ctx = Ctx::new();
        let ip = client_ip(client.client_addr());
        match self.proxy.admit(client.req_header(), ip, &mut ctx).await {
            Ok(None) => {}
            Ok(Some(refusal)) => {
                let (keep, status, err) = refuse(&mut client, &mut ctx, refusal).await;
                let written = written_status(&client, status);
                self.proxy
                    .finish(client.req_header(), written, err.as_deref(), &mut ctx);
                return reuse_session(client, keep).await;
            }
            Err(e) => return self.fail_session(client, ctx, e).await,
        }
        // The body (at most MAX_BODY, checked before) is read whole, so every attempt can
        // send it again.
        let body = match read_body(&mut client).await {
            Ok(b) => b,
            Err(e) => return self.fail_session(client, ctx, e.into_down()).await,
        };
        let tls = client.digest().ssl_digest.is_some();
        // The connection leaves pingora's session here (with the bytes of a pipelined next
        // request): the answer is written by `h1::Downstream`.
        let keepalive = client.will_keepalive();
        let req = std::mem::replace(client.req_header_mut(), placeholder());
        let (stream, next) = if keepalive {
            match (*client).reuse().await {
                Ok(Some(reusable)) => reusable.into_parts(),
                Ok(None) => {
                    self.proxy.finish(&req, 0, None, &mut ctx);
                    return Served::Closed;
                }
                Err(e) => {
                    self.proxy.finish(&req, 0, Some(&e), &mut ctx);
                    return Served::Closed;
                }
            }
        } else {
            (client.into_inner(), None)
        };
        let mut down = h1::Downstream::new(stream, keepalive);
        let (status, err) = loop {
            match self
                .attempt(&mut down, &req, &mut ctx, (ip, tls), &body, timer)
                .await
            {
                Ok(()) => break (down.status(), None),
                Err(Attempt::Retry) => continue,
                Err(Attempt::Failed(e)) => {
                    let (code, answer) = failure_response(&ctx, &e);
                    if let Some((resp, body)) = answer {
                        let _ = down.error(resp, &body).await;
                    }
                    ctx.set_status(code);
                    break (if down.started() { down.status() } else { code }, Some(e));
                }
                Err(Attempt::Broken(e)) => break (down.status(), Some(e)),
            }
        };
        self.proxy.finish(&req, status, err.as_deref(), &mut ctx);
        if !down.reusable() {
            down.shutdown().await;
            return Served::Closed;
        }
        let stream = down.into_stream();
        match next {
            Some(p) if !p.is_empty() => Served::Stock(stream, p.freeze()),
            _ => Served::Again(stream),
        }
    }

    /// A request that failed before its connection left pingora's session: answered the way
    /// `fail_to_proxy` does, logged, and the connection closed.
    async fn fail_session(
        &self,
        mut client: Box<ClientSession>,
        mut ctx: Ctx,
        e: Box<Error>,
    ) -> Served {
        let (code, answer) = failure_response(&ctx, &e);
        if let Some((resp, body)) = answer {
            let _ = write_error_response(&mut client, resp, body).await;
        }
        ctx.set_status(code);
        let written = written_status(&client, code);
        self.proxy
            .finish(client.req_header(), written, Some(&e), &mut ctx);
        client.shutdown().await;
        Served::Closed
    }

    /// One attempt on the upstream `ctx` chooses next, answering on `down`.
    async fn attempt(
        &self,
        down: &mut h1::Downstream,
        client: &RequestHeader,
        ctx: &mut Ctx,
        (ip, tls): (Option<std::net::IpAddr>, bool),
        body: &Bytes,
        timer: &mut Timer,
    ) -> std::result::Result<(), Attempt> {
        let peer = ctx.choose_peer().await.map_err(Attempt::Failed)?;
        let key = peer.reuse_hash();
        let (stream, reused) = match pool::take(key) {
            Some(s) => (s, true),
            // Boxed: connecting is the rare case, and its future is large (kilobytes) for
            // every request's state to carry.
            None => match Box::pin(self.connector.new_stream(&*peer)).await {
                // Pooled for many requests: without pingora's socket layers when plain.
                Ok(s) => (
                    plain::unwrap(s).map_or_else(|s| s, |p| Box::new(p) as Stream),
                    false,
                ),
                Err(e) => {
                    let e = ctx.connect_failed(e.into_up());
                    return Err(if e.retry() {
                        Attempt::Retry
                    } else {
                        Attempt::Failed(e)
                    });
                }
            },
        };
        let mut up = h1::Upstream::new(
            stream,
            peer.options.read_timeout,
            peer.options.write_timeout,
            timer,
        );
        let method = &client.method;

        // The request: switchyard's edits, then pingora's post-filter checks; the common
        // request's head written straight to the wire (a shadow copy wants the header map).
        let (Some(table), Some(u)) = (ctx.table.as_ref(), ctx.upstream) else {
            return Err(Attempt::Failed(Error::explain(
                ErrorType::InternalError,
                "no upstream chosen",
            )));
        };
        let (upstream, override_header) =
            (&table.upstreams[u], table.proxy.override_header.as_ref());
        // Allocated only when the head is written here.
        let mut head = BytesMut::new();
        let direct = match ctx.shadow {
            None => sanitize::upstream_head(
                client,
                upstream,
                override_header,
                (ip, tls),
                !body.is_empty(),
                &mut head,
            )
            .map_err(Attempt::Failed)?,
            Some(_) => None,
        };
        let req = match direct {
            Some(_) => None,
            None => {
                let mut req =
                    sanitize::upstream_request(client, upstream, override_header, ip, tls)
                        .map_err(Attempt::Failed)?;
                sanitize::finish_upstream_request(
                    &mut req,
                    client.headers.contains_key(header::HOST),
                    !body.is_empty(),
                )
                .map_err(Attempt::Failed)?;
                Some(req)
            }
        };
        ctx.attempt_sending(req.as_ref());
        if !body.is_empty() {
            ctx.body_chunk(body);
        }

        // Sending: any failure here is before a response, so the attempt may be retried.
        let sent = async {
            match &req {
                Some(req) => up.send(req, body).await?,
                // Written: the head asks for no close (no `Connection` goes upstream).
                None => {
                    up.send_head(head, (direct == Some(true), false), body)
                        .await?
                }
            }
            up.read_head(*method == Method::HEAD).await
        }
        .await;
        let resp = match sent {
            Ok(resp) => resp,
            Err(e) => return Err(self.after_error(ctx, e.into_up(), reused, false, method)),
        };
        let status = resp.status();
        if status == 101 {
            let e = Error::explain(
                ErrorType::InvalidHTTPHeader,
                "101 without an upgrade request",
            );
            return Err(self.after_error(ctx, e.into_up(), reused, false, method));
        }
        if let Err(e) = ctx.answered(status, method, (true, false)) {
            // A 5xx moving on: the connection is dropped with its unread body, as stock.
            let e = ctx.attempt_failed(e, reused, false, method, (true, false));
            return Err(if e.retry() {
                Attempt::Retry
            } else {
                Attempt::Failed(e)
            });
        }
        // Close-delimited (HTTP/1.0 style) answers go chunked so the client connection stays
        // usable (pingora-proxy's `h1_response_filter`).
        let no_body = *method == Method::HEAD;
        let chunked = resp.goes_chunked(no_body);
        let name = ctx.responding_fast(status, || resp.header_map(chunked));
        down.head(&resp, no_body, chunked, name.as_ref());
        loop {
            let piece = match up.piece() {
                Ok(p) => p,
                Err(e) => return Err(self.broken(ctx, e, reused, method)),
            };
            match piece {
                h1::Piece::Data(n) => {
                    let data = up.data(n);
                    ctx.response_chunk(data);
                    if let Err(e) = down.body(data).await {
                        return Err(Attempt::Broken(e.into_down()));
                    }
                    up.consume(n);
                }
                h1::Piece::More => {
                    // What is gathered goes to the client before waiting for more.
                    if let Err(e) = down.send().await {
                        return Err(Attempt::Broken(e.into_down()));
                    }
                    if let Err(e) = up.fill().await {
                        return Err(self.broken(ctx, e, reused, method));
                    }
                }
                h1::Piece::Done => break,
            }
        }
        if let Err(e) = down.finish().await {
            return Err(Attempt::Broken(e.into_down()));
        }
        if let Some(stream) = up.into_reusable() {
            pool::put(key, stream);
        }
        Ok(())
    }

    /// The upstream failed after the head went to the client: nothing can be retried, the
    /// client connection is closed mid-body, as the stock path does.
    fn broken(&self, ctx: &mut Ctx, e: Box<Error>, reused: bool, method: &Method) -> Attempt {
        Attempt::Broken(ctx.attempt_failed(e.into_up(), reused, true, method, (true, false)))
    }

    /// An attempt failed before any response went to the client: retry or give up.
    fn after_error(
        &self,
        ctx: &mut Ctx,
        e: Box<Error>,
        reused: bool,
        headers_sent: bool,
        method: &Method,
    ) -> Attempt {
        let e = ctx.attempt_failed(e, reused, headers_sent, method, (true, false));
        if e.retry() {
            Attempt::Retry
        } else {
            Attempt::Failed(e)
        }
    }
}

/// Stands in for the request head taken out of a session that is being taken apart (no
/// parsing, no allocation).
fn placeholder() -> RequestHeader {
    RequestHeader::from(http::Request::new(()).into_parts().0)
}

/// The whole request body (at most [`MAX_BODY`]) from the client's session.
async fn read_body(session: &mut ClientSession) -> pingora::Result<Bytes> {
    let mut body = BytesMut::new();
    loop {
        // A finished (or absent) body reads as `None` at once: asked first, it costs no read
        // call (and no timeout wrapper around one).
        if session.is_body_done() {
            edge::body_progress(0, true);
            break;
        }
        match session.read_body_bytes().await? {
            Some(b) => {
                edge::body_progress(b.len(), false);
                body.extend_from_slice(&b);
            }
            None => {
                edge::body_progress(0, true);
                break;
            }
        }
    }
    Ok(body.freeze())
}

/// The status the session wrote, else `fallback` (what was meant to be sent).
fn written_status(session: &ClientSession, fallback: u16) -> u16 {
    session
        .response_written()
        .map(|r| r.status.as_u16())
        .filter(|&s| s != 0)
        .unwrap_or(fallback)
}

/// Answers a refused request from its session; returns (connection reusable, status, error).
async fn refuse(
    session: &mut ClientSession,
    ctx: &mut Ctx,
    refusal: super::Refusal,
) -> (bool, u16, Option<Box<Error>>) {
    let keep = refusal.keeps_connection();
    let status = refusal.status();
    ctx.set_status(status);
    let Ok((head, body)) = refusal.answer() else {
        return (false, status, None);
    };
    let r = if keep {
        match session.write_response_header(Box::new(head)).await {
            Ok(()) => write_last_body(session, &body).await,
            Err(e) => Err(e),
        }
    } else {
        write_error_response(session, head, body).await
    };
    (keep && r.is_ok(), status, r.err())
}

/// After an answer written through the session: the connection back, with the bytes of a
/// pipelined next request, when it may carry one.
async fn reuse_session(mut client: Box<ClientSession>, keep: bool) -> Served {
    if !keep {
        client.shutdown().await;
        return Served::Closed;
    }
    // What `ServerSession::finish` does for HTTP/1.
    if client.finish_body().await.is_err() {
        return Served::Closed;
    }
    match (*client).reuse().await {
        Ok(Some(reusable)) => {
            let (stream, prefix) = reusable.into_parts();
            match prefix {
                Some(p) if !p.is_empty() => Served::Stock(stream, p.freeze()),
                _ => Served::Again(stream),
            }
        }
        _ => Served::Closed,
    }
}

/// A failed request's answer (`fail_to_proxy`): its status, and its head and JSON body
/// unless the client is gone (status 0: nothing to answer).
fn failure_response(ctx: &Ctx, e: &Error) -> (u16, Option<(ResponseHeader, Bytes)>) {
    let (code, msg) = failure_answer(e);
    if code == 0 {
        return (code, None);
    }
    let body = failure_body(ctx, msg);
    let head = ResponseHeader::build(code, Some(3)).and_then(|mut resp| {
        resp.insert_header(header::CONTENT_TYPE, "application/json")?;
        resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
        Ok(resp)
    });
    (code, head.ok().map(|resp| (resp, body)))
}

/// The last piece of a response body, then its end (`ServerSession::write_response_body`
/// with `end` for HTTP/1).
async fn write_last_body(session: &mut ClientSession, body: &[u8]) -> pingora::Result<()> {
    if !body.is_empty() {
        session.write_body(body).await?;
    }
    session.finish_body().await?;
    Ok(())
}

/// An answer generated here, with the connection closed after it
/// (`ServerSession::write_error_response` for HTTP/1).
async fn write_error_response(
    session: &mut ClientSession,
    resp: ResponseHeader,
    body: Bytes,
) -> pingora::Result<()> {
    session.set_server_keepalive(None);
    if let Some(written) = session.response_written() {
        if !written.status.is_informational() || written.status == 101 {
            return Ok(());
        }
    }
    session.write_response_header(Box::new(resp)).await?;
    write_last_body(session, &body).await
}

/// How an attempt ended, when it did not complete.
enum Attempt {
    /// Try again (same or next upstream, as `ctx` decided).
    Retry,
    /// Give up: answer the client with this error's status.
    Failed(Box<Error>),
    /// The response already started (or the client went away): close without an answer.
    Broken(Box<Error>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &[u8], headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, path, None).unwrap();
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn common_requests_stay_fast() {
        assert_eq!(stock_reason(&req("GET", b"/", &[("host", "a")])), None);
        assert_eq!(
            stock_reason(&req("POST", b"/x", &[("content-length", "3")])),
            None
        );
    }

    #[test]
    fn unusual_requests_go_stock() {
        let cases = [
            req("CONNECT", b"a:443", &[]),
            req("GET", b"http://a/", &[]),
            req("GET", b"/", &[("upgrade", "websocket")]),
            req("PUT", b"/", &[("expect", "100-continue")]),
            req("POST", b"/", &[("transfer-encoding", "chunked")]),
            req(
                "POST",
                b"/",
                &[("content-length", "3"), ("content-length", "3")],
            ),
            req("POST", b"/", &[("content-length", "99999999")]),
            req("GET", b"/", &[("connection", "host")]),
        ];
        for r in &cases {
            assert!(stock_reason(r).is_some(), "{r:?}");
        }
        let mut old = req("GET", b"/", &[]);
        old.set_version(Version::HTTP_10);
        assert!(stock_reason(&old).is_some());
    }

    /// The future the connection loop boxes (and its guard moves) per request holds only a
    /// pointer; the boxed request state stays below the size where glibc's `memcpy` switches
    /// to `rep movsb` (4 KiB), as it was built once and copied into its box.
    #[tokio::test]
    async fn request_state_stays_small() {
        let proxy = Proxy {
            store: std::sync::Arc::new(crate::routing::store::TableStore::new(
                crate::routing::table::RouteTable::empty(),
            )),
            access_log: None,
            limits: std::sync::Arc::new(limits::Limits::default()),
        };
        let engine = Engine::new(proxy, &Default::default(), 60);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let stream: Stream = Box::new(pingora::protocols::l4::stream::Stream::from(c));
        let (_tx, shutdown) = tokio::sync::watch::channel(false);
        let mut timer = Timer::new();
        let outer = engine.serve(stream, BytesMut::new(), &shutdown, &mut timer);
        assert!(
            std::mem::size_of_val(&outer) <= 256,
            "{}",
            std::mem::size_of_val(&outer)
        );
        drop(outer);
        let c = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let stream: Stream = Box::new(pingora::protocols::l4::stream::Stream::from(c));
        let inner = engine.serve_boxed(stream, BytesMut::new(), &shutdown, &mut timer);
        assert!(
            std::mem::size_of_val(&inner) < 4096,
            "{}",
            std::mem::size_of_val(&inner)
        );
    }
}
