//! The admin HTTP server (hyper 1, HTTP/1.1) on its own listener, separate from the data plane.
//! Routes and handlers are in [`super::api`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::auth::Tokens;
use super::ledger::Ledger;
use crate::routing::TableStore;

/// What admin handlers share.
pub struct AdminState {
    pub store: Arc<TableStore>,
    /// The route files the proxy was started with.
    pub routes_path: Option<PathBuf>,
    /// Every table change goes through it.
    pub ledger: Arc<Ledger>,
    /// Accepted bearer tokens.
    pub tokens: Tokens,
    /// Read-only calls need no token (true when the listener is on loopback).
    pub open_reads: bool,
    /// Fleet mode (`serve --etcd`): this node of the fleet.
    pub fleet: Option<Arc<crate::fleet::Fleet>>,
    /// The TLS listener's certificates (`GET /v1/tls`); `None` without `--tls-listen`.
    pub tls: Option<Arc<crate::serve::tls::CertStore>>,
}

impl AdminState {
    /// The state for `ledger`'s table; reads are open when `open_reads`.
    pub fn new(ledger: Arc<Ledger>, tokens: Tokens, open_reads: bool) -> AdminState {
        AdminState {
            store: ledger.store().clone(),
            routes_path: Some(ledger.routes_path().to_path_buf()),
            ledger,
            tokens,
            open_reads,
            fleet: None,
            tls: None,
        }
    }

    /// The same state as a node of `fleet`.
    pub fn with_fleet(mut self, fleet: Option<Arc<crate::fleet::Fleet>>) -> AdminState {
        self.fleet = fleet;
        self
    }
}

/// Response helper: a body with a content type.
pub fn reply(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

/// A JSON response.
pub fn json(status: StatusCode, v: &serde_json::Value) -> Response<Full<Bytes>> {
    reply(status, "application/json", format!("{v}\n"))
}

/// Serves the admin API on `listener` until the process ends.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    loop {
        let (stream, _peer): (_, SocketAddr) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(super::api::handle(state, req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}
