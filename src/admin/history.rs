//! The version history: every published table with when, who, why, from where and what
//! changed, kept in redb (`--state DIR/history.redb`, or in memory without `--state`).
//!
//! Two tables: `versions` (version -> JSON [`Record`], holding the whole source document) and
//! `meta` (the [`FilesState`] of the files-vs-API rule). A record and the meta it implies are
//! written in one transaction with `Durability::Immediate`: when [`History::commit`] returns,
//! the version survives `kill -9` and power loss; before it returns, nothing of it is visible.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use super::summary::Summary;
use crate::config::{Origins, TableDoc, TableFile};

const VERSIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("versions");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const FILES_KEY: &str = "files";

/// File name of the database inside `--state DIR`.
pub const DB_FILE: &str = "history.redb";

/// A history failure. Any of these during a change means the change was not published.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    // Causes are part of the message (not `source`), so that a printed chain says each once.
    #[error("creating state directory {path}: {error}")]
    Dir { path: String, error: std::io::Error },
    #[error("history database {path}: {error}")]
    Open {
        path: String,
        error: Box<redb::Error>,
    },
    #[error("history database: {0}")]
    Db(Box<redb::Error>),
    #[error("history record {key}: {error}")]
    Decode {
        key: String,
        error: serde_json::Error,
    },
    #[error("encoding history record: {0}")]
    Encode(serde_json::Error),
    /// A shared store (etcd) already holds a newer version than the one being committed:
    /// another node changed the table first. The ledger catches up and retries.
    #[error("the shared table moved on to version {head} (another node changed it first)")]
    Moved { head: u64 },
    /// The shared store cannot be reached; nothing was changed.
    #[error("the fleet's store (etcd) is unreachable: {0}")]
    Unavailable(String),
    /// The shared store answered with an error.
    #[error("the fleet's store (etcd): {0}")]
    Backend(String),
}

fn db_err(e: impl Into<redb::Error>) -> HistoryError {
    HistoryError::Db(Box::new(e.into()))
}

/// What kind of change made a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Route files read at start.
    Load,
    /// Route files re-read (change or SIGHUP).
    Reload,
    /// Route files taken as they are, overriding API changes (`switchyard adopt`).
    Adopt,
    /// A whole table sent with `PUT /v1/table`.
    Put,
    /// `PATCH /v1/routes/{id}`.
    Patch,
    /// `POST /v1/routes/{id}/rollback`.
    Rollback,
    /// `POST /v1/revert`.
    Revert,
}

impl Action {
    /// The lowercase name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Load => "load",
            Action::Reload => "reload",
            Action::Adopt => "adopt",
            Action::Put => "put",
            Action::Patch => "patch",
            Action::Rollback => "rollback",
            Action::Revert => "revert",
        }
    }
}

/// [`Origins`] as stored: which source each entry came from, and where relative paths resolve.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredOrigins {
    /// Source of `[proxy]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
    /// Source of each upstream, by name.
    #[serde(default)]
    pub upstreams: BTreeMap<String, String>,
    /// Source of each route, parallel to the table's routes.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Directory each source's relative paths (`ca_file`) resolve against.
    #[serde(default)]
    pub base_dirs: BTreeMap<String, PathBuf>,
}

/// A [`TableDoc`] as stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredDoc {
    /// The merged table.
    pub table: TableFile,
    /// Where each entry came from.
    #[serde(default)]
    pub origins: StoredOrigins,
}

impl From<&TableDoc> for StoredDoc {
    fn from(d: &TableDoc) -> StoredDoc {
        StoredDoc {
            table: d.table.clone(),
            origins: StoredOrigins {
                proxy: d.origins.proxy.clone(),
                upstreams: d.origins.upstreams.clone(),
                routes: d.origins.routes.clone(),
                base_dirs: d.origins.base_dirs.clone(),
            },
        }
    }
}

