//! The pure decisions of the request path, testable without a pingora `Session`: which
//! upstreams a request may use and in what order, whether a failure may be retried, and how the
//! path is rewritten for the upstream.

use http::Method;

use crate::health::Availability;
use crate::routing::split::{bucket_of, cookie_value, StickyKey};
use crate::routing::table::{Route, RouteTable};

/// Upstream indexes a request will try, in order; a route has few, so no heap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Order {
    items: [u16; 8],
    len: u8,
}

impl Order {
    fn push(&mut self, u: usize) {
        if (self.len as usize) < self.items.len() && !self.as_slice().contains(&(u as u16)) {
            self.items[self.len as usize] = u as u16;
            self.len += 1;
        }
    }
    /// The upstream indexes in preference order.
    pub fn as_slice(&self) -> &[u16] {
        &self.items[..self.len as usize]
    }
    /// How many upstreams the request may try.
    pub fn len(&self) -> usize {
        self.len as usize
    }
    /// True before a route has been matched.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The upstream index at position `i`.
    pub fn get(&self, i: usize) -> Option<usize> {
        self.as_slice().get(i).map(|&u| u as usize)
    }
}

/// What a request carries that can steer its upstream choice.
pub struct Steering<'a> {
    /// Value of the route table's override header, if present.
    pub override_name: Option<&'a [u8]>,
    /// Value of `x-switchyard-secret`, if present.
    pub override_secret: Option<&'a [u8]>,
    /// The `Cookie` header(s), joined.
    pub cookies: Option<&'a [u8]>,
    /// Looks up a request header by lowercase name.
    pub header: &'a dyn Fn(&str) -> Option<&'a [u8]>,
    /// The client's address.
    pub client_ip: Option<std::net::IpAddr>,
    /// A random bucket for requests without a sticky key.
    pub random_bucket: u32,
}

/// The preference order for a request: the forced upstream if the override is allowed,
/// otherwise the split arm its bucket falls in; then the route's fallbacks. `forced` is true
/// when the override header picked the upstream.
pub fn preference(table: &RouteTable, route: &Route, s: &Steering<'_>) -> (Order, bool) {
    let mut order = Order::default();
    if let Some(name) = s.override_name {
        let secret_ok = match &table.proxy.override_secret {
            None => true,
            Some(want) => s
                .override_secret
                .is_some_and(|got| constant_time_eq(got, want.as_bytes())),
        };
        if secret_ok {
            if let Some(u) = std::str::from_utf8(name)
                .ok()
                .and_then(|n| table.upstream_index(n.trim()))
            {
                if route.dist.contains(u) {
                    order.push(u);
                    return (order, true);
                }
            }
        }
    }
    let bucket = match &route.sticky {
        None => s.random_bucket,
        Some(StickyKey::Cookie(name)) => s
            .cookies
            .and_then(|c| cookie_value(c, name))
            .filter(|v| !v.is_empty())
            .map(bucket_of)
            .unwrap_or(s.random_bucket),
        Some(StickyKey::Header(name)) => (s.header)(name)
            .filter(|v| !v.is_empty())
            .map(bucket_of)
            .unwrap_or(s.random_bucket),
        Some(StickyKey::ClientIp) => s
            .client_ip
            .map(|ip| match ip {
                std::net::IpAddr::V4(a) => bucket_of(&a.octets()),
                std::net::IpAddr::V6(a) => bucket_of(&a.octets()),
            })
            .unwrap_or(s.random_bucket),
    };
    order.push(route.dist.pick(bucket));
    for &f in &route.dist.fallbacks {
        order.push(f);
    }
    (order, false)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Why a request went to an upstream other than its first choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackReason {
    Unhealthy,
    Ejected,
    ConnectError,
    Timeout,
    Status5xx,
    /// The connection failed after the request was (partly) sent: closed, reset, or an
    /// unreadable answer, before any response header reached the client.
    UpstreamError,
    /// Every upstream was down; tried anyway.
    AllDown,
}

impl FallbackReason {
    /// The `reason` label of `switchyard_fallbacks_total` and the access log's `fallback`.
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackReason::Unhealthy => "unhealthy",
            FallbackReason::Ejected => "ejected",
            FallbackReason::ConnectError => "connect_error",
            FallbackReason::Timeout => "timeout",
            FallbackReason::Status5xx => "5xx",
            FallbackReason::UpstreamError => "upstream_error",
            FallbackReason::AllDown => "all_down",
        }
    }
}

