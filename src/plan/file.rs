//! The plan file (TOML, unknown keys refused) and its compiled form: every problem is collected
//! and named by file, line and field, like route files, before anything changes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use super::gate::{Gate, GateKind};
use crate::control::aws::parse_duration;
use crate::control::cloudwatch::Target;
use crate::control::ControlCommand;

/// Default gate interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Default deadline of an `approve` step; when it passes, the plan rolls back.
pub const DEFAULT_APPROVE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Default deadline of a `control` step (its own `--wait` included).
pub const DEFAULT_CONTROL_TIMEOUT: Duration = Duration::from_secs(3600);
/// Default deadline of a `wait_drain` step.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(96 * 3600);
/// Default time between two polls of `wait_drain`.
pub const DEFAULT_DRAIN_POLL: Duration = Duration::from_secs(60);

/// The plan file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanFile {
    /// The plan's name: its actor (`plan:NAME`), journal and admin API key.
    pub name: String,
    /// Admin API base URL; `--admin` or `SWITCHYARD_ADMIN` override it.
    #[serde(default)]
    pub admin: Option<String>,
    /// The route the plan moves.
    pub route: String,
    /// The upstream traffic moves to.
    pub to: String,
    /// Where a rollback sends the route (100%).
    pub from: String,
    /// How often gates are evaluated; default 10s.
    #[serde(default)]
    pub interval: Option<String>,
    #[serde(default)]
    pub gates: Vec<GateFile>,
    #[serde(default)]
    pub steps: Vec<StepFile>,
}

/// One `[[gates]]` table; `kind` says which.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum GateFile {
    /// Failed attempts (5xx, errors, timeouts) / attempts of `to` on `route`.
    ErrorRate {
        /// Largest acceptable fraction (0.02 = 2%).
        max: f64,
        #[serde(default)]
        min_requests: Option<u64>,
        #[serde(default)]
        window: Option<String>,
        #[serde(default)]
        grace: Option<String>,
    },
    /// 99th percentile of `to`'s attempt durations on `route`.
    LatencyP99 {
        max_ms: f64,
        #[serde(default)]
        min_requests: Option<u64>,
        #[serde(default)]
        window: Option<String>,
        #[serde(default)]
        grace: Option<String>,
    },
    /// What `switchyard metrics gate` evaluates: API Gateway or Lambda error rate (percent).
    Cloudwatch {
        #[serde(default)]
        api_name: Option<String>,
        #[serde(default)]
        stage: Option<String>,
        #[serde(default)]
        function: Option<String>,
        max_error_rate: f64,
        #[serde(default)]
        max_latency_ms: Option<f64>,
        #[serde(default)]
        min_requests: Option<f64>,
        #[serde(default)]
        window: Option<String>,
        #[serde(default)]
        grace: Option<String>,
    },
    /// The share of the route's shadow copies whose answers matched the primary's (the route's
    /// `shadow` option), counted by the proxy since it started (`GET /v1/shadow/ROUTE`): a plan
    /// can refuse to shift live traffic until the new backend answers like the old one.
    ShadowMatch {
        /// Smallest acceptable share of matching answers (0.99 = 99%).
        min_rate: f64,
        /// Below this many compared answers: no verdict yet (default 10, as `min_requests`).
        #[serde(default)]
        min_compared: Option<u64>,
        #[serde(default)]
        grace: Option<String>,
    },
    /// A PromQL expression's value, through a Prometheus server's `/api/v1/query`.
    Prometheus {
        url: String,
        query: String,
        #[serde(default)]
        max: Option<f64>,
        #[serde(default)]
        min: Option<f64>,
        #[serde(default)]
        grace: Option<String>,
    },
}

