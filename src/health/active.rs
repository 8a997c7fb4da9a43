//! Active health checks: one task per upstream name that has `health = { ... }`, started and
//! stopped by a supervisor that follows the live route table, all on the control runtime.
//!
//! Each round sends `GET {path}` to every address of the upstream over a fresh connection
//! (TCP, or TLS with the data plane's trust: web roots plus `ca_file`, the same SNI), so a
//! firewall or a dead listener is not hidden by a pooled connection. A round passes only when
//! every address answers with the expected status within `timeout_ms`: the proxy cannot steer
//! around one bad address of an upstream, so one bad address makes the upstream unhealthy.
//! `unhealthy` failed rounds in a row mark the upstream unhealthy, `healthy` passed rounds in a
//! row mark it healthy again; the verdict lives in [`super::UpstreamState`] (kept by name
//! across reloads) and is exported as `switchyard_upstream_healthy{upstream}`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::header;
use pingora::connectors::http::v1::Connector;
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use pingora::protocols::tls::CaType;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::MissedTickBehavior;

use super::UpstreamState;
use crate::config::{HealthFile, UpstreamFile};
use crate::metrics::METRICS;
use crate::routing::table::{HostHeader, RouteTable, Upstream};
use crate::routing::TableStore;

/// How often the supervisor looks for a newly published table.
const SUPERVISE_EVERY: Duration = Duration::from_millis(250);

/// User-Agent of check requests, so origins can tell them from client traffic.
pub const USER_AGENT: &str = "switchyard-health-check";

/// What one checker needs, copied out of a table so a running checker does not keep an old
/// table alive.
struct Target {
    name: String,
    addrs: Vec<String>,
    tls: bool,
    sni: String,
    /// Host header of check requests: the upstream's fixed `host` (or SNI with TLS), else the
    /// address as written.
    host: Option<String>,
    ca: Option<Arc<CaType>>,
    connect_timeout: Duration,
    health: HealthFile,
    state: Arc<UpstreamState>,
}

impl Target {
    fn new(up: &Upstream, health: &HealthFile) -> Target {
        Target {
            name: up.name.to_string(),
            addrs: up.addrs.clone(),
            tls: up.tls,
            sni: up.sni.clone(),
            host: match &up.host {
                HostHeader::Fixed(h) => h.to_str().ok().map(str::to_string),
                HostHeader::Client => None,
            },
            ca: up.ca.clone(),
            connect_timeout: up.connect_timeout,
            health: health.clone(),
            state: up.state.clone(),
        }
    }
}

/// What a checker was started from: when it changes on reload, the checker restarts (the
/// verdict is kept). The route file entry plus the directory its `ca_file` is relative to.
#[derive(Debug, Clone, PartialEq)]
struct Key {
    file: UpstreamFile,
    base_dir: Option<PathBuf>,
}

struct Checker {
    key: Key,
    state: Arc<UpstreamState>,
    task: JoinHandle<()>,
}

/// Runs forever on the control runtime: every [`SUPERVISE_EVERY`] it looks at the live table
/// and makes the running checkers match it (starts checks for new upstreams with `health`,
/// restarts changed ones, stops removed ones). An upstream whose checks stop is healthy again
/// (no checks = healthy) and its gauge is removed.
pub async fn supervise(store: Arc<TableStore>) {
    let connector = Arc::new(Connector::new(None));
    let mut checkers: HashMap<String, Checker> = HashMap::new();
    let mut seen = None;
    loop {
        let table = store.load();
        if seen != Some(table.version) {
            seen = Some(table.version);
            reconcile(&table, &mut checkers, &connector);
        }
        tokio::time::sleep(SUPERVISE_EVERY).await;
    }
}

/// The checkers `table` wants, by upstream name.
fn wanted(table: &RouteTable) -> HashMap<String, (Key, &Upstream, &HealthFile)> {
    let doc = &table.doc;
    table
        .upstreams
        .iter()
        .filter_map(|up| {
            let health = up.health.as_ref()?;
            let file = doc
                .table
                .upstreams
                .get(&*up.name)
                .cloned()
                .unwrap_or_default();
            let base_dir = doc
                .origins
                .base_dirs
                .get(doc.upstream_origin(&up.name))
                .cloned();
            Some((up.name.to_string(), (Key { file, base_dir }, up, health)))
        })
        .collect()
}

