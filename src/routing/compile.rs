//! Compiling a [`TableDoc`] into a [`RouteTable`]: every problem is collected and returned at
//! once, each naming the file, the route or upstream, and the field.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Serialize;

use super::matcher::{HostSelector, Matcher};
use super::pattern::Pattern;
use super::split::{Distribution, StickyKey, BUCKETS};
use super::table::{HostHeader, ProxySettings, Route, RouteTable, Upstream};
use crate::config::{TableDoc, UpstreamFile};

/// Largest request body pingora keeps for a replay (its retry buffer is fixed at 64 KiB).
pub const MAX_RETRY_BUFFER: usize = 64 * 1024;
const DEFAULT_CONNECT_MS: u64 = 2_000;
const DEFAULT_READ_MS: u64 = 30_000;

/// How bad a diagnostic is: errors stop the table from going live, warnings do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem, naming where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: String,
    /// `route "id"`, `upstream "name"`, `[proxy]`, or empty for the file as a whole.
    pub subject: String,
    /// The key at fault (`split`, `addrs[1]`, ...), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{sev}: {}", self.file)?;
        if !self.subject.is_empty() {
            write!(f, ": {}", self.subject)?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl From<crate::config::LoadError> for Diagnostic {
    fn from(e: crate::config::LoadError) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            file: match e.line {
                Some(l) => format!("{}:{}", e.file, l),
                None => e.file,
            },
            subject: String::new(),
            field: None,
            message: e.message,
        }
    }
}

/// A compiled table and the warnings it compiled with.
#[derive(Debug)]
pub struct Compiled {
    pub table: RouteTable,
    pub warnings: Vec<Diagnostic>,
}

struct Diags {
    list: Vec<Diagnostic>,
}

