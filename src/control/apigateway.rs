//! API Gateway REST APIs: a stage's deployment history, rolling the stage back to an earlier
//! deployment, and the stage's canary (set, promote, off), each one UpdateStage call.

use std::collections::BTreeMap;

use aws_sdk_apigateway::types::{CanarySettings, Deployment, Op, PatchOperation};
use aws_sdk_apigateway::Client;
use serde::Serialize;

use super::aws::{self, AwsArgs, AwsError};
use super::{table, Output};

/// `switchyard apigw ...`
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub aws: AwsArgs,
    /// The REST API's id.
    #[arg(long, global = true, env = "SWITCHYARD_API", value_name = "ID")]
    pub api: Option<String>,
    /// The stage's name (`prod`).
    #[arg(long, global = true, env = "SWITCHYARD_STAGE", value_name = "NAME")]
    pub stage: Option<String>,
    #[command(subcommand)]
    pub cmd: Command,
}

/// The API Gateway actions.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List the API's deployments, newest first; `*` marks the stage's, `c` its canary's.
    Deployments,
    /// Point the stage at the deployment before its current one, or at `--to`.
    Rollback {
        /// Deployment id to point the stage at; default the one created just before the current.
        #[arg(long, value_name = "DEPLOYMENT")]
        to: Option<String>,
        /// Show the change and stop before making it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Send a percentage of the stage's traffic to another deployment, or turn the canary off.
    Canary {
        /// Percent of requests to the canary, 0 to 100.
        #[arg(
            long,
            value_name = "N",
            required_unless_present = "off",
            conflicts_with = "off"
        )]
        percent: Option<f64>,
        /// Canary deployment; default the newest deployment (or the canary's current one).
        #[arg(long, value_name = "ID", conflicts_with = "off")]
        deployment: Option<String>,
        /// Remove the stage's canary settings; all traffic goes to the stage's deployment.
        #[arg(long)]
        off: bool,
        /// Show the change and stop before making it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Make the canary's deployment (and its stage variable overrides) the stage's, canary 0%.
    Promote {
        /// Show the change and stop before making it.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Why an API Gateway command failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiGatewayError {
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error("--api and --stage are required (or SWITCHYARD_API / SWITCHYARD_STAGE)")]
    Missing,
    #[error("deployment {id:?} does not exist in REST API {api} (it has {count} deployments; see `switchyard apigw deployments`); the stage was not changed")]
    UnknownDeployment {
        id: String,
        api: String,
        count: usize,
    },
    #[error("stage {stage} has no deployment before {current}; nothing to roll back to")]
    NothingBefore { stage: String, current: String },
    #[error("stage {0} has no deployment")]
    NoDeployment(String),
    #[error("--percent must be between 0 and 100, not {0}")]
    Percent(f64),
    #[error("stage {0} has no canary to promote")]
    NoCanary(String),
    #[error("the newest deployment {0} is already the stage's; pass --deployment")]
    NewestIsCurrent(String),
    #[error("cannot build the patch operation: {0}")]
    Build(String),
}

type Result<T> = std::result::Result<T, ApiGatewayError>;

/// One deployment as listed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeploymentRow {
    pub id: String,
    /// RFC 3339, or empty when the service gave none.
    pub created: String,
    pub description: String,
    /// The stage serves it.
    pub active: bool,
    /// The stage's canary serves it.
    pub canary: bool,
}

/// The stage's canary as shown.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CanaryView {
    pub deployment: Option<String>,
    pub percent: f64,
    pub stage_variable_overrides: BTreeMap<String, String>,
}

/// The state of a stage that the commands read and print.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StageView {
    pub api: String,
    pub stage: String,
    pub deployment: Option<String>,
    pub canary: Option<CanaryView>,
}

fn canary_view(c: &CanarySettings) -> CanaryView {
    CanaryView {
        deployment: c.deployment_id.clone(),
        percent: c.percent_traffic,
        stage_variable_overrides: c
            .stage_variable_overrides
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
    }
}

/// Deployments sorted newest first (ties by id, so the order is stable).
pub fn sort_newest_first(mut d: Vec<Deployment>) -> Vec<Deployment> {
    d.sort_by(|a, b| {
        let ka = a.created_date.map(|t| (t.secs(), t.subsec_nanos()));
        let kb = b.created_date.map(|t| (t.secs(), t.subsec_nanos()));
        kb.cmp(&ka).then_with(|| b.id.cmp(&a.id))
    });
    d
}