fn reconcile(
    table: &RouteTable,
    checkers: &mut HashMap<String, Checker>,
    connector: &Arc<Connector>,
) {
    let wanted = wanted(table);
    checkers.retain(|name, c| {
        let keep = wanted.get(name).is_some_and(|(k, _, _)| *k == c.key);
        if !keep {
            c.task.abort();
            if !wanted.contains_key(name) {
                c.state.set_active_healthy(true, "checks removed");
                let _ = METRICS.upstream_healthy.remove_label_values(&[name]);
                tracing::info!(upstream = %name, "health checks stopped");
            }
        }
        keep
    });
    for (name, (key, up, health)) in wanted {
        if checkers.contains_key(&name) {
            continue;
        }
        let target = Arc::new(Target::new(up, health));
        tracing::info!(
            upstream = %name,
            path = %health.path,
            interval_ms = health.interval_ms,
            "health checks started"
        );
        let task = tokio::spawn(run(target, connector.clone()));
        checkers.insert(
            name,
            Checker {
                key,
                state: up.state.clone(),
                task,
            },
        );
    }
}

/// Counts rounds in a row and says when the verdict flips.
#[derive(Debug, Default)]
struct Streak {
    passed: u32,
    failed: u32,
}

impl Streak {
    /// Records one round; returns the new verdict when it changes from `healthy`.
    fn record(&mut self, passed: bool, healthy: bool, h: &HealthFile) -> Option<bool> {
        if passed {
            self.passed = self.passed.saturating_add(1);
            self.failed = 0;
            (!healthy && self.passed >= h.healthy).then_some(true)
        } else {
            self.failed = self.failed.saturating_add(1);
            self.passed = 0;
            (healthy && self.failed >= h.unhealthy).then_some(false)
        }
    }
}

/// One upstream's check loop: a round every `interval_ms` (the first at once).
async fn run(t: Arc<Target>, connector: Arc<Connector>) {
    let h = &t.health;
    METRICS
        .upstream_healthy
        .with_label_values(&[&t.name])
        .set(i64::from(t.state.is_active_healthy()));
    let mut tick = tokio::time::interval(Duration::from_millis(h.interval_ms.max(1)));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut streak = Streak::default();
    loop {
        tick.tick().await;
        let outcome = round(&t, &connector).await;
        if let Err(e) = &outcome {
            tracing::debug!(upstream = %t.name, error = %e, "health check failed");
        }
        let healthy = t.state.is_active_healthy();
        if let Some(v) = streak.record(outcome.is_ok(), healthy, h) {
            let detail = match &outcome {
                Ok(()) => format!("{} checks in a row passed", h.healthy),
                Err(e) => format!("{} checks in a row failed; last: {e}", h.unhealthy),
            };
            t.state.set_active_healthy(v, &detail);
        }
    }
}