/// One `[[steps]]` table: exactly one of `weight`, `approve`, `wait_drain`, `control`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepFile {
    /// Shown in events and the history reason; default derived from the step.
    #[serde(default)]
    pub name: Option<String>,
    /// Percent of `route` to `to` (the rest to `from`), 0 to 100, two decimals at most.
    #[serde(default)]
    pub weight: Option<f64>,
    /// With `weight`: how long to watch the gates before the next step; at least `interval`.
    #[serde(default)]
    pub bake: Option<String>,
    /// Wait for `switchyard plan approve NAME`.
    #[serde(default)]
    pub approve: Option<bool>,
    /// Wait until this Host has had fewer than `fewer_than` requests in `window` at `edge`.
    #[serde(default)]
    pub wait_drain: Option<String>,
    /// With `wait_drain`: the admin API URL of the switchyard that serves the old edge.
    #[serde(default)]
    pub edge: Option<String>,
    /// With `wait_drain`: default 1 (none at all).
    #[serde(default)]
    pub fewer_than: Option<u64>,
    /// With `wait_drain`: default 48h.
    #[serde(default)]
    pub window: Option<String>,
    /// With `wait_drain`: time between polls, default 1m.
    #[serde(default)]
    pub poll: Option<String>,
    /// A control-plane command, as on the command line after `switchyard`
    /// (`["dns", "--zone", "Z1", "--name", "api.example.com", "shift", "--set", "new=100", "--wait"]`).
    #[serde(default)]
    pub control: Option<Vec<String>>,
    /// With `control`: the command that undoes it, run on rollback or abort once it completed.
    #[serde(default)]
    pub undo: Option<Vec<String>>,
    /// Deadline of `approve`, `wait_drain` and `control` steps; passing it rolls the plan back.
    #[serde(default)]
    pub timeout: Option<String>,
}

/// A checked plan, ready to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: String,
    pub admin: Option<String>,
    pub route: String,
    pub to: String,
    pub from: String,
    pub interval: Duration,
    pub gates: Vec<Gate>,
    pub steps: Vec<Step>,
    /// The file it came from, as given.
    pub path: PathBuf,
    /// SHA-256 of the file's text: `resume` refuses a file changed since the run started.
    pub digest: String,
}

/// One step, checked.
#[derive(Debug, Clone)]
pub struct Step {
    /// For people and the history reason.
    pub name: String,
    pub kind: StepKind,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    /// Sets `route` to `percent` on `to` (the rest on `from`), then bakes with the gates on.
    Weight { percent: f64, bake: Duration },
    /// Waits for an approval, gates on, until `timeout`.
    Approve { timeout: Duration },
    /// Waits until `host` had fewer than `fewer_than` requests in `window` at `edge`.
    WaitDrain {
        edge: String,
        host: String,
        fewer_than: u64,
        window: String,
        poll: Duration,
        timeout: Duration,
    },
    /// Runs a control-plane command (argv after `switchyard`), `undo` on rollback.
    Control {
        argv: Vec<String>,
        undo: Option<Vec<String>>,
        timeout: Duration,
        /// The command also parses with `--dry-run`: `plan run --dry-run` runs it that way.
        dry_runnable: bool,
    },
}

impl StepKind {
    /// Short label: `weight 25%`, `approve`, `wait_drain api.example.com`, `control dns shift`.
    pub fn label(&self) -> String {
        match self {
            StepKind::Weight { percent, .. } => format!("weight {percent}%"),
            StepKind::Approve { .. } => "approve".into(),
            StepKind::WaitDrain { host, .. } => format!("wait_drain {host}"),
            StepKind::Control { argv, .. } => {
                let words: Vec<&str> = argv
                    .iter()
                    .filter(|a| !a.starts_with('-'))
                    .take(2)
                    .map(String::as_str)
                    .collect();
                format!("control {}", words.join(" "))
            }
        }
    }
}

/// One problem in a plan file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// `FILE` or `FILE:LINE`.
    pub at: String,
    /// The key at fault (`steps[2].weight`), or empty for the file as a whole.
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.at, self.message)
        } else {
            write!(f, "{}: {}: {}", self.at, self.field, self.message)
        }
    }
}

/// Wrapper to parse a control step's argv with the CLI's own parser.
#[derive(Debug, Parser)]
#[command(name = "switchyard")]
struct ControlArgv {
    #[command(subcommand)]
    cmd: ControlCommand,
}

/// Parses a control argv (without the leading `switchyard`) as the CLI would.
pub fn parse_control(argv: &[String]) -> Result<ControlCommand, String> {
    let full = std::iter::once("switchyard".to_string()).chain(argv.iter().cloned());
    ControlArgv::try_parse_from(full)
        .map(|a| a.cmd)
        .map_err(|e| {
            let text = e.render().to_string();
            text.lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("cannot parse")
                .trim_start_matches("error: ")
                .to_string()
        })
}

/// Where things are in the text, for line numbers (serde does not report them after parsing).
struct Lines<'a> {
    text: &'a str,
}

