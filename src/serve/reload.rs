//! Reloading route files on change or SIGHUP: parse, compile, validate, swap, through
//! [`Ledger::load_files`] so that every version is recorded and the files-vs-API rule holds.
//! Any failure keeps the running table.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use crate::admin::ledger::{ChangeError, FileLoad, Loaded};
use crate::admin::Ledger;
use crate::routing::compile::Diagnostic;

/// Reads, compiles and publishes the route files (`how`: a change seen in the directory, or
/// SIGHUP). On error nothing is published: compile errors are returned as diagnostics; a
/// refusal by the files-vs-API rule or a history failure as one diagnostic saying so. Every
/// outcome is counted and logged by the ledger.
pub fn reload(ledger: &Ledger, how: FileLoad) -> Result<Loaded, Vec<Diagnostic>> {
    ledger.load_files(how).map_err(|e| match e {
        ChangeError::Invalid(d) => d,
        other => vec![Diagnostic {
            severity: crate::routing::Severity::Error,
            file: ledger.routes_path().display().to_string(),
            subject: String::new(),
            field: None,
            message: other.to_string(),
        }],
    })
}

/// Watches the route files (a file or directory) and SIGHUP; reloads on every change,
/// debounced.
pub async fn watch(ledger: Arc<Ledger>) {
    let path: PathBuf = ledger.routes_path().to_path_buf();
    // `true` = SIGHUP, `false` = a change in the directory.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bool>(16);
    let watch_tx = tx.clone();
    // Only route files count: the history database, editors' temporary files and anything
    // else in the directory are not changes (a `ca_file` edit needs SIGHUP).
    let single = (!path.is_dir())
        .then(|| path.file_name().map(|n| n.to_os_string()))
        .flatten();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            let route_file = ev.paths.iter().any(|p| match &single {
                Some(name) => p.file_name() == Some(name.as_os_str()),
                None => p.extension().is_some_and(|e| e == "toml"),
            });
            if !ev.kind.is_access() && route_file {
                let _ = watch_tx.try_send(false);
            }
        }
    });
    // Watch the directory (a file's parent), so editors that replace files are seen.
    let dir = if path.is_dir() {
        path.clone()
    } else {
        path.parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    };
    let _watcher = match watcher {
        Ok(mut w) => match w.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => Some(w),
            Err(e) => {
                tracing::error!(path = %dir.display(), error = %e, "cannot watch route files; reload with SIGHUP");
                None
            }
        },
        Err(e) => {
            tracing::error!(error = %e, "cannot watch route files; reload with SIGHUP");
            None
        }
    };
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hup) => {
            let tx = tx.clone();
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP: reloading routes");
                    let _ = tx.send(true).await;
                }
            });
        }
        Err(e) => tracing::error!(error = %e, "cannot listen for SIGHUP"),
    }
    while let Some(first) = rx.recv().await {
        // Debounce: an editor's save is several events; a rewrite may be mid-way.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut signal = first;
        while let Ok(s) = rx.try_recv() {
            signal |= s;
        }
        let how = if signal {
            FileLoad::Signal
        } else {
            FileLoad::Changed
        };
        let l = ledger.clone();
        // Outcomes are counted and logged by the ledger.
        let _ = tokio::task::spawn_blocking(move || reload(&l, how)).await;
    }
}