impl Diags {
    fn push(
        &mut self,
        sev: Severity,
        file: &str,
        subject: String,
        field: Option<&str>,
        message: String,
    ) {
        self.list.push(Diagnostic {
            severity: sev,
            file: file.to_string(),
            subject,
            field: field.map(str::to_string),
            message,
        });
    }
    fn err(&mut self, file: &str, subject: &str, field: &str, message: impl Into<String>) {
        self.push(
            Severity::Error,
            file,
            subject.to_string(),
            Some(field),
            message.into(),
        );
    }
    fn has_errors(&self) -> bool {
        self.list.iter().any(|d| d.severity == Severity::Error)
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Compiles `doc`. On success the table has version 0 (the store assigns the real one).
/// On failure every diagnostic (errors and warnings) is returned, in file order.
pub fn compile(doc: &TableDoc) -> Result<Compiled, Vec<Diagnostic>> {
    let mut d = Diags { list: Vec::new() };
    let t = &doc.table;

    // [proxy]
    let mut proxy = ProxySettings::default();
    if let Some(p) = &t.proxy {
        let file = doc.origins.proxy.as_deref().unwrap_or("?");
        if let Some(h) = &p.override_header {
            if h.is_empty() {
                proxy.override_header = None;
            } else {
                match http::HeaderName::from_bytes(h.as_bytes()) {
                    Ok(name) => proxy.override_header = Some(name),
                    Err(_) => d.err(
                        file,
                        "[proxy]",
                        "override_header",
                        format!("{h:?} is not a valid header name"),
                    ),
                }
            }
        }
        if let Some(var) = &p.override_secret_env {
            match std::env::var(var) {
                Ok(v) if !v.is_empty() => proxy.override_secret = Some(v),
                _ => d.err(
                    file,
                    "[proxy]",
                    "override_secret_env",
                    format!("environment variable {var} is not set (refusing to accept overrides without the secret)"),
                ),
            }
        }
        proxy.response_header = p.response_header.unwrap_or(true);
        match p.shadow_max_inflight {
            Some(0) => d.err(file, "[proxy]", "shadow_max_inflight", "must be at least 1"),
            Some(n) => proxy.shadow_max_inflight = n,
            None => {}
        }
    }

    // Upstreams.
    let mut upstreams = Vec::with_capacity(t.upstreams.len());
    let mut up_index: HashMap<&str, usize> = HashMap::new();
    for (name, u) in &t.upstreams {
        let file = doc.upstream_origin(name);
        let subject = format!("upstream {name:?}");
        if !valid_name(name) {
            d.err(
                file,
                &subject,
                "name",
                "use letters, digits, '-', '_' or '.'",
            );
        }
        let base = doc.origins.base_dirs.get(file).map(PathBuf::as_path);
        if let Some(up) = compile_upstream(name, u, file, &subject, base, &mut d) {
            up_index.insert(name.as_str(), upstreams.len());
            upstreams.push(up);
        } else {
            // Still known by name, so routes naming it are not also reported as unknown.
            up_index.insert(name.as_str(), usize::MAX);
        }
    }

    // Routes.
    let mut routes: Vec<Route> = Vec::with_capacity(t.routes.len());
    let mut seen_ids: HashMap<&str, &str> = HashMap::new();
    let mut matcher = Matcher::default();
    let mut prefixes = super::matcher::Trie::default();
    for (i, r) in t.routes.iter().enumerate() {
        let file = doc.route_origin(i);
        let subject = if r.id.is_empty() {
            format!("route #{}", i + 1)
        } else {
            format!("route {:?}", r.id)
        };
        if !valid_name(&r.id) {
            d.err(
                file,
                &subject,
                "id",
                "must be non-empty: letters, digits, '-', '_' or '.'",
            );
        } else if let Some(prev) = seen_ids.insert(&r.id, file) {
            d.err(
                file,
                &subject,
                "id",
                format!("duplicate id (also defined in {prev})"),
            );
        }
        let pattern = match Pattern::parse(&r.path) {
            Ok(p) => Some(p),
            Err(e) => {
                d.err(file, &subject, "path", e.to_string());
                None
            }
        };
        let mut hosts = Vec::new();
        for (k, h) in r.hosts.iter().enumerate() {
            match HostSelector::parse(h) {
                Some(s) => hosts.push(s),
                None => d.err(
                    file,
                    &subject,
                    &format!("hosts[{k}]"),
                    format!("{h:?} is not a host name or *.domain"),
                ),
            }
        }
        let mut methods = Vec::new();
        for (k, m) in r.methods.iter().enumerate() {
            match http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                Ok(m) => methods.push(m),
                Err(_) => d.err(
                    file,
                    &subject,
                    &format!("methods[{k}]"),
                    format!("{m:?} is not an HTTP method"),
                ),
            }
        }
        let dist = compile_distribution(r, file, &subject, &up_index, &mut d);
        let sticky = match r.sticky.as_deref().map(StickyKey::parse) {
            Some(Ok(k)) => Some(k),
            Some(Err(e)) => {
                d.err(file, &subject, "sticky", e);
                None
            }
            None => None,
        };
        let retry_buffer_bytes = r.retry_buffer_bytes.unwrap_or(MAX_RETRY_BUFFER);
        if retry_buffer_bytes > MAX_RETRY_BUFFER {
            d.err(
                file,
                &subject,
                "retry_buffer_bytes",
                format!("{retry_buffer_bytes} is above the proxy's replay buffer of {MAX_RETRY_BUFFER} bytes"),
            );
        }
        let shadow = r.shadow.as_ref().and_then(|f| {
            let lookup = |n: &str| up_index.get(n).copied();
            crate::proxy::shadow::compile(f, &r.id, retry_buffer_bytes, lookup)
                .map_err(|errs| {
                    errs.into_iter()
                        .for_each(|(f, m)| d.err(file, &subject, &f, m))
                })
                .ok()
                .map(Arc::new)
        });
        let websocket_idle = match r.websocket_idle_timeout_ms {
            Some(0) => {
                d.err(
                    file,
                    &subject,
                    "websocket_idle_timeout_ms",
                    "must be above 0",
                );
                crate::proxy::limits::DEFAULT_WEBSOCKET_IDLE
            }
            Some(ms) => Duration::from_millis(ms),
            None => crate::proxy::limits::DEFAULT_WEBSOCKET_IDLE,
        };
        if let (Some(pattern), Some(dist)) = (pattern, dist) {
            let route = Route {
                id: r.id.as_str().into(),
                hosts,
                pattern,
                methods: (!methods.is_empty()).then_some(methods),
                dist,
                sticky,
                retry_non_idempotent: r.retry_non_idempotent,
                retry_buffer_bytes,
                shadow,
                max_body_bytes: r.max_body_bytes,
                websocket_idle,
                inflight: super::inflight::counter(&r.id),
                stats: (0..upstreams.len()).map(|_| OnceLock::new()).collect(),
            };
            // Only an earlier route whose literal prefix starts this one's can cover it: the
            // prefix index finds those without comparing every pair of routes.
            let mut shadowed_by: Option<usize> = None;
            prefixes.walk(route.pattern.literal_prefix(), |i| {
                let i = i as usize;
                if shadowed_by.is_none_or(|s| i < s) && shadows(&routes[i], &route) {
                    shadowed_by = Some(i);
                }
            });
            prefixes.insert(route.pattern.literal_prefix(), routes.len() as u32);
            if let Some(prev) = shadowed_by.map(|i| &routes[i]) {
                d.push(
                    Severity::Warning,
                    file,
                    subject.clone(),
                    Some("path"),
                    format!("can never match: route {:?} comes first and matches every request this one does", prev.id),
                );
            }
            matcher.insert(
                routes.len() as u32,
                &route.hosts,
                route.pattern.literal_prefix(),
            );
            routes.push(route);
        }
    }

    if d.has_errors() {
        return Err(d.list);
    }
    Ok(Compiled {
        table: RouteTable {
            version: 0,
            doc: Arc::new(doc.clone()),
            routes,
            upstreams,
            proxy,
            matcher,
        },
        warnings: d.list,
    })
}

/// True when `earlier` matches every request `later` matches (a conservative check).
fn shadows(earlier: &Route, later: &Route) -> bool {
    let hosts = earlier.hosts.is_empty()
        || (!later.hosts.is_empty()
            && later
                .hosts
                .iter()
                .all(|l| earlier.hosts.iter().any(|e| e.covers(l))));
    let methods = match (&earlier.methods, &later.methods) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(e), Some(l)) => l.iter().all(|m| e.contains(m)),
    };
    hosts && methods && earlier.pattern.covers(&later.pattern)
}

