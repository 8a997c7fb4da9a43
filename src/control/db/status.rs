//! `switchyard db status`: what each server is (flavor, version, id, read-only), where it
//! stands (GTID position), and how its replication runs (threads, last errors, lag in seconds
//! and in transactions).

use mysql_async::Row;
use serde::{Deserialize, Serialize};

use super::conn::{Role, Server};
use super::flavor::Flavor;
use super::gtid::{MariaPos, MysqlSet};
use super::DbError;

/// One server's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerStatus {
    pub role: Role,
    pub address: String,
    pub flavor: Flavor,
    pub version: String,
    pub rds: bool,
    pub server_id: u64,
    pub read_only: bool,
    /// MySQL only (always false on MariaDB).
    pub super_read_only: bool,
    pub log_bin: bool,
    pub log_replica_updates: bool,
    /// MySQL `gtid_mode` (`ON` wanted); MariaDB always `ON`.
    pub gtid_mode: String,
    /// MySQL `enforce_gtid_consistency`; MariaDB `gtid_strict_mode`.
    pub gtid_consistency: String,
    /// Executed GTIDs (MySQL `gtid_executed`, MariaDB `gtid_current_pos`).
    pub gtid_executed: String,
    /// What it wrote to its binlog (MariaDB `gtid_binlog_pos`; MySQL the same as executed).
    pub gtid_binlog: String,
    /// What it applied as a replica (MariaDB `gtid_slave_pos`; MySQL the same as executed).
    pub gtid_applied: String,
    /// MySQL `gtid_purged` (empty on MariaDB).
    pub gtid_purged: String,
    /// Its replication, when it is (or was) a replica.
    pub replica: Option<ReplicaStatus>,
}

/// Replication threads as the server reports them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ReplicaStatus {
    pub io_running: String,
    pub sql_running: String,
    pub source_host: String,
    pub source_port: u16,
    pub source_server_id: Option<u64>,
    pub seconds_behind: Option<u64>,
    pub last_io_errno: u64,
    pub last_io_error: String,
    pub last_sql_errno: u64,
    pub last_sql_error: String,
    /// MariaDB `Using_Gtid`; MySQL `Auto_Position`.
    pub gtid_mode: String,
}

impl ReplicaStatus {
    /// Both threads running.
    pub fn running(&self) -> bool {
        self.io_running.eq_ignore_ascii_case("yes") && self.sql_running.eq_ignore_ascii_case("yes")
    }

    /// GTID auto-positioning in use.
    pub fn uses_gtid(&self) -> bool {
        !matches!(
            self.gtid_mode.to_ascii_lowercase().as_str(),
            "no" | "0" | ""
        )
    }

    /// The last error of either thread, if any.
    pub fn last_error(&self) -> Option<String> {
        if self.last_io_errno != 0 {
            Some(format!(
                "IO thread error {}: {}",
                self.last_io_errno, self.last_io_error
            ))
        } else if self.last_sql_errno != 0 {
            Some(format!(
                "SQL thread error {}: {}",
                self.last_sql_errno, self.last_sql_error
            ))
        } else {
            None
        }
    }
}

fn text(row: &Row, col: &str) -> String {
    row.get_opt::<Option<String>, &str>(col)
        .and_then(Result::ok)
        .flatten()
        .unwrap_or_default()
}

fn num(row: &Row, col: &str) -> Option<u64> {
    let s = text(row, col);
    s.trim().parse().ok()
}

fn flag(v: Option<String>) -> bool {
    matches!(
        v.unwrap_or_default().to_ascii_uppercase().as_str(),
        "1" | "ON" | "YES"
    )
}