/// The deployment to roll back to: `to` if given and known, else the one created just before
/// `current` in `newest_first`.
pub fn rollback_target(
    api: &str,
    stage: &str,
    newest_first: &[Deployment],
    current: &str,
    to: Option<&str>,
) -> Result<String> {
    if let Some(to) = to {
        if newest_first.iter().any(|d| d.id.as_deref() == Some(to)) {
            return Ok(to.to_string());
        }
        return Err(ApiGatewayError::UnknownDeployment {
            id: to.to_string(),
            api: api.to_string(),
            count: newest_first.len(),
        });
    }
    let pos = newest_first
        .iter()
        .position(|d| d.id.as_deref() == Some(current))
        .ok_or_else(|| ApiGatewayError::UnknownDeployment {
            id: current.to_string(),
            api: api.to_string(),
            count: newest_first.len(),
        })?;
    newest_first
        .get(pos + 1)
        .and_then(|d| d.id.clone())
        .ok_or_else(|| ApiGatewayError::NothingBefore {
            stage: stage.to_string(),
            current: current.to_string(),
        })
}

fn patch(op: Op, path: &str, value: Option<String>) -> PatchOperation {
    PatchOperation::builder()
        .op(op)
        .path(path)
        .set_value(value)
        .build()
}

/// The operations that promote a canary, as AWS documents it: the stage takes the canary's
/// deployment and stage variable overrides, and the canary's share drops to 0%.
pub fn promote_ops(c: &CanaryView) -> Option<Vec<PatchOperation>> {
    let dep = c.deployment.clone()?;
    let mut ops = vec![patch(Op::Replace, "/deploymentId", Some(dep))];
    for (k, v) in &c.stage_variable_overrides {
        ops.push(patch(
            Op::Replace,
            &format!("/variables/{k}"),
            Some(v.clone()),
        ));
    }
    ops.push(patch(
        Op::Replace,
        "/canarySettings/percentTraffic",
        Some("0.0".into()),
    ));
    Some(ops)
}

struct Api {
    client: Client,
    api: String,
    stage: String,
}

impl Api {
    async fn stage(&self) -> Result<StageView> {
        let s = self
            .client
            .get_stage()
            .rest_api_id(&self.api)
            .stage_name(&self.stage)
            .send()
            .await
            .map_err(|e| aws::classify("GetStage", e))?;
        Ok(StageView {
            api: self.api.clone(),
            stage: self.stage.clone(),
            deployment: s.deployment_id,
            canary: s.canary_settings.as_ref().map(canary_view),
        })
    }

    async fn deployments(&self) -> Result<Vec<Deployment>> {
        let mut all = Vec::new();
        let mut position: Option<String> = None;
        // Bounded: 500 per page, and a service that repeats a position must not loop forever.
        for _ in 0..100 {
            let out = self
                .client
                .get_deployments()
                .rest_api_id(&self.api)
                .limit(500)
                .set_position(position.clone())
                .send()
                .await
                .map_err(|e| aws::classify("GetDeployments", e))?;
            all.extend(out.items.unwrap_or_default());
            match out.position {
                Some(p) if !p.is_empty() && Some(&p) != position.as_ref() => position = Some(p),
                _ => break,
            }
        }
        Ok(sort_newest_first(all))
    }

    async fn update(&self, ops: Vec<PatchOperation>) -> Result<StageView> {
        let s = self
            .client
            .update_stage()
            .rest_api_id(&self.api)
            .stage_name(&self.stage)
            .set_patch_operations(Some(ops))
            .send()
            .await
            .map_err(|e| aws::classify("UpdateStage", e))?;
        Ok(StageView {
            api: self.api.clone(),
            stage: self.stage.clone(),
            deployment: s.deployment_id,
            canary: s.canary_settings.as_ref().map(canary_view),
        })
    }
}

/// `deployments` output.
#[derive(Debug, Serialize)]
struct History {
    stage: StageView,
    deployments: Vec<DeploymentRow>,
}

fn rows(deps: &[Deployment], stage: &StageView) -> Vec<DeploymentRow> {
    let canary = stage.canary.as_ref().and_then(|c| c.deployment.clone());
    deps.iter()
        .map(|d| {
            let id = d.id.clone().unwrap_or_default();
            DeploymentRow {
                active: stage.deployment.as_deref() == Some(id.as_str()),
                canary: canary.as_deref() == Some(id.as_str()),
                created: d
                    .created_date
                    .and_then(|t| t.fmt(aws_smithy_types::date_time::Format::DateTime).ok())
                    .unwrap_or_default(),
                description: d.description.clone().unwrap_or_default(),
                id,
            }
        })
        .collect()
}

