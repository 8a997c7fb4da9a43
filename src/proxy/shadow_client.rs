//! The HTTP client shadow copies go out on: one pooled hyper client for plain upstreams and
//! one for TLS upstreams, which connect to the upstream's address and verify its certificate
//! against its `sni` with the same trust roots as the primary (the web roots, plus `ca_file`).
//!
//! hyper's pool keys connections by the URI's authority, and a TLS shadow upstream needs a
//! name to verify that is not where it connects, so each TLS target (address, SNI, roots) gets
//! a synthetic authority `tN.shadow.invalid` that the connector maps back to it. Targets are
//! kept for the life of the process (one per distinct address and SNI, at most
//! [`MAX_TLS_TARGETS`]); a route reload with another `ca_file` replaces the roots of the
//! target, and only new connections use them.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::Full;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use pingora::protocols::tls::CaType;
use pingora::tls::{ClientConfig, ClientTlsStream, RootCertStore, ServerName, TlsConnector};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::routing::table::Upstream;

/// Distinct TLS shadow targets (address × SNI) one process keeps.
pub const MAX_TLS_TARGETS: usize = 1024;
/// Connect timeout of a shadow copy (the whole copy is also bounded by the upstream's connect
/// and read timeouts).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle pooled connections per shadow upstream address.
const POOL_PER_HOST: usize = 32;
const POOL_IDLE: Duration = Duration::from_secs(30);

/// Why a copy could not be sent: the message ends up in `/v1/shadow` as the copy's error.
pub type SendError = String;

static PLAIN: LazyLock<Client<HttpConnector, Full<Bytes>>> = LazyLock::new(|| {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    c.set_connect_timeout(Some(CONNECT_TIMEOUT));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_max_idle_per_host(POOL_PER_HOST)
        .build(c)
});

static TLS: LazyLock<Client<TlsTargets, Full<Bytes>>> = LazyLock::new(|| {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_max_idle_per_host(POOL_PER_HOST)
        .build(TlsTargets)
});

/// Sends `req` (whose URI holds only the path and query) to `addr` of `up`, over TLS when the
/// upstream uses it.
pub async fn send(
    up: &Upstream,
    addr: &str,
    mut req: http::Request<Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, SendError> {
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let result = if up.tls {
        let n = target(addr, &up.sni, up.ca.as_ref())?;
        *req.uri_mut() = format!("http://t{n}.shadow.invalid{path}")
            .parse()
            .map_err(|e| format!("shadow request URI: {e}"))?;
        TLS.request(req).await
    } else {
        *req.uri_mut() = format!("http://{addr}{path}")
            .parse()
            .map_err(|e| format!("shadow request URI: {e}"))?;
        PLAIN.request(req).await
    };
    result.map_err(|e| {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg = format!("{msg}: {s}");
            src = s.source();
        }
        msg
    })
}

/// One TLS shadow target.
struct Target {
    addr: String,
    sni: String,
    /// The roots the config was built from (kept, so pointer equality means the same roots).
    ca: Option<Arc<CaType>>,
    config: Arc<ClientConfig>,
}

static TARGETS: LazyLock<Mutex<Vec<Target>>> = LazyLock::new(|| Mutex::new(Vec::new()));

/// The index of the target for (`addr`, `sni`), created or given new roots as needed.
fn target(addr: &str, sni: &str, ca: Option<&Arc<CaType>>) -> Result<usize, SendError> {
    let same_roots = |a: &Option<Arc<CaType>>| match (a, ca) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    };
    let mut targets = TARGETS.lock();
    if let Some(i) = targets.iter().position(|t| t.addr == addr && t.sni == sni) {
        if !same_roots(&targets[i].ca) {
            targets[i].config = client_config(ca)?;
            targets[i].ca = ca.cloned();
        }
        return Ok(i);
    }
    if targets.len() >= MAX_TLS_TARGETS {
        return Err(format!(
            "more than {MAX_TLS_TARGETS} TLS shadow targets in this process"
        ));
    }
    targets.push(Target {
        addr: addr.to_string(),
        sni: sni.to_string(),
        ca: ca.cloned(),
        config: client_config(ca)?,
    });
    Ok(targets.len() - 1)
}

/// A rustls client config trusting `ca` (web roots plus `ca_file`, as compiled) or, without
/// one, the system's roots: what pingora trusts for the primary.
fn client_config(ca: Option<&Arc<CaType>>) -> Result<Arc<ClientConfig>, SendError> {
    pingora::tls::install_default_crypto_provider();
    let mut roots = RootCertStore::empty();
    match ca {
        Some(list) => {
            for c in list.iter() {
                // A root the TLS library cannot use is skipped, as pingora does.
                let _ = roots.add(c.borrow_raw_cert().clone().into());
            }
        }
        None => {
            for der in crate::routing::compile::web_roots() {
                let _ = roots.add(der.clone().into());
            }
        }
    }
    if roots.is_empty() {
        return Err("no trust roots for the TLS shadow upstream".into());
    }
    let mut cfg = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The connector of the TLS client: `tN.shadow.invalid` → target N.
#[derive(Clone)]
struct TlsTargets;

impl tower_service::Service<Uri> for TlsTargets {
    type Response = TokioIo<TlsConn>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(async move {
            let n = uri
                .host()
                .and_then(|h| h.strip_suffix(".shadow.invalid"))
                .and_then(|h| h.strip_prefix('t'))
                .and_then(|n| n.parse::<usize>().ok());
            let (addr, sni, config) = {
                let targets = TARGETS.lock();
                match n.and_then(|n| targets.get(n)) {
                    Some(t) => (t.addr.clone(), t.sni.clone(), t.config.clone()),
                    None => return Err(io::Error::other(format!("no TLS shadow target {uri}"))),
                }
            };
            let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(sni.clone())
                .map_err(|e| io::Error::other(format!("sni {sni:?}: {e}")))?;
            let tls = tokio::time::timeout(
                CONNECT_TIMEOUT,
                TlsConnector::from(config).connect(name, tcp),
            )
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
            Ok(TokioIo::new(TlsConn(Box::new(tls))))
        })
    }
}

/// A TLS connection to a shadow upstream.
pub struct TlsConn(Box<ClientTlsStream<TcpStream>>);

impl Connection for TlsConn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}