/// Picks the attempt's upstream: the first position at or after `from` whose upstream is
/// available. When none is, the first fallback after `from` (or `from` itself) is used anyway,
/// so a route never answers 503 untried. Returns the position and, when it skipped the
/// position `from`, why.
pub fn next_available(
    order: &Order,
    from: usize,
    avail: impl Fn(usize) -> Availability,
) -> Option<(usize, Option<FallbackReason>)> {
    if from >= order.len() {
        return None;
    }
    let mut first_reason = None;
    for pos in from..order.len() {
        match avail(order.get(pos)?) {
            Availability::Up => return Some((pos, first_reason)),
            Availability::Unhealthy => {
                first_reason.get_or_insert(FallbackReason::Unhealthy);
            }
            Availability::Ejected => {
                first_reason.get_or_insert(FallbackReason::Ejected);
            }
        }
    }
    // All down: prefer a fallback over the upstream that was just judged down.
    let pos = if order.len() > from + 1 {
        from + 1
    } else {
        from
    };
    Some((pos, Some(FallbackReason::AllDown)))
}

/// Whether a failed attempt may be replayed on the next upstream.
/// - `sent`: request bytes reached the upstream (false for connect failures, always retryable);
/// - `body_whole`: the request body was kept whole within the route's limit ([`body_whole`]).
///
/// Idempotent methods (RFC 9110 §9.2.2: GET, HEAD, OPTIONS, PUT, DELETE, TRACE) may be
/// replayed; POST, PATCH and the rest only when the route sets `retry_non_idempotent`.
pub fn may_replay(method: &Method, sent: bool, body_whole: bool, route: &Route) -> bool {
    if !sent {
        return true;
    }
    let idempotent = matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    );
    (idempotent || route.retry_non_idempotent) && body_whole
}

/// What is known about a request body when a retry is being decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyState {
    /// The request's `Content-Length`, if it has one.
    pub declared: Option<u64>,
    /// Most body bytes seen in one attempt so far.
    pub seen: usize,
    /// The client has sent the whole body.
    pub done: bool,
    /// Pingora's replay buffer (64 KiB) overflowed: some bytes could not be replayed.
    pub truncated: bool,
}

/// Whether the request body is "buffered whole" within the route's `limit`, so a replay sends
/// exactly what the client sent. A declared length above the limit fails at once, even when
/// the upstream answered before the body was read; a body of unknown length (chunked) counts
/// only once it is complete.
pub fn body_whole(b: &BodyState, limit: usize) -> bool {
    let limit = limit as u64;
    !b.truncated
        && (b.seen as u64) <= limit
        && match b.declared {
            Some(n) => n <= limit,
            None => b.done,
        }
}

/// How an attempt failed after its connection was made (5xx answers are decided apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptError {
    /// No response within the upstream's read (or write) timeout.
    Timeout,
    /// A pooled connection was found closed before any answer: usually the upstream closed an
    /// idle connection, not evidence that it is failing (pingora's "reused only" retry).
    StalePooled,
    /// Any other upstream failure: reset, closed, unreadable answer.
    Upstream,
    /// The client's side or our own: never retried, nothing to blame on the upstream.
    Other,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    /// Try the same upstream again on a new connection.
    Same,
    /// Move to the next upstream in the order, counted with this reason.
    Fallback(FallbackReason),
    /// Answer the client with the error.
    GiveUp,
}

