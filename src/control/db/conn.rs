//! Connections to the two servers of a cutover: `mysql://USER:PASSWORD@HOST:PORT` URLs, the
//! password also from `SWITCHYARD_SOURCE_PASSWORD` / `SWITCHYARD_TARGET_PASSWORD`, and every
//! error said as one line naming the server (never its password).

use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Row, SslOpts};

use super::flavor::Flavor;
use super::DbError;

/// How long connecting to a server may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Which of the two servers (in the words of the command that was run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Source,
    Target,
}

impl Role {
    /// The environment variable that may hold this server's password.
    pub fn password_env(self) -> &'static str {
        match self {
            Role::Source => "SWITCHYARD_SOURCE_PASSWORD",
            Role::Target => "SWITCHYARD_TARGET_PASSWORD",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Target => "target",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How to reach one server. `Debug` and `Display` never show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub role: Role,
    pub user: String,
    password: Option<String>,
    pub host: String,
    pub port: u16,
    /// `tls=required` (verify against the system roots or `ca`), `tls=skip-verify`, or none.
    pub tls: Tls,
    pub ca: Option<String>,
}

/// TLS to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    Off,
    Verify,
    SkipVerify,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}@{}:{}", self.role, self.user, self.host, self.port)
    }
}

impl Endpoint {
    /// Parses `mysql://USER[:PASSWORD]@HOST:PORT[?tls=required|skip-verify&ca=PATH]`. The port
    /// is required (a cutover between two servers on default ports is one typo from pointing
    /// both URLs at the same server). A password in the URL wins over the role's variable.
    pub fn parse(role: Role, url: &str) -> Result<Endpoint, DbError> {
        let bad = |why: &str| DbError::Url {
            role,
            message: why.to_string(),
        };
        let rest = url
            .strip_prefix("mysql://")
            .ok_or_else(|| bad("expected mysql://USER:PASSWORD@HOST:PORT"))?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let rest = rest.trim_end_matches('/');
        let (userinfo, hostport) = rest
            .rsplit_once('@')
            .ok_or_else(|| bad("no user: expected mysql://USER:PASSWORD@HOST:PORT"))?;
        let (user, password) = match userinfo.split_once(':') {
            Some((u, p)) => (u, Some(percent_decode(p))),
            None => (userinfo, None),
        };
        if user.is_empty() {
            return Err(bad("empty user name"));
        }
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !p.is_empty() => (h, p),
            _ => return Err(bad("no port: write HOST:PORT, e.g. 127.0.0.1:3306")),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| bad(&format!("port {port:?} is not a port number")))?;
        let mut tls = Tls::Off;
        let mut ca = None;
        for kv in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
            match kv.split_once('=') {
                Some(("tls", "required")) => tls = Tls::Verify,
                Some(("tls", "skip-verify")) => tls = Tls::SkipVerify,
                Some(("tls", "off")) => tls = Tls::Off,
                Some(("ca", p)) => ca = Some(percent_decode(p)),
                _ => {
                    return Err(bad(&format!(
                        "unknown option {kv:?} (known: tls=required|skip-verify|off, ca=PATH)"
                    )))
                }
            }
        }
        if ca.is_some() && tls == Tls::Off {
            tls = Tls::Verify;
        }
        let password = password
            .or_else(|| std::env::var(role.password_env()).ok())
            .filter(|p| !p.is_empty());
        Ok(Endpoint {
            role,
            user: percent_decode(user),
            password,
            host: host.to_string(),
            port,
            tls,
            ca,
        })
    }

    /// `HOST:PORT`.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The same endpoint under another role (rollback runs the cutover the other way).
    pub fn with_role(&self, role: Role) -> Endpoint {
        Endpoint {
            role,
            ..self.clone()
        }
    }

    fn opts(&self) -> OptsBuilder {
        let mut o = OptsBuilder::default()
            .ip_or_hostname(self.host.clone())
            .tcp_port(self.port)
            .user(Some(self.user.clone()))
            .pass(self.password.clone())
            .prefer_socket(false)
            .stmt_cache_size(0);
        match self.tls {
            Tls::Off => {}
            Tls::Verify | Tls::SkipVerify => {
                let mut s = SslOpts::default();
                if let Some(ca) = &self.ca {
                    s = s.with_root_certs(vec![std::path::PathBuf::from(ca).into()]);
                }
                if self.tls == Tls::SkipVerify {
                    s = s.with_danger_accept_invalid_certs(true);
                }
                o = o.ssl_opts(Some(s));
            }
        }
        o
    }

    /// Opens a session and learns the server's flavor. Fails within [`CONNECT_TIMEOUT`].
    pub async fn connect(&self) -> Result<Server, DbError> {
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, Conn::new(self.opts()))
            .await
            .map_err(|_| DbError::Connect {
                endpoint: self.to_string(),
                message: format!("no answer within {CONNECT_TIMEOUT:?}"),
            })?
            .map_err(|e| DbError::Connect {
                endpoint: self.to_string(),
                message: describe(&e),
            })?;
        let mut s = Server {
            ep: self.clone(),
            conn,
            flavor: Flavor::MariaDb,
            version: String::new(),
            rds: false,
        };
        let version: String = s.one("SELECT @@version").await?.unwrap_or_default();
        let rds = s
            .one::<i64>(
                "SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = 'mysql' \
                 AND ROUTINE_NAME = 'rds_set_external_master_with_auto_position'",
            )
            .await?
            .unwrap_or(0)
            > 0;
        s.flavor = Flavor::detect(&version);
        s.version = version;
        s.rds = rds;
        Ok(s)
    }
}

