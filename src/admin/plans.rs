//! Migration plans as the admin API sees them (`/v1/plans`): the runners' reports (each one
//! also a heartbeat that holds the plan's lease, so no two runners move one plan or one route),
//! approvals, and the abort, which rolls the route back here, at once, whatever the runner is
//! doing.
//!
//! Kept in memory: a proxy restart forgets the reports (the runner's local journal is the
//! durable record; its next report re-registers the plan).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::api::ApiError;
use super::history::Action;
use super::ledger::{Change, ChangeError, RoutePatch};
use super::server::AdminState;
use super::types::{PlanAbort, PlanAbortBody, PlanApproveBody, PlanReport, PlanView, PlansView};

/// Shortest and longest lease a runner may ask for.
const LEASE_MS: std::ops::RangeInclusive<u64> = 500..=60_000;
/// Most plans kept; the oldest finished ones are forgotten first.
const MAX_PLANS: usize = 256;

/// Statuses after which a plan no longer runs.
pub const FINISHED: [&str; 4] = ["completed", "rolled_back", "aborted", "failed"];

struct Entry {
    report: PlanReport,
    at: Instant,
    abort: Option<PlanAbort>,
    approved: BTreeSet<usize>,
}

impl Entry {
    fn live(&self) -> bool {
        self.at.elapsed() < Duration::from_millis(self.report.lease_ms)
    }

    fn running(&self) -> bool {
        !FINISHED.contains(&self.report.status.as_str())
    }

    fn view(&self, name: &str) -> PlanView {
        PlanView {
            name: name.to_string(),
            report: self.report.clone(),
            reported_ms_ago: self.at.elapsed().as_millis() as u64,
            lease_live: self.live(),
            abort: self.abort.clone(),
            approved: self.approved.iter().copied().collect(),
        }
    }
}

static PLANS: LazyLock<Mutex<BTreeMap<String, Entry>>> =
    LazyLock::new(|| Mutex::new(BTreeMap::new()));

fn parse<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("the body: {e}")))
}

/// A plan name is a file name and a URL path segment: letters, digits, `-`, `_`, `.`, at most
/// 100, not starting with `.`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn known(name: &str) -> Result<(), ApiError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!("{name:?} is not a plan name")))
    }
}

/// `GET /v1/plans`: every plan known, running ones first.
pub fn list() -> PlansView {
    let plans = PLANS.lock();
    let mut v: Vec<PlanView> = plans.iter().map(|(n, e)| e.view(n)).collect();
    v.sort_by_key(|p| FINISHED.contains(&p.report.status.as_str()));
    PlansView { plans: v }
}

/// `GET /v1/plans/{name}`.
pub fn get(name: &str) -> Result<PlanView, ApiError> {
    PLANS
        .lock()
        .get(name)
        .map(|e| e.view(name))
        .ok_or_else(|| ApiError::NotFound(format!("plan {name:?}")))
}

/// `PUT /v1/plans/{name}`: a runner reports. Refused (409) when another runner holds the
/// plan's lease, or another running plan with a live lease moves the same route.
pub fn report(name: &str, body: &[u8]) -> Result<PlanView, ApiError> {
    known(name)?;
    let mut r: PlanReport = parse(body)?;
    if r.run_id.is_empty() || r.runner.is_empty() || r.route.is_empty() {
        return Err(ApiError::BadRequest(
            "\"run_id\", \"runner\" and \"route\" are required".into(),
        ));
    }
    r.lease_ms = r.lease_ms.clamp(*LEASE_MS.start(), *LEASE_MS.end());
    let mut plans = PLANS.lock();
    if let Some((other, e)) = plans
        .iter()
        .find(|(n, e)| *n != name && e.report.route == r.route && e.running() && e.live())
    {
        return Err(ApiError::Change(ChangeError::Conflict(vec![format!(
            "route {:?} is being moved by plan {other:?} (runner {}, last report {} ms ago)",
            r.route,
            e.report.runner,
            e.at.elapsed().as_millis()
        )])));
    }
    let now = Instant::now();
    match plans.get_mut(name) {
        Some(e) if e.report.runner != r.runner && e.running() && e.live() => {
            Err(ApiError::Change(ChangeError::Conflict(vec![format!(
                "plan {name:?} is already running (runner {}, last report {} ms ago)",
                e.report.runner,
                e.at.elapsed().as_millis()
            )])))
        }
        Some(e) if e.report.run_id == r.run_id => {
            if e.abort.is_some() && !FINISHED.contains(&r.status.as_str()) {
                // The abort stands whatever the runner says until it stops.
                r.status = "aborted".into();
            }
            e.report = r;
            e.at = now;
            Ok(e.view(name))
        }
        _ => {
            if plans.len() >= MAX_PLANS && !plans.contains_key(name) {
                let oldest = plans
                    .iter()
                    .filter(|(_, e)| !e.running())
                    .min_by_key(|(_, e)| e.at)
                    .map(|(n, _)| n.clone());
                match oldest {
                    Some(n) => {
                        plans.remove(&n);
                    }
                    None => {
                        return Err(ApiError::BadRequest(format!(
                            "{MAX_PLANS} plans are running already"
                        )))
                    }
                }
            }
            let e = Entry {
                report: r,
                at: now,
                abort: None,
                approved: BTreeSet::new(),
            };
            let v = e.view(name);
            plans.insert(name.to_string(), e);
            Ok(v)
        }
    }
}

