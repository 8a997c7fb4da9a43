//! Request limits and request-target hygiene: pure checks on a parsed request head, shared by
//! every engine that serves HTTP/1.x (the pingora phases in [`super`] and any fast path).
//!
//! Each check returns a [`Reject`] naming the status the client gets and the `reason` label of
//! `switchyard_rejected_total`; the caller answers it before anything reaches an upstream.

use std::time::Duration;

use http::header::{self, HeaderValue};
use http::Version;
use pingora::http::{RequestHeader, ResponseHeader};

/// Largest request head (request line and every header line, as received). nginx: 4 buffers of
/// 8 KiB (`large_client_header_buffers 4 8k`).
pub const DEFAULT_MAX_HEAD_BYTES: usize = 32 * 1024;
/// Largest single header line (`name: value`). nginx: one 8 KiB buffer.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 8 * 1024;
/// Most header lines in one request. nginx has no count limit; Apache and Envoy use 100.
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// pingora's own parser refuses (400) a request with more header lines than this, before any
/// of switchyard's checks run; `max_headers` cannot go above it.
pub const PARSER_MAX_HEADERS: usize = 256;
/// Longest request target (the URL as sent). nginx: the request line must fit one 8 KiB buffer.
pub const DEFAULT_MAX_URL_BYTES: usize = 8 * 1024;
/// Deadline for receiving a whole request head, from its first byte. nginx's
/// `client_header_timeout` is 60 s; HAProxy's commonly configured `timeout http-request` 10 s.
pub const DEFAULT_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Request bodies must average at least this many bytes per second once the grace period has
/// passed (Apache's `mod_reqtimeout` default is 500 B/s).
pub const DEFAULT_BODY_MIN_RATE: u64 = 1024;
/// How long a request body may take before the minimum rate applies.
pub const DEFAULT_BODY_GRACE: Duration = Duration::from_secs(10);
/// Idle timeout of an upgraded (WebSocket) connection when its route sets none: the same as
/// nginx's `proxy_read_timeout` and an AWS ALB's idle timeout.
pub const DEFAULT_WEBSOCKET_IDLE: Duration = Duration::from_secs(60);

/// The data plane's request limits (`serve` flags). Built once at start; read by every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head in bytes; over it: 431. Default [`DEFAULT_MAX_HEAD_BYTES`].
    pub max_head_bytes: usize,
    /// Largest header line (`name: value`) in bytes; over it: 431.
    /// Default [`DEFAULT_MAX_HEADER_BYTES`].
    pub max_header_bytes: usize,
    /// Most header lines; over it: 431. Default [`DEFAULT_MAX_HEADERS`].
    pub max_headers: usize,
    /// Longest request target in bytes; over it: 414. Default [`DEFAULT_MAX_URL_BYTES`].
    pub max_url_bytes: usize,
    /// Whole-head deadline from the head's first byte; past it the connection is closed.
    pub head_timeout: Duration,
    /// Minimum average request-body rate in bytes per second after `body_grace`; 0 = none.
    pub body_min_rate: u64,
    /// Time a request body may take before `body_min_rate` applies.
    pub body_grace: Duration,
    /// Most client connections open at once on the listener; 0 = no cap.
    pub max_connections: usize,
    /// Most client connections open at once from one IP address; 0 = no cap.
    pub max_connections_per_ip: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: DEFAULT_MAX_HEAD_BYTES,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            max_url_bytes: DEFAULT_MAX_URL_BYTES,
            head_timeout: DEFAULT_HEAD_TIMEOUT,
            body_min_rate: DEFAULT_BODY_MIN_RATE,
            body_grace: DEFAULT_BODY_GRACE,
            max_connections: 0,
            max_connections_per_ip: 0,
        }
    }
}

/// Why switchyard refused a request or closed a connection: the status sent (0 = the
/// connection is closed without an answer), the `switchyard_rejected_total` reason and the
/// message of the JSON error body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    pub reason: &'static str,
    pub message: &'static str,
}

