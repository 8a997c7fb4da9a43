//! CloudFront: compare a distribution's cache behaviors with a switchyard route table, apply the
//! difference with one ETag-guarded UpdateDistribution, roll one path back, export behaviors as a
//! route file, and wait for a change to be Deployed.
//!
//! A route maps to a behavior by its `path` (the PathPattern) and its target upstream (the
//! TargetOriginId); route order is behavior order, and a `*` route is the default behavior.
//! Only targets, order and presence of behaviors are ever changed: every other field of an
//! existing behavior is kept, and a new behavior copies the default behavior's settings.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_sdk_cloudfront::types::{
    CacheBehavior, CacheBehaviors, DefaultCacheBehavior, DistributionConfig, OriginProtocolPolicy,
};
use aws_sdk_cloudfront::Client;
use serde::Serialize;

use super::aws::{self, AwsArgs, AwsError, WaitArgs};
use super::{table, Output};
use crate::config::{self, RouteFile, TableFile, UpstreamFile};

/// `switchyard cloudfront ...`
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub aws: AwsArgs,
    /// The distribution's id (`E2QWRUHAPOMQZL`).
    #[arg(
        long,
        global = true,
        env = "SWITCHYARD_DISTRIBUTION",
        value_name = "ID"
    )]
    pub distribution: Option<String>,
    #[command(subcommand)]
    pub cmd: Command,
}

/// The CloudFront actions.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Show how the distribution's behaviors differ from a route table, in order. Changes nothing.
    Plan {
        /// Route file or directory of route files.
        #[arg(long, value_name = "PATH")]
        routes: PathBuf,
    },
    /// Make the behaviors match a route table with one UpdateDistribution (If-Match: ETag).
    Apply {
        /// Route file or directory of route files.
        #[arg(long, value_name = "PATH")]
        routes: PathBuf,
        /// Show the plan and stop before changing anything.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Point one behavior back at the default behavior's origin (or remove it); nothing else moves.
    Rollback {
        /// The behavior's path pattern, exactly as CloudFront has it (`/api/*`).
        #[arg(long, value_name = "PATTERN")]
        path: String,
        /// Remove the behavior instead of retargeting it.
        #[arg(long)]
        remove: bool,
        /// Show the change and stop before making it.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Write the behaviors as a switchyard route file (stdout, or `--out`).
    Export {
        /// File to write; default stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

/// Why a CloudFront command failed.
#[derive(Debug, thiserror::Error)]
pub enum CloudFrontError {
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error("--distribution is required (or SWITCHYARD_DISTRIBUTION)")]
    NoDistribution,
    #[error("{0}")]
    Routes(String),
    #[error("route {route}: {message}")]
    Route { route: String, message: String },
    #[error("route {route}: origin {origin:?} is not an origin of distribution {distribution} (its origins: {known})")]
    UnknownOrigin {
        route: String,
        origin: String,
        distribution: String,
        known: String,
    },
    #[error("distribution {0} has no behavior with path pattern {1:?} (its patterns: {2})")]
    NoSuchBehavior(String, String, String),
    #[error("distribution {0}: the response has no {1}")]
    Incomplete(String, &'static str),
    #[error("distribution {distribution} changed while applying (ETag {old} is stale) and the plan is now different; nothing was changed. New plan:\n{plan}")]
    PlanChanged {
        distribution: String,
        old: String,
        plan: String,
    },
    #[error("cannot write {0}: {1}")]
    Write(PathBuf, std::io::Error),
    #[error("cannot render the route file: {0}")]
    Render(String),
    #[error("cannot build the new configuration: {0}")]
    Build(String),
}

type Result<T> = std::result::Result<T, CloudFrontError>;

/// One behavior as switchyard sees it: a pattern and where it sends requests.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Behavior {
    pub pattern: String,
    pub origin: String,
}

/// What a route table asks of the distribution.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Desired {
    /// Path behaviors in precedence order, with the route each came from.
    pub behaviors: Vec<(Behavior, String)>,
    /// The default behavior's origin and route, when the table has a `*` route.
    pub default: Option<(String, String)>,
    /// Things the operator should know (a split reduced to one origin, ignored hosts).
    pub notes: Vec<String>,
}

/// What happens to one behavior of the desired list.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Unchanged,
    Added,
    Changed,
    Moved,
}

