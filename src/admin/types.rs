//! The admin API's request and response bodies, as typed structs shared by the server (which
//! writes them) and every client (CLI, database cutover, plan runner), so a renamed field is a
//! compile error rather than a blank column.
//!
//! Only calls that a program reads field by field are typed here; the table itself travels as
//! [`crate::config::TableFile`].

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::summary::Summary;

/// The answer to every call that publishes a table version (PUT table, PATCH route, rollback,
/// revert, adopt).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChangeResult {
    /// The version now live.
    pub version: u64,
    /// What kind of change (`put`, `patch`, `rollback`, ...).
    pub action: String,
    /// Who: the token's name, with the client's `x-switchyard-actor` in parentheses.
    pub actor: String,
    /// Why, as given.
    #[serde(default)]
    pub reason: Option<String>,
    /// When (RFC 3339 UTC).
    pub time: String,
    /// What changed, per route and upstream.
    #[serde(default)]
    pub changes: Summary,
    /// Compile warnings of the new table.
    #[serde(default)]
    pub warnings: Vec<serde_json::Value>,
}

/// `PATCH /v1/routes/{id}`: any of `to`, `split`, `fallback`; absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoutePatchBody {
    /// Send 100% to this upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Percent per upstream, summing to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<BTreeMap<String, f64>>,
    /// Why (recorded in the history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

pub use crate::proxy::hold::OnExpiry;

/// `POST /v1/hold`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldRequest {
    /// Route ids to hold.
    pub routes: Vec<String>,
    /// The hold's deadline, in milliseconds from now.
    pub max_ms: u64,
    /// Why (logged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What happens at the deadline; default `proceed`.
    #[serde(default)]
    pub on_expiry: OnExpiry,
    /// Most requests queued at once over all held routes; beyond it, 503 + `Retry-After`.
    /// Default [`crate::proxy::hold::DEFAULT_MAX_QUEUED`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued: Option<u64>,
    /// Most request bytes (head + declared body) queued at once; beyond it, 503.
    /// Default [`crate::proxy::hold::DEFAULT_MAX_QUEUED_BYTES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued_bytes: Option<u64>,
}

/// A hold as the API shows it (`GET /v1/hold`, and inside other answers).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HoldView {
    /// The held routes.
    pub routes: BTreeSet<String>,
    /// Milliseconds until the deadline (0 once passed).
    pub remaining_ms: u64,
    /// What happens at the deadline.
    pub on_expiry: OnExpiry,
    /// True once the deadline passed on a `reject` hold: requests are refused until release.
    #[serde(default)]
    pub expired: bool,
    /// The queue caps in force.
    pub max_queued: u64,
    pub max_queued_bytes: u64,
    /// Requests answered 503 because the queue was full, since the hold began.
    #[serde(default)]
    pub overflowed: u64,
}

/// The answer to `POST /v1/hold`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HoldResult {
    /// The routes now held.
    pub held: BTreeSet<String>,
    pub max_ms: u64,
    /// Who asked.
    pub actor: String,
    /// The hold as it is now in force.
    pub hold: HoldView,
    /// Fleet mode: the nodes that confirmed the hold (the answer comes only once every live
    /// node has). Absent for a single proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_confirmed: Option<Vec<String>>,
}

/// The answer to `POST /v1/release`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReleaseResult {
    /// The routes that were held (empty when no hold was in force).
    pub released: BTreeSet<String>,
    pub actor: String,
}

/// One route's counters in `GET /v1/inflight`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteInflight {
    /// Requests between routing and their end (response sent or failed).
    pub inflight: i64,
    /// Requests waiting out a hold.
    pub queued: i64,
}

/// The answer to `GET /v1/inflight`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InflightView {
    pub routes: BTreeMap<String, RouteInflight>,
    /// The hold in force, if any.
    pub hold: Option<HoldView>,
}

/// One route of `GET /v1/table`, the fields programs read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteView {
    pub id: String,
    /// Percent per upstream of the route's split (one upstream at 100 for a plain route).
    #[serde(default)]
    pub weights: BTreeMap<String, f64>,
    /// Fallback upstreams in order of preference.
    #[serde(default)]
    pub fallbacks: Vec<String>,
}

