//! `switchyard db check`: the preflight. Named checks, each with a verdict computed from a
//! figure and a threshold, both shown. The cutover runs the same checks and refuses on any
//! failure.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::conn::Server;
use super::flavor::{self, Flavor, RDS_RETENTION};
use super::gtid::{MariaPos, MysqlSet};
use super::status::{lag_transactions, ServerStatus};
use super::DbError;

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
        }
    }
}

/// One named check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub verdict: Verdict,
    /// The figure the verdict came from (`lag 120 ms`, `3 sessions`, ...).
    pub figure: String,
    /// The threshold or rule it was held against, and what to do about a failure.
    pub detail: String,
}

fn check(
    name: &str,
    verdict: Verdict,
    figure: impl Into<String>,
    detail: impl Into<String>,
) -> Check {
    Check {
        name: name.to_string(),
        verdict,
        figure: figure.into(),
        detail: detail.into(),
    }
}

/// What the checks are held against.
#[derive(Debug, Clone)]
pub struct Thresholds {
    /// Replication lag above this fails `lag` (None: the check only reports).
    pub max_lag_ms: Option<u64>,
    /// Binlog retention shorter than this warns.
    pub retention_horizon_s: u64,
    /// An open transaction on the source older than this warns (the fence would wait for it).
    pub long_transaction_s: u64,
    /// Accounts that are expected to bypass `read_only` (switchyard's own, the replication
    /// account): not reported.
    pub own_accounts: Vec<String>,
}

/// The preflight's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub checks: Vec<Check>,
    pub source: ServerStatus,
    pub target: ServerStatus,
    /// Accounts `read_only` does not stop, with their live sessions (user -> session ids).
    pub bypass: BTreeMap<String, Vec<u64>>,
}

impl Report {
    /// The worst verdict.
    pub fn verdict(&self) -> Verdict {
        self.checks
            .iter()
            .map(|c| c.verdict)
            .max()
            .unwrap_or(Verdict::Ok)
    }

    pub fn failed(&self) -> Vec<&Check> {
        self.checks
            .iter()
            .filter(|c| c.verdict == Verdict::Fail)
            .collect()
    }
}

