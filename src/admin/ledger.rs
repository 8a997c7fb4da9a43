//! Every change to the live table goes through [`Ledger::commit`]: take the live document,
//! modify it, compile it (the same validation as route files), and publish it together with its
//! history record, in one step under the store's publish lock. If the history write fails,
//! nothing is published; once published, the record is durable.
//!
//! File loads go through it too, under the files-vs-API rule: a file reload that would change
//! a route (or upstream, `[proxy]`, route order) changed through the API since the files were
//! last loaded is refused and reported, until the operator adopts the files
//! (`switchyard adopt`), makes the files agree with the live table, or reverts the API change.
//! Re-reading files that did not change since their last load never undoes an API change.
//! `serve --force-files` lets files always win.
//!
//! The versions live in a [`VersionStore`]: redb for one proxy, etcd for a fleet. With a shared
//! store a change may find that another proxy committed first ([`HistoryError::Moved`]): the
//! ledger then applies the store's newest version and runs the change again, so `If-Match` is
//! exact across the fleet. Versions committed elsewhere arrive through [`Ledger::apply`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;

use super::history::{now_rfc3339, Action, FilesState, HistoryError, Record, StoredDoc};
use super::store::VersionStore;
use super::summary;
use crate::config::{OneOrMany, RouteFile, TableDoc, TableFile};
use crate::metrics::METRICS;
use crate::routing::compile::{compile, Diagnostic};
use crate::routing::{RouteTable, TableStore};

/// Source label of entries that came through the API (`TableDoc` origins, history `source`).
pub const API_SOURCE: &str = "api";
/// Source label of versions made from route files.
pub const FILES_SOURCE: &str = "files";
/// Actor of file loads (the watcher, SIGHUP, start).
pub const FILES_ACTOR: &str = "files";

/// Why a change was not made. The running table is untouched in every case.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("the table is at version {live}, not {expected} (If-Match)")]
    Stale { expected: u64, live: u64 },
    #[error("unknown route {0:?}")]
    UnknownRoute(String),
    #[error("version {0} is not in the history")]
    UnknownVersion(u64),
    #[error("the table does not compile ({} error(s))", errors(.0))]
    Invalid(Vec<Diagnostic>),
    #[error("route {route:?} has no fallback to roll back to (it sends everything to {now})")]
    NoFallback { route: String, now: String },
    #[error("the route files would change {} which the API changed since the files were last loaded; run `switchyard adopt` to let the files win, make the files agree with the live table, or revert the API change", .0.join(", "))]
    Conflict(Vec<String>),
    #[error("the route files did not change since their last load")]
    FilesUnchanged,
    #[error("{0}")]
    BadRequest(String),
    #[error("history: {0}; nothing was changed")]
    History(HistoryError),
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl From<HistoryError> for ChangeError {
    fn from(e: HistoryError) -> ChangeError {
        ChangeError::History(e)
    }
}

fn errors(d: &[Diagnostic]) -> usize {
    d.iter()
        .filter(|d| d.severity == crate::routing::Severity::Error)
        .count()
}

/// Who makes a change, and why.
#[derive(Debug, Clone)]
pub struct Change {
    /// Recorded as the version's actor.
    pub actor: String,
    /// Recorded as the version's reason (blank = none).
    pub reason: Option<String>,
    /// Recorded as the version's action; file loads (`Load`, `Reload`, `Adopt`) reset the
    /// files-vs-API state, other actions add to it.
    pub action: Action,
    /// The version the caller saw (`If-Match`); the change is refused if the live one differs.
    pub if_match: Option<u64>,
    /// For a revert, the version restored (recorded in the history).
    pub reverted_to: Option<u64>,
}

impl Change {
    /// A change by `actor` for `reason`.
    pub fn new(actor: &str, reason: Option<String>, action: Action) -> Change {
        Change {
            actor: actor.to_string(),
            reason: reason.filter(|r| !r.trim().is_empty()),
            action,
            if_match: None,
            reverted_to: None,
        }
    }

    /// With an `If-Match` version.
    pub fn if_match(mut self, v: Option<u64>) -> Change {
        self.if_match = v;
        self
    }
}

/// A published change.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The table now live.
    pub table: Arc<RouteTable>,
    /// Its history record, as written.
    pub record: Record,
    /// Compile warnings (errors would have stopped the change).
    pub warnings: Vec<Diagnostic>,
}

impl Committed {
    /// The API's answer: version, what changed, warnings (no document).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.result()).unwrap_or(serde_json::Value::Null)
    }

    /// The API's answer for this change.
    pub fn result(&self) -> super::types::ChangeResult {
        super::types::ChangeResult {
            version: self.record.version,
            action: serde_json::to_value(self.record.action)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            actor: self.record.actor.clone(),
            reason: self.record.reason.clone(),
            time: self.record.time.clone(),
            changes: self.record.changes.clone(),
            warnings: self
                .warnings
                .iter()
                .filter_map(|w| serde_json::to_value(w).ok())
                .collect(),
        }
    }
}

/// The last file reload refused by the files-vs-API rule; cleared by the next accepted load.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Conflict {
    /// Subjects the files would change (`route:ID`, ...).
    pub subjects: Vec<String>,
    /// When the reload was refused (RFC 3339 UTC).
    pub time: String,
}

/// A file load's result.
#[derive(Debug)]
pub enum Loaded {
    /// Published as a new version.
    Published(Box<Committed>),
    /// The files are as last loaded and the live table differs from them only by API changes,
    /// which stay.
    Unchanged,
}