/// `GET /v1/table`, the fields programs read (the whole file is in `table`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TableView {
    /// The live version.
    pub version: u64,
    pub routes: Vec<RouteView>,
    /// Upstream names with their file definitions.
    #[serde(default)]
    pub upstreams: BTreeMap<String, serde_json::Value>,
    /// The hold in force, if any.
    #[serde(default)]
    pub hold: Option<HoldView>,
}

impl TableView {
    /// The route with this id.
    pub fn route(&self, id: &str) -> Option<&RouteView> {
        self.routes.iter().find(|r| r.id == id)
    }
}

/// Every error answer: `{"error": ..., "details": [...]}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default)]
    pub details: Vec<serde_json::Value>,
}

// ---- Migration plans (`/v1/plans`, src/admin/plans.rs) ------------------------------------

/// One gate's latest evaluation: the figure, its threshold and the verdict computed from them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GateFigure {
    /// `error_rate`, `latency_p99`, `cloudwatch:NAME`, `prometheus`.
    pub name: String,
    /// The measured value; None when there is none yet (no data, or not evaluable).
    pub figure: Option<f64>,
    pub threshold: f64,
    /// `ratio`, `ms`, `%`, or empty.
    pub unit: String,
    /// `pass`, `fail`, `pending` (not enough data yet) or `error` (not evaluable, in grace).
    pub verdict: String,
    /// How the figure was obtained (counts, window), or why there is none.
    pub detail: String,
}

/// `PUT /v1/plans/{name}`: a plan runner's report of where it stands; sent at every step and
/// every half second as the runner's heartbeat (its lease).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlanReport {
    pub route: String,
    pub to: String,
    pub from: String,
    /// One `plan run` (kept by `plan resume`): an abort or approval belongs to one run.
    pub run_id: String,
    /// The runner process (`HOST:PID:RANDOM`): two processes never run the same plan.
    pub runner: String,
    /// `running`, `waiting_approval`, `completed`, `rolled_back`, `aborted`, `failed`.
    pub status: String,
    /// 0-based index of the current step.
    pub step: usize,
    pub steps: usize,
    pub step_name: String,
    /// Percent of the route on `to` as the plan last set it.
    #[serde(default)]
    pub weight: Option<f64>,
    #[serde(default)]
    pub bake_total_ms: Option<u64>,
    #[serde(default)]
    pub bake_left_ms: Option<u64>,
    #[serde(default)]
    pub gates: Vec<GateFigure>,
    /// The last event for people (why it stopped, what it waits for).
    #[serde(default)]
    pub message: String,
    /// The lease: without a report for this long, the runner counts as gone.
    pub lease_ms: u64,
}

/// An abort, as recorded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlanAbort {
    pub actor: String,
    pub reason: String,
    /// RFC 3339 UTC.
    pub time: String,
    /// The table version of the rollback (None if the route was already on `from`).
    pub version: Option<u64>,
}

/// A plan as the admin API knows it (`GET /v1/plans`, `GET /v1/plans/{name}`, and the answer
/// to a report, an abort or an approval).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlanView {
    pub name: String,
    pub report: PlanReport,
    /// Milliseconds since the last report.
    pub reported_ms_ago: u64,
    /// True while the runner's lease holds (a report within `lease_ms`).
    pub lease_live: bool,
    /// Set by `POST /v1/plans/{name}/abort`; the runner stops when it sees it.
    #[serde(default)]
    pub abort: Option<PlanAbort>,
    /// Steps approved by `POST /v1/plans/{name}/approve` (indexes).
    #[serde(default)]
    pub approved: Vec<usize>,
}

/// `GET /v1/plans`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlansView {
    pub plans: Vec<PlanView>,
}

