//! Test harness: real loopback origins (plain and TLS) that can misbehave on command, the
//! built `switchyard` binary started on ephemeral ports, and a small HTTP client.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// What an origin does with requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// 200 with a JSON description of the request.
    Normal = 0,
    /// 500 with a body.
    Error500 = 1,
    /// Never answers.
    Hang = 2,
    /// Reads the request, then closes the connection without answering.
    Close = 3,
}

/// Shared state of one origin.
pub struct OriginState {
    pub name: String,
    mode: AtomicU8,
    pub requests: AtomicU64,
    /// Requests seen, per method.
    pub by_method: Mutex<HashMap<String, u64>>,
    pub health_requests: AtomicU64,
    /// SNI of the last TLS handshake.
    pub last_sni: Mutex<Option<String>>,
    /// Added before answering anything but `/healthz`, in ms (so requests are in flight).
    pub delay_ms: AtomicU64,
}

impl OriginState {
    pub fn set_mode(&self, m: Mode) {
        self.mode.store(m as u8, Ordering::SeqCst);
    }
    pub fn mode(&self) -> Mode {
        match self.mode.load(Ordering::SeqCst) {
            1 => Mode::Error500,
            2 => Mode::Hang,
            3 => Mode::Close,
            _ => Mode::Normal,
        }
    }
    pub fn count(&self, method: &str) -> u64 {
        self.by_method
            .lock()
            .unwrap()
            .get(method)
            .copied()
            .unwrap_or(0)
    }
}

/// A running origin. Dropping it (or [`Origin::kill`]) closes the listener and every open
/// connection.
pub struct Origin {
    pub addr: SocketAddr,
    pub state: Arc<OriginState>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    tasks: Option<tokio::task::JoinHandle<()>>,
}

async fn describe(
    state: Arc<OriginState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if parts.uri.path() == "/healthz" {
        state.health_requests.fetch_add(1, Ordering::SeqCst);
    } else {
        state.requests.fetch_add(1, Ordering::SeqCst);
        *state
            .by_method
            .lock()
            .unwrap()
            .entry(parts.method.to_string())
            .or_default() += 1;
    }
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 && parts.uri.path() != "/healthz" {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mode = state.mode();
    if mode == Mode::Close && parts.uri.path() != "/healthz" {
        // A service error makes hyper drop the connection without a response.
        return Err(std::io::Error::other("closing without an answer"));
    }
    if mode == Mode::Hang {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                serde_json::Value::String(v.to_str().unwrap_or("").to_string()),
            )
        })
        .collect();
    let v = serde_json::json!({
        "origin": state.name,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body_len": body.len(),
    });
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    if mode == Mode::Error500 && parts.uri.path() != "/healthz" {
        *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
    }
    r.headers_mut()
        .insert("x-origin", state.name.parse().unwrap());
    Ok(r)
}

impl Origin {
    /// Starts a plain HTTP origin on an ephemeral loopback port.
    pub async fn start(name: &str) -> Origin {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap(), None).await
    }

    /// Starts an origin on `addr`, with TLS when `tls` is given.
    pub async fn start_on(
        name: &str,
        addr: SocketAddr,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Origin {
        let listener = TcpListener::bind(addr).await.expect("bind origin");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(OriginState {
            name: name.to_string(),
            mode: AtomicU8::new(0),
            requests: AtomicU64::new(0),
            by_method: Mutex::new(HashMap::new()),
            health_requests: AtomicU64::new(0),
            last_sni: Mutex::new(None),
            delay_ms: AtomicU64::new(0),
        });
        let tasks = serve(listener, state.clone(), tls.clone());
        Origin {
            addr,
            state,
            tls,
            tasks: Some(tasks),
        }
    }

    /// Closes the listener and every open connection.
    pub async fn kill(&mut self) {
        if let Some(t) = self.tasks.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// Restarts on the same address (after [`Origin::kill`]), with the same TLS and the same
    /// state: counters and mode carry over.
    pub async fn revive(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) => {
                    assert!(Instant::now() < deadline, "rebinding {}: {e}", self.addr);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        self.tasks = Some(serve(listener, self.state.clone(), self.tls.clone()));
    }
}

/// Accepts on `listener` until aborted; aborting also closes every open connection.
fn serve(
    listener: TcpListener,
    st: Arc<OriginState>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // Connections live in this set: aborting the accept task drops it, closing them all.
        let mut conns = JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let st = st.clone();
            let st2 = st.clone();
            let tls = tls.clone();
            conns.spawn(async move {
                let svc = service_fn(move |r| describe(st.clone(), r));
                let builder = hyper::server::conn::http1::Builder::new();
                match tls {
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                    }
                    Some(acc) => {
                        if let Ok(s) = acc.accept(stream).await {
                            *st2.last_sni.lock().unwrap() =
                                s.get_ref().1.server_name().map(str::to_string);
                            let _ = builder.serve_connection(TokioIo::new(s), svc).await;
                        }
                    }
                }
            });
            while conns.try_join_next().is_some() {}
        }
    })
}

