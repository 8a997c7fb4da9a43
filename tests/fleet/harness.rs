//! The fleet tests' parts: a real etcd (Debian `etcd-server`) on free loopback ports with a
//! temporary data directory, and switchyard nodes in fleet mode on it.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common::*;

/// The token every node accepts (actor `admin`).
pub const TOKEN: &str = "fleet-test-token-51b2";

/// Runs the switchyard CLI with the admin token; its output.
pub fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .env("SWITCHYARD_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap()
}
/// Lease TTL of test nodes, in seconds: a killed node leaves the fleet this soon.
pub const TTL: &str = "2";

fn etcd_bin() -> String {
    std::env::var("ETCD_BIN").unwrap_or_else(|_| "/usr/bin/etcd".into())
}

fn etcd_args(data: &Path, client: u16, peer: u16) -> Vec<String> {
    let c = format!("http://127.0.0.1:{client}");
    let p = format!("http://127.0.0.1:{peer}");
    vec![
        "--name".into(),
        "t".into(),
        "--data-dir".into(),
        data.display().to_string(),
        "--listen-client-urls".into(),
        c.clone(),
        "--advertise-client-urls".into(),
        c,
        "--listen-peer-urls".into(),
        p.clone(),
        "--initial-advertise-peer-urls".into(),
        p.clone(),
        "--initial-cluster".into(),
        format!("t={p}"),
        "--log-level".into(),
        "error".into(),
    ]
}

/// Waits until etcd at `port` answers `/health` with `true`.
fn wait_healthy(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = std::net::TcpStream::connect(("127.0.0.1", port))
            .ok()
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
                s.write_all(b"GET /health HTTP/1.0\r\nHost: x\r\n\r\n")
                    .ok()?;
                let mut out = String::new();
                s.read_to_string(&mut out).ok()?;
                Some(out.contains("\"health\":\"true\""))
            })
            .unwrap_or(false);
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "etcd on port {port} never became healthy"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The etcd shared by the tests of this binary that do not stop or compact it: started once;
/// a shell beside it kills it and removes its data when the test process is gone.
pub fn shared_etcd() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let (client, peer) = (reserve_port(), reserve_port());
        let data = std::env::temp_dir().join(format!("switchyard-fleet-etcd-{}", std::process::id()));
        let args: Vec<String> = etcd_args(&data, client, peer)
            .into_iter()
            .map(|a| format!("'{a}'"))
            .collect();
        let script = format!(
            "{} {} >/dev/null 2>&1 & e=$!; while kill -0 {} 2>/dev/null; do sleep 0.5; done; kill -9 $e; wait $e; rm -rf '{}'",
            etcd_bin(),
            args.join(" "),
            std::process::id(),
            data.display()
        );
        // Kept (never waited for): the shell outlives every test and ends after the process.
        static SHELL: OnceLock<std::sync::Mutex<Child>> = OnceLock::new();
        let sh = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        let _ = SHELL.set(std::sync::Mutex::new(sh));
        wait_healthy(client);
        format!("http://127.0.0.1:{client}")
    })
}

/// An etcd of one test (stopped, restarted or compacted by it); killed on drop.
pub struct Etcd {
    pub url: String,
    client: u16,
    args: Vec<String>,
    _data: tempfile::TempDir,
    child: Option<Child>,
}

/// A CA and a server certificate for 127.0.0.1 signed by it, as PEM files in `dir`:
/// `ca.pem`, `server.pem`, `server-key.pem`.
pub fn tls_files(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("server-key.pem"), key.serialize_pem()).unwrap();
}

