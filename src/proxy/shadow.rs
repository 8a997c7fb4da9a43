//! Shadow traffic: a copy of a share of a route's requests goes to another upstream after the
//! primary answered, and the two answers are compared (status, headers, body hash, JSON
//! structure) and dropped.
//!
//! The client never waits for the shadow: the primary's answer is only observed as it streams
//! ([`Capture`]), and the copy is sent from a task of its own once the primary is done
//! ([`finish`]). The work is bounded: one process-wide cap on captures and copies in flight
//! (over it a request is `skipped`, never queued), a byte cap per body, and a request body is
//! copied only when it was small enough to be kept whole. The copy never falls back, never
//! retries and never touches the upstream's health or the primary's metrics.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Method;
use http_body_util::{BodyExt, Full};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::ShadowFile;
use crate::metrics::{shadow_stats, ShadowStats};
use crate::routing::table::{HostHeader, Route, RouteTable, Upstream};

/// Marker header on every shadow request, so the backend can avoid side effects.
pub const SHADOW_HEADER: &str = "x-switchyard-shadow";
/// Default of `[proxy] shadow_max_inflight`.
pub const DEFAULT_MAX_INFLIGHT: usize = 128;
/// Default of `shadow.max_body_bytes`.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;
/// Mismatches kept per route for `GET /v1/shadow`.
pub const RECENT: usize = 20;
/// Differing JSON fields listed per mismatch.
const MAX_JSON_DIFFS: usize = 8;

/// Response headers never compared: they differ between two correct answers.
const ALWAYS_IGNORED: [&str; 9] = [
    "date",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "trailer",
    "te",
    crate::proxy::UPSTREAM_HEADER,
];

/// One request's comparison result; the index into [`crate::metrics::SHADOW_RESULTS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Match = 0,
    StatusMismatch = 1,
    HeaderMismatch = 2,
    BodyMismatch = 3,
    ShadowError = 4,
    Skipped = 5,
}

impl Outcome {
    /// The `result` label value.
    pub fn as_str(self) -> &'static str {
        crate::metrics::SHADOW_RESULTS[self as usize]
    }
}

/// A route's compiled `shadow` option.
pub struct ShadowSpec {
    /// Index of the shadow upstream in the table.
    pub upstream: usize,
    /// Share of eligible requests copied, in hundredths of a percent (0..=10000).
    pub share: u32,
    pub methods: Vec<Method>,
    pub rules: Rules,
    /// Largest request body copied (the route's replay buffer: what is kept whole).
    pub request_body_limit: usize,
    /// Results and recent mismatches of the route (shared across tables by route id).
    pub state: Arc<RouteShadow>,
}

impl std::fmt::Debug for ShadowSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShadowSpec")
            .field("upstream", &self.upstream)
            .field("share", &self.share)
            .field("methods", &self.methods)
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

/// What a comparison looks at.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rules {
    pub status: bool,
    pub headers: bool,
    pub body: bool,
    /// Headers compared; empty = all but `ignore_headers` and [`ALWAYS_IGNORED`].
    pub only_headers: Vec<HeaderName>,
    pub ignore_headers: Vec<HeaderName>,
    pub ignore_json_fields: Vec<String>,
    pub max_body_bytes: usize,
}