/// Runs every check of `source` -> `target` replication.
pub async fn run(
    source: &mut Server,
    target: &mut Server,
    t: &Thresholds,
) -> Result<Report, DbError> {
    // The replica first: the source, read after it, has executed at least everything the
    // replica had applied, so a write in between is not mistaken for an errant transaction.
    let d = target.status().await?;
    let s = source.status().await?;
    let mut out = Vec::new();

    // Flavor.
    if s.flavor != d.flavor {
        out.push(check(
            "flavor",
            Verdict::Fail,
            format!("source {} / target {}", s.flavor.name(), d.flavor.name()),
            "both servers must be the same flavor (MySQL to MySQL, MariaDB to MariaDB)",
        ));
    } else {
        out.push(check(
            "flavor",
            Verdict::Ok,
            format!("{} {} / {}", s.flavor.name(), s.version, d.version),
            "same flavor",
        ));
    }

    // GTID mode.
    for st in [&s, &d] {
        let name = format!("gtid_mode.{}", st.role);
        let c = match st.flavor {
            Flavor::Mysql => {
                let ok = st.gtid_mode.eq_ignore_ascii_case("ON")
                    && st.gtid_consistency.eq_ignore_ascii_case("ON");
                check(
                    &name,
                    if ok { Verdict::Ok } else { Verdict::Fail },
                    format!(
                        "gtid_mode={} enforce_gtid_consistency={}",
                        st.gtid_mode, st.gtid_consistency
                    ),
                    "both must be ON (set them before the snapshot the replica was made from)",
                )
            }
            Flavor::MariaDb => {
                let strict =
                    st.gtid_consistency == "1" || st.gtid_consistency.eq_ignore_ascii_case("ON");
                check(
                    &name,
                    if strict { Verdict::Ok } else { Verdict::Warn },
                    format!("gtid_strict_mode={}", if strict { "ON" } else { "OFF" }),
                    "gtid_strict_mode=ON makes an out-of-order or duplicate GTID an error instead of a silent divergence",
                )
            }
        };
        out.push(c);
    }

    // Binlogs.
    out.push(check(
        "binlog.source",
        if s.log_bin {
            Verdict::Ok
        } else {
            Verdict::Fail
        },
        format!("log_bin={}", on(s.log_bin)),
        "the source must write a binlog for the target to replicate",
    ));
    let tgt_ok = d.log_bin && d.log_replica_updates;
    out.push(check(
        "binlog.target",
        if tgt_ok { Verdict::Ok } else { Verdict::Fail },
        format!(
            "log_bin={} log_slave_updates={}",
            on(d.log_bin),
            on(d.log_replica_updates)
        ),
        "the target must log what it replicates, so the old source can replicate back from it after the cutover",
    ));

    // Server ids.
    out.push(check(
        "server_id",
        if s.server_id != d.server_id && s.server_id != 0 && d.server_id != 0 {
            Verdict::Ok
        } else {
            Verdict::Fail
        },
        format!("source {} / target {}", s.server_id, d.server_id),
        "server ids must differ (and not be 0), or replication ignores or loops events",
    ));

    // Replication from this source.
    out.push(match &d.replica {
        None => check(
            "replication",
            Verdict::Fail,
            "target is not a replica",
            "run `switchyard db replicate` first",
        ),
        Some(r) if r.source_server_id.is_some_and(|id| id != s.server_id) => check(
            "replication",
            Verdict::Fail,
            format!(
                "target replicates from server id {} at {}:{}",
                r.source_server_id.unwrap_or(0),
                r.source_host,
                r.source_port
            ),
            format!("the source's server id is {}", s.server_id),
        ),
        Some(r) if !r.running() => check(
            "replication",
            Verdict::Fail,
            format!("IO thread {} / SQL thread {}", r.io_running, r.sql_running),
            r.last_error()
                .unwrap_or_else(|| "a replication thread is stopped".into()),
        ),
        Some(r) if !r.uses_gtid() => check(
            "replication",
            Verdict::Fail,
            format!("GTID positioning: {}", r.gtid_mode),
            "replication must use GTID auto-positioning (run `switchyard db replicate`)",
        ),
        Some(r) => check(
            "replication",
            Verdict::Ok,
            format!(
                "both threads running from {}:{} (server id {})",
                r.source_host,
                r.source_port,
                r.source_server_id.unwrap_or(0)
            ),
            "target replicates from this source with GTIDs",
        ),
    });

    // The 1236 gap.
    out.push(gap(source, &s, &d).await?);

    // Errant transactions.
    out.push(errant(source, &s, &d).await?);

    // Target writable.
    out.push(check(
        "target_read_only",
        if d.read_only {
            Verdict::Ok
        } else {
            Verdict::Fail
        },
        format!("read_only={}", on(d.read_only)),
        "the target must be read-only until it is promoted (two writable servers is master-master)",
    ));

    // The fence: RDS has no SUPER, and read_only is a parameter-group setting there.
    if s.rds {
        out.push(check(
            "fence",
            Verdict::Fail,
            "source is RDS",
            "RDS sets read_only through the DB parameter group, which switchyard does not drive: fence it by hand, or move off RDS with a non-RDS source",
        ));
    }

    // Lag.
    let tx = lag_transactions(source, &s, &d).await?;
    let secs = d.replica.as_ref().and_then(|r| r.seconds_behind);
    let figure = format!(
        "{} s, {} transactions behind",
        secs.map(|v| v.to_string())
            .unwrap_or_else(|| "unknown".into()),
        tx.map(|v| v.to_string())
            .unwrap_or_else(|| "unknown".into())
    );
    out.push(match t.max_lag_ms {
        Some(max) => {
            let over = match secs {
                Some(v) => v * 1000 > max,
                None => true,
            };
            check(
                "lag",
                if over { Verdict::Fail } else { Verdict::Ok },
                figure,
                format!("at most {max} ms"),
            )
        }
        None => check(
            "lag",
            Verdict::Ok,
            figure,
            "reported only (no --max-lag-ms)",
        ),
    });

    // Long transactions and DDL on the source.
    let row = source.rows(flavor::LONG_TRANSACTIONS).await?;
    let (n, oldest) = row
        .into_iter()
        .next()
        .map(|r| {
            (
                r.get_opt::<Option<u64>, usize>(0)
                    .and_then(Result::ok)
                    .flatten()
                    .unwrap_or(0),
                r.get_opt::<Option<u64>, usize>(1)
                    .and_then(Result::ok)
                    .flatten()
                    .unwrap_or(0),
            )
        })
        .unwrap_or((0, 0));
    let ddl: u64 = source.one(flavor::RUNNING_DDL).await?.unwrap_or(0);
    out.push(check(
        "source_transactions",
        if oldest > t.long_transaction_s || ddl > 0 {
            Verdict::Warn
        } else {
            Verdict::Ok
        },
        format!("{n} open, oldest {oldest} s, {ddl} DDL running"),
        format!(
            "the fence waits for running writes: a transaction older than {} s or a DDL may make it time out",
            t.long_transaction_s
        ),
    ));

    // Users read_only does not stop.
    let bypass = bypass_sessions(source, &t.own_accounts).await?;
    out.push(if bypass.is_empty() {
        check(
            "read_only_bypass",
            Verdict::Ok,
            "none",
            match s.flavor {
                Flavor::Mysql => "super_read_only stops every client",
                Flavor::MariaDb => "no account other than switchyard's and the replication account holds READ_ONLY ADMIN",
            },
        )
    } else {
        let list: Vec<String> = bypass
            .iter()
            .map(|(u, ids)| format!("{u} ({} sessions)", ids.len()))
            .collect();
        check(
            "read_only_bypass",
            Verdict::Warn,
            list.join(", "),
            "these accounts can write through read_only: the cutover locks them and closes their sessions while the source is fenced",
        )
    });

    // Binlog retention.
    out.push(retention(source, &s, t.retention_horizon_s).await?);

    Ok(Report {
        checks: out,
        source: s,
        target: d,
        bypass,
    })
}