/// One line of a plan: a behavior at its new position.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedBehavior {
    /// 1-based position among the path behaviors after the change.
    pub position: usize,
    pub pattern: String,
    pub origin: String,
    pub route: String,
    pub action: Action,
    /// The origin before, when it changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_origin: Option<String>,
    /// The 1-based position before, for a behavior that already existed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_position: Option<usize>,
    /// Its order relative to the other kept behaviors changes.
    pub moved: bool,
}

/// A behavior the change deletes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RemovedBehavior {
    pub pattern: String,
    pub origin: String,
    pub previous_position: usize,
}

/// The default (`*`) behavior's target before and after.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DefaultChange {
    pub from: String,
    pub to: String,
    pub route: Option<String>,
}

/// The difference between a distribution and a route table, in the table's order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub distribution: String,
    pub etag: String,
    pub behaviors: Vec<PlannedBehavior>,
    pub removed: Vec<RemovedBehavior>,
    pub default: DefaultChange,
    pub notes: Vec<String>,
    /// Number of behaviors added, changed, moved or removed, plus one if the default changes.
    pub changes: usize,
}

impl Plan {
    /// The same changes, whatever the ETag: how apply decides whether a re-read plan differs.
    pub fn same_changes(&self, other: &Plan) -> bool {
        self.behaviors == other.behaviors
            && self.removed == other.removed
            && self.default == other.default
    }

    /// The plan as people read it.
    pub fn human(&self) -> String {
        let mut rows = vec![vec![
            "#".to_string(),
            "pattern".into(),
            "origin".into(),
            "route".into(),
            "change".into(),
        ]];
        for b in &self.behaviors {
            let origin = match &b.previous_origin {
                Some(prev) => format!("{prev} -> {}", b.origin),
                None => b.origin.clone(),
            };
            let mut what = match b.action {
                Action::Unchanged => "unchanged".to_string(),
                Action::Added => "added".to_string(),
                Action::Changed => "origin changed".to_string(),
                Action::Moved => "moved".to_string(),
            };
            if b.moved && b.action == Action::Changed {
                what.push_str(", moved");
            }
            if b.moved {
                if let Some(p) = b.previous_position {
                    what.push_str(&format!(" (was #{p})"));
                }
            }
            rows.push(vec![
                b.position.to_string(),
                b.pattern.clone(),
                origin,
                b.route.clone(),
                what,
            ]);
        }
        for r in &self.removed {
            rows.push(vec![
                "-".into(),
                r.pattern.clone(),
                r.origin.clone(),
                String::new(),
                format!("removed (was #{})", r.previous_position),
            ]);
        }
        let d = &self.default;
        rows.push(vec![
            "default".into(),
            "*".into(),
            if d.from == d.to {
                d.to.clone()
            } else {
                format!("{} -> {}", d.from, d.to)
            },
            d.route.clone().unwrap_or_default(),
            if d.from == d.to {
                "unchanged".into()
            } else {
                "origin changed".into()
            },
        ]);
        let mut out = format!(
            "CloudFront distribution {} (ETag {}): {}\n",
            self.distribution,
            self.etag,
            match self.changes {
                0 => "no changes".to_string(),
                1 => "1 change".to_string(),
                n => format!("{n} changes"),
            }
        );
        out.push_str(&table(&rows));
        for n in &self.notes {
            out.push_str(&format!("note: {n}\n"));
        }
        out
    }
}

/// Patterns compare without a leading `/`, as CloudFront treats `images/*` as `/images/*`.
fn key(pattern: &str) -> &str {
    pattern.strip_prefix('/').unwrap_or(pattern)
}

/// The one origin a route sends to: `to`, or the largest arm of a split (ties: first by name).
fn route_origin(r: &RouteFile, notes: &mut Vec<String>) -> Result<String> {
    match (&r.to, &r.split) {
        (Some(to), _) => Ok(to.clone()),
        (None, Some(split)) => {
            let mut best: Option<(&String, f64)> = None;
            for (name, w) in split {
                if best.is_none_or(|(_, bw)| *w > bw) {
                    best = Some((name, *w));
                }
            }
            let (name, _) = best.ok_or_else(|| CloudFrontError::Route {
                route: r.id.clone(),
                message: "split is empty".into(),
            })?;
            let arms: Vec<String> = split.iter().map(|(n, w)| format!("{n}: {w}")).collect();
            notes.push(format!(
                "route {}: split {{{}}} maps to one origin, {name:?} (the largest arm); CloudFront cannot split a behavior",
                r.id,
                arms.join(", ")
            ));
            Ok(name.clone())
        }
        (None, None) => Err(CloudFrontError::Route {
            route: r.id.clone(),
            message: "has neither `to` nor `split`".into(),
        }),
    }
}

