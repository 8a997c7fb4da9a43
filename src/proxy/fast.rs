//! The fast path: serves a common HTTP/1.1 request on a client connection without
//! pingora-proxy's generic request machinery, with the same decisions and the same bytes.
//!
//! One request: read the head with pingora's own parser and validation
//! (`v1::server::HttpSession::read_request`), route and hold with [`Proxy::admit`], take an
//! upstream connection from the per-thread [`pool`](super::pool) (or connect), send the
//! request built by [`sanitize::upstream_request`] plus pingora's post-filter checks, relay
//! the response (close-delimited answers turned chunked, as pingora does) and keep both
//! connections only when both messages completed. Failures go through the same
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
use pingora::protocols::http::v1::client::HttpSession as UpstreamSession;
use pingora::protocols::http::v1::server::HttpSession as ClientSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use pingora::upstreams::peer::Peer;
use pingora::{Error, ErrorType};
use tokio::io::AsyncReadExt;

use super::{
    client_ip, edge, failure_answer, failure_body, limits, pool, sanitize,
    strip_response_hop_by_hop, Ctx, Proxy,
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
    ) -> Served {
        // The request's state lives in its own box, built small (the HTTP/1 sessions are boxed
        // too, connecting is boxed): the caller's future, which the connection loop boxes and
        // its guard moves on every request, then holds only this pointer. Inline, the state
        // was kilobytes, copied several times per request.
        Box::pin(self.serve_boxed(stream, prefix, shutdown)).await
    }

    /// [`Engine::serve`], in its box.
    async fn serve_boxed(
        &self,
        mut stream: Stream,
        prefix: BytesMut,
        shutdown: &ShutdownWatch,
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
        let keep = self.request(&mut client).await;
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

    /// One request on `session`, its head read. True when the client connection may be
    /// reused (the response completed and nothing failed).
    async fn request(&self, session: &mut ClientSession) -> bool {
        let mut ctx = Ctx::new();
        let ip = client_ip(session.client_addr());
        let (keep, status, err) = self.run(session, &mut ctx, ip).await;
        let written = session
            .response_written()
            .map(|r| r.status.as_u16())
            .filter(|&s| s != 0)
            .unwrap_or(status);
        self.proxy
            .finish(session.req_header(), written, err.as_deref(), &mut ctx);
        keep
    }

    /// Admits, proxies and answers; returns (client reusable, status sent by us, error).
    async fn run(
        &self,
        session: &mut ClientSession,
        ctx: &mut Ctx,
        ip: Option<std::net::IpAddr>,
    ) -> (bool, u16, Option<Box<Error>>) {
        let admitted = self.proxy.admit(session.req_header(), ip, ctx).await;
        match admitted {
            Ok(None) => {}
            Ok(Some(refusal)) => {
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
                return (keep && r.is_ok(), status, r.err());
            }
            Err(e) => return self.fail(session, ctx, e).await,
        }
        // The body (at most MAX_BODY, checked before) is read whole, so every attempt can
        // send it again.
        let mut body = BytesMut::new();
        loop {
            // A finished (or absent) body reads as `None` at once: asked first, it costs no
            // read call (and no timeout wrapper around one).
            if session.is_body_done() {
                edge::body_progress(0, true);
                break;
            }
            match session.read_body_bytes().await {
                Ok(Some(b)) => {
                    edge::body_progress(b.len(), false);
                    body.extend_from_slice(&b);
                }
                Ok(None) => {
                    edge::body_progress(0, true);
                    break;
                }
                Err(e) => return self.fail(session, ctx, e.into_down()).await,
            }
        }
        let body = body.freeze();
        loop {
            match self.attempt(session, ctx, ip, &body).await {
                Ok(()) => return (true, 0, None),
                Err(Attempt::Retry) => continue,
                Err(Attempt::Failed(e)) => return self.fail(session, ctx, e).await,
                Err(Attempt::Broken(e)) => return (false, 0, Some(e)),
            }
        }
    }

    /// Answers a failed request the way `fail_to_proxy` does, and closes the connection.
    async fn fail(
        &self,
        session: &mut ClientSession,
        ctx: &mut Ctx,
        e: Box<Error>,
    ) -> (bool, u16, Option<Box<Error>>) {
        let (code, msg) = failure_answer(&e);
        if code > 0 {
            let body = failure_body(ctx, msg);
            if let Ok(mut resp) = ResponseHeader::build(code, Some(3)) {
                let ok = resp
                    .insert_header(header::CONTENT_TYPE, "application/json")
                    .and_then(|_| {
                        resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())
                    });
                if ok.is_ok() {
                    let _ = write_error_response(session, resp, body).await;
                }
            }
        }
        ctx.set_status(code);
        (false, code, Some(e))
    }

    /// One attempt on the upstream `ctx` chooses next.
    async fn attempt(
        &self,
        session: &mut ClientSession,
        ctx: &mut Ctx,
        ip: Option<std::net::IpAddr>,
        body: &Bytes,
    ) -> std::result::Result<(), Attempt> {
        let peer = ctx.choose_peer().await.map_err(Attempt::Failed)?;
        let key = peer.reuse_hash();
        let (stream, reused) = match pool::take(key) {
            Some(s) => (s, true),
            // Boxed: connecting is the rare case, and its future is large (kilobytes) for
            // every request's state to carry.
            None => match Box::pin(self.connector.new_stream(&*peer)).await {
                Ok(s) => (s, false),
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
        let mut up = Box::new(UpstreamSession::new(stream));
        up.read_timeout = peer.options.read_timeout;
        up.write_timeout = peer.options.write_timeout;
        let method = session.req_header().method.clone();

        // The request: switchyard's edits, then pingora's post-filter checks.
        let req = {
            let (Some(table), Some(u)) = (ctx.table.as_ref(), ctx.upstream) else {
                return Err(Attempt::Failed(Error::explain(
                    ErrorType::InternalError,
                    "no upstream chosen",
                )));
            };
            let tls = session.digest().ssl_digest.is_some();
            let client = session.req_header();
            let mut req = sanitize::upstream_request(
                client,
                &table.upstreams[u],
                table.proxy.override_header.as_ref(),
                ip,
                tls,
            )
            .map_err(Attempt::Failed)?;
            sanitize::finish_upstream_request(
                &mut req,
                client.headers.contains_key(header::HOST),
                !body.is_empty(),
            )
            .map_err(Attempt::Failed)?;
            req
        };
        ctx.attempt_sending(&req);

        // Sending: any failure here is before a response, so the attempt may be retried.
        let sent = async {
            up.write_request_header(Box::new(req)).await?;
            if !body.is_empty() {
                ctx.body_chunk(body);
                up.write_body(body).await?;
            }
            up.finish_body().await?;
            loop {
                up.read_response().await?;
                match up.resp_header().map(|r| r.status.as_u16()) {
                    // 1xx other than 101 (never asked for): skipped, as pingora's client does
                    // with `ignore_info_resp`.
                    Some(100..=199) if up.resp_header().is_some_and(|r| r.status != 101) => {}
                    _ => break,
                }
            }
            Ok::<(), Box<Error>>(())
        }
        .await;
        if let Err(e) = sent {
            return Err(self.after_error(ctx, e.into_up(), reused, false, &method));
        }
        let Some(mut resp) = up.resp_header().cloned().map(Box::new) else {
            return Err(Attempt::Failed(Error::explain(
                ErrorType::InvalidHTTPHeader,
                "no response header",
            )));
        };
        if resp.status.as_u16() == 101 {
            let e = Error::explain(
                ErrorType::InvalidHTTPHeader,
                "101 without an upgrade request",
            );
            return Err(self.after_error(ctx, e.into_up(), reused, false, &method));
        }
        let status = resp.status.as_u16();
        if let Err(e) = ctx.answered(status, &method, (true, false)) {
            // A 5xx moving on: the connection is dropped with its unread body, as stock.
            let e = ctx.attempt_failed(e, reused, false, &method, (true, false));
            return Err(if e.retry() {
                Attempt::Retry
            } else {
                Attempt::Failed(e)
            });
        }
        strip_response_hop_by_hop(&mut resp);
        // Close-delimited (HTTP/1.0 style) answers go chunked so the client connection stays
        // usable (pingora-proxy's `h1_response_filter`).
        let end = up.is_body_done();
        let no_body = method == Method::HEAD || matches!(status, 204 | 304);
        if !no_body
            && !end
            && !resp.status.is_informational()
            && resp.headers.get(header::TRANSFER_ENCODING).is_none()
            && resp.headers.get(header::CONTENT_LENGTH).is_none()
        {
            resp.set_version(Version::HTTP_11);
            if let Err(e) = resp.insert_header(header::TRANSFER_ENCODING, "chunked") {
                return Err(Attempt::Failed(e));
            }
        }
        if let Err(e) = ctx.responding(&mut resp) {
            return Err(Attempt::Failed(e));
        }
        if let Err(e) = session.write_response_header(resp).await {
            return Err(Attempt::Broken(e.into_down()));
        }
        let client = session;
        loop {
            let chunk = match up.read_body_ref().await {
                Ok(Some(b)) => b,
                Ok(None) => break,
                Err(e) => {
                    // After the head went out nothing can be retried: the client connection
                    // is closed mid-body, as the stock path does.
                    let e = ctx.attempt_failed(e.into_up(), reused, true, &method, (true, false));
                    return Err(Attempt::Broken(e));
                }
            };
            ctx.response_chunk(chunk);
            if let Err(e) = client.write_body(chunk).await {
                return Err(Attempt::Broken(e.into_down()));
            }
        }
        if let Err(e) = client.finish_body().await {
            return Err(Attempt::Broken(e.into_down()));
        }
        up.respect_keepalive();
        if let Some(stream) = (*up).reuse().await {
            pool::put(key, stream);
        }
        Ok(())
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
        let outer = engine.serve(stream, BytesMut::new(), &shutdown);
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
        let inner = engine.serve_boxed(stream, BytesMut::new(), &shutdown);
        assert!(
            std::mem::size_of_val(&inner) < 4096,
            "{}",
            std::mem::size_of_val(&inner)
        );
    }
}