impl Lines<'_> {
    fn line_of_offset(&self, off: usize) -> usize {
        self.text[..off.min(self.text.len())].matches('\n').count() + 1
    }

    /// Line of the `i`-th `[[section]]` header.
    fn table(&self, section: &str, i: usize) -> Option<usize> {
        self.text
            .lines()
            .enumerate()
            .filter(|(_, l)| {
                let t: String = l.chars().filter(|c| !c.is_whitespace()).collect();
                t.starts_with(&format!("[[{section}]]"))
            })
            .nth(i)
            .map(|(n, _)| n + 1)
    }

    /// Line of `key = ...` inside the `i`-th `[[section]]` (or at the top level when `None`).
    fn key(&self, section: Option<(&str, usize)>, key: &str) -> Option<usize> {
        let start = match section {
            Some((s, i)) => self.table(s, i)?,
            None => 0,
        };
        for (n, l) in self.text.lines().enumerate().skip(start) {
            let t = l.trim_start();
            if t.starts_with('[') {
                // The next table starts: the key is not in this one.
                return None;
            }
            if let Some(rest) = t.strip_prefix(key) {
                if rest.trim_start().starts_with('=') {
                    return Some(n + 1);
                }
            }
        }
        None
    }
}

/// Collects problems for one file.
struct Problems<'a> {
    file: String,
    lines: Lines<'a>,
    list: Vec<Problem>,
}

impl Problems<'_> {
    fn push(&mut self, line: Option<usize>, field: impl Into<String>, message: impl Into<String>) {
        let at = match line {
            Some(l) => format!("{}:{l}", self.file),
            None => self.file.clone(),
        };
        self.list.push(Problem {
            at,
            field: field.into(),
            message: message.into(),
        });
    }

    fn top(&mut self, key: &str, message: impl Into<String>) {
        let line = self.lines.key(None, key);
        self.push(line, key, message);
    }

    fn step(&mut self, i: usize, key: &str, message: impl Into<String>) {
        let line = self
            .lines
            .key(Some(("steps", i)), key)
            .or_else(|| self.lines.table("steps", i));
        self.push(line, format!("steps[{i}].{key}"), message);
    }

    fn gate(&mut self, i: usize, key: &str, message: impl Into<String>) {
        let line = self
            .lines
            .key(Some(("gates", i)), key)
            .or_else(|| self.lines.table("gates", i));
        self.push(line, format!("gates[{i}].{key}"), message);
    }
}

fn duration(p: &mut Problems<'_>, v: &Option<String>, field: &str, at: Loc) -> Option<Duration> {
    let s = v.as_ref()?;
    match parse_duration(s) {
        Ok(d) => Some(d),
        Err(e) => {
            at.push(p, field, e);
            None
        }
    }
}

#[derive(Clone, Copy)]
enum Loc {
    Top,
    Step(usize),
    Gate(usize),
}

impl Loc {
    fn push(self, p: &mut Problems<'_>, field: &str, msg: impl Into<String>) {
        match self {
            Loc::Top => p.top(field, msg),
            Loc::Step(i) => p.step(i, field, msg),
            Loc::Gate(i) => p.gate(i, field, msg),
        }
    }
}

/// A plan name is a file name and a URL path segment: letters, digits, `-`, `_`, `.`; the
/// admin API checks the same rule.
pub fn valid_name(name: &str) -> bool {
    crate::admin::plans::valid_name(name)
}

/// Reads and checks the plan file at `path`: every problem, or the plan.
pub fn load(path: &Path) -> Result<Plan, Vec<Problem>> {
    let label = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![Problem {
            at: label.clone(),
            field: String::new(),
            message: format!("cannot read: {e}"),
        }]
    })?;
    compile(&label, &text, path)
}