impl StoredDoc {
    /// The document to compile.
    pub fn to_doc(&self) -> TableDoc {
        TableDoc {
            table: self.table.clone(),
            origins: Origins {
                proxy: self.origins.proxy.clone(),
                upstreams: self.origins.upstreams.clone(),
                routes: self.origins.routes.clone(),
                base_dirs: self.origins.base_dirs.clone(),
            },
        }
    }
}

/// One version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The table version this record made live.
    pub version: u64,
    /// RFC 3339, UTC.
    pub time: String,
    /// The token's actor name, or `files` for file loads.
    pub actor: String,
    /// Why, as the caller said (required for rollback and revert).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `files` or `api`.
    pub source: String,
    /// What kind of change.
    pub action: Action,
    /// The route file path, for file loads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<String>,
    /// For a revert, the version whose table was restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverted_to: Option<u64>,
    /// What changed from the previous version.
    pub changes: Summary,
    /// The whole source document of this version.
    pub doc: StoredDoc,
}

/// State of the files-vs-API rule, committed with every version.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FilesState {
    /// Version made by the last accepted file load; 0 = never.
    #[serde(default)]
    pub loaded_version: u64,
    /// The files' document as last accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc: Option<StoredDoc>,
    /// Subjects (`route:ID`, `upstream:NAME`, `proxy`, `order`) changed through the API since
    /// that load.
    #[serde(default)]
    pub api_changed: BTreeSet<String>,
}

/// The history database.
pub struct History {
    db: Database,
    /// `None` = in memory.
    path: Option<PathBuf>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History").field("path", &self.path).finish()
    }
}

impl History {
    /// Opens (creating if needed) `dir/history.redb`. Fails if another process has it open.
    pub fn open(dir: &Path) -> Result<History, HistoryError> {
        std::fs::create_dir_all(dir).map_err(|error| HistoryError::Dir {
            path: dir.display().to_string(),
            error,
        })?;
        let path = dir.join(DB_FILE);
        let db = Database::create(&path).map_err(|e| HistoryError::Open {
            path: path.display().to_string(),
            error: Box::new(e.into()),
        })?;
        let h = History {
            db,
            path: Some(path),
        };
        h.init()?;
        Ok(h)
    }

    /// A history kept in memory only (no `--state`): the API works the same, nothing survives
    /// a restart.
    pub fn in_memory() -> Result<History, HistoryError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(db_err)?;
        let h = History { db, path: None };
        h.init()?;
        Ok(h)
    }

    fn init(&self) -> Result<(), HistoryError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        tx.open_table(VERSIONS).map_err(db_err)?;
        tx.open_table(META).map_err(db_err)?;
        tx.commit().map_err(db_err)
    }

    /// The database file, when on disk.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Writes `rec` and `files` in one durable transaction. Called under the ledger's publish
    /// lock, so `rec.version` is always the next one.
    pub fn commit(&self, rec: &Record, files: &FilesState) -> Result<(), HistoryError> {
        let rec_json = serde_json::to_vec(rec).map_err(HistoryError::Encode)?;
        let files_json = serde_json::to_vec(files).map_err(HistoryError::Encode)?;
        let mut tx = self.db.begin_write().map_err(db_err)?;
        tx.set_durability(redb::Durability::Immediate);
        {
            let mut v = tx.open_table(VERSIONS).map_err(db_err)?;
            v.insert(rec.version, rec_json.as_slice()).map_err(db_err)?;
            let mut m = tx.open_table(META).map_err(db_err)?;
            m.insert(FILES_KEY, files_json.as_slice()).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    fn decode(key: String, bytes: &[u8]) -> Result<Record, HistoryError> {
        serde_json::from_slice(bytes).map_err(|error| HistoryError::Decode { key, error })
    }

    /// Version `v`, if recorded.
    pub fn get(&self, v: u64) -> Result<Option<Record>, HistoryError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(VERSIONS).map_err(db_err)?;
        match t.get(v).map_err(db_err)? {
            Some(bytes) => Ok(Some(Self::decode(format!("version {v}"), bytes.value())?)),
            None => Ok(None),
        }
    }

    /// The newest version, if any.
    pub fn last(&self) -> Result<Option<Record>, HistoryError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(VERSIONS).map_err(db_err)?;
        let last = t.last().map_err(db_err)?;
        let r = match last {
            Some((k, bytes)) => Some(Self::decode(
                format!("version {}", k.value()),
                bytes.value(),
            )?),
            None => None,
        };
        Ok(r)
    }

    /// Up to `limit` versions, newest first, all older than `before` when given.
    pub fn list(&self, limit: usize, before: Option<u64>) -> Result<Vec<Record>, HistoryError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(VERSIONS).map_err(db_err)?;
        let range = t.range(..before.unwrap_or(u64::MAX)).map_err(db_err)?;
        let mut out = Vec::new();
        for item in range.rev().take(limit) {
            let (k, bytes) = item.map_err(db_err)?;
            out.push(Self::decode(
                format!("version {}", k.value()),
                bytes.value(),
            )?);
        }
        Ok(out)
    }

    /// How many versions are recorded.
    pub fn len(&self) -> Result<u64, HistoryError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(VERSIONS).map_err(db_err)?;
        t.len().map_err(db_err)
    }

    /// True when no version is recorded.
    pub fn is_empty(&self) -> Result<bool, HistoryError> {
        Ok(self.len()? == 0)
    }

    /// The files-vs-API state as last committed (default when none).
    pub fn files_state(&self) -> Result<FilesState, HistoryError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(META).map_err(db_err)?;
        match t.get(FILES_KEY).map_err(db_err)? {
            Some(bytes) => {
                serde_json::from_slice(bytes.value()).map_err(|error| HistoryError::Decode {
                    key: FILES_KEY.into(),
                    error,
                })
            }
            None => Ok(FilesState::default()),
        }
    }
}