/// Request head larger than `max_head_bytes`.
pub const HEAD_TOO_LARGE: Reject = Reject {
    status: 431,
    reason: "head_too_large",
    message: "request header section too large",
};
/// One header line larger than `max_header_bytes`.
pub const HEADER_TOO_LARGE: Reject = Reject {
    status: 431,
    reason: "header_too_large",
    message: "request header field too large",
};
/// More header lines than `max_headers`.
pub const TOO_MANY_HEADERS: Reject = Reject {
    status: 431,
    reason: "too_many_headers",
    message: "too many request header fields",
};
/// Request target longer than `max_url_bytes`.
pub const URL_TOO_LONG: Reject = Reject {
    status: 414,
    reason: "url_too_long",
    message: "request target too long",
};
/// Request body over the route's `max_body_bytes`.
pub const BODY_TOO_LARGE: Reject = Reject {
    status: 413,
    reason: "body_too_large",
    message: "request body too large for this route",
};
/// The request head did not arrive whole within `head_timeout`: the connection is closed.
pub const HEAD_TIMEOUT: Reject = Reject {
    status: 0,
    reason: "head_timeout",
    message: "request head not received in time",
};
/// The request body fell under `body_min_rate`: the connection is closed.
pub const BODY_TOO_SLOW: Reject = Reject {
    status: 0,
    reason: "body_too_slow",
    message: "request body sent too slowly",
};
/// An upgraded connection stayed idle past its route's `websocket_idle_timeout_ms`.
pub const UPGRADED_IDLE: Reject = Reject {
    status: 0,
    reason: "websocket_idle",
    message: "upgraded connection idle",
};
/// A connection over `max_connections`: closed at once, before anything is read.
pub const CONNECTION_CAP: Reject = Reject {
    status: 0,
    reason: "connection_cap",
    message: "too many client connections",
};
/// A connection over `max_connections_per_ip`: closed at once, before anything is read.
pub const CONNECTION_CAP_IP: Reject = Reject {
    status: 0,
    reason: "connection_cap_ip",
    message: "too many client connections from this address",
};

/// Checks a request head once it is parsed, before routing. `head_len` is the head's size as
/// received (request line, header lines and the blank line). The URL is checked first (414),
/// then the header count, each header line and the whole head (431).
pub fn check_head(head_len: usize, req: &RequestHeader, limits: &Limits) -> Result<(), Reject> {
    if req.raw_path().len() > limits.max_url_bytes {
        return Err(URL_TOO_LONG);
    }
    if req.headers.len() > limits.max_headers {
        return Err(TOO_MANY_HEADERS);
    }
    if req
        .headers
        .iter()
        .any(|(n, v)| header_line_len(n.as_str(), v) > limits.max_header_bytes)
    {
        return Err(HEADER_TOO_LARGE);
    }
    if head_len > limits.max_head_bytes {
        return Err(HEAD_TOO_LARGE);
    }
    Ok(())
}

/// Size of one header line as `max_header_bytes` counts it: `name: value` without the CRLF.
pub fn header_line_len(name: &str, value: &HeaderValue) -> usize {
    name.len() + 2 + value.len()
}

/// Checks the declared `Content-Length` ([`declared_length`]) against the route's body limit
/// (`None` = no limit), so an oversized body is refused before a byte of it is read.
pub fn check_declared(len: Option<u64>, max: Option<u64>) -> Result<(), Reject> {
    let (Some(max), Some(len)) = (max, len) else {
        return Ok(());
    };
    if len > max {
        return Err(BODY_TOO_LARGE);
    }
    Ok(())
}

/// Checks the body bytes received so far (a chunked body has no declared length).
pub fn check_body_seen(seen: u64, max: Option<u64>) -> Result<(), Reject> {
    match max {
        Some(max) if seen > max => Err(BODY_TOO_LARGE),
        _ => Ok(()),
    }
}

