//! The cutover's journal: a JSON file written (and fsynced, then renamed into place) before
//! every step runs, so a killed `db cutover` leaves a record that `--resume` finishes or
//! aborts from, and `db status` shows. It never holds a password.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::conn::{Endpoint, Role};
use super::DbError;

/// The journal's file name inside the state directory.
pub const FILE: &str = "db-cutover.json";

/// A cutover's steps, in order. `Promote` is the point of no return: before it a recovery
/// undoes (unfence, release to the unchanged routes); from it on, a recovery only goes forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Preflight,
    CatchUp,
    Hold,
    Drain,
    Fence,
    FinalPosition,
    WaitTarget,
    Promote,
    Switch,
    Release,
    Reverse,
}

impl Step {
    pub const ALL: [Step; 11] = [
        Step::Preflight,
        Step::CatchUp,
        Step::Hold,
        Step::Drain,
        Step::Fence,
        Step::FinalPosition,
        Step::WaitTarget,
        Step::Promote,
        Step::Switch,
        Step::Release,
        Step::Reverse,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::Preflight => "preflight",
            Step::CatchUp => "catch_up",
            Step::Hold => "hold",
            Step::Drain => "drain",
            Step::Fence => "fence",
            Step::FinalPosition => "final_position",
            Step::WaitTarget => "wait_target",
            Step::Promote => "promote",
            Step::Reverse => "reverse",
            Step::Switch => "switch",
            Step::Release => "release",
        }
    }

    /// Steps whose start must be on disk before they run, because a recovery has to know they
    /// may have happened: `preflight` (creates the journal), `hold` (an abort releases it),
    /// `fence` (an abort unfences and unlocks), `promote` (the point of no return). The steps
    /// after `promote` are redone by any recovery anyway (each idempotent), and the others only
    /// read and wait; they are recorded with the next durable write, which keeps fsyncs out of
    /// the pause.
    pub fn changes_state(self) -> bool {
        matches!(
            self,
            Step::Preflight | Step::Hold | Step::Fence | Step::Promote
        )
    }

    /// True from the point of no return on.
    pub fn forward_only(self) -> bool {
        self >= Step::Promote
    }
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Running,
    Done,
    Aborted,
}

/// A server as the journal keeps it: where, not how to log in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRef {
    pub role: Role,
    pub user: String,
    pub host: String,
    pub port: u16,
}

impl From<&Endpoint> for ServerRef {
    fn from(e: &Endpoint) -> ServerRef {
        ServerRef {
            role: e.role,
            user: e.user.clone(),
            host: e.host.clone(),
            port: e.port,
        }
    }
}

impl ServerRef {
    /// The URL without a password (the password then comes from the role's variable).
    pub fn url(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("mysql://{}@{}:{}", self.user, host, self.port)
    }
}

/// One step as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: Step,
    /// RFC 3339 UTC.
    pub started: String,
    pub finished: Option<String>,
    pub outcome: Option<String>,
}

/// The whole record of one cutover (or rollback).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Journal {
    /// `cutover` or `rollback`.
    pub direction: String,
    /// The server that was primary when it began, and the one being promoted.
    pub from: ServerRef,
    pub to: ServerRef,
    pub admin: String,
    pub routes: Vec<String>,
    /// route -> upstream it is switched to.
    pub switch: Vec<(String, String)>,
    pub reverse: bool,
    pub repl_user: Option<String>,
    /// Where `from` is reached by `to` for reverse replication, if not `from`'s own address.
    pub from_address: Option<String>,
    pub max_pause_ms: u64,
    pub started: String,
    pub phase: Phase,
    pub steps: Vec<StepRecord>,
    /// The source's position once fenced: what the target had to reach.
    pub final_gtid: Option<String>,
    /// Accounts locked on `from` while it was fenced (unlocked at the end or on abort).
    pub locked_accounts: Vec<String>,
    /// Why it aborted, if it did.
    pub abort_reason: Option<String>,
}

impl Journal {
    /// The furthest step that was started.
    pub fn last_started(&self) -> Option<Step> {
        self.steps.iter().map(|s| s.step).max()
    }

    /// True once past the point of no return.
    pub fn forward_only(&self) -> bool {
        self.last_started().is_some_and(Step::forward_only)
    }

    pub fn finished(&self) -> bool {
        self.phase != Phase::Running
    }

    /// Whether `step` was started (and so may have changed something).
    pub fn started(&self, step: Step) -> bool {
        self.steps.iter().any(|s| s.step == step)
    }

    /// Whether `step` completed.
    pub fn completed(&self, step: Step) -> bool {
        self.steps
            .iter()
            .any(|s| s.step == step && s.finished.is_some())
    }