/// Compiles a route's `shadow` option. `lookup` gives an upstream's index (`None` = unknown
/// name). Errors are `(field, message)` pairs.
pub fn compile(
    f: &ShadowFile,
    route_id: &str,
    request_body_limit: usize,
    lookup: impl Fn(&str) -> Option<usize>,
) -> Result<ShadowSpec, Vec<(String, String)>> {
    let mut errs: Vec<(String, String)> = Vec::new();
    let mut err = |field: &str, msg: String| errs.push((format!("shadow.{field}"), msg));
    let upstream = match lookup(&f.upstream) {
        Some(i) => Some(i),
        None => {
            err("upstream", format!("unknown upstream {:?}", f.upstream));
            None
        }
    };
    let pct = f.percent.unwrap_or(100.0);
    let share = if !pct.is_finite() || !(0.0..=100.0).contains(&pct) {
        err(
            "percent",
            format!("{pct} is not a percentage between 0 and 100"),
        );
        0
    } else if ((pct * 100.0) - (pct * 100.0).round()).abs() > 1e-6 {
        err(
            "percent",
            format!("{pct} has more than two decimals (0.01% is the finest step)"),
        );
        0
    } else {
        (pct * 100.0).round() as u32
    };
    let mut methods = Vec::new();
    let names: Vec<String> = if f.methods.is_empty() {
        vec!["GET".into(), "HEAD".into()]
    } else {
        f.methods.clone()
    };
    for (k, m) in names.iter().enumerate() {
        match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
            Ok(m) => methods.push(m),
            Err(_) => err(
                &format!("methods[{k}]"),
                format!("{m:?} is not an HTTP method"),
            ),
        }
    }
    let mut rules = Rules {
        max_body_bytes: f.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY),
        ignore_json_fields: f.ignore_json_fields.clone(),
        ..Rules::default()
    };
    if rules.max_body_bytes == 0 {
        err("max_body_bytes", "must be at least 1".into());
    }
    let compare: Vec<String> = if f.compare.is_empty() {
        vec!["status".into(), "body".into()]
    } else {
        f.compare.clone()
    };
    for (k, c) in compare.iter().enumerate() {
        match c.as_str() {
            "status" => rules.status = true,
            "headers" => rules.headers = true,
            "body" => rules.body = true,
            other => err(
                &format!("compare[{k}]"),
                format!("{other:?}: expected \"status\", \"headers\" or \"body\""),
            ),
        }
    }
    for (field, list, out) in [
        ("headers", &f.headers, &mut rules.only_headers),
        (
            "ignore_headers",
            &f.ignore_headers,
            &mut rules.ignore_headers,
        ),
    ] {
        for (k, h) in list.iter().enumerate() {
            match HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()) {
                Ok(n) => out.push(n),
                Err(_) => err(
                    &format!("{field}[{k}]"),
                    format!("{h:?} is not a valid header name"),
                ),
            }
        }
    }
    if !rules.only_headers.is_empty() {
        rules.headers = true;
    }
    match upstream {
        Some(upstream) if errs.is_empty() => Ok(ShadowSpec {
            upstream,
            share,
            methods,
            rules,
            request_body_limit,
            state: route_state(route_id),
        }),
        _ => Err(errs),
    }
}

/// One mismatch (or failed copy) as `GET /v1/shadow` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShadowMismatch {
    /// When the comparison finished (RFC 3339 UTC).
    pub time: String,
    /// `status_mismatch`, `header_mismatch`, `body_mismatch` or `shadow_error`.
    pub result: String,
    pub method: String,
    /// The request path, without the query string.
    pub path: String,
    pub primary_status: u16,
    /// 0 when the shadow gave no answer.
    pub shadow_status: u16,
    /// The first compared header whose values differ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    pub primary_bytes: u64,
    pub shadow_bytes: u64,
    /// Differing JSON fields (`$.a.b: 1 != 2`), when both bodies are JSON.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub json_diff: Vec<String>,
    /// Why the copy failed, for `shadow_error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A route's shadow results, kept by route id across table reloads.
pub struct RouteShadow {
    pub stats: ShadowStats,
    recent: Mutex<VecDeque<ShadowMismatch>>,
}

impl RouteShadow {
    fn count(&self, o: Outcome) {
        self.stats.results[o as usize].inc();
    }

    /// Count per result label.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        crate::metrics::SHADOW_RESULTS
            .iter()
            .zip(&self.stats.results)
            .map(|(r, c)| (r.to_string(), c.get()))
            .collect()
    }

    /// The most recent mismatches, newest first.
    pub fn recent(&self) -> Vec<ShadowMismatch> {
        self.recent.lock().iter().rev().cloned().collect()
    }

    fn remember(&self, m: ShadowMismatch) {
        let mut r = self.recent.lock();
        if r.len() >= RECENT {
            r.pop_front();
        }
        r.push_back(m);
    }
}

