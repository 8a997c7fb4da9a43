//! The one place where MySQL 8 and MariaDB differ: every statement the cutover runs, per
//! flavor, plus the Amazon RDS procedures used where there is no SUPER.
//!
//! Which ran against a real server: the MariaDB statements (MariaDB 10.11, in tests/db.rs).
//! The MySQL 8 and RDS statements are checked by the unit tests below only.

use super::conn::quote;

/// The server's kind, detected from `@@version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    /// MySQL 8.0 or later (`uuid:interval` GTID sets).
    Mysql,
    /// MariaDB 10.x or later (`domain-server-seq` GTID positions).
    MariaDb,
}

/// What `WAIT` statements answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitResult {
    Reached,
    TimedOut,
}

/// Replication status column names, per flavor.
pub struct ReplicaColumns {
    pub io_running: &'static str,
    pub sql_running: &'static str,
    pub source_host: &'static str,
    pub source_port: &'static str,
    pub source_server_id: &'static str,
    pub seconds_behind: &'static str,
    pub last_io_errno: &'static str,
    pub last_io_error: &'static str,
    pub last_sql_errno: &'static str,
    pub last_sql_error: &'static str,
    /// MariaDB `Using_Gtid` (`No`, `Slave_Pos`, `Current_Pos`); MySQL `Auto_Position` (0/1).
    pub gtid_mode: &'static str,
}

impl Flavor {
    /// MariaDB says so in its version string (`10.11.6-MariaDB-0+deb12u1-log`).
    pub fn detect(version: &str) -> Flavor {
        if version.to_ascii_lowercase().contains("mariadb") {
            Flavor::MariaDb
        } else {
            Flavor::Mysql
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Flavor::Mysql => "MySQL",
            Flavor::MariaDb => "MariaDB",
        }
    }

