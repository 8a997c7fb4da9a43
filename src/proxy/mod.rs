//! The pingora `ProxyHttp` implementation. Phase methods stay thin: they gather what the
//! request carries and call the pure functions in [`decide`].
//!
//! Per request: `request_filter` takes one table snapshot, matches the route, waits out a hold
//! and fixes the order of preference over upstreams; `upstream_peer` picks the first available
//! one; failures (`fail_to_connect`, `error_while_proxy`, a 5xx in `upstream_response_filter`)
//! decide whether to move to the next; `logging` records metrics and the access log.

pub mod clock;
pub mod decide;
pub mod edge;
pub mod fast;
pub mod h1;
pub mod hold;
pub mod limits;
pub mod log;
pub mod plain;
pub mod pool;
pub mod sanitize;
pub mod shadow;
pub mod shadow_client;
pub mod timer;

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
use crate::routing::table::RouteTable;
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

/// The proxy service.
#[derive(Clone)]
pub struct Proxy {
    pub store: Arc<TableStore>,
    pub access_log: Option<log::AccessLog>,
    /// Request limits checked before routing (see [`limits`]).
    pub limits: Arc<limits::Limits>,
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
    /// A request limit the request broke, answered instead of proxying.
    reject: Option<limits::Reject>,
    /// Held while the connection is upgraded (counts `switchyard_websocket_active`).
    upgraded: Option<edge::Upgraded>,
    /// For a request [`edge::guard`] may drop after admitting it (one with a body, or
    /// upgraded): what its access-log line needs if [`Proxy::finish`] never runs.
    unfinished: Option<Box<Unfinished>>,
}