static ROUTES: LazyLock<Mutex<BTreeMap<String, Arc<RouteShadow>>>> =
    LazyLock::new(|| Mutex::new(BTreeMap::new()));

/// The results of route `id`, created on first use (at compile time).
pub fn route_state(id: &str) -> Arc<RouteShadow> {
    ROUTES
        .lock()
        .entry(id.to_string())
        .or_insert_with(|| {
            Arc::new(RouteShadow {
                stats: shadow_stats(id),
                recent: Mutex::new(VecDeque::new()),
            })
        })
        .clone()
}

/// Every route that has had a `shadow` option since the process started, by id.
pub fn routes() -> Vec<(String, Arc<RouteShadow>)> {
    ROUTES
        .lock()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

static INFLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Captures and copies in flight now.
pub fn inflight() -> usize {
    INFLIGHT.load(Ordering::Relaxed)
}

/// A slot under the process-wide cap, given back on drop.
struct Permit;

impl Permit {
    fn try_acquire(cap: usize) -> Option<Permit> {
        INFLIGHT
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < cap).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        INFLIGHT.fetch_sub(1, Ordering::AcqRel);
    }
}

/// FNV-1a over a byte stream: chunking does not change the result.
#[derive(Debug, Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A body as seen: hash and copy of its first `limit` bytes, and its full length.
#[derive(Debug, Clone)]
pub struct BodySeen {
    hash: Fnv,
    /// Bytes seen in total (may exceed `limit`).
    pub len: u64,
    kept: BytesMut,
    limit: usize,
}

impl BodySeen {
    /// An empty body that keeps and hashes up to `limit` bytes.
    pub fn new(limit: usize) -> BodySeen {
        BodySeen {
            hash: Fnv::new(),
            len: 0,
            kept: BytesMut::new(),
            limit,
        }
    }

    /// Adds the next chunk.
    pub fn push(&mut self, b: &[u8]) {
        let room = self.limit.saturating_sub(self.kept.len());
        let take = &b[..b.len().min(room)];
        self.hash.write(take);
        self.kept.extend_from_slice(take);
        self.len += b.len() as u64;
    }

    fn complete(&self) -> bool {
        self.len <= self.limit as u64
    }
}

/// One side's answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: BodySeen,
}

/// What [`compare`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub outcome: Outcome,
    pub header: Option<String>,
    pub json_diff: Vec<String>,
}

/// Compares the primary's answer `p` with the shadow's `s` under `rules`. Precedence: a status
/// mismatch, then a header mismatch, then a body mismatch. Bodies match when the hashes of
/// their first `max_body_bytes` bytes and their lengths agree, or, when both are JSON and
/// complete, when they are equal once `ignore_json_fields` are left out.
pub fn compare(rules: &Rules, p: &Answer, s: &Answer) -> Verdict {
    let mut v = Verdict {
        outcome: Outcome::Match,
        header: None,
        json_diff: Vec::new(),
    };
    if rules.status && p.status != s.status {
        v.outcome = Outcome::StatusMismatch;
        return v;
    }
    if rules.headers {
        if let Some(h) = header_diff(rules, &p.headers, &s.headers) {
            v.outcome = Outcome::HeaderMismatch;
            v.header = Some(h);
            return v;
        }
    }
    if rules.body {
        let same_bytes = p.body.hash.0 == s.body.hash.0 && p.body.len == s.body.len;
        if !same_bytes {
            match (json_of(p), json_of(s)) {
                (Some(a), Some(b)) => {
                    json_diff(&a, &b, "$", &rules.ignore_json_fields, &mut v.json_diff);
                    if !v.json_diff.is_empty() {
                        v.outcome = Outcome::BodyMismatch;
                    }
                }
                _ => v.outcome = Outcome::BodyMismatch,
            }
        }
    }
    v
}

