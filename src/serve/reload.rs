//! Reloading route files: parse, compile, validate, swap. Any failure keeps the running table.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use crate::metrics::METRICS;
use crate::routing::compile::{check_path, Diagnostic, Severity};
use crate::routing::{RouteTable, TableStore};

/// Reads, compiles and publishes the route files at `path`. On error nothing is published and
/// every diagnostic is returned; the running table keeps serving.
pub fn reload(path: &Path, store: &TableStore) -> Result<Arc<RouteTable>, Vec<Diagnostic>> {
    let (compiled, diags) = check_path(path);
    let Some(compiled) = compiled.filter(|_| !diags.iter().any(|d| d.severity == Severity::Error))
    else {
        METRICS.reloads.with_label_values(&["error"]).inc();
        for d in &diags {
            tracing::error!(path = %path.display(), "{d}");
        }
        tracing::error!(path = %path.display(), version = store.version(), "reload rejected; the running table stays");
        return Err(diags);
    };
    for d in &diags {
        tracing::warn!(path = %path.display(), "{d}");
    }
    let table = store.publish(compiled.table);
    METRICS.reloads.with_label_values(&["ok"]).inc();
    METRICS.table_version.set(table.version as i64);
    tracing::info!(path = %path.display(), version = table.version, routes = table.routes.len(), "routes reloaded");
    Ok(table)
}

/// Watches `path` (a file or directory) and SIGHUP; reloads on every change, debounced.
pub async fn watch(path: PathBuf, store: Arc<TableStore>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(16);
    let watch_tx = tx.clone();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if !ev.kind.is_access() {
                let _ = watch_tx.try_send(());
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
                    let _ = tx.send(()).await;
                }
            });
        }
        Err(e) => tracing::error!(error = %e, "cannot listen for SIGHUP"),
    }
    while rx.recv().await.is_some() {
        // Debounce: an editor's save is several events; a rewrite may be mid-way.
        tokio::time::sleep(Duration::from_millis(50)).await;
        while rx.try_recv().is_ok() {}
        let p = path.clone();
        let s = store.clone();
        let _ = tokio::task::spawn_blocking(move || reload(&p, &s)).await;
    }
}