fn compile_distribution(
    r: &crate::config::RouteFile,
    file: &str,
    subject: &str,
    up_index: &HashMap<&str, usize>,
    d: &mut Diags,
) -> Option<Distribution> {
    let before = d.list.len();
    let lookup = |field: &str, name: &str, d: &mut Diags| -> Option<usize> {
        match up_index.get(name) {
            Some(&i) => Some(i),
            None => {
                d.err(file, subject, field, format!("unknown upstream {name:?}"));
                None
            }
        }
    };
    let mut weights: Vec<(usize, u32)> = Vec::new();
    match (&r.to, &r.split) {
        (Some(_), Some(_)) => d.err(file, subject, "to", "set either `to` or `split`, not both"),
        (None, None) => d.err(
            file,
            subject,
            "to",
            "missing: set `to = \"UPSTREAM\"` or `split = { ... }`",
        ),
        (Some(to), None) => {
            if let Some(i) = lookup("to", to, d) {
                weights.push((i, BUCKETS));
            }
        }
        (None, Some(_)) => {}
    }
    if let (None, Some(split)) = (&r.to, &r.split) {
        if split.is_empty() {
            d.err(file, subject, "split", "is empty");
        }
        let mut total: u64 = 0;
        // BTreeMap iteration: arms laid out in upstream-name order.
        for (name, &pct) in split {
            let field = format!("split.{name}");
            let idx = lookup(&field, name, d);
            let scaled = pct * 100.0;
            if !(0.0..=100.0).contains(&pct) || !pct.is_finite() {
                d.err(
                    file,
                    subject,
                    &field,
                    format!("{pct} is not a percentage between 0 and 100"),
                );
                continue;
            }
            if (scaled - scaled.round()).abs() > 1e-6 {
                d.err(
                    file,
                    subject,
                    &field,
                    format!("{pct} has more than two decimals (0.01% is the finest step)"),
                );
                continue;
            }
            let w = scaled.round() as u32;
            total += u64::from(w);
            if let Some(i) = idx {
                weights.push((i, w));
            }
        }
        if d.list.len() == before && total != u64::from(BUCKETS) {
            d.err(
                file,
                subject,
                "split",
                format!("weights sum to {}, must be 100", total as f64 / 100.0),
            );
        }
    }
    let mut fallbacks = Vec::new();
    if let Some(f) = &r.fallback {
        let names = f.names();
        if names.is_empty() {
            d.err(file, subject, "fallback", "is an empty list");
        }
        for (k, name) in names.iter().enumerate() {
            let field = if names.len() == 1 {
                "fallback".to_string()
            } else {
                format!("fallback[{k}]")
            };
            if let Some(i) = lookup(&field, name, d) {
                if fallbacks.contains(&i) {
                    d.err(file, subject, &field, format!("{name:?} is listed twice"));
                } else if weights.len() == 1 && weights[0].0 == i {
                    d.err(
                        file,
                        subject,
                        &field,
                        format!(
                            "{name:?} is the route's only upstream; a fallback must be another one"
                        ),
                    );
                } else {
                    fallbacks.push(i);
                }
            }
        }
    }
    if d.list.len() != before
        || weights.iter().any(|w| w.0 == usize::MAX)
        || fallbacks.contains(&usize::MAX)
    {
        return None;
    }
    Some(Distribution::new(&weights, fallbacks))
}