fn json_of(a: &Answer) -> Option<Value> {
    if !a.body.complete() {
        return None;
    }
    let ct = a.headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    if !ct.to_ascii_lowercase().contains("json") {
        return None;
    }
    serde_json::from_slice(&a.body.kept).ok()
}

/// The first compared header (by name) whose values differ between `p` and `s`.
pub fn header_diff(rules: &Rules, p: &HeaderMap, s: &HeaderMap) -> Option<String> {
    let ignored =
        |n: &HeaderName| ALWAYS_IGNORED.contains(&n.as_str()) || rules.ignore_headers.contains(n);
    let values = |m: &HeaderMap, n: &HeaderName| -> Vec<Vec<u8>> {
        m.get_all(n).iter().map(|v| v.as_bytes().to_vec()).collect()
    };
    let mut names: Vec<&HeaderName> = if rules.only_headers.is_empty() {
        p.keys().chain(s.keys()).collect()
    } else {
        rules.only_headers.iter().collect()
    };
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    names
        .into_iter()
        .filter(|n| !ignored(n))
        .find(|n| values(p, n) != values(s, n))
        .map(|n| n.to_string())
}

/// Whether the field at `path` (`$.a.b`) with key `key` is ignored.
fn ignored_field(path: &str, key: &str, ignore: &[String]) -> bool {
    let dotted = path.strip_prefix("$.").unwrap_or("");
    ignore.iter().any(|f| f == key || f == dotted)
}

/// Appends to `out` (at most [`MAX_JSON_DIFFS`]) the paths where `a` and `b` differ, leaving
/// out object keys listed in `ignore`.
pub fn json_diff(a: &Value, b: &Value, path: &str, ignore: &[String], out: &mut Vec<String>) {
    if out.len() >= MAX_JSON_DIFFS {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = format!("{path}.{k}");
                if ignored_field(&p, k, ignore) {
                    continue;
                }
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => json_diff(u, v, &p, ignore, out),
                    (u, v) => push_diff(out, &p, u, v),
                }
                if out.len() >= MAX_JSON_DIFFS {
                    return;
                }
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            for i in 0..x.len().max(y.len()) {
                let p = format!("{path}[{i}]");
                match (x.get(i), y.get(i)) {
                    (Some(u), Some(v)) => json_diff(u, v, &p, ignore, out),
                    (u, v) => push_diff(out, &p, u, v),
                }
                if out.len() >= MAX_JSON_DIFFS {
                    return;
                }
            }
        }
        _ if a == b => {}
        _ => push_diff(out, path, Some(a), Some(b)),
    }
}

fn push_diff(out: &mut Vec<String>, path: &str, a: Option<&Value>, b: Option<&Value>) {
    let show = |v: Option<&Value>| {
        let s = v.map_or_else(|| "(absent)".to_string(), Value::to_string);
        if s.len() > 40 {
            let mut end = 40;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}...", &s[..end])
        } else {
            s
        }
    };
    out.push(format!("{path}: {} != {}", show(a), show(b)));
}

/// Whether a request with this method and `roll` (0..10000) is copied.
pub fn selected(spec: &ShadowSpec, method: &Method, roll: u32) -> bool {
    roll < spec.share && spec.methods.contains(method)
}

/// A shadowed request while the primary serves it: the request to copy and the primary's
/// answer as it streams. Holds a slot under the process-wide cap until the copy is done.
pub struct Capture {
    spec: Arc<ShadowSpec>,
    _permit: Permit,
    method: Method,
    path_and_query: String,
    headers: HeaderMap,
    body: BytesMut,
    body_too_big: bool,
    primary: Option<Answer>,
    /// `x-forwarded-*` of the primary's upstream request ([`Capture::forwarded`]).
    forwarded: Vec<(HeaderName, HeaderValue)>,
}

