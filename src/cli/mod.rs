//! Command-line subcommands that are not services: `check` (and, over the admin API, the
//! operator commands).

pub mod admin;
pub mod fleet;

use std::path::PathBuf;
use std::process::ExitCode;

use crate::routing::compile::{check_path, Severity};

/// `switchyard check PATH...`: compiles route files and prints every problem.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// Route files or directories.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Print diagnostics as JSON lines.
    #[arg(long)]
    pub json: bool,
}

/// Runs `check`: exit 0 when every path compiles (warnings allowed), 1 otherwise.
pub fn check(args: &CheckArgs) -> ExitCode {
    let mut failed = false;
    for path in &args.paths {
        let (compiled, diags) = check_path(path);
        let errors = diags
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count();
        let warnings = diags.len() - errors;
        for d in &diags {
            if args.json {
                println!("{}", serde_json::to_string(d).unwrap_or_default());
            } else {
                eprintln!("{d}");
            }
        }
        match compiled {
            Some(c) if errors == 0 => {
                if !args.json {
                    println!(
                        "{}: ok: {} routes, {} upstreams, {warnings} warning(s)",
                        path.display(),
                        c.table.routes.len(),
                        c.table.upstreams.len()
                    );
                }
            }
            _ => {
                failed = true;
                if !args.json {
                    println!(
                        "{}: {errors} error(s), {warnings} warning(s)",
                        path.display()
                    );
                }
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Where switchyard's command-line tools keep their own state (the database cutover's journal,
/// plan progress): $SWITCHYARD_STATE_DIR, else $XDG_STATE_HOME/switchyard, else
/// ~/.local/state/switchyard, else ./switchyard-state when there is no home directory.
pub fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SWITCHYARD_STATE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("switchyard");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(h) => PathBuf::from(h).join(".local/state/switchyard"),
        None => PathBuf::from("switchyard-state"),
    }
}
