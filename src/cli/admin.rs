//! The operator commands over the admin API (`switchyard table`, `weight`, `rollback`,
//! `revert`, `history`, `diff`, `hold`, `release`, `adopt`, `upstreams`, `inflight`, `traffic`, `shadow`).
//!
//! Each takes `--admin URL` (default `http://127.0.0.1:9090`, or `SWITCHYARD_ADMIN`) and reads
//! the token from `SWITCHYARD_ADMIN_TOKEN`. Output is a readable table by default and the
//! server's JSON with `--json`. Any failure exits 1 with the server's message and details.

use std::collections::BTreeMap;
use std::process::ExitCode;

use bytes::Bytes;
use serde_json::{json, Value};

use crate::admin::client::AdminClient;
use crate::admin::summary::{self, ChangeKind, Summary};
use crate::admin::types::{
    ChangeResult, HoldRequest, HoldView, InflightView, OnExpiry, RoutePatchBody, ShadowView,
};
use crate::config::TableFile;
use crate::metrics::traffic::{self, TrafficView};

/// Where the admin API is and how to print.
#[derive(Debug, Clone, clap::Args)]
pub struct Conn {
    /// Admin API base URL.
    #[arg(
        long,
        env = "SWITCHYARD_ADMIN",
        default_value = "http://127.0.0.1:9090"
    )]
    pub admin: String,
    /// Print the server's JSON instead of a table (for scripts).
    #[arg(long)]
    pub json: bool,
    /// Fleet mode: a change answers only once every live node serves it (default 30s; e.g.
    /// `--wait-fleet=5s`), and fails naming the nodes that did not. Ignored by reads.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "30s", value_name = "TIMEOUT")]
    pub wait_fleet: Option<String>,
}

