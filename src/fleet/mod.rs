//! Fleet mode (`serve --etcd`): several proxies share one live table and its history in etcd.
//!
//! A change through any node's admin API is one etcd transaction that checks the version
//! ([`etcd::EtcdStore`], the ledger's store); every node watches the prefix and applies new
//! versions ([`sync`]); each node confirms under a lease the version it serves or the one it
//! refused ([`nodes`]), which `GET /v1/fleet` and `wait_fleet` read; a hold is written once
//! and applied by every node ([`hold`]); each node keeps its last applied table on disk
//! ([`disk`]) so it can start while etcd is unreachable.
//!
//! Keys under the prefix (default `/switchyard`): `version` (the newest version, decimal),
//! `head` (its record with the files-vs-API state), `versions/N` (every record), `nodes/NAME`
//! (each node's confirmation, leased) and `hold`.

pub mod disk;
pub mod etcd;
pub mod hold;
pub mod nodes;
pub mod sync;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::watch;

use crate::admin::Ledger;
pub use nodes::NodeReport;

/// Environment variable holding the etcd password (`--etcd-user`); never on the command line.
pub const PASSWORD_ENV: &str = "SWITCHYARD_ETCD_PASSWORD";

/// Fleet options of `switchyard serve`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FleetArgs {
    /// etcd endpoints, comma-separated (`http://127.0.0.1:2379,http://10.0.0.2:2379`): run as
    /// one node of a fleet whose table and history are in etcd. Off by default.
    #[arg(long, value_delimiter = ',', value_name = "URL[,URL]")]
    pub etcd: Vec<String>,
    /// This node's name in the fleet (required with --etcd); unique per node.
    #[arg(long, requires = "etcd")]
    pub node_id: Option<String>,
    /// Key prefix of the fleet in etcd; fleets on one etcd use different prefixes.
    #[arg(long, default_value = "/switchyard", requires = "etcd")]
    pub etcd_prefix: String,
    /// CA certificate (PEM) that signed etcd's server certificate (for `https://` endpoints).
    #[arg(long, requires = "etcd")]
    pub etcd_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's client-certificate authentication.
    #[arg(long, requires = "etcd_key_file")]
    pub etcd_cert_file: Option<PathBuf>,
    /// Private key (PEM) of --etcd-cert-file.
    #[arg(long, requires = "etcd_cert_file")]
    pub etcd_key_file: Option<PathBuf>,
    /// etcd user name; the password is read from `SWITCHYARD_ETCD_PASSWORD`.
    #[arg(long, requires = "etcd")]
    pub etcd_user: Option<String>,
    /// Seconds a node's confirmation lease lives without renewal: a node that stops is dropped
    /// from the fleet this long after its last renewal.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub fleet_lease_ttl: u64,
    /// Milliseconds an etcd call may take before etcd counts as unreachable (the change is then
    /// refused with 503).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(100..=60000))]
    pub etcd_timeout_ms: u64,
    /// Milliseconds between full re-reads of the fleet's state, which catch anything a watch
    /// missed and notice etcd's return.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=600000))]
    pub fleet_reconcile_ms: u64,
}

/// Why fleet mode could not start or a fleet call failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("--node-id is required with --etcd")]
    NoNodeId,
    #[error("--node-id {0:?}: use letters, digits, '-', '_' and '.' only")]
    BadNodeId(String),
    #[error("reading {path}: {error}")]
    File { path: String, error: std::io::Error },
    #[error("--etcd-user needs the password in {PASSWORD_ENV}")]
    NoPassword,
    #[error("etcd: {0}")]
    Etcd(String),
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    #[error("decoding {key}: {error}")]
    Decode {
        key: String,
        error: serde_json::Error,
    },
    #[error("encoding: {0}")]
    Encode(serde_json::Error),
    #[error("{0}")]
    NotConfirmed(String),
    #[error("fleet runtime: {0}")]
    Runtime(String),
}

impl FleetError {
    /// True when the error means etcd could not be reached (answer 503, retry later).
    pub fn unreachable(&self) -> bool {
        matches!(self, FleetError::Timeout(_) | FleetError::Etcd(_))
    }
}

