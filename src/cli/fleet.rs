//! `switchyard fleet status` (every node's version, as a table) and `switchyard fleet push DIR`
//! (route files loaded into the fleet through one node, under the files-vs-API rule).

use std::path::PathBuf;

use http::Method;

use super::admin::{columns, Api, CliError, Conn};
use crate::admin::history::StoredDoc;
use crate::admin::types::{ChangeResult, FleetView, PushRequest};

/// `switchyard fleet ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum FleetCommand {
    /// Every node of the fleet: the version it serves, whether it is live, when it last
    /// confirmed, and any version it refused.
    Status {
        #[command(flatten)]
        conn: Conn,
    },
    /// Load route files (a file or directory, compiled here first) into the fleet as a new
    /// version, under the files-vs-API rule: refused when it would undo an API change, unless
    /// --force. Relative paths in them (`ca_file`) resolve on each node against its own
    /// --routes directory.
    Push {
        #[command(flatten)]
        conn: Conn,
        /// Route file or directory.
        dir: PathBuf,
        /// Let the files undo changes made through the API.
        #[arg(long)]
        force: bool,
    },
}

impl FleetCommand {
    /// The connection options.
    pub fn conn(&self) -> &Conn {
        match self {
            FleetCommand::Status { conn } | FleetCommand::Push { conn, .. } => conn,
        }
    }
}

/// Runs a fleet command; the output to print.
pub(super) fn execute(cmd: &FleetCommand, api: &Api) -> Result<String, CliError> {
    let json = cmd.conn().json;
    match cmd {
        FleetCommand::Status { .. } => {
            let v: FleetView = api.typed(api.client.fleet())?;
            Ok(if json {
                serde_json::to_string_pretty(&v).unwrap_or_default()
            } else {
                show_status(&v)
            })
        }
        FleetCommand::Push { dir, force, .. } => {
            let doc = crate::config::load_path(dir).map_err(|errs| {
                let lines: Vec<String> = errs
                    .into_iter()
                    .map(|e| crate::routing::Diagnostic::from(e).to_string())
                    .collect();
                CliError::Usage(format!(
                    "{} does not load:\n{}",
                    dir.display(),
                    lines.join("\n")
                ))
            })?;
            let req = PushRequest {
                doc: StoredDoc::from(&doc),
                force: *force,
            };
            let r: Option<ChangeResult> =
                api.typed(
                    api.client
                        .send(Method::POST, "/v1/fleet/push", Some(&req), None),
                )?;
            Ok(match (json, r) {
                (true, r) => serde_json::to_string_pretty(&r).unwrap_or_default(),
                (false, Some(c)) => super::admin::show_change(&c),
                (false, None) => "the files are as last loaded; the live table stays\n".to_string(),
            })
        }
    }
}

fn show_status(v: &FleetView) -> String {
    let rows: Vec<Vec<String>> = v
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.node.clone(),
                n.version.to_string(),
                if n.live { "yes" } else { "no" }.to_string(),
                format!("{} ms", n.last_seen_ms),
                n.rejected
                    .as_ref()
                    .map(|r| format!("version {}: {}", r.version, r.error))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    format!(
        "fleet version {} ({}), etcd {} (seen from {})\n{}",
        v.version,
        if v.converged {
            "converged"
        } else {
            "NOT converged"
        },
        v.etcd,
        v.node,
        columns(&["NODE", "VERSION", "LIVE", "LAST SEEN", "REJECTED"], &rows)
    )
}
