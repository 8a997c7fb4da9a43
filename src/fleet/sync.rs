//! Following the fleet: read the whole state (head, nodes, hold) at one revision, then watch
//! the prefix from the next one. A watch that ends, is cancelled or was compacted, and any
//! etcd error, start over with a full read (after a pause when etcd is unreachable); a full
//! read every `--fleet-reconcile-ms` catches anything a watch missed.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, GetOptions, Txn, TxnOp, TxnOpResponse, WatchOptions};

use super::etcd::Head;
use super::hold::FleetHold;
use super::{Fleet, FleetError, NodeReport};
use crate::admin::Ledger;
use crate::metrics::METRICS;

/// Follows the fleet until the process ends.
pub async fn run(fleet: Arc<Fleet>, ledger: Arc<Ledger>) {
    let mut pause = Duration::from_millis(100);
    loop {
        match session(&fleet, &ledger).await {
            Ok(()) => pause = Duration::from_millis(100),
            Err(e) => {
                METRICS.fleet_resyncs.with_label_values(&["error"]).inc();
                fleet.set_etcd_up(false);
                tracing::warn!(error = %e, "fleet watch interrupted; reading the whole state again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// One full read and the watch after it; `Ok` when the watch ended by itself.
async fn session(fleet: &Arc<Fleet>, ledger: &Arc<Ledger>) -> Result<(), FleetError> {
    fleet.login().await?;
    let rev = read_all(fleet, ledger).await?;
    let mut client = fleet.client.clone();
    let mut stream = fleet
        .timed(
            client.watch(
                fleet.keys.all(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(rev + 1),
                ),
            ),
        )
        .await?;
    let mut tick = tokio::time::interval(fleet.reconcile);
    tick.reset();
    loop {
        tokio::select! {
            msg = stream.message() => {
                let Some(resp) = msg.map_err(|e| FleetError::Etcd(e.to_string()))? else {
                    METRICS.fleet_resyncs.with_label_values(&["ended"]).inc();
                    return Ok(());
                };
                if resp.canceled() {
                    METRICS.fleet_resyncs.with_label_values(&["cancelled"]).inc();
                    tracing::warn!(compact_revision = resp.compact_revision(), reason = resp.cancel_reason(), "fleet watch cancelled; reading the whole state again");
                    return Ok(());
                }
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    let put = ev.event_type() == EventType::Put;
                    if key == fleet.keys.head() && put {
                        let head: Head = decode(&key, kv.value())?;
                        apply(fleet, ledger, head).await;
                    } else if let Some(node) = key.strip_prefix(&fleet.keys.nodes()) {
                        let node = node.to_string();
                        let report = if put { Some(decode::<NodeReport>(&key, kv.value())?) } else { None };
                        fleet.view.send_modify(|v| {
                            match report {
                                Some(r) => { v.nodes.insert(node, r); }
                                None => { v.nodes.remove(&node); }
                            }
                        });
                        super::nodes::update_metrics(fleet);
                    } else if key == fleet.keys.hold() {
                        let hold = if put { Some(decode::<FleetHold>(&key, kv.value())?) } else { None };
                        super::hold::apply(fleet, kv.mod_revision() as u64, hold);
                    }
                }
            }
            _ = tick.tick() => {
                read_all(fleet, ledger).await?;
            }
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, b: &[u8]) -> Result<T, FleetError> {
    serde_json::from_slice(b).map_err(|error| FleetError::Decode {
        key: key.to_string(),
        error,
    })
}

/// Reads head, nodes and hold at one revision and applies them; returns that revision.
async fn read_all(fleet: &Arc<Fleet>, ledger: &Arc<Ledger>) -> Result<i64, FleetError> {
    let mut client = fleet.client.clone();
    let txn = Txn::new().and_then([
        TxnOp::get(fleet.keys.head(), None),
        TxnOp::get(fleet.keys.nodes(), Some(GetOptions::new().with_prefix())),
        TxnOp::get(fleet.keys.hold(), None),
    ]);
    let r = fleet.timed(client.txn(txn)).await?;
    fleet.set_etcd_up(true);
    let rev = r.header().map(|h| h.revision()).unwrap_or(0);
    let mut gets = r.op_responses().into_iter().filter_map(|op| match op {
        TxnOpResponse::Get(g) => Some(g),
        _ => None,
    });
    let (Some(head), Some(nodes), Some(hold)) = (gets.next(), gets.next(), gets.next()) else {
        return Err(FleetError::Etcd("short transaction answer".into()));
    };
    let mut reports = std::collections::BTreeMap::new();
    for kv in nodes.kvs() {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let r: NodeReport = decode(&key, kv.value())?;
        reports.insert(r.node.clone(), r);
    }
    fleet.view.send_modify(|v| v.nodes = reports);
    if let Some(kv) = head.kvs().first() {
        let head: Head = decode(&fleet.keys.head(), kv.value())?;
        apply(fleet, ledger, head).await;
    }
    match hold.kvs().first() {
        Some(kv) => {
            let h: FleetHold = decode(&fleet.keys.hold(), kv.value())?;
            super::hold::apply(fleet, kv.mod_revision() as u64, Some(h));
        }
        None => super::hold::apply(fleet, 0, None),
    }
    super::nodes::update_metrics(fleet);
    Ok(rev)
}

/// Applies a head seen in etcd (off the runtime's threads: compiling may take a while, and
/// the ledger's lock may be held by a change waiting on this runtime).
async fn apply(fleet: &Arc<Fleet>, ledger: &Arc<Ledger>, head: Head) {
    let version = head.record.version;
    fleet.view.send_if_modified(|v| {
        let newer = version > v.head;
        if newer {
            v.head = version;
        }
        newer
    });
    let committed_ms = rfc3339_ms(&head.record.time);
    let l = ledger.clone();
    let r = tokio::task::spawn_blocking(move || l.apply(head.record, head.files)).await;
    if let Ok(Ok(Some(_))) = r {
        if let Some(t) = committed_ms {
            let secs = super::now_ms().saturating_sub(t) as f64 / 1000.0;
            METRICS.fleet_propagation.observe(secs);
        }
    }
    super::nodes::update_metrics(fleet);
}

fn rfc3339_ms(t: &str) -> Option<u64> {
    let t = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}