/// The keys of one fleet.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (a trailing `/` is ignored).
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }
    /// Everything of the fleet.
    pub fn all(&self) -> String {
        format!("{}/", self.prefix)
    }
    /// The newest version number, decimal.
    pub fn version(&self) -> String {
        format!("{}/version", self.prefix)
    }
    /// The newest record with its files-vs-API state ([`etcd::Head`]).
    pub fn head(&self) -> String {
        format!("{}/head", self.prefix)
    }
    /// Every record.
    pub fn records(&self) -> String {
        format!("{}/versions/", self.prefix)
    }
    /// Record `v` (zero-padded so that keys sort by version).
    pub fn record(&self, v: u64) -> String {
        format!("{}/versions/{v:020}", self.prefix)
    }
    /// Every node's confirmation.
    pub fn nodes(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }
    /// Node `id`'s confirmation.
    pub fn node(&self, id: &str) -> String {
        format!("{}/nodes/{id}", self.prefix)
    }
    /// The fleet-wide hold.
    pub fn hold(&self) -> String {
        format!("{}/hold", self.prefix)
    }
}

/// What this node knows of the fleet, updated by the watch.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// The fleet's newest version (from `head`).
    pub head: u64,
    /// Whether the last etcd call succeeded.
    pub etcd_up: bool,
    /// Every leased node's confirmation, by name.
    pub nodes: BTreeMap<String, NodeReport>,
}

/// One node of the fleet: its etcd client, its runtime, and what it knows of the others.
pub struct Fleet {
    /// This node's name.
    pub node: String,
    keys: Keys,
    client: etcd_client::Client,
    rt: tokio::runtime::Handle,
    ttl: Duration,
    timeout: Duration,
    reconcile: Duration,
    state_dir: Option<PathBuf>,
    ledger: OnceLock<Arc<Ledger>>,
    view: watch::Sender<View>,
    /// etcd revision of the last hold or release applied here.
    hold_applied: watch::Sender<u64>,
    /// `--etcd-user` and its password, until the first successful authentication.
    login: parking_lot::Mutex<Option<(String, String)>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("node", &self.node)
            .field("keys", &self.keys)
            .finish()
    }
}

fn read(path: &PathBuf) -> Result<Vec<u8>, FleetError> {
    std::fs::read(path).map_err(|error| FleetError::File {
        path: path.display().to_string(),
        error,
    })
}

