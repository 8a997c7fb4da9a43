//! `switchyard db cutover` and `db rollback`: the primary moves from one server to the other
//! while the proxy holds the application's requests, with no master-master moment and nothing
//! acknowledged lost.
//!
//! preflight -> catch up -> hold -> drain -> fence -> final position -> wait target ->
//! promote -> reverse -> switch -> release. The pause (hold to release) is bounded by
//! `--max-pause-ms`; any failure before `promote` aborts: the source is unfenced (only after
//! checking the target is not writable), locked accounts unlocked, the hold released to the
//! unchanged routes. Every step is journaled before it runs ([`super::journal`]); `--resume`
//! aborts an interrupted run that had not reached `promote` and finishes one that had.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::check::{self, Verdict};
use super::conn::{quote, Endpoint, Role, Server};
use super::flavor::WaitResult;
use super::journal::{self, Journal, Phase, ServerRef, Step};
use super::replicate::{self, parse_address, repl_password};
use super::{checks_table, thresholds, CheckOpts, DbError, Servers, StateOpts};
use crate::admin::client::{AdminClient, ClientError};
use crate::admin::types::{HoldRequest, OnExpiry, RoutePatchBody};
use crate::control::aws::parse_duration;
use crate::control::Output;

/// The hold outlives the pause budget by this much, so an abort that runs at the end of the
/// budget still releases a hold in force; a cutover that dies leaves a hold whose deadline
/// passes and then refuses requests (503) until `--resume` releases it.
pub const HOLD_GRACE_MS: u64 = 5_000;
/// Keeps this session's statements out of the binlog (account locks and unlocks).
const NO_BINLOG: &str = "SET SESSION sql_log_bin = 0";
/// The actor the cutover's admin calls are recorded under (next to the token's name).
pub const ACTOR: &str = "db-cutover";

/// Arguments of `db cutover` and `db rollback`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub servers: Servers,
    /// Admin API of the switchyard in front of the application (token from
    /// SWITCHYARD_ADMIN_TOKEN).
    #[arg(
        long,
        env = "SWITCHYARD_ADMIN",
        default_value = "http://127.0.0.1:9090"
    )]
    pub admin: String,
    /// A route whose requests are held during the switch (repeat for several).
    #[arg(long = "route", value_name = "ROUTE")]
    pub routes: Vec<String>,
    /// `ROUTE=UPSTREAM`: where the route goes once the target is primary (for `rollback`: the
    /// routes' old upstream). Repeat for several.
    #[arg(long = "switch", value_name = "ROUTE=UPSTREAM")]
    pub switch: Vec<String>,
    /// Make the old primary a replica of the new one (so a rollback loses nothing). Needs
    /// --repl-user and SWITCHYARD_REPL_PASSWORD.
    #[arg(long)]
    pub reverse: bool,
    /// The source's address as the target reaches it (reverse replication after a rollback),
    /// if not the one in --source.
    #[arg(long, value_name = "HOST:PORT")]
    pub source_address: Option<String>,
    /// The target's address as the source reaches it (reverse replication after a cutover), if
    /// not the one in --target.
    #[arg(long, value_name = "HOST:PORT")]
    pub target_address: Option<String>,
    /// Longest pause of the held routes, from hold to release; past it before promotion, abort.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub max_pause_ms: u64,
    /// How long to wait, before holding anything, for the target to catch up.
    #[arg(long, value_parser = parse_duration, default_value = "30s", value_name = "DURATION")]
    pub catchup_timeout: Duration,
    /// Caught up means at most this many transactions behind (and 0-1 s of replica lag).
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub catchup_transactions: u64,
    #[command(flatten)]
    pub check: CheckOpts,
    /// Run the preflight and print what would be done; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Finish or abort the cutover recorded in the journal (after a crash or kill).
    #[arg(long)]
    pub resume: bool,
    #[command(flatten)]
    pub state: StateOpts,
}

/// Which way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// source -> target.
    Forward,
    /// target -> source (undoing a cutover).
    Back,
}

impl Direction {
    fn word(self) -> &'static str {
        match self {
            Direction::Forward => "cutover",
            Direction::Back => "rollback",
        }
    }
}

/// One step's event: printed as a line for people, or one JSON object per line with --json.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub step: &'static str,
    /// `ok`, `failed`, `skipped`, `aborted`, `done`.
    pub outcome: &'static str,
    pub duration_ms: f64,
    pub detail: String,
    /// Milliseconds since the hold began (None outside the pause).
    pub pause_ms: Option<f64>,
}

/// Prints events as they happen.
pub struct Printer {
    pub json: bool,
}

impl Printer {
    fn emit(&self, e: &Event) {
        let mut out = std::io::stdout().lock();
        if self.json {
            let _ = writeln!(out, "{}", serde_json::to_string(e).unwrap_or_default());
        } else {
            let pause = e
                .pause_ms
                .map(|p| format!("  (pause {p:.0} ms)"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "{:<15} {:<8} {:>8.1} ms  {}{pause}",
                e.step, e.outcome, e.duration_ms, e.detail
            );
        }
        let _ = out.flush();
    }
}

/// Everything the run needs, parsed and validated before anything changes.
struct Run {
    dir: PathBuf,
    journal: Journal,
    from_ep: Endpoint,
    to_ep: Endpoint,
    from: Server,
    to: Server,
    /// A second session on `from`, for statements that may have to be killed at the budget.
    from_b: Server,
    /// A second session on `to`, likewise.
    to_b: Server,
    admin: AdminClient,
    printer: Printer,
    pause_start: Option<Instant>,
    /// Started by `--resume`: steps probe what is already done instead of assuming.
    resumed: bool,
    args: Args,
}

/// The final word of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub direction: &'static str,
    pub outcome: &'static str,
    pub pause_ms: Option<f64>,
    pub message: String,
}

