//! `switchyard db replicate`: points the target at the source with GTID auto-positioning
//! (after the 1236 gap check), makes it read-only, and waits until both threads run. The
//! cutover's reverse step uses [`point_at`] the same way.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::check::{self, Verdict};
use super::conn::{redact, Endpoint, Server};
use super::status::ReplicaStatus;
use super::DbError;

/// The replication account's password variable.
pub const REPL_PASSWORD_ENV: &str = "SWITCHYARD_REPL_PASSWORD";

/// What `db replicate` did.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub source: String,
    pub target: String,
    /// The gap check's figure and verdict.
    pub gap_check: check::Check,
    /// Statements run on the target (password redacted).
    pub statements: Vec<String>,
    pub replica: Option<ReplicaStatus>,
    /// Why nothing was changed, when the gap check failed.
    pub refused: Option<String>,
}

impl Outcome {
    pub fn human(&self) -> String {
        if let Some(r) = &self.refused {
            return format!("refused, nothing changed: {r}\n");
        }
        let mut out = format!("{} now replicates from {}\n", self.target, self.source);
        for s in &self.statements {
            out.push_str(&format!("  {s}\n"));
        }
        if let Some(r) = &self.replica {
            out.push_str(&format!(
                "IO thread {}, SQL thread {}, {} s behind\n",
                r.io_running,
                r.sql_running,
                r.seconds_behind
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "?".into())
            ));
        }
        out
    }
}

/// `HOST:PORT` split; the port is required.
pub fn parse_address(a: &str) -> Result<(String, u16), DbError> {
    let (h, p) = a
        .rsplit_once(':')
        .ok_or_else(|| DbError::Usage(format!("address {a:?}: expected HOST:PORT")))?;
    let p: u16 = p
        .parse()
        .map_err(|_| DbError::Usage(format!("address {a:?}: {p:?} is not a port")))?;
    Ok((h.trim_matches(['[', ']']).to_string(), p))
}

/// The replication password, required.
pub fn repl_password() -> Result<String, DbError> {
    std::env::var(REPL_PASSWORD_ENV)
        .ok()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| {
            DbError::Usage(format!(
                "the replication account's password must be in {REPL_PASSWORD_ENV}"
            ))
        })
}

/// Runs `db replicate`.
pub async fn run(
    s: &Endpoint,
    t: &Endpoint,
    repl_user: &str,
    source_address: Option<&str>,
    timeout: Duration,
) -> Result<Outcome, DbError> {
    let password = repl_password()?;
    let (host, port) = match source_address {
        Some(a) => parse_address(a)?,
        None => (s.host.clone(), s.port),
    };
    let mut source = s.connect().await?;
    let mut target = t.connect().await?;
    if source.flavor != target.flavor {
        return Err(DbError::Usage(format!(
            "{} is {} and {} is {}: replication needs the same flavor",
            s,
            source.flavor.name(),
            t,
            target.flavor.name()
        )));
    }
    let ss = source.status().await?;
    let ts = target.status().await?;
    let gap_check = check::gap(&mut source, &ss, &ts).await?;
    let mut out = Outcome {
        source: s.to_string(),
        target: t.to_string(),
        gap_check: gap_check.clone(),
        statements: vec![],
        replica: None,
        refused: None,
    };
    if gap_check.verdict == Verdict::Fail {
        out.refused = Some(format!("{}: {}", gap_check.figure, gap_check.detail));
        return Ok(out);
    }
    out.statements = point_at(&mut target, &host, port, repl_user, &password, false, false).await?;
    out.replica = Some(wait_running(&mut target, timeout).await?);
    Ok(out)
}

/// Makes `replica` read-only and replicate from `host:port` with GTIDs; returns the statements
/// run (redacted), each with its duration. `demote`: `replica` was a primary until now.
/// `known_fresh`: the caller knows `replica` is read-only and has no replication configured
/// (the cutover's old primary, checked just before), so the fence and the probe are skipped.
pub async fn point_at(
    replica: &mut Server,
    host: &str,
    port: u16,
    user: &str,
    password: &str,
    demote: bool,
    known_fresh: bool,
) -> Result<Vec<String>, DbError> {
    let f = replica.flavor;
    let rds = replica.rds;
    let mut ran = Vec::new();
    let mut timed = |sql: String, t0: Instant| {
        ran.push(format!(
            "{sql} ({:.1} ms)",
            t0.elapsed().as_secs_f64() * 1000.0
        ));
    };
    if !known_fresh {
        // Read-only first: it must never be writable while it replicates.
        if !rds {
            let t0 = Instant::now();
            replica.exec(f.fence()).await?;
            timed(f.fence().to_string(), t0);
        }
        if replica.replica().await?.is_some() {
            let t0 = Instant::now();
            replica.exec(f.stop_replica(rds)).await?;
            timed(f.stop_replica(rds).to_string(), t0);
        }
    }
    let change = f.change_source(rds, host, port, user, password, demote);
    let t0 = Instant::now();
    replica.exec(&change).await?;
    timed(redact(&change), t0);
    let t0 = Instant::now();
    replica.exec(f.start_replica(rds)).await?;
    timed(f.start_replica(rds).to_string(), t0);
    Ok(ran)
}

/// Waits until both replication threads run; on the deadline, the threads' last error.
pub async fn wait_running(
    replica: &mut Server,
    timeout: Duration,
) -> Result<ReplicaStatus, DbError> {
    let deadline = Instant::now() + timeout;
    loop {
        let r = replica.replica().await?;
        if let Some(r) = &r {
            if r.running() {
                return Ok(r.clone());
            }
        }
        let stopped_on_error = r.as_ref().is_some_and(|r| {
            r.io_running.eq_ignore_ascii_case("no") && r.last_io_errno != 0
                || r.sql_running.eq_ignore_ascii_case("no") && r.last_sql_errno != 0
        });
        if stopped_on_error || Instant::now() >= deadline {
            let why = r
                .as_ref()
                .and_then(ReplicaStatus::last_error)
                .unwrap_or_else(|| {
                    r.as_ref()
                        .map(|r| {
                            format!("IO thread {}, SQL thread {}", r.io_running, r.sql_running)
                        })
                        .unwrap_or_else(|| "not a replica".into())
                });
            return Err(DbError::Query {
                endpoint: replica.ep.to_string(),
                sql: replica.flavor.replica_status().into(),
                message: format!("replication is not running: {why}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