fn on(b: bool) -> &'static str {
    if b {
        "ON"
    } else {
        "OFF"
    }
}

/// Predicts error 1236: transactions the target still needs are no longer in the source's
/// binlogs.
pub async fn gap(
    source: &mut Server,
    s: &ServerStatus,
    d: &ServerStatus,
) -> Result<Check, DbError> {
    let name = "gap_1236";
    match s.flavor {
        Flavor::Mysql => {
            let sql = need(
                Flavor::Mysql.subset(&s.gtid_purged, &d.gtid_executed),
                source,
            )?;
            let ok: i64 = source.one(&sql).await?.unwrap_or(0);
            Ok(check(
                name,
                if ok == 1 { Verdict::Ok } else { Verdict::Fail },
                format!("source gtid_purged {:?}, target gtid_executed {:?}", s.gtid_purged, d.gtid_executed),
                "GTID_SUBSET(source purged, target executed) must be 1: otherwise the source already purged transactions the target needs (error 1236); re-seed the target from a new snapshot",
            ))
        }
        Flavor::MariaDb => {
            let logs = source.rows("SHOW BINARY LOGS").await?;
            let Some(first) = logs.into_iter().next() else {
                return Ok(check(
                    name,
                    Verdict::Fail,
                    "no binlog files",
                    "the source keeps no binlogs",
                ));
            };
            let file: String = first
                .get_opt::<Option<String>, usize>(0)
                .and_then(Result::ok)
                .flatten()
                .unwrap_or_default();
            let sql = need(Flavor::MariaDb.binlog_start(&file), source)?;
            let start_text = source.gtid(&sql).await?;
            let start = MariaPos::parse(&start_text).map_err(|e| parse_err(source, &sql, e))?;
            let have = MariaPos::parse(&d.gtid_executed).map_err(|e| parse_err(source, &sql, e))?;
            let gaps = have.gap_before(&start);
            Ok(if gaps.is_empty() {
                check(
                    name,
                    Verdict::Ok,
                    format!(
                        "oldest binlog {file} starts at {:?}; target at {:?}",
                        start_text, d.gtid_executed
                    ),
                    "every transaction the target still needs is in the source's binlogs",
                )
            } else {
                check(
                    name,
                    Verdict::Fail,
                    format!("oldest binlog {file} starts at {:?}; target at {:?}", start_text, d.gtid_executed),
                    format!(
                        "the source purged transactions the target needs (replication would fail with error 1236): {}; re-seed the target from a new snapshot",
                        gaps.join("; ")
                    ),
                )
            })
        }
    }
}

