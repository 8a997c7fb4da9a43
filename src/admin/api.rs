//! The admin API's routes and handlers: JSON in and out, errors as
//! `{"error": ..., "details": [...]}`.
//!
//! Every call that changes anything needs `Authorization: Bearer TOKEN`; the token's actor name
//! goes into the history. Read-only calls need no token while the listener is on loopback.
//! Table changes run on a blocking thread through [`Ledger`], so a slow disk never stalls the
//! control runtime.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::auth::Denied;
use super::history::{Action, HistoryError};
use super::ledger::{Change, ChangeError, Committed, RoutePatch};
use super::server::{json as json_resp, reply, AdminState};
use super::types::{HoldRequest, HoldResult, HoldView, InflightView, ReleaseResult, RouteInflight};
use crate::config::OneOrMany;
use crate::health::Availability;
use crate::metrics::{series, traffic, METRICS};
use crate::proxy::hold::{self, HOLDS};
use crate::routing;

/// Largest request body accepted (a whole table fits many times over); larger gets 413.
pub const MAX_BODY: usize = 1024 * 1024;
/// Longest hold a caller may ask for.
pub const MAX_HOLD_MS: u64 = 600_000;
/// Request header carrying the reason for a `PUT /v1/table`.
pub const REASON_HEADER: &str = "x-switchyard-reason";
/// Bytes of an oversized body read and thrown away so the client sees the 413 rather than a
/// reset connection.
const DRAIN_LIMIT: usize = 8 * MAX_BODY;
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call failed; each maps to one status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{}", .0.message())]
    Unauthorized(Denied),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("method {0} not allowed here (allowed: {1})")]
    MethodNotAllowed(Method, &'static str),
    #[error("request body is larger than {MAX_BODY} bytes")]
    TooLarge,
    #[error("{0}")]
    BadRequest(String),
    #[error("the table is invalid")]
    InvalidTable(Vec<Value>),
    #[error(transparent)]
    Change(#[from] ChangeError),
    #[error("history: {0}")]
    History(HistoryError),
    #[error("internal error: {0}")]
    Internal(String),
    /// Fleet mode: etcd cannot be reached; nothing was changed.
    #[error("{0}; nothing was changed (this node keeps serving its last table)")]
    Unavailable(String),
    /// Fleet mode: the change is committed but not every live node serves it (`wait_fleet`).
    #[error("{0}")]
    NotConfirmed(String),
}

impl From<HistoryError> for ApiError {
    fn from(e: HistoryError) -> ApiError {
        ApiError::History(e)
    }
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(..) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::InvalidTable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::History(HistoryError::Unavailable(_))
            | ApiError::Change(ChangeError::History(HistoryError::Unavailable(_)))
            | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotConfirmed(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Change(e) => match e {
                ChangeError::Stale { .. } => StatusCode::CONFLICT,
                ChangeError::UnknownRoute(_) | ChangeError::UnknownVersion(_) => {
                    StatusCode::NOT_FOUND
                }
                ChangeError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
                ChangeError::NoFallback { .. } | ChangeError::Conflict(_) => StatusCode::CONFLICT,
                ChangeError::FilesUnchanged => StatusCode::CONFLICT,
                ChangeError::BadRequest(_) => StatusCode::BAD_REQUEST,
                ChangeError::History(HistoryError::Moved { .. }) => StatusCode::CONFLICT,
                ChangeError::History(_) | ChangeError::Internal(_) => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            },
            ApiError::History(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn details(&self) -> Vec<Value> {
        match self {
            ApiError::InvalidTable(d) => d.clone(),
            ApiError::Change(ChangeError::Invalid(d)) => d
                .iter()
                .filter_map(|d| serde_json::to_value(d).ok())
                .collect(),
            ApiError::Change(ChangeError::Conflict(s)) => {
                s.iter().map(|s| Value::String(s.clone())).collect()
            }
            _ => Vec::new(),
        }
    }

    /// The error response.
    pub fn response(&self) -> http::Response<Full<Bytes>> {
        let mut r = json_resp(
            self.status(),
            &json!({ "error": self.to_string(), "details": self.details() }),
        );
        match self {
            ApiError::MethodNotAllowed(_, allow) => {
                if let Ok(v) = http::HeaderValue::from_str(allow) {
                    r.headers_mut().insert(http::header::ALLOW, v);
                }
            }
            ApiError::Unauthorized(_) => {
                r.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer realm=\"switchyard\""),
                );
            }
            ApiError::TooLarge => {
                r.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            _ => {}
        }
        r
    }
}

type Resp = http::Response<Full<Bytes>>;

/// Everything a handler needs from the request, body not yet read.
struct Call {
    method: Method,
    segments: Vec<String>,
    query: BTreeMap<String, String>,
    headers: HeaderMap,
    body: Option<Incoming>,
}

fn parse_query(q: Option<&str>) -> BTreeMap<String, String> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (p.to_string(), String::new()),
        })
        .collect()
}

/// Serves one admin request.
pub async fn handle(state: Arc<AdminState>, req: http::Request<Incoming>) -> Resp {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let call = Call {
        method: parts.method.clone(),
        segments,
        query: parse_query(parts.uri.query()),
        headers: parts.headers,
        body: Some(body),
    };
    match route(&state, call).await {
        Ok(r) => r,
        Err(e) => {
            if e.status().is_server_error() {
                tracing::error!(method = %parts.method, path = %parts.uri.path(), error = %e, "admin call failed");
            } else {
                tracing::debug!(method = %parts.method, path = %parts.uri.path(), error = %e, "admin call refused");
            }
            e.response()
        }
    }
}