    /// One line for `db status` about a cutover that did not finish.
    pub fn interrupted_line(&self) -> String {
        let last = self
            .steps
            .last()
            .map(|s| {
                format!(
                    "{} (started {}{})",
                    s.step.name(),
                    s.started,
                    if s.finished.is_some() {
                        ", finished"
                    } else {
                        ", not finished"
                    }
                )
            })
            .unwrap_or_else(|| "none".into());
        format!(
            "interrupted {} from {}:{} to {}:{}: last step {last}; {}: run `switchyard db {} --resume`\n",
            self.direction,
            self.from.host,
            self.from.port,
            self.to.host,
            self.to.port,
            if self.forward_only() {
                "past the point of no return, a resume finishes it"
            } else {
                "before promotion, a resume aborts it (unfence the source, release the routes unchanged)"
            },
            if self.direction == "rollback" { "rollback" } else { "cutover" }
        )
    }

    /// Reads the journal in `dir`, None when there is none.
    pub fn load(dir: &Path) -> Result<Option<Journal>, DbError> {
        let path = dir.join(FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(err(&path, e.to_string())),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| err(&path, format!("not a cutover journal: {e}")))
    }

    /// Writes the journal durably: a temporary file, fsynced, renamed over the old one, and the
    /// directory fsynced, so a crash leaves either the old or the new record whole.
    pub fn save(&self, dir: &Path) -> Result<(), DbError> {
        let path = dir.join(FILE);
        std::fs::create_dir_all(dir)
            .map_err(|e| err(&path, format!("creating the directory: {e}")))?;
        let tmp = dir.join(format!("{FILE}.tmp"));
        let text = serde_json::to_vec_pretty(self).map_err(|e| err(&path, e.to_string()))?;
        let mut f = std::fs::File::create(&tmp).map_err(|e| err(&tmp, e.to_string()))?;
        f.write_all(&text).map_err(|e| err(&tmp, e.to_string()))?;
        f.sync_all().map_err(|e| err(&tmp, e.to_string()))?;
        std::fs::rename(&tmp, &path).map_err(|e| err(&path, e.to_string()))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Records that `step` starts now; saves durably when the step changes something
    /// ([`Step::changes_state`]).
    pub fn begin(&mut self, step: Step, dir: &Path) -> Result<(), DbError> {
        self.steps.push(StepRecord {
            step,
            started: now(),
            finished: None,
            outcome: None,
        });
        if step.changes_state() {
            self.save(dir)
        } else {
            Ok(())
        }
    }

    /// Records the end of the last started step (on disk with the next save: a crash before it
    /// leaves the step "started", and every step is idempotent).
    pub fn end(&mut self, outcome: &str) {
        if let Some(s) = self.steps.last_mut() {
            s.finished = Some(now());
            s.outcome = Some(outcome.to_string());
        }
    }
}

/// The file path, for messages.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

fn err(path: &Path, message: String) -> DbError {
    DbError::Journal {
        path: path.display().to_string(),
        message,
    }
}

/// Now, RFC 3339 UTC with milliseconds.
pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Journal {
        Journal {
            direction: "cutover".into(),
            from: ServerRef {
                role: Role::Source,
                user: "sy".into(),
                host: "127.0.0.1".into(),
                port: 3307,
            },
            to: ServerRef {
                role: Role::Target,
                user: "sy".into(),
                host: "::1".into(),
                port: 3308,
            },
            admin: "http://127.0.0.1:9090".into(),
            routes: vec!["orders".into()],
            switch: vec![("orders".into(), "new".into())],
            reverse: true,
            repl_user: Some("repl".into()),
            from_address: None,
            max_pause_ms: 1000,
            started: now(),
            phase: Phase::Running,
            steps: vec![],
            final_gtid: None,
            locked_accounts: vec![],
            abort_reason: None,
        }
    }

    #[test]
    fn save_load_and_point_of_no_return() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Journal::load(dir.path()).unwrap().is_none());
        let mut j = sample();
        j.begin(Step::Preflight, dir.path()).unwrap();
        j.end("ok");
        j.begin(Step::Fence, dir.path()).unwrap();
        let back = Journal::load(dir.path()).unwrap().unwrap();
        assert_eq!(back, j);
        assert!(!back.forward_only());
        assert!(back.started(Step::Fence) && !back.completed(Step::Fence));
        assert!(back.interrupted_line().contains("a resume aborts it"));
        j.begin(Step::Promote, dir.path()).unwrap();
        assert!(Journal::load(dir.path()).unwrap().unwrap().forward_only());
        assert_eq!(j.to.url(), "mysql://sy@[::1]:3308");
        std::fs::write(dir.path().join(FILE), "{").unwrap();
        let e = Journal::load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("db-cutover.json") && e.contains("not a cutover journal"),
            "{e}"
        );
    }
}