impl Loaded {
    /// The API's answer: the change, or `None` (JSON `null`) when nothing was published.
    pub fn result(&self) -> Option<super::types::ChangeResult> {
        match self {
            Loaded::Published(c) => Some(c.result()),
            Loaded::Unchanged => None,
        }
    }
}

/// How files are being loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileLoad {
    /// At start, after resuming the history: skipped when the files did not change since
    /// their last load.
    Start,
    /// A change seen in the routes directory: skipped when the route files did not change
    /// since their last load (an editor's temporary file, a log written next to them).
    Changed,
    /// SIGHUP: re-read and publish even when the files did not change (a `ca_file` may have),
    /// unless that would undo an API change.
    Signal,
}

/// Changes to a route's distribution (`PATCH /v1/routes/{id}`). Setting `to` clears `split`
/// and the other way round; `fallback: Some(None)` removes the fallback.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoutePatch {
    /// The single upstream.
    pub to: Option<String>,
    /// Percent per upstream, summing to 100.
    pub split: Option<BTreeMap<String, f64>>,
    /// The fallback(s); `Some(None)` removes them.
    pub fallback: Option<Option<OneOrMany>>,
}

/// A version this proxy could not serve (it does not compile here, e.g. a missing `ca_file`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Rejected {
    /// The version refused.
    pub version: u64,
    /// Why, one line (the compile errors joined).
    pub error: String,
}

/// What this proxy serves now; sent on [`Ledger::applied`] after every change, applied
/// version or refusal.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// The version served.
    pub version: u64,
    /// Its history record and the files-vs-API state committed with it (None before the first
    /// version).
    pub head: Option<Arc<(Record, FilesState)>>,
    /// The newest version refused since the last one applied.
    pub rejected: Option<Rejected>,
}

/// How many times a change runs again after finding the shared store ahead of it.
const CATCH_UP_TRIES: usize = 5;

/// The live table, the history, and the files-vs-API state.
pub struct Ledger {
    store: Arc<TableStore>,
    history: Box<dyn VersionStore>,
    files: Mutex<FilesState>,
    routes_path: PathBuf,
    force_files: bool,
    conflict: Mutex<Option<Conflict>>,
    /// Fleet mode: relative paths (`ca_file`) resolve against this proxy's routes directory,
    /// whichever proxy made the change.
    local_paths: bool,
    applied: tokio::sync::watch::Sender<Applied>,
    /// Fleet mode: this proxy's route files as last read here (at start or on a change), so
    /// that a change seen in its routes directory that leaves them as they were (an editor's
    /// temporary file) makes no fleet version, whatever files the fleet last loaded.
    local_files: Mutex<Option<StoredDoc>>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("version", &self.store.version())
            .field("history", &self.history)
            .field("routes_path", &self.routes_path)
            .finish()
    }
}

/// The directory `api` entries resolve relative paths (`ca_file`) against: the routes
/// directory, or the route file's directory.
pub fn routes_base_dir(routes_path: &Path) -> PathBuf {
    if routes_path.is_dir() {
        routes_path.to_path_buf()
    } else {
        routes_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }
}

/// `doc` with route `id` edited by `edit`; the route's origin becomes `api`.
pub fn edit_route(
    doc: &TableDoc,
    id: &str,
    base_dir: &Path,
    edit: impl FnOnce(&mut RouteFile) -> Result<(), ChangeError>,
) -> Result<TableDoc, ChangeError> {
    let mut doc = doc.clone();
    let i = doc
        .table
        .routes
        .iter()
        .position(|r| r.id == id)
        .ok_or_else(|| ChangeError::UnknownRoute(id.to_string()))?;
    edit(&mut doc.table.routes[i])?;
    if let Some(o) = doc.origins.routes.get_mut(i) {
        *o = API_SOURCE.to_string();
    }
    doc.origins
        .base_dirs
        .insert(API_SOURCE.to_string(), base_dir.to_path_buf());
    Ok(doc)
}

/// Rollback: the route sends everything to its first fallback; the remaining fallbacks (if
/// any) stay as its fallbacks. The upstream it moved away from gets no more traffic.
pub fn rollback_route(r: &mut RouteFile) -> Result<(), ChangeError> {
    let names: Vec<String> = r
        .fallback
        .as_ref()
        .map(|f| f.names().to_vec())
        .unwrap_or_default();
    let Some((first, rest)) = names.split_first() else {
        return Err(ChangeError::NoFallback {
            route: r.id.clone(),
            now: summary::describe_route(r),
        });
    };
    r.to = Some(first.clone());
    r.split = None;
    r.fallback = match rest {
        [] => None,
        [one] => Some(OneOrMany::One(one.clone())),
        many => Some(OneOrMany::Many(many.to_vec())),
    };
    Ok(())
}

/// Applies `p` to `r`.
pub fn patch_route(r: &mut RouteFile, p: &RoutePatch) -> Result<(), ChangeError> {
    if p.to.is_none() && p.split.is_none() && p.fallback.is_none() {
        return Err(ChangeError::BadRequest(
            "nothing to change: give `to`, `split` or `fallback`".into(),
        ));
    }
    match (&p.to, &p.split) {
        (Some(_), Some(_)) => {
            return Err(ChangeError::BadRequest(
                "give either `to` or `split`, not both".into(),
            ))
        }
        (Some(t), None) => {
            r.to = Some(t.clone());
            r.split = None;
        }
        (None, Some(s)) => {
            r.split = Some(s.clone());
            r.to = None;
        }
        (None, None) => {}
    }
    if let Some(f) = &p.fallback {
        r.fallback = f.clone();
    }
    Ok(())
}

