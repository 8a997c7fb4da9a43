//! The fleet-wide hold: one `hold` key that every node applies to its own [`HOLDS`]. A hold is
//! in force only once every live node confirmed it (its confirmation carries the key's
//! revision), so `POST /v1/hold` in fleet mode answers only then; a release is a write of the
//! same key, which every node applies.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{now_ms, Fleet, FleetError};
use crate::proxy::hold::{OnExpiry, HOLDS};

/// The value of the `hold` key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetHold {
    /// False: released.
    pub active: bool,
    /// Held route ids.
    #[serde(default)]
    pub routes: BTreeSet<String>,
    /// The deadline, ms since the epoch (the nodes' clocks are assumed to agree to well
    /// under the hold's length).
    #[serde(default)]
    pub until_ms: u64,
    /// What the hold does at its deadline (as `POST /v1/hold` says).
    #[serde(default)]
    pub on_expiry: OnExpiry,
    /// Requests queued at once on each node, beyond which 503.
    #[serde(default)]
    pub max_queued: u64,
    /// Request bytes queued at once on each node, beyond which 503.
    #[serde(default)]
    pub max_queued_bytes: u64,
    /// Who asked.
    pub actor: String,
}

/// Applies the hold key at revision `rev` (None or inactive: release), once per revision.
pub fn apply(fleet: &Fleet, rev: u64, hold: Option<FleetHold>) {
    if rev != 0 && rev <= *fleet.hold_applied.borrow() {
        return;
    }
    match hold {
        Some(h) if h.active => {
            let left = h.until_ms.saturating_sub(now_ms());
            HOLDS.hold(
                h.routes.clone(),
                Duration::from_millis(left),
                h.on_expiry,
                h.max_queued,
                h.max_queued_bytes,
            );
            tracing::warn!(actor = %h.actor, routes = ?h.routes, remaining_ms = left, revision = rev, "fleet hold applied");
        }
        _ => {
            if HOLDS.current().is_some() {
                tracing::warn!(revision = rev, "fleet hold released");
            }
            HOLDS.release();
        }
    }
    fleet.hold_applied.send_if_modified(|r| {
        let newer = rev > *r;
        if newer {
            *r = rev;
        }
        newer
    });
}

impl Fleet {
    /// Writes `hold` (a hold or, inactive, a release) for every node and returns its etcd
    /// revision; the caller waits for the confirmations with [`Fleet::wait_hold`].
    pub async fn put_hold(&self, hold: &FleetHold) -> Result<u64, FleetError> {
        let value = serde_json::to_vec(hold).map_err(FleetError::Encode)?;
        let mut c = self.client.clone();
        let key = self.keys.hold();
        let r = self.timed(c.put(key, value, None)).await?;
        let rev = r.header().map(|h| h.revision()).unwrap_or(0) as u64;
        // This node applies it at once; the others through their watch.
        apply(self, rev, Some(hold.clone()));
        Ok(rev)
    }
}