    /// The server's executed GTIDs: MySQL `gtid_executed`; MariaDB `gtid_current_pos` (per
    /// domain the newer of its binlog and its replica position).
    pub fn executed(self) -> &'static str {
        match self {
            Flavor::Mysql => "SELECT @@GLOBAL.gtid_executed",
            Flavor::MariaDb => "SELECT @@GLOBAL.gtid_current_pos",
        }
    }

    /// What a primary has written to its binlog: the position a replica must reach. MySQL
    /// `gtid_executed`; MariaDB `gtid_binlog_pos`.
    pub fn written(self) -> &'static str {
        match self {
            Flavor::Mysql => "SELECT @@GLOBAL.gtid_executed",
            Flavor::MariaDb => "SELECT @@GLOBAL.gtid_binlog_pos",
        }
    }

    /// What a replica has applied from its source: MySQL `gtid_executed`; MariaDB
    /// `gtid_slave_pos`.
    pub fn applied(self) -> &'static str {
        match self {
            Flavor::Mysql => "SELECT @@GLOBAL.gtid_executed",
            Flavor::MariaDb => "SELECT @@GLOBAL.gtid_slave_pos",
        }
    }

    /// MySQL `gtid_purged`; MariaDB has none (the oldest binlog's start tells instead).
    pub fn purged(self) -> Option<&'static str> {
        match self {
            Flavor::Mysql => Some("SELECT @@GLOBAL.gtid_purged"),
            Flavor::MariaDb => None,
        }
    }

    /// One row: GTID mode and consistency enforcement (MySQL), or strict mode (MariaDB, where
    /// GTIDs are always on).
    pub fn gtid_settings(self) -> &'static str {
        match self {
            Flavor::Mysql => "SELECT @@GLOBAL.gtid_mode, @@GLOBAL.enforce_gtid_consistency",
            Flavor::MariaDb => "SELECT 'ON', @@GLOBAL.gtid_strict_mode",
        }
    }

    /// One row: `log_bin`, `log_slave_updates`/`log_replica_updates`, `server_id`, read-only
    /// flags (`read_only`, and `super_read_only` on MySQL; 0 on MariaDB).
    pub fn settings(self) -> &'static str {
        match self {
            Flavor::Mysql => "SELECT @@GLOBAL.log_bin, @@GLOBAL.log_replica_updates, @@GLOBAL.server_id, @@GLOBAL.read_only, @@GLOBAL.super_read_only",
            Flavor::MariaDb => "SELECT @@GLOBAL.log_bin, @@GLOBAL.log_slave_updates, @@GLOBAL.server_id, @@GLOBAL.read_only, 0",
        }
    }

    /// Replication status.
    pub fn replica_status(self) -> &'static str {
        match self {
            Flavor::Mysql => "SHOW REPLICA STATUS",
            Flavor::MariaDb => "SHOW SLAVE STATUS",
        }
    }

    pub fn replica_columns(self) -> ReplicaColumns {
        match self {
            Flavor::Mysql => ReplicaColumns {
                io_running: "Replica_IO_Running",
                sql_running: "Replica_SQL_Running",
                source_host: "Source_Host",
                source_port: "Source_Port",
                source_server_id: "Source_Server_Id",
                seconds_behind: "Seconds_Behind_Source",
                last_io_errno: "Last_IO_Errno",
                last_io_error: "Last_IO_Error",
                last_sql_errno: "Last_SQL_Errno",
                last_sql_error: "Last_SQL_Error",
                gtid_mode: "Auto_Position",
            },
            Flavor::MariaDb => ReplicaColumns {
                io_running: "Slave_IO_Running",
                sql_running: "Slave_SQL_Running",
                source_host: "Master_Host",
                source_port: "Master_Port",
                source_server_id: "Master_Server_Id",
                seconds_behind: "Seconds_Behind_Master",
                last_io_errno: "Last_IO_Errno",
                last_io_error: "Last_IO_Error",
                last_sql_errno: "Last_SQL_Errno",
                last_sql_error: "Last_SQL_Error",
                gtid_mode: "Using_Gtid",
            },
        }
    }

    /// Stops writes from clients: MySQL `super_read_only` (stops SUPER users too); MariaDB
    /// `read_only` (users with READ_ONLY ADMIN still write: the cutover locks and disconnects
    /// them). Waits for running writes up to the session's `lock_wait_timeout`.
    pub fn fence(self) -> &'static str {
        match self {
            Flavor::Mysql => "SET GLOBAL super_read_only = ON",
            Flavor::MariaDb => "SET GLOBAL read_only = ON",
        }
    }

    /// Lets clients write again (both flags on MySQL: clearing `super_read_only` leaves
    /// `read_only` on).
    pub fn unfence(self) -> &'static [&'static str] {
        match self {
            Flavor::Mysql => &[
                "SET GLOBAL super_read_only = OFF",
                "SET GLOBAL read_only = OFF",
            ],
            Flavor::MariaDb => &["SET GLOBAL read_only = OFF"],
        }
    }

    /// Bounds how long the fence waits for running writes, in seconds (at least 1).
    pub fn lock_wait(self, secs: u64) -> String {
        format!("SET SESSION lock_wait_timeout = {}", secs.max(1))
    }

    /// Waits on a replica until it has applied `pos`, at most `secs` seconds (fractions allowed
    /// on MariaDB; MySQL takes whole seconds, at least 1).
    pub fn wait_for(self, pos: &str, secs: f64) -> String {
        match self {
            Flavor::Mysql => format!(
                "SELECT WAIT_FOR_EXECUTED_GTID_SET({}, {})",
                quote(pos),
                secs.ceil().max(1.0) as u64
            ),
            Flavor::MariaDb => format!(
                "SELECT MASTER_GTID_WAIT({}, {:.3})",
                quote(pos),
                secs.max(0.001)
            ),
        }
    }

    /// Reads a WAIT statement's answer: MySQL 0 reached / 1 timed out; MariaDB 0 / -1.
    pub fn wait_result(self, v: i64) -> Option<WaitResult> {
        match (self, v) {
            (_, 0) => Some(WaitResult::Reached),
            (Flavor::Mysql, 1) | (Flavor::MariaDb, -1) => Some(WaitResult::TimedOut),
            _ => None,
        }
    }

    /// Whether `sub` is contained in `sup` (MySQL only: MariaDB positions are compared per
    /// domain).
    pub fn subset(self, sub: &str, sup: &str) -> Option<String> {
        match self {
            Flavor::Mysql => Some(format!(
                "SELECT GTID_SUBSET({}, {})",
                quote(sub),
                quote(sup)
            )),
            Flavor::MariaDb => None,
        }
    }

    /// GTIDs in `a` and not in `b` (MySQL only).
    pub fn subtract(self, a: &str, b: &str) -> Option<String> {
        match self {
            Flavor::Mysql => Some(format!("SELECT GTID_SUBTRACT({}, {})", quote(a), quote(b))),
            Flavor::MariaDb => None,
        }
    }

    /// The GTID position at the start of a binlog file (MariaDB only).
    pub fn binlog_start(self, file: &str) -> Option<String> {
        match self {
            Flavor::MariaDb => Some(format!("SELECT BINLOG_GTID_POS({}, 4)", quote(file))),
            Flavor::Mysql => None,
        }
    }

    /// Stops both replication threads.
    pub fn stop_replica(self, rds: bool) -> &'static str {
        match (self, rds) {
            (_, true) => "CALL mysql.rds_stop_replication",
            (Flavor::Mysql, false) => "STOP REPLICA",
            (Flavor::MariaDb, false) => "STOP SLAVE",
        }
    }

    /// Starts both replication threads.
    pub fn start_replica(self, rds: bool) -> &'static str {
        match (self, rds) {
            (_, true) => "CALL mysql.rds_start_replication",
            (Flavor::Mysql, false) => "START REPLICA",
            (Flavor::MariaDb, false) => "START SLAVE",
        }
    }

    /// Forgets the replication source entirely (after a promotion, so nothing restarts it).
    pub fn reset_replica(self, rds: bool) -> &'static str {
        match (self, rds) {
            (_, true) => "CALL mysql.rds_reset_external_master",
            (Flavor::Mysql, false) => "RESET REPLICA ALL",
            (Flavor::MariaDb, false) => "RESET SLAVE ALL",
        }
    }

    /// Points this server at a source with GTID auto-positioning. `demote`: this server was a
    /// primary until now (MariaDB adds its own binlog position to `gtid_slave_pos`, so it
    /// resumes where it stands instead of asking for its own transactions).
    pub fn change_source(
        self,
        rds: bool,
        host: &str,
        port: u16,
        user: &str,
        password: &str,
        demote: bool,
    ) -> String {
        match (self, rds) {
            (_, true) => format!(
                "CALL mysql.rds_set_external_master_with_auto_position({}, {port}, {}, {}, 0, 0)",
                quote(host),
                quote(user),
                quote(password)
            ),
            (Flavor::Mysql, false) => format!(
                "CHANGE REPLICATION SOURCE TO SOURCE_HOST = {}, SOURCE_PORT = {port}, SOURCE_USER = {}, SOURCE_PASSWORD = {}, SOURCE_AUTO_POSITION = 1, GET_SOURCE_PUBLIC_KEY = 1",
                quote(host),
                quote(user),
                quote(password)
            ),
            (Flavor::MariaDb, false) => format!(
                "CHANGE MASTER TO MASTER_HOST = {}, MASTER_PORT = {port}, MASTER_USER = {}, MASTER_PASSWORD = {}, MASTER_USE_GTID = slave_pos{}",
                quote(host),
                quote(user),
                quote(password),
                if demote { ", MASTER_DEMOTE_TO_SLAVE = 1" } else { "" }
            ),
        }
    }

    /// One row per account that `read_only` does not stop, with the privilege that lets it
    /// write: MariaDB 10.11+ `READ_ONLY ADMIN` (earlier releases: also `SUPER`). None on MySQL,
    /// where the fence is `super_read_only`, which stops them too.
    pub fn bypass_accounts(self, version: &str) -> Option<String> {
        match self {
            Flavor::Mysql => None,
            Flavor::MariaDb => {
                let privs = if mariadb_at_least(version, 10, 11) {
                    "'READ_ONLY ADMIN'"
                } else {
                    "'READ_ONLY ADMIN', 'SUPER'"
                };
                Some(format!(
                    "SELECT GRANTEE, PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES WHERE PRIVILEGE_TYPE IN ({privs}) ORDER BY GRANTEE"
                ))
            }
        }
    }

    /// How long binlogs are kept, in seconds (0: forever). RDS: see [`RDS_RETENTION`].
    pub fn retention(self) -> &'static str {
        "SELECT @@GLOBAL.binlog_expire_logs_seconds"
    }
}