/// Decides in `request_filter` whether this request is copied: the route has a `shadow`, the
/// method is listed, the roll falls in the share, a declared body fits the limit and the cap
/// has room. `None` = not copied (counted as `skipped` when it was selected but could not be).
pub fn begin(
    route: &Route,
    max_inflight: usize,
    req: &pingora::http::RequestHeader,
    declared_body: Option<u64>,
) -> Option<Box<Capture>> {
    let spec = route.shadow.as_ref()?;
    if !selected(spec, &req.method, rand::random_range(0..10_000)) {
        return None;
    }
    if declared_body.is_some_and(|n| n > spec.request_body_limit as u64) {
        spec.state.count(Outcome::Skipped);
        return None;
    }
    let Some(permit) = Permit::try_acquire(max_inflight) else {
        spec.state.count(Outcome::Skipped);
        return None;
    };
    Some(Box::new(Capture {
        spec: spec.clone(),
        _permit: permit,
        method: req.method.clone(),
        path_and_query: req
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
        headers: req.headers.clone(),
        body: BytesMut::new(),
        body_too_big: false,
        primary: None,
        forwarded: Vec::new(),
    }))
}

impl Capture {
    /// A request body chunk (`request_body_filter`).
    pub fn request_chunk(&mut self, b: &[u8]) {
        if self.body_too_big {
            return;
        }
        if self.body.len() + b.len() > self.spec.request_body_limit {
            self.body_too_big = true;
            self.body = BytesMut::new();
        } else {
            self.body.extend_from_slice(b);
        }
    }

    /// A new attempt resends the body from the start (`upstream_request_filter`).
    pub fn restart_body(&mut self) {
        self.body.clear();
    }

    /// The primary's upstream request, once built (`upstream_request_filter`): the copy carries
    /// the same `x-forwarded-for`, `-proto` and `-host`.
    pub fn forwarded(&mut self, upstream_request: &HeaderMap) {
        self.forwarded.clear();
        for n in ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"] {
            if let Some(v) = upstream_request.get(n) {
                self.forwarded.push((HeaderName::from_static(n), v.clone()));
            }
        }
    }

    /// The primary's response head (`response_filter`), before switchyard adds headers.
    pub fn primary_head(&mut self, status: u16, headers: &HeaderMap) {
        self.primary = Some(Answer {
            status,
            headers: headers.clone(),
            body: BodySeen::new(self.spec.rules.max_body_bytes),
        });
    }

    /// A primary response body chunk (`response_body_filter`).
    pub fn primary_chunk(&mut self, b: &[u8]) {
        if let Some(p) = self.primary.as_mut() {
            p.body.push(b);
        }
    }
}

/// Called from `logging` once the primary is done: when it completed (`primary_ok`), sends
/// the copy from a task of its own and records the comparison; otherwise counts `skipped`.
/// Returns at once.
pub fn finish(
    c: Box<Capture>,
    table: Arc<RouteTable>,
    primary_elapsed: Duration,
    primary_ok: bool,
) {
    let state = c.spec.state.clone();
    if !primary_ok || c.body_too_big || c.primary.is_none() {
        state.count(Outcome::Skipped);
        return;
    }
    tokio::spawn(async move {
        let c = c;
        let Some(up) = table.upstreams.get(c.spec.upstream) else {
            state.count(Outcome::ShadowError);
            return;
        };
        let start = Instant::now();
        let timeout = up.connect_timeout + up.read_timeout;
        let got = tokio::time::timeout(timeout, send(&c, up)).await;
        let shadow_elapsed = start.elapsed();
        let Some(p) = c.primary.as_ref() else { return };
        let path = c
            .path_and_query
            .split('?')
            .next()
            .unwrap_or("/")
            .to_string();
        let mut m = ShadowMismatch {
            time: crate::proxy::log::now_rfc3339(),
            method: c.method.to_string(),
            path,
            primary_status: p.status,
            primary_bytes: p.body.len,
            ..ShadowMismatch::default()
        };
        let s = match got {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                state.count(Outcome::ShadowError);
                m.result = Outcome::ShadowError.as_str().into();
                m.error = Some(e);
                state.remember(m);
                return;
            }
            Err(_) => {
                state.count(Outcome::ShadowError);
                m.result = Outcome::ShadowError.as_str().into();
                m.error = Some(format!("no answer within {} ms", timeout.as_millis()));
                state.remember(m);
                return;
            }
        };
        state.stats.primary.observe(primary_elapsed.as_secs_f64());
        state.stats.shadow.observe(shadow_elapsed.as_secs_f64());
        let v = compare(&c.spec.rules, p, &s);
        state.count(v.outcome);
        if v.outcome != Outcome::Match {
            m.result = v.outcome.as_str().into();
            m.shadow_status = s.status;
            m.shadow_bytes = s.body.len;
            m.header = v.header;
            m.json_diff = v.json_diff;
            state.remember(m);
        }
    });
}