/// Runs `db cutover` / `db rollback` and returns the exit code: 0 done, 1 refused or aborted
/// (nothing changed on either server, routes unchanged), 2 could not run (the message says
/// exactly where it stopped).
pub async fn run(args: Args, dir: Direction) -> Result<Output, DbError> {
    let report = execute(args, dir).await?;
    let code = if report.succeeded() { 0 } else { 1 };
    if code != 0 {
        eprintln!("{}", report.message);
    } else if !report.message.is_empty() {
        println!("{}", report.message);
    }
    Ok(Output {
        text: String::new(),
        code,
    })
}

/// Runs a cutover (or its `--resume`/`--dry-run`) to the end, printing its events, and returns
/// the final word; what `switchyard db cutover` and a plan's `db_cutover` step both call.
pub async fn execute(args: Args, dir: Direction) -> Result<Report, DbError> {
    let printer = Printer {
        json: args.servers.json,
    };
    if args.resume {
        resume(args, dir, printer).await
    } else {
        fresh(args, dir, printer).await
    }
}

impl Report {
    /// Done (or a dry run, or nothing to resume): exit 0. Refused, aborted, or done without
    /// reverse replication: exit 1.
    pub fn succeeded(&self) -> bool {
        matches!(self.outcome, "done" | "dry_run" | "nothing_to_resume")
    }
}

/// Parses `ROUTE=UPSTREAM` pairs.
pub fn parse_switch(specs: &[String]) -> Result<Vec<(String, String)>, DbError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for s in specs {
        let (r, u) = s
            .split_once('=')
            .filter(|(r, u)| !r.trim().is_empty() && !u.trim().is_empty())
            .ok_or_else(|| DbError::Usage(format!("--switch {s:?}: expected ROUTE=UPSTREAM")))?;
        if out.iter().any(|(x, _)| x == r.trim()) {
            return Err(DbError::Usage(format!(
                "--switch: route {r:?} is given twice"
            )));
        }
        out.push((r.trim().to_string(), u.trim().to_string()));
    }
    Ok(out)
}