/// One open session on a server, with what the cutover needs to know about it.
pub struct Server {
    pub ep: Endpoint,
    pub conn: Conn,
    pub flavor: Flavor,
    /// `@@version` as the server says it.
    pub version: String,
    /// Amazon RDS (no SUPER: `mysql.rds_*` procedures instead).
    pub rds: bool,
}

impl Server {
    /// Runs a statement that returns nothing.
    pub async fn exec(&mut self, sql: &str) -> Result<(), DbError> {
        self.conn
            .query_drop(sql)
            .await
            .map_err(|e| self.error(sql, &e))
    }

    /// The first column of the first row.
    pub async fn one<T: mysql_async::prelude::FromValue>(
        &mut self,
        sql: &str,
    ) -> Result<Option<T>, DbError> {
        let row: Option<Row> = self
            .conn
            .query_first(sql)
            .await
            .map_err(|e| self.error(sql, &e))?;
        let Some(mut row) = row else {
            return Ok(None);
        };
        match row.take_opt::<Option<T>, usize>(0) {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(DbError::Query {
                endpoint: self.ep.to_string(),
                sql: sql.to_string(),
                message: format!("unexpected value: {e}"),
            }),
            None => Ok(None),
        }
    }

    /// Every row.
    pub async fn rows(&mut self, sql: &str) -> Result<Vec<Row>, DbError> {
        self.conn.query(sql).await.map_err(|e| self.error(sql, &e))
    }

    /// A statement with parameters, first column of the first row.
    pub async fn one_with<T: mysql_async::prelude::FromValue>(
        &mut self,
        sql: &str,
        params: Vec<mysql_async::Value>,
    ) -> Result<Option<T>, DbError> {
        let row: Option<Row> = self
            .conn
            .exec_first(sql, mysql_async::Params::Positional(params))
            .await
            .map_err(|e| self.error(sql, &e))?;
        Ok(row.and_then(|mut r| {
            r.take_opt::<Option<T>, usize>(0)
                .and_then(Result::ok)
                .flatten()
        }))
    }

    /// This session's connection id (so the cutover never kills its own session).
    pub fn id(&self) -> u32 {
        self.conn.id()
    }

