//! The database cutover (`switchyard db`): status, preflight checks, GTID replication set-up,
//! and the cutover itself, which holds the application's requests at the proxy for a moment
//! instead of running master-master: fence the source, wait until the target applied exactly
//! what the source wrote, promote the target, optionally make the old source its replica,
//! switch the routes, release.
//!
//! One code path for MySQL 8 and MariaDB 10.x behind [`flavor::Flavor`] (detected from
//! `@@version`), with the RDS procedures where there is no SUPER. GTID set arithmetic is left to
//! the server; [`gtid`] only parses.

pub mod check;
pub mod conn;
pub mod cutover;
pub mod flavor;
pub mod gtid;
pub mod journal;
pub mod replicate;
pub mod status;

use std::path::PathBuf;
use std::time::Duration;

use crate::admin::client::ClientError;
use crate::control::aws::parse_duration;
use crate::control::{table, Output};
use conn::{Endpoint, Role};

/// Why a `db` command could not run (exit 2). A check that says no, or a cutover that aborted
/// safely, is not an error: those exit 1 with their report.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{role} URL: {message}")]
    Url { role: Role, message: String },
    #[error("{endpoint}: cannot connect: {message}")]
    Connect { endpoint: String, message: String },
    #[error("{endpoint}: {message} (statement: {sql})")]
    Query {
        endpoint: String,
        sql: String,
        message: String,
    },
    #[error("admin API: {0}")]
    Admin(#[from] ClientError),
    #[error("{0}")]
    Usage(String),
    #[error("journal {path}: {message}")]
    Journal { path: String, message: String },
}

/// `switchyard db ...`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

/// The two servers.
#[derive(Debug, Clone, clap::Args)]
pub struct Servers {
    /// The current primary: `mysql://USER:PASSWORD@HOST:PORT` (password also from
    /// SWITCHYARD_SOURCE_PASSWORD). Optional with `--resume` (taken from the journal).
    #[arg(long, value_name = "URL")]
    pub source: Option<String>,
    /// The replica to promote: `mysql://USER:PASSWORD@HOST:PORT` (password also from
    /// SWITCHYARD_TARGET_PASSWORD).
    #[arg(long, value_name = "URL")]
    pub target: Option<String>,
    /// Print JSON (one event per line for `cutover`/`rollback`).
    #[arg(long)]
    pub json: bool,
}

impl Servers {
    /// Both endpoints, parsed; each missing one is an error naming its flag.
    pub fn endpoints(&self) -> Result<(Endpoint, Endpoint), DbError> {
        let s = self
            .source
            .as_deref()
            .ok_or_else(|| DbError::Usage("--source URL is required".into()))?;
        let t = self
            .target
            .as_deref()
            .ok_or_else(|| DbError::Usage("--target URL is required".into()))?;
        let s = Endpoint::parse(Role::Source, s)?;
        let t = Endpoint::parse(Role::Target, t)?;
        if s.address() == t.address() {
            return Err(DbError::Usage(format!(
                "--source and --target are the same server ({})",
                s.address()
            )));
        }
        Ok((s, t))
    }
}

/// Thresholds of the preflight.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckOpts {
    /// Fail `lag` when the target is further behind than this.
    #[arg(long, value_name = "MS")]
    pub max_lag_ms: Option<u64>,
    /// Warn when the source keeps binlogs for less than this (`24h`, `7d` as hours).
    #[arg(long, value_parser = parse_duration, default_value = "24h", value_name = "DURATION")]
    pub retention_horizon: Duration,
    /// Warn when a transaction on the source has been open longer than this.
    #[arg(long, value_parser = parse_duration, default_value = "10s", value_name = "DURATION")]
    pub long_transaction: Duration,
    /// The replication account (not reported as a read_only bypass).
    #[arg(long, value_name = "USER")]
    pub repl_user: Option<String>,
}