impl Ledger {
    fn new(
        history: Box<dyn VersionStore>,
        routes_path: PathBuf,
        force_files: bool,
        initial: RouteTable,
        files: FilesState,
        local_paths: bool,
    ) -> Ledger {
        METRICS.table_version.set(initial.version as i64);
        Ledger {
            applied: tokio::sync::watch::channel(Applied {
                version: initial.version,
                ..Applied::default()
            })
            .0,
            store: Arc::new(TableStore::new(initial)),
            history,
            files: Mutex::new(files),
            routes_path,
            force_files,
            conflict: Mutex::new(None),
            local_paths,
            local_files: Mutex::new(None),
        }
    }

    /// Opens the ledger: resumes the newest version in `history` (compiling its stored
    /// document, keeping its version number), then loads the route files under the
    /// files-vs-API rule. Without a history the files must compile; with one, a broken or
    /// conflicting file set is reported and the resumed table keeps serving.
    pub fn start(
        history: impl VersionStore + 'static,
        routes_path: PathBuf,
        force_files: bool,
    ) -> Result<Ledger, ChangeError> {
        let head = history.head()?;
        let files = head.as_ref().map(|h| h.1.clone()).unwrap_or_default();
        let last = head.map(|h| h.0);
        let mut initial = RouteTable::empty();
        let mut resumed = false;
        if let Some(rec) = &last {
            match compile(&rec.doc.to_doc()) {
                Ok(c) => {
                    initial = c.table;
                    resumed = true;
                    tracing::info!(version = rec.version, actor = %rec.actor, action = rec.action.as_str(), "resumed the last version from the history");
                }
                Err(diags) => {
                    for d in &diags {
                        tracing::error!(version = rec.version, "{d}");
                    }
                    tracing::error!(
                        version = rec.version,
                        "the last version in the history no longer compiles; loading the route files"
                    );
                }
            }
            initial.version = rec.version;
        }
        let ledger = Ledger::new(
            Box::new(history),
            routes_path,
            force_files,
            initial,
            files,
            false,
        );
        if resumed {
            match ledger.load_files(FileLoad::Start) {
                Ok(_) | Err(ChangeError::Conflict(_)) | Err(ChangeError::Invalid(_)) => {}
                Err(e) => return Err(e),
            }
        } else {
            // Nothing servable yet: the files must compile, and they win.
            ledger.load_files_forced(FILES_ACTOR, None, Action::Load)?;
        }
        Ok(ledger)
    }