fn only(method: &Method, want: &Method, allow: &'static str) -> Result<(), ApiError> {
    if method == want || (want == Method::GET && method == Method::HEAD) {
        Ok(())
    } else {
        Err(ApiError::MethodNotAllowed(method.clone(), allow))
    }
}

async fn route(state: &Arc<AdminState>, mut call: Call) -> Result<Resp, ApiError> {
    let seg: Vec<&str> = call.segments.iter().map(String::as_str).collect();
    let m = call.method.clone();
    match seg.as_slice() {
        [] => {
            only(&m, &Method::GET, "GET")?;
            Ok(super::dashboard::page())
        }
        ["metrics"] => {
            only(&m, &Method::GET, "GET")?;
            Ok(reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                METRICS.render(),
            ))
        }
        ["healthz"] => {
            only(&m, &Method::GET, "GET")?;
            let mut body = json!({ "status": "ok", "version": state.store.version() });
            if let Some(f) = &state.fleet {
                // Still serving (200): the data plane works on the last table; only changes
                // wait for etcd.
                let up = f.etcd_up();
                body["fleet"] = json!({
                    "node": f.node,
                    "etcd": if up { "up" } else { "unreachable" },
                    "serving_last_known_table": !up,
                });
            }
            Ok(json_resp(StatusCode::OK, &body))
        }
        ["v1", rest @ ..] => {
            let rest: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
            let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
            if m == Method::GET || m == Method::HEAD {
                if !state.open_reads {
                    authenticate(state, &call.headers)?;
                }
            } else {
                // Authenticate before reading the body: a 401 changes nothing and costs nothing.
                authenticate_known(state, &call, &rest)?;
            }
            v1(state, &mut call, &rest).await
        }
        _ => Err(ApiError::NotFound(format!("/{}", call.segments.join("/")))),
    }
}

/// Authenticates a changing call, after checking the path exists (an unknown path is a 404
/// whoever asks).
fn authenticate_known(state: &AdminState, call: &Call, rest: &[&str]) -> Result<String, ApiError> {
    let known = matches!(
        rest,
        ["table"]
            | ["routes", _]
            | ["routes", _, "rollback"]
            | ["revert"]
            | ["adopt"]
            | ["hold"]
            | ["release"]
            | ["history"]
            | ["history", _]
            | ["upstreams"]
            | ["inflight"]
            | ["stats"]
            | ["series"]
            | ["traffic"]
            | ["tls"]
            | ["plans", _]
            | ["plans", _, "abort" | "approve"]
            | ["fleet"]
            | ["fleet", "push"]
    );
    if !known {
        return Err(ApiError::NotFound(format!("/v1/{}", rest.join("/"))));
    }
    authenticate(state, &call.headers)
}