/// The request's `Content-Length`, when it is one valid number.
pub fn declared_length(req: &RequestHeader) -> Option<u64> {
    req.headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Whether the request announces a body: a non-zero `Content-Length` (`declared`, as
/// [`declared_length`] found it) or a `Transfer-Encoding`.
pub fn has_body(req: &RequestHeader, declared: Option<u64>) -> bool {
    declared.is_some_and(|n| n > 0) || req.headers.contains_key(header::TRANSFER_ENCODING)
}

/// Rewrites an absolute-form target (`GET http://example.com/x HTTP/1.1`) to origin-form
/// (`/x`) with `Host` set from its authority (RFC 9112 §3.2.2: the authority takes precedence
/// over any `Host`; pingora's parser has already refused a `Host` that differs from it). Runs
/// before routing, so the route is matched on that authority. pingora keeps the target's bytes
/// for the wire and only its path in `uri`; setting the `uri` again drops those bytes. Returns
/// whether the target was rewritten; other forms (origin, CONNECT's authority, `*`) are kept.
pub fn normalize_target(req: &mut RequestHeader) -> bool {
    let Some(authority) = absolute_authority(req.raw_path()).map(str::to_string) else {
        return false;
    };
    if req.insert_header(header::HOST, authority).is_err() {
        return false;
    }
    let uri = match req.uri.path_and_query() {
        Some(_) => req.uri.clone(),
        None => http::Uri::from_static("/"),
    };
    req.set_uri(uri);
    true
}

/// The authority of an `http://` or `https://` absolute-form target.
fn absolute_authority(raw: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(raw).ok()?;
    let (scheme, rest) = s.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    (!authority.is_empty() && !authority.contains('@')).then_some(authority)
}

/// Makes a response fit an HTTP/1.0 client, which cannot read a chunked body (RFC 9112 §6.1):
/// drops `Transfer-Encoding`, so the body is written as is and ends when the connection
/// closes. Returns true when the connection must close after this response (the body has no
/// `Content-Length`); the caller turns keep-alive off. Does nothing for HTTP/1.1 clients.
pub fn fit_http10(client: Version, resp: &mut ResponseHeader) -> bool {
    if client >= Version::HTTP_11 || resp.status.is_informational() {
        return false;
    }
    if matches!(resp.status.as_u16(), 204 | 304) {
        // No body to frame: the connection may stay open.
        resp.remove_header(&header::TRANSFER_ENCODING);
        return false;
    }
    if resp.headers.contains_key(header::TRANSFER_ENCODING) {
        resp.remove_header(&header::TRANSFER_ENCODING);
        resp.remove_header(&header::CONTENT_LENGTH);
        return true;
    }
    !resp.headers.contains_key(header::CONTENT_LENGTH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(target: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn url_limit_at_its_edge() {
        let l = Limits {
            max_url_bytes: 10,
            ..Limits::default()
        };
        assert_eq!(check_head(0, &req("/123456789", &[]), &l), Ok(()));
        assert_eq!(
            check_head(0, &req("/1234567890", &[]), &l),
            Err(URL_TOO_LONG)
        );
    }

    #[test]
    fn header_limits_at_their_edge() {
        let l = Limits {
            max_headers: 2,
            max_header_bytes: 10,
            max_head_bytes: 100,
            ..Limits::default()
        };
        // "ab: 123456" is 10 bytes.
        assert_eq!(check_head(100, &req("/", &[("ab", "123456")]), &l), Ok(()));
        assert_eq!(
            check_head(100, &req("/", &[("ab", "1234567")]), &l),
            Err(HEADER_TOO_LARGE)
        );
        assert_eq!(
            check_head(0, &req("/", &[("a", "1"), ("b", "2")]), &l),
            Ok(())
        );
        assert_eq!(
            check_head(0, &req("/", &[("a", "1"), ("b", "2"), ("c", "3")]), &l),
            Err(TOO_MANY_HEADERS)
        );
        assert_eq!(check_head(101, &req("/", &[]), &l), Err(HEAD_TOO_LARGE));
    }

    #[test]
    fn body_limits() {
        let r = req("/", &[("content-length", "10")]);
        let declared = declared_length(&r);
        assert_eq!(declared, Some(10));
        assert_eq!(check_declared(declared, Some(10)), Ok(()));
        assert_eq!(check_declared(declared, Some(9)), Err(BODY_TOO_LARGE));
        assert_eq!(check_declared(declared, None), Ok(()));
        assert_eq!(check_body_seen(10, Some(10)), Ok(()));
        assert_eq!(check_body_seen(11, Some(10)), Err(BODY_TOO_LARGE));
        assert!(has_body(&r, declared));
        let empty = req("/", &[("content-length", "0")]);
        assert!(!has_body(&empty, declared_length(&empty)));
        let chunked = req("/", &[("transfer-encoding", "chunked")]);
        assert!(has_body(&chunked, declared_length(&chunked)));
    }

    #[test]
    fn absolute_form_becomes_origin_form() {
        let mut r = req(
            "http://Example.com:8080/x?y=1",
            &[("host", "Example.com:8080")],
        );
        assert!(normalize_target(&mut r));
        assert_eq!(r.raw_path(), b"/x?y=1");
        assert_eq!(r.headers["host"], "Example.com:8080");
        let mut r = req("HTTPS://example.com", &[]);
        assert!(normalize_target(&mut r));
        assert_eq!(r.raw_path(), b"/");
        assert_eq!(r.headers["host"], "example.com");
        let mut r = req("/plain", &[("host", "h")]);
        assert!(!normalize_target(&mut r));
        assert_eq!(r.headers["host"], "h");
    }

    #[test]
    fn http10_clients_never_get_chunked() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("transfer-encoding", "chunked").unwrap();
        assert!(!fit_http10(Version::HTTP_11, &mut resp));
        assert!(resp.headers.contains_key("transfer-encoding"));
        assert!(fit_http10(Version::HTTP_10, &mut resp));
        assert!(!resp.headers.contains_key("transfer-encoding"));
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("content-length", "3").unwrap();
        assert!(!fit_http10(Version::HTTP_10, &mut resp));
        let mut resp = ResponseHeader::build(304, None).unwrap();
        assert!(!fit_http10(Version::HTTP_10, &mut resp));
    }
}
