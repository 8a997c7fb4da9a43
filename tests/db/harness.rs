//! Real MariaDB servers for the cutover tests: one data directory made with
//! `mariadb-install-db` per test binary, copied for each server, `mariadbd` started on a free
//! loopback port with binlogs, `log_slave_updates` and GTID strict mode; and a small HTTP
//! application that writes to one of them.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use mysql_async::prelude::Queryable;
use tokio::net::TcpListener;

use std::collections::BTreeSet;
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::common::*;

/// switchyard's own account (ALL PRIVILEGES, so READ_ONLY ADMIN too).
pub const SY_USER: &str = "switchyard";
pub const SY_PASSWORD: &str = "sy-pw";
/// The replication account.
pub const REPL_USER: &str = "repl";
pub const REPL_PASSWORD: &str = "repl-pw";
/// The application's account: table rights only, so read_only stops it.
pub const APP_USER: &str = "app";
pub const APP_PASSWORD: &str = "app-pw";

/// Statements run at every start, outside the binlog, so both servers have the accounts and
/// the schema without any GTID of their own.
const INIT_SQL: &str = "SET sql_log_bin = 0;
CREATE USER IF NOT EXISTS 'switchyard'@'%' IDENTIFIED BY 'sy-pw';
GRANT ALL PRIVILEGES ON *.* TO 'switchyard'@'%' WITH GRANT OPTION;
CREATE USER IF NOT EXISTS 'repl'@'%' IDENTIFIED BY 'repl-pw';
GRANT REPLICATION SLAVE, REPLICATION SLAVE ADMIN, BINLOG MONITOR ON *.* TO 'repl'@'%';
CREATE DATABASE IF NOT EXISTS appdb;
CREATE USER IF NOT EXISTS 'app'@'%' IDENTIFIED BY 'app-pw';
GRANT SELECT, INSERT, UPDATE, DELETE ON appdb.* TO 'app'@'%';
CREATE TABLE IF NOT EXISTS appdb.writes (id BIGINT PRIMARY KEY, origin VARCHAR(16) NOT NULL, at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) ENGINE=InnoDB;
";

fn which(names: &[&str]) -> PathBuf {
    for n in names {
        for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"] {
            let p = Path::new(dir).join(n);
            if p.exists() {
                return p;
            }
        }
    }
    panic!(
        "none of {names:?} found: install mariadb-server (bash tests/run does) — the database tests do not skip"
    );
}