/// RDS keeps binlogs only as long as `binlog retention hours` says (NULL: purged as soon as
/// possible); this lists it.
pub const RDS_RETENTION: &str = "CALL mysql.rds_show_configuration";

/// Open transactions on the server: how many, and the oldest one's age in seconds.
pub const LONG_TRANSACTIONS: &str = "SELECT COUNT(*), COALESCE(MAX(TIMESTAMPDIFF(SECOND, trx_started, NOW())), 0) FROM information_schema.INNODB_TRX";

/// Running DDL statements.
pub const RUNNING_DDL: &str = "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE COMMAND = 'Query' AND UPPER(LEFT(LTRIM(INFO), 8)) REGEXP '^(ALTER|CREATE|DROP|RENAME|TRUNCATE|OPTIMIZE)'";

/// Sessions per user.
pub const SESSIONS: &str =
    "SELECT USER, ID FROM information_schema.PROCESSLIST WHERE USER IS NOT NULL ORDER BY USER";

/// True for MariaDB versions at or after `major.minor`.
fn mariadb_at_least(version: &str, major: u32, minor: u32) -> bool {
    let mut it = version.split(|c: char| !c.is_ascii_digit());
    let a = it.next().and_then(|s| s.parse::<u32>().ok()).unwrap_or(0);
    let b = it.next().and_then(|s| s.parse::<u32>().ok()).unwrap_or(0);
    (a, b) >= (major, minor)
}