fn authenticate(state: &AdminState, headers: &HeaderMap) -> Result<String, ApiError> {
    let auth = headers
        .get(http::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    state.tokens.check(auth).map_err(|d| {
        tracing::warn!(
            reason = d.message(),
            "admin call refused: not authenticated"
        );
        ApiError::Unauthorized(d)
    })
}

/// Who makes a changing call: the token's name, followed by the client's own
/// `x-switchyard-actor` in parentheses (`ops (plan:users-to-lambda)`), which is
/// self-declared and only ever recorded next to the authenticated name.
fn actor(state: &AdminState, call: &Call) -> Result<String, ApiError> {
    let name = authenticate(state, &call.headers)?;
    let declared = call
        .headers
        .get(super::client::ACTOR_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|a| !a.is_empty());
    Ok(match declared {
        Some(a) => {
            let a: String = a.chars().filter(|c| !c.is_control()).take(100).collect();
            format!("{name} ({a})")
        }
        None => name,
    })
}

async fn v1(state: &Arc<AdminState>, call: &mut Call, rest: &[&str]) -> Result<Resp, ApiError> {
    let m = call.method.clone();
    match rest {
        ["table"] => match m {
            Method::GET | Method::HEAD => get_table(state, call),
            Method::PUT => put_table(state, call).await,
            _ => Err(ApiError::MethodNotAllowed(m, "GET, PUT")),
        },
        ["routes", id] => {
            only(&m, &Method::PATCH, "PATCH")?;
            patch_route(state, call, id).await
        }
        ["routes", id, "rollback"] => {
            only(&m, &Method::POST, "POST")?;
            rollback(state, call, id).await
        }
        ["revert"] => {
            only(&m, &Method::POST, "POST")?;
            revert(state, call).await
        }
        ["adopt"] => {
            only(&m, &Method::POST, "POST")?;
            adopt(state, call).await
        }
        ["history"] => {
            only(&m, &Method::GET, "GET")?;
            history(state, call).await
        }
        ["history", v] => {
            only(&m, &Method::GET, "GET")?;
            history_one(state, v).await
        }
        ["upstreams"] => {
            only(&m, &Method::GET, "GET")?;
            Ok(ok(upstreams(state)))
        }
        ["hold"] => match m {
            Method::GET | Method::HEAD => Ok(ok(json!({ "hold": hold_json() }))),
            Method::POST => hold(state, call).await,
            _ => Err(ApiError::MethodNotAllowed(m, "GET, POST")),
        },
        ["release"] => {
            only(&m, &Method::POST, "POST")?;
            release(state, call).await
        }
        ["inflight"] => {
            only(&m, &Method::GET, "GET")?;
            Ok(ok(inflight(state)))
        }
        ["fleet"] => {
            only(&m, &Method::GET, "GET")?;
            let f = fleet_of(state)?;
            Ok(ok(json!(crate::fleet::nodes::view(f))))
        }
        ["fleet", "push"] => {
            only(&m, &Method::POST, "POST")?;
            push(state, call).await
        }
        ["stats"] => {
            only(&m, &Method::GET, "GET")?;
            Ok(ok(stats()))
        }
        ["series"] => {
            only(&m, &Method::GET, "GET")?;
            get_series(state, call).await
        }
        ["traffic"] => {
            only(&m, &Method::GET, "GET")?;
            get_traffic(call)
        }
        ["tls"] => {
            only(&m, &Method::GET, "GET")?;
            let view = match &state.tls {
                Some(certs) => certs.view(),
                None => super::types::TlsView::default(),
            };
            serde_json::to_value(view)
                .map(ok)
                .map_err(|e| ApiError::Internal(e.to_string()))
        }
        // Migration plans: handlers in super::plans.
        ["plans"] => {
            only(&m, &Method::GET, "GET")?;
            Ok(ok(json!(super::plans::list())))
        }
        ["plans", name] => match m {
            Method::GET | Method::HEAD => Ok(ok(json!(super::plans::get(name)?))),
            Method::PUT => {
                actor(state, call)?;
                let body = read_body(call).await?;
                Ok(ok(json!(super::plans::report(name, &body)?)))
            }
            _ => Err(ApiError::MethodNotAllowed(m, "GET, PUT")),
        },
        ["plans", name, "abort"] => {
            only(&m, &Method::POST, "POST")?;
            let actor = actor(state, call)?;
            let body = read_body(call).await?;
            Ok(ok(json!(
                super::plans::abort(state, name, &actor, &body).await?
            )))
        }
        ["plans", name, "approve"] => {
            only(&m, &Method::POST, "POST")?;
            actor(state, call)?;
            let body = read_body(call).await?;
            Ok(ok(json!(super::plans::approve(name, &body)?)))
        }
        ["shadow", route @ ..] if route.len() <= 1 => {
            only(&m, &Method::GET, "GET")?;
            super::shadow::view(&state.store.load(), route.first().copied())
                .map(|v| ok(json!(v)))
                .ok_or_else(|| {
                    ApiError::NotFound(format!("no shadow results for route {:?}", route.join("/")))
                })
        }
        _ => Err(ApiError::NotFound(format!("/v1/{}", rest.join("/")))),
    }
}

fn ok(v: Value) -> Resp {
    json_resp(StatusCode::OK, &v)
}

/// Reads the body, refusing more than [`MAX_BODY`] bytes with 413.
async fn read_body(call: &mut Call) -> Result<Bytes, ApiError> {
    let declared = call
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Some(mut body) = call.body.take() else {
        return Err(ApiError::Internal("body read twice".into()));
    };
    let read = async move {
        let mut buf = bytes::BytesMut::new();
        let mut total: usize = 0;
        let over = declared.is_some_and(|n| n > MAX_BODY as u64);
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| ApiError::BadRequest(format!("reading the body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                total += data.len();
                if over || total > MAX_BODY {
                    if total > DRAIN_LIMIT {
                        break;
                    }
                    continue;
                }
                buf.extend_from_slice(&data);
            }
        }
        if over || total > MAX_BODY {
            Err(ApiError::TooLarge)
        } else {
            Ok(buf.freeze())
        }
    };
    tokio::time::timeout(BODY_TIMEOUT, read)
        .await
        .map_err(|_| ApiError::BadRequest("timed out reading the body".into()))?
}

/// The body as a JSON object (an empty body is `{}`).
async fn read_json(call: &mut Call) -> Result<serde_json::Map<String, Value>, ApiError> {
    let b = read_body(call).await?;
    if b.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<Value>(&b) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::BadRequest(
            "the body must be a JSON object".into(),
        )),
        Err(e) => Err(ApiError::BadRequest(format!("the body is not JSON: {e}"))),
    }
}

fn take_keys(obj: &serde_json::Map<String, Value>, allowed: &[&str]) -> Result<(), ApiError> {
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "unknown field {k:?} (expected one of: {})",
                allowed.join(", ")
            )));
        }
    }
    Ok(())
}

fn string_field(
    obj: &serde_json::Map<String, Value>,
    key: &str,
    required: bool,
) -> Result<Option<String>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) if !required => Ok(None),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            Err(ApiError::BadRequest(format!("{key:?} is required")))
        }
        Some(_) => Err(ApiError::BadRequest(format!("{key:?} must be a string"))),
    }
}