/// Splits `host:port` (IPv6 as `[addr]:port`) and checks both parts.
pub fn split_addr(addr: &str) -> Result<(&str, u16), String> {
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let (h, p) = rest
            .split_once("]:")
            .ok_or_else(|| format!("{addr:?}: expected [IPv6]:PORT"))?;
        h.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("{addr:?}: {h:?} is not an IPv6 address"))?;
        (h, p)
    } else {
        let (h, p) = addr
            .rsplit_once(':')
            .ok_or_else(|| format!("{addr:?}: expected HOST:PORT"))?;
        if h.parse::<std::net::Ipv4Addr>().is_err()
            && HostSelector::parse(h).is_none_or(|s| !matches!(s, HostSelector::Exact(_)))
        {
            return Err(format!(
                "{addr:?}: {h:?} is not a host name or IPv4 address"
            ));
        }
        (h, p)
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok((host, p)),
        _ => Err(format!("{addr:?}: {port:?} is not a port (1-65535)")),
    }
}

fn normalize_prefix(p: &str) -> Result<Option<String>, String> {
    if p.is_empty() || p == "/" {
        return Ok(None);
    }
    if !p.starts_with('/') {
        return Err(format!("{p:?} must start with '/'"));
    }
    if p.contains(['?', '#', ' ']) {
        return Err(format!(
            "{p:?} must be a plain path (no '?', '#' or spaces)"
        ));
    }
    Ok(Some(p.trim_end_matches('/').to_string()))
}

