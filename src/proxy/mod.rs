//! The pingora `ProxyHttp` implementation. Phase methods stay thin: they gather what the
//! request carries and call the pure functions in [`decide`].
//!
//! Per request: `request_filter` takes one table snapshot, matches the route, waits out a hold
//! and fixes the order of preference over upstreams; `upstream_peer` picks the first available
//! one; failures (`fail_to_connect`, `error_while_proxy`, a 5xx in `upstream_response_filter`)
//! decide whether to move to the next; `logging` records metrics and the access log.

pub mod decide;
pub mod hold;
pub mod log;
pub mod shadow;

use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::metrics::{code_class, AttemptOutcome, PairStats, METRICS};
use crate::routing::table::{HostHeader, RouteTable};
use crate::routing::TableStore;
use decide::{AttemptError, BodyState, FallbackReason, NextStep, Order, Steering};
use hold::{Verdict, HOLDS};

/// Header naming the upstream that answered (request header name for overrides by default).
pub const UPSTREAM_HEADER: &str = "x-switchyard-upstream";
/// Request header carrying the override secret.
pub const SECRET_HEADER: &str = "x-switchyard-secret";

static NO_ROUTE_STATS: LazyLock<PairStats> = LazyLock::new(|| METRICS.pair("none", "none"));

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static SECRET: HeaderName = HeaderName::from_static(SECRET_HEADER);
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
// Headers switchyard adds are inserted by `&'static str` name: pingora keeps the wire spelling
// of every header in a second map, and given a `HeaderName` outside its titled list it copies
// the name into a new buffer first (one allocation per added header per request).
const X_FORWARDED_FOR_STR: &str = "x-forwarded-for";
const X_FORWARDED_PROTO_STR: &str = "x-forwarded-proto";
const X_FORWARDED_HOST_STR: &str = "x-forwarded-host";

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
static HOP_BY_HOP: [HeaderName; 5] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::PROXY_AUTHENTICATE,
];

/// The proxy service.
pub struct Proxy {
    pub store: Arc<TableStore>,
    pub access_log: Option<log::AccessLog>,
}

/// Per-request state.
pub struct Ctx {
    start: Instant,
    table: Option<Arc<RouteTable>>,
    route: Option<usize>,
    order: Order,
    /// Position in `order` of the current attempt.
    pos: usize,
    /// Upstream index of the current attempt.
    upstream: Option<usize>,
    /// Picked by the override header: no fallback.
    forced: bool,
    /// Why the next attempt moves on (set by a failure handler).
    pending: Option<(usize, FallbackReason)>,
    /// First fallback this request took, for the access log.
    fell_back: Option<FallbackReason>,
    /// Already retried a stale pooled connection on the same upstream once.
    retried_stale: bool,
    /// The request's `Content-Length`, if any.
    declared_body: Option<u64>,
    /// Body bytes sent in the current attempt (a replay resends from the start).
    body_bytes: usize,
    /// Most body bytes any attempt sent.
    body_seen: usize,
    /// Status sent by `fail_to_proxy` or the 404 path.
    status: u16,
    counted_inflight: bool,
    /// When the current attempt chose its upstream; `None` once the attempt is counted.
    attempt_start: Option<Instant>,
    /// A shadow copy in the making (see [`shadow`]); `None` for most requests.
    shadow: Option<Box<shadow::Capture>>,
}

impl Ctx {
    fn table(&self) -> Result<&Arc<RouteTable>> {
        self.table
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route table in context"))
    }

    /// Counts the current attempt at `ctx.upstream` once, with `outcome` (see
    /// [`PairStats::attempt`]); a second call for the same attempt does nothing.
    fn end_attempt(&mut self, outcome: Option<AttemptOutcome>) {
        let Some(start) = self.attempt_start.take() else {
            return;
        };
        let (Some(outcome), Some(t), Some(ri), Some(u)) =
            (outcome, self.table.as_ref(), self.route, self.upstream)
        else {
            return;
        };
        t.routes[ri]
            .stats(u, &t.upstreams[u].name)
            .attempt(outcome, start.elapsed().as_secs_f64());
    }
}

