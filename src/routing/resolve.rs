//! Upstream address resolution: IP literals need no lookup; host names are resolved with the
//! system resolver and cached briefly, so DNS changes (API Gateway, ALB) are followed without
//! a lookup per request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use pingora::{Error, ErrorType, Result};

/// How long a lookup is reused.
const TTL: Duration = Duration::from_secs(30);

/// Lookups by `host:port`: when made, and what they returned.
type Cache = RwLock<HashMap<String, (Instant, Vec<SocketAddr>)>>;

static CACHE: LazyLock<Cache> = LazyLock::new(Default::default);

/// Resolves `host:port` (as validated by the compiler) to one socket address, rotating through
/// the addresses a name resolves to.
pub async fn resolve(addr: &str) -> Result<SocketAddr> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Some((t, addrs)) = CACHE.read().get(addr) {
        if t.elapsed() < TTL && !addrs.is_empty() {
            let i = rand::random_range(0..addrs.len());
            return Ok(addrs[i]);
        }
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| Error::because(ErrorType::ConnectNoRoute, format!("resolving {addr}"), e))?
        .collect();
    let first = *addrs.first().ok_or_else(|| {
        Error::explain(
            ErrorType::ConnectNoRoute,
            format!("{addr} resolved to no address"),
        )
    })?;
    CACHE
        .write()
        .insert(addr.to_string(), (Instant::now(), addrs));
    Ok(first)
}
