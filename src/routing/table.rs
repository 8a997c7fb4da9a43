//! The compiled, immutable route table the proxy reads, and its upstreams.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use pingora::protocols::tls::CaType;

use super::matcher::{HostSelector, Matcher};
use super::pattern::Pattern;
use super::split::{Distribution, StickyKey};
use crate::config::{TableDoc, TableFile};
use crate::health::UpstreamState;
use crate::metrics::{PairStats, METRICS};

/// Where a table came from, for `GET /v1/table` and the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Loaded from route files at this path.
    Files(String),
    /// Sent through the admin API.
    Api,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Files(p) => write!(f, "files:{p}"),
            Source::Api => f.write_str("api"),
        }
    }
}

/// One compiled table. Immutable once published: a request takes one `Arc` of it when it
/// starts and uses it until it ends, whatever is published meanwhile.
pub struct RouteTable {
    /// Grows by one with every publish; assigned by the store.
    pub version: u64,
    /// The document it was compiled from (what the admin API shows and edits).
    pub doc: Arc<TableDoc>,
    pub routes: Vec<Route>,
    pub upstreams: Vec<Upstream>,
    pub proxy: ProxySettings,
    pub(crate) matcher: Matcher,
}

/// `[proxy]` compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySettings {
    /// Lowercase request header naming a forced upstream; `None` = overrides disabled.
    pub override_header: Option<http::HeaderName>,
    /// Secret the request must also carry in `x-switchyard-secret`; `None` = not required.
    pub override_secret: Option<String>,
    /// Add `x-switchyard-upstream` to responses.
    pub response_header: bool,
    /// Most shadow copies in flight at once (`[proxy] shadow_max_inflight`).
    pub shadow_max_inflight: usize,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            override_header: Some(http::HeaderName::from_static("x-switchyard-upstream")),
            override_secret: None,
            response_header: true,
            shadow_max_inflight: crate::proxy::shadow::DEFAULT_MAX_INFLIGHT,
        }
    }
}

/// One compiled route.
#[derive(Debug)]
pub struct Route {
    pub id: Arc<str>,
    /// Empty = any host.
    pub hosts: Vec<HostSelector>,
    pub pattern: Pattern,
    /// `None` = any method.
    pub methods: Option<Vec<http::Method>>,
    pub dist: Distribution,
    pub sticky: Option<StickyKey>,
    pub retry_non_idempotent: bool,
    pub retry_buffer_bytes: usize,
    /// The `shadow` option: copies of a share of requests, compared and dropped.
    pub shadow: Option<Arc<crate::proxy::shadow::ShadowSpec>>,
    /// The `max_body_bytes` option: larger request bodies get 413. `None` = no limit.
    pub max_body_bytes: Option<u64>,
    /// The `websocket_idle_timeout_ms` option (default 60 s).
    pub websocket_idle: Duration,
    /// Requests in flight on this route (by id, across tables).
    pub inflight: Arc<std::sync::atomic::AtomicI64>,
    /// Metric handles per upstream index, resolved on first use.
    pub(crate) stats: Box<[OnceLock<PairStats>]>,
}

impl Route {
    /// Counters for this route and upstream `idx` of the same table.
    #[inline]
    pub fn stats(&self, idx: usize, upstream: &str) -> &PairStats {
        self.stats[idx].get_or_init(|| METRICS.pair(&self.id, upstream))
    }
}

/// Host header sent upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostHeader {
    /// Pass the client's Host through.
    Client,
    /// Always send this value (checked once, when the table is compiled).
    Fixed(http::HeaderValue),
}

/// One compiled upstream.
pub struct Upstream {
    pub name: Arc<str>,
    /// `host:port` as written; resolved at connect time (IP literals need no lookup).
    pub addrs: Vec<String>,
    pub tls: bool,
    pub sni: String,
    pub host: HostHeader,
    pub path_prefix: Option<String>,
    pub strip_prefix: Option<String>,
    /// Web roots plus `ca_file`, when `ca_file` is set; `None` = pingora's default roots.
    pub ca: Option<Arc<CaType>>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub health: Option<crate::config::HealthFile>,
    pub outlier: crate::config::OutlierFile,
    /// Health shared with every table that has an upstream of this name.
    pub state: Arc<UpstreamState>,
    /// `x-switchyard-upstream` value, built once.
    pub name_header: http::HeaderValue,
    /// Parallel to `addrs`: the parsed address of each IP literal.
    literal_addrs: Vec<Option<std::net::SocketAddr>>,
    rr: AtomicUsize,
}

impl Upstream {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: &str,
        addrs: Vec<String>,
        tls: bool,
        sni: String,
        host: HostHeader,
        path_prefix: Option<String>,
        strip_prefix: Option<String>,
        ca: Option<Arc<CaType>>,
        connect_timeout: Duration,
        read_timeout: Duration,
        health: Option<crate::config::HealthFile>,
        outlier: crate::config::OutlierFile,
    ) -> Upstream {
        let literal_addrs = addrs.iter().map(|a| a.parse().ok()).collect();
        Upstream {
            name: name.into(),
            addrs,
            tls,
            sni,
            host,
            path_prefix,
            strip_prefix,
            ca,
            connect_timeout,
            read_timeout,
            health,
            outlier,
            literal_addrs,
            state: crate::health::state(name),
            name_header: http::HeaderValue::from_str(name)
                .unwrap_or_else(|_| http::HeaderValue::from_static("invalid")),
            rr: AtomicUsize::new(0),
        }
    }

    /// The next address, round robin, and its socket address when it is an IP literal
    /// (parsed once at compile time, so the request path skips parsing and lookup).
    pub fn next_addr(&self) -> (&str, Option<std::net::SocketAddr>) {
        let i = self.rr.fetch_add(1, Ordering::Relaxed) % self.addrs.len();
        (&self.addrs[i], self.literal_addrs[i])
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("addrs", &self.addrs)
            .field("tls", &self.tls)
            .field("sni", &self.sni)
            .finish_non_exhaustive()
    }
}

impl RouteTable {
    /// A table with no routes: every request gets 404. Version 0, before anything is loaded.
    pub fn empty() -> RouteTable {
        RouteTable {
            version: 0,
            doc: Arc::new(TableDoc::default()),
            routes: Vec::new(),
            upstreams: Vec::new(),
            proxy: ProxySettings::default(),
            matcher: Matcher::default(),
        }
    }

    /// The merged source document.
    pub fn file(&self) -> &TableFile {
        &self.doc.table
    }

    /// The first route (in table order) matching the request, as an index into `routes`.
    /// `host` must be lowercase without a port; `path` excludes the query string.
    #[inline]
    pub fn match_request(&self, host: &str, path: &[u8], method: &http::Method) -> Option<usize> {
        self.matcher
            .first(host, path, |i| {
                let r = &self.routes[i as usize];
                r.methods.as_ref().is_none_or(|m| m.contains(method)) && r.pattern.matches(path)
            })
            .map(|i| i as usize)
    }

    /// The index of the route called `id`.
    pub fn route_index(&self, id: &str) -> Option<usize> {
        self.routes.iter().position(|r| &*r.id == id)
    }

    /// The index of the upstream called `name`.
    pub fn upstream_index(&self, name: &str) -> Option<usize> {
        self.upstreams.iter().position(|u| &*u.name == name)
    }
}

impl fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteTable")
            .field("version", &self.version)
            .field("routes", &self.routes.len())
            .field("upstreams", &self.upstreams.len())
            .finish()
    }
}
