//! Each node's confirmation: under a lease (`--fleet-lease-ttl`), the version it serves, the
//! newest version it refused (with why), and the last hold it applied; rewritten on every
//! change and every third of the TTL. A node that stops renewing is dropped by etcd when its
//! lease expires. `GET /v1/fleet` and `wait_fleet` read these.

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::PutOptions;
use serde::{Deserialize, Serialize};

use super::{now_ms, Fleet, FleetError, View};
use crate::admin::ledger::{Ledger, Rejected};
use crate::admin::types::{FleetNode, FleetView, RejectedView};
use crate::metrics::METRICS;

/// The value of `nodes/NAME`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    /// The node's `--node-id`.
    pub node: String,
    /// The version it serves.
    pub version: u64,
    /// The newest version it refused since the one it serves.
    #[serde(default)]
    pub rejected: Option<Rejected>,
    /// etcd revision of the last hold or release it applied.
    #[serde(default)]
    pub hold_revision: u64,
    /// When it wrote this (ms since the epoch, its own clock).
    pub time_ms: u64,
}

/// Writes this node's confirmation until the process ends, renewing its lease; after an etcd
/// failure, a new lease is granted.
pub async fn confirm(fleet: Arc<Fleet>, ledger: Arc<Ledger>) {
    let mut applied = ledger.applied();
    let mut holds = fleet.hold_applied.subscribe();
    let ttl = fleet.ttl.as_secs() as i64;
    let every = fleet.ttl / 3;
    loop {
        let mut client = fleet.client.clone();
        if fleet.login().await.is_err() {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        }
        let lease = match fleet.timed(client.lease_grant(ttl, None)).await {
            Ok(l) => l.id(),
            Err(e) => {
                fleet.set_etcd_up(false);
                tracing::debug!(error = %e, "cannot grant the node's lease");
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
        };
        let (mut keeper, mut answers) = match fleet.timed(client.lease_keep_alive(lease)).await {
            Ok(k) => k,
            Err(e) => {
                tracing::debug!(error = %e, "cannot keep the node's lease alive");
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
        };
        let mut tick = tokio::time::interval(every);
        tick.reset();
        loop {
            let report = {
                let a = applied.borrow_and_update();
                NodeReport {
                    node: fleet.node.clone(),
                    version: a.version,
                    rejected: a.rejected.clone(),
                    hold_revision: *holds.borrow_and_update(),
                    time_ms: now_ms(),
                }
            };
            let Ok(value) = serde_json::to_vec(&report) else {
                break;
            };
            let put = client.put(
                fleet.keys.node(&fleet.node),
                value,
                Some(PutOptions::new().with_lease(lease)),
            );
            if let Err(e) = fleet.timed(put).await {
                fleet.set_etcd_up(false);
                tracing::debug!(error = %e, "cannot write the node's confirmation");
                break;
            }
            let renew = tokio::select! {
                r = applied.changed() => { if r.is_err() { return; } false }
                r = holds.changed() => { if r.is_err() { return; } false }
                _ = tick.tick() => true,
            };
            if renew {
                let alive = async {
                    keeper.keep_alive().await?;
                    answers.message().await
                };
                match fleet.timed(alive).await {
                    Ok(Some(a)) if a.ttl() > 0 => {}
                    other => {
                        tracing::warn!(answer = ?other.map(|a| a.map(|a| a.ttl())), "the node's lease is gone; taking a new one");
                        break;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn live(r: &NodeReport, ttl: Duration, now: u64) -> bool {
    now.saturating_sub(r.time_ms) <= ttl.as_millis() as u64
}

/// `GET /v1/fleet`.
pub fn view(fleet: &Fleet) -> FleetView {
    let v = fleet.view.borrow().clone();
    build_view(&fleet.node, &v, fleet.ttl, now_ms())
}

fn build_view(node: &str, v: &View, ttl: Duration, now: u64) -> FleetView {
    let version = v
        .nodes
        .values()
        .map(|r| r.version)
        .chain([v.head])
        .max()
        .unwrap_or(0);
    let nodes: Vec<FleetNode> = v
        .nodes
        .values()
        .map(|r| FleetNode {
            node: r.node.clone(),
            version: r.version,
            live: live(r, ttl, now),
            last_seen_ms: now.saturating_sub(r.time_ms),
            rejected: r.rejected.as_ref().map(|x| RejectedView {
                version: x.version,
                error: x.error.clone(),
            }),
            hold_revision: r.hold_revision,
        })
        .collect();
    let converged = nodes
        .iter()
        .filter(|n| n.live)
        .all(|n| n.version == version);
    FleetView {
        version,
        converged,
        node: node.to_string(),
        etcd: if v.etcd_up { "up" } else { "unreachable" }.into(),
        nodes,
    }
}

/// Sets `switchyard_fleet_nodes`, `switchyard_fleet_converged` and the version lags.
pub fn update_metrics(fleet: &Fleet) {
    let v = view(fleet);
    let live: Vec<&FleetNode> = v.nodes.iter().filter(|n| n.live).collect();
    METRICS.fleet_nodes.set(live.len() as i64);
    METRICS.fleet_converged.set(i64::from(v.converged));
    METRICS.fleet_version_lag.reset();
    for n in live {
        METRICS
            .fleet_version_lag
            .with_label_values(&[&n.node])
            .set(v.version.saturating_sub(n.version) as i64);
    }
}

/// Where each live node stands against a target; `None` while some node is still pending.
fn verdict(
    v: &View,
    ttl: Duration,
    done: impl Fn(&NodeReport) -> bool,
    failed: impl Fn(&NodeReport) -> Option<String>,
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let now = now_ms();
    let (mut ok, mut pending, mut bad) = (Vec::new(), Vec::new(), Vec::new());
    for r in v.nodes.values().filter(|r| live(r, ttl, now)) {
        if done(r) {
            ok.push(r.node.clone());
        } else if let Some(why) = failed(r) {
            bad.push(format!("{} ({why})", r.node));
        } else {
            pending.push(r.node.clone());
        }
    }
    (ok, pending, bad)
}

impl Fleet {
    /// Waits until every live node serves `version` (or a newer one). Fails at once when a
    /// node refused it, and at `timeout` naming the nodes that did not serve it.
    pub async fn wait_version(
        &self,
        version: u64,
        timeout: Duration,
    ) -> Result<Vec<String>, FleetError> {
        self.wait(
            timeout,
            &format!("version {version}"),
            |r| r.version >= version,
            |r| {
                r.rejected
                    .as_ref()
                    .filter(|x| x.version >= version)
                    .map(|x| format!("refused version {}: {}", x.version, x.error))
            },
        )
        .await
    }

    /// Waits until every live node applied the hold or release at etcd revision `rev`.
    pub async fn wait_hold(&self, rev: u64, timeout: Duration) -> Result<Vec<String>, FleetError> {
        self.wait(timeout, "the hold", |r| r.hold_revision >= rev, |_| None)
            .await
    }

    async fn wait(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&NodeReport) -> bool,
        failed: impl Fn(&NodeReport) -> Option<String>,
    ) -> Result<Vec<String>, FleetError> {
        let deadline = Instant::now() + timeout;
        let mut rx = self.view.subscribe();
        loop {
            let (ok, pending, bad) = {
                let v = rx.borrow_and_update();
                verdict(&v, self.ttl, &done, &failed)
            };
            if pending.is_empty() {
                if bad.is_empty() {
                    return Ok(ok);
                }
                return Err(FleetError::NotConfirmed(format!(
                    "{what} is committed, but not served by: {}",
                    bad.join(", ")
                )));
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() {
                    return Err(FleetError::Runtime("the fleet view closed".into()));
                },
                // Liveness changes with time alone: look again now and then.
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = tokio::time::sleep_until(deadline.into()) => {
                    let mut all = bad;
                    all.extend(pending.into_iter().map(|n| format!("{n} (not confirmed within {timeout:?})")));
                    return Err(FleetError::NotConfirmed(format!(
                        "{what} is committed, but not served by: {}",
                        all.join(", ")
                    )));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(node: &str, version: u64, time_ms: u64) -> NodeReport {
        NodeReport {
            node: node.into(),
            version,
            rejected: None,
            hold_revision: 0,
            time_ms,
        }
    }

    #[test]
    fn converged_only_when_every_live_node_serves_the_newest() {
        let ttl = Duration::from_secs(10);
        let mut v = View {
            head: 3,
            etcd_up: true,
            ..View::default()
        };
        v.nodes.insert("a".into(), report("a", 3, 1_000));
        v.nodes.insert("b".into(), report("b", 2, 1_000));
        let f = build_view("a", &v, ttl, 2_000);
        assert_eq!(f.version, 3);
        assert!(!f.converged);
        assert_eq!(f.nodes[1].last_seen_ms, 1_000);
        // b's confirmation is older than the TTL: not live, not waited for.
        v.nodes.insert("b".into(), report("b", 2, 0));
        let f = build_view("a", &v, ttl, 20_000);
        assert!(!f.nodes[1].live);
        v.nodes.insert("a".into(), report("a", 3, 19_000));
        let f = build_view("a", &v, ttl, 20_000);
        assert!(f.converged, "{f:?}");
    }
}