/// `If-Match: 7` or `If-Match: "7"`; `*` matches any version.
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(v) = headers.get(http::header::IF_MATCH) else {
        return Ok(None);
    };
    let s = v
        .to_str()
        .map_err(|_| ApiError::BadRequest("If-Match is not text".into()))?
        .trim();
    if s == "*" {
        return Ok(None);
    }
    let s = s.trim_start_matches("W/").trim_matches('"');
    s.parse::<u64>().map(Some).map_err(|_| {
        ApiError::BadRequest(format!("If-Match {s:?} is not a table version (a number)"))
    })
}

fn fleet_of(state: &AdminState) -> Result<&Arc<crate::fleet::Fleet>, ApiError> {
    state.fleet.as_ref().ok_or_else(|| {
        ApiError::NotFound("/v1/fleet: this proxy is not part of a fleet (serve --etcd)".into())
    })
}

/// The `wait_fleet=TIMEOUT` of a changing call, in fleet mode (a single proxy serves its
/// change when it answers: nothing to wait for).
type Wait = Option<(Arc<crate::fleet::Fleet>, Duration)>;

fn wait_of(state: &AdminState, call: &Call) -> Result<Wait, ApiError> {
    let Some(w) = call.query.get("wait_fleet") else {
        return Ok(None);
    };
    let d = crate::fleet::parse_wait(w).map_err(ApiError::BadRequest)?;
    Ok(state.fleet.clone().map(|f| (f, d)))
}

/// Waits until every live node serves `version`, when asked.
async fn wait_version(wait: &Wait, version: u64) -> Result<(), ApiError> {
    if let Some((f, d)) = wait {
        f.wait_version(version, *d)
            .await
            .map_err(|e| ApiError::NotConfirmed(e.to_string()))?;
    }
    Ok(())
}

/// Runs a ledger call off the control runtime's thread; with `wait`, answers once every live
/// node of the fleet serves the version.
async fn blocking(
    wait: Wait,
    f: impl FnOnce() -> Result<Committed, ChangeError> + Send + 'static,
) -> Result<Resp, ApiError> {
    let c = tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("change task: {e}")))??;
    wait_version(&wait, c.record.version).await?;
    let mut r = ok(c.to_json());
    if let Ok(v) = http::HeaderValue::from_str(&format!("\"{}\"", c.record.version)) {
        r.headers_mut().insert(http::header::ETAG, v);
    }
    Ok(r)
}

fn get_table(state: &AdminState, call: &Call) -> Result<Resp, ApiError> {
    let live = state.store.load();
    if call.query.get("format").map(String::as_str) == Some("toml") {
        let text = toml::to_string(live.file())
            .map_err(|e| ApiError::Internal(format!("encoding TOML: {e}")))?;
        return Ok(reply(StatusCode::OK, "application/toml", text));
    }
    let ledger = &state.ledger;
    let files = ledger.files_state();
    let rec = ledger.record(live.version)?;
    let source = rec.as_ref().map(|r| {
        json!({
            "source": r.source,
            "action": r.action,
            "actor": r.actor,
            "reason": r.reason,
            "time": r.time,
            "files": r.files,
            "reverted_to": r.reverted_to,
        })
    });
    let routes: Vec<Value> = live
        .file()
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let compiled = live.route_index(&r.id).map(|ci| &live.routes[ci]);
            let weights: BTreeMap<String, f64> = compiled
                .map(|c| {
                    c.dist
                        .arms()
                        .iter()
                        .map(|a| {
                            (
                                live.upstreams[a.upstream].name.to_string(),
                                f64::from(a.weight) / 100.0,
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let fallbacks: Vec<String> = compiled
                .map(|c| {
                    c.dist
                        .fallbacks
                        .iter()
                        .map(|&u| live.upstreams[u].name.to_string())
                        .collect()
                })
                .unwrap_or_default();
            let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
            if let Value::Object(o) = &mut v {
                o.insert("origin".into(), json!(live.doc.route_origin(i)));
                o.insert(
                    "api_changed".into(),
                    json!(files.api_changed.contains(&format!("route:{}", r.id))),
                );
                o.insert("weights".into(), json!(weights));
                o.insert("fallbacks".into(), json!(fallbacks));
                o.insert("summary".into(), json!(super::summary::describe_route(r)));
            }
            v
        })
        .collect();
    let upstreams: BTreeMap<&str, Value> = live
        .file()
        .upstreams
        .iter()
        .map(|(name, u)| {
            let mut v = serde_json::to_value(u).unwrap_or(Value::Null);
            if let Value::Object(o) = &mut v {
                o.insert("origin".into(), json!(live.doc.upstream_origin(name)));
            }
            (name.as_str(), v)
        })
        .collect();
    let mut r = ok(json!({
        "version": live.version,
        "source": source,
        "routes": routes,
        "upstreams": upstreams,
        "proxy": live.file().proxy,
        "files": {
            "path": ledger.routes_path().display().to_string(),
            "loaded_version": files.loaded_version,
            "api_changed": files.api_changed,
            "conflict": ledger.conflict(),
            "force_files": ledger.force_files(),
        },
        "hold": hold_json(),
        "table": live.file(),
    }));
    if let Ok(v) = http::HeaderValue::from_str(&format!("\"{}\"", live.version)) {
        r.headers_mut().insert(http::header::ETAG, v);
    }
    Ok(r)
}

async fn put_table(state: &Arc<AdminState>, call: &mut Call) -> Result<Resp, ApiError> {
    let actor = actor(state, call)?;
    let if_match = if_match(&call.headers)?;
    let reason = call
        .headers
        .get(REASON_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = read_body(call).await?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::BadRequest("the table is not UTF-8 text".into()))?;
    // An empty body would be an empty table (every request 404): almost surely a mistake.
    if text.trim().is_empty() {
        return Err(ApiError::BadRequest(
            "empty body: send the whole table (TOML or JSON)".into(),
        ));
    }
    let table = crate::config::parse_any("request body", text).map_err(|e| {
        let d = crate::routing::Diagnostic::from(e);
        ApiError::InvalidTable(vec![serde_json::to_value(d).unwrap_or(Value::Null)])
    })?;
    let ledger = state.ledger.clone();
    let change = Change::new(&actor, reason, Action::Put).if_match(if_match);
    blocking(wait_of(state, call)?, move || {
        ledger.put_table(change, table)
    })
    .await
}

fn parse_patch(obj: &serde_json::Map<String, Value>) -> Result<RoutePatch, ApiError> {
    let field = |k: &str, e: serde_json::Error| ApiError::BadRequest(format!("{k:?}: {e}"));
    let to = match obj.get("to") {
        None | Some(Value::Null) => None,
        Some(v) => Some(serde_json::from_value::<String>(v.clone()).map_err(|e| field("to", e))?),
    };
    let split = match obj.get("split") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            serde_json::from_value::<BTreeMap<String, f64>>(v.clone())
                .map_err(|e| field("split", e))?,
        ),
    };
    let fallback = match obj.get("fallback") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(v) => Some(Some(
            serde_json::from_value::<OneOrMany>(v.clone()).map_err(|e| field("fallback", e))?,
        )),
    };
    Ok(RoutePatch {
        to,
        split,
        fallback,
    })
}

