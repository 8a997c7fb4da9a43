//! The dashboard: one self-contained HTML page (inline CSS and JS, no external assets) that
//! polls the JSON API and posts rollbacks with the operator's token.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;

/// The page, embedded in the binary.
pub const PAGE: &str = include_str!("assets/dashboard.html");

/// `GET /`: the page. It holds no data; everything it shows comes from the API.
pub fn page() -> Response<Full<Bytes>> {
    let mut r = super::server::reply(StatusCode::OK, "text/html; charset=utf-8", PAGE);
    r.headers_mut().insert(
        http::header::CONTENT_SECURITY_POLICY,
        http::HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    r.headers_mut().insert(
        http::header::X_FRAME_OPTIONS,
        http::HeaderValue::from_static("DENY"),
    );
    r
}