/// `POST /v1/plans/{name}/approve`: approves the plan's current step (or `step`).
pub fn approve(name: &str, body: &[u8]) -> Result<PlanView, ApiError> {
    let b: PlanApproveBody = parse(body)?;
    let mut plans = PLANS.lock();
    let e = plans
        .get_mut(name)
        .ok_or_else(|| ApiError::NotFound(format!("plan {name:?}")))?;
    if !e.running() {
        return Err(ApiError::Change(ChangeError::Conflict(vec![format!(
            "plan {name:?} is {}, nothing to approve",
            e.report.status
        )])));
    }
    e.approved.insert(b.step.unwrap_or(e.report.step));
    Ok(e.view(name))
}

/// `POST /v1/plans/{name}/abort`: sends the plan's route back to `from` (split `from` 100,
/// `to` 0) now, recorded
/// with the caller as actor, and marks the plan aborted; its runner stops at its next report.
/// Aborting an aborted or rolled-back plan changes nothing; a completed plan is refused (409:
/// use `switchyard rollback`).
pub async fn abort(
    state: &Arc<AdminState>,
    name: &str,
    actor: &str,
    body: &[u8],
) -> Result<PlanView, ApiError> {
    let b: PlanAbortBody = parse(body)?;
    let (route, from, to) = {
        let plans = PLANS.lock();
        let e = plans
            .get(name)
            .ok_or_else(|| ApiError::NotFound(format!("plan {name:?}")))?;
        if e.abort.is_some() || matches!(e.report.status.as_str(), "rolled_back" | "aborted") {
            return Ok(e.view(name));
        }
        if e.report.status == "completed" {
            return Err(ApiError::Change(ChangeError::Conflict(vec![format!(
                "plan {name:?} completed; move the route back with `switchyard weight` or `switchyard rollback`"
            )])));
        }
        (
            e.report.route.clone(),
            e.report.from.clone(),
            e.report.to.clone(),
        )
    };
    let reason = b.reason.filter(|r| !r.trim().is_empty());
    let why = format!(
        "abort plan {name}{}",
        reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default()
    );
    let live = state.store.load();
    let already = live
        .file()
        .routes
        .iter()
        .find(|r| r.id == route)
        .is_some_and(|r| match &r.split {
            Some(split) => split
                .iter()
                .all(|(u, w)| if *u == from { *w >= 100.0 } else { *w <= 0.0 }),
            None => r.to.as_deref() == Some(from.as_str()),
        });
    let version = if already {
        None
    } else {
        let ledger = state.ledger.clone();
        let change = Change::new(actor, Some(why.clone()), Action::Rollback);
        // A split with `from` at 100 (rather than `to = from`): the route keeps its fallback,
        // which may well be `from` itself.
        let patch = RoutePatch {
            to: None,
            split: Some(BTreeMap::from([(from.clone(), 100.0), (to.clone(), 0.0)])),
            fallback: None,
        };
        let r2 = route.clone();
        let c = tokio::task::spawn_blocking(move || ledger.patch(change, &r2, &patch))
            .await
            .map_err(|e| ApiError::Internal(format!("change task: {e}")))??;
        Some(c.record.version)
    };
    tracing::warn!(plan = %name, route = %route, to = %from, actor = %actor, "plan aborted: route rolled back");
    let mut plans = PLANS.lock();
    let e = plans
        .get_mut(name)
        .ok_or_else(|| ApiError::NotFound(format!("plan {name:?}")))?;
    e.abort = Some(PlanAbort {
        actor: actor.to_string(),
        reason: why,
        time: crate::proxy::log::now_rfc3339(),
        version,
    });
    e.report.status = "aborted".into();
    e.report.message = format!("aborted by {actor}: route {route} sent back to {from}");
    Ok(e.view(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(route: &str, run_id: &str, runner: &str, status: &str) -> Vec<u8> {
        serde_json::to_vec(&PlanReport {
            route: route.into(),
            to: "new".into(),
            from: "old".into(),
            run_id: run_id.into(),
            runner: runner.into(),
            status: status.into(),
            steps: 2,
            lease_ms: 500,
            ..PlanReport::default()
        })
        .unwrap()
    }

    #[test]
    fn one_runner_per_plan_and_per_route() {
        // Names and routes unique to this test: the store is process-wide.
        report("t-lease-a", &body("t-route-1", "run1", "r1", "running")).unwrap();
        // The same runner reports again.
        report("t-lease-a", &body("t-route-1", "run1", "r1", "running")).unwrap();
        // Another runner of the same plan, or another plan on the same route: refused.
        let e = report("t-lease-a", &body("t-route-1", "run1", "r2", "running")).unwrap_err();
        assert!(e.to_string().contains("already running") || matches!(e, ApiError::Change(_)));
        assert!(report("t-lease-b", &body("t-route-1", "run9", "r9", "running")).is_err());
        // A resumed runner takes over once the lease has passed, keeping the run's approvals.
        approve("t-lease-a", br#"{"step": 1}"#).unwrap();
        std::thread::sleep(Duration::from_millis(600));
        let v = report("t-lease-a", &body("t-route-1", "run1", "r2", "running")).unwrap();
        assert_eq!(v.approved, vec![1]);
        // A new run of a finished plan starts clean.
        report("t-lease-a", &body("t-route-1", "run1", "r2", "completed")).unwrap();
        let v = report("t-lease-a", &body("t-route-1", "run2", "r3", "running")).unwrap();
        assert!(v.approved.is_empty());
        assert!(get("t-lease-a").unwrap().lease_live);
        assert!(get("t-missing").is_err());
        assert!(report("bad/name", &body("x", "r", "r", "running")).is_err());
        assert!(report("t-lease-c", br#"{"route": "x", "bogus": 1}"#).is_err());
    }
}