impl Server {
    /// Reads this server's status.
    pub async fn status(&mut self) -> Result<ServerStatus, DbError> {
        let f = self.flavor;
        let row = self
            .rows(f.settings())
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| self.unexpected(f.settings(), "no row"))?;
        let col = |i: usize| -> Option<String> {
            row.get_opt::<Option<String>, usize>(i)
                .and_then(Result::ok)
                .flatten()
        };
        let (log_bin, log_replica_updates) = (flag(col(0)), flag(col(1)));
        let server_id = col(2).and_then(|s| s.parse().ok()).unwrap_or(0);
        let (read_only, super_read_only) = (flag(col(3)), flag(col(4)));
        let g = self
            .rows(f.gtid_settings())
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| self.unexpected(f.gtid_settings(), "no row"))?;
        let gcol = |i: usize| -> String {
            g.get_opt::<Option<String>, usize>(i)
                .and_then(Result::ok)
                .flatten()
                .unwrap_or_default()
        };
        let gtid_mode = gcol(0);
        let gtid_consistency = gcol(1);
        let gtid_executed = self.gtid(f.executed()).await?;
        let gtid_binlog = self.gtid(f.written()).await?;
        let gtid_applied = self.gtid(f.applied()).await?;
        let gtid_purged = match f.purged() {
            Some(sql) => self.gtid(sql).await?,
            None => String::new(),
        };
        let replica = self.replica().await?;
        Ok(ServerStatus {
            role: self.ep.role,
            address: self.ep.address(),
            flavor: f,
            version: self.version.clone(),
            rds: self.rds,
            server_id,
            read_only,
            super_read_only,
            log_bin,
            log_replica_updates,
            gtid_mode,
            gtid_consistency,
            gtid_executed,
            gtid_binlog,
            gtid_applied,
            gtid_purged,
            replica,
        })
    }

    /// A GTID variable, newlines removed.
    pub async fn gtid(&mut self, sql: &str) -> Result<String, DbError> {
        Ok(self
            .one::<String>(sql)
            .await?
            .unwrap_or_default()
            .replace(['\n', '\r'], ""))
    }

    /// Replication status, None when the server was never a replica.
    pub async fn replica(&mut self) -> Result<Option<ReplicaStatus>, DbError> {
        let f = self.flavor;
        let rows = self.rows(f.replica_status()).await?;
        let Some(row) = rows.into_iter().next() else {
            return Ok(None);
        };
        let c = f.replica_columns();
        Ok(Some(ReplicaStatus {
            io_running: text(&row, c.io_running),
            sql_running: text(&row, c.sql_running),
            source_host: text(&row, c.source_host),
            source_port: num(&row, c.source_port).unwrap_or(0) as u16,
            source_server_id: num(&row, c.source_server_id),
            seconds_behind: num(&row, c.seconds_behind),
            last_io_errno: num(&row, c.last_io_errno).unwrap_or(0),
            last_io_error: text(&row, c.last_io_error),
            last_sql_errno: num(&row, c.last_sql_errno).unwrap_or(0),
            last_sql_error: text(&row, c.last_sql_error),
            gtid_mode: text(&row, c.gtid_mode),
        }))
    }

    /// True when clients cannot write (MySQL: `super_read_only`; MariaDB: `read_only`).
    pub async fn fenced(&mut self) -> Result<bool, DbError> {
        let s = self.rows(self.flavor.settings()).await?;
        let row = s.into_iter().next();
        let get = |i: usize| {
            row.as_ref()
                .and_then(|r| r.get_opt::<Option<String>, usize>(i))
                .and_then(Result::ok)
                .flatten()
        };
        Ok(match self.flavor {
            Flavor::Mysql => flag(get(4)),
            Flavor::MariaDb => flag(get(3)),
        })
    }

    fn unexpected(&self, sql: &str, why: &str) -> DbError {
        DbError::Query {
            endpoint: self.ep.to_string(),
            sql: sql.to_string(),
            message: why.to_string(),
        }
    }
}

/// How far `replica` is behind `primary`, in transactions, computed from their positions:
/// MariaDB per domain from the parsed positions, MySQL by the server's `GTID_SUBTRACT` and a
/// count of the result. None when it cannot be told.
pub async fn lag_transactions(
    primary: &mut Server,
    p: &ServerStatus,
    r: &ServerStatus,
) -> Result<Option<u64>, DbError> {
    match p.flavor {
        Flavor::MariaDb => {
            let (Ok(pp), Ok(rp)) = (
                MariaPos::parse(&p.gtid_binlog),
                MariaPos::parse(&r.gtid_executed),
            ) else {
                return Ok(None);
            };
            Ok(Some(rp.behind(&pp)))
        }
        Flavor::Mysql => {
            let Some(sql) = Flavor::Mysql.subtract(&p.gtid_executed, &r.gtid_executed) else {
                return Ok(None);
            };
            let missing = primary.gtid(&sql).await?;
            Ok(MysqlSet::parse(&missing).ok().map(|s| s.count()))
        }
    }
}