/// Parses and checks `text` (named `label` in problems).
pub fn compile(label: &str, text: &str, path: &Path) -> Result<Plan, Vec<Problem>> {
    let mut p = Problems {
        file: label.to_string(),
        lines: Lines { text },
        list: Vec::new(),
    };
    let file: PlanFile = match toml::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            let line = e.span().map(|s| p.lines.line_of_offset(s.start));
            p.push(line, "", e.message().trim().to_string());
            return Err(p.list);
        }
    };
    if !valid_name(&file.name) {
        p.top(
            "name",
            format!(
                "{:?} is not a plan name (letters, digits, '-', '_', '.'; at most 100)",
                file.name
            ),
        );
    }
    for (k, v) in [
        ("route", &file.route),
        ("to", &file.to),
        ("from", &file.from),
    ] {
        if v.trim().is_empty() {
            p.top(k, "is empty");
        }
    }
    if !file.to.is_empty() && file.to == file.from {
        p.top(
            "from",
            format!("is the same upstream as `to` ({:?})", file.to),
        );
    }
    if let Some(a) = &file.admin {
        if !(a.starts_with("http://") || a.starts_with("https://")) {
            p.top("admin", format!("{a:?} is not an http:// or https:// URL"));
        }
    }
    let interval =
        duration(&mut p, &file.interval, "interval", Loc::Top).unwrap_or(DEFAULT_INTERVAL);
    if interval < Duration::from_millis(100) {
        p.top("interval", "must be at least 100ms");
    }
    let mut gates = Vec::new();
    for (i, g) in file.gates.iter().enumerate() {
        if let Some(g) = compile_gate(&mut p, i, g, interval) {
            gates.push(g);
        }
    }
    if file.steps.is_empty() {
        p.push(None, "steps", "the plan has no steps");
    }
    let mut steps = Vec::new();
    for (i, s) in file.steps.iter().enumerate() {
        if let Some(s) = compile_step(&mut p, i, s, interval) {
            steps.push(s);
        }
    }
    if !p.list.is_empty() {
        return Err(p.list);
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Plan {
        name: file.name,
        admin: file.admin,
        route: file.route,
        to: file.to,
        from: file.from,
        interval,
        gates,
        steps,
        path: path.to_path_buf(),
        digest,
    })
}

fn compile_gate(p: &mut Problems<'_>, i: usize, g: &GateFile, interval: Duration) -> Option<Gate> {
    let at = Loc::Gate(i);
    let before = p.list.len();
    let grace_of = |p: &mut Problems<'_>, v: &Option<String>| {
        duration(p, v, "grace", at).unwrap_or(interval.max(Duration::from_secs(1)) * 3)
    };
    let window_of = |p: &mut Problems<'_>, v: &Option<String>| {
        let w = duration(p, v, "window", at).unwrap_or(interval);
        if w < interval {
            at.push(
                p,
                "window",
                format!(
                    "{} is shorter than the interval ({})",
                    crate::control::aws::human_duration(w),
                    crate::control::aws::human_duration(interval)
                ),
            );
        }
        w
    };
    let (kind, grace) = match g {
        GateFile::ErrorRate {
            max,
            min_requests,
            window,
            grace,
        } => {
            if !(0.0..=1.0).contains(max) {
                at.push(
                    p,
                    "max",
                    format!("{max} is not a fraction between 0 and 1 (0.02 = 2%)"),
                );
            }
            let kind = GateKind::ErrorRate {
                max: *max,
                min_requests: min_requests.unwrap_or(super::gate::DEFAULT_MIN_REQUESTS),
                window: window_of(p, window),
            };
            (kind, grace_of(p, grace))
        }
        GateFile::LatencyP99 {
            max_ms,
            min_requests,
            window,
            grace,
        } => {
            if !(max_ms.is_finite() && *max_ms > 0.0) {
                at.push(
                    p,
                    "max_ms",
                    format!("{max_ms} is not a positive number of milliseconds"),
                );
            }
            let kind = GateKind::LatencyP99 {
                max_ms: *max_ms,
                min_requests: min_requests.unwrap_or(super::gate::DEFAULT_MIN_REQUESTS),
                window: window_of(p, window),
            };
            (kind, grace_of(p, grace))
        }
        GateFile::ShadowMatch {
            min_rate,
            min_compared,
            grace,
        } => {
            if !(min_rate.is_finite() && (0.0..=1.0).contains(min_rate)) {
                at.push(
                    p,
                    "min_rate",
                    format!("{min_rate} is not a share from 0 to 1 (0.99 = 99%)"),
                );
            }
            let kind = GateKind::ShadowMatch {
                min_rate: *min_rate,
                min_compared: min_compared.unwrap_or(super::gate::DEFAULT_MIN_REQUESTS),
            };
            (kind, grace_of(p, grace))
        }
        GateFile::Cloudwatch {
            api_name,
            stage,
            function,
            max_error_rate,
            max_latency_ms,
            min_requests,
            window,
            grace,
        } => {
            match (api_name, function) {
                (Some(_), Some(_)) => at.push(
                    p,
                    "function",
                    "give either `api_name` or `function`, not both",
                ),
                (None, None) => at.push(
                    p,
                    "api_name",
                    "give `api_name` (API Gateway) or `function` (Lambda)",
                ),
                _ => {}
            }
            if stage.is_some() && api_name.is_none() {
                at.push(p, "stage", "needs `api_name`");
            }
            if !(0.0..=100.0).contains(max_error_rate) {
                at.push(
                    p,
                    "max_error_rate",
                    format!("{max_error_rate} is not a percentage between 0 and 100"),
                );
            }
            let w = duration(p, window, "window", at).unwrap_or(Duration::from_secs(300));
            if w.as_secs() < 60 || !w.as_secs().is_multiple_of(60) || w.subsec_nanos() != 0 {
                at.push(
                    p,
                    "window",
                    "must be a whole number of minutes, at least 1m (CloudWatch periods)",
                );
            }
            let kind = GateKind::CloudWatch {
                target: Target {
                    api_name: api_name.clone(),
                    stage: stage.clone(),
                    function: function.clone(),
                    namespace: None,
                    dimensions: Vec::new(),
                },
                max_error_rate: *max_error_rate,
                max_latency_ms: *max_latency_ms,
                min_requests: min_requests.unwrap_or(1.0),
                window: w,
            };
            (kind, grace_of(p, grace))
        }
        GateFile::Prometheus {
            url,
            query,
            max,
            min,
            grace,
        } => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                at.push(
                    p,
                    "url",
                    format!("{url:?} is not an http:// or https:// URL"),
                );
            }
            if query.trim().is_empty() {
                at.push(p, "query", "is empty");
            }
            if max.is_none() && min.is_none() {
                at.push(
                    p,
                    "max",
                    "give `max` or `min` (or both): the figure's threshold",
                );
            }
            let kind = GateKind::Prometheus {
                url: url.trim_end_matches('/').to_string(),
                query: query.clone(),
                max: *max,
                min: *min,
            };
            (kind, grace_of(p, grace))
        }
    };
    (p.list.len() == before).then(|| Gate::new(kind, grace))
}