/// Checks the routes and upstreams against the live table; every problem in one error.
async fn validate_admin(
    admin: &AdminClient,
    routes: &[String],
    switch: &[(String, String)],
) -> Result<(), DbError> {
    let table = admin.table().await?;
    let mut problems = Vec::new();
    for r in routes.iter().chain(switch.iter().map(|(r, _)| r)) {
        if table.route(r).is_none()
            && !problems
                .iter()
                .any(|p: &String| p.contains(&format!("{r:?}")))
        {
            problems.push(format!("route {r:?} is not in the live table"));
        }
    }
    for (r, u) in switch {
        if !table.upstreams.contains_key(u) {
            problems.push(format!(
                "--switch {r}={u}: upstream {u:?} is not in the live table"
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(DbError::Usage(problems.join("; ")))
    }
}

async fn fresh(args: Args, dir: Direction, printer: Printer) -> Result<Report, DbError> {
    if args.routes.is_empty() {
        return Err(DbError::Usage(
            "--route ROUTE is required: the routes whose requests are held".into(),
        ));
    }
    let switch = parse_switch(&args.switch)?;
    if switch.is_empty() {
        return Err(DbError::Usage(
            "--switch ROUTE=UPSTREAM is required: where the routes go once the target is primary"
                .into(),
        ));
    }
    if args.reverse {
        if args.check.repl_user.is_none() {
            return Err(DbError::Usage("--reverse needs --repl-user".into()));
        }
        repl_password()?;
    }
    if args.max_pause_ms == 0 {
        return Err(DbError::Usage("--max-pause-ms must be at least 1".into()));
    }
    let state_dir = args.state.dir();
    if let Some(j) = Journal::load(&state_dir)? {
        if !j.finished() {
            return Err(DbError::Usage(format!(
                "the journal {} holds an unfinished {}: run `switchyard db {} --resume` first ({})",
                journal::path(&state_dir).display(),
                j.direction,
                j.direction,
                j.interrupted_line().trim_end()
            )));
        }
    }
    let (s, t) = args.servers.endpoints()?;
    let (from_ep, to_ep) = match dir {
        Direction::Forward => (s, t),
        Direction::Back => (t, s),
    };
    let admin = AdminClient::new(&args.admin)?.with_actor(ACTOR);
    validate_admin(&admin, &args.routes, &switch).await?;
    let reverse_address = match dir {
        Direction::Forward => args.target_address.clone(),
        Direction::Back => args.source_address.clone(),
    };
    let journal = Journal {
        direction: dir.word().into(),
        from: ServerRef::from(&from_ep),
        to: ServerRef::from(&to_ep),
        admin: admin.base().to_string(),
        routes: args.routes.clone(),
        switch,
        reverse: args.reverse,
        repl_user: args.check.repl_user.clone(),
        from_address: reverse_address,
        max_pause_ms: args.max_pause_ms,
        started: journal::now(),
        phase: Phase::Running,
        steps: vec![],
        final_gtid: None,
        locked_accounts: vec![],
        abort_reason: None,
    };
    let mut run = Run::open(
        state_dir, journal, from_ep, to_ep, admin, printer, false, args,
    )
    .await?;
    run.go().await
}

impl Run {
    /// Opens two sessions on each server (one for statements the budget may have to kill).
    #[allow(clippy::too_many_arguments)]
    async fn open(
        dir: PathBuf,
        journal: Journal,
        from_ep: Endpoint,
        to_ep: Endpoint,
        admin: AdminClient,
        printer: Printer,
        resumed: bool,
        args: Args,
    ) -> Result<Run, DbError> {
        Ok(Run {
            from: from_ep.connect().await?,
            to: to_ep.connect().await?,
            from_b: from_ep.connect().await?,
            to_b: to_ep.connect().await?,
            dir,
            journal,
            from_ep,
            to_ep,
            admin,
            printer,
            pause_start: None,
            resumed,
            args,
        })
    }

    fn event(&self, step: Step, outcome: &'static str, started: Instant, detail: String) {
        self.printer.emit(&Event {
            step: step.name(),
            outcome,
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            detail,
            pause_ms: self.pause_ms(),
        });
    }

    fn pause_ms(&self) -> Option<f64> {
        self.pause_start.map(|p| p.elapsed().as_secs_f64() * 1000.0)
    }

    /// Time left of the pause budget.
    fn remaining(&self) -> Duration {
        let budget = Duration::from_millis(self.journal.max_pause_ms);
        match self.pause_start {
            Some(p) => budget.saturating_sub(p.elapsed()),
            None => budget,
        }
    }

    async fn begin(&mut self, step: Step) -> Result<Instant, DbError> {
        self.journal.begin(step, &self.dir)?;
        Ok(Instant::now())
    }

    async fn go(&mut self) -> Result<Report, DbError> {
        // Preflight: the same checks as `db check`, lag left to the catch-up loop.
        let t0 = if self.args.dry_run {
            Instant::now()
        } else {
            self.begin(Step::Preflight).await?
        };
        let mut th = thresholds(&self.args.check, &self.from_ep, &self.to_ep);
        th.max_lag_ms = None;
        let report = check::run(&mut self.from, &mut self.to, &th).await?;
        if report.target.replica.is_none() {
            // Not a refusal by a check but a command that cannot run: nothing to switch to.
            let msg = format!(
                "{}: not a replica of {}: run `switchyard db replicate` first; nothing changed",
                self.to_ep, self.from_ep
            );
            if !self.args.dry_run {
                self.journal.end("failed");
                self.journal.phase = Phase::Aborted;
                self.journal.abort_reason = Some(msg.clone());
                self.journal.save(&self.dir)?;
            }
            return Err(DbError::Usage(msg));
        }
        let failed = report.failed();
        if !failed.is_empty() {
            let why: Vec<String> = failed
                .iter()
                .map(|c| format!("{}: {} ({})", c.name, c.figure, c.detail))
                .collect();
            if !self.printer.json {
                print!("{}", checks_table(&report.checks));
            }
            self.event(Step::Preflight, "failed", t0, why.join("; "));
            let msg = format!(
                "{} refused by the preflight, nothing changed: {}",
                self.journal.direction,
                why.join("; ")
            );
            if !self.args.dry_run {
                self.journal.end("failed");
                self.journal.phase = Phase::Aborted;
                self.journal.abort_reason = Some(msg.clone());
                self.journal.save(&self.dir)?;
            }
            return Ok(self.report("refused", msg));
        }
        let warns: Vec<String> = report
            .checks
            .iter()
            .filter(|c| c.verdict == Verdict::Warn)
            .map(|c| format!("{}: {}", c.name, c.figure))
            .collect();
        self.event(
            Step::Preflight,
            "ok",
            t0,
            if warns.is_empty() {
                format!("{} checks passed", report.checks.len())
            } else {
                format!("warnings: {}", warns.join("; "))
            },
        );
        if self.args.dry_run {
            return Ok(self.dry_run_plan());
        }
        self.journal.end("ok");

        // Catch up before holding anything: the pause then only covers the last few writes.
        let t0 = self.begin(Step::CatchUp).await?;
        match self.catch_up().await {
            Ok(d) => {
                self.journal.end("ok");
                self.event(Step::CatchUp, "ok", t0, d);
            }
            Err(why) => {
                self.event(Step::CatchUp, "failed", t0, why.clone());
                return self.abort(Step::CatchUp, why).await;
            }
        }

        // The pause begins.
        let t0 = self.begin(Step::Hold).await?;
        self.pause_start = Some(Instant::now());
        let req = HoldRequest {
            routes: self.journal.routes.clone(),
            max_ms: self.journal.max_pause_ms + HOLD_GRACE_MS,
            reason: Some(format!(
                "db {}: {} -> {}",
                self.journal.direction,
                self.from_ep.address(),
                self.to_ep.address()
            )),
            on_expiry: OnExpiry::Reject,
            max_queued: None,
            max_queued_bytes: None,
        };
        // In a fleet the hold answers only once every live node holds (or fails naming the
        // others, then this aborts): fencing starts only after the whole fleet holds. The wait
        // is bounded by the pause budget; a single proxy ignores it.
        let held = match self.admin.clone().with_wait_fleet(Some(format!(
            "{}ms",
            self.journal.max_pause_ms.clamp(1, 600_000)
        ))) {
            Ok(admin) => admin.hold(&req).await,
            Err(e) => Err(e),
        };
        let held = match held {
            Ok(h) => h,
            Err(e) => {
                let why = format!("holding the routes: {e}");
                self.event(Step::Hold, "failed", t0, why.clone());
                return self.abort(Step::Hold, why).await;
            }
        };
        self.journal.end("ok");
        let on = match &held.fleet_confirmed {
            Some(nodes) => format!(" on every node of the fleet ({})", nodes.join(", ")),
            None => String::new(),
        };
        self.event(
            Step::Hold,
            "ok",
            t0,
            format!("held {}{on}", self.journal.routes.join(", ")),
        );

        for step in [
            Step::Drain,
            Step::Fence,
            Step::FinalPosition,
            Step::WaitTarget,
        ] {
            let t0 = self.begin(step).await?;
            let r = match step {
                Step::Drain => self.drain().await,
                Step::Fence => self.fence().await,
                Step::FinalPosition => self.final_position().await,
                _ => self.wait_target().await,
            };
            match r {
                Ok(d) => {
                    self.journal.end("ok");
                    self.event(step, "ok", t0, d);
                }
                Err(why) => {
                    self.event(step, "failed", t0, why.clone());
                    return self.abort(step, why).await;
                }
            }
        }
        // The source must still be fenced: if somebody unfenced it, promoting would make two
        // writable servers.
        match self.from.fenced().await {
            Ok(true) => {}
            Ok(false) => {
                return self
                    .abort(
                        Step::WaitTarget,
                        "the source is writable again (unfenced by someone else)".into(),
                    )
                    .await
            }
            Err(e) => return self.abort(Step::WaitTarget, e.to_string()).await,
        }
        self.forward().await
    }

    /// From the point of no return: promote, reverse, switch, release. Every step idempotent.
    async fn forward(&mut self) -> Result<Report, DbError> {
        let t0 = self.begin(Step::Promote).await?;
        let d = self.promote().await?;
        self.journal.end("ok");
        self.event(Step::Promote, "ok", t0, d);

        let t0 = self.begin(Step::Switch).await?;
        let d = self.switch().await.map_err(|e| {
            DbError::Usage(format!(
                "{} promoted {} but switching the routes failed: {e}. The routes stay held (503 after the hold's deadline, never sent to the fenced server): fix the admin API and run `switchyard db {} --resume`",
                self.journal.direction,
                self.to_ep.address(),
                self.journal.direction
            ))
        })?;
        self.journal.end("ok");
        self.event(Step::Switch, "ok", t0, d);

        let t0 = self.begin(Step::Release).await?;
        self.admin.release().await.map_err(|e| {
            DbError::Usage(format!(
                "routes switched, but releasing the hold failed: {e}; run `switchyard release` or `switchyard db {} --resume`",
                self.journal.direction
            ))
        })?;
        let pause = self.pause_ms();
        self.journal.end("ok");
        self.event(Step::Release, "ok", t0, "released".into());
        self.unlock_accounts().await;

        // After the release: CHANGE MASTER and START SLAVE took 66-103 ms at p50 in
        // bench/db_cutover.rs runs, which the held requests need not wait for. Nothing is lost by
        // the order: the old primary stands exactly at the final position, and GTID
        // auto-positioning fetches everything the new primary wrote since from its binlog.
        let mut reverse_error = None;
        if self.journal.reverse {
            let t0 = self.begin(Step::Reverse).await?;
            match self.reverse().await {
                Ok(d) => {
                    self.journal.end("ok");
                    self.event(Step::Reverse, "ok", t0, d);
                }
                Err(e) => {
                    // The old primary stays read-only: nothing is writable twice. The
                    // operator fixes replication afterwards.
                    self.journal.end("failed");
                    self.event(Step::Reverse, "failed", t0, e.to_string());
                    reverse_error = Some(e.to_string());
                }
            }
        }

        if self.journal.reverse && reverse_error.is_none() {
            let t0 = Instant::now();
            match replicate::wait_running(&mut self.from, Duration::from_secs(10)).await {
                Ok(_) => self.printer.emit(&Event {
                    step: "reverse_running",
                    outcome: "ok",
                    duration_ms: t0.elapsed().as_secs_f64() * 1000.0,
                    detail: format!(
                        "{} replicates from {}",
                        self.from_ep.address(),
                        self.to_ep.address()
                    ),
                    pause_ms: None,
                }),
                Err(e) => reverse_error = Some(e.to_string()),
            }
        }
        self.journal.phase = Phase::Done;
        self.journal.save(&self.dir)?;
        let mut r = self.report(
            "done",
            format!(
                "{} done: {} is the primary{}",
                self.journal.direction,
                self.to_ep.address(),
                pause
                    .map(|p| format!(", pause {p:.0} ms"))
                    .unwrap_or_default()
            ),
        );
        if let Some(e) = reverse_error {
            r.outcome = "done_without_reverse";
            r.message = format!("{}; but reverse replication failed: {e}", r.message);
        }
        Ok(r)
    }

    fn report(&self, outcome: &'static str, message: String) -> Report {
        Report {
            direction: if self.journal.direction == "rollback" {
                "rollback"
            } else {
                "cutover"
            },
            outcome,
            pause_ms: self.pause_ms(),
            message,
        }
    }

    fn dry_run_plan(&self) -> Report {
        let j = &self.journal;
        let switch: Vec<String> = j
            .switch
            .iter()
            .map(|(r, u)| format!("{r} -> {u}"))
            .collect();
        let lines = [
            format!(
                "catch_up        wait until {} is at most {} transactions behind (up to {:?})",
                self.to_ep.address(),
                self.args.catchup_transactions,
                self.args.catchup_timeout
            ),
            format!(
                "hold            hold {} at the proxy (at most {} ms, then 503 until released)",
                j.routes.join(", "),
                j.max_pause_ms + HOLD_GRACE_MS
            ),
            "drain           wait until no request is in flight on them".into(),
            format!(
                "fence           make {} read-only ({})",
                self.from_ep.address(),
                self.from.flavor.fence()
            ),
            "final_position  read its GTID position".into(),
            format!(
                "wait_target     wait until {} applied it",
                self.to_ep.address()
            ),
            format!(
                "promote         stop replication on {} and make it writable (point of no return)",
                self.to_ep.address()
            ),
            if j.reverse {
                format!(
                    "reverse         make {} a read-only replica of {}",
                    self.from_ep.address(),
                    self.to_ep.address()
                )
            } else {
                "reverse         (not asked: --reverse)".into()
            },
            format!("switch          {}", switch.join(", ")),
            format!(
                "release         end the hold; the whole pause bounded by {} ms",
                j.max_pause_ms
            ),
        ];
        if !self.printer.json {
            for l in &lines {
                println!("{l}");
            }
        }
        self.report("dry_run", "dry run: nothing changed".into())
    }

    async fn catch_up(&mut self) -> Result<String, String> {
        let deadline = Instant::now() + self.args.catchup_timeout;
        loop {
            let f = self.from.flavor;
            let written = self
                .from
                .gtid(f.written())
                .await
                .map_err(|e| e.to_string())?;
            let ss = self.from.status().await.map_err(|e| e.to_string())?;
            let ts = self.to.status().await.map_err(|e| e.to_string())?;
            let mut ss = ss;
            ss.gtid_binlog = written;
            let behind = super::status::lag_transactions(&mut self.from, &ss, &ts)
                .await
                .map_err(|e| e.to_string())?;
            let secs = ts.replica.as_ref().and_then(|r| r.seconds_behind);
            if let Some(r) = ts.replica.as_ref().filter(|r| !r.running()) {
                return Err(format!(
                    "replication on {} stopped: {}",
                    self.to_ep.address(),
                    r.last_error()
                        .unwrap_or_else(|| format!("IO {} SQL {}", r.io_running, r.sql_running))
                ));
            }
            if behind.is_some_and(|b| b <= self.args.catchup_transactions)
                && secs.is_some_and(|s| s <= 1)
            {
                return Ok(format!(
                    "{} transactions, {} s behind",
                    behind.unwrap_or(0),
                    secs.unwrap_or(0)
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} still {} transactions and {} s behind after {:?}",
                    self.to_ep.address(),
                    behind.map(|b| b.to_string()).unwrap_or_else(|| "?".into()),
                    secs.map(|b| b.to_string()).unwrap_or_else(|| "?".into()),
                    self.args.catchup_timeout
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn drain(&mut self) -> Result<String, String> {
        let t0 = Instant::now();
        loop {
            let v = self.admin.inflight().await.map_err(|e| e.to_string())?;
            let busy: Vec<String> = self
                .journal
                .routes
                .iter()
                .filter_map(|r| {
                    let n = v.routes.get(r).map(|c| c.inflight).unwrap_or(0);
                    (n > 0).then(|| format!("{r}: {n}"))
                })
                .collect();
            let queued: i64 = self
                .journal
                .routes
                .iter()
                .map(|r| v.routes.get(r).map(|c| c.queued).unwrap_or(0))
                .sum();
            if busy.is_empty() {
                return Ok(format!(
                    "no request in flight after {:.1} ms; {queued} queued",
                    t0.elapsed().as_secs_f64() * 1000.0
                ));
            }
            if self.remaining().is_zero() {
                return Err(format!(
                    "requests still in flight at the end of the {} ms budget ({})",
                    self.journal.max_pause_ms,
                    busy.join(", ")
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Locks and disconnects the accounts read_only does not stop, then fences, retrying lock
    /// timeouts until the budget ends; a statement still running then is killed.
    async fn fence(&mut self) -> Result<String, String> {
        let mut own = vec![self.from_ep.user.clone(), self.to_ep.user.clone()];
        own.extend(self.journal.repl_user.clone());
        let bypass = self
            .bypass_grantees(&own)
            .await
            .map_err(|e| e.to_string())?;
        let mut killed = 0;
        if !bypass.is_empty() {
            // Account locks are this server's business: never binlogged, or the replica (and,
            // for the unlock after promotion, the new primary) would get GTIDs it must not.
            self.from.exec(NO_BINLOG).await.map_err(|e| e.to_string())?;
            // Journaled before they are locked, so an abort or a resume unlocks them.
            self.journal
                .locked_accounts
                .extend(bypass.iter().map(|(g, _)| g.clone()));
            self.journal.save(&self.dir).map_err(|e| e.to_string())?;
            let grantees: Vec<&str> = bypass.iter().map(|(g, _)| g.as_str()).collect();
            self.from
                .exec(&format!("ALTER USER {} ACCOUNT LOCK", grantees.join(", ")))
                .await
                .map_err(|e| e.to_string())?;
            let users: Vec<String> = bypass.iter().map(|(_, u)| quote(u)).collect();
            let ids: Vec<u64> = self
                .from
                .rows(&format!(
                    "SELECT ID FROM information_schema.PROCESSLIST WHERE USER IN ({})",
                    users.join(", ")
                ))
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .filter_map(|r| {
                    r.get_opt::<Option<u64>, usize>(0)
                        .and_then(Result::ok)
                        .flatten()
                })
                .collect();
            for id in ids {
                if id != u64::from(self.from.id()) && id != u64::from(self.from_b.id()) {
                    // A session that already ended is fine.
                    let _ = self.from.exec(&format!("KILL CONNECTION {id}")).await;
                    killed += 1;
                }
            }
        }
        let f = self.from.flavor;
        let mut tries = 0;
        loop {
            tries += 1;
            let left = self.remaining();
            if left.is_zero() {
                return Err(format!(
                    "the source's writes did not stop within the {} ms budget ({} tries; a long transaction or lock holds it)",
                    self.journal.max_pause_ms, tries - 1
                ));
            }
            let secs = left.as_secs_f64().ceil() as u64;
            self.from_b
                .exec(&f.lock_wait(secs))
                .await
                .map_err(|e| e.to_string())?;
            let id = self.from_b.id();
            let r = tokio::time::timeout(left, self.from_b.exec(f.fence())).await;
            match r {
                Ok(Ok(())) => {
                    return Ok(format!(
                        "{} read-only after {tries} tr{}{}",
                        self.from_ep.address(),
                        if tries == 1 { "y" } else { "ies" },
                        if bypass.is_empty() {
                            String::new()
                        } else {
                            format!(
                                "; locked {} account(s), closed {killed} session(s)",
                                bypass.len()
                            )
                        }
                    ))
                }
                Ok(Err(e)) if Server::code(&e) == Some(1205) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => {
                    // The budget ended with the statement still waiting: stop it.
                    let _ = self.from.exec(&format!("KILL QUERY {id}")).await;
                    return Err(format!(
                        "the source's writes did not stop within the {} ms budget (a long transaction or lock holds it; the fence statement was cancelled)",
                        self.journal.max_pause_ms
                    ));
                }
            }
        }
    }

    /// (`'user'@'host'`, user) of accounts that bypass read_only, other than `own`.
    async fn bypass_grantees(&mut self, own: &[String]) -> Result<Vec<(String, String)>, DbError> {
        let Some(sql) = self.from.flavor.bypass_accounts(&self.from.version) else {
            return Ok(vec![]);
        };
        let mut out: Vec<(String, String)> = Vec::new();
        for r in self.from.rows(&sql).await? {
            let g: String = r
                .get_opt::<Option<String>, usize>(0)
                .and_then(Result::ok)
                .flatten()
                .unwrap_or_default();
            if let Some((u, _)) = super::flavor::split_grantee(&g) {
                if !own.contains(&u) && !out.iter().any(|(x, _)| x == &g) {
                    out.push((g, u));
                }
            }
        }
        Ok(out)
    }

    async fn final_position(&mut self) -> Result<String, String> {
        let f = self.from.flavor;
        let pos = self
            .from
            .gtid(f.written())
            .await
            .map_err(|e| e.to_string())?;
        // Saved with the next durable step (promote), before anything depends on it.
        self.journal.final_gtid = Some(pos.clone());
        Ok(if pos.is_empty() {
            "the source never wrote a transaction".into()
        } else {
            pos
        })
    }

    async fn wait_target(&mut self) -> Result<String, String> {
        let pos = self.journal.final_gtid.clone().unwrap_or_default();
        if pos.is_empty() {
            return Ok("nothing to wait for".into());
        }
        let left = self.remaining();
        if left.is_zero() {
            return Err(format!("no budget left to wait for {pos}"));
        }
        let f = self.to_b.flavor;
        let sql = f.wait_for(&pos, left.as_secs_f64());
        let id = self.to_b.id();
        match tokio::time::timeout(left + Duration::from_millis(20), self.to_b.one::<i64>(&sql))
            .await
        {
            Ok(Ok(Some(v))) => match f.wait_result(v) {
                Some(WaitResult::Reached) => Ok(format!("{} applied {pos}", self.to_ep.address())),
                Some(WaitResult::TimedOut) => Err(format!(
                    "{} did not apply {pos} within the budget",
                    self.to_ep.address()
                )),
                None => Err(format!("{sql} answered {v}")),
            },
            Ok(Ok(None)) => Err(format!(
                "{sql} answered NULL (is {} a replica?)",
                self.to_ep.address()
            )),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => {
                let _ = self.to.exec(&format!("KILL QUERY {id}")).await;
                Err(format!(
                    "{} did not apply {pos} within the budget",
                    self.to_ep.address()
                ))
            }
        }
    }

    /// Stops replication on the target, forgets its source, makes it writable. Idempotent.
    async fn promote(&mut self) -> Result<String, DbError> {
        let f = self.to.flavor;
        let rds = self.to.rds;
        let mut ran = Vec::new();
        // A fresh run knows the target is a replica (the preflight said so); a resumed one
        // looks, since a killed run may have stopped and reset it already.
        if !self.resumed || self.to.replica().await?.is_some() {
            for sql in [f.stop_replica(rds), f.reset_replica(rds)] {
                let t0 = Instant::now();
                self.to.exec(sql).await?;
                ran.push(format!(
                    "{sql} ({:.1} ms)",
                    t0.elapsed().as_secs_f64() * 1000.0
                ));
            }
        }
        for sql in f.unfence() {
            let t0 = Instant::now();
            self.to.exec(sql).await?;
            ran.push(format!(
                "{sql} ({:.1} ms)",
                t0.elapsed().as_secs_f64() * 1000.0
            ));
        }
        Ok(format!(
            "{} is writable, replication stopped: {}",
            self.to_ep.address(),
            ran.join("; ")
        ))
    }

    /// Makes the old primary a read-only replica of the new one. Idempotent.
    async fn reverse(&mut self) -> Result<String, DbError> {
        let user = self
            .journal
            .repl_user
            .clone()
            .ok_or_else(|| DbError::Usage("--reverse needs --repl-user".into()))?;
        let password = repl_password()?;
        let (host, port) = match &self.journal.from_address {
            Some(a) => parse_address(a)?,
            None => (self.to_ep.host.clone(), self.to_ep.port),
        };
        // A resumed run may find it done already; a fresh one knows the old primary is fenced
        // (checked just before promotion).
        if self.resumed {
            let to_id: u64 = self.to.one("SELECT @@GLOBAL.server_id").await?.unwrap_or(0);
            if let Some(r) = self.from.replica().await? {
                if r.source_server_id == Some(to_id) && r.running() {
                    return Ok("already replicating".into());
                }
            }
        }
        let known_fresh = !self.resumed && self.from.replica().await?.is_none();
        let ran = replicate::point_at(
            &mut self.from,
            &host,
            port,
            &user,
            &password,
            true,
            known_fresh,
        )
        .await?;
        Ok(format!(
            "{} replicates from {host}:{port}, read-only: {}",
            self.from_ep.address(),
            ran.join("; ")
        ))
    }

    async fn switch(&mut self) -> Result<String, ClientError> {
        let mut done = Vec::new();
        for (route, up) in self.journal.switch.clone() {
            let patch = RoutePatchBody {
                to: Some(up.clone()),
                reason: Some(format!(
                    "db {}: {} is the primary",
                    self.journal.direction,
                    self.to_ep.address()
                )),
                ..Default::default()
            };
            let mut tries = 0;
            let r = loop {
                match self.admin.patch_route(&route, &patch, None).await {
                    Ok(r) => break r,
                    Err(e) if tries < 3 && e.status().is_none_or(|s| s >= 500) => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => return Err(e),
                }
            };
            done.push(format!("{route} -> {up} (version {})", r.version));
        }
        Ok(done.join(", "))
    }

    async fn unlock_accounts(&mut self) {
        for g in std::mem::take(&mut self.journal.locked_accounts) {
            let t0 = Instant::now();
            let r = match self.from.exec(NO_BINLOG).await {
                Ok(()) => {
                    self.from
                        .exec(&format!("ALTER USER {g} ACCOUNT UNLOCK"))
                        .await
                }
                Err(e) => Err(e),
            };
            self.printer.emit(&Event {
                step: "unlock_account",
                outcome: if r.is_ok() { "ok" } else { "failed" },
                duration_ms: t0.elapsed().as_secs_f64() * 1000.0,
                detail: match r {
                    Ok(()) => format!("{g} unlocked"),
                    Err(e) => format!("{g}: {e}; unlock it by hand"),
                },
                pause_ms: None,
            });
        }
        let _ = self.journal.save(&self.dir);
    }

    /// Undoes everything before the point of no return: unfence the source (after checking the
    /// target is not writable), unlock accounts, release the hold to the unchanged routes.
    async fn abort(&mut self, at: Step, why: String) -> Result<Report, DbError> {
        let t0 = Instant::now();
        let mut undone = Vec::new();
        let mut problems = Vec::new();
        if self.journal.started(Step::Fence) {
            // The control sessions were never the ones killed; reconnect only if they broke.
            let alive = match self.to.fenced().await {
                Ok(_) => Ok(()),
                Err(_) => self.reconnect_both().await,
            };
            match alive {
                Err(e) => problems.push(format!("cannot reconnect to unfence: {e}")),
                Ok(()) => match self.to.fenced().await {
                    Ok(true) => {
                        let f = self.from.flavor;
                        let mut ok = true;
                        for sql in f.unfence() {
                            if let Err(e) = self.from.exec(sql).await {
                                problems.push(format!("unfencing the source: {e}"));
                                ok = false;
                                break;
                            }
                        }
                        if ok {
                            undone.push(format!("{} writable again", self.from_ep.address()));
                        }
                    }
                    Ok(false) => problems.push(format!(
                        "{} is writable, so {} stays read-only (never two writable servers): check both by hand",
                        self.to_ep.address(),
                        self.from_ep.address()
                    )),
                    Err(e) => problems.push(format!("cannot tell whether the target is writable, source left read-only: {e}")),
                },
            }
        }
        if self.journal.started(Step::Hold) {
            match self.admin.release().await {
                Ok(_) => undone.push("hold released, routes unchanged".into()),
                Err(e) => {
                    problems.push(format!("releasing the hold: {e}; run `switchyard release`"))
                }
            }
        }
        // The pause ends with the release; unlocking accounts is not part of it.
        let pause = self.pause_ms();
        if !self.journal.locked_accounts.is_empty() {
            self.unlock_accounts().await;
            undone.push("accounts unlocked".into());
        }
        self.journal.phase = Phase::Aborted;
        self.journal.abort_reason = Some(format!("{}: {why}", at.name()));
        self.journal.save(&self.dir)?;
        self.printer.emit(&Event {
            step: "abort",
            outcome: if problems.is_empty() { "ok" } else { "failed" },
            duration_ms: t0.elapsed().as_secs_f64() * 1000.0,
            detail: undone
                .iter()
                .chain(problems.iter())
                .cloned()
                .collect::<Vec<_>>()
                .join("; "),
            pause_ms: pause,
        });
        let mut msg = format!("{} aborted at {}: {why}", self.journal.direction, at.name());
        if !undone.is_empty() {
            msg.push_str(&format!("; {}", undone.join(", ")));
        }
        if !problems.is_empty() {
            msg.push_str(&format!("; NOT UNDONE: {}", problems.join("; ")));
        }
        Ok(self.report("aborted", msg))
    }

    async fn reconnect_both(&mut self) -> Result<(), DbError> {
        self.from = self.from_ep.connect().await?;
        self.to = self.to_ep.connect().await?;
        Ok(())
    }
}

/// `--resume`: aborts a run that had not reached promotion; finishes one that had.
async fn resume(args: Args, dir: Direction, printer: Printer) -> Result<Report, DbError> {
    let state_dir = args.state.dir();
    let Some(journal) = Journal::load(&state_dir)? else {
        return Ok(Report {
            direction: dir.word(),
            outcome: "nothing_to_resume",
            pause_ms: None,
            message: format!(
                "no cutover journal in {}: nothing to resume",
                state_dir.display()
            ),
        });
    };
    if journal.finished() {
        return Ok(Report {
            direction: dir.word(),
            outcome: "nothing_to_resume",
            pause_ms: None,
            message: format!(
                "the last {} in {} ended ({:?}): nothing to resume",
                journal.direction,
                journal::path(&state_dir).display(),
                journal.phase
            ),
        });
    }
    if journal.direction != dir.word() {
        return Err(DbError::Usage(format!(
            "the journal holds a {}: resume it with `switchyard db {} --resume`",
            journal.direction, journal.direction
        )));
    }
    // Passwords: from --source/--target when given (matched by address), else the variables.
    let given: Vec<Endpoint> = [
        args.servers
            .source
            .as_deref()
            .map(|u| Endpoint::parse(Role::Source, u)),
        args.servers
            .target
            .as_deref()
            .map(|u| Endpoint::parse(Role::Target, u)),
    ]
    .into_iter()
    .flatten()
    .collect::<Result<_, _>>()?;
    let endpoint = |r: &ServerRef| -> Result<Endpoint, DbError> {
        if let Some(e) = given.iter().find(|e| e.host == r.host && e.port == r.port) {
            return Ok(e.with_role(r.role));
        }
        Endpoint::parse(r.role, &r.url())
    };
    let from_ep = endpoint(&journal.from)?;
    let to_ep = endpoint(&journal.to)?;
    let admin = AdminClient::new(&journal.admin)?.with_actor(ACTOR);
    let forward = journal.forward_only();
    let last = journal.last_started();
    let mut run = Run::open(
        state_dir, journal, from_ep, to_ep, admin, printer, true, args,
    )
    .await?;
    if !forward {
        let at = last.unwrap_or(Step::Preflight);
        return run
            .abort(at, "interrupted before promotion; resumed to abort".into())
            .await;
    }
    // Past the point of no return: make sure the target has everything the fenced source
    // wrote, then finish.
    if let Some(pos) = run.journal.final_gtid.clone().filter(|p| !p.is_empty()) {
        if run.to.replica().await?.is_some() {
            let f = run.to.flavor;
            let v = run.to.one::<i64>(&f.wait_for(&pos, 30.0)).await?;
            if v.and_then(|v| f.wait_result(v)) != Some(WaitResult::Reached) {
                return Err(DbError::Usage(format!(
                    "resume: {} has not applied {pos} after 30 s; the source stays fenced, the routes held: check replication and resume again",
                    run.to_ep.address()
                )));
            }
        }
    }
    run.forward().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_specs() {
        let s = parse_switch(&["orders=new".into(), " users = b ".into()]).unwrap();
        assert_eq!(
            s,
            vec![
                ("orders".into(), "new".into()),
                ("users".into(), "b".into())
            ]
        );
        assert!(parse_switch(&["orders".into()]).is_err());
        assert!(parse_switch(&["=x".into()]).is_err());
        assert!(parse_switch(&["a=x".into(), "a=y".into()]).is_err());
    }
}
