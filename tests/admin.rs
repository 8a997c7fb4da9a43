//! Admin API against the real binary on loopback: every endpoint with good and bad input,
//! rollback under load, history across restarts and `kill -9`, the files-vs-API rule,
//! hold/release, the CLI, the charts' series and per-host traffic, and the dashboard driven in
//! headless Chromium.

mod common;

#[path = "admin/api.rs"]
mod api;
#[path = "admin/charts.rs"]
mod charts;
#[path = "admin/cli.rs"]
mod cli;
#[path = "admin/dashboard.rs"]
mod dashboard;
#[path = "admin/durability.rs"]
mod durability;
#[path = "admin/files_rule.rs"]
mod files_rule;
#[path = "admin/hold.rs"]
mod hold;
#[path = "admin/rollback.rs"]
mod rollback;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// The token every test proxy accepts (actor `admin`).
pub const TOKEN: &str = "admin-test-token-7f3a9c";

/// `Authorization` value for [`TOKEN`].
pub fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

/// Starts the proxy with [`TOKEN`] as `SWITCHYARD_ADMIN_TOKEN`.
pub async fn start(dir: &Path, extra: &[&str]) -> Proxy {
    Proxy::start_env(dir, extra, &[("SWITCHYARD_ADMIN_TOKEN", TOKEN)]).await
}

/// An admin call with the token.
pub async fn call(p: &Proxy, method: &str, path: &str, body: &str) -> Resp {
    let auth = bearer();
    call_with(p, method, path, &[("authorization", &auth)], body).await
}

/// An admin call with exactly `headers` (no token unless given).
pub async fn call_with(
    p: &Proxy,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    send(
        &client(),
        method,
        &p.admin_url(path),
        headers,
        body.to_string(),
    )
    .await
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// `[upstreams.NAME]` for an origin. The connect timeout is long so that a test machine
/// starved of CPU does not turn a slow connect into a fallback.
pub fn upstream(name: &str, o: &Origin) -> String {
    format!(
        "[upstreams.{name}]\naddrs = [\"{}\"]\nconnect_timeout_ms = 10000\n",
        o.addr
    )
}

/// The usual table: `users` split new/legacy with legacy as fallback, `orders` to new without
/// a fallback, `static` to legacy.
pub fn table(new: &Origin, legacy: &Origin, users: &str) -> String {
    format!(
        "{}{}[[routes]]\nid = \"users\"\npath = \"/users/*\"\n{users}\n\
         [[routes]]\nid = \"orders\"\npath = \"/orders/*\"\nto = \"new\"\n\
         [[routes]]\nid = \"static\"\npath = \"/static/*\"\nto = \"legacy\"\n",
        upstream("new", new),
        upstream("legacy", legacy),
    )
}

/// `users` split 50/50 with legacy as fallback.
pub const SPLIT: &str = "split = { new = 50, legacy = 50 }\nfallback = \"legacy\"";

/// Which origins answer `n` GETs of `path`: (new, legacy, other).
pub async fn spread(p: &Proxy, path: &str, n: usize) -> (usize, usize, usize) {
    let c = client();
    let (mut new, mut legacy, mut other) = (0, 0, 0);
    for _ in 0..n {
        let r = send(&c, "GET", &p.url(path), &[], "")
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        match r.origin() {
            "new" => new += 1,
            "legacy" => legacy += 1,
            _ => other += 1,
        }
    }
    (new, legacy, other)
}

/// The live version from `/healthz`.
pub async fn version(p: &Proxy) -> u64 {
    call(p, "GET", "/healthz", "").await.json()["version"]
        .as_u64()
        .unwrap()
}

/// Waits until `f` holds, polling every 20 ms, or panics with `what` after `secs`.
pub async fn wait_for<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