/// Now, as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let now = now
        .replace_nanosecond(now.nanosecond() / 1_000_000 * 1_000_000)
        .unwrap_or(now);
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(v: u64) -> Record {
        Record {
            version: v,
            time: now_rfc3339(),
            actor: "alice".into(),
            reason: Some(format!("r{v}")),
            source: "api".into(),
            action: Action::Patch,
            files: None,
            reverted_to: None,
            changes: Summary::default(),
            doc: StoredDoc::default(),
        }
    }

    #[test]
    fn commits_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let h = History::open(dir.path()).unwrap();
            assert!(h.last().unwrap().is_none());
            for v in 1..=5 {
                let files = FilesState {
                    loaded_version: 1,
                    doc: None,
                    api_changed: [format!("route:r{v}")].into(),
                };
                h.commit(&rec(v), &files).unwrap();
            }
            // A second open of the same file is refused while the first is alive.
            assert!(History::open(dir.path()).is_err());
        }
        let h = History::open(dir.path()).unwrap();
        assert_eq!(h.len().unwrap(), 5);
        assert_eq!(h.last().unwrap().unwrap(), rec(5).with_time(&h));
        let l = h.list(2, None).unwrap();
        assert_eq!(l.iter().map(|r| r.version).collect::<Vec<_>>(), [5, 4]);
        let l = h.list(10, Some(3)).unwrap();
        assert_eq!(l.iter().map(|r| r.version).collect::<Vec<_>>(), [2, 1]);
        assert_eq!(h.get(3).unwrap().unwrap().reason.as_deref(), Some("r3"));
        assert!(h.get(9).unwrap().is_none());
        assert_eq!(
            h.files_state().unwrap().api_changed,
            ["route:r5".to_string()].into()
        );
    }

    impl Record {
        /// The same record with the stored time (times differ between calls).
        fn with_time(mut self, h: &History) -> Record {
            self.time = h.get(self.version).unwrap().unwrap().time;
            self
        }
    }

    #[test]
    fn in_memory_works() {
        let h = History::in_memory().unwrap();
        h.commit(&rec(1), &FilesState::default()).unwrap();
        assert_eq!(h.last().unwrap().unwrap().version, 1);
        assert!(h.path().is_none());
    }
}