fn compile_upstream(
    name: &str,
    u: &UpstreamFile,
    file: &str,
    subject: &str,
    base: Option<&Path>,
    d: &mut Diags,
) -> Option<Upstream> {
    let before = d.list.len();
    if u.addrs.is_empty() {
        d.err(
            file,
            subject,
            "addrs",
            "is empty: give at least one HOST:PORT",
        );
    }
    let mut first_host = None;
    for (k, a) in u.addrs.iter().enumerate() {
        match split_addr(a) {
            Ok((h, _)) => {
                first_host.get_or_insert_with(|| h.to_string());
            }
            Err(e) => d.err(file, subject, &format!("addrs[{k}]"), e),
        }
    }
    let sni = u.sni.clone().or(first_host).unwrap_or_default();
    if let Some(s) = &u.sni {
        if HostSelector::parse(s).is_none_or(|s| !matches!(s, HostSelector::Exact(_))) {
            d.err(file, subject, "sni", format!("{s:?} is not a host name"));
        }
    }
    // The Host value is made once here: the request path copies it as it is.
    let host = match (&u.host, u.tls) {
        (Some(h), _) => match http::HeaderValue::from_str(h) {
            Ok(v) if !h.is_empty() => HostHeader::Fixed(v),
            _ => {
                d.err(
                    file,
                    subject,
                    "host",
                    format!("{h:?} is not a valid Host header"),
                );
                HostHeader::Client
            }
        },
        (None, true) => match http::HeaderValue::from_str(&sni) {
            Ok(v) => HostHeader::Fixed(v),
            Err(_) => {
                d.err(
                    file,
                    subject,
                    "sni",
                    format!("{sni:?} cannot be sent as the Host header"),
                );
                HostHeader::Client
            }
        },
        (None, false) => HostHeader::Client,
    };
    let prefix =
        |field: &str, v: &Option<String>, d: &mut Diags| match v.as_deref().map(normalize_prefix) {
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                d.err(file, subject, field, e);
                None
            }
            None => None,
        };
    let path_prefix = prefix("path_prefix", &u.path_prefix, d);
    let strip_prefix = prefix("strip_prefix", &u.strip_prefix, d);
    let ca = match &u.ca_file {
        None => None,
        Some(f) => {
            if !u.tls {
                d.push(
                    Severity::Warning,
                    file,
                    subject.to_string(),
                    Some("ca_file"),
                    "ignored: tls is false".into(),
                );
            }
            let path = match base {
                Some(b) if Path::new(f).is_relative() => b.join(f),
                _ => PathBuf::from(f),
            };
            match load_ca(&path) {
                Ok(ca) => Some(ca),
                Err(e) => {
                    d.err(file, subject, "ca_file", e);
                    None
                }
            }
        }
    };
    let ms = |field: &str, v: Option<u64>, default: u64, d: &mut Diags| {
        let v = v.unwrap_or(default);
        if v == 0 {
            d.err(file, subject, field, "must be above 0");
        }
        Duration::from_millis(v)
    };
    let connect_timeout = ms(
        "connect_timeout_ms",
        u.connect_timeout_ms,
        DEFAULT_CONNECT_MS,
        d,
    );
    let read_timeout = ms("read_timeout_ms", u.read_timeout_ms, DEFAULT_READ_MS, d);
    if let Some(h) = &u.health {
        let f = |k: &str| format!("health.{k}");
        if !h.path.starts_with('/') {
            d.err(file, subject, &f("path"), "must start with '/'");
        }
        if h.interval_ms == 0 {
            d.err(file, subject, &f("interval_ms"), "must be above 0");
        }
        if h.timeout_ms == 0 {
            d.err(file, subject, &f("timeout_ms"), "must be above 0");
        }
        if h.healthy == 0 {
            d.err(file, subject, &f("healthy"), "must be at least 1");
        }
        if h.unhealthy == 0 {
            d.err(file, subject, &f("unhealthy"), "must be at least 1");
        }
        if let Some(s) = h.expect_status {
            if !(100..=599).contains(&s) {
                d.err(
                    file,
                    subject,
                    &f("expect_status"),
                    format!("{s} is not an HTTP status"),
                );
            }
        }
    }
    let outlier = u.outlier.clone().unwrap_or_default();
    if outlier.base_ejection_ms == 0 || outlier.base_ejection_ms > outlier.max_ejection_ms {
        d.err(
            file,
            subject,
            "outlier.base_ejection_ms",
            "must be above 0 and at most max_ejection_ms",
        );
    }
    if d.list[before..]
        .iter()
        .any(|x| x.severity == Severity::Error)
    {
        return None;
    }
    Some(Upstream::new(
        name,
        u.addrs.clone(),
        u.tls,
        sni,
        host,
        path_prefix,
        strip_prefix,
        ca,
        connect_timeout,
        read_timeout,
        u.health.clone(),
        outlier,
    ))
}