impl Drop for Origin {
    fn drop(&mut self) {
        if let Some(t) = self.tasks.take() {
            t.abort();
        }
    }
}

/// A TLS acceptor with a fresh self-signed certificate for `names`; returns it and the PEM of
/// the certificate (to use as `ca_file`).
pub fn self_signed(names: &[&str]) -> (tokio_rustls::TlsAcceptor, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ck =
        rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert_pem = ck.cert.pem();
    let der = ck.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
    let cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![der], key)
        .unwrap();
    (tokio_rustls::TlsAcceptor::from(Arc::new(cfg)), cert_pem)
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback port for a server the test starts later. `free_port` hands back a port from the
/// kernel's ephemeral range, which `bind(0)` (other tests' origins) and outgoing connections
/// draw from, so under parallel tests another socket can take it before the server binds it
/// (and the test then talks to the wrong server). This picks a free port below that range
/// instead, never the same one twice in this process.
pub fn reserve_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if low <= 11_000 {
        return free_port();
    }
    let mut given = GIVEN.lock().unwrap();
    loop {
        let p = rand::random_range(10_000..low);
        if !given.contains(&p) && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            given.push(p);
            return p;
        }
    }
}

/// The built `switchyard` binary, running `serve`.
pub struct Proxy {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: PathBuf,
}

impl Proxy {
    /// Starts `switchyard serve` on the route files in `dir` and waits until both listeners
    /// accept connections.
    pub async fn start(dir: &Path) -> Proxy {
        Self::start_with(dir, &[]).await
    }

    pub async fn start_with(dir: &Path, extra: &[&str]) -> Proxy {
        Self::start_env(dir, extra, &[]).await
    }

    /// Starts `switchyard serve` with extra arguments and environment variables. The admin
    /// token comes only from `env`: `SWITCHYARD_ADMIN_TOKEN` is not inherited from the test's
    /// environment.
    pub async fn start_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Proxy {
        let addr: SocketAddr = format!("127.0.0.1:{}", reserve_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", reserve_port()).parse().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["serve", "--routes"])
            .arg(dir)
            .args([
                "--listen",
                &addr.to_string(),
                "--admin",
                &admin.to_string(),
                "--threads",
                "2",
            ])
            .args(if extra.contains(&"--access-log") {
                &[][..]
            } else {
                &["--access-log", "off"][..]
            })
            .args(extra)
            // SWITCHYARD_TEST_LOG (e.g. `debug`) to see the proxy's own log while debugging.
            .env(
                "SWITCHYARD_LOG",
                std::env::var("SWITCHYARD_TEST_LOG").unwrap_or("warn".into()),
            )
            .env_remove("SWITCHYARD_ADMIN_TOKEN")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start switchyard");
        let p = Proxy {
            child,
            addr,
            admin,
            dir: dir.to_path_buf(),
        };
        p.wait_ready().await;
        p
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for a in [self.addr, self.admin] {
            while tokio::net::TcpStream::connect(a).await.is_err() {
                assert!(
                    Instant::now() < deadline,
                    "switchyard did not start listening on {a}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// Current `switchyard_route_table_version`.
    pub async fn table_version(&self) -> u64 {
        let m = get(&self.admin_url("/metrics")).await.body;
        metric(&m, "switchyard_route_table_version") as u64
    }

    /// Waits until the table version reaches `v`.
    pub async fn wait_version(&self, v: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.table_version().await < v {
            assert!(Instant::now() < deadline, "table version never reached {v}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Proxy {
    /// Stops the process with SIGTERM (pingora's graceful stop) and waits until it exits.
    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    /// Kills the process with SIGKILL and waits until it is gone: nothing gets to clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of a metric line starting with `prefix` (first match), or 0.
pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A response as tests look at it.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
    /// Which origin answered (its `x-origin` header).
    pub fn origin(&self) -> &str {
        self.headers
            .get("x-origin")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    pub fn header(&self, n: &str) -> &str {
        self.headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

pub type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// A keep-alive client.
pub fn client() -> Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build_http()
}

/// Sends a request with `headers` and `body`.
pub async fn send(
    c: &Client,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<Resp, String> {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(body.into())).map_err(|e| e.to_string())?;
    let resp = c.request(req).await.map_err(|e| format!("{e:?}"))?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Resp {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// GET with a fresh client; panics on transport errors.
pub async fn get(url: &str) -> Resp {
    send(&client(), "GET", url, &[], Bytes::new())
        .await
        .expect("GET")
}

/// A temporary directory with one route file, `routes.toml`.
pub fn routes_dir(toml: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("routes.toml"), toml).unwrap();
    d
}

/// Replaces `routes.toml` atomically (write then rename), as a deploy tool would.
pub fn rewrite_routes(dir: &Path, toml: &str) {
    let tmp = dir.join(".routes.toml.tmp");
    std::fs::write(&tmp, toml).unwrap();
    std::fs::rename(&tmp, dir.join("routes.toml")).unwrap();
}