impl Fleet {
    /// Builds the etcd client on `rt` (no connection is made yet: etcd may be down at start).
    pub fn new(
        args: &FleetArgs,
        state_dir: Option<PathBuf>,
        rt: tokio::runtime::Handle,
    ) -> Result<Fleet, FleetError> {
        let node = args.node_id.clone().ok_or(FleetError::NoNodeId)?;
        if node.is_empty()
            || !node
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(FleetError::BadNodeId(node));
        }
        let timeout = Duration::from_millis(args.etcd_timeout_ms);
        let mut opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout)
            .with_keep_alive(Duration::from_secs(2), timeout)
            .with_keep_alive_while_idle(true);
        if args.etcd_ca_file.is_some() || args.etcd_cert_file.is_some() {
            let mut tls = etcd_client::TlsOptions::new();
            if let Some(ca) = &args.etcd_ca_file {
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
            }
            if let (Some(c), Some(k)) = (&args.etcd_cert_file, &args.etcd_key_file) {
                tls = tls.identity(etcd_client::Identity::from_pem(read(c)?, read(k)?));
            }
            opts = opts.with_tls(tls);
        }
        let login = match &args.etcd_user {
            Some(user) => Some((
                user.clone(),
                std::env::var(PASSWORD_ENV).map_err(|_| FleetError::NoPassword)?,
            )),
            None => None,
        };
        // The channel is lazy: no connection yet. Credentials are given once etcd answers
        // ([`Fleet::login`]), so that a node starts from its disk copy while etcd is down;
        // from then on an expired token (etcd's default TTL is 5 minutes, and a restarted
        // etcd forgets its tokens) is renewed by the client.
        opts = opts.with_auto_token_refresh(true);
        let endpoints = args.etcd.clone();
        let client = rt
            .block_on(async {
                tokio::time::timeout(
                    timeout * 2,
                    etcd_client::Client::connect(endpoints, Some(opts)),
                )
                .await
            })
            .map_err(|_| FleetError::Timeout(timeout * 2))?
            .map_err(|e| FleetError::Etcd(e.to_string()))?;
        Ok(Fleet {
            node,
            keys: Keys::new(&args.etcd_prefix),
            client,
            rt,
            ttl: Duration::from_secs(args.fleet_lease_ttl),
            timeout,
            reconcile: Duration::from_millis(args.fleet_reconcile_ms),
            state_dir,
            ledger: OnceLock::new(),
            view: watch::channel(View::default()).0,
            hold_applied: watch::channel(0).0,
            login: parking_lot::Mutex::new(login),
        })
        .inspect(|f| {
            if let Err(e) = f.rt.block_on(f.login()) {
                tracing::warn!(error = %e, "cannot authenticate to etcd yet");
            }
        })
    }

    /// Authenticates with `--etcd-user` if that has not succeeded yet (a no-op without a user,
    /// or once done). Every loop calls it before talking to etcd.
    pub async fn login(&self) -> Result<(), FleetError> {
        let Some(creds) = self.login.lock().clone() else {
            return Ok(());
        };
        let mut c = self.client.clone();
        self.timed(c.update_user(Some(creds))).await?;
        *self.login.lock() = None;
        tracing::info!("authenticated to etcd");
        Ok(())
    }

    /// The ledger's store: versions and history in etcd.
    pub fn store(&self) -> etcd::EtcdStore {
        etcd::EtcdStore::new(
            self.client.clone(),
            self.keys.clone(),
            self.rt.clone(),
            self.timeout,
        )
    }

    /// This node's last applied table on disk, if `--state` holds one.
    pub fn last_known(
        &self,
    ) -> Option<(
        crate::admin::history::Record,
        crate::admin::history::FilesState,
    )> {
        self.state_dir.as_deref().and_then(disk::load)
    }

    /// Starts the watch, the confirmations and the disk copy for `ledger` on the fleet
    /// runtime.
    pub fn start(self: &Arc<Self>, ledger: Arc<Ledger>) {
        let _ = self.ledger.set(ledger.clone());
        self.rt.spawn(sync::run(self.clone(), ledger.clone()));
        self.rt.spawn(nodes::confirm(self.clone(), ledger.clone()));
        if let Some(dir) = self.state_dir.clone() {
            self.rt.spawn(disk::keep(dir, ledger));
        }
    }

    /// What this node knows of the fleet now.
    pub fn view(&self) -> View {
        self.view.borrow().clone()
    }

    /// True while this node reaches etcd.
    pub fn etcd_up(&self) -> bool {
        self.view.borrow().etcd_up
    }

    fn set_etcd_up(&self, up: bool) {
        self.view.send_if_modified(|v| {
            if v.etcd_up == up {
                return false;
            }
            if up {
                tracing::info!("etcd reachable: following the fleet's table");
            } else {
                tracing::error!("etcd unreachable: serving the last table; changes are refused until it returns");
            }
            v.etcd_up = up;
            true
        });
        crate::metrics::METRICS.fleet_etcd_up.set(i64::from(up));
    }

    /// `f` with the etcd timeout, as a [`FleetError`].
    async fn timed<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, FleetError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(FleetError::Etcd(e.to_string())),
            Err(_) => Err(FleetError::Timeout(self.timeout)),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Parses a `wait_fleet` timeout: `500ms`, `5s`, `2m`, or a bare number of seconds; empty
/// means the default of 30 s.
pub fn parse_wait(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(DEFAULT_WAIT);
    }
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("wait_fleet={s:?}: expected a duration like 500ms, 5s or 2m"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        _ => return Err(format!("wait_fleet={s:?}: the unit must be ms, s or m")),
    };
    if d.is_zero() || d > Duration::from_secs(600) {
        return Err(format!("wait_fleet={s:?}: must be between 1ms and 10m"));
    }
    Ok(d)
}

/// `wait_fleet` without a value, and how long a fleet hold waits for every node's
/// confirmation when the call does not say.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_forms() {
        assert_eq!(parse_wait("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_wait("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_wait("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_wait("").unwrap(), DEFAULT_WAIT);
        assert!(parse_wait("5h").is_err());
        assert!(parse_wait("0s").is_err());
        assert!(parse_wait("x").is_err());
    }

    #[test]
    fn keys_sort_by_version() {
        let k = Keys::new("/sy/");
        assert_eq!(k.version(), "/sy/version");
        assert!(k.record(9) < k.record(10));
        assert!(k.record(10).starts_with(&k.records()));
    }
}
