//! `switchyard plan check|run|resume|status|abort|approve`.
//!
//! Exit codes: 0 done (a plan completed, a check passed); 1 the plan rolled back, was aborted
//! or failed (the message names the gate, its figure and the step); 2 nothing was changed
//! because the input or the admin API said no (invalid plan, unreachable admin API, a run
//! already going).

use std::path::PathBuf;
use std::process::ExitCode;

use super::file;
use super::journal::{self, Journal, Status};
use super::runner::{self, gate_line, Outcome, RunError, RunOptions};
use crate::admin::client::AdminClient;
use crate::admin::types::{PlanAbortBody, PlanApproveBody, PlanView, PlansView};

/// Default admin API when neither `--admin`, `SWITCHYARD_ADMIN` nor the plan's `admin` says.
pub const DEFAULT_ADMIN: &str = "http://127.0.0.1:9090";

/// `switchyard plan ...`
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    #[command(subcommand)]
    pub cmd: PlanCommand,
}

/// Where the admin API and the journals are, and how to print.
#[derive(Debug, Clone, clap::Args)]
pub struct Where {
    /// Admin API base URL. Default: the plan's `admin`, else http://127.0.0.1:9090.
    #[arg(long, env = "SWITCHYARD_ADMIN", value_name = "URL")]
    pub admin: Option<String>,
    /// Journal directory. Default: `$SWITCHYARD_STATE_DIR`, else `$XDG_STATE_HOME/switchyard`,
    /// else `~/.local/state/switchyard`.
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The plan actions.
#[derive(Debug, clap::Subcommand)]
pub enum PlanCommand {
    /// Check plan files (every problem, by line and field); nothing is contacted.
    Check {
        /// Plan files (TOML).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run a plan: its steps in order, gates on, rollback on a failed gate.
    Run {
        /// The plan file (TOML).
        file: PathBuf,
        /// Print the timeline and check the route, upstreams, gates and AWS steps (their own
        /// --dry-run) without changing anything.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        at: Where,
    },
    /// Continue an unfinished run from its journal (after a crash or `kill -9`).
    Resume {
        /// The plan's name (its journal is `DIR/plans/NAME.json`).
        name: String,
        #[command(flatten)]
        at: Where,
    },
    /// Where each plan stands (the admin API's view, and local journals).
    Status {
        /// Only this plan.
        name: Option<String>,
        #[command(flatten)]
        at: Where,
    },
    /// Roll the plan's route back to `from` now and stop its runner.
    Abort {
        /// The plan's name.
        name: String,
        /// Why (recorded in the history).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        at: Where,
    },
    /// Approve the plan's waiting `approve` step.
    Approve {
        /// The plan's name.
        name: String,
        /// The step (1-based) to approve; default the one the plan is at.
        #[arg(long)]
        step: Option<usize>,
        #[command(flatten)]
        at: Where,
    },
}

/// Runs a `plan` action; see the module for exit codes.
pub fn run(args: PlanArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    rt.block_on(execute(args.cmd))
}

fn admin_of(at: &Where, plan: Option<&str>) -> String {
    at.admin
        .clone()
        .or_else(|| plan.map(str::to_string))
        .unwrap_or_else(|| DEFAULT_ADMIN.to_string())
}

fn state_of(at: &Where) -> Result<PathBuf, String> {
    journal::state_dir(at.state.as_deref()).map_err(|e| e.to_string())
}

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(code)
}

async fn execute(cmd: PlanCommand) -> ExitCode {
    match cmd {
        PlanCommand::Check { files } => {
            let mut bad = false;
            for f in &files {
                match file::load(f) {
                    Ok(p) => println!(
                        "{}: ok: plan {:?}, route {} from {} to {}, {} steps, {} gates",
                        f.display(),
                        p.name,
                        p.route,
                        p.from,
                        p.to,
                        p.steps.len(),
                        p.gates.len()
                    ),
                    Err(problems) => {
                        bad = true;
                        for p in &problems {
                            eprintln!("error: {p}");
                        }
                        println!("{}: {} error(s)", f.display(), problems.len());
                    }
                }
            }
            ExitCode::from(if bad { 2 } else { 0 })
        }
        PlanCommand::Run { file, dry_run, at } => {
            let plan = match file::load(&file) {
                Ok(p) => p,
                Err(problems) => {
                    for p in &problems {
                        eprintln!("error: {p}");
                    }
                    return fail(
                        2,
                        format!(
                            "{}: {} error(s); nothing changed",
                            file.display(),
                            problems.len()
                        ),
                    );
                }
            };
            let state_dir = match state_of(&at) {
                Ok(d) => d,
                Err(e) => return fail(2, e),
            };
            let opts = RunOptions {
                admin: admin_of(&at, plan.admin.as_deref()),
                json: at.json,
                state_dir,
            };
            let r = if dry_run {
                runner::dry_run(plan, &opts).await
            } else {
                runner::run(plan, &opts).await
            };
            outcome(r)
        }
        PlanCommand::Resume { name, at } => {
            let state_dir = match state_of(&at) {
                Ok(d) => d,
                Err(e) => return fail(2, e),
            };
            let opts = RunOptions {
                admin: String::new(),
                json: at.json,
                state_dir,
            };
            outcome(runner::resume(&name, at.admin.clone(), &opts).await)
        }
        PlanCommand::Status { name, at } => status(name, &at).await,
        PlanCommand::Abort { name, reason, at } => abort(&name, reason, &at).await,
        PlanCommand::Approve { name, step, at } => {
            let dir = state_of(&at).ok();
            let j = dir.and_then(|d| Journal::load(&d, &name).ok().flatten());
            let admin = admin_of(&at, j.as_ref().map(|j| j.admin.as_str()));
            let client = match AdminClient::new(&admin) {
                Ok(c) => c.with_actor(format!("plan:{name}")),
                Err(e) => return fail(2, e),
            };
            let body = PlanApproveBody {
                step: step.map(|s| s.saturating_sub(1)),
            };
            match client
                .send::<_, PlanView>(
                    http::Method::POST,
                    &format!("/v1/plans/{name}/approve"),
                    Some(&body),
                    None,
                )
                .await
            {
                Ok(v) => {
                    if at.json {
                        println!("{}", serde_json::to_string(&v).unwrap_or_default());
                    } else {
                        let steps: Vec<String> =
                            v.approved.iter().map(|s| (s + 1).to_string()).collect();
                        println!(
                            "plan {name}: approved step(s) {} (now at step {}/{}: {})",
                            steps.join(", "),
                            v.report.step + 1,
                            v.report.steps,
                            v.report.step_name
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(2, e),
            }
        }
    }
}

fn outcome(r: Result<Outcome, RunError>) -> ExitCode {
    match r {
        Ok(Outcome::Completed) | Ok(Outcome::DryRun) => ExitCode::SUCCESS,
        Ok(Outcome::RolledBack(m)) => fail(1, format!("rolled back: {m}")),
        Ok(Outcome::Aborted(m)) => fail(1, m),
        Ok(Outcome::Failed(m)) => fail(1, m),
        Err(e) => fail(2, format!("{e}; nothing changed by this command")),
    }
}

async fn status(name: Option<String>, at: &Where) -> ExitCode {
    let dir = state_of(at).ok();
    let journals: Vec<Journal> = dir
        .as_deref()
        .map(Journal::all)
        .unwrap_or_default()
        .into_iter()
        .filter(|j| name.as_ref().is_none_or(|n| &j.name == n))
        .collect();
    let admin = admin_of(
        at,
        journals
            .iter()
            .find(|j| !j.status.finished())
            .or(journals.first())
            .map(|j| j.admin.as_str()),
    );
    let (plans, reach) = match AdminClient::new(&admin) {
        Ok(c) => match c.get::<PlansView>("/v1/plans").await {
            Ok(v) => (v.plans, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        },
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let plans: Vec<PlanView> = plans
        .into_iter()
        .filter(|p| name.as_ref().is_none_or(|n| &p.name == n))
        .collect();
    if at.json {
        let v = serde_json::json!({ "admin": admin, "plans": plans, "journals": journals, "admin_error": reach });
        println!("{v}");
        return ExitCode::SUCCESS;
    }
    if let Some(e) = &reach {
        eprintln!("warning: {e}; showing local journals only");
    }
    let mut rows = vec![vec![
        "PLAN".to_string(),
        "ROUTE".into(),
        "STATUS".into(),
        "STEP".into(),
        "WEIGHT".into(),
        "BAKE LEFT".into(),
        "GATES".into(),
        "RUNNER".into(),
    ]];
    for p in &plans {
        let r = &p.report;
        rows.push(vec![
            p.name.clone(),
            format!("{} ({} -> {})", r.route, r.from, r.to),
            r.status.clone(),
            format!("{}/{} {}", (r.step + 1).min(r.steps), r.steps, r.step_name),
            r.weight
                .map(|w| format!("{w}%"))
                .unwrap_or_else(|| "-".into()),
            r.bake_left_ms
                .map(|l| crate::control::aws::human_duration(std::time::Duration::from_millis(l)))
                .unwrap_or_else(|| "-".into()),
            if r.gates.is_empty() {
                "-".into()
            } else {
                r.gates.iter().map(gate_line).collect::<Vec<_>>().join("; ")
            },
            if crate::admin::plans::FINISHED.contains(&r.status.as_str()) {
                "ended".to_string()
            } else if p.lease_live {
                format!("live ({} ms ago)", p.reported_ms_ago)
            } else {
                format!("gone ({} s ago)", p.reported_ms_ago / 1000)
            },
        ]);
    }
    for j in journals
        .iter()
        .filter(|j| !plans.iter().any(|p| p.name == j.name))
    {
        rows.push(vec![
            j.name.clone(),
            "(journal only)".into(),
            j.status.as_str().into(),
            format!("{}", j.step + 1),
            j.weight
                .map(|w| format!("{w}%"))
                .unwrap_or_else(|| "-".into()),
            "-".into(),
            "-".into(),
            j.message.clone(),
        ]);
    }
    if rows.len() == 1 {
        println!("no plans");
    } else {
        print!("{}", crate::control::table(&rows));
    }
    ExitCode::SUCCESS
}

async fn abort(name: &str, reason: Option<String>, at: &Where) -> ExitCode {
    let dir = state_of(at).ok();
    let mut j = dir
        .as_deref()
        .and_then(|d| Journal::load(d, name).ok().flatten());
    let admin = admin_of(at, j.as_ref().map(|j| j.admin.as_str()));
    let client = match AdminClient::new(&admin) {
        Ok(c) => c,
        Err(e) => return fail(2, e),
    };
    let body = PlanAbortBody {
        reason: reason.clone(),
    };
    match client
        .send::<_, PlanView>(
            http::Method::POST,
            &format!("/v1/plans/{name}/abort"),
            Some(&body),
            None,
        )
        .await
    {
        Ok(v) => {
            // A local journal of the same run (its runner may be dead) ends here too, so a
            // later `plan run` is not refused as unfinished.
            if let (Some(jr), Some(d)) = (j.as_mut(), dir.as_deref()) {
                if !jr.status.finished() && jr.run_id == v.report.run_id {
                    jr.status = Status::Aborted;
                    jr.message = v.report.message.clone();
                    if let Err(e) = jr.save(d) {
                        eprintln!("warning: {e}");
                    }
                }
            }
            if at.json {
                println!("{}", serde_json::to_string(&v).unwrap_or_default());
            } else {
                let version = v
                    .abort
                    .as_ref()
                    .and_then(|a| a.version)
                    .map(|v| format!(" (version {v})"))
                    .unwrap_or_default();
                println!(
                    "plan {name} aborted: route {} sent back to {}{version}",
                    v.report.route, v.report.from
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) if e.status() == Some(404) => {
            // The admin API does not know the plan (restarted since): roll back from the
            // journal.
            let Some(jr) = j.as_mut().filter(|j| !j.status.finished()) else {
                return fail(2, format!("no running plan {name:?} in the admin API at {admin} nor in a local journal"));
            };
            let plan = match file::load(&jr.file) {
                Ok(p) => p,
                Err(p) => {
                    return fail(
                        2,
                        format!(
                            "journal's plan file: {}",
                            p.first().map(ToString::to_string).unwrap_or_default()
                        ),
                    )
                }
            };
            let patch = crate::admin::types::RoutePatchBody {
                split: Some(std::collections::BTreeMap::from([
                    (plan.from.clone(), 100.0),
                    (plan.to.clone(), 0.0),
                ])),
                reason: Some(format!(
                    "abort plan {name}{}",
                    reason.map(|r| format!(": {r}")).unwrap_or_default()
                )),
                ..Default::default()
            };
            match client.patch_route(&plan.route, &patch, None).await {
                Ok(c) => {
                    jr.status = Status::Aborted;
                    jr.message = format!(
                        "aborted from the journal: route {} sent back to {} (version {})",
                        plan.route, plan.from, c.version
                    );
                    if let Some(d) = &dir {
                        if let Err(e) = jr.save(d) {
                            eprintln!("warning: {e}");
                        }
                    }
                    println!(
                        "plan {name} aborted: route {} sent back to {} (version {})",
                        plan.route, plan.from, c.version
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(2, e),
            }
        }
        Err(e) => fail(2, e),
    }
}