fn stage_line(s: &StageView) -> String {
    let mut line = format!(
        "REST API {} stage {}: deployment {}",
        s.api,
        s.stage,
        s.deployment.as_deref().unwrap_or("(none)")
    );
    match &s.canary {
        Some(c) => line.push_str(&format!(
            ", canary {} at {}%",
            c.deployment.as_deref().unwrap_or("(none)"),
            c.percent
        )),
        None => line.push_str(", no canary"),
    }
    line
}

impl History {
    fn human(&self) -> String {
        let mut out = stage_line(&self.stage);
        out.push('\n');
        let mut t = vec![vec![
            String::new(),
            "deployment".into(),
            "created".into(),
            "description".into(),
        ]];
        for d in &self.deployments {
            let mark = match (d.active, d.canary) {
                (true, _) => "*",
                (false, true) => "c",
                _ => "",
            };
            t.push(vec![
                mark.to_string(),
                d.id.clone(),
                d.created.clone(),
                d.description.clone(),
            ]);
        }
        out.push_str(&table(&t));
        out.push_str("* = the stage's deployment, c = the canary's\n");
        out
    }
}

/// Result of a mutating command.
#[derive(Debug, Serialize)]
struct Change {
    action: String,
    before: StageView,
    /// The stage as UpdateStage returned it; absent on a dry run.
    #[serde(skip_serializing_if = "Option::is_none")]
    after: Option<StageView>,
    /// The JSON Patch operations sent (or that would be sent).
    operations: Vec<PatchView>,
    dry_run: bool,
}

#[derive(Debug, Serialize)]
struct PatchView {
    op: String,
    path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
}

impl Change {
    fn human(&self) -> String {
        let mut out = format!("{}\nbefore: {}\n", self.action, stage_line(&self.before));
        for p in &self.operations {
            out.push_str(&format!(
                "  UpdateStage {} {}{}\n",
                p.op,
                p.path,
                p.value
                    .as_ref()
                    .map(|v| format!(" = {v}"))
                    .unwrap_or_default()
            ));
        }
        match &self.after {
            Some(a) => out.push_str(&format!("after:  {}\n", stage_line(a))),
            None => out.push_str("dry run: nothing was changed\n"),
        }
        out
    }
}

async fn change(
    api: &Api,
    action: String,
    before: StageView,
    ops: Vec<PatchOperation>,
    dry_run: bool,
    json: bool,
) -> Result<Output> {
    let operations = ops
        .iter()
        .map(|o| PatchView {
            op: o
                .op
                .as_ref()
                .map(|o| o.as_str().to_string())
                .unwrap_or_default(),
            path: o.path.clone().unwrap_or_default(),
            value: o.value.clone(),
        })
        .collect();
    let after = if dry_run {
        None
    } else {
        Some(api.update(ops).await?)
    };
    let c = Change {
        action,
        before,
        after,
        operations,
        dry_run,
    };
    Ok(Output::new(json, &c, Change::human))
}