/// Sends the copy to `up` and reads its answer (at most `max_body_bytes` of the body are kept).
async fn send(c: &Capture, up: &Upstream) -> Result<Answer, String> {
    let path = crate::proxy::decide::rewrite_path(
        &c.path_and_query,
        up.strip_prefix.as_deref(),
        up.path_prefix.as_deref(),
    )
    .unwrap_or_else(|| c.path_and_query.clone());
    let (addr, _) = up.next_addr();
    let uri: http::Uri = path
        .parse()
        .map_err(|e| format!("shadow request URI: {e}"))?;
    let mut req = http::Request::builder()
        .method(c.method.clone())
        .uri(uri)
        .body(Full::new(c.body.clone().freeze()))
        .map_err(|e| e.to_string())?;
    let h = req.headers_mut();
    for (n, v) in &c.headers {
        if !is_hop_by_hop(n) {
            h.append(n.clone(), v.clone());
        }
    }
    // The forwarding headers the primary's upstream request carried, replacing the client's.
    for (n, v) in &c.forwarded {
        h.insert(n.clone(), v.clone());
    }
    if let HostHeader::Fixed(host) = &up.host {
        h.insert(header::HOST, host.clone());
    }
    h.insert(SHADOW_HEADER, HeaderValue::from_static("1"));
    let resp = super::shadow_client::send(up, addr, req).await?;
    let (parts, mut body) = resp.into_parts();
    let mut seen = BodySeen::new(c.spec.rules.max_body_bytes);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the shadow body: {e}"))?;
        if let Some(d) = frame.data_ref() {
            seen.push(d);
        }
        if seen.len > c.spec.rules.max_body_bytes as u64 {
            // Past the byte cap: stop reading; the length is "more than the cap".
            break;
        }
    }
    Ok(Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: seen,
    })
}