impl Etcd {
    /// Compacts etcd's history up to its current revision (physically): a watch from an older
    /// revision is then cancelled.
    pub async fn compact_all(&self) {
        let mut client = etcd_client::Client::connect([self.url.as_str()], None)
            .await
            .unwrap();
        let rev = client
            .get("/", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        client
            .compact(
                rev,
                Some(etcd_client::CompactionOptions::new().with_physical()),
            )
            .await
            .unwrap();
    }

    /// Starts etcd on free loopback ports with a new data directory.
    pub fn start() -> Etcd {
        Self::start_args(|_, _| {})
    }

    /// Starts etcd serving clients over TLS with the certificate of [`tls_files`] in `certs`.
    pub fn start_tls(certs: &Path) -> Etcd {
        let mut e = Self::start_args(|args, client| {
            // Client URLs only: the peer listener stays plain.
            let plain = format!("http://127.0.0.1:{client}");
            for a in args.iter_mut() {
                if *a == plain {
                    *a = format!("https://127.0.0.1:{client}");
                }
            }
            args.extend([
                "--cert-file".into(),
                certs.join("server.pem").display().to_string(),
                "--key-file".into(),
                certs.join("server-key.pem").display().to_string(),
            ]);
        });
        e.url = e.url.replacen("http://", "https://", 1);
        e
    }

    fn start_args(edit: impl FnOnce(&mut Vec<String>, u16)) -> Etcd {
        let (client, peer) = (reserve_port(), reserve_port());
        let data = tempfile::tempdir().unwrap();
        let mut args = etcd_args(&data.path().join("etcd"), client, peer);
        edit(&mut args, client);
        let mut e = Etcd {
            url: format!("http://127.0.0.1:{client}"),
            client,
            args,
            _data: data,
            child: None,
        };
        e.restart();
        e
    }

    /// Starts it again on the same ports and data (after [`Etcd::kill9`]).
    pub fn restart(&mut self) {
        let child = Command::new(etcd_bin())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        if self.args.iter().any(|a| a.starts_with("https://")) {
            let deadline = Instant::now() + Duration::from_secs(30);
            while std::net::TcpStream::connect(("127.0.0.1", self.client)).is_err() {
                assert!(Instant::now() < deadline, "etcd (TLS) never listened");
                std::thread::sleep(Duration::from_millis(50));
            }
        } else {
            wait_healthy(self.client);
        }
    }

    /// Kills it with SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A prefix of its own for each test on the shared etcd.
pub fn prefix(test: &str) -> String {
    format!("/t-{test}-{}", rand::random::<u32>())
}

/// One switchyard node: its process, its routes directory and its state directory.
pub struct Node {
    pub name: String,
    pub proxy: Proxy,
    pub routes: PathBuf,
    pub state: tempfile::TempDir,
    etcd: String,
    prefix: String,
    extra: Vec<String>,
    env: Vec<(String, String)>,
}

impl Node {
    /// Starts node `name` of the fleet at `etcd`/`prefix` on the route files in `routes`.
    pub async fn start(etcd: &str, prefix: &str, name: &str, routes: &Path) -> Node {
        Self::start_with(etcd, prefix, name, routes, &[], &[]).await
    }

    /// [`Node::start`] with more arguments and environment variables.
    pub async fn start_with(
        etcd: &str,
        prefix: &str,
        name: &str,
        routes: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Node {
        let state = tempfile::tempdir().unwrap();
        let proxy = Self::spawn_with(etcd, prefix, name, routes, state.path(), extra, env).await;
        Node {
            name: name.into(),
            proxy,
            routes: routes.to_path_buf(),
            state,
            etcd: etcd.into(),
            prefix: prefix.into(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    async fn spawn_with(
        etcd: &str,
        prefix: &str,
        name: &str,
        routes: &Path,
        state: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Proxy {
        let state = state.display().to_string();
        let mut args = vec![
            "--state",
            &state,
            "--etcd",
            etcd,
            "--node-id",
            name,
            "--etcd-prefix",
            prefix,
            "--fleet-lease-ttl",
            TTL,
            "--fleet-reconcile-ms",
            "1000",
            "--etcd-timeout-ms",
            "1000",
        ];
        args.extend_from_slice(extra);
        let mut envs = vec![("SWITCHYARD_ADMIN_TOKEN", TOKEN)];
        envs.extend_from_slice(env);
        Proxy::start_env(routes, &args, &envs).await
    }

    /// Kills the process with SIGKILL (its state directory stays).
    pub fn kill9(&mut self) {
        self.proxy.kill9();
    }

    /// Starts it again with the same state directory, routes and ports chosen anew.
    pub async fn restart(&mut self) {
        self.proxy.kill9();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.proxy = Self::spawn_with(
            &self.etcd,
            &self.prefix,
            &self.name,
            &self.routes,
            self.state.path(),
            &extra,
            &env,
        )
        .await;
    }

    /// An admin call with the token.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Resp {
        let auth = format!("Bearer {TOKEN}");
        let mut h = vec![("authorization", auth.as_str())];
        h.extend_from_slice(headers);
        send(
            &client(),
            method,
            &self.proxy.admin_url(path),
            &h,
            body.to_string(),
        )
        .await
        .unwrap_or_else(|e| panic!("{} {method} {path}: {e}", self.name))
    }

    /// The version of `GET /v1/table`.
    pub async fn version(&self) -> u64 {
        get(&self.proxy.admin_url("/v1/table")).await.json()["version"]
            .as_u64()
            .unwrap()
    }

    /// `GET /v1/fleet`.
    pub async fn fleet(&self) -> serde_json::Value {
        get(&self.proxy.admin_url("/v1/fleet")).await.json()
    }

    /// Which origin answers `path` on the data plane.
    pub async fn origin_of(&self, path: &str) -> String {
        get(&self.proxy.url(path)).await.origin().to_string()
    }
}

/// Waits (bounded) until `f` is true.
pub async fn until<F, Fut>(what: &str, secs: u64, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