/// The system's trust roots, read once: `ca_file` adds to them rather than replacing them.
pub(crate) fn web_roots() -> &'static [Vec<u8>] {
    static ROOTS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        rustls_native_certs::load_native_certs()
            .certs
            .into_iter()
            .map(|c| c.as_ref().to_vec())
            .filter(|der| x509_parser::parse_x509_certificate(der).is_ok())
            .collect()
    })
}

/// Reads a PEM file of one or more certificates into pingora's per-peer CA list, with the web
/// roots added.
fn load_ca(path: &Path) -> Result<Arc<pingora::protocols::tls::CaType>, String> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut certs = Vec::new();
    for item in rustls_pemfile::certs(&mut data.as_slice()) {
        let der = item.map_err(|e| format!("{}: not PEM: {e}", path.display()))?;
        x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| format!("{}: bad certificate: {e}", path.display()))?;
        certs.push(der.as_ref().to_vec());
    }
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificates found", path.display()));
    }
    let all: Vec<_> = certs
        .into_iter()
        .chain(web_roots().iter().cloned())
        .map(|der| pingora::utils::tls::WrappedX509::new(der, pingora::utils::tls::parse_x509))
        .collect();
    Ok(Arc::from(all.into_boxed_slice()))
}

/// Every diagnostic for the document at `path` (parse and compile), for `switchyard check`.
pub fn check_path(path: &Path) -> (Option<Compiled>, Vec<Diagnostic>) {
    match crate::config::load_path(path) {
        Err(errs) => (None, errs.into_iter().map(Diagnostic::from).collect()),
        Ok(doc) => match compile(&doc) {
            Ok(c) => {
                let w = c.warnings.clone();
                (Some(c), w)
            }
            Err(diags) => (None, diags),
        },
    }
}