/// The data directory template, made once per test binary.
fn template() -> &'static Path {
    static T: OnceLock<PathBuf> = OnceLock::new();
    T.get_or_init(|| {
        // The template outlives the process (statics are not dropped): remove those of test
        // processes that are gone, so runs do not pile up copies in the temp directory.
        const PREFIX: &str = "switchyard-mariadb-template-";
        if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix(PREFIX) {
                    if !Path::new("/proc").join(pid).exists() {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
        }
        let dir = std::env::temp_dir().join(format!("{PREFIX}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new(which(&["mariadb-install-db", "mysql_install_db"]))
            .args([
                "--no-defaults",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--user=root",
            ])
            .arg(format!("--datadir={}", dir.display()))
            .output()
            .expect("run mariadb-install-db");
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

/// One running `mariadbd`.
pub struct Maria {
    pub port: u16,
    pub server_id: u32,
    pub dir: PathBuf,
    child: Option<Child>,
    _tmp: Arc<tempfile::TempDir>,
}

impl Maria {
    /// Starts a server with its own copy of the template data directory.
    pub async fn start(server_id: u32) -> Maria {
        Self::start_with(server_id, &[]).await
    }

    pub async fn start_with(server_id: u32, extra: &[&str]) -> Maria {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let st = Command::new("cp")
            .arg("-a")
            .arg(template())
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success(), "copying the data directory template");
        std::fs::write(tmp.path().join("init.sql"), INIT_SQL).unwrap();
        let mut m = Maria {
            port: free_port(),
            server_id,
            dir,
            child: None,
            _tmp: Arc::new(tmp),
        };
        m.spawn(extra).await;
        m
    }

    async fn spawn(&mut self, extra: &[&str]) {
        let base = self.dir.parent().unwrap().to_path_buf();
        // Its own temporary directory: with the shared /tmp, a server's internal temporary
        // tables were once deleted under it ("Error on delete of '/tmp/#sql-temptable-...'").
        let tmpdir = base.join("tmp");
        std::fs::create_dir_all(&tmpdir).unwrap();
        let child = Command::new(which(&["mariadbd", "mysqld"]))
            .arg("--no-defaults")
            .arg(format!("--datadir={}", self.dir.display()))
            .arg(format!("--tmpdir={}", tmpdir.display()))
            .arg(format!("--socket={}", base.join("sock").display()))
            .arg(format!("--pid-file={}", base.join("pid").display()))
            .arg(format!("--log-error={}", base.join("err.log").display()))
            .arg(format!("--init-file={}", base.join("init.sql").display()))
            .arg(format!("--port={}", self.port))
            .arg(format!("--server-id={}", self.server_id))
            .arg(format!("--log-bin={}", base.join("data/binlog").display()))
            .args([
                "--bind-address=127.0.0.1",
                "--user=root",
                "--log-slave-updates",
                "--gtid-strict-mode=1",
                "--binlog-format=ROW",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=32M",
                "--innodb-log-file-size=16M",
                "--innodb-flush-log-at-trx-commit=2",
                "--sync-binlog=0",
                "--performance-schema=OFF",
                "--max-connections=200",
                "--skip-slave-start",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mariadbd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut c) = mysql_async::Conn::new(self.opts(SY_USER, SY_PASSWORD)).await {
                if c.query_drop("SELECT 1").await.is_ok() {
                    let _ = c.disconnect().await;
                    break;
                }
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(base.join("err.log")).unwrap_or_default();
                panic!("mariadbd on port {} did not start: {log}", self.port);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn opts(&self, user: &str, password: &str) -> mysql_async::Opts {
        mysql_async::OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(self.port)
            .user(Some(user))
            .pass(Some(password))
            .prefer_socket(false)
            .into()
    }

    /// `mysql://switchyard:PW@127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mysql://{SY_USER}:{SY_PASSWORD}@127.0.0.1:{}", self.port)
    }

    /// `mysql://switchyard@127.0.0.1:PORT` (password from the environment).
    pub fn url_without_password(&self) -> String {
        format!("mysql://{SY_USER}@127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A session as switchyard's account.
    pub async fn admin(&self) -> mysql_async::Conn {
        mysql_async::Conn::new(self.opts(SY_USER, SY_PASSWORD))
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.port))
    }

    /// A pool as the application's account.
    pub fn app_pool(&self) -> mysql_async::Pool {
        mysql_async::Pool::new(self.opts(APP_USER, APP_PASSWORD))
    }

    /// One value.
    pub async fn value(&self, sql: &str) -> String {
        let mut c = self.admin().await;
        let v: Option<Option<String>> = c
            .query_first(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let _ = c.disconnect().await;
        v.flatten().unwrap_or_default()
    }

    pub async fn exec(&self, sql: &str) {
        let mut c = self.admin().await;
        c.query_drop(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let _ = c.disconnect().await;
    }

    pub async fn read_only(&self) -> bool {
        self.value("SELECT @@GLOBAL.read_only").await == "1"
    }

    /// Ids in appdb.writes.
    pub async fn ids(&self) -> Vec<i64> {
        let mut c = self.admin().await;
        let v: Vec<i64> = c
            .query("SELECT id FROM appdb.writes ORDER BY id")
            .await
            .unwrap();
        let _ = c.disconnect().await;
        v
    }

    /// Makes this server a replica of `source` (as `db replicate` would, done by hand here for
    /// the tests that need a replica without going through the command).
    pub async fn replicate_from(&self, source: &Maria) {
        self.exec("SET GLOBAL read_only = ON").await;
        self.exec(&format!(
            "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, MASTER_USER='{REPL_USER}', MASTER_PASSWORD='{REPL_PASSWORD}', MASTER_USE_GTID=slave_pos",
            source.port
        ))
        .await;
        self.exec("START SLAVE").await;
        self.wait_replicating().await;
    }

    pub async fn wait_replicating(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut c = self.admin().await;
            let row: Option<mysql_async::Row> = c.query_first("SHOW SLAVE STATUS").await.unwrap();
            let _ = c.disconnect().await;
            if let Some(r) = row {
                let io: String = r.get("Slave_IO_Running").unwrap_or_default();
                let sql: String = r.get("Slave_SQL_Running").unwrap_or_default();
                if io == "Yes" && sql == "Yes" {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "replication on {} did not start: IO {io} SQL {sql}: {:?} {:?}",
                    self.port,
                    r.get::<String, _>("Last_IO_Error"),
                    r.get::<String, _>("Last_SQL_Error")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the server (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Maria {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A small HTTP application in front of one database: `POST /orders/ID` inserts ID and answers
/// 200 only after the commit; any database error is a 503 with the error. `GET /orders/x`
/// answers which database it uses.
pub struct App {
    pub addr: SocketAddr,
    pub name: &'static str,
    task: tokio::task::JoinHandle<()>,
}

impl App {
    pub async fn start(name: &'static str, db: &Maria) -> App {
        let pool = db.app_pool();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let pool = pool.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let pool = pool.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(name, pool, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        App { addr, name, task }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    name: &'static str,
    pool: mysql_async::Pool,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let reply = |status: u16, body: String| {
        Response::builder()
            .status(status)
            .header("x-app", name)
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    let path = req.uri().path().to_string();
    let id = path.rsplit('/').next().and_then(|s| s.parse::<i64>().ok());
    match (req.method().as_str(), id) {
        ("POST", Some(id)) => {
            let r = async {
                let mut c = pool.get_conn().await?;
                c.exec_drop(
                    "INSERT INTO appdb.writes (id, origin) VALUES (?, ?)",
                    (id, name),
                )
                .await
            }
            .await;
            match r {
                Ok(()) => reply(200, format!("{name} {id}")),
                Err(e) => reply(503, format!("{name}: {e}")),
            }
        }
        _ => reply(200, name.to_string()),
    }
}

pub const TOKEN: &str = "db-test-token-41d9";

pub fn sy() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    c.env("SWITCHYARD_ADMIN_TOKEN", TOKEN)
        .env("SWITCHYARD_REPL_PASSWORD", REPL_PASSWORD)
        .env_remove("SWITCHYARD_SOURCE_PASSWORD")
        .env_remove("SWITCHYARD_TARGET_PASSWORD")
        .env_remove("SWITCHYARD_ADMIN");
    c
}

pub fn run(args: &[&str]) -> Output {
    sy().args(args).output().expect("run switchyard")
}

/// `switchyard db replicate` from `s` to `t` with the test replication account.
pub fn db_replicate(s: &Maria, t: &Maria) -> Output {
    let (su, tu) = (s.url(), t.url());
    run(&[
        "db",
        "replicate",
        "--source",
        &su,
        "--target",
        &tu,
        "--repl-user",
        REPL_USER,
    ])
}

pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The JSON events a `--json` cutover printed.
pub fn events(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A source (server id 1) with a target (2) replicating from it through `db replicate`, an app
/// on each, and a proxy whose route `orders` goes to the source's app.
pub struct Setup {
    pub s: Maria,
    pub t: Maria,
    pub app_s: App,
    pub app_t: App,
    pub proxy: Proxy,
    pub _routes: tempfile::TempDir,
    pub state: tempfile::TempDir,
}

impl Setup {
    pub async fn new() -> Setup {
        let (s, t) = tokio::join!(Maria::start(1), Maria::start(2));
        let o = db_replicate(&s, &t);
        assert!(o.status.success(), "{}", text(&o));
        let app_s = App::start("app_s", &s).await;
        let app_t = App::start("app_t", &t).await;
        let routes = routes_dir(&format!(
            "[upstreams.app_s]\naddrs = [\"{}\"]\nconnect_timeout_ms = 10000\n\
             [upstreams.app_t]\naddrs = [\"{}\"]\nconnect_timeout_ms = 10000\n\
             [[routes]]\nid = \"orders\"\npath = \"/orders/*\"\nto = \"app_s\"\n",
            app_s.addr, app_t.addr
        ));
        let proxy =
            Proxy::start_env(routes.path(), &[], &[("SWITCHYARD_ADMIN_TOKEN", TOKEN)]).await;
        Setup {
            s,
            t,
            app_s,
            app_t,
            proxy,
            _routes: routes,
            state: tempfile::tempdir().unwrap(),
        }
    }

    pub fn admin(&self) -> String {
        format!("http://{}", self.proxy.admin)
    }

    pub fn state(&self) -> String {
        self.state.path().display().to_string()
    }

    /// `db cutover` (or `rollback`) of `orders` with reverse replication, JSON events.
    pub fn cutover_args(&self, verb: &str, to_app: &str, extra: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = [
            "db",
            verb,
            "--source",
            &self.s.url(),
            "--target",
            &self.t.url(),
            "--admin",
            &self.admin(),
            "--route",
            "orders",
            "--switch",
            &format!("orders={to_app}"),
            "--reverse",
            "--repl-user",
            REPL_USER,
            "--state",
            &self.state(),
            "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }

    pub fn cutover(&self, verb: &str, to_app: &str, extra: &[&str]) -> Output {
        let args = self.cutover_args(verb, to_app, extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&refs)
    }

    /// Which app the live table sends `orders` to.
    pub async fn orders_upstream(&self) -> String {
        let r = send(
            &client(),
            "GET",
            &self.proxy.admin_url("/v1/table"),
            &[],
            "",
        )
        .await
        .unwrap();
        let j = r.json();
        let routes = j["routes"].as_array().unwrap();
        let orders = routes.iter().find(|r| r["id"] == "orders").unwrap();
        let w = orders["weights"].as_object().unwrap();
        w.iter()
            .find(|(_, v)| v.as_f64() == Some(100.0))
            .map(|(k, _)| k.clone())
            .unwrap_or_default()
    }

    pub async fn hold_in_force(&self) -> bool {
        let r = send(&client(), "GET", &self.proxy.admin_url("/v1/hold"), &[], "")
            .await
            .unwrap();
        !r.json()["hold"].is_null()
    }
}

/// Writes through the proxy from `conns` loops at about `per_sec` in total, each with a unique
/// id; records which were acknowledged (200) and which failed.
pub struct Load {
    pub stop: Arc<AtomicBool>,
    pub acked: Arc<Mutex<Vec<i64>>>,
    pub failed: Arc<Mutex<Vec<String>>>,
    /// (start, latency) of every acknowledged write.
    pub latencies: Arc<Mutex<Vec<(Instant, Duration)>>>,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

pub static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Load {
    pub fn start(proxy: &Proxy, conns: usize, per_sec: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let latencies = Arc::new(Mutex::new(Vec::new()));
        let gap = Duration::from_micros(1_000_000 * conns as u64 / per_sec.max(1));
        let mut tasks = Vec::new();
        for _ in 0..conns {
            let (stop, acked, failed, latencies) = (
                stop.clone(),
                acked.clone(),
                failed.clone(),
                latencies.clone(),
            );
            let base = proxy.url("/orders/");
            tasks.push(tokio::spawn(async move {
                let c = client();
                while !stop.load(Ordering::Relaxed) {
                    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed) as i64;
                    let t0 = Instant::now();
                    match send(&c, "POST", &format!("{base}{id}"), &[], "").await {
                        Ok(r) if r.status == 200 => {
                            acked.lock().unwrap().push(id);
                            latencies.lock().unwrap().push((t0, t0.elapsed()));
                        }
                        Ok(r) => failed
                            .lock()
                            .unwrap()
                            .push(format!("{id}: {} {}", r.status, r.body)),
                        Err(e) => failed.lock().unwrap().push(format!("{id}: {e}")),
                    }
                    let spent = t0.elapsed();
                    if spent < gap {
                        tokio::time::sleep(gap - spent).await;
                    }
                }
            }));
        }
        Load {
            stop,
            acked,
            failed,
            latencies,
            tasks,
        }
    }

    pub async fn finish(self) -> (Vec<i64>, Vec<String>, Vec<(Instant, Duration)>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let a = self.acked.lock().unwrap().clone();
        let f = self.failed.lock().unwrap().clone();
        let l = self.latencies.lock().unwrap().clone();
        (a, f, l)
    }
}

/// Samples both servers' read_only every few milliseconds; counts samples where both were
/// writable.
pub struct Sampler {
    pub stop: Arc<AtomicBool>,
    pub task: tokio::task::JoinHandle<(u64, u64)>,
}

impl Sampler {
    pub async fn start(a: &Maria, b: &Maria) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let (mut ca, mut cb) = (a.admin().await, b.admin().await);
        let st = stop.clone();
        let task = tokio::spawn(async move {
            let (mut samples, mut both) = (0, 0);
            while !st.load(Ordering::Relaxed) {
                let ra: Option<i64> = ca.query_first("SELECT @@GLOBAL.read_only").await.unwrap();
                let rb: Option<i64> = cb.query_first("SELECT @@GLOBAL.read_only").await.unwrap();
                // Read a again after b: a sample counts as "both writable" only if a was
                // writable before and after b was seen writable.
                let ra2: Option<i64> = ca.query_first("SELECT @@GLOBAL.read_only").await.unwrap();
                samples += 1;
                if ra == Some(0) && rb == Some(0) && ra2 == Some(0) {
                    both += 1;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (samples, both)
        });
        Sampler { stop, task }
    }

    pub async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

pub fn assert_exactly_once(acked: &[i64], on_primary: &[i64]) {
    let have: BTreeSet<i64> = on_primary.iter().copied().collect();
    assert_eq!(have.len(), on_primary.len(), "duplicate ids on the primary");
    let missing: Vec<i64> = acked
        .iter()
        .filter(|id| !have.contains(id))
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged writes missing on the primary: {missing:?}"
    );
}