    /// Opens the ledger of a fleet proxy on a shared store: serves the store's newest version;
    /// an empty store is seeded with the route files as version 1 (unless another proxy seeds
    /// it first). Route files are not loaded at start otherwise: the fleet's table wins, and a
    /// later change of the files is a change like any other. When the store cannot be reached
    /// (or its newest version does not compile here), `last_known` (this proxy's copy on disk)
    /// is served; without it, the start fails.
    pub fn start_shared(
        history: Box<dyn VersionStore>,
        routes_path: PathBuf,
        force_files: bool,
        last_known: Option<(Record, FilesState)>,
    ) -> Result<Ledger, ChangeError> {
        let ledger = Ledger::new(
            history,
            routes_path,
            force_files,
            RouteTable::empty(),
            FilesState::default(),
            true,
        );
        *ledger.local_files.lock() = ledger.read_files().ok().map(|d| StoredDoc::from(&d));
        let head = ledger.history.head();
        let served = match head {
            Ok(Some((rec, files))) => {
                let v = rec.version;
                match ledger.apply(rec, files) {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::error!(version = v, error = %e, "the fleet's version does not compile on this node");
                        false
                    }
                }
            }
            Ok(None) => {
                // If-Match 0: when another node seeds first, this one catches up instead.
                let doc = ledger.read_files()?;
                let change = Change::new(FILES_ACTOR, None, Action::Load).if_match(Some(0));
                match ledger.commit(change, move |_, _| Ok(doc.clone())) {
                    Ok(c) => {
                        tracing::info!(
                            version = c.table.version,
                            "seeded the fleet with the route files"
                        );
                        true
                    }
                    Err(ChangeError::Stale { .. }) => ledger.store.version() > 0,
                    // Seeded elsewhere with a table that does not compile here.
                    Err(ChangeError::History(HistoryError::Moved { .. })) => false,
                    Err(ChangeError::History(HistoryError::Unavailable(e))) => {
                        tracing::error!(error = %e, "cannot seed the fleet; starting from the last known table");
                        false
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read the fleet's table; starting from the last known table");
                false
            }
        };
        if !served {
            let Some((rec, files)) = last_known else {
                return Err(ChangeError::BadRequest(
                    "the fleet's table cannot be served (etcd unreachable or the version does not compile here) and there is no last known table in the --state directory".into(),
                ));
            };
            tracing::warn!(
                version = rec.version,
                "serving the last known table from disk"
            );
            ledger.apply_local(rec, files)?;
        }
        Ok(ledger)
    }

    /// Makes a version committed in the shared store (by any proxy) live here, if newer than
    /// the live one. `Ok(None)`: already live. A version that does not compile here is refused
    /// (`Invalid`), the live table stays, and the refusal is reported on [`Ledger::applied`].
    pub fn apply(
        &self,
        rec: Record,
        files: FilesState,
    ) -> Result<Option<Arc<RouteTable>>, ChangeError> {
        let mut f = self.files.lock();
        let doc = self.localize(rec.doc.to_doc());
        let mut warnings = Vec::new();
        let r = self.store.publish_newer(rec.version, |_| {
            let c = compile(&doc).map_err(ChangeError::Invalid)?;
            warnings = c.warnings;
            Ok::<_, ChangeError>(c.table)
        });
        match r {
            Ok(Some(table)) => {
                *f = files.clone();
                drop(f);
                for w in &warnings {
                    tracing::warn!(version = table.version, "{w}");
                }
                METRICS.table_version.set(table.version as i64);
                tracing::info!(version = table.version, actor = %rec.actor, action = rec.action.as_str(), changes = %rec.changes.one_line(), "applied the fleet's version");
                self.applied.send_replace(Applied {
                    version: table.version,
                    head: Some(Arc::new((rec, files))),
                    rejected: None,
                });
                Ok(Some(table))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                drop(f);
                let error = match &e {
                    ChangeError::Invalid(d) => d
                        .iter()
                        .filter(|d| d.severity == crate::routing::Severity::Error)
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join("; "),
                    e => e.to_string(),
                };
                let rejected = Rejected {
                    version: rec.version,
                    error,
                };
                self.applied.send_if_modified(|a| {
                    if a.rejected.as_ref() == Some(&rejected) {
                        return false;
                    }
                    tracing::error!(version = rejected.version, error = %rejected.error, "refused the fleet's version: it does not compile on this node; the running table stays");
                    a.rejected = Some(rejected.clone());
                    true
                });
                Err(e)
            }
        }
    }

    /// Like [`Ledger::apply`], for this proxy's own last known table at start: a table that
    /// does not compile is an error.
    fn apply_local(&self, rec: Record, files: FilesState) -> Result<(), ChangeError> {
        self.apply(rec, files).map(drop)
    }

    /// Applies the shared store's newest version (a no-op for a store of one proxy, whose
    /// newest version is live). Fails only when the store cannot be read.
    pub fn catch_up(&self) -> Result<(), ChangeError> {
        if !self.history.shared() {
            return Ok(());
        }
        if let Some((rec, files)) = self.history.head()? {
            // A refusal is reported on `applied`; the change that asked then finds the
            // store still ahead and fails with `Moved`.
            let _ = self.apply(rec, files);
        }
        Ok(())
    }

    /// The history record of version `v`: from memory when it is the version applied last
    /// (no I/O: in fleet mode this answers while etcd is unreachable), else from the store.
    pub fn record(&self, v: u64) -> Result<Option<Record>, HistoryError> {
        if let Some(h) = &self.applied.borrow().head {
            if h.0.version == v {
                return Ok(Some(h.0.clone()));
            }
        }
        self.history.get(v)
    }

    /// What this proxy serves, updated after every applied or refused version.
    pub fn applied(&self) -> tokio::sync::watch::Receiver<Applied> {
        self.applied.subscribe()
    }

    /// `doc` with relative paths resolving against this proxy's routes directory (fleet mode).
    fn localize(&self, mut doc: TableDoc) -> TableDoc {
        if self.local_paths {
            let base = self.base_dir();
            for dir in doc.origins.base_dirs.values_mut() {
                *dir = base.clone();
            }
        }
        doc
    }

    /// The live table store (the proxy reads it).
    pub fn store(&self) -> &Arc<TableStore> {
        &self.store
    }

    /// The history.
    pub fn history(&self) -> &dyn VersionStore {
        &*self.history
    }

    /// The route files path.
    pub fn routes_path(&self) -> &Path {
        &self.routes_path
    }

    /// Whether `--force-files` is on.
    pub fn force_files(&self) -> bool {
        self.force_files
    }

    /// The files-vs-API state now.
    pub fn files_state(&self) -> FilesState {
        self.files.lock().clone()
    }

    /// The last refused file reload, if no file load was accepted since.
    pub fn conflict(&self) -> Option<Conflict> {
        self.conflict.lock().clone()
    }

    /// The one way to change the live table. `build` gets the live table and the files-vs-API
    /// state and returns the next document; it is compiled, recorded and published while the
    /// store's publish lock is held, so nothing else is published in between and `If-Match`
    /// is exact. Any error publishes nothing. With a shared store, a change that finds the
    /// store ahead of the live table applies the store's version and runs again (`build`
    /// then sees that version), at most [`CATCH_UP_TRIES`] times.
    pub fn commit(
        &self,
        change: Change,
        build: impl Fn(&RouteTable, &FilesState) -> Result<TableDoc, ChangeError>,
    ) -> Result<Committed, ChangeError> {
        let mut tries = 0;
        loop {
            let before = self.store.version();
            let r = self.commit_once(&change, &build);
            let behind = match &r {
                Err(ChangeError::History(HistoryError::Moved { .. })) => true,
                Err(ChangeError::Stale { expected, live }) => {
                    self.history.shared() && expected > live
                }
                _ => false,
            };
            if !behind || tries >= CATCH_UP_TRIES {
                return r;
            }
            tries += 1;
            self.catch_up()?;
            if self.store.version() == before {
                // Nothing newer could be applied here (refused, or the store is not ahead).
                return r;
            }
        }
    }

    fn commit_once(
        &self,
        change: &Change,
        build: &impl Fn(&RouteTable, &FilesState) -> Result<TableDoc, ChangeError>,
    ) -> Result<Committed, ChangeError> {
        let mut files = self.files.lock();
        let mut out = None;
        let table = self.store.publish_if(|live, next| {
            if let Some(want) = change.if_match {
                if want != live.version {
                    return Err(ChangeError::Stale {
                        expected: want,
                        live: live.version,
                    });
                }
            }
            let doc = build(live, &files)?;
            let compiled = compile(&self.localize(doc.clone())).map_err(ChangeError::Invalid)?;
            let from_files = matches!(change.action, Action::Load | Action::Reload | Action::Adopt);
            let mut next_files = files.clone();
            if from_files {
                next_files = FilesState {
                    loaded_version: next,
                    doc: Some(StoredDoc::from(&doc)),
                    api_changed: Default::default(),
                };
            } else {
                next_files
                    .api_changed
                    .extend(summary::subjects(&live.doc.table, &doc.table));
            }
            let rec = Record {
                version: next,
                time: now_rfc3339(),
                actor: change.actor.clone(),
                reason: change.reason.clone(),
                source: if from_files { FILES_SOURCE } else { API_SOURCE }.into(),
                action: change.action,
                files: from_files.then(|| self.routes_path.display().to_string()),
                reverted_to: change.reverted_to,
                changes: summary::diff(&live.doc.table, &doc.table),
                doc: StoredDoc::from(&doc),
            };
            self.history.commit(&rec, &next_files)?;
            out = Some((rec, next_files, compiled.warnings));
            Ok(compiled.table)
        })?;
        let Some((record, next_files, warnings)) = out else {
            return Err(ChangeError::Internal("published without a history record"));
        };
        let from_files = next_files.loaded_version == record.version;
        *files = next_files;
        drop(files);
        if from_files {
            *self.conflict.lock() = None;
        }
        METRICS.table_version.set(table.version as i64);
        self.applied.send_replace(Applied {
            version: table.version,
            head: Some(Arc::new((record.clone(), self.files_state()))),
            rejected: None,
        });
        tracing::info!(
            version = table.version,
            actor = %record.actor,
            action = record.action.as_str(),
            reason = record.reason.as_deref().unwrap_or(""),
            changes = %record.changes.one_line(),
            "route table changed"
        );
        Ok(Committed {
            table,
            record,
            warnings,
        })
    }

    fn base_dir(&self) -> PathBuf {
        routes_base_dir(&self.routes_path)
    }

    /// `PUT /v1/table`: replaces the whole table.
    pub fn put_table(&self, change: Change, table: TableFile) -> Result<Committed, ChangeError> {
        let base = self.base_dir();
        self.commit(change, move |_, _| {
            Ok(TableDoc::single(
                API_SOURCE,
                table.clone(),
                Some(base.clone()),
            ))
        })
    }

    /// `PATCH /v1/routes/{id}`.
    pub fn patch(
        &self,
        change: Change,
        id: &str,
        p: &RoutePatch,
    ) -> Result<Committed, ChangeError> {
        let base = self.base_dir();
        self.commit(change, |live, _| {
            edit_route(&live.doc, id, &base, |r| patch_route(r, p))
        })
    }

    /// `POST /v1/routes/{id}/rollback`: the route sends 100% to its first fallback.
    pub fn rollback(&self, change: Change, id: &str) -> Result<Committed, ChangeError> {
        let base = self.base_dir();
        self.commit(change, |live, _| {
            edit_route(&live.doc, id, &base, rollback_route)
        })
    }

    /// `POST /v1/revert`: the table of version `to`, as a new version.
    pub fn revert(&self, mut change: Change, to: u64) -> Result<Committed, ChangeError> {
        let rec = self
            .history
            .get(to)?
            .ok_or(ChangeError::UnknownVersion(to))?;
        change.action = Action::Revert;
        change.reverted_to = Some(to);
        self.commit(change, move |_, _| Ok(rec.doc.to_doc()))
    }

    /// `POST /v1/adopt`: the route files as they are now, whatever the API changed.
    pub fn adopt(&self, actor: &str, reason: Option<String>) -> Result<Committed, ChangeError> {
        self.load_files_forced(actor, reason, Action::Adopt)
    }

    /// `switchyard fleet push`: a set of route files read elsewhere, loaded like this proxy's own
    /// files (under the files-vs-API rule, or forced).
    pub fn push_files(
        &self,
        actor: &str,
        doc: TableDoc,
        force: bool,
    ) -> Result<Loaded, ChangeError> {
        self.load_doc(Ok(doc), FileLoad::Signal, force || self.force_files, actor)
    }

    fn read_files(&self) -> Result<TableDoc, ChangeError> {
        crate::config::load_path(&self.routes_path)
            .map_err(|errs| ChangeError::Invalid(errs.into_iter().map(Diagnostic::from).collect()))
    }

    fn load_files_forced(
        &self,
        actor: &str,
        reason: Option<String>,
        action: Action,
    ) -> Result<Committed, ChangeError> {
        let r = self.read_files().and_then(|doc| {
            self.commit(Change::new(actor, reason, action), move |_, _| {
                Ok(doc.clone())
            })
        });
        match &r {
            Ok(_) => METRICS.reloads.with_label_values(&["ok"]).inc(),
            Err(e) => self.count_failure(e),
        }
        r
    }

    /// Loads the route files under the files-vs-API rule (or forced, with `--force-files`).
    /// Counts `switchyard_reloads_total{result}` (`ok`, `unchanged`, `conflict`, `error`) and
    /// logs every problem.
    pub fn load_files(&self, how: FileLoad) -> Result<Loaded, ChangeError> {
        let doc = self.read_files();
        if self.local_paths {
            if let Ok(d) = &doc {
                let stored = Some(StoredDoc::from(d));
                let mut seen = self.local_files.lock();
                if how == FileLoad::Changed && *seen == stored {
                    METRICS.reloads.with_label_values(&["unchanged"]).inc();
                    tracing::info!(path = %self.routes_path.display(), "route files unchanged since this node last read them; nothing to load into the fleet");
                    return Ok(Loaded::Unchanged);
                }
                *seen = stored;
            }
        }
        self.load_doc(doc, how, self.force_files, FILES_ACTOR)
    }

    fn load_doc(
        &self,
        doc: Result<TableDoc, ChangeError>,
        how: FileLoad,
        force: bool,
        actor: &str,
    ) -> Result<Loaded, ChangeError> {
        let path = self.routes_path.display().to_string();
        let r = doc.and_then(|doc| {
            let stored = StoredDoc::from(&doc);
            let action = match how {
                FileLoad::Start => Action::Load,
                FileLoad::Changed | FileLoad::Signal => Action::Reload,
            };
            self.commit(Change::new(actor, None, action), move |live, files| {
                let unchanged = files.doc.as_ref() == Some(&stored);
                if how != FileLoad::Signal && unchanged && live.version > 0 {
                    return Err(ChangeError::FilesUnchanged);
                }
                if !force {
                    let conflicts: Vec<String> = files
                        .api_changed
                        .iter()
                        .filter(|s| summary::subject_differs(s, &live.doc.table, &doc.table))
                        .cloned()
                        .collect();
                    if !conflicts.is_empty() {
                        return Err(if unchanged {
                            ChangeError::FilesUnchanged
                        } else {
                            ChangeError::Conflict(conflicts)
                        });
                    }
                }
                Ok(doc.clone())
            })
        });
        match r {
            Ok(c) => {
                METRICS.reloads.with_label_values(&["ok"]).inc();
                for d in &c.warnings {
                    tracing::warn!(path = %path, "{d}");
                }
                tracing::info!(path = %path, version = c.table.version, routes = c.table.routes.len(), "routes reloaded");
                Ok(Loaded::Published(Box::new(c)))
            }
            Err(ChangeError::FilesUnchanged) => {
                METRICS.reloads.with_label_values(&["unchanged"]).inc();
                let api = self.files.lock().api_changed.clone();
                tracing::info!(path = %path, version = self.store.version(), api_changed = ?api, "route files unchanged since their last load; the live table stays");
                Ok(Loaded::Unchanged)
            }
            Err(e) => {
                self.count_failure(&e);
                if let ChangeError::Conflict(subjects) = &e {
                    *self.conflict.lock() = Some(Conflict {
                        subjects: subjects.clone(),
                        time: now_rfc3339(),
                    });
                }
                Err(e)
            }
        }
    }

    /// Counts and logs a refused file load.
    fn count_failure(&self, e: &ChangeError) {
        let path = self.routes_path.display().to_string();
        match e {
            ChangeError::Conflict(subjects) => {
                METRICS.reloads.with_label_values(&["conflict"]).inc();
                tracing::error!(path = %path, version = self.store.version(), conflicts = ?subjects, "route file reload refused: it would undo changes made through the API; run `switchyard adopt` to let the files win");
            }
            ChangeError::Invalid(diags) => {
                METRICS.reloads.with_label_values(&["error"]).inc();
                for d in diags {
                    tracing::error!(path = %path, "{d}");
                }
                tracing::error!(path = %path, version = self.store.version(), "reload rejected; the running table stays");
            }
            e => {
                METRICS.reloads.with_label_values(&["error"]).inc();
                tracing::error!(path = %path, error = %e, "reload failed; the running table stays");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::History;

    const UPS: &str =
        "[upstreams.new]\naddrs = ['127.0.0.1:1']\n[upstreams.legacy]\naddrs = ['127.0.0.1:2']\n";

    fn files(users: &str, orders: &str) -> String {
        format!(
            "{UPS}[[routes]]\nid = 'users'\npath = '/u/*'\n{users}\n\
             [[routes]]\nid = 'orders'\npath = '/o/*'\n{orders}\n"
        )
    }

    const SPLIT: &str = "split = { new = 25, legacy = 75 }\nfallback = 'legacy'";

    fn write(dir: &Path, text: &str) {
        std::fs::write(dir.join("routes.toml"), text).unwrap();
    }

    fn route(l: &Ledger, id: &str) -> RouteFile {
        let t = l.store().load();
        t.file()
            .routes
            .iter()
            .find(|r| r.id == id)
            .cloned()
            .unwrap()
    }

    fn change(action: Action) -> Change {
        Change::new("alice", Some("test".into()), action)
    }

    #[test]
    fn files_vs_api_rule() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &files(SPLIT, "to = 'new'"));
        let l = Ledger::start(History::in_memory().unwrap(), dir.path().into(), false).unwrap();
        assert_eq!(l.store().version(), 1);
        let c = l.rollback(change(Action::Rollback), "users").unwrap();
        assert_eq!(c.table.version, 2);
        assert_eq!(route(&l, "users").to.as_deref(), Some("legacy"));
        assert_eq!(c.record.changes.routes[0].after.as_deref(), Some("legacy"));

        // Unchanged files never undo an API change.
        assert!(matches!(
            l.load_files(FileLoad::Signal),
            Ok(Loaded::Unchanged)
        ));
        // Files that would change the rolled-back route are refused, whatever else changes.
        write(dir.path(), &files(SPLIT, "to = 'legacy'"));
        match l.load_files(FileLoad::Signal) {
            Err(ChangeError::Conflict(s)) => assert_eq!(s, ["route:users"]),
            other => panic!("{other:?}"),
        }
        assert_eq!(l.store().version(), 2);
        assert_eq!(l.conflict().unwrap().subjects, ["route:users"]);
        // Files that agree with the live route are accepted and clear the marks.
        write(dir.path(), &files("to = 'legacy'", "to = 'legacy'"));
        assert!(matches!(
            l.load_files(FileLoad::Signal),
            Ok(Loaded::Published(_))
        ));
        assert_eq!(l.store().version(), 3);
        assert!(l.conflict().is_none());
        assert!(l.files_state().api_changed.is_empty());
        assert_eq!(route(&l, "orders").to.as_deref(), Some("legacy"));

        // Adopt: the files win over an API change.
        let p = RoutePatch {
            split: Some([("new".into(), 50.0), ("legacy".into(), 50.0)].into()),
            fallback: Some(Some(OneOrMany::One("legacy".into()))),
            ..Default::default()
        };
        // A single `to` and a fallback equal to it does not compile: every error is returned.
        let bad = RoutePatch {
            fallback: Some(Some(OneOrMany::One("legacy".into()))),
            ..Default::default()
        };
        match l.patch(change(Action::Patch), "users", &bad) {
            Err(ChangeError::Invalid(d)) => {
                assert_eq!(d.len(), 1);
                assert_eq!(d[0].file, "api");
                assert_eq!(d[0].field.as_deref(), Some("fallback"));
            }
            other => panic!("{other:?}"),
        }
        l.patch(change(Action::Patch), "users", &p).unwrap();
        write(dir.path(), &files("to = 'new'", "to = 'legacy'"));
        assert!(matches!(
            l.load_files(FileLoad::Signal),
            Err(ChangeError::Conflict(_))
        ));
        let c = l.adopt("bob", Some("files win".into())).unwrap();
        assert_eq!(c.record.action, Action::Adopt);
        assert_eq!(c.record.actor, "bob");
        assert_eq!(route(&l, "users").to.as_deref(), Some("new"));
        assert!(l.files_state().api_changed.is_empty());
    }

    #[test]
    fn directory_noise_publishes_nothing_sighup_does() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &files(SPLIT, "to = 'new'"));
        let l = Ledger::start(History::in_memory().unwrap(), dir.path().into(), false).unwrap();
        std::fs::write(dir.path().join("access.log"), "x").unwrap();
        assert!(matches!(
            l.load_files(FileLoad::Changed),
            Ok(Loaded::Unchanged)
        ));
        assert_eq!(l.store().version(), 1);
        assert!(matches!(
            l.load_files(FileLoad::Signal),
            Ok(Loaded::Published(_))
        ));
        assert_eq!(l.store().version(), 2);
        write(dir.path(), &files(SPLIT, "to = 'legacy'"));
        assert!(matches!(
            l.load_files(FileLoad::Changed),
            Ok(Loaded::Published(_))
        ));
        assert_eq!(l.store().version(), 3);
    }