/// Decides the next step after `err`. `replayable`: the request may be sent again (nothing
/// reached the client yet, and [`may_replay`] allows it). `can_fall_back`: not forced by the
/// override header and a next upstream exists. `retried_stale`: this request already retried
/// a stale pooled connection once. Returns the step and whether the failure counts against
/// the upstream for outlier detection.
pub fn after_error(
    err: AttemptError,
    replayable: bool,
    can_fall_back: bool,
    retried_stale: bool,
) -> (NextStep, bool) {
    let reason = match err {
        AttemptError::Other => return (NextStep::GiveUp, false),
        AttemptError::StalePooled if !retried_stale => {
            let step = if replayable {
                NextStep::Same
            } else {
                NextStep::GiveUp
            };
            return (step, false);
        }
        AttemptError::Timeout => FallbackReason::Timeout,
        AttemptError::StalePooled | AttemptError::Upstream => FallbackReason::UpstreamError,
    };
    let step = if replayable && can_fall_back {
        NextStep::Fallback(reason)
    } else {
        NextStep::GiveUp
    };
    (step, true)
}

/// The path (with query) to send upstream: `strip_prefix` removed if present, then
/// `path_prefix` prepended. `None` when unchanged.
pub fn rewrite_path(
    path_and_query: &str,
    strip: Option<&str>,
    prefix: Option<&str>,
) -> Option<String> {
    if strip.is_none() && prefix.is_none() {
        return None;
    }
    let mut rest = path_and_query;
    if let Some(s) = strip {
        if let Some(r) = rest.strip_prefix(s) {
            if r.is_empty() || r.starts_with('/') || r.starts_with('?') {
                rest = r;
            }
        }
    }
    let mut out = String::with_capacity(rest.len() + prefix.map_or(0, str::len) + 1);
    if let Some(p) = prefix {
        out.push_str(p);
    }
    if !rest.starts_with('/') {
        out.push('/');
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_toml, TableDoc};
    use crate::routing::compile;

    fn table(text: &str) -> RouteTable {
        let doc = TableDoc::single("t.toml", parse_toml("t.toml", text).unwrap(), None);
        compile(&doc).unwrap().table
    }

    const UPS: &str = "[upstreams.legacy]\naddrs=['127.0.0.1:1']\n\
                       [upstreams.new]\naddrs=['127.0.0.1:2']\n\
                       [upstreams.other]\naddrs=['127.0.0.1:3']\n";

    fn steer<'a>(
        header: &'a dyn Fn(&str) -> Option<&'a [u8]>,
        override_name: Option<&'a str>,
        secret: Option<&'a str>,
        cookies: Option<&'a str>,
        random_bucket: u32,
    ) -> Steering<'a> {
        Steering {
            override_name: override_name.map(str::as_bytes),
            override_secret: secret.map(str::as_bytes),
            cookies: cookies.map(str::as_bytes),
            header,
            client_ip: Some("192.0.2.7".parse().unwrap()),
            random_bucket,
        }
    }

    fn names(t: &RouteTable, o: &Order) -> Vec<String> {
        o.as_slice()
            .iter()
            .map(|&u| t.upstreams[u as usize].name.to_string())
            .collect()
    }

    #[test]
    fn preference_orders_arm_then_fallbacks() {
        let t = table(&format!(
            "{UPS}[[routes]]\nid='r'\npath='/*'\nsplit={{new=10,legacy=90}}\nfallback=['legacy','other']\nsticky='cookie:sid'\n"
        ));
        let r = &t.routes[0];
        let none = |_: &str| None;
        // Buckets 0..9000 are legacy's (name order), 9000..10000 new's.
        let (o, forced) = preference(&t, r, &steer(&none, None, None, None, 9500));
        assert_eq!(
            (names(&t, &o), forced),
            (vec!["new".into(), "legacy".into(), "other".into()], false)
        );
        let (o, _) = preference(&t, r, &steer(&none, None, None, None, 10));
        assert_eq!(names(&t, &o), ["legacy", "other"], "no upstream twice");
        // A sticky cookie overrides the random bucket, the same way every time.
        let cookie = "a=1; sid=user-42";
        let arm = |rb| {
            names(
                &t,
                &preference(&t, r, &steer(&none, None, None, Some(cookie), rb)).0,
            )[0]
            .clone()
        };
        let want = if bucket_of(b"user-42") >= 9000 {
            "new"
        } else {
            "legacy"
        };
        assert!((0..10).all(|rb| arm(rb * 997) == want));
        // An empty cookie value is no key.
        let (o, _) = preference(&t, r, &steer(&none, None, None, Some("sid="), 9500));
        assert_eq!(names(&t, &o)[0], "new");
    }

    #[test]
    fn sticky_header_and_client_ip() {
        let t = table(&format!(
            "{UPS}[[routes]]\nid='h'\npath='/h'\nsplit={{new=50,legacy=50}}\nsticky='header:X-User'\n\
             [[routes]]\nid='ip'\npath='/ip'\nsplit={{new=50,legacy=50}}\nsticky='client_ip'\n"
        ));
        let user = |n: &str| (n == "x-user").then_some(&b"alice"[..]);
        let want = |key: &[u8]| {
            if bucket_of(key) >= 5000 {
                "new"
            } else {
                "legacy"
            }
        };
        for rb in [0, 9999] {
            let (o, _) = preference(&t, &t.routes[0], &steer(&user, None, None, None, rb));
            assert_eq!(names(&t, &o)[0], want(b"alice"));
            let none = |_: &str| None;
            let (o, _) = preference(&t, &t.routes[1], &steer(&none, None, None, None, rb));
            assert_eq!(names(&t, &o)[0], want(&[192, 0, 2, 7]));
        }
    }

    #[test]
    fn override_needs_the_route_and_the_secret() {
        let none = |_: &str| None;
        let text = format!(
            "{UPS}[[routes]]\nid='r'\npath='/*'\nsplit={{new=0,legacy=100}}\nfallback='other'\n"
        );
        let t = table(&text);
        let r = &t.routes[0];
        let forced = |name, secret| {
            let (o, f) = preference(&t, r, &steer(&none, Some(name), secret, None, 0));
            (names(&t, &o), f)
        };
        assert_eq!(forced("new", None), (vec!["new".into()], true));
        assert_eq!(
            forced(" other ", None),
            (vec!["other".into()], true),
            "fallbacks too"
        );
        assert!(!forced("nope", None).1);
        assert_eq!(forced("nope", None).0, ["legacy", "other"]);
        let mut t = table(&text);
        t.proxy.override_secret = Some("s3cret".into());
        let r = &t.routes[0];
        let forced = |name, secret| preference(&t, r, &steer(&none, Some(name), secret, None, 0)).1;
        assert!(!forced("new", None));
        assert!(!forced("new", Some("s3cre")));
        assert!(!forced("new", Some("s3cret!")));
        assert!(forced("new", Some("s3cret")));
    }

    #[test]
    fn replay_rules() {
        let t = table(&format!(
            "{UPS}[[routes]]\nid='a'\npath='/a'\nto='new'\nfallback='legacy'\n\
             [[routes]]\nid='b'\npath='/b'\nto='new'\nfallback='legacy'\nretry_non_idempotent=true\n"
        ));
        let (a, b) = (&t.routes[0], &t.routes[1]);
        for m in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::PUT,
            Method::DELETE,
        ] {
            assert!(may_replay(&m, true, true, a), "{m}");
            assert!(!may_replay(&m, true, false, a), "{m} with a partial body");
        }
        for m in [Method::POST, Method::PATCH] {
            assert!(!may_replay(&m, true, true, a), "{m}");
            assert!(may_replay(&m, true, true, b), "{m} opted in");
            assert!(
                !may_replay(&m, true, false, b),
                "{m} opted in, partial body"
            );
            assert!(may_replay(&m, false, false, a), "{m}: nothing sent");
        }
    }

    #[test]
    fn rewrite() {
        assert_eq!(rewrite_path("/a?x=1", None, None), None);
        assert_eq!(
            rewrite_path("/user/1?x=1", None, Some("/prod")).as_deref(),
            Some("/prod/user/1?x=1")
        );
        assert_eq!(
            rewrite_path("/api/user/1", Some("/api"), Some("/prod")).as_deref(),
            Some("/prod/user/1")
        );
        assert_eq!(
            rewrite_path("/api?q", Some("/api"), None).as_deref(),
            Some("/?q")
        );
        assert_eq!(
            rewrite_path("/apix/1", Some("/api"), None).as_deref(),
            Some("/apix/1")
        );
        assert_eq!(
            rewrite_path("/api", Some("/api"), Some("/prod")).as_deref(),
            Some("/prod/")
        );
    }

    #[test]
    fn bodies() {
        let b = |declared, seen, done, truncated| BodyState {
            declared,
            seen,
            done,
            truncated,
        };
        assert!(body_whole(&b(None, 0, true, false), 1024), "no body");
        assert!(body_whole(&b(Some(1024), 1024, true, false), 1024));
        assert!(
            !body_whole(&b(Some(1025), 0, false, false), 1024),
            "declared over"
        );
        assert!(
            body_whole(&b(Some(1000), 10, false, false), 1024),
            "rest will follow"
        );
        assert!(
            !body_whole(&b(None, 10, false, false), 1024),
            "chunked, unfinished"
        );
        assert!(
            !body_whole(&b(None, 2000, true, false), 1024),
            "chunked, over"
        );
        assert!(
            !body_whole(&b(Some(10), 10, true, true), 1024),
            "pingora truncated"
        );
    }

    #[test]
    fn steps_after_errors() {
        use AttemptError::*;
        use NextStep::*;
        // A stale pooled connection: same upstream once, not blamed; then like any failure.
        assert_eq!(after_error(StalePooled, true, true, false), (Same, false));
        assert_eq!(after_error(StalePooled, true, false, false), (Same, false));
        assert_eq!(
            after_error(StalePooled, false, true, false),
            (GiveUp, false)
        );
        assert_eq!(
            after_error(StalePooled, true, true, true),
            (Fallback(FallbackReason::UpstreamError), true)
        );
        assert_eq!(
            after_error(Timeout, true, true, false),
            (Fallback(FallbackReason::Timeout), true)
        );
        assert_eq!(after_error(Timeout, false, true, false), (GiveUp, true));
        assert_eq!(after_error(Timeout, true, false, false), (GiveUp, true));
        assert_eq!(
            after_error(Upstream, true, true, false),
            (Fallback(FallbackReason::UpstreamError), true)
        );
        assert_eq!(after_error(Upstream, false, true, false), (GiveUp, true));
        assert_eq!(after_error(Other, true, true, false), (GiveUp, false));
    }

    #[test]
    fn order_walk() {
        let mut o = Order::default();
        o.push(3);
        o.push(1);
        o.push(3);
        assert_eq!(o.as_slice(), &[3, 1]);
        let up = |u| {
            if u == 3 {
                Availability::Ejected
            } else {
                Availability::Up
            }
        };
        assert_eq!(
            next_available(&o, 0, up),
            Some((1, Some(FallbackReason::Ejected)))
        );
        let down = |_| Availability::Unhealthy;
        assert_eq!(
            next_available(&o, 0, down),
            Some((1, Some(FallbackReason::AllDown)))
        );
        assert_eq!(
            next_available(&o, 1, down),
            Some((1, Some(FallbackReason::AllDown)))
        );
        assert_eq!(next_available(&o, 2, down), None);
    }
}
