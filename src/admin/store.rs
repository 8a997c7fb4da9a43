//! The store behind the ledger: where versions, their history and the files-vs-API state
//! live. [`History`] (redb, one proxy) and the fleet's etcd store ([`crate::fleet::etcd`])
//! implement it, so `If-Match`, the files-vs-API rule and the history mean one thing in both.

use std::path::Path;

use super::history::{FilesState, History, HistoryError, Record};

/// A version store. Every method may block (disk, network): the ledger calls it from a
/// blocking thread.
pub trait VersionStore: Send + Sync + std::fmt::Debug {
    /// Writes `rec` and the files-vs-API state it implies as one atomic step, only if the
    /// store's newest version is `rec.version - 1` (none for version 1); otherwise
    /// [`HistoryError::Moved`] and nothing is written. When it returns `Ok`, the version is
    /// durable.
    fn commit(&self, rec: &Record, files: &FilesState) -> Result<(), HistoryError>;
    /// Version `v`, if recorded.
    fn get(&self, v: u64) -> Result<Option<Record>, HistoryError>;
    /// Up to `limit` versions, newest first, all older than `before` when given.
    fn list(&self, limit: usize, before: Option<u64>) -> Result<Vec<Record>, HistoryError>;
    /// The newest version with the files-vs-API state committed with it; `None` when empty.
    fn head(&self) -> Result<Option<(Record, FilesState)>, HistoryError>;
    /// How many versions are recorded.
    fn len(&self) -> Result<u64, HistoryError>;
    /// True when no version is recorded.
    fn is_empty(&self) -> Result<bool, HistoryError> {
        Ok(self.len()? == 0)
    }
    /// True when several proxies share the store (etcd): the live table may be behind the
    /// store, and a change that finds it so catches up and retries. False for redb.
    fn shared(&self) -> bool {
        false
    }
    /// The database file, when the store is a local file.
    fn path(&self) -> Option<&Path> {
        None
    }
}

impl VersionStore for History {
    fn commit(&self, rec: &Record, files: &FilesState) -> Result<(), HistoryError> {
        // One writer (the ledger's lock): the newest version is always `rec.version - 1`.
        History::commit(self, rec, files)
    }

    fn get(&self, v: u64) -> Result<Option<Record>, HistoryError> {
        History::get(self, v)
    }

    fn list(&self, limit: usize, before: Option<u64>) -> Result<Vec<Record>, HistoryError> {
        History::list(self, limit, before)
    }

    fn head(&self) -> Result<Option<(Record, FilesState)>, HistoryError> {
        match self.last()? {
            Some(r) => Ok(Some((r, self.files_state()?))),
            None => Ok(None),
        }
    }

    fn len(&self) -> Result<u64, HistoryError> {
        History::len(self)
    }

    fn path(&self) -> Option<&Path> {
        History::path(self)
    }
}