/// `'user'@'host'` as information_schema prints a grantee, split.
pub fn split_grantee(g: &str) -> Option<(String, String)> {
    let (u, h) = g.split_once("@")?;
    let unq = |s: &str| s.trim().trim_matches('\'').replace("''", "'");
    Some((unq(u), unq(h)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detect() {
        assert_eq!(
            Flavor::detect("10.11.6-MariaDB-0+deb12u1-log"),
            Flavor::MariaDb
        );
        assert_eq!(Flavor::detect("8.0.36"), Flavor::Mysql);
        assert_eq!(Flavor::detect("8.0.35-mysql"), Flavor::Mysql);
        assert!(mariadb_at_least("10.11.6-MariaDB", 10, 11));
        assert!(!mariadb_at_least("10.6.16-MariaDB", 10, 11));
        assert!(mariadb_at_least("11.4.2-MariaDB", 10, 11));
    }

    #[test]
    fn mysql_statements() {
        let m = Flavor::Mysql;
        assert_eq!(m.executed(), "SELECT @@GLOBAL.gtid_executed");
        assert_eq!(m.purged(), Some("SELECT @@GLOBAL.gtid_purged"));
        assert_eq!(m.fence(), "SET GLOBAL super_read_only = ON");
        assert_eq!(
            m.unfence(),
            [
                "SET GLOBAL super_read_only = OFF",
                "SET GLOBAL read_only = OFF"
            ]
        );
        assert_eq!(m.replica_status(), "SHOW REPLICA STATUS");
        assert_eq!(
            m.wait_for("3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5", 0.2),
            "SELECT WAIT_FOR_EXECUTED_GTID_SET('3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5', 1)"
        );
        assert_eq!(m.wait_result(0), Some(WaitResult::Reached));
        assert_eq!(m.wait_result(1), Some(WaitResult::TimedOut));
        assert_eq!(m.wait_result(-1), None);
        assert_eq!(
            m.subset("a:1-2", "a:1-5").unwrap(),
            "SELECT GTID_SUBSET('a:1-2', 'a:1-5')"
        );
        assert_eq!(
            m.subtract("a:1-5", "a:1-2").unwrap(),
            "SELECT GTID_SUBTRACT('a:1-5', 'a:1-2')"
        );
        assert_eq!(m.binlog_start("b.000001"), None);
        assert_eq!(m.stop_replica(false), "STOP REPLICA");
        assert_eq!(m.start_replica(false), "START REPLICA");
        assert_eq!(m.reset_replica(false), "RESET REPLICA ALL");
        assert_eq!(
            m.change_source(false, "10.0.0.5", 3306, "repl", "p'w", false),
            "CHANGE REPLICATION SOURCE TO SOURCE_HOST = '10.0.0.5', SOURCE_PORT = 3306, SOURCE_USER = 'repl', SOURCE_PASSWORD = 'p''w', SOURCE_AUTO_POSITION = 1, GET_SOURCE_PUBLIC_KEY = 1"
        );
        assert!(m.bypass_accounts("8.0.36").is_none());
        assert!(m.settings().contains("log_replica_updates"));
        assert_eq!(m.replica_columns().io_running, "Replica_IO_Running");
        assert_eq!(m.replica_columns().seconds_behind, "Seconds_Behind_Source");
    }

    #[test]
    fn rds_procedures() {
        let m = Flavor::Mysql;
        assert_eq!(m.stop_replica(true), "CALL mysql.rds_stop_replication");
        assert_eq!(m.start_replica(true), "CALL mysql.rds_start_replication");
        assert_eq!(
            m.reset_replica(true),
            "CALL mysql.rds_reset_external_master"
        );
        assert_eq!(
            m.change_source(true, "src.example", 3306, "repl", "pw", true),
            "CALL mysql.rds_set_external_master_with_auto_position('src.example', 3306, 'repl', 'pw', 0, 0)"
        );
    }

    #[test]
    fn mariadb_statements() {
        let m = Flavor::MariaDb;
        assert_eq!(m.executed(), "SELECT @@GLOBAL.gtid_current_pos");
        assert_eq!(m.written(), "SELECT @@GLOBAL.gtid_binlog_pos");
        assert_eq!(m.applied(), "SELECT @@GLOBAL.gtid_slave_pos");
        assert_eq!(m.fence(), "SET GLOBAL read_only = ON");
        assert_eq!(
            m.wait_for("0-1-5", 0.25),
            "SELECT MASTER_GTID_WAIT('0-1-5', 0.250)"
        );
        assert_eq!(m.wait_result(-1), Some(WaitResult::TimedOut));
        assert_eq!(
            m.change_source(false, "127.0.0.1", 3307, "repl", "pw", true),
            "CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = 3307, MASTER_USER = 'repl', MASTER_PASSWORD = 'pw', MASTER_USE_GTID = slave_pos, MASTER_DEMOTE_TO_SLAVE = 1"
        );
        assert!(m
            .bypass_accounts("10.11.6-MariaDB")
            .unwrap()
            .contains("IN ('READ_ONLY ADMIN')"));
        assert!(m
            .bypass_accounts("10.6.1-MariaDB")
            .unwrap()
            .contains("'SUPER'"));
        assert_eq!(
            split_grantee("'app'@'%'"),
            Some(("app".to_string(), "%".to_string()))
        );
    }
}