async fn patch_route(state: &Arc<AdminState>, call: &mut Call, id: &str) -> Result<Resp, ApiError> {
    let actor = actor(state, call)?;
    let if_match = if_match(&call.headers)?;
    let obj = read_json(call).await?;
    take_keys(&obj, &["to", "split", "fallback", "reason"])?;
    let reason = string_field(&obj, "reason", false)?;
    let patch = parse_patch(&obj)?;
    let (ledger, id) = (state.ledger.clone(), id.to_string());
    let change = Change::new(&actor, reason, Action::Patch).if_match(if_match);
    blocking(wait_of(state, call)?, move || {
        ledger.patch(change, &id, &patch)
    })
    .await
}

async fn rollback(state: &Arc<AdminState>, call: &mut Call, id: &str) -> Result<Resp, ApiError> {
    let actor = actor(state, call)?;
    let if_match = if_match(&call.headers)?;
    let obj = read_json(call).await?;
    take_keys(&obj, &["reason"])?;
    let reason = string_field(&obj, "reason", true)?;
    let (ledger, id) = (state.ledger.clone(), id.to_string());
    let change = Change::new(&actor, reason, Action::Rollback).if_match(if_match);
    blocking(wait_of(state, call)?, move || ledger.rollback(change, &id)).await
}

async fn revert(state: &Arc<AdminState>, call: &mut Call) -> Result<Resp, ApiError> {
    let actor = actor(state, call)?;
    let if_match = if_match(&call.headers)?;
    let obj = read_json(call).await?;
    take_keys(&obj, &["to", "reason"])?;
    let reason = string_field(&obj, "reason", true)?;
    let to = obj
        .get("to")
        .and_then(Value::as_u64)
        .ok_or_else(|| ApiError::BadRequest("\"to\" must be a version number".into()))?;
    let ledger = state.ledger.clone();
    let change = Change::new(&actor, reason, Action::Revert).if_match(if_match);
    blocking(wait_of(state, call)?, move || ledger.revert(change, to)).await
}

async fn adopt(state: &Arc<AdminState>, call: &mut Call) -> Result<Resp, ApiError> {
    let actor = actor(state, call)?;
    let obj = read_json(call).await?;
    take_keys(&obj, &["reason"])?;
    let reason = string_field(&obj, "reason", false)?;
    let ledger = state.ledger.clone();
    blocking(wait_of(state, call)?, move || ledger.adopt(&actor, reason)).await
}

/// `POST /v1/fleet/push`: route files read by `switchyard fleet push`, loaded like this node's
/// own files. Answers the change, or `null` when the files are as last loaded.
async fn push(state: &Arc<AdminState>, call: &mut Call) -> Result<Resp, ApiError> {
    fleet_of(state)?;
    let actor = actor(state, call)?;
    let obj = read_json(call).await?;
    let req: super::types::PushRequest = serde_json::from_value(Value::Object(obj))
        .map_err(|e| ApiError::BadRequest(format!("push: {e}")))?;
    let wait = wait_of(state, call)?;
    let ledger = state.ledger.clone();
    let loaded =
        tokio::task::spawn_blocking(move || ledger.push_files(&actor, req.doc.to_doc(), req.force))
            .await
            .map_err(|e| ApiError::Internal(format!("change task: {e}")))??;
    let answer = loaded.result();
    if let Some(c) = &answer {
        wait_version(&wait, c.version).await?;
    }
    Ok(ok(json!(answer)))
}