    #[test]
    fn bad_changes_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &files(SPLIT, "to = 'new'"));
        let l = Ledger::start(History::in_memory().unwrap(), dir.path().into(), false).unwrap();
        let v = l.store().version();
        assert!(matches!(
            l.rollback(change(Action::Rollback).if_match(Some(v + 1)), "users"),
            Err(ChangeError::Stale {
                expected: 2,
                live: 1
            })
        ));
        assert!(matches!(
            l.rollback(change(Action::Rollback), "nope"),
            Err(ChangeError::UnknownRoute(_))
        ));
        assert!(matches!(
            l.rollback(change(Action::Rollback), "orders"),
            Err(ChangeError::NoFallback { .. })
        ));
        assert!(matches!(
            l.revert(change(Action::Revert), 99),
            Err(ChangeError::UnknownVersion(99))
        ));
        let mut t = l.store().load().file().clone();
        t.routes[0].split = Some([("new".into(), 20.0)].into());
        t.routes[1].to = Some("missing".into());
        match l.put_table(change(Action::Put), t) {
            Err(ChangeError::Invalid(d)) => assert_eq!(d.len(), 2, "{d:?}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(l.store().version(), v);
        assert_eq!(l.history().len().unwrap(), 1);
        // A good rollback, then a revert to the first version as a new version.
        l.rollback(change(Action::Rollback).if_match(Some(v)), "users")
            .unwrap();
        let c = l.revert(change(Action::Revert), 1).unwrap();
        assert_eq!(c.table.version, 3);
        assert_eq!(c.record.reverted_to, Some(1));
        assert_eq!(route(&l, "users").split.as_ref().unwrap().len(), 2);
    }

    /// A store shared by several ledgers, as etcd is by the nodes of a fleet.
    #[derive(Debug, Default)]
    struct Shared(Mutex<Vec<(Record, FilesState)>>);

    impl VersionStore for Arc<Shared> {
        fn commit(&self, rec: &Record, files: &FilesState) -> Result<(), HistoryError> {
            let mut v = self.0.lock();
            let head = v.last().map_or(0, |h| h.0.version);
            if head + 1 != rec.version {
                return Err(HistoryError::Moved { head });
            }
            v.push((rec.clone(), files.clone()));
            Ok(())
        }
        fn get(&self, n: u64) -> Result<Option<Record>, HistoryError> {
            Ok(self
                .0
                .lock()
                .iter()
                .find(|h| h.0.version == n)
                .map(|h| h.0.clone()))
        }
        fn list(&self, limit: usize, _: Option<u64>) -> Result<Vec<Record>, HistoryError> {
            Ok(self
                .0
                .lock()
                .iter()
                .rev()
                .take(limit)
                .map(|h| h.0.clone())
                .collect())
        }
        fn head(&self) -> Result<Option<(Record, FilesState)>, HistoryError> {
            Ok(self.0.lock().last().cloned())
        }
        fn len(&self) -> Result<u64, HistoryError> {
            Ok(self.0.lock().len() as u64)
        }
        fn shared(&self) -> bool {
            true
        }
    }

    #[test]
    fn a_shared_store_keeps_if_match_exact_across_ledgers() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &files(SPLIT, "to = 'new'"));
        let store = Arc::new(Shared::default());
        let a =
            Ledger::start_shared(Box::new(store.clone()), dir.path().into(), false, None).unwrap();
        // B starts on the seeded store: the fleet's version 1, not a second seed.
        let b =
            Ledger::start_shared(Box::new(store.clone()), dir.path().into(), false, None).unwrap();
        assert_eq!((a.store().version(), b.store().version()), (1, 1));
        assert_eq!(store.len().unwrap(), 1);

        a.rollback(change(Action::Rollback), "users").unwrap();
        // B has not seen version 2: If-Match 1 passes locally, the store refuses it, B catches
        // up and answers Stale, changing nothing.
        let p = RoutePatch {
            to: Some("new".into()),
            ..Default::default()
        };
        assert!(matches!(
            b.patch(change(Action::Patch).if_match(Some(1)), "orders", &p),
            Err(ChangeError::Stale {
                expected: 1,
                live: 2
            })
        ));
        assert_eq!(b.store().version(), 2);
        assert_eq!(route(&b, "users").to.as_deref(), Some("legacy"));
        // A moves on again; B's If-Match 2 is stale, its If-Match 3 (ahead of B's table) is
        // right: B catches up first, then makes the change.
        let p2 = RoutePatch {
            to: Some("legacy".into()),
            ..Default::default()
        };
        a.patch(change(Action::Patch), "orders", &p2).unwrap();
        let c = b
            .patch(change(Action::Patch).if_match(Some(2)), "orders", &p)
            .unwrap_err();
        assert!(matches!(c, ChangeError::Stale { .. }), "{c:?}");
        let v = store.len().unwrap();
        assert_eq!(v, 3);
        let c = b
            .patch(change(Action::Patch).if_match(Some(v)), "orders", &p)
            .unwrap();
        assert_eq!(c.table.version, v + 1);
        // Without If-Match, A (behind) builds on B's version: nothing of B's change is lost,
        // and the files-vs-API state travels with the versions.
        let c = a.patch(change(Action::Patch), "users", &p).unwrap();
        assert_eq!(c.table.version, v + 2);
        assert_eq!(route(&a, "orders").to.as_deref(), Some("new"));
        assert!(a.files_state().api_changed.contains("route:orders"));
        // A version that does not compile on B is refused there and reported.
        let mut bad = store.head().unwrap().unwrap();
        bad.0.version += 1;
        bad.0.doc.table.routes[0].to = Some("missing".into());
        assert!(b.apply(bad.0, bad.1).is_err());
        assert_eq!(b.store().version(), v + 1);
        assert_eq!(
            b.applied().borrow().rejected.as_ref().map(|r| r.version),
            Some(v + 3)
        );
    }

    #[test]
    fn restart_resumes_the_last_version() {
        let dir = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        write(dir.path(), &files(SPLIT, "to = 'new'"));
        {
            let l = Ledger::start(
                History::open(state.path()).unwrap(),
                dir.path().into(),
                false,
            )
            .unwrap();
            l.rollback(change(Action::Rollback), "users").unwrap();
        }
        let l = Ledger::start(
            History::open(state.path()).unwrap(),
            dir.path().into(),
            false,
        )
        .unwrap();
        assert_eq!(l.store().version(), 2, "no new version for unchanged files");
        assert_eq!(route(&l, "users").to.as_deref(), Some("legacy"));
        assert_eq!(
            l.files_state().api_changed,
            ["route:users".to_string()].into()
        );
        drop(l);
        // Files edited while down, without touching the API's route: still a conflict, the
        // resumed table serves.
        write(dir.path(), &files(SPLIT, "to = 'legacy'"));
        let l = Ledger::start(
            History::open(state.path()).unwrap(),
            dir.path().into(),
            false,
        )
        .unwrap();
        assert_eq!(l.store().version(), 2);
        assert!(l.conflict().is_some());
        drop(l);
        // With --force-files the files win at start.
        let l = Ledger::start(
            History::open(state.path()).unwrap(),
            dir.path().into(),
            true,
        )
        .unwrap();
        assert_eq!(l.store().version(), 3);
        assert_eq!(route(&l, "orders").to.as_deref(), Some("legacy"));
        assert_eq!(route(&l, "users").to, None);
    }
}