/// Reads a route table as the behaviors it asks for. A later route with a pattern already used
/// is skipped (CloudFront patterns are unique and the first match wins anyway).
pub fn desired_from_table(t: &TableFile) -> Result<Desired> {
    let mut d = Desired::default();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for r in &t.routes {
        let origin = route_origin(r, &mut d.notes)?;
        if !r.hosts.is_empty() || !r.methods.is_empty() {
            d.notes.push(format!(
                "route {}: hosts/methods are not part of a CloudFront behavior; only its path is used",
                r.id
            ));
        }
        let k = key(&r.path).to_string();
        if let Some(first) = seen.get(&k) {
            d.notes.push(format!(
                "route {}: pattern {:?} is already used by route {first}; skipped",
                r.id, r.path
            ));
            continue;
        }
        seen.insert(k.clone(), r.id.clone());
        if k == "*" {
            d.default = Some((origin, r.id.clone()));
        } else {
            d.behaviors.push((
                Behavior {
                    pattern: r.path.clone(),
                    origin,
                },
                r.id.clone(),
            ));
        }
    }
    Ok(d)
}

/// The distribution's path behaviors in order, and its default origin.
pub fn current_behaviors(cfg: &DistributionConfig) -> (Vec<Behavior>, String) {
    let list = cfg
        .cache_behaviors
        .as_ref()
        .and_then(|c| c.items.as_ref())
        .map(|items| {
            items
                .iter()
                .map(|b| Behavior {
                    pattern: b.path_pattern.clone(),
                    origin: b.target_origin_id.clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    let default = cfg
        .default_cache_behavior
        .as_ref()
        .map(|d| d.target_origin_id.clone())
        .unwrap_or_default();
    (list, default)
}

fn origin_ids(cfg: &DistributionConfig) -> Vec<String> {
    cfg.origins
        .as_ref()
        .map(|o| o.items.iter().map(|o| o.id.clone()).collect())
        .unwrap_or_default()
}

/// Compares a distribution's configuration with what a table asks. Fails if the table names
/// an origin the distribution does not have.
pub fn plan(
    distribution: &str,
    etag: &str,
    cfg: &DistributionConfig,
    want: &Desired,
) -> Result<Plan> {
    let known = origin_ids(cfg);
    let check = |origin: &str, route: &str| -> Result<()> {
        if known.iter().any(|k| k == origin) {
            Ok(())
        } else {
            Err(CloudFrontError::UnknownOrigin {
                route: route.to_string(),
                origin: origin.to_string(),
                distribution: distribution.to_string(),
                known: known.join(", "),
            })
        }
    };
    for (b, route) in &want.behaviors {
        check(&b.origin, route)?;
    }
    if let Some((origin, route)) = &want.default {
        check(origin, route)?;
    }
    let (current, default_origin) = current_behaviors(cfg);
    let want_keys: BTreeSet<&str> = want
        .behaviors
        .iter()
        .map(|(b, _)| key(&b.pattern))
        .collect();
    let cur_pos: BTreeMap<&str, usize> = current
        .iter()
        .enumerate()
        .map(|(i, b)| (key(&b.pattern), i))
        .collect();
    // Relative order of the behaviors that stay: a behavior "moved" if its rank among them
    // differs before and after.
    let kept_before: Vec<&str> = current
        .iter()
        .map(|b| key(&b.pattern))
        .filter(|k| want_keys.contains(k))
        .collect();
    let kept_after: Vec<&str> = want
        .behaviors
        .iter()
        .map(|(b, _)| key(&b.pattern))
        .filter(|k| cur_pos.contains_key(k))
        .collect();
    let mut changes = 0;
    let mut behaviors = Vec::new();
    for (i, (b, route)) in want.behaviors.iter().enumerate() {
        let k = key(&b.pattern);
        let (action, previous_origin, previous_position, moved) = match cur_pos.get(k) {
            None => (Action::Added, None, None, false),
            Some(&p) => {
                let before = &current[p];
                let moved = kept_before.iter().position(|x| *x == k)
                    != kept_after.iter().position(|x| *x == k);
                let retarget = before.origin != b.origin;
                let action = if retarget {
                    Action::Changed
                } else if moved {
                    Action::Moved
                } else {
                    Action::Unchanged
                };
                (
                    action,
                    retarget.then(|| before.origin.clone()),
                    Some(p + 1),
                    moved,
                )
            }
        };
        if action != Action::Unchanged {
            changes += 1;
        }
        // Keep CloudFront's spelling of an existing pattern so that nothing else changes.
        let pattern = match cur_pos.get(k) {
            Some(&p) => current[p].pattern.clone(),
            None => b.pattern.clone(),
        };
        behaviors.push(PlannedBehavior {
            position: i + 1,
            pattern,
            origin: b.origin.clone(),
            route: route.clone(),
            action,
            previous_origin,
            previous_position,
            moved,
        });
    }
    let removed: Vec<RemovedBehavior> = current
        .iter()
        .enumerate()
        .filter(|(_, b)| !want_keys.contains(key(&b.pattern)))
        .map(|(i, b)| RemovedBehavior {
            pattern: b.pattern.clone(),
            origin: b.origin.clone(),
            previous_position: i + 1,
        })
        .collect();
    changes += removed.len();
    let default = match &want.default {
        Some((to, route)) => DefaultChange {
            from: default_origin.clone(),
            to: to.clone(),
            route: Some(route.clone()),
        },
        None => DefaultChange {
            from: default_origin.clone(),
            to: default_origin.clone(),
            route: None,
        },
    };
    if default.from != default.to {
        changes += 1;
    }
    let mut notes = want.notes.clone();
    if want.default.is_none() {
        notes.push(format!(
            "the route table has no `*` route; the default behavior keeps origin {default_origin:?}"
        ));
    }
    Ok(Plan {
        distribution: distribution.to_string(),
        etag: etag.to_string(),
        behaviors,
        removed,
        default,
        notes,
        changes,
    })
}

/// A new path behavior with the default behavior's settings (policies, TTLs, methods,
/// protocol, functions) and its own pattern and target.
// The legacy cache settings (ForwardedValues, TTLs) are deprecated in the API but still what
// distributions without a cache policy use; they must be copied like the rest.
#[allow(deprecated)]
fn behavior_from_default(
    d: &DefaultCacheBehavior,
    pattern: &str,
    origin: &str,
) -> Result<CacheBehavior> {
    CacheBehavior::builder()
        .path_pattern(pattern)
        .target_origin_id(origin)
        .viewer_protocol_policy(d.viewer_protocol_policy.clone())
        .set_trusted_signers(d.trusted_signers.clone())
        .set_trusted_key_groups(d.trusted_key_groups.clone())
        .set_allowed_methods(d.allowed_methods.clone())
        .set_smooth_streaming(d.smooth_streaming)
        .set_compress(d.compress)
        .set_lambda_function_associations(d.lambda_function_associations.clone())
        .set_function_associations(d.function_associations.clone())
        .set_field_level_encryption_id(d.field_level_encryption_id.clone())
        .set_realtime_log_config_arn(d.realtime_log_config_arn.clone())
        .set_cache_policy_id(d.cache_policy_id.clone())
        .set_origin_request_policy_id(d.origin_request_policy_id.clone())
        .set_response_headers_policy_id(d.response_headers_policy_id.clone())
        .set_grpc_config(d.grpc_config.clone())
        .set_forwarded_values(d.forwarded_values.clone())
        .set_min_ttl(d.min_ttl)
        .set_default_ttl(d.default_ttl)
        .set_max_ttl(d.max_ttl)
        .build()
        .map_err(|e| CloudFrontError::Build(e.to_string()))
}

/// The configuration after a plan: behaviors in the plan's order with their new targets, every
/// other field of every existing behavior and of the distribution kept as read.
pub fn apply_plan(cfg: &DistributionConfig, plan: &Plan) -> Result<DistributionConfig> {
    let mut out = cfg.clone();
    let existing: BTreeMap<String, CacheBehavior> = cfg
        .cache_behaviors
        .as_ref()
        .and_then(|c| c.items.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|b| (key(&b.path_pattern).to_string(), b))
        .collect();
    let default = cfg.default_cache_behavior.clone().ok_or_else(|| {
        CloudFrontError::Incomplete(plan.distribution.clone(), "DefaultCacheBehavior")
    })?;
    let mut items = Vec::new();
    for p in &plan.behaviors {
        let b = match existing.get(key(&p.pattern)) {
            Some(b) => {
                let mut b = b.clone();
                b.target_origin_id = p.origin.clone();
                b
            }
            None => behavior_from_default(&default, &p.pattern, &p.origin)?,
        };
        items.push(b);
    }
    out.cache_behaviors = Some(behaviors_list(items)?);
    if let Some(d) = out.default_cache_behavior.as_mut() {
        d.target_origin_id = plan.default.to.clone();
    }
    Ok(out)
}

fn behaviors_list(items: Vec<CacheBehavior>) -> Result<CacheBehaviors> {
    let quantity = i32::try_from(items.len()).unwrap_or(i32::MAX);
    CacheBehaviors::builder()
        .quantity(quantity)
        .set_items(if items.is_empty() { None } else { Some(items) })
        .build()
        .map_err(|e| CloudFrontError::Build(e.to_string()))
}

/// A route id from a pattern: `/api/v1/*` -> `cf-api-v1`, unique within `used`.
fn route_id(pattern: &str, used: &mut BTreeSet<String>) -> String {
    let mut slug = String::new();
    for c in pattern.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    let slug = slug.trim_end_matches('-');
    let base = if slug.is_empty() {
        "cf-root".to_string()
    } else {
        format!("cf-{slug}")
    };
    let mut id = base.clone();
    let mut n = 2;
    while used.contains(&id) {
        id = format!("{base}-{n}");
        n += 1;
    }
    used.insert(id.clone());
    id
}

/// The distribution as a route table: one upstream per origin (`DOMAIN:443` over TLS, or the
/// HTTP port for an http-only custom origin; OriginPath as `path_prefix`), one route per
/// behavior in order, and the default behavior as a final `*` route.
pub fn export(cfg: &DistributionConfig) -> TableFile {
    let mut t = TableFile::default();
    for o in cfg
        .origins
        .as_ref()
        .map(|o| o.items.as_slice())
        .unwrap_or_default()
    {
        let (port, tls) = match &o.custom_origin_config {
            Some(c) if c.origin_protocol_policy == OriginProtocolPolicy::HttpOnly => {
                (c.http_port, false)
            }
            Some(c) => (c.https_port, true),
            None => (443, true),
        };
        let up = UpstreamFile {
            addrs: vec![format!("{}:{port}", o.domain_name)],
            tls,
            sni: tls.then(|| o.domain_name.clone()),
            host: Some(o.domain_name.clone()),
            path_prefix: o.origin_path.clone().filter(|p| !p.is_empty()),
            ..UpstreamFile::default()
        };
        t.upstreams.insert(o.id.clone(), up);
    }
    let (behaviors, default) = current_behaviors(cfg);
    let mut used = BTreeSet::new();
    used.insert("cf-default".to_string());
    for b in behaviors {
        t.routes.push(RouteFile {
            id: route_id(&b.pattern, &mut used),
            path: b.pattern,
            to: Some(b.origin),
            ..RouteFile::default()
        });
    }
    t.routes.push(RouteFile {
        id: "cf-default".into(),
        path: "*".into(),
        to: Some(default),
        ..RouteFile::default()
    });
    t
}

struct Cf {
    client: Client,
    id: String,
}

impl Cf {
    async fn config(&self) -> Result<(DistributionConfig, String)> {
        let out = self
            .client
            .get_distribution_config()
            .id(&self.id)
            .send()
            .await
            .map_err(|e| aws::classify("GetDistributionConfig", e))?;
        let etag = out
            .e_tag
            .ok_or_else(|| CloudFrontError::Incomplete(self.id.clone(), "ETag"))?;
        let cfg = out
            .distribution_config
            .ok_or_else(|| CloudFrontError::Incomplete(self.id.clone(), "DistributionConfig"))?;
        Ok((cfg, etag))
    }

    async fn update(
        &self,
        cfg: DistributionConfig,
        etag: &str,
    ) -> std::result::Result<String, AwsError> {
        let out = self
            .client
            .update_distribution()
            .id(&self.id)
            .if_match(etag)
            .distribution_config(cfg)
            .send()
            .await
            .map_err(|e| aws::classify("UpdateDistribution", e))?;
        Ok(out.e_tag.unwrap_or_default())
    }

    async fn wait(&self, w: &WaitArgs) -> Result<Option<Duration>> {
        if !w.wait {
            return Ok(None);
        }
        let timeout = w.timeout.unwrap_or(Duration::from_secs(30 * 60));
        let interval = w.poll_interval.unwrap_or(Duration::from_secs(20));
        let what = format!("distribution {} to be Deployed", self.id);
        let took = aws::wait_until(&what, timeout, interval, || async {
            let out = self
                .client
                .get_distribution()
                .id(&self.id)
                .send()
                .await
                .map_err(|e| aws::classify("GetDistribution", e))?;
            let status = out
                .distribution
                .map(|d| d.status)
                .unwrap_or_else(|| "unknown".into());
            Ok((status == "Deployed", status))
        })
        .await?;
        Ok(Some(took))
    }
}

/// Result of `apply` and `rollback`.
#[derive(Debug, Serialize)]
struct Applied {
    plan: Plan,
    applied: bool,
    dry_run: bool,
    /// The ETag after the update.
    #[serde(skip_serializing_if = "Option::is_none")]
    etag: Option<String>,
    /// Retried once after a stale ETag whose re-read plan was the same.
    retried: bool,
    /// Seconds waited until Deployed, with `--wait`.
    #[serde(skip_serializing_if = "Option::is_none")]
    deployed_after_secs: Option<f64>,
}

impl Applied {
    fn human(&self) -> String {
        let mut s = self.plan.human();
        if self.dry_run {
            s.push_str("dry run: nothing was changed\n");
        } else if !self.applied {
            s.push_str("nothing to change\n");
        } else {
            if self.retried {
                s.push_str("the ETag was stale; re-read, the plan was the same, applied with the new ETag\n");
            }
            s.push_str(&format!(
                "applied: UpdateDistribution accepted (new ETag {})\n",
                self.etag.as_deref().unwrap_or("?")
            ));
            match self.deployed_after_secs {
                Some(secs) => s.push_str(&format!(
                    "deployed after {}\n",
                    aws::human_duration(Duration::from_secs_f64(secs))
                )),
                None => s.push_str("CloudFront is deploying it; use --wait to wait for Deployed\n"),
            }
        }
        s
    }
}

fn load_routes(path: &Path) -> Result<TableFile> {
    config::load_path(path).map(|d| d.table).map_err(|errs| {
        CloudFrontError::Routes(
            errs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )
    })
}

/// Runs one `cloudfront` action. Plan and export only read; apply and rollback make at most one
/// accepted UpdateDistribution (two calls only when the first was refused for a stale ETag).
pub async fn run(args: Args) -> Result<Output> {
    let id = args
        .distribution
        .clone()
        .ok_or(CloudFrontError::NoDistribution)?;
    let json = args.aws.json;
    // Read the route file before any call, so a bad file costs nothing.
    let routes = match &args.cmd {
        Command::Plan { routes } | Command::Apply { routes, .. } => Some(load_routes(routes)?),
        _ => None,
    };
    let conf = aws::load(&args.aws).await;
    let cf = Cf {
        client: Client::new(&conf),
        id: id.clone(),
    };
    match args.cmd {
        Command::Plan { .. } => {
            let want = desired_from_table(&routes.unwrap_or_default())?;
            let (cfg, etag) = cf.config().await?;
            let p = plan(&id, &etag, &cfg, &want)?;
            Ok(Output::new(json, &p, Plan::human))
        }
        Command::Apply { dry_run, wait, .. } => {
            let want = desired_from_table(&routes.unwrap_or_default())?;
            let (cfg, etag) = cf.config().await?;
            let p = plan(&id, &etag, &cfg, &want)?;
            let plan_for = |cfg: &DistributionConfig, etag: &str| plan(&id, etag, cfg, &want);
            apply(&cf, cfg, p, plan_for, dry_run, &wait, json).await
        }
        Command::Rollback {
            path,
            remove,
            dry_run,
            wait,
        } => {
            let (cfg, etag) = cf.config().await?;
            let want = rollback_desired(&id, &cfg, &path, remove)?;
            let p = plan(&id, &etag, &cfg, &want)?;
            // A re-read after a stale ETag rolls back the same path on the new configuration;
            // it goes ahead only if that is still the same change.
            let plan_for = |cfg: &DistributionConfig, etag: &str| {
                let want = rollback_desired(&id, cfg, &path, remove)?;
                plan(&id, etag, cfg, &want)
            };
            apply(&cf, cfg, p, plan_for, dry_run, &wait, json).await
        }
        Command::Export { out } => {
            let (cfg, _) = cf.config().await?;
            let t = export(&cfg);
            let text = toml::to_string(&t).map_err(|e| CloudFrontError::Render(e.to_string()))?;
            let header = format!(
                "# Exported from CloudFront distribution {id} by `switchyard cloudfront export`.\n# Route order is behavior order; the last route is the default behavior.\n"
            );
            match out {
                Some(path) => {
                    std::fs::write(&path, format!("{header}{text}"))
                        .map_err(|e| CloudFrontError::Write(path.clone(), e))?;
                    let summary = ExportSummary {
                        distribution: id,
                        file: path.display().to_string(),
                        routes: t.routes.len(),
                        upstreams: t.upstreams.len(),
                    };
                    Ok(Output::new(json, &summary, |s| {
                        format!(
                            "wrote {} ({} routes, {} upstreams) from distribution {}",
                            s.file, s.routes, s.upstreams, s.distribution
                        )
                    }))
                }
                None if json => Ok(Output::new(true, &t, |_| String::new())),
                None => Ok(Output {
                    text: format!("{header}{text}"),
                    code: 0,
                }),
            }
        }
    }
}

#[derive(Debug, Serialize)]
struct ExportSummary {
    distribution: String,
    file: String,
    routes: usize,
    upstreams: usize,
}

/// The table that differs from the distribution only in `pattern`: retargeted at the default
/// origin, or gone.
fn rollback_desired(
    id: &str,
    cfg: &DistributionConfig,
    pattern: &str,
    remove: bool,
) -> Result<Desired> {
    let (current, default_origin) = current_behaviors(cfg);
    if !current.iter().any(|b| b.pattern == pattern) {
        let known: Vec<&str> = current.iter().map(|b| b.pattern.as_str()).collect();
        return Err(CloudFrontError::NoSuchBehavior(
            id.to_string(),
            pattern.to_string(),
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            },
        ));
    }
    let mut d = Desired::default();
    for b in current {
        if b.pattern == pattern {
            if remove {
                continue;
            }
            d.behaviors.push((
                Behavior {
                    pattern: b.pattern,
                    origin: default_origin.clone(),
                },
                "rollback".into(),
            ));
        } else {
            d.behaviors.push((b, "(kept)".into()));
        }
    }
    d.default = Some((default_origin, "(kept)".into()));
    Ok(d)
}

async fn apply<F>(
    cf: &Cf,
    cfg: DistributionConfig,
    p: Plan,
    replan: F,
    dry_run: bool,
    wait: &WaitArgs,
    json: bool,
) -> Result<Output>
where
    F: Fn(&DistributionConfig, &str) -> Result<Plan>,
{
    let mut result = Applied {
        plan: p,
        applied: false,
        dry_run,
        etag: None,
        retried: false,
        deployed_after_secs: None,
    };
    if dry_run || result.plan.changes == 0 {
        return Ok(Output::new(json, &result, Applied::human));
    }
    let new_cfg = apply_plan(&cfg, &result.plan)?;
    let etag = result.plan.etag.clone();
    match cf.update(new_cfg, &etag).await {
        Ok(new_etag) => result.etag = Some(new_etag),
        Err(AwsError::PreconditionFailed { .. }) => {
            let (cfg2, etag2) = cf.config().await?;
            let p2 = replan(&cfg2, &etag2)?;
            if !p2.same_changes(&result.plan) {
                return Err(CloudFrontError::PlanChanged {
                    distribution: cf.id.clone(),
                    old: etag,
                    plan: p2.human(),
                });
            }
            let new_cfg = apply_plan(&cfg2, &p2)?;
            let new_etag = cf.update(new_cfg, &etag2).await?;
            result.plan = p2;
            result.etag = Some(new_etag);
            result.retried = true;
        }
        Err(e) => return Err(e.into()),
    }
    result.applied = true;
    if let Some(took) = cf.wait(wait).await? {
        result.deployed_after_secs = Some(took.as_secs_f64());
    }
    Ok(Output::new(json, &result, Applied::human))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_cloudfront::types::{Origin, Origins, ViewerProtocolPolicy};

    fn cfg(behaviors: &[(&str, &str)], default: &str) -> DistributionConfig {
        let origins = ["old", "new", "static"]
            .iter()
            .map(|id| {
                Origin::builder()
                    .id(*id)
                    .domain_name(format!("{id}.example.com"))
                    .build()
                    .unwrap()
            })
            .collect::<Vec<_>>();
        let default = DefaultCacheBehavior::builder()
            .target_origin_id(default)
            .viewer_protocol_policy(ViewerProtocolPolicy::RedirectToHttps)
            .cache_policy_id("policy-1")
            .build()
            .unwrap();
        let items: Vec<CacheBehavior> = behaviors
            .iter()
            .map(|(p, o)| {
                CacheBehavior::builder()
                    .path_pattern(*p)
                    .target_origin_id(*o)
                    .viewer_protocol_policy(ViewerProtocolPolicy::AllowAll)
                    .compress(false)
                    .build()
                    .unwrap()
            })
            .collect();
        DistributionConfig::builder()
            .caller_reference("ref")
            .comment("c")
            .enabled(true)
            .origins(
                Origins::builder()
                    .quantity(3)
                    .set_items(Some(origins))
                    .build()
                    .unwrap(),
            )
            .default_cache_behavior(default)
            .cache_behaviors(behaviors_list(items).unwrap())
            .build()
            .unwrap()
    }

    fn table_of(text: &str) -> TableFile {
        config::parse_toml("t", text).unwrap()
    }

    #[test]
    fn plan_marks_added_changed_moved_removed_and_default() {
        let c = cfg(
            &[("/a/*", "old"), ("/b/*", "old"), ("/gone/*", "old")],
            "old",
        );
        let t = table_of(
            "[[routes]]\nid='b'\npath='/b/*'\nto='old'\n[[routes]]\nid='a'\npath='a/*'\nto='new'\n[[routes]]\nid='n'\npath='/n/*'\nsplit={new=90.0,old=10.0}\n[[routes]]\nid='d'\npath='*'\nto='new'\n",
        );
        let want = desired_from_table(&t).unwrap();
        let p = plan("E1", "tag", &c, &want).unwrap();
        let acts: Vec<(&str, &Action, bool)> = p
            .behaviors
            .iter()
            .map(|b| (b.pattern.as_str(), &b.action, b.moved))
            .collect();
        assert_eq!(
            acts,
            [
                ("/b/*", &Action::Moved, true),
                ("/a/*", &Action::Changed, true),
                ("/n/*", &Action::Added, false)
            ]
        );
        assert_eq!(p.behaviors[2].origin, "new");
        assert_eq!(p.removed.len(), 1);
        assert_eq!(p.removed[0].pattern, "/gone/*");
        assert_eq!(p.default.to, "new");
        assert_eq!(p.changes, 5);
        assert!(p.notes.iter().any(|n| n.contains("largest arm")));
        let h = p.human();
        assert!(h.contains("old -> new"), "{h}");
        assert!(h.contains("removed (was #3)"), "{h}");
    }

    #[test]
    fn unknown_origin_is_refused() {
        let c = cfg(&[], "old");
        let want =
            desired_from_table(&table_of("[[routes]]\nid='x'\npath='/x'\nto='nope'\n")).unwrap();
        let e = plan("E1", "t", &c, &want).unwrap_err();
        assert!(e.to_string().contains("\"nope\" is not an origin"), "{e}");
    }

    #[test]
    fn apply_keeps_fields_and_copies_default_for_new() {
        let c = cfg(&[("/a/*", "old")], "old");
        let want = desired_from_table(&table_of(
            "[[routes]]\nid='n'\npath='/n/*'\nto='new'\n[[routes]]\nid='a'\npath='/a/*'\nto='new'\n",
        ))
        .unwrap();
        let p = plan("E1", "t", &c, &want).unwrap();
        let out = apply_plan(&c, &p).unwrap();
        let items = out.cache_behaviors.unwrap().items.unwrap();
        assert_eq!(items[0].path_pattern, "/n/*");
        assert_eq!(items[0].cache_policy_id.as_deref(), Some("policy-1"));
        assert_eq!(
            items[0].viewer_protocol_policy,
            ViewerProtocolPolicy::RedirectToHttps
        );
        assert_eq!(items[1].path_pattern, "/a/*");
        assert_eq!(items[1].target_origin_id, "new");
        assert_eq!(items[1].compress, Some(false));
        assert_eq!(
            items[1].viewer_protocol_policy,
            ViewerProtocolPolicy::AllowAll
        );
    }

    #[test]
    fn rollback_touches_one_behavior() {
        let c = cfg(&[("/a/*", "new"), ("/b/*", "new")], "old");
        let want = rollback_desired("E1", &c, "/a/*", false).unwrap();
        let p = plan("E1", "t", &c, &want).unwrap();
        assert_eq!(p.changes, 1);
        assert_eq!(p.behaviors[0].origin, "old");
        assert_eq!(p.behaviors[1].action, Action::Unchanged);
        let want = rollback_desired("E1", &c, "/b/*", true).unwrap();
        assert_eq!(plan("E1", "t", &c, &want).unwrap().removed.len(), 1);
        assert!(rollback_desired("E1", &c, "/zz", false).is_err());
    }

    #[test]
    fn export_ids_are_unique_and_load() {
        let c = cfg(&[("/api/v1/*", "new"), ("/api/v1*", "old")], "old");
        let t = export(&c);
        let ids: Vec<&str> = t.routes.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["cf-api-v1", "cf-api-v1-2", "cf-default"]);
        let text = toml::to_string(&t).unwrap();
        assert_eq!(config::parse_toml("x", &text).unwrap(), t);
    }
}
