//! This node's last applied table, kept in `--state DIR/fleet-table.json` (the record and the
//! files-vs-API state, as in etcd's `head`), so the node can start and serve while etcd is
//! unreachable. Written after every applied version: to a temporary file, synced, renamed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::etcd::Head;
use crate::admin::history::{FilesState, Record};
use crate::admin::Ledger;

/// File name inside `--state DIR`.
pub const FILE: &str = "fleet-table.json";

/// The copy in `dir`, if there is a readable one (a broken one is logged and ignored).
pub fn load(dir: &Path) -> Option<(Record, FilesState)> {
    let path = dir.join(FILE);
    let bytes = std::fs::read(&path).ok()?;
    match serde_json::from_slice::<Head>(&bytes) {
        Ok(h) => Some((h.record, h.files)),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "ignoring the last known table: it does not decode");
            None
        }
    }
}

fn write(dir: &Path, head: &Head) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{FILE}.tmp"));
    let bytes = serde_json::to_vec(head).map_err(std::io::Error::other)?;
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(FILE))
}

/// Writes the copy after every applied version until the process ends.
pub async fn keep(dir: PathBuf, ledger: Arc<Ledger>) {
    let mut rx = ledger.applied();
    let mut written = 0;
    loop {
        let head = rx.borrow_and_update().head.clone();
        if let Some(h) = head.filter(|h| h.0.version != written) {
            let v = h.0.version;
            let d = dir.clone();
            let head = Head {
                record: h.0.clone(),
                files: h.1.clone(),
            };
            match tokio::task::spawn_blocking(move || write(&d, &head)).await {
                Ok(Ok(())) => written = v,
                Ok(Err(e)) => {
                    tracing::error!(dir = %dir.display(), error = %e, "cannot keep the last applied table on disk")
                }
                Err(e) => tracing::error!(error = %e, "disk copy task"),
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).is_none());
        let rec = Record {
            version: 4,
            time: "2026-01-01T00:00:00Z".into(),
            actor: "a".into(),
            reason: None,
            source: "api".into(),
            action: crate::admin::history::Action::Patch,
            files: None,
            reverted_to: None,
            changes: Default::default(),
            doc: Default::default(),
        };
        let head = Head {
            record: rec,
            files: FilesState::default(),
        };
        write(dir.path(), &head).unwrap();
        assert_eq!(load(dir.path()).unwrap().0.version, 4);
        std::fs::write(dir.path().join(FILE), b"{").unwrap();
        assert!(load(dir.path()).is_none());
    }
}