/// The commands that talk to a running switchyard.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AdminCommand {
    /// Show the live route table: each route's match, weights, fallback and origin.
    Table {
        #[command(flatten)]
        conn: Conn,
        /// Print the live table as a route file (TOML), e.g. to make the files agree.
        #[arg(long, conflicts_with = "json")]
        toml: bool,
    },
    /// Set a route's split: `switchyard weight users new=25 legacy=75`.
    Weight {
        #[command(flatten)]
        conn: Conn,
        /// Route id.
        route: String,
        /// `UPSTREAM=PERCENT` pairs summing to 100.
        #[arg(required = true, value_name = "UPSTREAM=PERCENT")]
        weights: Vec<String>,
        /// Why (recorded in the history).
        #[arg(long)]
        reason: Option<String>,
        /// Refuse if the live table is no longer at this version.
        #[arg(long)]
        if_match: Option<u64>,
    },
    /// Send 100% of a route to its fallback, effective for the next request.
    Rollback {
        #[command(flatten)]
        conn: Conn,
        /// Route id.
        route: String,
        /// Why (recorded in the history).
        #[arg(long)]
        reason: String,
    },
    /// Restore the whole table of an earlier version, as a new version.
    Revert {
        #[command(flatten)]
        conn: Conn,
        /// The version to go back to.
        version: u64,
        /// Why (recorded in the history).
        #[arg(long)]
        reason: String,
    },
    /// List versions, newest first; or show one version.
    History {
        #[command(flatten)]
        conn: Conn,
        /// Show this version in full.
        version: Option<u64>,
        /// How many versions to list.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// What changed from one version to another, per route and upstream.
    Diff {
        #[command(flatten)]
        conn: Conn,
        /// The version to compare from.
        from: u64,
        /// The version to compare to.
        to: u64,
    },
    /// Hold new requests for routes: they wait (not fail) until `release` or --max-ms.
    Hold {
        #[command(flatten)]
        conn: Conn,
        /// Route ids.
        #[arg(required = true)]
        routes: Vec<String>,
        /// Longest wait, in milliseconds; the hold ends by itself then.
        #[arg(long)]
        max_ms: u64,
        /// Why (logged).
        #[arg(long)]
        reason: Option<String>,
        /// At the deadline: `proceed` (held requests go on) or `reject` (503 + Retry-After
        /// for the held routes until `release`).
        #[arg(long, value_enum, default_value = "proceed")]
        on_expiry: OnExpiry,
        /// Most requests queued at once; beyond it, 503 + Retry-After.
        #[arg(long)]
        max_queued: Option<u64>,
        /// Most request bytes (head + declared body) queued at once; beyond it, 503.
        #[arg(long)]
        max_queued_bytes: Option<u64>,
    },
    /// End the hold: held requests proceed on the table current now.
    Release {
        #[command(flatten)]
        conn: Conn,
    },
    /// Take the route files as they are now, overriding changes made through the API.
    Adopt {
        #[command(flatten)]
        conn: Conn,
        /// Why (recorded in the history).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Health and ejection state of every upstream.
    Upstreams {
        #[command(flatten)]
        conn: Conn,
    },
    /// Requests in flight and held, per route.
    Inflight {
        #[command(flatten)]
        conn: Conn,
    },
    /// Requests per Host: in a window, in total, when last seen, and per minute. The evidence
    /// that an old edge has drained after a DNS move.
    Traffic {
        #[command(flatten)]
        conn: Conn,
        /// How far back to count: `30s`, `15m`, `48h` (at most 72h).
        #[arg(long, default_value = "15m")]
        window: String,
    },
    /// Shadow traffic results per route: counts, match rate and the recent mismatches.
    Shadow {
        #[command(flatten)]
        conn: Conn,
        /// Only this route.
        route: Option<String>,
    },
    /// A fleet on etcd: every node's version (`fleet status`), or route files pushed to every
    /// node (`fleet push DIR`).
    Fleet {
        #[command(subcommand)]
        cmd: super::fleet::FleetCommand,
    },
}

pub use crate::admin::client::ClientError as CliError;

/// A blocking connection to the admin API: the crate's one client on a runtime of its own.
pub(super) struct Api {
    base: String,
    pub(super) client: AdminClient,
    rt: tokio::runtime::Runtime,
}

impl Api {
    fn new(conn: &Conn) -> Result<Api, CliError> {
        let client = AdminClient::new(&conn.admin)?.with_wait_fleet(conn.wait_fleet.clone())?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CliError::Usage(format!("cannot start the runtime: {e}")))?;
        Ok(Api {
            base: client.base().to_string(),
            client,
            rt,
        })
    }

    /// Sends a call and returns the JSON answer.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, CliError> {
        self.call_raw(method, path, body, None, false)
    }

    /// `if_match` adds `If-Match: "VERSION"`; `raw` returns a successful body as a JSON string.
    fn call_raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        if_match: Option<u64>,
        raw: bool,
    ) -> Result<Value, CliError> {
        let method = http::Method::from_bytes(method.as_bytes())
            .map_err(|e| CliError::Usage(format!("{method}: {e}")))?;
        if raw {
            let payload = body.map(|v| Bytes::from(v.to_string()));
            let (status, text) =
                self.rt
                    .block_on(self.client.raw(method.clone(), path, payload, if_match))?;
            if status < 300 {
                return Ok(Value::String(text));
            }
        }
        self.rt
            .block_on(self.client.send(method, path, body, if_match))
    }

    /// Runs a typed call of the client.
    pub(super) fn typed<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, CliError>>,
    ) -> Result<T, CliError> {
        self.rt.block_on(f)
    }
}

/// Runs an admin command; prints its result and returns the exit code.
pub fn run(cmd: &AdminCommand) -> ExitCode {
    match execute(cmd) {
        Ok(out) => {
            if !out.is_empty() {
                println!("{}", out.trim_end());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("switchyard: {e}");
            if let CliError::Server { details, .. } = &e {
                for d in details {
                    eprintln!("  {}", detail_line(d));
                }
            }
            ExitCode::FAILURE
        }
    }
}

/// One detail as text: a diagnostic (`file: subject: field: message`) or a plain value.
fn detail_line(d: &Value) -> String {
    match d {
        Value::String(s) => s.clone(),
        Value::Object(o) if o.contains_key("message") => {
            let mut parts = vec![];
            for k in ["severity", "file", "subject", "field", "message"] {
                if let Some(s) = o.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()) {
                    parts.push(s.to_string());
                }
            }
            parts.join(": ")
        }
        other => other.to_string(),
    }
}