    fn error(&self, sql: &str, e: &mysql_async::Error) -> DbError {
        DbError::Query {
            endpoint: self.ep.to_string(),
            sql: redact(sql),
            message: describe(e),
        }
    }

    /// The server error code of a failed query, if it was the server that refused.
    pub fn code(e: &DbError) -> Option<u16> {
        match e {
            DbError::Query { message, .. } => message
                .strip_prefix("error ")
                .and_then(|m| m.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok()),
            _ => None,
        }
    }
}

/// One line for a driver error: the server's code and message, or what failed on the way.
fn describe(e: &mysql_async::Error) -> String {
    match e {
        mysql_async::Error::Server(s) => format!("error {} ({}): {}", s.code, s.state, s.message),
        mysql_async::Error::Io(io) => format!("connection: {io}"),
        other => other.to_string(),
    }
}

/// A statement as it may be printed: a password literal replaced.
pub fn redact(sql: &str) -> String {
    let upper = sql.to_ascii_uppercase();
    for key in ["MASTER_PASSWORD", "SOURCE_PASSWORD"] {
        if let Some(i) = upper.find(key) {
            if let Some(q1) = sql[i..].find('\'') {
                let start = i + q1 + 1;
                if let Some(q2) = sql[start..].find('\'') {
                    return format!("{}***{}", &sql[..start], redact(&sql[start + q2..]));
                }
            }
        }
    }
    if let Some(i) = upper.find("CALL MYSQL.RDS_SET_EXTERNAL_MASTER") {
        // The password is the 5th argument: do not print the call's arguments at all.
        return format!(
            "{}(...)",
            &sql[..i + "CALL mysql.rds_set_external_master".len()]
        );
    }
    sql.to_string()
}

/// A string literal for SQL: quotes and backslashes escaped.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let e = Endpoint::parse(Role::Source, "mysql://sy:p%40ss@127.0.0.1:3307").unwrap();
        assert_eq!(e.user, "sy");
        assert_eq!(e.password.as_deref(), Some("p@ss"));
        assert_eq!(e.address(), "127.0.0.1:3307");
        assert_eq!(e.to_string(), "source sy@127.0.0.1:3307");
        assert!(!format!("{e:?}").contains("p@ss"));
        let e = Endpoint::parse(Role::Target, "mysql://sy@[::1]:3306?tls=skip-verify").unwrap();
        assert_eq!(e.host, "::1");
        assert_eq!(e.tls, Tls::SkipVerify);
        for bad in [
            "mysql://sy:p@127.0.0.1",
            "mysql://sy:p@127.0.0.1:",
            "mysql://sy:p@127.0.0.1:x",
            "mysql://127.0.0.1:3306",
            "postgres://a:b@h:1",
            "mysql://a:b@h:1?x=y",
        ] {
            let err = Endpoint::parse(Role::Target, bad).unwrap_err().to_string();
            assert!(err.starts_with("target URL"), "{bad}: {err}");
            assert!(!err.contains(":b@"), "password printed: {err}");
        }
        assert!(Endpoint::parse(Role::Target, "mysql://sy:p@127.0.0.1")
            .unwrap_err()
            .to_string()
            .contains("no port"));
    }

    #[test]
    fn redaction_and_quoting() {
        let s = "CHANGE MASTER TO MASTER_HOST='h', MASTER_PASSWORD='s3cr''et', MASTER_PORT=1";
        let r = redact(s);
        assert!(!r.contains("s3cr"), "{r}");
        assert!(r.contains("MASTER_HOST='h'"), "{r}");
        let r = redact(
            "CALL mysql.rds_set_external_master_with_auto_position('h', 1, 'u', 'pw', 0, 0)",
        );
        assert!(!r.contains("pw"), "{r}");
        assert_eq!(quote("a'b\\c"), "'a''b\\\\c'");
    }
}