/// Where the cutover journal lives.
#[derive(Debug, Clone, clap::Args)]
pub struct StateOpts {
    /// Directory of the cutover journal (`db-cutover.json`). Default: $SWITCHYARD_STATE_DIR,
    /// else $XDG_STATE_HOME/switchyard, else ~/.local/state/switchyard.
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
}

impl StateOpts {
    pub fn dir(&self) -> PathBuf {
        self.state
            .clone()
            .unwrap_or_else(crate::cli::default_state_dir)
    }
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Action {
    /// Each server's flavor, id, read_only, GTID position, replication threads, lag; and an
    /// interrupted cutover, if the journal holds one.
    Status {
        #[command(flatten)]
        servers: Servers,
        #[command(flatten)]
        state: StateOpts,
    },
    /// The preflight: named checks with ok/warn/fail and their figures. Exit 0 when nothing
    /// failed, 1 when a check failed, 2 when the checks could not run.
    Check {
        #[command(flatten)]
        servers: Servers,
        #[command(flatten)]
        opts: CheckOpts,
    },
    /// Point the target at the source with GTID auto-positioning, make it read-only, and wait
    /// until both replication threads run. The password comes from SWITCHYARD_REPL_PASSWORD.
    Replicate {
        #[command(flatten)]
        servers: Servers,
        /// The replication account (must exist on the source with REPLICATION SLAVE).
        #[arg(long, value_name = "USER")]
        repl_user: String,
        /// The source's address as the target reaches it, if not the one in --source.
        #[arg(long, value_name = "HOST:PORT")]
        source_address: Option<String>,
        /// How long to wait for both threads to run.
        #[arg(long, value_parser = parse_duration, default_value = "30s", value_name = "DURATION")]
        timeout: Duration,
    },
    /// Move the primary from --source to --target under a proxy-side hold (see the README).
    Cutover(cutover::Args),
    /// Undo a cutover: the same arguments as the cutover it undoes; runs the same sequence from
    /// the target back to the source. Needs reverse replication running and caught up.
    Rollback(cutover::Args),
}

/// Runs a `db` subcommand.
pub async fn run(args: Args) -> Result<Output, DbError> {
    match args.action {
        Action::Status { servers, state } => status(&servers, &state).await,
        Action::Check { servers, opts } => check_cmd(&servers, &opts).await,
        Action::Replicate {
            servers,
            repl_user,
            source_address,
            timeout,
        } => {
            let (s, t) = servers.endpoints()?;
            let r = replicate::run(&s, &t, &repl_user, source_address.as_deref(), timeout).await?;
            Ok(Output::new(servers.json, &r, replicate::Outcome::human))
        }
        Action::Cutover(a) => cutover::run(a, cutover::Direction::Forward).await,
        Action::Rollback(a) => cutover::run(a, cutover::Direction::Back).await,
    }
}

async fn status(servers: &Servers, state: &StateOpts) -> Result<Output, DbError> {
    let journal = journal::Journal::load(&state.dir())?;
    let (s, t) = servers.endpoints()?;
    let mut source = s.connect().await?;
    let mut target = t.connect().await?;
    let ss = source.status().await?;
    let ts = target.status().await?;
    // Lag is measured against whichever of the two replicates from the other.
    let (lag_tx, lag_s) = if ts.replica.is_some() {
        (
            status::lag_transactions(&mut source, &ss, &ts).await?,
            ts.replica.as_ref().and_then(|r| r.seconds_behind),
        )
    } else if ss.replica.is_some() {
        (
            status::lag_transactions(&mut target, &ts, &ss).await?,
            ss.replica.as_ref().and_then(|r| r.seconds_behind),
        )
    } else {
        (None, None)
    };
    let view = StatusView {
        servers: vec![ss, ts],
        lag_transactions: lag_tx,
        lag_seconds: lag_s,
        cutover: journal.filter(|j| !j.finished()),
    };
    Ok(Output::new(servers.json, &view, StatusView::human))
}

/// `db status` as JSON.
#[derive(Debug, serde::Serialize)]
pub struct StatusView {
    pub servers: Vec<status::ServerStatus>,
    pub lag_transactions: Option<u64>,
    pub lag_seconds: Option<u64>,
    /// An interrupted cutover from the journal.
    pub cutover: Option<journal::Journal>,
}

impl StatusView {
    fn human(&self) -> String {
        let mut rows = vec![vec![
            "SERVER".to_string(),
            "ADDRESS".into(),
            "FLAVOR".into(),
            "ID".into(),
            "READ_ONLY".into(),
            "GTID".into(),
            "REPLICATION".into(),
        ]];
        for s in &self.servers {
            let repl = match &s.replica {
                None => "-".to_string(),
                Some(r) => {
                    let mut x = format!(
                        "from {}:{} io={} sql={}",
                        r.source_host, r.source_port, r.io_running, r.sql_running
                    );
                    if let Some(e) = r.last_error() {
                        x.push_str(&format!(" ({e})"));
                    }
                    x
                }
            };
            rows.push(vec![
                s.role.to_string(),
                s.address.clone(),
                format!("{} {}", s.flavor.name(), s.version),
                s.server_id.to_string(),
                if s.super_read_only {
                    "super".into()
                } else if s.read_only {
                    "ON".into()
                } else {
                    "OFF".into()
                },
                if s.gtid_executed.is_empty() {
                    "(empty)".into()
                } else {
                    s.gtid_executed.clone()
                },
                repl,
            ]);
        }
        let mut out = table(&rows);
        out.push_str(&format!(
            "lag: {} s, {} transactions\n",
            self.lag_seconds
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into()),
            self.lag_transactions
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into())
        ));
        if let Some(j) = &self.cutover {
            out.push_str(&j.interrupted_line());
        }
        out
    }
}

