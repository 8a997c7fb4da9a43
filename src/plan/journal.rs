//! The plan's local journal: one JSON file per plan under the state directory, written (and
//! synced) before each step runs and after each step's outside change, so `plan resume` knows
//! which step to run again and which outside steps are already done.
//!
//! Default directory: `$SWITCHYARD_STATE_DIR`, else `$XDG_STATE_HOME/switchyard`, else
//! `~/.local/state/switchyard` (as `dns` and `metrics publish`); the journal is
//! `DIR/plans/NAME.json`.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why the journal cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("no state directory: set --state, SWITCHYARD_STATE_DIR, XDG_STATE_HOME or HOME")]
    NoDir,
    #[error("journal {0}: {1}")]
    Io(PathBuf, String),
}

/// Where a plan stands as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Running,
    Completed,
    RolledBack,
    Aborted,
    Failed,
}

impl Status {
    /// The name used in reports and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Completed => "completed",
            Status::RolledBack => "rolled_back",
            Status::Aborted => "aborted",
            Status::Failed => "failed",
        }
    }

    /// True once the plan no longer runs.
    pub fn finished(self) -> bool {
        self != Status::Running
    }
}

/// Where the current step stands: the state machine each step goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Written before the step's action: a resume runs the action again (every action is
    /// idempotent: a weight already set is not set twice).
    Starting,
    /// The outside change is made; what is left is waiting (bake, approval, drain).
    Applied,
}

/// The journal of one plan run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Journal {
    pub name: String,
    /// The plan file, absolute.
    pub file: PathBuf,
    /// SHA-256 of the file's text when the run started.
    pub digest: String,
    /// The admin API the run talks to.
    pub admin: String,
    pub run_id: String,
    pub status: Status,
    /// 0-based index of the current step (`steps` once completed).
    pub step: usize,
    pub phase: Phase,
    /// When the current weight step's bake started (Unix ms), so a resume bakes only the rest.
    #[serde(default)]
    pub bake_started_ms: Option<u64>,
    /// The weight the plan last set on `to`.
    #[serde(default)]
    pub weight: Option<f64>,
    /// Control steps whose command completed (their `undo` runs on rollback).
    #[serde(default)]
    pub control_done: Vec<usize>,
    /// Why it stopped, for people.
    #[serde(default)]
    pub message: String,
    /// RFC 3339 UTC of the last write.
    pub updated: String,
}

/// The state directory: `explicit`, else the environment's default.
pub fn state_dir(explicit: Option<&Path>) -> Result<PathBuf, JournalError> {
    if let Some(d) = explicit {
        return Ok(d.to_path_buf());
    }
    if let Some(d) = std::env::var_os("SWITCHYARD_STATE_DIR").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("switchyard"));
    }
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|h| PathBuf::from(h).join(".local/state/switchyard"))
        .ok_or(JournalError::NoDir)
}

/// The journal file of plan `name` in `dir`.
pub fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join("plans").join(format!("{name}.json"))
}

impl Journal {
    /// Reads plan `name`'s journal; `None` when there is none.
    pub fn load(dir: &Path, name: &str) -> Result<Option<Journal>, JournalError> {
        let p = path(dir, name);
        match std::fs::read_to_string(&p) {
            Ok(t) => serde_json::from_str(&t).map(Some).map_err(|e| {
                JournalError::Io(p, format!("unreadable ({e}); remove it to start over"))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(JournalError::Io(p, e.to_string())),
        }
    }

    /// Every journal in `dir`, by name.
    pub fn all(dir: &Path) -> Vec<Journal> {
        let Ok(rd) = std::fs::read_dir(dir.join("plans")) else {
            return Vec::new();
        };
        let mut out: Vec<Journal> = rd
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e
                    .file_name()
                    .to_string_lossy()
                    .strip_suffix(".json")?
                    .to_string();
                Journal::load(dir, &name).ok().flatten()
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Writes the journal durably: a temporary file, synced, renamed over the old one.
    pub fn save(&mut self, dir: &Path) -> Result<(), JournalError> {
        self.updated = crate::proxy::log::now_rfc3339();
        let p = path(dir, &self.name);
        let err = |e: std::io::Error| JournalError::Io(p.clone(), e.to_string());
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(err)?;
        }
        let tmp = p.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| JournalError::Io(p.clone(), e.to_string()))?;
        {
            let mut f = std::fs::File::create(&tmp).map_err(err)?;
            f.write_all(&text).map_err(err)?;
            f.sync_all().map_err(err)?;
        }
        std::fs::rename(&tmp, &p).map_err(err)?;
        if let Some(parent) = p.parent() {
            if let Ok(d) = std::fs::File::open(parent) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal {
            name: "p".into(),
            file: "/x/p.toml".into(),
            digest: "d".into(),
            admin: "http://127.0.0.1:9090".into(),
            run_id: "r".into(),
            status: Status::Running,
            step: 2,
            phase: Phase::Applied,
            bake_started_ms: Some(5),
            weight: Some(25.0),
            control_done: vec![1],
            message: String::new(),
            updated: String::new(),
        };
        j.save(dir.path()).unwrap();
        let back = Journal::load(dir.path(), "p").unwrap().unwrap();
        assert_eq!(back, j);
        assert_eq!(Journal::all(dir.path()).len(), 1);
        assert!(Journal::load(dir.path(), "q").unwrap().is_none());
    }
}