fn compile_step(p: &mut Problems<'_>, i: usize, s: &StepFile, interval: Duration) -> Option<Step> {
    let at = Loc::Step(i);
    let before = p.list.len();
    let kinds: Vec<&str> = [
        ("weight", s.weight.is_some()),
        ("approve", s.approve.is_some()),
        ("wait_drain", s.wait_drain.is_some()),
        ("control", s.control.is_some()),
    ]
    .iter()
    .filter(|(_, set)| *set)
    .map(|(k, _)| *k)
    .collect();
    if kinds.len() != 1 {
        let msg = if kinds.is_empty() {
            "a step needs one of `weight`, `approve`, `wait_drain`, `control`".to_string()
        } else {
            format!("a step does one thing; this one has {}", kinds.join(", "))
        };
        p.push(p.lines.table("steps", i), format!("steps[{i}]"), msg);
        return None;
    }
    let kind = kinds[0];
    // Keys that belong to other kinds are mistakes, not silently ignored.
    let allowed: &[&str] = match kind {
        "weight" => &["bake"],
        "approve" => &["timeout"],
        "wait_drain" => &["edge", "fewer_than", "window", "poll", "timeout"],
        _ => &["undo", "timeout"],
    };
    for (k, set) in [
        ("bake", s.bake.is_some()),
        ("edge", s.edge.is_some()),
        ("fewer_than", s.fewer_than.is_some()),
        ("window", s.window.is_some()),
        ("poll", s.poll.is_some()),
        ("undo", s.undo.is_some()),
        ("timeout", s.timeout.is_some()),
    ] {
        if set && !allowed.contains(&k) {
            at.push(p, k, format!("does not apply to a `{kind}` step"));
        }
    }
    let timeout = duration(p, &s.timeout, "timeout", at);
    let step = match kind {
        "weight" => {
            let w = s.weight.unwrap_or(0.0);
            if !(0.0..=100.0).contains(&w) || !w.is_finite() {
                at.push(
                    p,
                    "weight",
                    format!("{w} is not a percentage between 0 and 100"),
                );
            } else if ((w * 100.0) - (w * 100.0).round()).abs() > 1e-6 {
                at.push(
                    p,
                    "weight",
                    format!("{w} has more than two decimals (0.01% is the finest step)"),
                );
            }
            let bake = duration(p, &s.bake, "bake", at).unwrap_or(Duration::ZERO);
            if !bake.is_zero() && bake < interval {
                at.push(
                    p,
                    "bake",
                    format!(
                        "{} is shorter than the gate interval ({}): no gate would be evaluated",
                        crate::control::aws::human_duration(bake),
                        crate::control::aws::human_duration(interval)
                    ),
                );
            }
            StepKind::Weight { percent: w, bake }
        }
        "approve" => {
            if s.approve != Some(true) {
                at.push(
                    p,
                    "approve",
                    "must be `true` (leave the step out to skip it)",
                );
            }
            StepKind::Approve {
                timeout: timeout.unwrap_or(DEFAULT_APPROVE_TIMEOUT),
            }
        }
        "wait_drain" => {
            let host = s.wait_drain.clone().unwrap_or_default();
            if host.trim().is_empty() || host.contains('/') {
                at.push(p, "wait_drain", format!("{host:?} is not a host name"));
            }
            let edge = s.edge.clone().unwrap_or_default();
            if !(edge.starts_with("http://") || edge.starts_with("https://")) {
                at.push(
                    p,
                    "edge",
                    "the old edge's admin API URL (http://...) is required",
                );
            }
            let window = s.window.clone().unwrap_or_else(|| "48h".into());
            // Sent as is to `GET /v1/traffic?window=`, which takes a whole number and a unit.
            let digits = window.trim_end_matches(|c: char| c.is_ascii_alphabetic());
            if digits.is_empty()
                || !digits.bytes().all(|b| b.is_ascii_digit())
                || !matches!(&window[digits.len()..], "ms" | "s" | "m" | "h" | "d")
            {
                at.push(
                    p,
                    "window",
                    format!("{window:?}: a whole number and a unit (ms, s, m, h, d), like \"48h\""),
                );
            }
            let poll = duration(p, &s.poll, "poll", at).unwrap_or(DEFAULT_DRAIN_POLL);
            if poll.is_zero() {
                at.push(p, "poll", "must be more than 0");
            }
            StepKind::WaitDrain {
                edge: edge.trim_end_matches('/').to_string(),
                host: host.trim().to_ascii_lowercase(),
                fewer_than: s.fewer_than.unwrap_or(1),
                window,
                poll,
                timeout: timeout.unwrap_or(DEFAULT_DRAIN_TIMEOUT),
            }
        }
        _ => {
            let argv = s.control.clone().unwrap_or_default();
            if let Err(e) = parse_control(&argv) {
                at.push(p, "control", e);
            }
            if let Some(u) = &s.undo {
                if let Err(e) = parse_control(u) {
                    at.push(p, "undo", e);
                }
            }
            let mut dry = argv.clone();
            dry.push("--dry-run".into());
            StepKind::Control {
                dry_runnable: parse_control(&dry).is_ok(),
                argv,
                undo: s.undo.clone(),
                timeout: timeout.unwrap_or(DEFAULT_CONTROL_TIMEOUT),
            }
        }
    };
    if p.list.len() != before {
        return None;
    }
    let name = s.name.clone().unwrap_or_else(|| step.label());
    Some(Step { name, kind: step })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Plan, Vec<Problem>> {
        compile("p.toml", text, Path::new("p.toml"))
    }

    const HEAD: &str = "name = \"users-to-lambda\"\nroute = \"users\"\nto = \"new\"\nfrom = \"legacy\"\ninterval = \"5s\"\n";

    #[test]
    fn shadow_match_gate() {
        let plan = check(&format!(
            "{HEAD}[[gates]]\nkind = \"shadow_match\"\nmin_rate = 0.99\n[[steps]]\nweight = 5\nbake = \"10s\"\n"
        ))
        .unwrap();
        assert!(matches!(
            plan.gates[0].kind,
            GateKind::ShadowMatch { min_rate, min_compared: 10 } if min_rate == 0.99
        ));
        let e = check(&format!(
            "{HEAD}[[gates]]\nkind = \"shadow_match\"\nmin_rate = 99\n[[steps]]\nweight = 5\nbake = \"10s\"\n"
        ))
        .unwrap_err();
        assert!(
            e.iter()
                .any(|p| p.field.ends_with("min_rate") && p.message.contains("share from 0 to 1")),
            "{e:?}"
        );
    }

    #[test]
    fn good_plan() {
        let plan = check(&format!(
            "{HEAD}[[gates]]\nkind = \"error_rate\"\nmax = 0.02\nmin_requests = 20\n\
             [[gates]]\nkind = \"latency_p99\"\nmax_ms = 800\n\
             [[steps]]\nweight = 5\nbake = \"2m\"\n[[steps]]\napprove = true\n\
             [[steps]]\nweight = 100\nbake = \"10m\"\n"
        ))
        .unwrap();
        assert_eq!(plan.steps.len(), 3);
        assert_eq!(plan.gates.len(), 2);
        assert_eq!(plan.steps[0].name, "weight 5%");
        assert_eq!(plan.interval, Duration::from_secs(5));
    }

    #[test]
    fn every_problem_with_its_line() {
        let errs = check(&format!(
            "{HEAD}[[steps]]\nweight = 120\nbake = \"2s\"\n[[steps]]\nweight = -1\n\
             [[steps]]\napprove = true\nbake = \"1m\"\n"
        ))
        .unwrap_err();
        let all: Vec<String> = errs.iter().map(ToString::to_string).collect();
        let all = all.join("\n");
        assert!(
            all.contains("p.toml:7: steps[0].weight: 120 is not a percentage"),
            "{all}"
        );
        assert!(
            all.contains("p.toml:8: steps[0].bake: 2s is shorter than the gate interval"),
            "{all}"
        );
        assert!(
            all.contains("p.toml:10: steps[1].weight: -1 is not"),
            "{all}"
        );
        assert!(
            all.contains("steps[2].bake: does not apply to a `approve` step"),
            "{all}"
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let errs = check(&format!("{HEAD}[[steps]]\nwieght = 5\n")).unwrap_err();
        assert!(
            errs[0].message.contains("unknown field `wieght`"),
            "{errs:?}"
        );
        assert_eq!(errs[0].at, "p.toml:7");
        let errs = check(&format!(
            "{HEAD}[[gates]]\nkind = \"error_rat\"\nmax = 1\n[[steps]]\nweight = 5\n"
        ))
        .unwrap_err();
        assert!(errs[0].message.contains("error_rat"), "{errs:?}");
        let errs = check(&format!(
            "{HEAD}[[gates]]\nkind = \"error_rate\"\nmax = 0.1\nmaxx = 1\n[[steps]]\nweight = 5\n"
        ))
        .unwrap_err();
        assert!(errs[0].message.contains("maxx"), "{errs:?}");
    }

    #[test]
    fn control_steps_parse_like_the_cli() {
        let plan = check(&format!(
            "{HEAD}[[steps]]\ncontrol = [\"dns\", \"--zone\", \"Z1\", \"--name\", \"a.example.com\", \"shift\", \"--set\", \"new=100\"]\n\
             undo = [\"dns\", \"--zone\", \"Z1\", \"--name\", \"a.example.com\", \"shift\", \"--set\", \"new=0\"]\n"
        ))
        .unwrap();
        match &plan.steps[0].kind {
            StepKind::Control { dry_runnable, .. } => assert!(dry_runnable),
            k => panic!("{k:?}"),
        }
        let errs = check(&format!(
            "{HEAD}[[steps]]\ncontrol = [\"dns\", \"shfit\"]\n"
        ))
        .unwrap_err();
        assert_eq!(errs[0].field, "steps[0].control");
    }

    #[test]
    fn drain_steps() {
        let ok = check(&format!(
            "{HEAD}[[steps]]\nwait_drain = \"API.example.com\"\nedge = \"http://10.0.0.1:9090/\"\n"
        ))
        .unwrap();
        match &ok.steps[0].kind {
            StepKind::WaitDrain {
                host, edge, window, ..
            } => {
                assert_eq!(
                    (host.as_str(), edge.as_str()),
                    ("api.example.com", "http://10.0.0.1:9090")
                );
                assert_eq!(window, "48h");
            }
            k => panic!("{k:?}"),
        }
        let errs = check(&format!(
            "{HEAD}[[steps]]\nwait_drain = \"a.example.com\"\nwindow = \"1.5h\"\n"
        ))
        .unwrap_err();
        let all: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert!(all.iter().any(|e| e.contains("steps[0].edge")), "{all:?}");
        assert!(
            all.iter().any(|e| e.contains("steps[0].window: \"1.5h\"")),
            "{all:?}"
        );
    }

    #[test]
    fn names() {
        assert!(valid_name("users-to-lambda.v2"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(""));
        assert!(!valid_name(".hidden"));
    }
}