async fn check_cmd(servers: &Servers, opts: &CheckOpts) -> Result<Output, DbError> {
    let (s, t) = servers.endpoints()?;
    let mut source = s.connect().await?;
    let mut target = t.connect().await?;
    let th = thresholds(opts, &s, &t);
    let report = check::run(&mut source, &mut target, &th).await?;
    let code = if report.verdict() == check::Verdict::Fail {
        1
    } else {
        0
    };
    Ok(Output::new(servers.json, &report, |r| checks_table(&r.checks)).with_code(code))
}

/// The thresholds for `opts`, with the two connecting accounts and the replication account
/// counted as switchyard's own.
pub fn thresholds(opts: &CheckOpts, s: &Endpoint, t: &Endpoint) -> check::Thresholds {
    let mut own = vec![s.user.clone(), t.user.clone()];
    own.extend(opts.repl_user.clone());
    check::Thresholds {
        max_lag_ms: opts.max_lag_ms,
        retention_horizon_s: opts.retention_horizon.as_secs(),
        long_transaction_s: opts.long_transaction.as_secs(),
        own_accounts: own,
    }
}

/// The checks as a table with a closing verdict line.
pub fn checks_table(checks: &[check::Check]) -> String {
    let mut rows = vec![vec![
        "CHECK".to_string(),
        "VERDICT".into(),
        "FIGURE".into(),
        "RULE".into(),
    ]];
    for c in checks {
        rows.push(vec![
            c.name.clone(),
            c.verdict.as_str().into(),
            c.figure.clone(),
            c.detail.clone(),
        ]);
    }
    let mut out = table(&rows);
    let fails = checks
        .iter()
        .filter(|c| c.verdict == check::Verdict::Fail)
        .count();
    let warns = checks
        .iter()
        .filter(|c| c.verdict == check::Verdict::Warn)
        .count();
    out.push_str(&format!(
        "{} checks: {fails} failed, {warns} warnings\n",
        checks.len()
    ));
    out
}