/// Upstream names referenced by routes, by route id (for summaries).
pub fn route_targets(doc: &TableDoc) -> BTreeMap<String, Vec<String>> {
    doc.table
        .routes
        .iter()
        .map(|r| {
            let mut v: Vec<String> = match (&r.to, &r.split) {
                (Some(t), _) => vec![t.clone()],
                (None, Some(s)) => s.keys().cloned().collect(),
                _ => vec![],
            };
            if let Some(f) = &r.fallback {
                v.extend(f.names().iter().cloned());
            }
            (r.id.clone(), v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_toml, TableDoc};

    fn doc(text: &str) -> TableDoc {
        TableDoc::single("t.toml", parse_toml("t.toml", text).unwrap(), None)
    }

    fn errors(text: &str) -> Vec<String> {
        compile(&doc(text))
            .unwrap_err()
            .iter()
            .map(|d| d.to_string())
            .collect()
    }

    const UPS: &str =
        "[upstreams.legacy]\naddrs=['127.0.0.1:1']\n[upstreams.new]\naddrs=['127.0.0.1:2']\n";

    #[test]
    fn every_error_reported() {
        let e = errors(&format!(
            "{UPS}[upstreams.empty]\naddrs=[]\n\
             [[routes]]\nid='a'\npath='/a b'\nto='nope'\n\
             [[routes]]\nid='a'\npath='/x'\nsplit={{new=5,legacy=90}}\n\
             [[routes]]\nid='c'\npath='/c'\nto='new'\nfallback='new'\nsticky='ip'\n"
        ));
        let all = e.join("\n");
        assert!(all.contains("upstream \"empty\": addrs: is empty"), "{all}");
        assert!(all.contains("route \"a\": path:"), "{all}");
        assert!(
            all.contains("route \"a\": to: unknown upstream \"nope\""),
            "{all}"
        );
        assert!(all.contains("route \"a\": id: duplicate id"), "{all}");
        assert!(
            all.contains("split: weights sum to 95, must be 100"),
            "{all}"
        );
        assert!(
            all.contains("route \"c\": fallback: \"new\" is the route's only upstream"),
            "{all}"
        );
        assert!(all.contains("route \"c\": sticky:"), "{all}");
        assert!(e.iter().all(|l| l.starts_with("error: t.toml: ")), "{all}");
        assert_eq!(e.len(), 7, "{all}");
    }

    #[test]
    fn edge_route_options() {
        let c = compile(&doc(&format!(
            "{UPS}[[routes]]\nid='r'\npath='/*'\nto='new'\nmax_body_bytes=10\nwebsocket_idle_timeout_ms=1500\n"
        )))
        .unwrap();
        let r = &c.table.routes[0];
        assert_eq!(r.max_body_bytes, Some(10));
        assert_eq!(r.websocket_idle, Duration::from_millis(1500));
        let e = errors(&format!(
            "{UPS}[[routes]]\nid='r'\npath='/*'\nto='new'\nwebsocket_idle_timeout_ms=0\n"
        ));
        assert!(e.join("\n").contains("websocket_idle_timeout_ms"), "{e:?}");
    }

    #[test]
    fn split_weights() {
        let c = compile(&doc(&format!(
            "{UPS}[[routes]]\nid='r'\npath='/*'\nsplit={{new=0.01,legacy=99.99}}\n"
        )))
        .unwrap();
        let arms = c.table.routes[0].dist.arms();
        assert_eq!(
            arms.iter().map(|a| a.weight).collect::<Vec<_>>(),
            vec![9999, 1]
        );
        assert!(errors(&format!(
            "{UPS}[[routes]]\nid='r'\npath='/*'\nsplit={{new=0.001,legacy=99.999}}\n"
        ))[0]
            .contains("two decimals"));
    }

    #[test]
    fn shadow_is_a_warning() {
        let c = compile(&doc(&format!(
            "{UPS}[[routes]]\nid='all'\npath='/user/*'\nto='legacy'\n[[routes]]\nid='admin'\npath='/user/admin/*'\nto='new'\n"
        )))
        .unwrap();
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0]
            .to_string()
            .contains("route \"admin\": path: can never match: route \"all\""));
    }

    #[test]
    fn first_match_wins_and_hosts() {
        let c = compile(&doc(&format!(
            "{UPS}[[routes]]\nid='admin'\npath='/user/admin/*'\nto='new'\n\
             [[routes]]\nid='user'\npath='/user/*'\nto='legacy'\n\
             [[routes]]\nid='api'\nhosts=['*.example.com']\npath='*'\nmethods=['get']\nto='new'\n\
             [[routes]]\nid='exact'\nhosts=['a.example.com']\npath='/x'\nto='legacy'\n"
        )))
        .unwrap();
        let t = &c.table;
        let m = |h: &str, p: &str| {
            t.match_request(h, p.as_bytes(), &http::Method::GET)
                .map(|i| &*t.routes[i].id)
        };
        assert_eq!(m("any", "/user/admin/1"), Some("admin"));
        assert_eq!(m("any", "/user/1"), Some("user"));
        assert_eq!(m("a.example.com", "/x"), Some("api"));
        assert_eq!(m("example.com", "/x"), None);
        assert_eq!(
            t.match_request("a.example.com", b"/x", &http::Method::POST)
                .map(|i| &*t.routes[i].id),
            Some("exact")
        );
    }

    #[test]
    fn addrs() {
        assert_eq!(split_addr("a.b:80"), Ok(("a.b", 80)));
        assert_eq!(split_addr("[::1]:443"), Ok(("::1", 443)));
        assert!(split_addr("a.b").is_err());
        assert!(split_addr("a.b:0").is_err());
        assert!(split_addr("a b:1").is_err());
    }
}
