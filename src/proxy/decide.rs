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
    pub fn len(&self) -> usize {
        self.len as usize
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
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
    /// Every upstream was down; tried anyway.
    AllDown,
}

impl FallbackReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackReason::Unhealthy => "unhealthy",
            FallbackReason::Ejected => "ejected",
            FallbackReason::ConnectError => "connect_error",
            FallbackReason::Timeout => "timeout",
            FallbackReason::Status5xx => "5xx",
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
/// - `body_whole`: the request body was kept whole within the route's limit.
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