/// `POST /v1/plans/{name}/abort`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanAbortBody {
    /// Why (recorded in the history with the rollback).
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST /v1/plans/{name}/approve`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanApproveBody {
    /// The step approved; default the step the plan is at.
    #[serde(default)]
    pub step: Option<usize>,
}

pub use crate::proxy::shadow::ShadowMismatch;

/// `GET /v1/shadow` and `GET /v1/shadow/{route}`: shadow comparison results per route.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShadowView {
    /// Shadow copies (and captures waiting for their primary) in flight now.
    pub inflight: u64,
    /// The cap on them (`[proxy] shadow_max_inflight`).
    pub max_inflight: u64,
    /// Per route id: every route with a `shadow` option since the process started.
    pub routes: BTreeMap<String, RouteShadowView>,
}

/// One route's shadow results.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteShadowView {
    /// The shadow upstream in the live table; `None` when the route no longer shadows.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Count per result (`match`, `status_mismatch`, ..., `skipped`) since the process started.
    pub counts: BTreeMap<String, u64>,
    /// `match` over compared pairs (errors and skips excluded); `None` before any comparison.
    #[serde(default)]
    pub match_rate: Option<f64>,
    /// The most recent mismatches and failed copies, newest first (at most 20).
    #[serde(default)]
    pub recent: Vec<ShadowMismatch>,
}

/// A version a node refused, in `GET /v1/fleet`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedView {
    /// The version that does not compile on that node.
    pub version: u64,
    /// Why (its compile errors, joined).
    pub error: String,
}

/// One node in `GET /v1/fleet`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetNode {
    /// Its `--node-id`.
    pub node: String,
    /// The version it serves.
    pub version: u64,
    /// True while its confirmations are fresh (within the lease TTL). A node whose lease
    /// expired is not listed at all.
    pub live: bool,
    /// Milliseconds since its last confirmation.
    pub last_seen_ms: u64,
    /// The newest version it refused since the one it serves, if any.
    pub rejected: Option<RejectedView>,
    /// etcd revision of the last hold or release it applied (0: none).
    #[serde(default)]
    pub hold_revision: u64,
}

/// The answer to `GET /v1/fleet`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetView {
    /// The fleet's newest committed version.
    pub version: u64,
    /// True when every live node serves `version`.
    pub converged: bool,
    /// The node that answered.
    #[serde(default)]
    pub node: String,
    /// `up`, or `unreachable` while the answering node cannot reach etcd (it then serves its
    /// last table and refuses changes).
    #[serde(default)]
    pub etcd: String,
    /// Every node holding a lease, by name.
    pub nodes: Vec<FleetNode>,
}

/// `POST /v1/fleet/push`: route files read by `switchyard fleet push DIR`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushRequest {
    /// The merged files, with the origin of every entry.
    pub doc: super::history::StoredDoc,
    /// Let the files undo API changes (like `serve --force-files` once).
    #[serde(default)]
    pub force: bool,
}

/// `GET /v1/tls`: the TLS listener's certificates (`enabled: false` and no certificates
/// without `--tls-listen`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TlsView {
    pub enabled: bool,
    /// The certificate directory (`--tls-certs`).
    #[serde(default)]
    pub dir: Option<String>,
    /// The pair served without SNI or when no SAN matches.
    #[serde(default)]
    pub default: Option<String>,
    /// Every pair seen in the directory, by name.
    pub certificates: Vec<TlsCertView>,
}

/// One certificate pair of `GET /v1/tls`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TlsCertView {
    /// The file stem (`example` for `example.crt` + `example.key`).
    pub name: String,
    /// Whether a certificate of this name is serving (false when its first load failed).
    pub serving: bool,
    /// The serving leaf's subject.
    #[serde(default)]
    pub subject: Option<String>,
    /// The serving leaf's DNS SANs, matched against SNI.
    pub sans: Vec<String>,
    /// The serving leaf's `notAfter` (RFC 3339) and Unix seconds.
    #[serde(default)]
    pub not_after: Option<String>,
    #[serde(default)]
    pub not_after_unix: Option<i64>,
    /// Seconds until `not_after` (negative once expired).
    #[serde(default)]
    pub seconds_left: Option<i64>,
    pub crt_file: String,
    pub key_file: String,
    /// The last reload's error for this pair; the previous certificate keeps serving meanwhile.
    #[serde(default)]
    pub last_error: Option<String>,
    /// When that error was seen (RFC 3339).
    #[serde(default)]
    pub last_error_at: Option<String>,
}