/// The access-log fields of a request that may end without [`Proxy::finish`].
struct Unfinished {
    log: Option<log::AccessLog>,
    method: http::Method,
    host: String,
    path: String,
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

/// The client's IP address, for `X-Forwarded-For` and sticky-by-client routing.
pub(crate) fn client_ip(
    addr: Option<&pingora::protocols::l4::socket::SocketAddr>,
) -> Option<std::net::IpAddr> {
    addr.and_then(|a| a.as_inet()).map(|a| a.ip())
}

/// The status and message a failed request is answered with (both engines).
pub(crate) fn failure_answer(e: &Error) -> (u16, &'static str) {
    match e.etype() {
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
    }
}

/// The JSON body of a failed request's answer, naming the route when there is one.
pub(crate) fn failure_body(ctx: &Ctx, msg: &str) -> Bytes {
    let route = ctx
        .route
        .and_then(|ri| ctx.table.as_ref().map(|t| t.routes[ri].id.clone()));
    json_error(msg, route.as_deref())
}

/// Removes the connection-scoped headers of an upstream response (not for a 101).
pub(crate) fn strip_response_hop_by_hop(resp: &mut ResponseHeader) {
    if resp.status.as_u16() == 101 {
        return;
    }
    // One pass over the few names, then a removal (from both maps, values and case) only for
    // the ones there (nginx sends `Connection`; the other two are rarely there).
    let (mut connection, mut keep_alive, mut proxy_connection) = (false, false, false);
    for n in resp.headers.keys() {
        connection |= *n == header::CONNECTION;
        keep_alive |= *n == KEEP_ALIVE;
        proxy_connection |= *n == PROXY_CONNECTION;
    }
    if connection {
        resp.remove_header(&header::CONNECTION);
    }
    if keep_alive {
        resp.remove_header(&KEEP_ALIVE);
    }
    if proxy_connection {
        resp.remove_header(&PROXY_CONNECTION);
    }
}

/// A request dropped before [`Proxy::finish`] (the connection closed by [`edge::guard`]: a body
/// under the minimum rate, an upgraded connection idle past its limit) still leaves the
/// route's in-flight count, which the database cutover waits on.
/// Its metrics and access-log line are written here then, with the status the client was
/// left with (`408` for a body cut off, `101` for an upgraded connection) and the reason
/// `edge::guard` gave as the error.
impl Drop for Ctx {
    fn drop(&mut self) {
        if let Some(u) = self.unfinished.take() {
            let status = if self.upgraded.is_some() { 101 } else { 408 };
            let error = edge::dropped_reason().unwrap_or("dropped");
            record(
                self,
                u.log.as_ref(),
                (u.method.as_str(), &u.host, &u.path),
                status,
                Some(error.to_string()),
            );
        } else if self.counted_inflight {
            if let (Some(ri), Some(t)) = (self.route, self.table.as_ref()) {
                t.routes[ri].inflight.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl Ctx {
    /// A fresh context for a request that starts now.
    pub(crate) fn new() -> Ctx {
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
            reject: None,
            upgraded: None,
            unfinished: None,
        }
    }

    /// After the hold: counts the request in flight, notes its declared body and decides on
    /// a shadow copy.
    /// `declared`: its `Content-Length` ([`limits::declared_length`]).
    pub(crate) fn admitted(&mut self, req: &RequestHeader, declared: Option<u64>) {
        if let (Some(ri), Some(t)) = (self.route, self.table.as_ref()) {
            t.routes[ri].inflight.fetch_add(1, Ordering::Relaxed);
            self.counted_inflight = true;
        }
        self.declared_body = declared;
        if let (Some(ri), Some(t)) = (self.route, self.table.as_ref()) {
            let max = t.proxy.shadow_max_inflight;
            self.shadow = shadow::begin(&t.routes[ri], max, req, self.declared_body);
        }
    }

    /// A request body chunk of the current attempt.
    pub(crate) fn body_chunk(&mut self, b: &[u8]) {
        self.body_bytes += b.len();
        self.body_seen = self.body_seen.max(self.body_bytes);
        if let Some(c) = self.shadow.as_mut() {
            c.request_chunk(b);
        }
    }

    /// A new attempt begins sending: body counts restart (a replay resends from the start).
    /// `upstream_req` is the request as it goes to the upstream: a shadow copy carries its
    /// forwarding headers.
    /// `None`: the fast path wrote the head straight to the wire (it does so only without a
    /// shadow).
    pub(crate) fn attempt_sending(&mut self, upstream_req: Option<&RequestHeader>) {
        self.body_bytes = 0;
        if let Some(c) = self.shadow.as_mut() {
            c.restart_body();
            if let Some(r) = upstream_req {
                c.forwarded(&r.headers);
            }
        }
    }

    /// The request is refused or answered without an upstream: `status` is what the client got.
    pub(crate) fn set_status(&mut self, status: u16) {
        self.status = status;
    }

    /// Chooses the next attempt's upstream (`upstream_peer`): the first available in the order
    /// from the current position, counting a move away from the previous choice.
    pub(crate) async fn choose_peer(&mut self) -> Result<Box<HttpPeer>> {
        let table = self.table()?.clone();
        let ri = self
            .route
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route"))?;
        let route = &table.routes[ri];
        let (pos, skipped) =
            decide::next_available(&self.order, self.pos, |u| table.upstreams[u].state.check())
                .ok_or_else(|| {
                    Error::explain(ErrorType::ConnectNoRoute, "no upstream left to try")
                })?;
        let u = self.order.get(pos).unwrap_or(0);
        // Count the move from the request's previous choice, if it moved.
        let moved_from = self
            .pending
            .take()
            .or_else(|| skipped.map(|r| (self.order.get(self.pos).unwrap_or(u), r)));
        if let Some((from, reason)) = moved_from.filter(|_| !self.forced) {
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
                self.fell_back.get_or_insert(reason);
                if reason == FallbackReason::AllDown && log_all_down_now() {
                    tracing::warn!(route = %route.id, upstream = %table.upstreams[u].name, "every upstream of the route is down; trying anyway (logged at most once a second; switchyard_fallbacks_total counts each)");
                }
            }
        }
        self.pos = pos;
        self.upstream = Some(u);
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
        self.attempt_start = Some(Instant::now());
        Ok(Box::new(peer))
    }

    /// The current attempt's upstream answered `status` (`upstream_response_filter`): counts
    /// the attempt and the outlier signal; `Err` (retryable) when a 5xx moves the request to
    /// the next upstream. `whole` says whether the request body can be replayed whole.
    pub(crate) fn answered(
        &mut self,
        status: u16,
        method: &http::Method,
        body: (bool, bool),
    ) -> Result<()> {
        let (Some(table), Some(u), Some(ri)) = (self.table.clone(), self.upstream, self.route)
        else {
            return Ok(());
        };
        let up = &table.upstreams[u];
        self.end_attempt(Some(AttemptOutcome::of_status(status)));
        if status >= 500 && up.outlier.count_5xx {
            up.state.record_failure(&up.outlier);
        } else {
            up.state.record_success();
        }
        if status >= 500 && !self.forced && self.pos + 1 < self.order.len() {
            let route = &table.routes[ri];
            let whole = self.body_whole(body.0, body.1, route.retry_buffer_bytes);
            if decide::may_replay(method, true, whole, route) {
                self.pending = Some((u, FallbackReason::Status5xx));
                self.pos += 1;
                let mut e = Error::explain(
                    ErrorType::HTTPStatus(status),
                    "upstream answered 5xx; trying the fallback",
                );
                e.set_retry(true);
                return Err(e);
            }
        }
        Ok(())
    }

    /// The response head goes to the client (`response_filter`): the shadow sees it and the
    /// upstream's name is added when the table asks for it.
    pub(crate) fn responding(&mut self, resp: &mut ResponseHeader) -> Result<()> {
        if let Some(c) = self.shadow.as_mut() {
            c.primary_head(resp.status.as_u16(), &resp.headers);
        }
        if let (Some(table), Some(u)) = (self.table.as_ref(), self.upstream) {
            if table.proxy.response_header {
                resp.insert_header(UPSTREAM_HEADER, table.upstreams[u].name_header.clone())?;
            }
        }
        Ok(())
    }

    /// [`Ctx::responding`] for a head the fast path writes itself ([`h1::Downstream`]): the
    /// shadow sees the headers (`headers` is called only when a shadow is on); returns the
    /// upstream's name when the table asks for it in responses.
    pub(crate) fn responding_fast(
        &mut self,
        status: u16,
        headers: impl FnOnce() -> http::HeaderMap,
    ) -> Option<HeaderValue> {
        if let Some(c) = self.shadow.as_mut() {
            c.primary_head(status, &headers());
        }
        match (self.table.as_ref(), self.upstream) {
            (Some(table), Some(u)) if table.proxy.response_header => {
                Some(table.upstreams[u].name_header.clone())
            }
            _ => None,
        }
    }

    /// A response body chunk going to the client.
    pub(crate) fn response_chunk(&mut self, b: &[u8]) {
        if let Some(c) = self.shadow.as_mut() {
            c.primary_chunk(b);
        }
    }

    /// Connecting to the current attempt's upstream failed (`fail_to_connect`): blames the
    /// upstream and moves on when allowed (nothing was sent).
    pub(crate) fn connect_failed(&mut self, mut e: Box<Error>) -> Box<Error> {
        let Some(table) = self.table.clone() else {
            return e;
        };
        if let Some(u) = self.upstream {
            let up = &table.upstreams[u];
            up.state.record_failure(&up.outlier);
            let reason = if matches!(e.etype(), ErrorType::ConnectTimedout) {
                FallbackReason::Timeout
            } else {
                FallbackReason::ConnectError
            };
            self.end_attempt(Some(if reason == FallbackReason::Timeout {
                AttemptOutcome::Timeout
            } else {
                AttemptOutcome::Error
            }));
            // Nothing was sent: always safe to move on, unless a tester forced this upstream.
            if !self.forced && self.pos + 1 < self.order.len() {
                self.pending = Some((u, reason));
                self.pos += 1;
                e.set_retry(true);
            } else {
                e.set_retry(false);
            }
        }
        e
    }

    /// An attempt failed after its connection was made (`error_while_proxy`). `headers_sent`:
    /// the client already has a response head; `whole`: the body can be replayed whole within
    /// the given limit. Sets `retry` on the error when the request goes on.
    pub(crate) fn attempt_failed(
        &mut self,
        e: Box<Error>,
        client_reused: bool,
        headers_sent: bool,
        method: &http::Method,
        body: (bool, bool),
    ) -> Box<Error> {
        let mut e = e.more_context(format!(
            "upstream {}",
            self.upstream
                .and_then(|u| self.table.as_ref().map(|t| t.upstreams[u].name.clone()))
                .unwrap_or_default()
        ));
        // Our own 5xx signal from `answered`: already decided.
        if matches!(e.etype(), ErrorType::HTTPStatus(_))
            && matches!(self.pending, Some((_, FallbackReason::Status5xx)))
        {
            e.set_retry(true);
            return e;
        }
        let (Some(table), Some(ri), Some(u)) = (self.table.clone(), self.route, self.upstream)
        else {
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
        self.end_attempt(match kind {
            AttemptError::Timeout => Some(AttemptOutcome::Timeout),
            AttemptError::Upstream => Some(AttemptOutcome::Error),
            AttemptError::StalePooled | AttemptError::Other => None,
        });
        let replayable = !headers_sent && {
            let whole = self.body_whole(body.0, body.1, route.retry_buffer_bytes);
            decide::may_replay(method, true, whole, route)
        };
        let can_fall_back = !self.forced && self.pos + 1 < self.order.len();
        let (step, blame) =
            decide::after_error(kind, replayable, can_fall_back, self.retried_stale);
        if blame {
            let up = &table.upstreams[u];
            up.state.record_failure(&up.outlier);
        }
        match step {
            NextStep::Same => {
                self.retried_stale = true;
                e.set_retry(true);
            }
            NextStep::Fallback(reason) => {
                self.pending = Some((u, reason));
                self.pos += 1;
                e.set_retry(true);
            }
            NextStep::GiveUp => e.set_retry(false),
        }
        e
    }

    /// Whether the body is whole for a replay within `limit` (see [`decide::body_whole`]):
    /// `done` = the client sent all of it, `truncated` = the replay buffer overflowed.
    pub(crate) fn body_whole(&self, done: bool, truncated: bool, limit: usize) -> bool {
        let b = BodyState {
            declared: self.declared_body,
            seen: self.body_seen,
            done,
            truncated,
        };
        decide::body_whole(&b, limit)
    }
}

impl Proxy {
    /// Matches the request against `table`; fills the route and the order of preference.
    pub(crate) fn route_request(
        &self,
        req: &RequestHeader,
        client_ip: Option<std::net::IpAddr>,
        ctx: &mut Ctx,
        table: Arc<RouteTable>,
    ) {
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
            // The first value of each, as `get` gives it, found in one pass over the (few)
            // headers instead of three lookups.
            let override_header = table.proxy.override_header.as_ref();
            let (mut override_name, mut override_secret, mut cookies) = (None, None, None);
            for (name, value) in headers.iter() {
                if cookies.is_none() && *name == header::COOKIE {
                    cookies = Some(value.as_bytes());
                }
                if override_secret.is_none() && *name == SECRET {
                    override_secret = Some(value.as_bytes());
                }
                if override_name.is_none() && Some(name) == override_header {
                    override_name = Some(value.as_bytes());
                }
            }
            let steering = Steering {
                override_name,
                override_secret,
                cookies,
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

    /// Routes the request and waits out a hold (`request_filter`). `Ok(None)`: go on to an
    /// upstream; `Ok(Some(answer))`: answer the client with it instead.
    pub(crate) async fn admit(
        &self,
        req: &RequestHeader,
        client_ip: Option<std::net::IpAddr>,
        ctx: &mut Ctx,
    ) -> Result<Option<Refusal>> {
        self.route_request(req, client_ip, ctx, self.store.load());
        let Some(ri) = ctx.route else {
            return Ok(Some(Refusal::NoRoute));
        };
        let table = ctx.table()?.clone();
        // The declared length is looked up once for the limit, the in-flight record and the
        // body watch below.
        let declared = limits::declared_length(req);
        if let Err(r) = limits::check_declared(declared, table.routes[ri].max_body_bytes) {
            METRICS.rejected.with_label_values(&[r.reason]).inc();
            let body = json_error(r.message, Some(&table.routes[ri].id));
            return Ok(Some(Refusal::Limit(r, body)));
        }
        let waited = match HOLDS.wait(&table.routes[ri].id, || held_bytes(req)).await {
            Verdict::Proceed(w) => w,
            refused => {
                let (reason, msg) = match refused {
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
                return Ok(Some(Refusal::Held(json_error(
                    msg,
                    Some(&table.routes[ri].id),
                ))));
            }
        };
        if !waited.is_zero() {
            // Held: proceed on the table that is current now, not the one we started with.
            self.route_request(req, client_ip, ctx, self.store.load());
            if ctx.route.is_none() {
                return Ok(Some(Refusal::NoRoute));
            }
        }
        ctx.admitted(req, declared);
        // The body is read from now on (not while the request was held): watch its rate.
        if limits::has_body(req, declared) {
            edge::body_started();
            self.may_be_dropped(req, ctx);
        }
        Ok(None)
    }

    /// Records metrics, the shadow copy and the access log of a finished request (`logging`).
    /// `status`: what the client got (0: nothing).
    pub(crate) fn finish(
        &self,
        req: &RequestHeader,
        status: u16,
        e: Option<&Error>,
        ctx: &mut Ctx,
    ) {
        let status = if status == 0 { ctx.status } else { status };
        if let (Some(c), Some(t)) = (ctx.shadow.take(), ctx.table.as_ref()) {
            shadow::finish(
                c,
                t.clone(),
                ctx.start.elapsed(),
                e.is_none() && ctx.status == 0,
            );
        }
        ctx.unfinished = None;
        let host = match self.access_log {
            Some(_) => request_host(req),
            None => std::borrow::Cow::Borrowed(""),
        };
        record(
            ctx,
            self.access_log.as_ref(),
            (req.method.as_str(), &host, req.uri.path()),
            status,
            e.map(|e| e.etype().as_str().to_string()),
        );
    }

    /// Notes what a request admitted with a body or upgraded needs to be logged if the
    /// connection is closed under it (see [`Ctx`]'s `Drop`). Costs an allocation only for those.
    pub(crate) fn may_be_dropped(&self, req: &RequestHeader, ctx: &mut Ctx) {
        if ctx.unfinished.is_none() {
            ctx.unfinished = Some(Box::new(Unfinished {
                log: self.access_log.clone(),
                method: req.method.clone(),
                host: request_host(req).into_owned(),
                path: req.uri.path().to_string(),
            }));
        }
    }
}

/// The end of a request: leaves the route's in-flight count, counts the status and duration,
/// writes the access-log line (`(method, host, path)` from the request).
fn record(
    ctx: &mut Ctx,
    access_log: Option<&log::AccessLog>,
    (method, host, path): (&str, &str, &str),
    status: u16,
    error: Option<String>,
) {
    let elapsed = ctx.start.elapsed();
    let table = ctx.table.as_ref();
    let route = ctx.route.and_then(|ri| table.map(|t| &t.routes[ri]));
    let upstream = ctx.upstream.and_then(|u| table.map(|t| &t.upstreams[u]));
    if let Some(r) = route {
        if ctx.counted_inflight {
            r.inflight.fetch_sub(1, Ordering::Relaxed);
            ctx.counted_inflight = false;
        }
    }
    let stats = match (route, ctx.upstream, upstream) {
        (Some(r), Some(ui), Some(u)) => r.stats(ui, &u.name),
        _ => &NO_ROUTE_STATS,
    };
    stats.codes[code_class(status)].inc();
    stats.duration.observe(elapsed.as_secs_f64());
    if let Some(log) = access_log {
        log.write(&log::Entry {
            time: log::now_rfc3339(),
            method,
            host,
            path,
            route: route.map_or("", |r| &r.id),
            upstream: upstream.map_or("", |u| &u.name),
            status,
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            table_version: table.map_or(0, |t| t.version),
            fallback: ctx.fell_back.map(FallbackReason::as_str),
            error,
        });
    }
}

/// Why a request is answered without an upstream.
pub(crate) enum Refusal {
    /// No route matches: 404, the connection kept.
    NoRoute,
    /// A hold refused it (queue full or past a `reject` deadline): 503 with this body and
    /// `Retry-After`, the connection closed (the body was not read).
    Held(Bytes),
    /// A request limit (the declared body too large): its status with this body, the
    /// connection closed.
    Limit(limits::Reject, Bytes),
}

impl Refusal {
    /// The status of the answer.
    pub(crate) fn status(&self) -> u16 {
        match self {
            Refusal::NoRoute => 404,
            Refusal::Held(_) => 503,
            Refusal::Limit(r, _) => r.status,
        }
    }

    /// Whether the client connection stays open after the answer (only for 404: the others
    /// leave a request body unread).
    pub(crate) fn keeps_connection(&self) -> bool {
        matches!(self, Refusal::NoRoute)
    }

    /// The answer: head (status, JSON type, length, and `Retry-After` for a hold) and body.
    pub(crate) fn answer(self) -> Result<(ResponseHeader, Bytes)> {
        let status = self.status();
        let held = matches!(self, Refusal::Held(_));
        let body = match self {
            Refusal::NoRoute => json_error("no route matches this request", None),
            Refusal::Held(b) | Refusal::Limit(_, b) => b,
        };
        let mut resp = ResponseHeader::build(status, Some(4))?;
        resp.insert_header(header::CONTENT_TYPE, "application/json")?;
        resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
        if held {
            resp.insert_header(header::RETRY_AFTER, hold::RETRY_AFTER_SECS.to_string())?;
        }
        Ok((resp, body))
    }
}

/// Answers a request that broke a limit with `r`'s status and closes the connection (the
/// body, if any, is not read); counted in `switchyard_rejected_total{reason}`.
async fn reject(
    session: &mut Session,
    ctx: &mut Ctx,
    r: limits::Reject,
    route: Option<&str>,
) -> Result<bool> {
    ctx.status = r.status;
    METRICS.rejected.with_label_values(&[r.reason]).inc();
    respond(session, r.status, json_error(r.message, route), false).await?;
    Ok(true)
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new()
    }

    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {
        // None: pingora's default adds a (disabled) compression module that still runs on
        // every request and response.
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        // The head is whole: its deadline is over.
        edge::head_done();
        let head_len = session.to_h1_raw().len();
        ctx.reject = limits::check_head(head_len, session.req_header(), &self.limits).err();
        limits::normalize_target(session.req_header_mut());
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // Taken: answered here, so a failure to write it is not counted a second time.
        if let Some(r) = ctx.reject.take() {
            return reject(session, ctx, r, None).await;
        }
        let ip = client_ip(session.client_addr());
        let req = session.req_header();
        let refusal = match self.admit(req, ip, ctx).await? {
            None => return Ok(false),
            Some(r) => r,
        };
        ctx.status = refusal.status();
        let keep = refusal.keeps_connection();
        let (resp, body) = refusal.answer()?;
        if keep {
            session.write_response_header(Box::new(resp), false).await?;
            session.write_response_body(Some(body), true).await?;
        } else {
            session
                .as_downstream_mut()
                .write_error_response(resp, body)
                .await?;
        }
        Ok(true)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if ctx.upgraded.is_some() {
            edge::activity();
            return Ok(());
        }
        // On a replay pingora passes the buffered body through here again: count per attempt
        // (reset in `upstream_request_filter`) so a replayed body is not counted twice.
        edge::body_progress(body.as_ref().map_or(0, |b| b.len()), end_of_stream);
        if let Some(b) = body.as_ref() {
            ctx.body_chunk(b);
        }
        let max = ctx
            .route
            .and_then(|ri| ctx.table.as_ref().and_then(|t| t.routes[ri].max_body_bytes));
        if let Err(r) = limits::check_body_seen(ctx.body_seen as u64, max) {
            // A body without a declared length grew over the limit: stop here; fail_to_proxy
            // answers 413 if nothing was sent to the client yet.
            ctx.reject = Some(r);
            return Error::e_explain(ErrorType::HTTPStatus(r.status), r.message);
        }
        Ok(())
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let mut peer = ctx.choose_peer().await?;
        if session.is_upgrade_req() {
            // An upgraded connection's idle limit is the route's (enforced by `edge::guard`):
            // the per-direction read timers must not close it earlier.
            if let (Some(t), Some(ri), Some(u)) = (ctx.table.as_ref(), ctx.route, ctx.upstream) {
                let idle = t.routes[ri].websocket_idle.max(t.upstreams[u].read_timeout);
                session.set_read_timeout(Some(idle));
                peer.options.read_timeout = Some(idle);
            }
        }
        Ok(peer)
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
        let up = &table.upstreams[u];
        // Rebuilt from the client's request in one pass (see `sanitize`): the same request the
        // fast path sends.
        // TLS-terminated here (the `--tls-listen` listener) or not.
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        *req = sanitize::upstream_request(
            session.req_header(),
            up,
            table.proxy.override_header.as_ref(),
            client_ip(session.client_addr()),
            tls,
        )?;
        ctx.attempt_sending(Some(req));
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if ctx.upstream.is_none() {
            return Ok(());
        }
        let done = session.as_mut().is_body_done();
        let truncated = session.as_ref().retry_buffer_truncated();
        let method = session.req_header().method.clone();
        ctx.answered(resp.status.as_u16(), &method, (done, truncated))?;
        strip_response_hop_by_hop(resp);
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if resp.status.as_u16() == 101 && session.is_upgrade_req() {
            if let (Some(t), Some(ri)) = (ctx.table.as_ref(), ctx.route) {
                let route = &t.routes[ri];
                METRICS
                    .websocket_connections
                    .with_label_values(&[&route.id])
                    .inc();
                ctx.upgraded = Some(edge::Upgraded::start());
                edge::upgraded(route.websocket_idle);
                self.may_be_dropped(session.req_header(), ctx);
            }
        }
        if limits::fit_http10(session.req_header().version, resp) {
            // The body ends when the connection closes.
            session.set_keepalive(None);
        }
        ctx.responding(resp)
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if let Some(b) = body.as_ref() {
            ctx.response_chunk(b);
        }
        if ctx.upgraded.is_some() {
            edge::activity();
        }
        Ok(None)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        e: Box<Error>,
    ) -> Box<Error> {
        ctx.connect_failed(e)
    }

    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let headers_sent = session.response_written().is_some();
        let done = session.as_mut().is_body_done();
        let truncated = session.as_ref().retry_buffer_truncated();
        let method = session.req_header().method.clone();
        ctx.attempt_failed(e, client_reused, headers_sent, &method, (done, truncated))
    }

    /// A request refused by a limit is the client's doing and already counted: no error line
    /// per refusal (a flood of them would flood the log).
    fn suppress_error_log(&self, _session: &Session, ctx: &Ctx, _error: &Error) -> bool {
        ctx.reject.is_some()
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        if let Some(r) = ctx.reject {
            METRICS.rejected.with_label_values(&[r.reason]).inc();
            let mut code = 0;
            if session.response_written().is_none() {
                let route = ctx
                    .route
                    .and_then(|ri| ctx.table.as_ref().map(|t| t.routes[ri].id.clone()));
                let body = json_error(r.message, route.as_deref());
                if respond(session, r.status, body, false).await.is_ok() {
                    code = r.status;
                }
            }
            ctx.status = code;
            return FailToProxy {
                error_code: code,
                can_reuse_downstream: false,
            };
        }
        let (code, msg) = failure_answer(e);
        if code > 0 {
            let _ = respond(session, code, failure_body(ctx, msg), false).await;
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
            .unwrap_or(0);
        self.finish(session.req_header(), status, e, ctx);
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

/// `X-Forwarded-For` with the client appended, formatted without intermediate strings.
pub(crate) fn forwarded_for(
    prev: Option<&HeaderValue>,
    ip: std::net::IpAddr,
) -> Result<HeaderValue> {
    let prev = prev.map(HeaderValue::as_bytes).filter(|p| !p.is_empty());
    let mut buf = Vec::with_capacity(prev.map_or(0, |p| p.len() + 2) + 39);
    if let Some(p) = prev {
        buf.extend_from_slice(p);
        buf.extend_from_slice(b", ");
    }
    push_ip(&mut buf, ip);
    // The buffer becomes the value's bytes, not copied again.
    HeaderValue::from_maybe_shared(Bytes::from(buf))
        .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "x-forwarded-for", e))
}

/// Appends `ip` as its `Display` writes it; an IPv4 address (dotted decimal) without the
/// formatting machinery (a thousand instructions per request).
pub(crate) fn push_ip<B: bytes::BufMut>(buf: &mut B, ip: std::net::IpAddr) {
    let v4 = match ip {
        std::net::IpAddr::V4(v4) => v4,
        v6 => {
            use std::io::Write;
            let _ = write!(bytes::BufMut::writer(&mut *buf), "{v6}");
            return;
        }
    };
    for (i, o) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            buf.put_u8(b'.');
        }
        if o >= 100 {
            buf.put_u8(b'0' + o / 100);
        }
        if o >= 10 {
            buf.put_u8(b'0' + o / 10 % 10);
        }
        buf.put_u8(b'0' + o % 10);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_formats_like_display() {
        let ips = [
            "0.0.0.0",
            "127.0.0.1",
            "10.0.100.9",
            "192.168.10.255",
            "255.255.255.255",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:1.2.3.4",
        ];
        for ip in ips {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(forwarded_for(None, ip).unwrap(), ip.to_string().as_str());
            let prev = HeaderValue::from_static("203.0.113.7");
            assert_eq!(
                forwarded_for(Some(&prev), ip).unwrap(),
                format!("203.0.113.7, {ip}").as_str()
            );
        }
    }

    #[test]
    fn response_hop_by_hop_headers_are_stripped_except_on_101() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.append_header("Content-Length", "3").unwrap();
        resp.append_header("Connection", "close").unwrap();
        resp.append_header("Keep-Alive", "timeout=5").unwrap();
        resp.append_header("Proxy-Connection", "keep-alive")
            .unwrap();
        let mut switching = resp.clone();
        strip_response_hop_by_hop(&mut resp);
        let names: Vec<_> = resp.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["content-length"]);
        let mut wire = Vec::new();
        resp.header_to_h1_wire(&mut wire);
        assert_eq!(wire, b"Content-Length: 3\r\n");
        switching.set_status(101).unwrap();
        strip_response_hop_by_hop(&mut switching);
        assert_eq!(switching.headers.len(), 4);
    }
}