fn record_summary(r: &super::history::Record) -> Value {
    json!({
        "version": r.version,
        "time": r.time,
        "actor": r.actor,
        "reason": r.reason,
        "source": r.source,
        "action": r.action,
        "files": r.files,
        "reverted_to": r.reverted_to,
        "changes": r.changes,
        "summary": r.changes.one_line(),
    })
}

async fn history(state: &Arc<AdminState>, call: &Call) -> Result<Resp, ApiError> {
    let num = |k: &str| -> Result<Option<u64>, ApiError> {
        call.query
            .get(k)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| ApiError::BadRequest(format!("{k}={v:?} is not a number")))
            })
            .transpose()
    };
    let limit = num("limit")?.unwrap_or(100).clamp(1, 10_000) as usize;
    let before = num("before")?;
    let ledger = state.ledger.clone();
    let list = tokio::task::spawn_blocking(move || ledger.history().list(limit, before))
        .await
        .map_err(|e| ApiError::Internal(format!("history task: {e}")))??;
    Ok(ok(json!({
        "version": state.store.version(),
        "versions": list.iter().map(record_summary).collect::<Vec<_>>(),
    })))
}

async fn history_one(state: &Arc<AdminState>, v: &str) -> Result<Resp, ApiError> {
    let v: u64 = v
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("{v:?} is not a version number")))?;
    let ledger = state.ledger.clone();
    let rec = tokio::task::spawn_blocking(move || ledger.history().get(v))
        .await
        .map_err(|e| ApiError::Internal(format!("history task: {e}")))??
        .ok_or(ApiError::Change(ChangeError::UnknownVersion(v)))?;
    let mut out = record_summary(&rec);
    if let Value::Object(o) = &mut out {
        o.insert("table".into(), json!(rec.doc.table));
        o.insert("origins".into(), json!(rec.doc.origins));
    }
    Ok(ok(out))
}

fn upstreams(state: &AdminState) -> Value {
    let live = state.store.load();
    let list: Vec<Value> = live
        .upstreams
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let routes: Vec<&str> = live
                .routes
                .iter()
                .filter(|r| r.dist.contains(i))
                .map(|r| &*r.id)
                .collect();
            let state = match u.state.peek() {
                Availability::Up => "up",
                Availability::Unhealthy => "unhealthy",
                Availability::Ejected => "ejected",
            };
            json!({
                "name": &*u.name,
                "addrs": u.addrs,
                "tls": u.tls,
                "state": state,
                "active_healthy": u.state.is_active_healthy(),
                "health_checks": u.health.is_some(),
                "ejected_for_ms": u.state.ejected_for().map(|d| d.as_millis() as u64),
                "routes": routes,
            })
        })
        .collect();
    json!({ "version": live.version, "upstreams": list })
}

/// The hold in force, as the API shows it.
pub fn hold_view() -> Option<HoldView> {
    let h = HOLDS.current()?;
    let remaining = h
        .until
        .map(|u| u.saturating_duration_since(std::time::Instant::now()))
        .unwrap_or_default();
    Some(HoldView {
        routes: h.routes,
        remaining_ms: remaining.as_millis() as u64,
        on_expiry: h.on_expiry,
        expired: remaining.is_zero(),
        max_queued: h.max_queued,
        max_queued_bytes: h.max_queued_bytes,
        overflowed: HOLDS.overflowed(),
    })
}

fn hold_json() -> Value {
    serde_json::to_value(hold_view()).unwrap_or(Value::Null)
}

async fn hold(state: &Arc<AdminState>, call: &mut Call) -> Result<Resp, ApiError> {
    let actor = actor(state, call)?;
    let obj = read_json(call).await?;
    let req: HoldRequest = serde_json::from_value(Value::Object(obj))
        .map_err(|e| ApiError::BadRequest(format!("hold: {e}")))?;
    if req.routes.is_empty() {
        return Err(ApiError::BadRequest(
            "\"routes\" must list at least one route id".into(),
        ));
    }
    if !(1..=MAX_HOLD_MS).contains(&req.max_ms) {
        return Err(ApiError::BadRequest(format!(
            "\"max_ms\" must be a number of milliseconds from 1 to {MAX_HOLD_MS}"
        )));
    }
    let max_queued = req.max_queued.unwrap_or(hold::DEFAULT_MAX_QUEUED);
    let max_queued_bytes = req
        .max_queued_bytes
        .unwrap_or(hold::DEFAULT_MAX_QUEUED_BYTES);
    if max_queued == 0 || max_queued_bytes == 0 {
        return Err(ApiError::BadRequest(
            "\"max_queued\" and \"max_queued_bytes\" must be at least 1".into(),
        ));
    }
    let live = state.store.load();
    let unknown: Vec<&str> = req
        .routes
        .iter()
        .filter(|r| live.route_index(r).is_none())
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        return Err(ApiError::Change(ChangeError::UnknownRoute(
            unknown.join(", "),
        )));
    }
    let set: BTreeSet<String> = req.routes.iter().cloned().collect();
    let mut fleet_confirmed = None;
    if let Some(f) = &state.fleet {
        // A fleet hold is in force only once every live node applied it: answer only then
        // (a caller such as the database cutover fences only after this answer).
        let wait = wait_of(state, call)?
            .map(|w| w.1)
            .unwrap_or(crate::fleet::DEFAULT_WAIT);
        let h = crate::fleet::hold::FleetHold {
            active: true,
            routes: set.clone(),
            until_ms: crate::fleet::now_ms() + req.max_ms,
            on_expiry: req.on_expiry,
            max_queued,
            max_queued_bytes,
            actor: actor.clone(),
        };
        let rev = f.put_hold(&h).await.map_err(fleet_err)?;
        let nodes = f
            .wait_hold(rev, wait)
            .await
            .map_err(|e| ApiError::NotConfirmed(e.to_string()))?;
        fleet_confirmed = Some(nodes);
    } else {
        HOLDS.hold(
            set.clone(),
            Duration::from_millis(req.max_ms),
            req.on_expiry,
            max_queued,
            max_queued_bytes,
        );
    }
    series::note_hold(&actor, &set, req.max_ms, req.reason.as_deref());
    tracing::warn!(actor = %actor, routes = ?set, max_ms = req.max_ms, on_expiry = ?req.on_expiry, max_queued, max_queued_bytes, reason = req.reason.as_deref().unwrap_or(""), "holding requests");
    let view = hold_view().unwrap_or_default();
    Ok(ok(json!(HoldResult {
        held: set,
        max_ms: req.max_ms,
        actor,
        hold: view,
        fleet_confirmed,
    })))
}

