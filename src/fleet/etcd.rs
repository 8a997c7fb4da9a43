//! The ledger's store in etcd: a version is committed with one transaction that checks the
//! fleet's newest version (`version` key) is the one the change was built on, and writes the
//! record, the new head and the new version together. History reads are plain range reads.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};
use serde::{Deserialize, Serialize};

use super::Keys;
use crate::admin::history::{FilesState, HistoryError, Record};
use crate::admin::store::VersionStore;

/// The value of the `head` key: the newest record and the files-vs-API state committed with
/// it. A watch event on it is all a node needs to apply the version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Head {
    /// The newest version's history record (its whole document included).
    pub record: Record,
    /// The files-vs-API state committed with it.
    pub files: FilesState,
}

/// Runs `f` on `rt` and waits for it on this thread, for at most `timeout`. Works from a
/// blocking thread and from a thread of another runtime (it never enters `rt` itself).
pub fn block<T: Send + 'static>(
    rt: &tokio::runtime::Handle,
    timeout: Duration,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
) -> Result<T, super::FleetError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let r = tokio::time::timeout(timeout, f).await;
        let _ = tx.send(r);
    });
    match rx.recv() {
        Ok(Ok(Ok(v))) => Ok(v),
        Ok(Ok(Err(e))) => Err(super::FleetError::Etcd(e.to_string())),
        Ok(Err(_)) => Err(super::FleetError::Timeout(timeout)),
        Err(_) => Err(super::FleetError::Runtime(
            "the fleet runtime stopped".into(),
        )),
    }
}

fn unavailable(e: super::FleetError) -> HistoryError {
    HistoryError::Unavailable(e.to_string())
}

fn decode<T: serde::de::DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, HistoryError> {
    serde_json::from_slice(bytes).map_err(|error| HistoryError::Decode {
        key: String::from_utf8_lossy(key).into_owned(),
        error,
    })
}

/// Versions, history and the files-vs-API state of one fleet, in etcd.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    keys: Keys,
    rt: tokio::runtime::Handle,
    timeout: Duration,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("keys", &self.keys)
            .finish()
    }
}

impl EtcdStore {
    /// A store over `client`, with calls run on `rt` and bounded by `timeout`.
    pub fn new(
        client: Client,
        keys: Keys,
        rt: tokio::runtime::Handle,
        timeout: Duration,
    ) -> EtcdStore {
        EtcdStore {
            client,
            keys,
            rt,
            timeout,
        }
    }

    fn get_one(&self, key: String) -> Result<Option<Vec<u8>>, HistoryError> {
        let mut c = self.client.clone();
        let r = block(
            &self.rt,
            self.timeout,
            async move { c.get(key, None).await },
        )
        .map_err(unavailable)?;
        Ok(r.kvs().first().map(|kv| kv.value().to_vec()))
    }
}

impl VersionStore for EtcdStore {
    fn commit(&self, rec: &Record, files: &FilesState) -> Result<(), HistoryError> {
        let prev = rec.version.saturating_sub(1);
        let head = Head {
            record: rec.clone(),
            files: files.clone(),
        };
        let head_json = serde_json::to_vec(&head).map_err(HistoryError::Encode)?;
        let rec_json = serde_json::to_vec(rec).map_err(HistoryError::Encode)?;
        let vkey = self.keys.version();
        // Version 1 only into an empty fleet; version N only on top of N-1.
        let when = if prev == 0 {
            Compare::create_revision(vkey.clone(), CompareOp::Equal, 0)
        } else {
            Compare::value(vkey.clone(), CompareOp::Equal, prev.to_string())
        };
        let txn = Txn::new()
            .when([when])
            .and_then([
                TxnOp::put(self.keys.record(rec.version), rec_json, None),
                TxnOp::put(self.keys.head(), head_json, None),
                TxnOp::put(vkey.clone(), rec.version.to_string(), None),
            ])
            .or_else([TxnOp::get(vkey, None)]);
        let mut c = self.client.clone();
        let r =
            block(&self.rt, self.timeout, async move { c.txn(txn).await }).map_err(unavailable)?;
        if r.succeeded() {
            return Ok(());
        }
        let head = r
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
                _ => None,
            })
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Err(HistoryError::Moved { head })
    }

    fn get(&self, v: u64) -> Result<Option<Record>, HistoryError> {
        let key = self.keys.record(v);
        match self.get_one(key.clone())? {
            Some(b) => Ok(Some(decode(key.as_bytes(), &b)?)),
            None => Ok(None),
        }
    }

    fn list(&self, limit: usize, before: Option<u64>) -> Result<Vec<Record>, HistoryError> {
        let start = self.keys.records();
        let opts = match before {
            Some(b) => GetOptions::new().with_range(self.keys.record(b)),
            None => GetOptions::new().with_prefix(),
        }
        .with_sort(SortTarget::Key, SortOrder::Descend)
        .with_limit(limit as i64);
        let mut c = self.client.clone();
        let r = block(&self.rt, self.timeout, async move {
            c.get(start, Some(opts)).await
        })
        .map_err(unavailable)?;
        r.kvs()
            .iter()
            .map(|kv| decode(kv.key(), kv.value()))
            .collect()
    }

    fn head(&self) -> Result<Option<(Record, FilesState)>, HistoryError> {
        let key = self.keys.head();
        match self.get_one(key.clone())? {
            Some(b) => {
                let h: Head = decode(key.as_bytes(), &b)?;
                Ok(Some((h.record, h.files)))
            }
            None => Ok(None),
        }
    }

    fn len(&self) -> Result<u64, HistoryError> {
        let key = self.keys.records();
        let mut c = self.client.clone();
        let r = block(&self.rt, self.timeout, async move {
            c.get(key, Some(GetOptions::new().with_prefix().with_count_only()))
                .await
        })
        .map_err(unavailable)?;
        Ok(r.count() as u64)
    }

    fn shared(&self) -> bool {
        true
    }
}