/// Runs one `apigw` action. Every mutating action reads the stage and deployments first and
/// makes exactly one UpdateStage call, so a refusal (unknown id, no canary) changes nothing.
pub async fn run(args: Args) -> Result<Output> {
    let (Some(api_id), Some(stage)) = (args.api.clone(), args.stage.clone()) else {
        return Err(ApiGatewayError::Missing);
    };
    if let Command::Canary {
        percent: Some(p), ..
    } = &args.cmd
    {
        if !(0.0..=100.0).contains(p) {
            return Err(ApiGatewayError::Percent(*p));
        }
    }
    let json = args.aws.json;
    let conf = aws::load(&args.aws).await;
    let api = Api {
        client: Client::new(&conf),
        api: api_id.clone(),
        stage: stage.clone(),
    };
    match args.cmd {
        Command::Deployments => {
            let s = api.stage().await?;
            let deps = api.deployments().await?;
            let h = History {
                deployments: rows(&deps, &s),
                stage: s,
            };
            Ok(Output::new(json, &h, History::human))
        }
        Command::Rollback { to, dry_run } => {
            let s = api.stage().await?;
            let current = s
                .deployment
                .clone()
                .ok_or_else(|| ApiGatewayError::NoDeployment(stage.clone()))?;
            let deps = api.deployments().await?;
            let target = rollback_target(&api_id, &stage, &deps, &current, to.as_deref())?;
            let ops = vec![patch(Op::Replace, "/deploymentId", Some(target.clone()))];
            let action = format!("roll stage {stage} back from deployment {current} to {target}");
            change(&api, action, s, ops, dry_run, json).await
        }
        Command::Canary {
            off: true, dry_run, ..
        } => {
            let s = api.stage().await?;
            if s.canary.is_none() {
                return Err(ApiGatewayError::NoCanary(stage));
            }
            let ops = vec![patch(Op::Remove, "/canarySettings", None)];
            change(
                &api,
                format!("turn stage {stage}'s canary off"),
                s,
                ops,
                dry_run,
                json,
            )
            .await
        }
        Command::Canary {
            percent,
            deployment,
            dry_run,
            ..
        } => {
            let percent = percent.unwrap_or(0.0);
            let s = api.stage().await?;
            let deps = api.deployments().await?;
            let target = match deployment {
                Some(id) => {
                    if !deps.iter().any(|d| d.id.as_deref() == Some(id.as_str())) {
                        return Err(ApiGatewayError::UnknownDeployment {
                            id,
                            api: api_id,
                            count: deps.len(),
                        });
                    }
                    id
                }
                None => match s.canary.as_ref().and_then(|c| c.deployment.clone()) {
                    Some(id) => id,
                    None => {
                        let newest = deps
                            .first()
                            .and_then(|d| d.id.clone())
                            .ok_or_else(|| ApiGatewayError::NoDeployment(stage.clone()))?;
                        if s.deployment.as_deref() == Some(newest.as_str()) {
                            return Err(ApiGatewayError::NewestIsCurrent(newest));
                        }
                        newest
                    }
                },
            };
            let ops = vec![
                patch(
                    Op::Replace,
                    "/canarySettings/deploymentId",
                    Some(target.clone()),
                ),
                patch(
                    Op::Replace,
                    "/canarySettings/percentTraffic",
                    Some(format!("{percent}")),
                ),
            ];
            let action = format!("send {percent}% of stage {stage} to deployment {target}");
            change(&api, action, s, ops, dry_run, json).await
        }
        Command::Promote { dry_run } => {
            let s = api.stage().await?;
            let c = s
                .canary
                .clone()
                .ok_or_else(|| ApiGatewayError::NoCanary(stage.clone()))?;
            let ops = promote_ops(&c).ok_or_else(|| ApiGatewayError::NoCanary(stage.clone()))?;
            let action = format!(
                "promote stage {stage}'s canary deployment {} (canary left at 0%; `canary --off` removes it)",
                c.deployment.as_deref().unwrap_or("?")
            );
            change(&api, action, s, ops, dry_run, json).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_types::DateTime;

    fn dep(id: &str, t: i64) -> Deployment {
        Deployment::builder()
            .id(id)
            .created_date(DateTime::from_secs(t))
            .build()
    }

    #[test]
    fn newest_first_and_previous() {
        let d = sort_newest_first(vec![dep("a", 1), dep("c", 3), dep("b", 2)]);
        let ids: Vec<_> = d.iter().map(|d| d.id.clone().unwrap()).collect();
        assert_eq!(ids, ["c", "b", "a"]);
        assert_eq!(rollback_target("x", "prod", &d, "c", None).unwrap(), "b");
        assert_eq!(
            rollback_target("x", "prod", &d, "c", Some("a")).unwrap(),
            "a"
        );
        assert!(matches!(
            rollback_target("x", "prod", &d, "a", None),
            Err(ApiGatewayError::NothingBefore { .. })
        ));
        assert!(matches!(
            rollback_target("x", "prod", &d, "c", Some("zz")),
            Err(ApiGatewayError::UnknownDeployment { .. })
        ));
    }

    #[test]
    fn promote_takes_deployment_and_overrides() {
        let c = CanaryView {
            deployment: Some("d2".into()),
            percent: 10.0,
            stage_variable_overrides: [("k".to_string(), "v".to_string())].into(),
        };
        let ops = promote_ops(&c).unwrap();
        let paths: Vec<_> = ops.iter().map(|o| o.path.clone().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "/deploymentId",
                "/variables/k",
                "/canarySettings/percentTraffic"
            ]
        );
        assert_eq!(ops[0].value.as_deref(), Some("d2"));
    }
}