/// The Host the client asked for: lowercase, without port.
fn request_host(req: &RequestHeader) -> std::borrow::Cow<'_, str> {
    let raw = req
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.host())
        .unwrap_or("");
    let host = match raw.rfind(':') {
        Some(i) if !raw.ends_with(']') && raw[i + 1..].bytes().all(|b| b.is_ascii_digit()) => {
            &raw[..i]
        }
        _ => raw,
    };
    let host = host.trim_end_matches('.');
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

fn json_error(msg: &str, route: Option<&str>) -> Bytes {
    let v = match route {
        Some(r) => serde_json::json!({ "error": msg, "route": r }),
        None => serde_json::json!({ "error": msg }),
    };
    Bytes::from(format!("{v}\n"))
}

async fn respond(session: &mut Session, status: u16, body: Bytes, keepalive: bool) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(3))?;
    resp.insert_header(header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
    if keepalive {
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(body), true).await?;
        Ok(())
    } else {
        session
            .as_downstream_mut()
            .write_error_response(resp, body)
            .await
    }
}

/// What a held request keeps queued: its head (about) and its declared body.
fn held_bytes(req: &RequestHeader) -> u64 {
    let head: usize = req.uri.to_string().len()
        + req
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>();
    let body = req
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    head as u64 + body
}