fn conn_of(cmd: &AdminCommand) -> &Conn {
    match cmd {
        AdminCommand::Table { conn, .. }
        | AdminCommand::Weight { conn, .. }
        | AdminCommand::Rollback { conn, .. }
        | AdminCommand::Revert { conn, .. }
        | AdminCommand::History { conn, .. }
        | AdminCommand::Diff { conn, .. }
        | AdminCommand::Hold { conn, .. }
        | AdminCommand::Release { conn }
        | AdminCommand::Adopt { conn, .. }
        | AdminCommand::Upstreams { conn }
        | AdminCommand::Inflight { conn }
        | AdminCommand::Traffic { conn, .. } => conn,
        AdminCommand::Shadow { conn, .. } => conn,
        AdminCommand::Fleet { cmd } => cmd.conn(),
    }
}

/// Parses `UPSTREAM=PERCENT` pairs.
pub fn parse_weights(specs: &[String]) -> Result<BTreeMap<String, f64>, CliError> {
    let mut out = BTreeMap::new();
    for s in specs {
        let (name, pct) = s
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("{s:?}: expected UPSTREAM=PERCENT")))?;
        let pct: f64 = pct
            .trim()
            .trim_end_matches('%')
            .parse()
            .map_err(|_| CliError::Usage(format!("{s:?}: {pct:?} is not a number")))?;
        if out.insert(name.trim().to_string(), pct).is_some() {
            return Err(CliError::Usage(format!("{name:?} is given twice")));
        }
    }
    Ok(out)
}

