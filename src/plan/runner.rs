//! The plan runner: an explicit state machine over the plan's steps. Before each step runs,
//! its state goes to the local journal and to the admin API (`PUT /v1/plans/NAME`, repeated
//! every half second as the runner's lease); each step's action is idempotent, so a resume
//! runs the journal's step again without repeating a completed outside change.
//!
//! Any wait (bake, approval, drain, a control command's own `--wait`) has a deadline and runs
//! with the gates on; a failed gate or a passed deadline rolls the route back to `from` at once
//! and runs the `undo` of completed control steps. An abort (`plan abort`, the dashboard) rolls
//! back in the admin API itself; the runner sees it in the answer to its next report and stops.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::file::{parse_control, Plan, StepKind};
use super::gate::Gates;
use super::journal::{Journal, JournalError, Phase, Status};
use crate::admin::client::{AdminClient, ClientError};
use crate::admin::types::{GateFigure, PlanAbort, PlanReport, PlanView, RoutePatchBody, TableView};
use crate::control::aws::human_duration;

/// How often the runner reports (its heartbeat).
pub const HEARTBEAT: Duration = Duration::from_millis(500);
/// The runner's lease: without a report for this long, another runner may take the plan.
pub const LEASE: Duration = Duration::from_millis(3000);
/// Longest wait for the route's rollback to go through before giving up and saying so.
const ROLLBACK_TRIES: u32 = 10;

/// Why a run could not start (nothing was changed), or failed outside the plan's own logic.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the plan does not fit the live table:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
    #[error("admin API: {0}")]
    Admin(#[from] ClientError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("{0}")]
    Refused(String),
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every step done.
    Completed,
    /// Dry run: timeline printed, nothing changed.
    DryRun,
    /// A gate failed or a deadline passed: the route went back to `from`.
    RolledBack(String),
    /// Aborted from outside.
    Aborted(String),
    /// It stopped without a rollback (the lease was lost, or the rollback itself failed).
    Failed(String),
}

/// Options of `plan run` and `plan resume`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub admin: String,
    pub json: bool,
    pub state_dir: PathBuf,
}

/// One event: printed for people, or as one JSON line with `--json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// RFC 3339 UTC.
    pub time: String,
    pub plan: String,
    /// `plan_started`, `plan_resumed`, `step_started`, `progress`, `step_done`, `rolled_back`,
    /// `aborted`, `undo`, `plan_completed`, `plan_failed`, `dry_run`.
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
    pub steps: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<GateFigure>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// A gate figure for people: `error_rate 0.012 (max 0.02) pass`.
pub fn gate_line(g: &GateFigure) -> String {
    let fig = match g.figure {
        Some(f) if g.unit == "ms" => format!("{f:.0}ms"),
        Some(f) if g.unit == "%" => format!("{f:.3}%"),
        Some(f) => format!("{f:.4}"),
        None => "n/a".into(),
    };
    let limit = match g.unit.as_str() {
        "ms" => format!("{:.0}ms", g.threshold),
        "%" => format!("{}%", g.threshold),
        _ => format!("{}", g.threshold),
    };
    format!("{} {fig} (limit {limit}) {}", g.name, g.verdict)
}