fn fleet_err(e: crate::fleet::FleetError) -> ApiError {
    if e.unreachable() {
        ApiError::Unavailable(e.to_string())
    } else {
        ApiError::Internal(e.to_string())
    }
}

async fn release(state: &AdminState, call: &Call) -> Result<Resp, ApiError> {
    let actor = actor(state, call)?;
    let was = HOLDS.current().map(|h| h.routes).unwrap_or_default();
    if let Some(f) = &state.fleet {
        let h = crate::fleet::hold::FleetHold {
            active: false,
            routes: Default::default(),
            until_ms: 0,
            on_expiry: Default::default(),
            max_queued: 0,
            max_queued_bytes: 0,
            actor: actor.clone(),
        };
        let rev = f.put_hold(&h).await.map_err(fleet_err)?;
        if let Some((f, d)) = wait_of(state, call)? {
            f.wait_hold(rev, d)
                .await
                .map_err(|e| ApiError::NotConfirmed(e.to_string()))?;
        }
    } else {
        HOLDS.release();
    }
    series::note_release(&actor, &was);
    tracing::warn!(actor = %actor, routes = ?was, "hold released");
    Ok(ok(json!(ReleaseResult {
        released: was,
        actor
    })))
}

fn inflight(state: &AdminState) -> Value {
    let live = state.store.load();
    let inflight: BTreeMap<String, i64> = routing::inflight::counts().into_iter().collect();
    let queued: BTreeMap<String, i64> = hold::queued_counts().into_iter().collect();
    let routes = live
        .routes
        .iter()
        .map(|r| {
            (
                r.id.to_string(),
                RouteInflight {
                    inflight: inflight.get(&*r.id).copied().unwrap_or(0),
                    queued: queued.get(&*r.id).copied().unwrap_or(0),
                },
            )
        })
        .collect();
    json!(InflightView {
        routes,
        hold: hold_view(),
    })
}

/// Cumulative requests and 5xx answers per route and upstream, read from the metrics; the
/// dashboard turns successive readings into rates.
fn stats() -> Value {
    /// (requests, 5xx) per upstream of one route.
    type Counts = BTreeMap<String, (u64, u64)>;
    let mut routes: BTreeMap<String, (u64, u64, Counts)> = BTreeMap::new();
    for fam in METRICS.registry.gather() {
        if fam.name() != "switchyard_requests_total" {
            continue;
        }
        for m in fam.get_metric() {
            let mut route = "";
            let mut upstream = "";
            let mut code = "";
            for l in m.get_label() {
                match l.name() {
                    "route" => route = l.value(),
                    "upstream" => upstream = l.value(),
                    "code" => code = l.value(),
                    _ => {}
                }
            }
            if route == "none" || route.is_empty() {
                continue;
            }
            let n = m.get_counter().get_value() as u64;
            let err = if code == "5xx" { n } else { 0 };
            let e = routes.entry(route.to_string()).or_default();
            e.0 += n;
            e.1 += err;
            let u = e.2.entry(upstream.to_string()).or_default();
            u.0 += n;
            u.1 += err;
        }
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let routes: BTreeMap<String, Value> = routes
        .into_iter()
        .map(|(r, (n, e, ups))| {
            let ups: BTreeMap<String, Value> = ups
                .into_iter()
                .map(|(u, (n, e))| (u, json!({ "requests": n, "errors": e })))
                .collect();
            (r, json!({ "requests": n, "errors": e, "upstreams": ups }))
        })
        .collect();
    json!({ "time_ms": now_ms, "routes": routes })
}

/// `GET /v1/series?route=ID[,ID...]&since=MS`: the charts' samples ([`series::SeriesView`])
/// with the table versions, holds and releases in their span. Without `route`, every route
/// with a series; without `since`, the whole window kept.
async fn get_series(state: &Arc<AdminState>, call: &Call) -> Result<Resp, ApiError> {
    let since = call
        .query
        .get("since")
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::BadRequest(series::SeriesError::BadSince(v.clone()).to_string())
            })
        })
        .transpose()?;
    let wanted: Option<Vec<String>> = call.query.get("route").map(|r| {
        r.split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    });
    let now = traffic::now_ms();
    let mut view = series::SERIES.lock().view(since, wanted.as_deref(), now);
    if let Some(want) = &wanted {
        let live = state.store.load();
        for id in want {
            if view.routes.iter().any(|r| &r.route == id) {
                continue;
            }
            if live.route_index(id).is_none() {
                return Err(ApiError::NotFound(
                    series::SeriesError::UnknownRoute(id.clone()).to_string(),
                ));
            }
            // In the table but no request in the window: zeros, so the chart shows a flat line.
            let n = view.steps();
            view.routes.push(series::RouteSeries::zeros(id, n));
        }
    }
    let from = view.from_ms.max(since.unwrap_or(0));
    let ledger = state.ledger.clone();
    let versions = tokio::task::spawn_blocking(move || version_events(&ledger, from))
        .await
        .map_err(|e| ApiError::Internal(format!("history task: {e}")))??;
    // Versions come newest first: oldest first here, so the stable sort keeps two versions of
    // the same millisecond in order. A version and another event of the same millisecond have
    // no defined order (both clocks count milliseconds).
    view.events.extend(versions.into_iter().rev());
    view.events.sort_by_key(|e| e.time_ms);
    Ok(ok(serde_json::to_value(&view).unwrap_or(Value::Null)))
}