fn execute(cmd: &AdminCommand) -> Result<String, CliError> {
    let conn = conn_of(cmd);
    let api = Api::new(conn)?;
    fn as_json<T: serde::Serialize>(v: &T) -> String {
        serde_json::to_string_pretty(v).unwrap_or_default()
    }
    let change = |c: ChangeResult| -> Result<String, CliError> {
        Ok(if conn.json {
            as_json(&c)
        } else {
            show_change(&c)
        })
    };
    match cmd {
        AdminCommand::Table { toml, .. } => {
            if *toml {
                let v = api.call_raw("GET", "/v1/table?format=toml", None, None, true)?;
                return Ok(v.as_str().unwrap_or_default().to_string());
            }
            let v = api.call("GET", "/v1/table", None)?;
            Ok(if conn.json {
                as_json(&v)
            } else {
                show_table(&v)
            })
        }
        AdminCommand::Weight {
            route,
            weights,
            reason,
            if_match,
            ..
        } => {
            let patch = RoutePatchBody {
                split: Some(parse_weights(weights)?),
                reason: reason.clone(),
                ..Default::default()
            };
            change(api.typed(api.client.patch_route(route, &patch, *if_match))?)
        }
        AdminCommand::Rollback { route, reason, .. } => {
            change(api.typed(api.client.rollback(route, reason))?)
        }
        AdminCommand::Revert {
            version, reason, ..
        } => change(api.typed(api.client.send(
            http::Method::POST,
            "/v1/revert",
            Some(&json!({ "to": version, "reason": reason })),
            None,
        ))?),
        AdminCommand::History { version, limit, .. } => match version {
            Some(n) => {
                let v = api.call("GET", &format!("/v1/history/{n}"), None)?;
                Ok(if conn.json {
                    as_json(&v)
                } else {
                    show_version(&v)
                })
            }
            None => {
                let v = api.call("GET", &format!("/v1/history?limit={limit}"), None)?;
                Ok(if conn.json {
                    as_json(&v)
                } else {
                    show_history(&v)
                })
            }
        },
        AdminCommand::Diff { from, to, .. } => {
            let a = api.call("GET", &format!("/v1/history/{from}"), None)?;
            let b = api.call("GET", &format!("/v1/history/{to}"), None)?;
            let table = |v: &Value, n: u64| -> Result<TableFile, CliError> {
                serde_json::from_value(v["table"].clone()).map_err(|e| CliError::Decode {
                    url: format!("{}/v1/history/{n}", api.base),
                    message: e.to_string(),
                })
            };
            let s = summary::diff(&table(&a, *from)?, &table(&b, *to)?);
            Ok(if conn.json {
                as_json(&json!({ "from": from, "to": to, "changes": s }))
            } else {
                show_diff(*from, *to, &s)
            })
        }
        AdminCommand::Hold {
            routes,
            max_ms,
            reason,
            on_expiry,
            max_queued,
            max_queued_bytes,
            ..
        } => {
            let req = HoldRequest {
                routes: routes.clone(),
                max_ms: *max_ms,
                reason: reason.clone(),
                on_expiry: *on_expiry,
                max_queued: *max_queued,
                max_queued_bytes: *max_queued_bytes,
            };
            let r = api.typed(api.client.hold(&req))?;
            Ok(if conn.json {
                as_json(&r)
            } else {
                format!(
                    "holding {} for at most {} ms (switchyard release to end it)\n{}",
                    r.held.iter().cloned().collect::<Vec<_>>().join(" "),
                    r.max_ms,
                    hold_line(&r.hold)
                )
            })
        }
        AdminCommand::Release { .. } => {
            let r = api.typed(api.client.release())?;
            Ok(if conn.json {
                as_json(&r)
            } else if !r.released.is_empty() {
                format!(
                    "released {}",
                    r.released.iter().cloned().collect::<Vec<_>>().join(" ")
                )
            } else {
                "no hold was in force".into()
            })
        }
        AdminCommand::Adopt { reason, .. } => change(api.typed(api.client.send(
            http::Method::POST,
            "/v1/adopt",
            Some(&json!({ "reason": reason })),
            None,
        ))?),
        AdminCommand::Upstreams { .. } => {
            let v = api.call("GET", "/v1/upstreams", None)?;
            Ok(if conn.json {
                as_json(&v)
            } else {
                show_upstreams(&v)
            })
        }
        AdminCommand::Inflight { .. } => {
            let v = api.typed(api.client.inflight())?;
            Ok(if conn.json {
                as_json(&v)
            } else {
                show_inflight(&v)
            })
        }
        AdminCommand::Traffic { window, .. } => {
            traffic::parse_window(window).map_err(|e| CliError::Usage(format!("--window: {e}")))?;
            let path = format!("/v1/traffic?window={}", window.trim());
            let t: TrafficView = api.typed(api.client.get(&path))?;
            Ok(if conn.json {
                as_json(&t)
            } else {
                show_traffic(&t)
            })
        }
        AdminCommand::Fleet { cmd } => super::fleet::execute(cmd, &api),
        AdminCommand::Shadow { route, .. } => {
            let path = match route {
                Some(r) => format!("/v1/shadow/{r}"),
                None => "/v1/shadow".to_string(),
            };
            let v: ShadowView = api.typed(api.client.get(&path))?;
            Ok(if conn.json {
                as_json(&v)
            } else {
                show_shadow(&v)
            })
        }
    }
}

/// Per route: counts and match rate, then the recent mismatches.
fn show_shadow(v: &ShadowView) -> String {
    let n = |c: &BTreeMap<String, u64>, k: &str| c.get(k).copied().unwrap_or(0).to_string();
    let rows: Vec<Vec<String>> = v
        .routes
        .iter()
        .map(|(id, r)| {
            vec![
                id.clone(),
                r.upstream.clone().unwrap_or_else(|| "-".into()),
                r.match_rate
                    .map_or_else(|| "-".into(), |m| format!("{:.1}%", m * 100.0)),
                n(&r.counts, "match"),
                n(&r.counts, "status_mismatch"),
                n(&r.counts, "header_mismatch"),
                n(&r.counts, "body_mismatch"),
                n(&r.counts, "shadow_error"),
                n(&r.counts, "skipped"),
            ]
        })
        .collect();
    let mut out = columns(
        &[
            "ROUTE", "SHADOW", "MATCH%", "MATCH", "STATUS", "HEADER", "BODY", "ERROR", "SKIPPED",
        ],
        &rows,
    );
    out.push_str(&format!(
        "\nin flight: {} (cap {})\n",
        v.inflight, v.max_inflight
    ));
    for (id, r) in &v.routes {
        if r.recent.is_empty() {
            continue;
        }
        out.push_str(&format!("\nrecent mismatches of {id}:\n"));
        for m in &r.recent {
            let mut line = format!(
                "  {} {} {} {}: primary {} ({} B), shadow {} ({} B)",
                m.time,
                m.result,
                m.method,
                m.path,
                m.primary_status,
                m.primary_bytes,
                m.shadow_status,
                m.shadow_bytes
            );
            if let Some(h) = &m.header {
                line.push_str(&format!("; header {h}"));
            }
            if let Some(e) = &m.error {
                line.push_str(&format!("; {e}"));
            }
            out.push_str(&line);
            out.push('\n');
            for d in &m.json_diff {
                out.push_str(&format!("      {d}\n"));
            }
        }
    }
    out
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn list(v: &Value) -> String {
    match v.as_array() {
        Some(a) if !a.is_empty() => a.iter().map(s).collect::<Vec<_>>().join(" "),
        _ => "-".into(),
    }
}

/// Left-aligned columns separated by two spaces.
pub fn columns(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let pad = widths
                    .get(i)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(c.chars().count());
                l.push_str(c);
                l.push_str(&" ".repeat(pad + 2));
            }
        }
        l.trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