impl Event {
    fn human(&self) -> String {
        let at = match self.step {
            Some(s) => format!("[{}/{}] ", s + 1, self.steps),
            None => String::new(),
        };
        let name = self.step_name.as_deref().unwrap_or("");
        let mut out = match self.event.as_str() {
            "progress" => {
                let mut s = format!("{at}{name}:");
                if let Some(l) = self.left_ms {
                    s.push_str(&format!(
                        " {} left",
                        human_duration(Duration::from_millis(l))
                    ));
                }
                if !self.message.is_empty() {
                    s.push_str(&format!(" {}", self.message));
                }
                s
            }
            "step_started" => format!("{at}{name}: started"),
            "step_done" => format!(
                "{at}{name}: done{}",
                self.duration_ms
                    .map(|d| format!(" in {}", human_duration(Duration::from_millis(d))))
                    .unwrap_or_default()
            ),
            _ => format!("{at}{}{}", self.event.replace('_', " "), {
                if self.message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", self.message)
                }
            }),
        };
        if !self.gates.is_empty() {
            let g: Vec<String> = self.gates.iter().map(gate_line).collect();
            out.push_str(&format!(" | {}", g.join(" | ")));
        }
        out
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn random_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// What stopped the steps.
enum Stop {
    /// A gate failed: its figure.
    Gate(GateFigure),
    /// A wait's deadline passed, or a step's action failed.
    Step(String),
    /// Aborted from outside.
    Aborted(PlanAbort),
    /// Another runner holds the plan now.
    Lost(String),
}

/// Prints events.
struct Printer {
    json: bool,
    plan: String,
    steps: usize,
}

impl Printer {
    fn emit(&self, mut e: Event) {
        e.plan = self.plan.clone();
        e.steps = self.steps;
        let line = if self.json {
            serde_json::to_string(&e).unwrap_or_default()
        } else {
            e.human()
        };
        let mut out = std::io::stdout().lock();
        // Progress is best effort: a closed stdout must not stop a migration.
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    fn event(&self, kind: &str, step: Option<(usize, &str)>) -> Event {
        Event {
            time: crate::proxy::log::now_rfc3339(),
            plan: self.plan.clone(),
            event: kind.to_string(),
            step: step.map(|s| s.0),
            steps: self.steps,
            step_name: step.map(|s| s.1.to_string()),
            duration_ms: None,
            weight: None,
            left_ms: None,
            gates: Vec::new(),
            message: String::new(),
        }
    }
}

/// The running plan.
struct Run {
    plan: Plan,
    client: AdminClient,
    journal: Journal,
    dir: PathBuf,
    gates: Gates,
    out: Printer,
    /// What the heartbeat reports.
    report: Arc<Mutex<PlanReport>>,
    /// The admin API's answer to the last report.
    view: watch::Receiver<Option<PlanView>>,
    tx: Arc<watch::Sender<Option<PlanView>>>,
    /// When the gates are next due.
    next_gate: Instant,
    last_figures: Vec<GateFigure>,
}

/// Checks the plan against the live table: the route, `to` and `from` exist. Every problem at
/// once.
pub async fn validate_live(plan: &Plan, client: &AdminClient) -> Result<u64, RunError> {
    let t = client.table().await?;
    let errs = check_table(plan, &t);
    if errs.is_empty() {
        Ok(t.version)
    } else {
        Err(RunError::Invalid(errs))
    }
}

/// The plan's problems with table `t`: an unknown route or upstream, or a route whose split
/// also sends traffic to an upstream that is neither `to` nor `from` (a plan step would take
/// that traffic away without saying so).
fn check_table(plan: &Plan, t: &TableView) -> Vec<String> {
    let mut errs = Vec::new();
    match t.route(&plan.route) {
        None => errs.push(format!(
            "route: {:?} is not a route of the live table (routes: {})",
            plan.route,
            t.routes
                .iter()
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Some(r) => {
            let others: Vec<String> = r
                .weights
                .iter()
                .filter(|(u, w)| **u != plan.to && **u != plan.from && **w > 0.0)
                .map(|(u, w)| format!("{u}={w}"))
                .collect();
            if !others.is_empty() {
                errs.push(format!(
                    "route: {:?} also sends traffic to {} (neither `to` nor `from`); move it first",
                    plan.route,
                    others.join(", ")
                ));
            }
        }
    }
    let names: Vec<&str> = t.upstreams.keys().map(String::as_str).collect();
    for (k, u) in [("to", &plan.to), ("from", &plan.from)] {
        if !t.upstreams.contains_key(u) {
            errs.push(format!(
                "{k}: {u:?} is not an upstream of the live table (upstreams: {})",
                names.join(", ")
            ));
        }
    }
    errs
}

/// The split that puts `percent` on `to` and the rest on `from`.
fn split_for(plan: &Plan, percent: f64) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    m.insert(plan.to.clone(), percent);
    m.insert(
        plan.from.clone(),
        ((100.0 - percent) * 100.0).round() / 100.0,
    );
    m
}

/// `plan run --dry-run`: validates everything it can without changing anything and prints the
/// timeline.
pub async fn dry_run(plan: Plan, opts: &RunOptions) -> Result<Outcome, RunError> {
    let client = AdminClient::new(&opts.admin)?;
    validate_live(&plan, &client).await?;
    let out = Printer {
        json: opts.json,
        plan: plan.name.clone(),
        steps: plan.steps.len(),
    };
    let mut problems = Vec::new();
    let mut gates = Gates::new(plan.gates.clone(), &plan.route, &plan.to);
    let figures = gates.evaluate(&client).await;
    for g in &figures {
        if g.verdict == "error" {
            // A gate that cannot be evaluated now would fail the run after its grace. (A gate
            // failing now is shown with its figure, not refused: the run would roll back at its
            // first evaluation, which may be what the operator wants to see happen.)
            problems.push(format!("gate {}: {}", g.name, g.detail));
        }
    }
    let mut e = out.event("dry_run", None);
    e.message = format!(
        "route {} from {} to {}, gates every {}; nothing will be changed",
        plan.route,
        plan.from,
        plan.to,
        human_duration(plan.interval)
    );
    e.gates = figures;
    out.emit(e);
    let mut at = Duration::ZERO;
    for (i, s) in plan.steps.iter().enumerate() {
        let mut e = out.event("dry_run", Some((i, &s.name)));
        e.message = match &s.kind {
            StepKind::Weight { percent, bake } => {
                let m = format!(
                    "at +{}: set {} to {}={percent} {}={}, bake {}",
                    human_duration(at),
                    plan.route,
                    plan.to,
                    plan.from,
                    100.0 - percent,
                    human_duration(*bake)
                );
                at += *bake;
                e.weight = Some(*percent);
                m
            }
            StepKind::Approve { timeout } => format!(
                "at +{}: wait for `switchyard plan approve {}` (up to {})",
                human_duration(at),
                plan.name,
                human_duration(*timeout)
            ),
            StepKind::WaitDrain {
                edge,
                host,
                fewer_than,
                window,
                timeout,
                ..
            } => match drain_figure(edge, host, window).await {
                Ok((n, note)) => format!(
                    "at +{}: wait until {host} has fewer than {fewer_than} requests in {window} at {edge} (now {n}{note}; up to {})",
                    human_duration(at),
                    human_duration(*timeout)
                ),
                Err(err) => {
                    problems.push(format!("step {} ({}): {err}", i + 1, s.name));
                    format!("at +{}: {host} at {edge}: {err}", human_duration(at))
                }
            },
            StepKind::Control {
                argv,
                dry_runnable,
                ..
            } => {
                let shown = format!("switchyard {}", argv.join(" "));
                if *dry_runnable {
                    let mut dry = argv.clone();
                    dry.push("--dry-run".into());
                    match parse_control(&dry) {
                        Ok(cmd) => match crate::control::execute(cmd).await {
                            Ok(o) if o.code == 0 => format!(
                                "at +{}: {shown}; its --dry-run says: {}",
                                human_duration(at),
                                o.text.trim()
                            ),
                            Ok(o) => {
                                problems.push(format!("step {} ({}): {}", i + 1, s.name, o.text.trim()));
                                format!("at +{}: {shown}; its --dry-run says no: {}", human_duration(at), o.text.trim())
                            }
                            Err(err) => {
                                problems.push(format!("step {} ({}): {err}", i + 1, s.name));
                                format!("at +{}: {shown}; its --dry-run failed: {err}", human_duration(at))
                            }
                        },
                        Err(err) => format!("at +{}: {shown} ({err})", human_duration(at)),
                    }
                } else {
                    format!(
                        "at +{}: {shown} (has no --dry-run: not checked)",
                        human_duration(at)
                    )
                }
            }
        };
        out.emit(e);
    }
    if problems.is_empty() {
        Ok(Outcome::DryRun)
    } else {
        Err(RunError::Invalid(problems))
    }
}

/// The fields of `GET /v1/traffic` a drain reads.
#[derive(Debug, Deserialize)]
struct Traffic {
    hosts: Vec<TrafficHost>,
    other: Counted,
    tracked_hosts_max: usize,
}

#[derive(Debug, Deserialize)]
struct TrafficHost {
    host: String,
    in_window: u64,
    #[serde(default)]
    last_seen: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Counted {
    in_window: u64,
}

/// `in_window` of `host`, and a note for people. A host without a slot of its own while every
/// slot is taken is counted in "other": its figure is then "other"'s, an upper bound, so a
/// drain is never declared on missing evidence.
fn drain_of(t: &Traffic, host: &str) -> (u64, String) {
    match t.hosts.iter().find(|h| h.host.eq_ignore_ascii_case(host)) {
        Some(h) => (
            h.in_window,
            h.last_seen
                .as_ref()
                .map(|l| format!(", last seen {l}"))
                .unwrap_or_else(|| ", never seen".into()),
        ),
        None if t.hosts.len() >= t.tracked_hosts_max => (
            t.other.in_window,
            format!(
                " (not among the {} hosts tracked: the figure is every untracked host's)",
                t.tracked_hosts_max
            ),
        ),
        None => (0, ", never seen".into()),
    }
}

/// The drain figure of `host` at the switchyard whose admin API is `edge`.
async fn drain_figure(edge: &str, host: &str, window: &str) -> Result<(u64, String), String> {
    let c = AdminClient::new(edge).map_err(|e| e.to_string())?;
    let t: Traffic = c
        .get(&format!("/v1/traffic?window={window}"))
        .await
        .map_err(|e| format!("GET {edge}/v1/traffic: {e}"))?;
    Ok(drain_of(&t, host))
}

/// Registers the run with the admin API, retrying a refusal for up to `wait` (a resume after
/// `kill -9` waits out the dead runner's lease).
async fn register(
    client: &AdminClient,
    name: &str,
    report: &PlanReport,
    wait: Duration,
) -> Result<PlanView, RunError> {
    let deadline = Instant::now() + wait;
    loop {
        match client
            .send::<_, PlanView>(
                http::Method::PUT,
                &format!("/v1/plans/{name}"),
                Some(report),
                None,
            )
            .await
        {
            Ok(v) => return Ok(v),
            Err(e) if e.status() == Some(409) => {
                if Instant::now() >= deadline {
                    return Err(RunError::Refused(format!("{e}")));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Starts a new run of `plan`.
pub async fn run(plan: Plan, opts: &RunOptions) -> Result<Outcome, RunError> {
    let client = AdminClient::new(&opts.admin)?.with_actor(format!("plan:{}", plan.name));
    validate_live(&plan, &client).await?;
    if let Some(j) = Journal::load(&opts.state_dir, &plan.name)? {
        if !j.status.finished() {
            return Err(RunError::Refused(format!(
                "plan {:?} has an unfinished run (step {} of {}, journal {}): `switchyard plan resume {}` continues it, `switchyard plan abort {}` ends it",
                plan.name,
                j.step + 1,
                plan.steps.len(),
                super::journal::path(&opts.state_dir, &plan.name).display(),
                plan.name,
                plan.name
            )));
        }
    }
    let file = std::fs::canonicalize(&plan.path).unwrap_or_else(|_| plan.path.clone());
    let journal = Journal {
        name: plan.name.clone(),
        file,
        digest: plan.digest.clone(),
        admin: opts.admin.clone(),
        run_id: format!("{}-{}", unix_ms(), random_id()),
        status: Status::Running,
        step: 0,
        phase: Phase::Starting,
        bake_started_ms: None,
        weight: None,
        control_done: Vec::new(),
        message: String::new(),
        updated: String::new(),
    };
    start(plan, client, journal, opts, false).await
}

/// Continues the unfinished run of plan `name` from its journal.
pub async fn resume(
    name: &str,
    admin: Option<String>,
    opts: &RunOptions,
) -> Result<Outcome, RunError> {
    let j = Journal::load(&opts.state_dir, name)?.ok_or_else(|| {
        RunError::Refused(format!(
            "no journal for plan {name:?} in {}",
            opts.state_dir.display()
        ))
    })?;
    if j.status.finished() {
        return Err(RunError::Refused(format!(
            "plan {name:?} is {} ({}); `switchyard plan run FILE` starts it again",
            j.status.as_str(),
            j.message
        )));
    }
    let plan = super::file::load(&j.file)
        .map_err(|p| RunError::Invalid(p.iter().map(ToString::to_string).collect()))?;
    if plan.digest != j.digest {
        return Err(RunError::Refused(format!(
            "{} changed since the run started; resume needs the same plan (abort it and run the new one)",
            j.file.display()
        )));
    }
    let admin = admin.unwrap_or_else(|| j.admin.clone());
    let client = AdminClient::new(&admin)?.with_actor(format!("plan:{}", plan.name));
    validate_live(&plan, &client).await?;
    let opts = RunOptions {
        admin,
        ..opts.clone()
    };
    start(plan, client, j, &opts, true).await
}

async fn start(
    plan: Plan,
    client: AdminClient,
    mut journal: Journal,
    opts: &RunOptions,
    resumed: bool,
) -> Result<Outcome, RunError> {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
    let step_name = plan
        .steps
        .get(journal.step)
        .map(|s| s.name.clone())
        .unwrap_or_default();
    let report = PlanReport {
        route: plan.route.clone(),
        to: plan.to.clone(),
        from: plan.from.clone(),
        run_id: journal.run_id.clone(),
        runner: format!("{host}:{}:{}", std::process::id(), random_id()),
        status: "running".into(),
        step: journal.step,
        steps: plan.steps.len(),
        step_name,
        weight: journal.weight,
        bake_total_ms: None,
        bake_left_ms: None,
        gates: Vec::new(),
        message: if resumed {
            "resumed".into()
        } else {
            "started".into()
        },
        lease_ms: LEASE.as_millis() as u64,
    };
    let wait = if resumed {
        LEASE + Duration::from_secs(1)
    } else {
        Duration::ZERO
    };
    let view = register(&client, &plan.name, &report, wait).await?;
    if let Some(a) = &view.abort {
        journal.status = Status::Aborted;
        journal.message = format!("aborted by {} ({})", a.actor, a.reason);
        journal.save(&opts.state_dir)?;
        return Err(RunError::Refused(format!(
            "plan {:?} was aborted by {} ({})",
            plan.name, a.actor, a.reason
        )));
    }
    journal.save(&opts.state_dir)?;
    let report = Arc::new(Mutex::new(report));
    let (tx, rx) = watch::channel(Some(view));
    let tx = Arc::new(tx);
    let hb = tokio::spawn(heartbeat(
        client.clone(),
        plan.name.clone(),
        report.clone(),
        tx.clone(),
    ));
    let out = Printer {
        json: opts.json,
        plan: plan.name.clone(),
        steps: plan.steps.len(),
    };
    let gates = Gates::new(plan.gates.clone(), &plan.route, &plan.to);
    let mut run = Run {
        plan,
        client,
        journal,
        dir: opts.state_dir.clone(),
        gates,
        out,
        report,
        view: rx,
        tx,
        next_gate: Instant::now(),
        last_figures: Vec::new(),
    };
    let mut e = run.out.event(
        if resumed {
            "plan_resumed"
        } else {
            "plan_started"
        },
        None,
    );
    e.message = format!(
        "route {} from {} to {}; run {}; journal {}",
        run.plan.route,
        run.plan.from,
        run.plan.to,
        run.journal.run_id,
        super::journal::path(&run.dir, &run.plan.name).display()
    );
    run.out.emit(e);
    let outcome = run.steps().await;
    hb.abort();
    run.finish(outcome).await
}

/// Reports every [`HEARTBEAT`]; the answers (abort, approvals) go to the runner.
async fn heartbeat(
    client: AdminClient,
    name: String,
    report: Arc<Mutex<PlanReport>>,
    tx: Arc<watch::Sender<Option<PlanView>>>,
) {
    let client = client.with_timeout(Duration::from_secs(2));
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        let r = report.lock().clone();
        match client
            .send::<_, PlanView>(
                http::Method::PUT,
                &format!("/v1/plans/{name}"),
                Some(&r),
                None,
            )
            .await
        {
            Ok(v) => {
                let _ = tx.send(Some(v));
            }
            Err(e) if e.status() == Some(409) => {
                let mut lost = PlanView::default();
                lost.report.status = "lost".into();
                lost.report.message = e.to_string();
                let _ = tx.send(Some(lost));
            }
            // Unreachable for a moment: the gates notice if it lasts.
            Err(e) => tracing::debug!(error = %e, "plan report failed"),
        }
    }
}

impl Run {
    fn stop_from_view(&self) -> Option<Stop> {
        let v = self.view.borrow();
        let v = v.as_ref()?;
        if let Some(a) = &v.abort {
            return Some(Stop::Aborted(a.clone()));
        }
        (v.report.status == "lost").then(|| Stop::Lost(v.report.message.clone()))
    }

    fn approved(&self, step: usize) -> bool {
        self.view
            .borrow()
            .as_ref()
            .is_some_and(|v| v.approved.contains(&step))
    }

    /// Sends the report now (step boundaries), besides the heartbeat.
    async fn report_now(&mut self) -> Option<Stop> {
        let r = self.report.lock().clone();
        if let Ok(v) = self
            .client
            .send::<_, PlanView>(
                http::Method::PUT,
                &format!("/v1/plans/{}", self.plan.name),
                Some(&r),
                None,
            )
            .await
        {
            let _ = self.tx.send(Some(v));
        }
        self.stop_from_view()
    }

    fn save(&mut self) -> Result<(), Stop> {
        self.journal
            .save(&self.dir)
            .map_err(|e| Stop::Step(e.to_string()))
    }

    /// Walks the steps from the journal's.
    async fn steps(&mut self) -> Result<(), Stop> {
        while self.journal.step < self.plan.steps.len() {
            let i = self.journal.step;
            let step = self.plan.steps[i].clone();
            {
                let mut r = self.report.lock();
                r.step = i;
                r.step_name = step.name.clone();
                r.status = "running".into();
                r.bake_left_ms = None;
                r.bake_total_ms = None;
                r.message = String::new();
            }
            // Journal first: a crash from here on resumes this step.
            self.save()?;
            if let Some(s) = self.report_now().await {
                return Err(s);
            }
            let started = Instant::now();
            self.out
                .emit(self.out.event("step_started", Some((i, &step.name))));
            let mut rx = self.view.clone();
            let result = tokio::select! {
                r = self.step(i) => r,
                s = watch_stop(&mut rx) => Err(s),
            };
            result?;
            let mut e = self.out.event("step_done", Some((i, &step.name)));
            e.duration_ms = Some(started.elapsed().as_millis() as u64);
            e.weight = self.journal.weight;
            self.out.emit(e);
            self.journal.step = i + 1;
            self.journal.phase = Phase::Starting;
            self.journal.bake_started_ms = None;
            self.save()?;
        }
        Ok(())
    }

    async fn step(&mut self, i: usize) -> Result<(), Stop> {
        let step = self.plan.steps[i].clone();
        match step.kind {
            StepKind::Weight { percent, bake } => {
                if self.journal.phase == Phase::Starting {
                    self.set_weight(i, percent).await?;
                    self.journal.weight = Some(percent);
                    self.journal.phase = Phase::Applied;
                    self.journal.bake_started_ms = Some(unix_ms());
                    self.save()?;
                }
                self.report.lock().weight = Some(percent);
                self.gates.baseline(&self.client).await;
                self.next_gate = Instant::now() + self.plan.interval;
                let started = self.journal.bake_started_ms.unwrap_or_else(unix_ms);
                let end = Instant::now()
                    + Duration::from_millis(
                        (started + bake.as_millis() as u64).saturating_sub(unix_ms()),
                    );
                self.report.lock().bake_total_ms = Some(bake.as_millis() as u64);
                loop {
                    let now = Instant::now();
                    let left = end.saturating_duration_since(now);
                    self.report.lock().bake_left_ms = Some(left.as_millis() as u64);
                    if left.is_zero() {
                        break;
                    }
                    let wake = end.min(self.next_gate);
                    tokio::time::sleep_until(wake.into()).await;
                    // A tick due at the bake's end is the final one below.
                    let now = Instant::now();
                    if now >= self.next_gate && now < end {
                        self.gate_tick(i, &step.name, Some(end)).await?;
                    }
                }
                // The bake's end is a verdict point. A gate that cannot be evaluated now is no
                // pass: the bake goes on until it can be, or until its grace runs out and it
                // fails (the deadline of this wait).
                loop {
                    self.gate_tick(i, &step.name, Some(end)).await?;
                    if !self.last_figures.iter().any(|g| g.verdict == "error") {
                        return Ok(());
                    }
                    tokio::time::sleep(self.plan.interval).await;
                }
            }
            StepKind::Approve { timeout } => {
                self.report.lock().status = "waiting_approval".into();
                self.report.lock().message =
                    format!("waiting for `switchyard plan approve {}`", self.plan.name);
                let _ = self.report_now().await;
                let end = Instant::now() + timeout;
                self.next_gate = Instant::now() + self.plan.interval;
                loop {
                    if self.approved(i) {
                        self.report.lock().status = "running".into();
                        return Ok(());
                    }
                    if Instant::now() >= end {
                        return Err(Stop::Step(format!(
                            "no approval within {}",
                            human_duration(timeout)
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if Instant::now() >= self.next_gate {
                        self.gate_tick(i, &step.name, Some(end)).await?;
                    }
                }
            }
            StepKind::WaitDrain {
                edge,
                host,
                fewer_than,
                window,
                poll,
                timeout,
            } => {
                let end = Instant::now() + timeout;
                let mut next_poll = Instant::now();
                self.next_gate = Instant::now() + self.plan.interval;
                loop {
                    if Instant::now() >= next_poll {
                        match drain_figure(&edge, &host, &window).await {
                            Ok((n, note)) => {
                                let msg = format!(
                                    "{host}: {n} requests in the last {window} at {edge} (done below {fewer_than}){note}"
                                );
                                let mut e = self.out.event("progress", Some((i, &step.name)));
                                e.message = msg.clone();
                                self.out.emit(e);
                                self.report.lock().message = msg;
                                if n < fewer_than {
                                    return Ok(());
                                }
                            }
                            Err(err) => {
                                let mut e = self.out.event("progress", Some((i, &step.name)));
                                e.message = format!("cannot read the drain figure: {err}");
                                self.out.emit(e);
                            }
                        }
                        next_poll = Instant::now() + poll;
                    }
                    if Instant::now() >= end {
                        return Err(Stop::Step(format!(
                            "{host} still had traffic at {edge} after {}",
                            human_duration(timeout)
                        )));
                    }
                    let wake = next_poll.min(end).min(self.gate_due());
                    tokio::time::sleep_until(wake.into()).await;
                    if Instant::now() >= self.next_gate {
                        self.gate_tick(i, &step.name, Some(end)).await?;
                    }
                }
            }
            StepKind::Control { argv, timeout, .. } => {
                if self.journal.control_done.contains(&i) {
                    // Done before a crash, just not yet marked as passed: never run twice.
                    return Ok(());
                }
                let cmd = parse_control(&argv).map_err(Stop::Step)?;
                let end = Instant::now() + timeout;
                self.next_gate = Instant::now() + self.plan.interval;
                let fut = crate::control::execute(cmd);
                tokio::pin!(fut);
                let result = loop {
                    tokio::select! {
                        r = &mut fut => break r,
                        _ = tokio::time::sleep_until(end.min(self.gate_due()).into()) => {
                            if Instant::now() >= end {
                                return Err(Stop::Step(format!(
                                    "`switchyard {}` did not finish within {}",
                                    argv.join(" "),
                                    human_duration(timeout)
                                )));
                            }
                            self.gate_tick(i, &step.name, None).await?;
                        }
                    }
                };
                match result {
                    Ok(o) if o.code == 0 => {
                        self.journal.control_done.push(i);
                        self.journal.phase = Phase::Applied;
                        self.save()?;
                        let mut e = self.out.event("progress", Some((i, &step.name)));
                        e.message = o.text.trim().to_string();
                        self.out.emit(e);
                        Ok(())
                    }
                    Ok(o) => Err(Stop::Step(format!(
                        "`switchyard {}` said no (exit {}): {}",
                        argv.join(" "),
                        o.code,
                        o.text.trim()
                    ))),
                    Err(e) => Err(Stop::Step(format!(
                        "`switchyard {}` failed: {e}",
                        argv.join(" ")
                    ))),
                }
            }
        }
    }

    /// When the gates are next due; far away when there are none, or before any weight.
    fn gate_due(&self) -> Instant {
        if self.plan.gates.is_empty() || self.journal.weight.is_none() {
            Instant::now() + Duration::from_secs(3600)
        } else {
            self.next_gate
        }
    }

    /// Evaluates the gates (once a weight is set), reports and prints the figures; a failed
    /// gate stops the plan.
    async fn gate_tick(&mut self, i: usize, name: &str, end: Option<Instant>) -> Result<(), Stop> {
        self.next_gate = Instant::now() + self.plan.interval;
        if self.plan.gates.is_empty() || self.journal.weight.is_none() {
            return Ok(());
        }
        let figures = self.gates.evaluate(&self.client).await;
        let left = end.map(|e| e.saturating_duration_since(Instant::now()).as_millis() as u64);
        {
            let mut r = self.report.lock();
            r.gates = figures.clone();
        }
        let mut e = self.out.event("progress", Some((i, name)));
        e.left_ms = left;
        e.weight = self.journal.weight;
        e.gates = figures.clone();
        self.out.emit(e);
        self.last_figures = figures.clone();
        match figures.into_iter().find(|g| g.verdict == "fail") {
            Some(g) => Err(Stop::Gate(g)),
            None => Ok(()),
        }
    }

    /// Sets the route to `percent` on `to`, unless it is there already (a resumed step).
    async fn set_weight(&mut self, i: usize, percent: f64) -> Result<(), Stop> {
        let want = split_for(&self.plan, percent);
        for _ in 0..3 {
            let t = self
                .client
                .table()
                .await
                .map_err(|e| Stop::Step(format!("reading the table: {e}")))?;
            let r = t.route(&self.plan.route).ok_or_else(|| {
                Stop::Step(format!(
                    "route {:?} is gone from the live table",
                    self.plan.route
                ))
            })?;
            let have: BTreeMap<String, f64> =
                r.weights.iter().map(|(k, v)| (k.clone(), *v)).collect();
            let same = want
                .iter()
                .all(|(k, v)| (have.get(k).copied().unwrap_or(0.0) - v).abs() < 0.005)
                && have.iter().all(|(k, v)| want.contains_key(k) || *v == 0.0);
            if same {
                return Ok(());
            }
            if let Some(s) = self.stop_from_view() {
                return Err(s);
            }
            let body = RoutePatchBody {
                split: Some(want.clone()),
                reason: Some(format!(
                    "plan {} step {}/{}: {}",
                    self.plan.name,
                    i + 1,
                    self.plan.steps.len(),
                    self.plan.steps[i].name
                )),
                ..RoutePatchBody::default()
            };
            // If-Match: an abort (a newer version) between our read and this change wins.
            match self
                .client
                .patch_route(&self.plan.route, &body, Some(t.version))
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if e.status() == Some(409) => {
                    // Someone changed the table: an abort, or an operator. Look again.
                    let _ = self.report_now().await;
                    if let Some(s) = self.stop_from_view() {
                        return Err(s);
                    }
                }
                Err(e) => return Err(Stop::Step(format!("setting the weight: {e}"))),
            }
        }
        Err(Stop::Step(
            "the table kept changing under the plan (3 tries)".into(),
        ))
    }

    /// Sends the route back to `from` (split `from` 100, `to` 0: the route keeps its
    /// fallback, which may be `from`); returns the new version.
    async fn rollback(&mut self, why: &str) -> Result<u64, String> {
        let body = RoutePatchBody {
            split: Some(split_for(&self.plan, 0.0)),
            reason: Some(format!("plan {}: rollback: {why}", self.plan.name)),
            ..RoutePatchBody::default()
        };
        let mut last = String::new();
        for n in 0..ROLLBACK_TRIES {
            match self.client.patch_route(&self.plan.route, &body, None).await {
                Ok(c) => return Ok(c.version),
                Err(e) => {
                    last = e.to_string();
                    if e.status().is_some_and(|s| s != 503) {
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100 * u64::from(n + 1))).await;
        }
        Err(last)
    }

    /// Runs the `undo` of every completed control step, newest first.
    async fn undo(&mut self) {
        let done: Vec<usize> = self.journal.control_done.iter().rev().copied().collect();
        for i in done {
            let step = self.plan.steps[i].clone();
            let StepKind::Control {
                undo: Some(undo),
                timeout,
                ..
            } = &step.kind
            else {
                continue;
            };
            let mut e = self.out.event("undo", Some((i, &step.name)));
            e.message = match parse_control(undo) {
                Ok(cmd) => match tokio::time::timeout(*timeout, crate::control::execute(cmd)).await
                {
                    Ok(Ok(o)) if o.code == 0 => format!("`switchyard {}`: done", undo.join(" ")),
                    Ok(Ok(o)) => {
                        format!("`switchyard {}` said no: {}", undo.join(" "), o.text.trim())
                    }
                    Ok(Err(err)) => format!("`switchyard {}` failed: {err}", undo.join(" ")),
                    Err(_) => format!(
                        "`switchyard {}` did not finish within {}",
                        undo.join(" "),
                        human_duration(*timeout)
                    ),
                },
                Err(err) => format!("cannot parse the undo: {err}"),
            };
            self.out.emit(e);
        }
    }

    async fn finish(&mut self, result: Result<(), Stop>) -> Result<Outcome, RunError> {
        let i = self
            .journal
            .step
            .min(self.plan.steps.len().saturating_sub(1));
        let step_name = self
            .plan
            .steps
            .get(i)
            .map(|s| s.name.clone())
            .unwrap_or_default();
        let at = format!("step {}/{} ({step_name})", i + 1, self.plan.steps.len());
        let (status, outcome, event) = match result {
            Ok(()) => {
                self.journal.step = self.plan.steps.len();
                (
                    Status::Completed,
                    Outcome::Completed,
                    format!(
                        "route {} is at {}% on {}",
                        self.plan.route,
                        self.journal.weight.unwrap_or(0.0),
                        self.plan.to
                    ),
                )
            }
            Err(stop @ (Stop::Gate(_) | Stop::Step(_))) => {
                let why = match &stop {
                    Stop::Gate(g) => format!(
                        "gate {} failed at {at}: {} ({})",
                        g.name,
                        gate_line(g),
                        g.detail
                    ),
                    Stop::Step(s) => format!("{at} failed: {s}"),
                    _ => String::new(),
                };
                match self.rollback(&why).await {
                    Ok(v) => {
                        self.undo().await;
                        let msg = format!(
                            "{why}; route {} sent back to {} (version {v})",
                            self.plan.route, self.plan.from
                        );
                        (Status::RolledBack, Outcome::RolledBack(msg.clone()), msg)
                    }
                    Err(e) => {
                        let msg = format!(
                            "{why}; THE ROLLBACK FAILED ({e}): send route {} to {} by hand (`switchyard weight {} {}=100`)",
                            self.plan.route, self.plan.from, self.plan.route, self.plan.from
                        );
                        (Status::Failed, Outcome::Failed(msg.clone()), msg)
                    }
                }
            }
            Err(Stop::Aborted(a)) => {
                self.undo().await;
                let msg = format!(
                    "aborted by {} at {at} ({}); route {} sent back to {}{}",
                    a.actor,
                    a.reason,
                    self.plan.route,
                    self.plan.from,
                    a.version
                        .map(|v| format!(" (version {v})"))
                        .unwrap_or_default()
                );
                (Status::Aborted, Outcome::Aborted(msg.clone()), msg)
            }
            Err(Stop::Lost(m)) => {
                let msg = format!(
                    "stopped at {at}: the plan's lease was lost ({m}); nothing rolled back"
                );
                (Status::Failed, Outcome::Failed(msg.clone()), msg)
            }
        };
        self.journal.status = status;
        self.journal.message = event.clone();
        let saved = self.journal.save(&self.dir);
        {
            let mut r = self.report.lock();
            r.status = status.as_str().into();
            r.message = event.clone();
            r.bake_left_ms = None;
        }
        let _ = self.report_now().await;
        let kind = match status {
            Status::Completed => "plan_completed",
            Status::RolledBack => "rolled_back",
            Status::Aborted => "aborted",
            _ => "plan_failed",
        };
        let mut e = self.out.event(kind, None);
        e.message = event;
        e.weight = self.journal.weight;
        e.gates = self.last_figures.clone();
        self.out.emit(e);
        saved?;
        Ok(outcome)
    }
}

/// Resolves when the admin API's answer says stop (abort, lost lease).
async fn watch_stop(rx: &mut watch::Receiver<Option<PlanView>>) -> Stop {
    loop {
        {
            let v = rx.borrow_and_update();
            if let Some(v) = v.as_ref() {
                if let Some(a) = &v.abort {
                    return Stop::Aborted(a.clone());
                }
                if v.report.status == "lost" {
                    return Stop::Lost(v.report.message.clone());
                }
            }
        }
        if rx.changed().await.is_err() {
            // The heartbeat ended: never stop on that alone.
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `GET /v1/traffic` as the charts branch serves it (`metrics::traffic::TrafficView`).
    const TRAFFIC: &str = r#"{"window_ms":172800000,"hosts":[
        {"host":"busy.example.com","requests":90,"in_window":40,"last_seen":"2026-11-30T03:00:00Z",
         "last_seen_ms_ago":1200,"per_minute":[1,2],"tracked_since":"2026-11-30T02:00:00Z"},
        {"host":"quiet.example.com","requests":5,"in_window":0,"last_seen":"2026-11-27T03:00:00Z",
         "last_seen_ms_ago":259200000,"per_minute":[0],"tracked_since":"2026-11-26T02:00:00Z"}],
        "other":{"requests":7,"in_window":3,"last_seen":null,"last_seen_ms_ago":null,"per_minute":[],
         "tracked_since":"2026-11-26T02:00:00Z"},"tracked_hosts_max":128}"#;

    #[test]
    fn drain_figures() {
        let t: Traffic = serde_json::from_str(TRAFFIC).unwrap();
        assert_eq!(drain_of(&t, "busy.example.com").0, 40);
        assert_eq!(drain_of(&t, "Quiet.Example.com").0, 0);
        assert_eq!(drain_of(&t, "never.example.com").0, 0);
        let mut full: Traffic = serde_json::from_str(TRAFFIC).unwrap();
        full.tracked_hosts_max = 2;
        // Every slot taken: an untracked host may be inside "other".
        assert_eq!(drain_of(&full, "never.example.com").0, 3);
    }

    #[test]
    fn splits_and_event_lines() {
        let plan = crate::plan::file::compile(
            "p.toml",
            "name = \"p\"\nroute = \"r\"\nto = \"new\"\nfrom = \"old\"\n[[steps]]\nweight = 12.5\n",
            std::path::Path::new("p.toml"),
        )
        .unwrap();
        let s = split_for(&plan, 12.5);
        assert_eq!((s["new"], s["old"]), (12.5, 87.5));
        let g = GateFigure {
            name: "error_rate".into(),
            figure: Some(0.25),
            threshold: 0.02,
            unit: "ratio".into(),
            verdict: "fail".into(),
            detail: String::new(),
        };
        assert_eq!(gate_line(&g), "error_rate 0.2500 (limit 0.02) fail");
        let table = |weights: &[(&str, f64)]| TableView {
            routes: vec![crate::admin::types::RouteView {
                id: "r".into(),
                weights: weights.iter().map(|(u, w)| (u.to_string(), *w)).collect(),
                ..Default::default()
            }],
            upstreams: ["new", "old", "third"]
                .iter()
                .map(|u| (u.to_string(), serde_json::Value::Null))
                .collect(),
            ..Default::default()
        };
        assert!(check_table(&plan, &table(&[("old", 100.0), ("third", 0.0)])).is_empty());
        let errs = check_table(&plan, &table(&[("old", 90.0), ("third", 10.0)]));
        assert!(
            errs[0].contains("also sends traffic to third=10"),
            "{errs:?}"
        );
    }
}