/// The history's versions made at or after `from_ms`, as chart markers; reads newest first and
/// stops at the first older one (at most 200).
fn version_events(ledger: &super::Ledger, from_ms: u64) -> Result<Vec<series::Event>, ApiError> {
    let mut out = Vec::new();
    let mut before = None;
    for _ in 0..20 {
        let page = ledger.history().list(10, before)?;
        let Some(last) = page.last() else { break };
        before = Some(last.version);
        for r in &page {
            let Some(ms) = rfc3339_ms(&r.time) else {
                continue;
            };
            if ms < from_ms {
                return Ok(out);
            }
            out.push(series::Event {
                time_ms: ms,
                time: r.time.clone(),
                kind: "version".into(),
                version: Some(r.version),
                actor: Some(r.actor.clone()),
                reason: r.reason.clone(),
                action: Some(r.action.as_str().to_string()),
                summary: Some(r.changes.one_line()),
                routes: r.changes.routes.iter().map(|c| c.route.clone()).collect(),
                max_ms: None,
            });
        }
    }
    Ok(out)
}

fn rfc3339_ms(t: &str) -> Option<u64> {
    let t = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// `GET /v1/traffic?window=DURATION`: requests per Host ([`traffic::TrafficView`]); the window
/// defaults to 15m and may be up to 72h.
fn get_traffic(call: &Call) -> Result<Resp, ApiError> {
    let window = match call.query.get("window") {
        Some(w) => traffic::parse_window(w).map_err(|e| ApiError::BadRequest(e.to_string()))?,
        None => traffic::DEFAULT_WINDOW,
    };
    let view = traffic::HOSTS.view(traffic::now_ms(), window);
    Ok(ok(serde_json::to_value(&view).unwrap_or(Value::Null)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_forms() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(
                http::header::IF_MATCH,
                http::HeaderValue::from_str(v).unwrap(),
            );
            if_match(&m)
        };
        assert_eq!(h("7").unwrap(), Some(7));
        assert_eq!(h("\"7\"").unwrap(), Some(7));
        assert_eq!(h("W/\"7\"").unwrap(), Some(7));
        assert_eq!(h("*").unwrap(), None);
        assert!(h("seven").is_err());
        assert_eq!(if_match(&HeaderMap::new()).unwrap(), None);
    }

    #[test]
    fn query_and_patch_parsing() {
        let q = parse_query(Some("limit=5&before=9&flag"));
        assert_eq!(q["limit"], "5");
        assert_eq!(q["flag"], "");
        let obj = |s: &str| match serde_json::from_str::<Value>(s).unwrap() {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        let p = parse_patch(&obj(r#"{"fallback": null}"#)).unwrap();
        assert_eq!(p.fallback, Some(None));
        let p = parse_patch(&obj(r#"{"fallback": ["a", "b"], "to": "c"}"#)).unwrap();
        assert_eq!(p.to.as_deref(), Some("c"));
        assert_eq!(
            p.fallback,
            Some(Some(OneOrMany::Many(vec!["a".into(), "b".into()])))
        );
        assert!(parse_patch(&obj(r#"{"split": {"a": "x"}}"#)).is_err());
        assert!(take_keys(&obj(r#"{"weights": 1}"#), &["split"]).is_err());
    }

    #[test]
    fn statuses() {
        let s = |e: ApiError| e.status().as_u16();
        assert_eq!(s(ApiError::Unauthorized(Denied::Invalid)), 401);
        assert_eq!(s(ApiError::TooLarge), 413);
        assert_eq!(
            s(ChangeError::Stale {
                expected: 1,
                live: 2
            }
            .into()),
            409
        );
        assert_eq!(s(ChangeError::UnknownRoute("x".into()).into()), 404);
        assert_eq!(s(ChangeError::Invalid(vec![]).into()), 422);
        assert_eq!(s(ChangeError::Conflict(vec![]).into()), 409);
        let r = ApiError::Change(ChangeError::Conflict(vec!["route:a".into()])).response();
        assert_eq!(r.status(), 409);
    }
}