fn source_line(v: &Value) -> String {
    let src = &v["source"];
    if src.is_null() {
        return String::new();
    }
    let mut l = format!(
        "{} {} by {} at {}",
        s(&src["source"]),
        s(&src["action"]),
        s(&src["actor"]),
        s(&src["time"])
    );
    if let Some(r) = src["reason"].as_str() {
        l.push_str(&format!(": {r:?}"));
    }
    l
}

fn show_table(v: &Value) -> String {
    let mut out = format!("version {}  ({})\n", s(&v["version"]), source_line(v));
    let rows: Vec<Vec<String>> = v["routes"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|r| {
            let mut m = String::new();
            if let Some(h) = r["hosts"].as_array() {
                m.push_str(&h.iter().map(s).collect::<Vec<_>>().join(","));
            }
            m.push_str(r["path"].as_str().unwrap_or(""));
            if let Some(ms) = r["methods"].as_array() {
                m.push_str(&format!(
                    " [{}]",
                    ms.iter().map(s).collect::<Vec<_>>().join(",")
                ));
            }
            let weights = r["weights"]
                .as_object()
                .map(|w| {
                    w.iter()
                        .map(|(n, p)| format!("{n}={}", summary::pct(p.as_f64().unwrap_or(0.0))))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            let mut origin = s(&r["origin"]);
            if r["api_changed"].as_bool() == Some(true) {
                origin.push_str(" (changed via API)");
            }
            vec![s(&r["id"]), m, weights, list(&r["fallbacks"]), origin]
        })
        .collect();
    out.push_str(&columns(
        &["ROUTE", "MATCH", "WEIGHTS", "FALLBACK", "ORIGIN"],
        &rows,
    ));
    let c = &v["files"]["conflict"];
    if !c.is_null() {
        out.push_str(&format!(
            "\nwarning: a route file reload was refused at {}: it would change {} (changed via the API); `switchyard adopt` lets the files win\n",
            s(&c["time"]),
            list(&c["subjects"])
        ));
    }
    if !v["hold"].is_null() {
        out.push_str(&format!(
            "\nhold: {} for {} ms more\n",
            list(&v["hold"]["routes"]),
            s(&v["hold"]["remaining_ms"])
        ));
    }
    out
}

pub(super) fn show_change(c: &ChangeResult) -> String {
    let mut out = format!("version {} ({} by {})\n", c.version, c.action, c.actor);
    out.push_str(&diff_lines(&c.changes));
    for w in &c.warnings {
        out.push_str(&format!("{}\n", detail_line(w)));
    }
    out
}

fn diff_lines(c: &Summary) -> String {
    if c.is_empty() {
        return "  no changes\n".into();
    }
    let mut rows: Vec<Vec<String>> = c
        .routes
        .iter()
        .map(|r| {
            let what = match r.change {
                ChangeKind::Added => format!("added: {}", r.after.clone().unwrap_or_default()),
                ChangeKind::Removed => {
                    format!("removed (was {})", r.before.clone().unwrap_or_default())
                }
                ChangeKind::Changed => {
                    let (b, a) = (
                        r.before.clone().unwrap_or_default(),
                        r.after.clone().unwrap_or_default(),
                    );
                    if a != b {
                        format!("{b} -> {a}")
                    } else {
                        format!("changed {}", r.fields.join(", "))
                    }
                }
            };
            vec![format!("  route {}", r.route), what]
        })
        .collect();
    for u in &c.upstreams {
        let what = match u.change {
            ChangeKind::Added => "added".to_string(),
            ChangeKind::Removed => "removed".to_string(),
            ChangeKind::Changed => format!("changed {}", u.fields.join(", ")),
        };
        rows.push(vec![format!("  upstream {}", u.upstream), what]);
    }
    if c.proxy {
        rows.push(vec!["  [proxy]".into(), "changed".into()]);
    }
    if c.order {
        rows.push(vec!["  route order".into(), "changed".into()]);
    }
    let mut out = String::new();
    let w = rows.iter().map(|r| r[0].len()).max().unwrap_or(0);
    for r in rows {
        out.push_str(&format!("{:w$}  {}\n", r[0], r[1]));
    }
    out
}

fn show_history(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["versions"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|r| {
            let mut action = s(&r["action"]);
            if let Some(t) = r["reverted_to"].as_u64() {
                action.push_str(&format!(" to {t}"));
            }
            vec![
                s(&r["version"]),
                s(&r["time"]),
                s(&r["actor"]),
                s(&r["source"]),
                action,
                s(&r["reason"]),
                s(&r["summary"]),
            ]
        })
        .collect();
    columns(
        &[
            "VERSION", "TIME", "ACTOR", "SOURCE", "ACTION", "REASON", "CHANGES",
        ],
        &rows,
    )
}

fn show_version(v: &Value) -> String {
    let changes: Summary = serde_json::from_value(v["changes"].clone()).unwrap_or_default();
    let mut out = format!(
        "version {}\n  time    {}\n  actor   {}\n  source  {}{}\n  action  {}\n  reason  {}\n",
        s(&v["version"]),
        s(&v["time"]),
        s(&v["actor"]),
        s(&v["source"]),
        v["files"]
            .as_str()
            .map(|f| format!(" ({f})"))
            .unwrap_or_default(),
        match v["reverted_to"].as_u64() {
            Some(t) => format!("{} to {t}", s(&v["action"])),
            None => s(&v["action"]),
        },
        s(&v["reason"]),
    );
    out.push_str("changes:\n");
    out.push_str(&diff_lines(&changes));
    if let Ok(t) = serde_json::from_value::<TableFile>(v["table"].clone()) {
        out.push_str("routes:\n");
        for r in &t.routes {
            out.push_str(&format!(
                "  {}  {}  {}\n",
                r.id,
                r.path,
                summary::describe_route(r)
            ));
        }
    }
    out
}

fn show_diff(from: u64, to: u64, c: &Summary) -> String {
    format!("version {from} -> {to}\n{}", diff_lines(c))
}

fn show_upstreams(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["upstreams"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|u| {
            let mut state = s(&u["state"]);
            if let Some(ms) = u["ejected_for_ms"].as_u64() {
                state.push_str(&format!(" ({ms} ms left)"));
            }
            vec![s(&u["name"]), state, list(&u["addrs"]), list(&u["routes"])]
        })
        .collect();
    columns(&["UPSTREAM", "STATE", "ADDRS", "ROUTES"], &rows)
}

fn show_inflight(v: &InflightView) -> String {
    let rows: Vec<Vec<String>> = v
        .routes
        .iter()
        .map(|(id, c)| vec![id.clone(), c.inflight.to_string(), c.queued.to_string()])
        .collect();
    let mut out = columns(&["ROUTE", "INFLIGHT", "QUEUED"], &rows);
    if let Some(h) = &v.hold {
        out.push_str(&hold_line(h));
    }
    out
}

/// The hold in force, one line.
fn hold_line(h: &HoldView) -> String {
    let routes = h.routes.iter().cloned().collect::<Vec<_>>().join(" ");
    if h.expired {
        format!("hold: {routes}: deadline passed, refusing requests (503) until release\n")
    } else {
        format!(
            "hold: {routes} for {} ms more, then {} (queue cap {} requests, {} bytes; {} refused)\n",
            h.remaining_ms,
            match h.on_expiry {
                OnExpiry::Proceed => "proceed",
                OnExpiry::Reject => "refuse with 503",
            },
            h.max_queued,
            h.max_queued_bytes,
            h.overflowed
        )
    }
}

/// `3s`, `5m 10s`, `2h 5m`, `3d 4h`: a duration to read at a glance.
pub fn short_duration(ms: u64) -> String {
    let s = ms / 1000;
    let (big, unit, small, small_unit) = match s {
        0..=59 => return format!("{s}s"),
        60..=3599 => (s / 60, "m", s % 60, "s"),
        3600..=86_399 => (s / 3600, "h", s % 3600 / 60, "m"),
        _ => (s / 86_400, "d", s % 86_400 / 3600, "h"),
    };
    if small == 0 {
        format!("{big}{unit}")
    } else {
        format!("{big}{unit} {small}{small_unit}")
    }
}

/// One character per count, scaled to the largest: `.` for none, `▁` to `█` for some.
pub fn sparkline(counts: &[u64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = counts.iter().copied().max().unwrap_or(0);
    counts
        .iter()
        .map(|&c| {
            if c == 0 {
                '.'
            } else {
                BARS[((c * 8 - 1) / max.max(1)).min(7) as usize]
            }
        })
        .collect()
}

fn show_traffic(t: &TrafficView) -> String {
    let row = |name: &str, x: &traffic::Traffic| {
        vec![
            name.to_string(),
            x.in_window.to_string(),
            x.requests.to_string(),
            x.last_seen.clone().unwrap_or_else(|| "never".into()),
            x.last_seen_ms_ago
                .map_or_else(|| "-".into(), |ms| format!("{} ago", short_duration(ms))),
            sparkline(&x.per_minute),
        ]
    };
    let mut rows: Vec<Vec<String>> = t.hosts.iter().map(|h| row(&h.host, &h.traffic)).collect();
    rows.push(row("(other)", &t.other));
    let mut out = format!(
        "requests per host, window {} ({} of {} host slots used)\n",
        short_duration(t.window_ms),
        t.hosts.len(),
        t.tracked_hosts_max
    );
    out.push_str(&columns(
        &[
            "HOST",
            "IN WINDOW",
            "TOTAL",
            "LAST SEEN",
            "AGO",
            "PER MINUTE (oldest first)",
        ],
        &rows,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_formatting() {
        assert_eq!(sparkline(&[0, 1, 4, 8]), ".▁▄█");
        assert_eq!(sparkline(&[]), "");
        assert_eq!(short_duration(48 * 3_600_000), "2d");
        assert_eq!(short_duration(3_700_000), "1h 1m");
        assert_eq!(short_duration(61_000), "1m 1s");
        let t = crate::metrics::traffic::HostTable::new(1_800_000_000_000);
        t.record("api.example.com");
        let out = show_traffic(&t.view(1_800_000_030_000, std::time::Duration::from_secs(900)));
        assert!(
            out.contains("window 15m (1 of 128 host slots used)"),
            "{out}"
        );
        assert!(
            out.lines().any(|l| l.starts_with("api.example.com  1 ")),
            "{out}"
        );
        assert!(
            out.lines()
                .any(|l| l.starts_with("(other)") && l.contains("never")),
            "{out}"
        );
    }

    #[test]
    fn weights_and_columns() {
        let w = parse_weights(&["new=25".into(), "legacy=75%".into()]).unwrap();
        assert_eq!(w["new"], 25.0);
        assert_eq!(w["legacy"], 75.0);
        assert!(parse_weights(&["new".into()]).is_err());
        assert!(parse_weights(&["new=x".into()]).is_err());
        assert!(parse_weights(&["a=1".into(), "a=2".into()]).is_err());
        assert_eq!(
            columns(&["A", "BB"], &[vec!["xyz".into(), "1".into()]]),
            "A    BB\nxyz  1\n"
        );
    }
}