/// Headers not copied to the shadow request: connection-level ones, the length (set from the
/// kept body) and switchyard's own override headers.
fn is_hop_by_hop(n: &HeaderName) -> bool {
    matches!(
        n.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
            | "x-switchyard-secret"
            | "x-switchyard-upstream"
            | SHADOW_HEADER
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer(status: u16, headers: &[(&str, &str)], body: &[u8], limit: usize) -> Answer {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let mut b = BodySeen::new(limit);
        for chunk in body.chunks(3) {
            b.push(chunk);
        }
        Answer {
            status,
            headers: h,
            body: b,
        }
    }

    fn rules() -> Rules {
        Rules {
            status: true,
            headers: false,
            body: true,
            max_body_bytes: 1024,
            ..Rules::default()
        }
    }

    #[test]
    fn hash_ignores_chunking() {
        let mut a = BodySeen::new(100);
        a.push(b"hello world");
        let mut b = BodySeen::new(100);
        b.push(b"hel");
        b.push(b"lo wor");
        b.push(b"ld");
        assert_eq!(a.hash.0, b.hash.0);
        let mut c = BodySeen::new(100);
        c.push(b"hello worle");
        assert_ne!(a.hash.0, c.hash.0);
    }

    #[test]
    fn byte_cap_bounds_what_is_kept() {
        let mut a = BodySeen::new(4);
        a.push(b"abcdef");
        a.push(b"gh");
        assert_eq!(a.len, 8);
        assert_eq!(&a.kept[..], b"abcd");
        assert!(!a.complete());
    }

    #[test]
    fn outcomes_in_precedence_order() {
        let r = Rules {
            headers: true,
            ..rules()
        };
        let p = answer(200, &[("etag", "1")], b"same", 1024);
        assert_eq!(compare(&r, &p, &p.clone()).outcome, Outcome::Match);
        let s = answer(500, &[("etag", "2")], b"other", 1024);
        assert_eq!(compare(&r, &p, &s).outcome, Outcome::StatusMismatch);
        let s = answer(200, &[("etag", "2")], b"other", 1024);
        let v = compare(&r, &p, &s);
        assert_eq!(v.outcome, Outcome::HeaderMismatch);
        assert_eq!(v.header.as_deref(), Some("etag"));
        let s = answer(200, &[("etag", "1")], b"other", 1024);
        assert_eq!(compare(&r, &p, &s).outcome, Outcome::BodyMismatch);
        // Not compared: no mismatch.
        let s = answer(404, &[("etag", "2")], b"x", 1024);
        let none = Rules {
            status: false,
            headers: false,
            body: false,
            ..rules()
        };
        assert_eq!(compare(&none, &p, &s).outcome, Outcome::Match);
    }

    #[test]
    fn headers_ignored_and_selected() {
        let p = answer(
            200,
            &[("date", "a"), ("x-request-id", "1"), ("etag", "e")],
            b"",
            10,
        );
        let s = answer(
            200,
            &[("date", "b"), ("x-request-id", "2"), ("etag", "e")],
            b"",
            10,
        );
        let mut r = Rules {
            headers: true,
            ..rules()
        };
        assert_eq!(
            header_diff(&r, &p.headers, &s.headers).as_deref(),
            Some("x-request-id")
        );
        r.ignore_headers = vec![HeaderName::from_static("x-request-id")];
        assert_eq!(header_diff(&r, &p.headers, &s.headers), None);
        let r = Rules {
            headers: true,
            only_headers: vec![HeaderName::from_static("etag")],
            ..rules()
        };
        assert_eq!(header_diff(&r, &p.headers, &s.headers), None);
        // A header present on one side only differs.
        let s2 = answer(200, &[("etag", "e"), ("x-new", "1")], b"", 10);
        let r = Rules {
            headers: true,
            ignore_headers: vec![HeaderName::from_static("x-request-id")],
            ..rules()
        };
        assert_eq!(
            header_diff(&r, &p.headers, &s2.headers).as_deref(),
            Some("x-new")
        );
    }

    #[test]
    fn json_bodies_compare_structurally() {
        let ct = [("content-type", "application/json")];
        let p = answer(
            200,
            &ct,
            br#"{"id":1,"ts":5,"meta":{"ts":1,"v":"a"}}"#,
            1024,
        );
        let s = answer(
            200,
            &ct,
            br#"{ "meta": {"v": "a", "ts": 2}, "ts": 6, "id": 1 }"#,
            1024,
        );
        let mut r = rules();
        r.ignore_json_fields = vec!["ts".into()];
        assert_eq!(compare(&r, &p, &s).outcome, Outcome::Match);
        // Dotted path: only the top-level ts is ignored.
        r.ignore_json_fields = vec!["ts".into()];
        let s = answer(
            200,
            &ct,
            br#"{"id":2,"ts":6,"meta":{"ts":1,"v":"b"}}"#,
            1024,
        );
        let v = compare(&r, &p, &s);
        assert_eq!(v.outcome, Outcome::BodyMismatch);
        assert_eq!(
            v.json_diff,
            vec!["$.id: 1 != 2", "$.meta.v: \"a\" != \"b\""]
        );
        r.ignore_json_fields = vec!["meta.ts".into()];
        let s = answer(
            200,
            &ct,
            br#"{"id":1,"ts":5,"meta":{"ts":9,"v":"a"}}"#,
            1024,
        );
        assert_eq!(compare(&r, &p, &s).outcome, Outcome::Match);
        // Without a JSON content type, bytes decide.
        let p2 = answer(200, &[], br#"{"a":1}"#, 1024);
        let s2 = answer(200, &[], br#"{ "a": 1 }"#, 1024);
        assert_eq!(compare(&rules(), &p2, &s2).outcome, Outcome::BodyMismatch);
        // Past the byte cap, JSON is not parsed: the hash and the length decide.
        let p3 = answer(200, &ct, br#"{"a":1,"ts":1}"#, 4);
        let s3 = answer(200, &ct, br#"{"a":1,"ts":2}"#, 4);
        assert_eq!(compare(&r, &p3, &s3).outcome, Outcome::Match);
    }

    #[test]
    fn json_diff_lists_arrays_and_missing_keys() {
        let mut out = Vec::new();
        json_diff(
            &json!({"a": [1, 2], "b": true}),
            &json!({"a": [1], "c": null}),
            "$",
            &[],
            &mut out,
        );
        assert_eq!(
            out,
            vec![
                "$.a[1]: 2 != (absent)",
                "$.b: true != (absent)",
                "$.c: (absent) != null"
            ]
        );
    }

    #[test]
    fn compile_checks_fields() {
        let lookup = |n: &str| match n {
            "new" => Some(1),
            "tls" => Some(2),
            _ => None,
        };
        let ok = ShadowFile {
            upstream: "new".into(),
            percent: Some(12.5),
            ..ShadowFile::default()
        };
        let s = compile(&ok, "t-ok", 100, lookup).unwrap();
        assert_eq!((s.upstream, s.share), (1, 1250));
        assert_eq!(s.methods, vec![Method::GET, Method::HEAD]);
        assert!(s.rules.status && s.rules.body && !s.rules.headers);
        let bad = ShadowFile {
            upstream: "nope".into(),
            percent: Some(101.0),
            methods: vec!["G ET".into()],
            compare: vec!["bodies".into()],
            headers: vec!["bad header".into()],
            ..ShadowFile::default()
        };
        let errs = compile(&bad, "t-bad", 100, lookup).err().unwrap();
        let fields: Vec<&str> = errs.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "shadow.upstream",
                "shadow.percent",
                "shadow.methods[0]",
                "shadow.compare[0]",
                "shadow.headers[0]"
            ]
        );
        let tls = ShadowFile {
            upstream: "tls".into(),
            ..ShadowFile::default()
        };
        assert_eq!(compile(&tls, "t-tls", 100, lookup).unwrap().upstream, 2);
    }

    #[test]
    fn selection_by_method_and_share() {
        let f = ShadowFile {
            upstream: "new".into(),
            percent: Some(10.0),
            ..ShadowFile::default()
        };
        let s = compile(&f, "t-sel", 100, |_| Some(0)).unwrap();
        assert!(selected(&s, &Method::GET, 999));
        assert!(!selected(&s, &Method::GET, 1000));
        assert!(!selected(&s, &Method::POST, 0));
        let hits = (0..10_000)
            .filter(|&r| selected(&s, &Method::HEAD, r))
            .count();
        assert_eq!(hits, 1000);
    }

    #[test]
    fn permits_respect_the_cap() {
        let base = inflight();
        let a = Permit::try_acquire(base + 2).unwrap();
        let b = Permit::try_acquire(base + 2).unwrap();
        assert!(Permit::try_acquire(base + 2).is_none());
        drop(a);
        assert!(Permit::try_acquire(base + 2).is_some());
        drop(b);
    }
}