/// Checks every address at once; passes when all pass, else returns the first failure.
async fn round(t: &Arc<Target>, connector: &Arc<Connector>) -> Result<(), String> {
    let mut probes = JoinSet::new();
    for addr in t.addrs.clone() {
        let (t, connector) = (t.clone(), connector.clone());
        probes.spawn(async move { probe(&t, &addr, &connector).await });
    }
    let mut first_err = None;
    while let Some(r) = probes.join_next().await {
        let r = r.unwrap_or_else(|e| Err(format!("check task failed: {e}")));
        if let Err(e) = r {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// Whether `status` is a passing answer: `expect_status` when set, else any 2xx.
fn status_ok(status: u16, h: &HealthFile) -> bool {
    match h.expect_status {
        Some(want) => status == want,
        None => (200..300).contains(&status),
    }
}

/// One check of one address, bounded by `timeout_ms` from connect to response header.
async fn probe(t: &Target, addr: &str, connector: &Connector) -> Result<(), String> {
    let h = &t.health;
    let limit = Duration::from_millis(h.timeout_ms);
    let check = async {
        let sock = crate::routing::resolve::resolve(addr)
            .await
            .map_err(|e| e.to_string())?;
        let mut peer = HttpPeer::new(sock, t.tls, t.sni.clone());
        let o = &mut peer.options;
        o.connection_timeout = Some(t.connect_timeout.min(limit));
        o.total_connection_timeout = Some(t.connect_timeout.min(limit));
        o.read_timeout = Some(limit);
        o.write_timeout = Some(limit);
        o.ca = t.ca.clone();
        let (mut s, _) = connector
            .get_http_session(&peer)
            .await
            .map_err(|e| format!("{addr}: {}", e.etype().as_str()))?;
        let mut req = RequestHeader::build("GET", h.path.as_bytes(), Some(3))
            .map_err(|e| format!("building request: {e}"))?;
        let host = t.host.as_deref().unwrap_or(addr);
        for (name, value) in [
            (header::HOST, host),
            (header::USER_AGENT, USER_AGENT),
            (header::CONNECTION, "close"),
        ] {
            req.insert_header(name, value)
                .map_err(|e| format!("building request: {e}"))?;
        }
        let io = |e: Box<pingora::Error>| format!("{addr}: {}", e.etype().as_str());
        s.write_request_header(Box::new(req)).await.map_err(io)?;
        s.finish_body().await.map_err(io)?;
        s.read_response().await.map_err(io)?;
        let status = s.get_status().map_or(0, |c| c.as_u16());
        if status_ok(status, h) {
            Ok(())
        } else {
            Err(format!("{addr}: status {status}"))
        }
    };
    match tokio::time::timeout(limit, check).await {
        Ok(r) => r,
        Err(_) => Err(format!("{addr}: no answer within {} ms", h.timeout_ms)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(healthy: u32, unhealthy: u32) -> HealthFile {
        HealthFile {
            path: "/healthz".into(),
            interval_ms: 100,
            timeout_ms: 100,
            healthy,
            unhealthy,
            expect_status: None,
        }
    }

    #[test]
    fn streaks_flip_after_thresholds() {
        let h = health(2, 3);
        let mut s = Streak::default();
        assert_eq!(s.record(false, true, &h), None);
        assert_eq!(s.record(false, true, &h), None);
        assert_eq!(s.record(true, true, &h), None, "a pass resets the failures");
        assert_eq!(s.record(false, true, &h), None);
        assert_eq!(s.record(false, true, &h), None);
        assert_eq!(s.record(false, true, &h), Some(false));
        assert_eq!(s.record(true, false, &h), None);
        assert_eq!(
            s.record(false, false, &h),
            None,
            "a failure resets the passes"
        );
        assert_eq!(s.record(true, false, &h), None);
        assert_eq!(s.record(true, false, &h), Some(true));
        assert_eq!(s.record(true, true, &h), None);
    }

    #[test]
    fn expected_status() {
        let mut h = health(1, 1);
        assert!(status_ok(200, &h) && status_ok(204, &h));
        assert!(!status_ok(301, &h) && !status_ok(500, &h) && !status_ok(0, &h));
        h.expect_status = Some(418);
        assert!(status_ok(418, &h) && !status_ok(200, &h));
    }

    /// Checks against a real loopback listener: a 200 passes, a 500 fails, a silent listener
    /// fails within the timeout, a closed port fails, and TLS with an untrusted certificate
    /// fails rather than counting as healthy.
    #[tokio::test]
    async fn probes_against_real_listeners() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        async fn serve(answer: &'static [u8]) -> String {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap().to_string();
            tokio::spawn(async move {
                while let Ok((mut s, _)) = l.accept().await {
                    tokio::spawn(async move {
                        let mut buf = [0u8; 1024];
                        let _ = s.read(&mut buf).await;
                        if !answer.is_empty() {
                            let _ = s.write_all(answer).await;
                        } else {
                            tokio::time::sleep(Duration::from_secs(5)).await;
                        }
                    });
                }
            });
            addr
        }
        let ok = serve(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
        let bad = serve(b"HTTP/1.1 500 Oops\r\ncontent-length: 0\r\n\r\n").await;
        let silent = serve(b"").await;
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let target = |addrs: Vec<String>, tls: bool| Target {
            name: "t".into(),
            addrs,
            tls,
            sni: "localhost".into(),
            host: None,
            ca: None,
            connect_timeout: Duration::from_millis(200),
            health: health(1, 1),
            state: Arc::new(UpstreamState::new("t")),
        };
        let c = Arc::new(Connector::new(None));
        assert_eq!(
            round(&Arc::new(target(vec![ok.clone()], false)), &c).await,
            Ok(())
        );
        let e = round(&Arc::new(target(vec![bad.clone()], false)), &c).await;
        assert!(e.as_ref().is_err_and(|e| e.contains("status 500")), "{e:?}");
        let start = std::time::Instant::now();
        let e = round(&Arc::new(target(vec![silent], false)), &c).await;
        assert!(e.as_ref().is_err_and(|e| e.contains("no answer")), "{e:?}");
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(round(&Arc::new(target(vec![closed], false)), &c)
            .await
            .is_err());
        // One bad address fails the round.
        assert!(round(&Arc::new(target(vec![ok.clone(), bad], false)), &c)
            .await
            .is_err());
        // A plain-text listener is not a TLS upstream: the check must fail.
        assert!(round(&Arc::new(target(vec![ok], true)), &c).await.is_err());
    }
}