/// Transactions executed on the target that the source never executed.
async fn errant(source: &mut Server, s: &ServerStatus, d: &ServerStatus) -> Result<Check, DbError> {
    let name = "errant_transactions";
    let found: Vec<String> = match s.flavor {
        Flavor::Mysql => {
            let sql = need(
                Flavor::Mysql.subtract(&d.gtid_executed, &s.gtid_executed),
                source,
            )?;
            let extra = source.gtid(&sql).await?;
            let n = MysqlSet::parse(&extra).map(|x| x.count()).unwrap_or(0);
            if extra.is_empty() {
                vec![]
            } else {
                vec![format!("{extra} ({n} transactions)")]
            }
        }
        Flavor::MariaDb => {
            let src = MariaPos::parse(&s.gtid_executed)
                .map_err(|e| parse_err(source, "gtid_current_pos", e))?;
            let tgt = MariaPos::parse(&d.gtid_executed)
                .map_err(|e| parse_err(source, "gtid_current_pos", e))?;
            tgt.errant_against(&src)
        }
    };
    Ok(if found.is_empty() {
        check(
            name,
            Verdict::Ok,
            "none",
            "the target executed nothing the source did not",
        )
    } else {
        check(
            name,
            Verdict::Fail,
            found.join(", "),
            "the target executed transactions the source never did (a write on the replica): they would be lost or conflict; find and undo them, or re-seed the target",
        )
    })
}

/// Sessions of accounts that `read_only` does not stop, other than ours. user -> session ids.
pub async fn bypass_sessions(
    source: &mut Server,
    own: &[String],
) -> Result<BTreeMap<String, Vec<u64>>, DbError> {
    let Some(sql) = source.flavor.bypass_accounts(&source.version) else {
        return Ok(BTreeMap::new());
    };
    let mut users: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in source.rows(&sql).await? {
        let g: String = r
            .get_opt::<Option<String>, usize>(0)
            .and_then(Result::ok)
            .flatten()
            .unwrap_or_default();
        if let Some((u, _)) = flavor::split_grantee(&g) {
            if !own.contains(&u) {
                users.entry(u).or_default();
            }
        }
    }
    if users.is_empty() {
        return Ok(users);
    }
    for r in source.rows(flavor::SESSIONS).await? {
        let u: String = r
            .get_opt::<Option<String>, usize>(0)
            .and_then(Result::ok)
            .flatten()
            .unwrap_or_default();
        let id: u64 = r
            .get_opt::<Option<u64>, usize>(1)
            .and_then(Result::ok)
            .flatten()
            .unwrap_or(0);
        if let Some(v) = users.get_mut(&u) {
            v.push(id);
        }
    }
    Ok(users)
}

async fn retention(source: &mut Server, s: &ServerStatus, horizon: u64) -> Result<Check, DbError> {
    let name = "binlog_retention";
    let need = format!("at least {} h (--retention-horizon)", horizon / 3600);
    if s.rds {
        let mut hours: Option<u64> = None;
        for r in source.rows(RDS_RETENTION).await? {
            let n: String = r
                .get_opt::<Option<String>, &str>("name")
                .and_then(Result::ok)
                .flatten()
                .unwrap_or_default();
            if n == "binlog retention hours" {
                hours = r
                    .get_opt::<Option<String>, &str>("value")
                    .and_then(Result::ok)
                    .flatten()
                    .and_then(|v| v.parse().ok());
            }
        }
        return Ok(match hours {
            Some(h) if h * 3600 >= horizon => {
                check(name, Verdict::Ok, format!("{h} h (RDS)"), need)
            }
            Some(h) => check(
                name,
                Verdict::Warn,
                format!("{h} h (RDS)"),
                format!("{need}: CALL mysql.rds_set_configuration('binlog retention hours', N)"),
            ),
            None => check(
                name,
                Verdict::Warn,
                "NULL (RDS purges binlogs as soon as it can)",
                format!("{need}: CALL mysql.rds_set_configuration('binlog retention hours', N)"),
            ),
        });
    }
    let secs: u64 = source.one(s.flavor.retention()).await?.unwrap_or(0);
    Ok(if secs == 0 {
        check(
            name,
            Verdict::Ok,
            "kept until purged by hand (binlog_expire_logs_seconds=0)",
            need,
        )
    } else if secs >= horizon {
        check(name, Verdict::Ok, format!("{} h", secs / 3600), need)
    } else {
        check(name, Verdict::Warn, format!("{} s", secs), need)
    })
}

fn parse_err(server: &Server, what: &str, e: super::gtid::ParseError) -> DbError {
    DbError::Query {
        endpoint: server.ep.to_string(),
        sql: what.to_string(),
        message: e.to_string(),
    }
}

/// A flavor-specific statement (each caller asks only its own flavor for it).
fn need(sql: Option<String>, server: &Server) -> Result<String, DbError> {
    sql.ok_or_else(|| DbError::Query {
        endpoint: server.ep.to_string(),
        sql: String::new(),
        message: format!("no such statement for {}", server.flavor.name()),
    })
}