/// Answers 503 with `Retry-After` for a request a hold refused (queue full, or a `reject`
/// hold past its deadline); the connection is closed, since the request body was not read.
async fn refuse_held(
    session: &mut Session,
    ctx: &mut Ctx,
    route: &str,
    v: Verdict,
) -> Result<bool> {
    ctx.status = 503;
    let (reason, msg) = match v {
        Verdict::QueueFull => (
            "hold_queue_full",
            "requests for this route are held and the hold's queue is full; retry",
        ),
        _ => (
            "hold_expired",
            "requests for this route are held past the hold's deadline until it is released; retry",
        ),
    };
    METRICS.rejected.with_label_values(&[reason]).inc();
    let body = json_error(msg, Some(route));
    let mut resp = ResponseHeader::build(503, Some(4))?;
    resp.insert_header(header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(header::RETRY_AFTER, hold::RETRY_AFTER_SECS.to_string())?;
    session
        .as_downstream_mut()
        .write_error_response(resp, body)
        .await?;
    Ok(true)
}

/// Answers 404 for a request no route matches (keeping the connection); `Ok(true)` = handled.
async fn no_route(session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
    ctx.status = 404;
    let body = json_error("no route matches this request", None);
    respond(session, 404, body, true).await?;
    Ok(true)
}

impl Proxy {
    /// Matches the request against `table`; fills the route and the order of preference.
    fn route_request(&self, session: &Session, ctx: &mut Ctx, table: Arc<RouteTable>) {
        let req = session.req_header();
        let host = request_host(req);
        if ctx.table.is_none() {
            crate::metrics::traffic::HOSTS.record(&host); // once per request, also when held
        }
        let route = table.match_request(&host, req.uri.path().as_bytes(), &req.method);
        ctx.route = route;
        if let Some(ri) = route {
            let r = &table.routes[ri];
            let headers = &req.headers;
            let get = |name: &str| headers.get(name).map(|v| v.as_bytes());
            let client_ip = session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip());
            let steering = Steering {
                override_name: table
                    .proxy
                    .override_header
                    .as_ref()
                    .and_then(|h| headers.get(h))
                    .map(|v| v.as_bytes()),
                override_secret: headers.get(&SECRET).map(|v| v.as_bytes()),
                cookies: headers.get(header::COOKIE).map(|v| v.as_bytes()),
                header: &get,
                client_ip,
                random_bucket: rand::random_range(0..crate::routing::split::BUCKETS),
            };
            let (order, forced) = decide::preference(&table, r, &steering);
            ctx.order = order;
            ctx.forced = forced;
        }
        ctx.table = Some(table);
    }
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            start: Instant::now(),
            table: None,
            route: None,
            order: Order::default(),
            pos: 0,
            upstream: None,
            forced: false,
            pending: None,
            fell_back: None,
            retried_stale: false,
            declared_body: None,
            body_bytes: 0,
            body_seen: 0,
            status: 0,
            counted_inflight: false,
            attempt_start: None,
            shadow: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        self.route_request(session, ctx, self.store.load());
        let Some(ri) = ctx.route else {
            return no_route(session, ctx).await;
        };
        let table = ctx.table()?.clone();
        let held_bytes = || held_bytes(session.req_header());
        let waited = match HOLDS.wait(&table.routes[ri].id, held_bytes).await {
            Verdict::Proceed(w) => w,
            refused => return refuse_held(session, ctx, &table.routes[ri].id, refused).await,
        };
        if !waited.is_zero() {
            // Held: proceed on the table that is current now, not the one we started with.
            self.route_request(session, ctx, self.store.load());
            if ctx.route.is_none() {
                return no_route(session, ctx).await;
            }
        }
        let table = ctx.table()?;
        if let Some(ri) = ctx.route {
            table.routes[ri].inflight.fetch_add(1, Ordering::Relaxed);
            ctx.counted_inflight = true;
        }
        ctx.declared_body = session
            .req_header()
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        if let (Some(ri), Some(t)) = (ctx.route, ctx.table.as_ref()) {
            let max = t.proxy.shadow_max_inflight;
            ctx.shadow = shadow::begin(&t.routes[ri], max, session.req_header(), ctx.declared_body);
        }
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // On a replay pingora passes the buffered body through here again: count per attempt
        // (reset in `upstream_request_filter`) so a replayed body is not counted twice.
        if let Some(b) = body.as_ref() {
            ctx.body_bytes += b.len();
            ctx.body_seen = ctx.body_seen.max(ctx.body_bytes);
            if let Some(c) = ctx.shadow.as_mut() {
                c.request_chunk(b);
            }
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let table = ctx.table()?.clone();
        let ri = ctx
            .route
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route"))?;
        let route = &table.routes[ri];
        let (pos, skipped) =
            decide::next_available(&ctx.order, ctx.pos, |u| table.upstreams[u].state.check())
                .ok_or_else(|| {
                    Error::explain(ErrorType::ConnectNoRoute, "no upstream left to try")
                })?;
        let u = ctx.order.get(pos).unwrap_or(0);
        // Count the move from the request's previous choice, if it moved.
        let moved_from = ctx
            .pending
            .take()
            .or_else(|| skipped.map(|r| (ctx.order.get(ctx.pos).unwrap_or(u), r)));
        if let Some((from, reason)) = moved_from.filter(|_| !ctx.forced) {
            if from != u || reason == FallbackReason::AllDown {
                let reason = if skipped == Some(FallbackReason::AllDown) {
                    FallbackReason::AllDown
                } else {
                    reason
                };
                METRICS
                    .fallbacks
                    .with_label_values(&[
                        &route.id,
                        &table.upstreams[from].name,
                        &table.upstreams[u].name,
                        reason.as_str(),
                    ])
                    .inc();
                ctx.fell_back.get_or_insert(reason);
                if reason == FallbackReason::AllDown && log_all_down_now() {
                    tracing::warn!(route = %route.id, upstream = %table.upstreams[u].name, "every upstream of the route is down; trying anyway (logged at most once a second; switchyard_fallbacks_total counts each)");
                }
            }
        }
        ctx.pos = pos;
        ctx.upstream = Some(u);
        let up = &table.upstreams[u];
        let addr = match up.next_addr() {
            (_, Some(literal)) => literal,
            (name, None) => crate::routing::resolve::resolve(name).await?,
        };
        let sni = if up.tls {
            up.sni.clone()
        } else {
            String::new()
        };
        let mut peer = HttpPeer::new(addr, up.tls, sni);
        let o = &mut peer.options;
        o.connection_timeout = Some(up.connect_timeout);
        o.total_connection_timeout = Some(up.connect_timeout);
        o.read_timeout = Some(up.read_timeout);
        o.write_timeout = Some(up.read_timeout);
        o.idle_timeout = Some(Duration::from_secs(60));
        o.ca = up.ca.clone();
        ctx.attempt_start = Some(Instant::now());
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let (Some(table), Some(u)) = (ctx.table.as_ref(), ctx.upstream) else {
            return Ok(());
        };
        ctx.body_bytes = 0;
        if let Some(c) = ctx.shadow.as_mut() {
            c.restart_body();
        }
        let up = &table.upstreams[u];
        // The Host the client sent, before any rewrite: a reference-counted clone.
        // Over HTTP/2 there is no Host header: the `:authority` stands for it.
        let client_host = session
            .req_header()
            .headers
            .get(header::HOST)
            .cloned()
            .or_else(|| {
                let a = session.req_header().uri.authority()?;
                HeaderValue::from_str(a.as_str()).ok()
            });
        // TLS-terminated here (the `--tls-listen` listener) or not.
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        if let HostHeader::Fixed(h) = &up.host {
            req.insert_header(header::HOST, h.as_str())?;
        }
        if let Some(path) = decide::rewrite_path(
            req.uri.path_and_query().map_or("/", |p| p.as_str()),
            up.strip_prefix.as_deref(),
            up.path_prefix.as_deref(),
        ) {
            let uri = http::Uri::try_from(path)
                .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "rewriting path", e))?;
            req.set_uri(uri);
        }
        strip_hop_by_hop_request(req, table.proxy.override_header.as_ref());
        if let Some(ip) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        {
            let xff = forwarded_for(req.headers.get(&X_FORWARDED_FOR), ip)?;
            req.insert_header(X_FORWARDED_FOR_STR, xff)?;
        }
        let proto = if tls { "https" } else { "http" };
        req.insert_header(X_FORWARDED_PROTO_STR, HeaderValue::from_static(proto))?;
        if let Some(h) = client_host {
            req.insert_header(X_FORWARDED_HOST_STR, h)?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let (Some(table), Some(u), Some(ri)) = (ctx.table.clone(), ctx.upstream, ctx.route) else {
            return Ok(());
        };
        let up = &table.upstreams[u];
        let status = resp.status.as_u16();
        ctx.end_attempt(Some(AttemptOutcome::of_status(status)));
        if status >= 500 && up.outlier.count_5xx {
            up.state.record_failure(&up.outlier);
        } else {
            up.state.record_success();
        }
        if status >= 500 && !ctx.forced && ctx.pos + 1 < ctx.order.len() {
            let route = &table.routes[ri];
            let whole = body_whole(session, ctx, route.retry_buffer_bytes);
            if decide::may_replay(&session.req_header().method, true, whole, route) {
                ctx.pending = Some((u, FallbackReason::Status5xx));
                ctx.pos += 1;
                let mut e = Error::explain(
                    ErrorType::HTTPStatus(status),
                    "upstream answered 5xx; trying the fallback",
                );
                e.set_retry(true);
                return Err(e);
            }
        }
        if status != 101 {
            resp.remove_header(&header::CONNECTION);
            resp.remove_header(&KEEP_ALIVE);
            resp.remove_header(&PROXY_CONNECTION);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(c) = ctx.shadow.as_mut() {
            c.primary_head(resp.status.as_u16(), &resp.headers);
        }
        if let (Some(table), Some(u)) = (ctx.table.as_ref(), ctx.upstream) {
            if table.proxy.response_header {
                resp.insert_header(UPSTREAM_HEADER, table.upstreams[u].name_header.clone())?;
            }
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if let (Some(c), Some(b)) = (ctx.shadow.as_mut(), body.as_ref()) {
            c.primary_chunk(b);
        }
        Ok(None)
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let Some(table) = ctx.table.clone() else {
            return e;
        };
        if let Some(u) = ctx.upstream {
            let up = &table.upstreams[u];
            up.state.record_failure(&up.outlier);
            let reason = if matches!(e.etype(), ErrorType::ConnectTimedout) {
                FallbackReason::Timeout
            } else {
                FallbackReason::ConnectError
            };
            ctx.end_attempt(Some(if reason == FallbackReason::Timeout {
                AttemptOutcome::Timeout
            } else {
                AttemptOutcome::Error
            }));
            // Nothing was sent: always safe to move on, unless a tester forced this upstream.
            let _ = session;
            if !ctx.forced && ctx.pos + 1 < ctx.order.len() {
                ctx.pending = Some((u, reason));
                ctx.pos += 1;
                e.set_retry(true);
            } else {
                e.set_retry(false);
            }
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!(
            "upstream {}",
            ctx.upstream
                .and_then(|u| ctx.table.as_ref().map(|t| t.upstreams[u].name.clone()))
                .unwrap_or_default()
        ));
        let _ = peer;
        // Our own 5xx signal from upstream_response_filter: already decided.
        if matches!(e.etype(), ErrorType::HTTPStatus(_))
            && matches!(ctx.pending, Some((_, FallbackReason::Status5xx)))
        {
            e.set_retry(true);
            return e;
        }
        let (Some(table), Some(ri), Some(u)) = (ctx.table.clone(), ctx.route, ctx.upstream) else {
            e.set_retry(false);
            return e;
        };
        let route = &table.routes[ri];
        let kind = if *e.esource() != ErrorSource::Upstream {
            AttemptError::Other
        } else if matches!(
            e.etype(),
            ErrorType::ReadTimedout | ErrorType::WriteTimedout
        ) {
            AttemptError::Timeout
        } else if client_reused && matches!(e.retry, pingora::RetryType::ReusedOnly) {
            AttemptError::StalePooled
        } else {
            AttemptError::Upstream
        };
        // A stale pooled connection or a client-side failure says nothing about the backend:
        // the attempt is dropped, not counted as a failure of the upstream.
        ctx.end_attempt(match kind {
            AttemptError::Timeout => Some(AttemptOutcome::Timeout),
            AttemptError::Upstream => Some(AttemptOutcome::Error),
            AttemptError::StalePooled | AttemptError::Other => None,
        });
        let headers_sent = session.response_written().is_some();
        let replayable = !headers_sent && {
            let whole = body_whole(session, ctx, route.retry_buffer_bytes);
            decide::may_replay(&session.req_header().method, true, whole, route)
        };
        let can_fall_back = !ctx.forced && ctx.pos + 1 < ctx.order.len();
        let (step, blame) = decide::after_error(kind, replayable, can_fall_back, ctx.retried_stale);
        if blame {
            let up = &table.upstreams[u];
            up.state.record_failure(&up.outlier);
        }
        match step {
            NextStep::Same => {
                ctx.retried_stale = true;
                e.set_retry(true);
            }
            NextStep::Fallback(reason) => {
                ctx.pending = Some((u, reason));
                ctx.pos += 1;
                e.set_retry(true);
            }
            NextStep::GiveUp => e.set_retry(false),
        }
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let (code, msg) = match e.etype() {
            ErrorType::HTTPStatus(c) => (*c, "upstream error"),
            ErrorType::ConnectTimedout => (504, "upstream connect timed out"),
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => (504, "upstream timed out"),
            ErrorType::TLSHandshakeFailure
            | ErrorType::TLSHandshakeTimedout
            | ErrorType::InvalidCert
            | ErrorType::HandshakeError => (502, "upstream TLS handshake failed"),
            ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
            | ErrorType::BindError
            | ErrorType::SocketError => (502, "could not connect to upstream"),
            _ => match e.esource() {
                ErrorSource::Upstream => (502, "bad response from upstream"),
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => {
                        (0, "")
                    }
                    _ => (400, "bad request"),
                },
                _ => (500, "internal error"),
            },
        };
        if code > 0 {
            let route = ctx
                .route
                .and_then(|ri| ctx.table.as_ref().map(|t| t.routes[ri].id.clone()));
            let _ = respond(session, code, json_error(msg, route.as_deref()), false).await;
        }
        ctx.status = code;
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .filter(|&s| s != 0)
            .unwrap_or(ctx.status);
        let elapsed = ctx.start.elapsed();
        if let (Some(c), Some(t)) = (ctx.shadow.take(), ctx.table.as_ref()) {
            shadow::finish(c, t.clone(), elapsed, e.is_none() && ctx.status == 0);
        }
        let table = ctx.table.as_ref();
        let route = ctx.route.and_then(|ri| table.map(|t| &t.routes[ri]));
        let upstream = ctx.upstream.and_then(|u| table.map(|t| &t.upstreams[u]));
        if let Some(r) = route {
            if ctx.counted_inflight {
                r.inflight.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let stats = match (route, ctx.upstream, upstream) {
            (Some(r), Some(ui), Some(u)) => r.stats(ui, &u.name),
            _ => &NO_ROUTE_STATS,
        };
        stats.codes[code_class(status)].inc();
        stats.duration.observe(elapsed.as_secs_f64());
        if let Some(log) = &self.access_log {
            let req = session.req_header();
            let host = request_host(req);
            log.write(&log::Entry {
                time: log::now_rfc3339(),
                method: req.method.as_str(),
                host: &host,
                path: req.uri.path(),
                route: route.map_or("", |r| &r.id),
                upstream: upstream.map_or("", |u| &u.name),
                status,
                duration_ms: elapsed.as_secs_f64() * 1000.0,
                table_version: table.map_or(0, |t| t.version),
                fallback: ctx.fell_back.map(FallbackReason::as_str),
                error: e.map(|e| e.etype().as_str().to_string()),
            });
        }
    }
}

/// True at most once per second: an outage must not turn into a log line per request.
fn log_all_down_now() -> bool {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    LAST.swap(now, Ordering::Relaxed) != now
}

/// Whether the request body can be replayed whole within the route's `limit` (see
/// [`decide::body_whole`]).
fn body_whole(session: &mut Session, ctx: &Ctx, limit: usize) -> bool {
    let b = BodyState {
        declared: ctx.declared_body,
        seen: ctx.body_seen,
        done: session.as_mut().is_body_done(),
        truncated: session.as_ref().retry_buffer_truncated(),
    };
    decide::body_whole(&b, limit)
}

/// Removes hop-by-hop headers, including those the `Connection` header names, keeping a
/// WebSocket-style upgrade intact; also the override and secret headers, which are for
/// switchyard only. Looks at each header once and removes only what is there.
fn strip_hop_by_hop_request(req: &mut RequestHeader, override_header: Option<&HeaderName>) {
    let mut named: Vec<HeaderName> = Vec::new();
    let mut upgrade = false;
    for v in req.headers.get_all(header::CONNECTION) {
        for t in v.to_str().unwrap_or("").split(',') {
            let t = t.trim();
            if t.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            } else if !t.is_empty() && !t.eq_ignore_ascii_case("close") {
                if let Ok(h) = HeaderName::from_bytes(t.as_bytes()) {
                    if h != header::CONTENT_LENGTH
                        && h != header::TRANSFER_ENCODING
                        && h != header::HOST
                    {
                        named.push(h);
                    }
                }
            }
        }
    }
    let upgrade = upgrade && req.headers.contains_key(header::UPGRADE);
    let doomed: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|k| {
            named.contains(*k)
                || HOP_BY_HOP.contains(*k)
                || **k == SECRET
                || Some(*k) == override_header
                || (!upgrade && (*k == header::CONNECTION || *k == header::UPGRADE))
        })
        .cloned()
        .collect();
    for h in &doomed {
        req.remove_header(h);
    }
}

/// `X-Forwarded-For` with the client appended, formatted without intermediate strings.
fn forwarded_for(prev: Option<&HeaderValue>, ip: std::net::IpAddr) -> Result<HeaderValue> {
    use std::io::Write;
    let prev = prev.map(HeaderValue::as_bytes).filter(|p| !p.is_empty());
    let mut buf = Vec::with_capacity(prev.map_or(0, |p| p.len() + 2) + 39);
    if let Some(p) = prev {
        buf.extend_from_slice(p);
        buf.extend_from_slice(b", ");
    }
    let _ = write!(buf, "{ip}");
    HeaderValue::from_bytes(&buf)
        .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "x-forwarded-for", e))
}
