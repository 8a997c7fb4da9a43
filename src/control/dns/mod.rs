//! Route53: the records of one name (status, with failover roles and health), shifting
//! weights in one change batch, lowering their TTL before a cutover, delegating a subdomain to
//! another hosted zone, switching a plain or alias record with undo, converting between a plain
//! record and weighted ones, swapping failover roles ([`records`]), the registrar's name servers
//! ([`registrar`]), and waiting for a change to be INSYNC.
//!
//! Route53 cannot say when a name last changed, so every change made here is also recorded in
//! a small state file (change id, submission time, the TTL before it, and for the record
//! changes of [`records`] the record sets before and after it); `status` uses it to say when
//! every resolver will have seen the current records, `undo` to restore what was there.
//!
//! The operations are plain async functions over an SDK client ([`records::switch`],
//! [`records::undo`], [`records::to_weighted`], [`records::to_plain`], [`records::failover`],
//! [`registrar::nameservers`]) returning typed outcomes; [`run`] is only the command line's
//! parsing and printing around them.

pub mod check;
pub mod records;
pub mod registrar;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ChangeStatus, ResourceRecord, ResourceRecordSet, RrType,
};
use aws_sdk_route53::Client;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::aws::{self, AwsArgs, AwsError, WaitArgs};
use super::{table, Output};

/// `switchyard dns ...`
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub aws: AwsArgs,
    /// Hosted zone id (`Z0123456789ABC`); for `delegate`, the parent zone.
    #[arg(long, global = true, env = "SWITCHYARD_ZONE", value_name = "ID")]
    pub zone: Option<String>,
    /// Record name (`api.example.com`).
    #[arg(long, global = true, value_name = "NAME")]
    pub name: Option<String>,
    /// Where changes made here are recorded for `status`. Default: `$SWITCHYARD_STATE_DIR`,
    /// else `$XDG_STATE_HOME/switchyard`, else `~/.local/state/switchyard`.
    #[arg(long, global = true, env = "SWITCHYARD_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: Command,
}

/// The Route53 actions.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Show the name's records (set id, weight, share, failover role and health check state,
    /// TTL, target) and when every resolver will have seen the last change made by
    /// switchyard; with `--domain`, also the domain's name servers at the registrar.
    Status {
        /// A domain registered with Route53 Domains: show its name servers and when every
        /// resolver will have seen the last change switchyard made to them.
        #[arg(long, value_name = "DOMAIN")]
        domain: Option<String>,
    },
    /// Set the weights of weighted records in one UPSERT change batch.
    Shift {
        /// `SET_IDENTIFIER=WEIGHT`, weight 0-255; repeat for each record to change.
        #[arg(long = "set", value_name = "ID=WEIGHT", required = true)]
        sets: Vec<String>,
        /// Show the change batch and stop before sending it.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Set the TTL of the name's records (before a cutover: lower it, then wait the old TTL).
    LowerTtl {
        /// New TTL in seconds.
        #[arg(long, value_name = "SECONDS")]
        ttl: i64,
        /// Show the change batch and stop before sending it.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Point a plain or alias record (CNAME, A, AAAA) at a new target in one UPSERT change
    /// batch; the record set it replaces is saved so `undo` restores it exactly.
    Switch {
        /// The new value: a host name (CNAME) or IP addresses, comma-separated (A, AAAA).
        #[arg(
            long,
            value_name = "TARGET",
            required_unless_present = "alias",
            conflicts_with = "alias"
        )]
        to: Option<String>,
        #[command(flatten)]
        alias: AliasArgs,
        /// Record type. Default: the type of the name's one record, else what the target is
        /// (IPv4 -> A, IPv6 -> AAAA, host name -> CNAME, alias -> A).
        #[arg(long = "type", value_name = "CNAME|A|AAAA")]
        rtype: Option<String>,
        /// TTL in seconds (not for an alias). Default: the replaced record's, else 300.
        #[arg(long, value_name = "SECONDS")]
        ttl: Option<i64>,
        /// Before changing anything, GET this URL through the new target (connect to the
        /// target, Host and SNI from the URL); any answer but 2xx/3xx stops the switch.
        #[arg(long, value_name = "URL")]
        check_url: Option<String>,
        /// Show the change batch and stop before sending it.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Restore the record sets the last `switch`, `to-weighted`, `to-plain` or `failover` of
    /// this name replaced, in one change batch.
    Undo {
        /// Restore even if the name changed since (the current records are then replaced).
        #[arg(long)]
        force: bool,
        /// Show the change batch and stop before sending it.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Turn the name's plain record into two weighted records, the old target at 100 and the
    /// new one at 0, in one change batch (DELETE and both CREATEs together), so a gradual
    /// `shift` can start without a moment in which the name does not resolve.
    ToWeighted {
        /// The new target: a host name (CNAME) or IP addresses, comma-separated (A, AAAA).
        #[arg(
            long = "new",
            value_name = "TARGET",
            required_unless_present = "alias",
            conflicts_with = "alias"
        )]
        new: Option<String>,
        #[command(flatten)]
        alias: AliasArgs,
        /// Which record, when the name has several types (A and AAAA).
        #[arg(long = "type", value_name = "CNAME|A|AAAA")]
        rtype: Option<String>,
        /// Set identifier of the record that keeps the old target (weight 100).
        #[arg(long, default_value = "old", value_name = "ID")]
        old_id: String,
        /// Set identifier of the record with the new target (weight 0).
        #[arg(long, default_value = "new", value_name = "ID")]
        new_id: String,
        /// TTL of the new record. Default: the old record's, or 60 when the old one is an alias.
        #[arg(long, value_name = "SECONDS")]
        ttl: Option<i64>,
        /// Before changing anything, GET this URL through the new target; any answer but
        /// 2xx/3xx stops here.
        #[arg(long, value_name = "URL")]
        check_url: Option<String>,
        /// Show the change batch and stop before sending it.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Turn the name's weighted records into one plain record with the target of one of them
    /// (the one with the largest weight, or `--keep`), in one change batch.
    ToPlain {
        /// Set identifier of the record whose target stays. Default: the largest weight.
        #[arg(long, value_name = "ID")]
        keep: Option<String>,
        /// Which weighted records, when the name has weighted records of several types.
        #[arg(long = "type", value_name = "CNAME|A|AAAA")]
        rtype: Option<String>,
        /// Show the change batch and stop before sending it.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Force a failover: swap the PRIMARY and SECONDARY roles of the name's failover records
    /// in one change batch (each keeps its target and health check).
    Failover {
        /// `secondary`: the current secondary becomes primary. `primary`: the record that was
        /// primary before switchyard's first failover of this name is primary again. A set
        /// identifier: that record becomes primary.
        #[arg(long, value_name = "secondary|primary|SET_ID")]
        to: String,
        /// Which failover records, when the name has them for several types.
        #[arg(long = "type", value_name = "CNAME|A|AAAA")]
        rtype: Option<String>,
        /// Show the change batch and stop before sending it.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Show or set a registered domain's name servers at the registrar (Route53 Domains).
    /// A change is recorded so `status --domain` says when every resolver will have seen it.
    Nameservers {
        /// The registered domain (`example.com`).
        #[arg(long, value_name = "DOMAIN")]
        domain: String,
        /// The new name servers, comma-separated.
        #[arg(
            long,
            value_name = "NS1,NS2,...",
            value_delimiter = ',',
            conflicts_with = "from_zone"
        )]
        set: Option<Vec<String>>,
        /// Set the name servers of this hosted zone's delegation set.
        #[arg(long, value_name = "ID")]
        from_zone: Option<String>,
        /// TTL of the domain's NS records at the parent (the TLD's registry): how long a
        /// resolver may keep the old name servers. Two days for most TLDs.
        #[arg(long, default_value_t = 172_800, value_name = "SECONDS")]
        parent_ttl: i64,
        /// Show the change and stop before sending it.
        #[arg(long)]
        dry_run: bool,
        /// `--wait` polls the registrar's operation until it has succeeded (default timeout
        /// 30m, poll every 15s).
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Create (or update) the NS records in this (parent) zone that delegate a subdomain to
    /// the name servers of another hosted zone.
    Delegate {
        /// The subdomain, which must be the other zone's name (`dev.example.com`).
        #[arg(long, value_name = "NAME")]
        subdomain: String,
        /// The hosted zone that serves the subdomain.
        #[arg(long, value_name = "ID")]
        to_zone: String,
        /// TTL of the NS records (two days, as registries use).
        #[arg(long, default_value_t = 172_800, value_name = "SECONDS")]
        ttl: i64,
        /// Show the change batch and stop before sending it.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

/// `--alias` and `--alias-zone`: the new target as an alias to an AWS resource.
#[derive(Debug, Clone, clap::Args)]
pub struct AliasArgs {
    /// The new target as an alias: the DNS name of a load balancer, CloudFront distribution or
    /// other AWS resource (`my-alb-123.eu-west-1.elb.amazonaws.com`).
    #[arg(long, value_name = "DNS_NAME", requires = "alias_zone")]
    pub alias: Option<String>,
    /// The hosted zone id of that resource (an ALB's `CanonicalHostedZoneId`; Z2FDTNDATAQYW2
    /// for CloudFront).
    #[arg(long, value_name = "HOSTED_ZONE_ID", requires = "alias")]
    pub alias_zone: Option<String>,
    /// The alias's EvaluateTargetHealth. Default: the replaced alias record's, else false.
    #[arg(long, value_name = "BOOL", requires = "alias")]
    pub evaluate_target_health: Option<bool>,
}

impl AliasArgs {
    /// The target these flags (or `values`, when no alias is given) name.
    fn target(&self, values: Option<&str>) -> records::Target {
        match (&self.alias, &self.alias_zone) {
            (Some(dns), Some(zone)) => records::Target::Alias {
                dns_name: dns.trim().to_string(),
                hosted_zone_id: zone.trim().to_string(),
                evaluate_target_health: self.evaluate_target_health,
            },
            _ => records::Target::Values(
                values
                    .unwrap_or_default()
                    .split(',')
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
                    .collect(),
            ),
        }
    }
}

/// Why a Route53 command failed.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error("--zone is required (or SWITCHYARD_ZONE)")]
    NoZone,
    #[error("--name is required")]
    NoName,
    #[error("--set {0:?}: expected SET_IDENTIFIER=WEIGHT")]
    SetSyntax(String),
    #[error("--set {id}={weight}: a weight is an integer from 0 to 255")]
    Weight { id: String, weight: String },
    #[error("--set {0}: given twice")]
    Duplicate(String),
    #[error("--ttl {0}: a TTL is 0 to 2147483647 seconds")]
    Ttl(i64),
    #[error(
        "{name} has no weighted record with set identifier {id:?} in zone {zone} (it has: {known})"
    )]
    UnknownSet {
        name: String,
        id: String,
        zone: String,
        known: String,
    },
    #[error(
        "{name} has no records in zone {zone} that can be changed here (alias records have no TTL)"
    )]
    NoRecords { name: String, zone: String },
    #[error("zone {zone} is for {zone_name}, not {subdomain}")]
    WrongZone {
        zone: String,
        zone_name: String,
        subdomain: String,
    },
    #[error("{subdomain} is not below the parent zone {parent_name} ({parent})")]
    NotBelow {
        subdomain: String,
        parent: String,
        parent_name: String,
    },
    #[error("zone {0} has no delegation set (a private zone cannot be delegated to)")]
    NoNameServers(String),
    #[error("--domain is required")]
    NoDomain,
    #[error("--type {0}: switchyard changes CNAME, A and AAAA records")]
    Type(String),
    #[error("{0}")]
    Target(String),
    #[error("--ttl: an alias record has no TTL of its own (it follows its target)")]
    AliasTtl,
    #[error("{name} has weighted records ({ids}): change their weights with `switchyard dns shift`, or turn them into one record with `switchyard dns to-plain`")]
    Weighted { name: String, ids: String },
    #[error("{name} has failover records ({ids}): switch them with `switchyard dns failover`")]
    FailoverRouted { name: String, ids: String },
    #[error("{name} has {policy} records ({ids}), which switchyard does not change")]
    Routed {
        name: String,
        policy: String,
        ids: String,
    },
    #[error("{name} has several record sets ({types}) and switchyard cannot tell which one is meant: pass --type")]
    Ambiguous { name: String, types: String },
    #[error("{name} has {what} in zone {zone}")]
    Nothing {
        name: String,
        zone: String,
        what: String,
    },
    #[error("{name}: {msg}")]
    Refused { name: String, msg: String },
    #[error("{name} record set {what} cannot be saved for undo: it uses {field}, which switchyard does not restore")]
    Unsupported {
        name: String,
        what: String,
        field: String,
    },
    #[error("no change to undo for {name} in zone {zone} (switchyard saves one before each switch, to-weighted, to-plain and failover, in {path})")]
    NothingToUndo {
        name: String,
        zone: String,
        path: String,
    },
    #[error("{name} changed since switchyard's {action} at {at}: it is now [{now}], not [{expected}]; pass --force to restore the saved records anyway")]
    ChangedSince {
        name: String,
        action: String,
        at: String,
        now: String,
        expected: String,
    },
    #[error("--check-url {0}")]
    CheckUrl(String),
    #[error("--check-url {url} through {through}: {reason}; nothing was changed")]
    CheckFailed {
        url: String,
        through: String,
        reason: String,
    },
    #[error("{0}")]
    NameServer(String),
    #[error("registrar operation {id} for {domain} ended {status}: {message}")]
    Operation {
        id: String,
        domain: String,
        status: String,
        message: String,
    },
    #[error("cannot build the change: {0}")]
    Build(String),
    #[error("state file {0}: {1}")]
    State(PathBuf, String),
}

type Result<T> = std::result::Result<T, DnsError>;

/// A fully qualified, lower-case name with its final dot, with Route53's `\052` shown as `*`.
pub fn fqdn(name: &str) -> String {
    let mut n = name.trim().to_ascii_lowercase().replace("\\052", "*");
    if !n.ends_with('.') {
        n.push('.');
    }
    n
}

/// Parses `--set` values. Every weight is checked (0-255, integer) before anything is sent.
pub fn parse_sets(sets: &[String]) -> Result<BTreeMap<String, i64>> {
    let mut out = BTreeMap::new();
    for s in sets {
        let (id, w) = s
            .rsplit_once('=')
            .ok_or_else(|| DnsError::SetSyntax(s.clone()))?;
        let id = id.trim();
        if id.is_empty() {
            return Err(DnsError::SetSyntax(s.clone()));
        }
        let weight = w
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|w| (0..=255).contains(w))
            .ok_or_else(|| DnsError::Weight {
                id: id.to_string(),
                weight: w.to_string(),
            })?;
        if out.insert(id.to_string(), weight).is_some() {
            return Err(DnsError::Duplicate(id.to_string()));
        }
    }
    Ok(out)
}

/// One record set of the name, as shown.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RecordRow {
    #[serde(rename = "type")]
    pub rtype: String,
    pub set_identifier: Option<String>,
    pub weight: Option<i64>,
    /// Percent of the name's answers for this type (weights of all-zero sets are equal).
    pub share_percent: Option<f64>,
    pub ttl: Option<i64>,
    /// Values, or `alias:DNS_NAME`.
    pub target: Vec<String>,
    /// An alias's EvaluateTargetHealth.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evaluate_target_health: Option<bool>,
    /// `PRIMARY` or `SECONDARY` for a failover record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failover: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check_id: Option<String>,
    /// The health check's state, filled in by `status` (GetHealthCheckStatus).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<records::Health>,
}

fn rows(sets: &[ResourceRecordSet]) -> Vec<RecordRow> {
    let mut totals: BTreeMap<String, (i64, usize)> = BTreeMap::new();
    for s in sets {
        if let Some(w) = s.weight {
            let e = totals.entry(s.r#type.as_str().to_string()).or_default();
            e.0 += w;
            e.1 += 1;
        }
    }
    sets.iter()
        .map(|s| {
            let t = s.r#type.as_str().to_string();
            let share = s.weight.and_then(|w| {
                let (total, n) = totals.get(&t).copied()?;
                // Route53 answers equally when every weight of the type is 0.
                Some(if total == 0 {
                    100.0 / n as f64
                } else {
                    (w as f64) * 100.0 / total as f64
                })
            });
            RecordRow {
                rtype: t,
                set_identifier: s.set_identifier.clone(),
                weight: s.weight,
                share_percent: share.map(|x| (x * 10.0).round() / 10.0),
                ttl: s.ttl,
                target: match &s.alias_target {
                    Some(a) => vec![format!("alias:{}", a.dns_name)],
                    None => s
                        .resource_records
                        .as_deref()
                        .unwrap_or_default()
                        .iter()
                        .map(|r| r.value.clone())
                        .collect(),
                },
                evaluate_target_health: s.alias_target.as_ref().map(|a| a.evaluate_target_health),
                failover: s.failover.as_ref().map(|f| f.as_str().to_string()),
                health_check_id: s.health_check_id.clone(),
                health: None,
            }
        })
        .collect()
}

fn rows_table(rows: &[RecordRow]) -> String {
    // The failover and health columns only when some record has them, so a weighted name
    // reads as before.
    let routed = rows
        .iter()
        .any(|r| r.failover.is_some() || r.health_check_id.is_some());
    let mut head = vec!["type", "set id", "weight", "share"];
    if routed {
        head.extend(["failover", "health"]);
    }
    head.extend(["ttl", "target"]);
    let mut t = vec![head.into_iter().map(String::from).collect::<Vec<_>>()];
    let dash = || "-".to_string();
    for r in rows {
        let mut line = vec![
            r.rtype.clone(),
            r.set_identifier.clone().unwrap_or_else(dash),
            r.weight.map(|w| w.to_string()).unwrap_or_else(dash),
            r.share_percent
                .map(|s| format!("{s}%"))
                .unwrap_or_else(dash),
        ];
        if routed {
            line.push(r.failover.clone().unwrap_or_else(dash));
            line.push(match (&r.health, &r.health_check_id) {
                (Some(h), _) => h.short(),
                (None, Some(id)) => format!("check {id}"),
                (None, None) => dash(),
            });
        }
        line.push(r.ttl.map(|t| t.to_string()).unwrap_or_else(dash));
        let mut target = r.target.join(" ");
        if r.evaluate_target_health == Some(true) {
            target.push_str(" (evaluate target health)");
        }
        line.push(target);
        t.push(line);
    }
    table(&t)
}

/// What switchyard remembers of its last change to a name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LastChange {
    pub change_id: String,
    /// RFC 3339, as Route53 returned it.
    pub submitted_at: String,
    /// `shift`, `lower-ttl` or `delegate`.
    pub action: String,
    /// The largest TTL of the records before the change: how long resolvers may keep old answers.
    pub previous_ttl: i64,
    /// The largest TTL after it.
    pub ttl: i64,
    /// RFC 3339: when no resolver can hold an answer from before this change any more. Later
    /// than `submitted_at + previous_ttl` when an earlier change (a TTL lowered shortly before)
    /// still had answers cached with a longer TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visible_everywhere_at: Option<String>,
}

impl LastChange {
    /// When every resolver has seen this change (see `visible_everywhere_at`).
    pub fn horizon(&self) -> Option<OffsetDateTime> {
        let own = parse_rfc3339(&self.submitted_at)
            .map(|t| t + time::Duration::seconds(self.previous_ttl));
        let recorded = self
            .visible_everywhere_at
            .as_deref()
            .and_then(parse_rfc3339);
        match (own, recorded) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The state file: last change per `ZONE NAME`; the record sets a record change replaced
/// (for `undo`) per `ZONE NAME`; the record that was primary before switchyard's first
/// failover, per `ZONE NAME TYPE`; the last name-server change per registered domain.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct StateFile {
    changes: BTreeMap<String, LastChange>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) undo: BTreeMap<String, records::UndoRecord>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) failover_home: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) registrar: BTreeMap<String, registrar::NsChange>,
}

fn state_path(dir: Option<&PathBuf>) -> Option<PathBuf> {
    let dir = match dir {
        Some(d) => d.clone(),
        None => match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
            Some(x) => PathBuf::from(x).join("switchyard"),
            None => PathBuf::from(std::env::var_os("HOME")?).join(".local/state/switchyard"),
        },
    };
    Some(dir.join("dns-changes.json"))
}

/// The whole state file (empty when there is none, or no state directory can be found).
pub(crate) fn load_state(dir: Option<&PathBuf>) -> Result<StateFile> {
    match state_path(dir) {
        Some(p) => read_state_at(&p),
        None => Ok(StateFile::default()),
    }
}

/// Where the state file is, for messages.
pub(crate) fn state_file_name(dir: Option<&PathBuf>) -> String {
    state_path(dir)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "(no state directory: set --state-dir)".into())
}

/// Reads, changes and writes back the state file (write then rename). Without a state
/// directory (no HOME), nothing is kept.
pub(crate) fn update_state(dir: Option<&PathBuf>, f: impl FnOnce(&mut StateFile)) -> Result<()> {
    let Some(path) = state_path(dir) else {
        return Ok(());
    };
    let mut st = read_state_at(&path)?;
    f(&mut st);
    write_state(&path, &st)
}

fn read_state_at(path: &PathBuf) -> Result<StateFile> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            serde_json::from_str(&text).map_err(|e| DnsError::State(path.clone(), e.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StateFile::default()),
        Err(e) => Err(DnsError::State(path.clone(), e.to_string())),
    }
}

/// The last change switchyard recorded for `zone name`, if any.
fn last_change(dir: Option<&PathBuf>, zone: &str, name: &str) -> Result<Option<LastChange>> {
    match state_path(dir) {
        Some(p) => Ok(read_state_at(&p)?.changes.remove(&format!("{zone} {name}"))),
        None => Ok(None),
    }
}

fn record_change(dir: Option<&PathBuf>, zone: &str, name: &str, c: LastChange) -> Result<()> {
    update_state(dir, |st| {
        st.changes.insert(format!("{zone} {name}"), c);
    })
}

fn write_state(path: &PathBuf, st: &StateFile) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| DnsError::State(path.clone(), e.to_string()))?;
    }
    let text = serde_json::to_string_pretty(st)
        .map_err(|e| DnsError::State(path.clone(), e.to_string()))?;
    // Write then rename, so a crash never leaves half a file.
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(|e| DnsError::State(tmp.clone(), e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| DnsError::State(path.clone(), e.to_string()))
}

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

pub(crate) fn parse_rfc3339(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

pub(crate) fn smithy_to_time(t: &aws_smithy_types::DateTime) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(t.secs()).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

pub(crate) struct R53 {
    pub(crate) client: Client,
    pub(crate) zone: String,
}

impl R53 {
    /// Every record set named `name` (any type, any set identifier), in Route53's order.
    pub(crate) async fn records(&self, name: &str) -> Result<Vec<ResourceRecordSet>> {
        let mut out = Vec::new();
        let mut start: Option<(String, Option<RrType>, Option<String>)> =
            Some((name.to_string(), None, None));
        // Bounded paging: a name has at most a few hundred record sets.
        for _ in 0..50 {
            let Some((sname, stype, sid)) = start.take() else {
                break;
            };
            let resp = self
                .client
                .list_resource_record_sets()
                .hosted_zone_id(&self.zone)
                .start_record_name(sname)
                .set_start_record_type(stype)
                .set_start_record_identifier(sid)
                .max_items(300)
                .send()
                .await
                .map_err(|e| aws::classify("ListResourceRecordSets", e))?;
            let mut past = false;
            for s in resp.resource_record_sets {
                if fqdn(&s.name) == name {
                    out.push(s);
                } else if !out.is_empty() {
                    past = true;
                }
            }
            if resp.is_truncated && !past {
                if let Some(n) = resp.next_record_name {
                    if fqdn(&n) == name {
                        start = Some((n, resp.next_record_type, resp.next_record_identifier));
                    }
                }
            }
        }
        Ok(out)
    }

    async fn change(
        &self,
        changes: Vec<Change>,
        comment: &str,
    ) -> Result<(String, OffsetDateTime, ChangeStatus)> {
        let batch = ChangeBatch::builder()
            .set_changes(Some(changes))
            .comment(comment)
            .build()
            .map_err(|e| DnsError::Build(e.to_string()))?;
        let out = self
            .client
            .change_resource_record_sets()
            .hosted_zone_id(&self.zone)
            .change_batch(batch)
            .send()
            .await
            .map_err(|e| aws::classify("ChangeResourceRecordSets", e))?;
        let info = out.change_info.ok_or_else(|| {
            DnsError::Build("ChangeResourceRecordSets returned no ChangeInfo".into())
        })?;
        // Route53 answers `/change/C...`; the bare id is what people paste into GetChange.
        let id = info.id.trim_start_matches("/change/").to_string();
        Ok((id, smithy_to_time(&info.submitted_at), info.status))
    }

    async fn change_status(&self, id: &str) -> std::result::Result<ChangeStatus, AwsError> {
        let out = self
            .client
            .get_change()
            .id(id)
            .send()
            .await
            .map_err(|e| aws::classify("GetChange", e))?;
        Ok(out
            .change_info
            .map(|c| c.status)
            .unwrap_or_else(|| ChangeStatus::from("unknown")))
    }

    async fn wait(&self, id: &str, w: &WaitArgs) -> Result<Option<Duration>> {
        if !w.wait {
            return Ok(None);
        }
        let timeout = w.timeout.unwrap_or(Duration::from_secs(600));
        let interval = w.poll_interval.unwrap_or(Duration::from_secs(5));
        let what = format!("change {id} to be INSYNC");
        let took = aws::wait_until(&what, timeout, interval, || async {
            let s = self.change_status(id).await?;
            Ok((s == ChangeStatus::Insync, s.as_str().to_string()))
        })
        .await?;
        Ok(Some(took))
    }
}

fn upsert(set: ResourceRecordSet) -> Result<Change> {
    Change::builder()
        .action(ChangeAction::Upsert)
        .resource_record_set(set)
        .build()
        .map_err(|e| DnsError::Build(e.to_string()))
}

/// `status` output.
#[derive(Debug, Serialize)]
struct Status {
    zone: String,
    name: String,
    records: Vec<RecordRow>,
    last_change: Option<LastChange>,
    /// PENDING or INSYNC, from GetChange, for the last change.
    last_change_status: Option<String>,
    /// RFC 3339: submitted time + previous TTL; every resolver has the current answer after it.
    visible_everywhere_at: Option<String>,
    /// Seconds until then, 0 when already past.
    seconds_remaining: Option<i64>,
    /// With `--domain`: the domain's name servers at the registrar.
    #[serde(skip_serializing_if = "Option::is_none")]
    registrar: Option<registrar::NsOutcome>,
}

impl Status {
    fn human(&self) -> String {
        let mut out = format!("{} in zone {}\n", self.name, self.zone);
        out.push_str(&rows_table(&self.records));
        match (&self.last_change, &self.visible_everywhere_at) {
            (Some(c), Some(at)) => {
                out.push_str(&format!(
                    "last change by switchyard: {} {} submitted {} ({}), TTL before it {}s\n",
                    c.action,
                    c.change_id,
                    c.submitted_at,
                    self.last_change_status.as_deref().unwrap_or("?"),
                    c.previous_ttl
                ));
                match self.seconds_remaining {
                    Some(0) | None => {
                        out.push_str(&format!("every resolver has seen it (since {at})\n"))
                    }
                    Some(s) => out.push_str(&format!(
                        "every resolver will have seen it by {at} (in {})\n",
                        aws::human_duration(Duration::from_secs(s.unsigned_abs()))
                    )),
                }
            }
            _ => {
                let ttl = self.records.iter().filter_map(|r| r.ttl).max().unwrap_or(0);
                out.push_str(&format!(
                    "no change recorded by switchyard for this name; a change made now is seen everywhere {ttl}s after it is INSYNC\n"
                ));
            }
        }
        if let Some(r) = &self.registrar {
            out.push_str(&r.human());
        }
        out
    }
}

/// What a record change did (or, with `--dry-run`, would do): `shift`, `lower-ttl`,
/// `delegate`, and the operations of [`records`].
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub action: String,
    pub zone: String,
    pub name: String,
    pub before: Vec<RecordRow>,
    pub after: Vec<RecordRow>,
    /// The change batch, one `ACTION TYPE SET_ID` per change (`-` for no set identifier).
    pub batch: Vec<String>,
    pub dry_run: bool,
    /// The `--check-url` probes, one per address of the new target.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub check: Vec<check::Probe>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insync_after_secs: Option<f64>,
    /// When it is safe to act on the change everywhere (old answers expired), RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub visible_everywhere_at: Option<String>,
    pub notes: Vec<String>,
}

impl Outcome {
    /// The outcome as text for people.
    pub fn human(&self) -> String {
        let mut out = format!(
            "{} for {} in zone {}\nbefore:\n",
            self.action, self.name, self.zone
        );
        out.push_str(&rows_table(&self.before));
        out.push_str("after:\n");
        out.push_str(&rows_table(&self.after));
        if !self.batch.is_empty() {
            out.push_str(&format!("change batch: {}\n", self.batch.join(", ")));
        }
        for p in &self.check {
            out.push_str(&format!("check: {}\n", p.line()));
        }
        for n in &self.notes {
            out.push_str(&format!("note: {n}\n"));
        }
        if self.dry_run {
            out.push_str("dry run: nothing was changed\n");
            return out;
        }
        if self.change_id.is_none() {
            out.push_str("nothing to change\n");
            return out;
        }
        out.push_str(&format!(
            "submitted change {} ({})\n",
            self.change_id.as_deref().unwrap_or("?"),
            self.status.as_deref().unwrap_or("?")
        ));
        if let Some(s) = self.insync_after_secs {
            out.push_str(&format!(
                "INSYNC after {}\n",
                aws::human_duration(Duration::from_secs_f64(s))
            ));
        }
        if let Some(at) = &self.visible_everywhere_at {
            out.push_str(&format!(
                "every resolver will have the new records by {at}\n"
            ));
        }
        out
    }
}

/// Runs one `dns` action. Inputs (weights, TTL) are checked before any call; every change is
/// one change batch, which Route53 applies entirely or not at all.
pub async fn run(args: Args) -> Result<Output> {
    let json = args.aws.json;
    // The registrar's name servers need no zone or name.
    if let Command::Nameservers {
        domain,
        set,
        from_zone,
        parent_ttl,
        dry_run,
        wait,
    } = &args.cmd
    {
        let a = registrar::NameserversArgs {
            domain: domain.clone(),
            set: set.clone(),
            from_zone: from_zone.clone(),
            parent_ttl: *parent_ttl,
            dry_run: *dry_run,
            wait: wait.clone(),
            state_dir: args.state_dir.clone(),
        };
        a.validate()?;
        let conf = aws::load(&args.aws).await;
        let out =
            registrar::nameservers(&registrar::client(&conf), &Client::new(&conf), &a).await?;
        return Ok(Output::new(json, &out, registrar::NsOutcome::human));
    }
    if let (Command::Status { domain: Some(d) }, None) = (&args.cmd, &args.name) {
        let conf = aws::load(&args.aws).await;
        let out = registrar::show(&registrar::client(&conf), d, args.state_dir.as_ref()).await?;
        return Ok(Output::new(json, &out, registrar::NsOutcome::human));
    }
    let zone = args.zone.clone().ok_or(DnsError::NoZone)?;
    // Validate before any call.
    let sets = match &args.cmd {
        Command::Shift { sets, .. } => Some(parse_sets(sets)?),
        _ => None,
    };
    if let Command::LowerTtl { ttl, .. } | Command::Delegate { ttl, .. } = &args.cmd {
        if !(0..=2_147_483_647).contains(ttl) {
            return Err(DnsError::Ttl(*ttl));
        }
    }
    let name = match (&args.cmd, &args.name) {
        (Command::Delegate { subdomain, .. }, _) => fqdn(subdomain),
        (_, Some(n)) => fqdn(n),
        (_, None) => return Err(DnsError::NoName),
    };
    let conf = aws::load(&args.aws).await;
    let r53 = R53 {
        client: Client::new(&conf),
        zone: zone.clone(),
    };
    let state_dir = args.state_dir.clone();
    let opts = |dry_run: bool, wait: WaitArgs| records::ChangeOpts {
        dry_run,
        wait,
        state_dir: args.state_dir.clone(),
    };
    match args.cmd {
        Command::Status { domain } => {
            let recs = r53.records(&name).await?;
            let last = last_change(state_dir.as_ref(), &zone, &name)?;
            let mut shown = rows(&recs);
            for r in shown.iter_mut() {
                if let Some(id) = &r.health_check_id {
                    r.health = Some(records::health_or_unknown(&r53.client, id).await);
                }
            }
            let registrar = match domain {
                Some(d) => {
                    Some(registrar::show(&registrar::client(&conf), &d, state_dir.as_ref()).await?)
                }
                None => None,
            };
            let mut st = Status {
                zone,
                name,
                records: shown,
                last_change: None,
                last_change_status: None,
                visible_everywhere_at: None,
                seconds_remaining: None,
                registrar,
            };
            if let Some(c) = last {
                let status = r53.change_status(&c.change_id).await?;
                if let Some(at) = c.horizon() {
                    let left = (at - OffsetDateTime::now_utc()).whole_seconds().max(0);
                    // While PENDING, the change has not reached every Route53 server yet.
                    st.seconds_remaining = Some(if status == ChangeStatus::Insync {
                        left
                    } else {
                        left.max(1)
                    });
                    st.visible_everywhere_at = Some(rfc3339(at));
                }
                st.last_change_status = Some(status.as_str().to_string());
                st.last_change = Some(c);
            }
            Ok(Output::new(json, &st, Status::human))
        }
        Command::Switch {
            to,
            alias,
            rtype,
            ttl,
            check_url,
            dry_run,
            wait,
        } => {
            let a = records::SwitchArgs {
                zone,
                name,
                target: alias.target(to.as_deref()),
                rtype,
                ttl,
                check_url,
                opts: opts(dry_run, wait),
            };
            let out = records::switch(&r53.client, &a).await?;
            Ok(Output::new(json, &out, Outcome::human))
        }
        Command::Undo {
            force,
            dry_run,
            wait,
        } => {
            let a = records::UndoArgs {
                zone,
                name,
                force,
                opts: opts(dry_run, wait),
            };
            let out = records::undo(&r53.client, &a).await?;
            Ok(Output::new(json, &out, Outcome::human))
        }
        Command::ToWeighted {
            new,
            alias,
            rtype,
            old_id,
            new_id,
            ttl,
            check_url,
            dry_run,
            wait,
        } => {
            let a = records::ToWeightedArgs {
                zone,
                name,
                target: alias.target(new.as_deref()),
                rtype,
                old_id,
                new_id,
                ttl,
                check_url,
                opts: opts(dry_run, wait),
            };
            let out = records::to_weighted(&r53.client, &a).await?;
            Ok(Output::new(json, &out, Outcome::human))
        }
        Command::ToPlain {
            keep,
            rtype,
            dry_run,
            wait,
        } => {
            let a = records::ToPlainArgs {
                zone,
                name,
                keep,
                rtype,
                opts: opts(dry_run, wait),
            };
            let out = records::to_plain(&r53.client, &a).await?;
            Ok(Output::new(json, &out, Outcome::human))
        }
        Command::Failover {
            to,
            rtype,
            dry_run,
            wait,
        } => {
            let a = records::FailoverArgs {
                zone,
                name,
                to: records::FailoverTo::parse(&to),
                rtype,
                opts: opts(dry_run, wait),
            };
            let out = records::failover(&r53.client, &a).await?;
            Ok(Output::new(json, &out, Outcome::human))
        }
        // Answered above, before a zone was required.
        Command::Nameservers { .. } => Err(DnsError::NoDomain),
        Command::Shift { dry_run, wait, .. } => {
            let sets = sets.unwrap_or_default();
            let recs = r53.records(&name).await?;
            let known: Vec<String> = recs
                .iter()
                .filter_map(|r| r.set_identifier.clone())
                .collect();
            for id in sets.keys() {
                if !recs
                    .iter()
                    .any(|r| r.weight.is_some() && r.set_identifier.as_deref() == Some(id.as_str()))
                {
                    return Err(DnsError::UnknownSet {
                        name: name.clone(),
                        id: id.clone(),
                        zone: zone.clone(),
                        known: if known.is_empty() {
                            "none".into()
                        } else {
                            known.join(", ")
                        },
                    });
                }
            }
            let mut after = recs.clone();
            let mut changes = Vec::new();
            for r in after.iter_mut() {
                let Some(w) = r.set_identifier.as_ref().and_then(|id| sets.get(id)) else {
                    continue;
                };
                if r.weight != Some(*w) {
                    r.weight = Some(*w);
                    changes.push(upsert(r.clone())?);
                }
            }
            let mut notes = Vec::new();
            if after
                .iter()
                .filter(|r| r.weight.is_some())
                .all(|r| r.weight == Some(0))
            {
                notes.push(
                    "every weight is 0: Route53 then answers with every record equally".into(),
                );
            }
            let ttl = recs.iter().filter_map(|r| r.ttl).max().unwrap_or(0);
            let action = format!(
                "shift weights ({})",
                sets.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            finish(
                &r53,
                Pending {
                    action,
                    kind: "shift",
                    name,
                    before: rows(&recs),
                    after: rows(&after),
                    changes,
                    previous_ttl: ttl,
                    ttl,
                    notes,
                    dry_run,
                    wait,
                    state_dir,
                    undo: None,
                    check: Vec::new(),
                    state_edit: None,
                },
            )
            .await
            .map(|o| Output::new(json, &o, Outcome::human))
        }
        Command::LowerTtl { ttl, dry_run, wait } => {
            let recs = r53.records(&name).await?;
            let mut after = recs.clone();
            let mut changes = Vec::new();
            let mut notes = Vec::new();
            for r in after.iter_mut() {
                if r.alias_target.is_some() || r.ttl.is_none() {
                    notes.push(format!(
                        "{} {} is an alias record: it has no TTL of its own",
                        r.r#type.as_str(),
                        r.set_identifier.as_deref().unwrap_or("")
                    ));
                    continue;
                }
                if r.r#type == RrType::Soa || r.r#type == RrType::Ns {
                    continue;
                }
                if r.ttl != Some(ttl) {
                    r.ttl = Some(ttl);
                    changes.push(upsert(r.clone())?);
                }
            }
            if after.iter().all(|r| r.ttl.is_none()) {
                return Err(DnsError::NoRecords { name, zone });
            }
            let previous = recs.iter().filter_map(|r| r.ttl).max().unwrap_or(0);
            if ttl > previous {
                notes.push(format!("the TTL goes up ({previous}s -> {ttl}s)"));
            } else {
                notes.push(format!(
                    "wait {previous}s (the old TTL) after this change is INSYNC before shifting, so every resolver uses the {ttl}s TTL"
                ));
            }
            finish(
                &r53,
                Pending {
                    action: format!("set TTL to {ttl}s"),
                    kind: "lower-ttl",
                    name,
                    before: rows(&recs),
                    after: rows(&after),
                    changes,
                    previous_ttl: previous,
                    ttl,
                    notes,
                    dry_run,
                    wait,
                    state_dir,
                    undo: None,
                    check: Vec::new(),
                    state_edit: None,
                },
            )
            .await
            .map(|o| Output::new(json, &o, Outcome::human))
        }
        Command::Delegate {
            to_zone,
            ttl,
            dry_run,
            wait,
            ..
        } => {
            let child = r53
                .client
                .get_hosted_zone()
                .id(&to_zone)
                .send()
                .await
                .map_err(|e| aws::classify("GetHostedZone", e))?;
            let child_name = child
                .hosted_zone
                .as_ref()
                .map(|z| fqdn(&z.name))
                .unwrap_or_default();
            if child_name != name {
                return Err(DnsError::WrongZone {
                    zone: to_zone,
                    zone_name: child_name,
                    subdomain: name,
                });
            }
            let servers = child
                .delegation_set
                .map(|d| d.name_servers)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| DnsError::NoNameServers(to_zone.clone()))?;
            let parent = r53
                .client
                .get_hosted_zone()
                .id(&zone)
                .send()
                .await
                .map_err(|e| aws::classify("GetHostedZone", e))?;
            let parent_name = parent
                .hosted_zone
                .as_ref()
                .map(|z| fqdn(&z.name))
                .unwrap_or_default();
            if !name.ends_with(&format!(".{parent_name}")) {
                return Err(DnsError::NotBelow {
                    subdomain: name,
                    parent: zone,
                    parent_name,
                });
            }
            let recs = r53.records(&name).await?;
            let before_ns: Vec<ResourceRecordSet> = recs
                .into_iter()
                .filter(|r| r.r#type == RrType::Ns)
                .collect();
            let previous = before_ns.iter().filter_map(|r| r.ttl).max().unwrap_or(0);
            let ns = ResourceRecordSet::builder()
                .name(&name)
                .r#type(RrType::Ns)
                .ttl(ttl)
                .set_resource_records(Some(
                    servers
                        .iter()
                        .map(|s| ResourceRecord::builder().value(s).build())
                        .collect::<std::result::Result<Vec<_>, _>>()
                        .map_err(|e| DnsError::Build(e.to_string()))?,
                ))
                .build()
                .map_err(|e| DnsError::Build(e.to_string()))?;
            let changes = if before_ns.len() == 1 && before_ns[0] == ns {
                Vec::new()
            } else {
                vec![upsert(ns.clone())?]
            };
            finish(
                &r53,
                Pending {
                    action: format!("delegate {name} to zone {to_zone}"),
                    kind: "delegate",
                    name,
                    before: rows(&before_ns),
                    after: rows(&[ns]),
                    changes,
                    previous_ttl: previous,
                    ttl,
                    notes: Vec::new(),
                    dry_run,
                    wait,
                    state_dir,
                    undo: None,
                    check: Vec::new(),
                    state_edit: None,
                },
            )
            .await
            .map(|o| Output::new(json, &o, Outcome::human))
        }
    }
}

/// A change to the state file made together with saving the undo record.
pub(crate) type StateEdit = Box<dyn FnOnce(&mut StateFile) + Send>;

/// A change batch ready to send, with what to print and record about it.
pub(crate) struct Pending {
    pub(crate) action: String,
    pub(crate) kind: &'static str,
    pub(crate) name: String,
    pub(crate) before: Vec<RecordRow>,
    pub(crate) after: Vec<RecordRow>,
    pub(crate) changes: Vec<Change>,
    pub(crate) previous_ttl: i64,
    pub(crate) ttl: i64,
    pub(crate) notes: Vec<String>,
    pub(crate) dry_run: bool,
    pub(crate) wait: WaitArgs,
    pub(crate) state_dir: Option<PathBuf>,
    /// What `undo` needs to restore the record sets this change replaces.
    pub(crate) undo: Option<records::UndoRecord>,
    /// `--check-url` probes made before (all passed).
    pub(crate) check: Vec<check::Probe>,
    /// Run on the state file together with recording the change (before sending it).
    pub(crate) state_edit: Option<StateEdit>,
}

/// One change as `ACTION TYPE SET_ID`.
fn batch_line(c: &Change) -> String {
    let r = c.resource_record_set.as_ref();
    format!(
        "{} {} {}",
        c.action.as_str(),
        r.map(|r| r.r#type.as_str()).unwrap_or("?"),
        r.and_then(|r| r.set_identifier.as_deref()).unwrap_or("-")
    )
}

pub(crate) async fn finish(r53: &R53, p: Pending) -> Result<Outcome> {
    let mut out = Outcome {
        action: p.action,
        zone: r53.zone.clone(),
        name: p.name.clone(),
        before: p.before,
        after: p.after,
        batch: p.changes.iter().map(batch_line).collect(),
        dry_run: p.dry_run,
        check: p.check,
        change_id: None,
        status: None,
        insync_after_secs: None,
        visible_everywhere_at: None,
        notes: p.notes,
    };
    // Answers cached before an earlier change (typically the TTL lowered just before a shift)
    // may outlive this change's own TTL: carry that horizon forward and say so.
    let prior = last_change(p.state_dir.as_ref(), &r53.zone, &p.name)?
        .and_then(|c| c.horizon().map(|h| (c, h)))
        .filter(|(_, h)| *h > OffsetDateTime::now_utc());
    if let Some((c, h)) = &prior {
        out.notes.push(format!(
            "the earlier {} ({}) is not yet seen everywhere: resolvers may keep answers from before it until {}",
            c.action,
            c.change_id,
            rfc3339(*h)
        ));
    }
    if p.dry_run || p.changes.is_empty() {
        return Ok(out);
    }
    // What undo needs is written before the change is sent (a state file that cannot be
    // written stops here, with nothing changed); if the change then fails, the entry it
    // replaced is put back.
    let key = format!("{} {}", r53.zone, p.name);
    let mut replaced_undo = None;
    let mut edit = p.state_edit;
    if p.undo.is_some() || edit.is_some() {
        let undo = p.undo.clone();
        update_state(p.state_dir.as_ref(), |st| {
            if let Some(u) = undo {
                replaced_undo = Some(st.undo.insert(key.clone(), u));
            }
            if let Some(f) = edit.take() {
                f(st);
            }
        })?;
    }
    let comment = format!("switchyard dns {}", p.kind);
    let (id, submitted, status) = match r53.change(p.changes, &comment).await {
        Ok(x) => x,
        Err(e) => {
            if let Some(old) = replaced_undo {
                // Best effort: the change failed, so the saved records must stay the older ones.
                let _ = update_state(p.state_dir.as_ref(), |st| match old {
                    Some(o) => {
                        st.undo.insert(key.clone(), o);
                    }
                    None => {
                        st.undo.remove(&key);
                    }
                });
            }
            return Err(e);
        }
    };
    let own = submitted + time::Duration::seconds(p.previous_ttl);
    let horizon = prior.map_or(own, |(_, h)| h.max(own));
    // Recorded before waiting, so an interrupted wait still leaves `status` its facts.
    record_change(
        p.state_dir.as_ref(),
        &r53.zone,
        &p.name,
        LastChange {
            change_id: id.clone(),
            submitted_at: rfc3339(submitted),
            action: p.kind.to_string(),
            previous_ttl: p.previous_ttl,
            ttl: p.ttl,
            visible_everywhere_at: Some(rfc3339(horizon)),
        },
    )?;
    out.visible_everywhere_at = Some(rfc3339(horizon));
    out.status = Some(status.as_str().to_string());
    if let Some(took) = r53.wait(&id, &p.wait).await? {
        out.insync_after_secs = Some(took.as_secs_f64());
        out.status = Some(ChangeStatus::Insync.as_str().to_string());
    }
    out.change_id = Some(id);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_are_validated() {
        let ok = parse_sets(&["old=90".into(), "new=10".into()]).unwrap();
        assert_eq!(ok.get("old"), Some(&90));
        assert!(matches!(
            parse_sets(&["a=256".into()]),
            Err(DnsError::Weight { .. })
        ));
        assert!(matches!(
            parse_sets(&["a=-1".into()]),
            Err(DnsError::Weight { .. })
        ));
        assert!(matches!(
            parse_sets(&["a=1.5".into()]),
            Err(DnsError::Weight { .. })
        ));
        assert!(matches!(
            parse_sets(&["a".into()]),
            Err(DnsError::SetSyntax(_))
        ));
        assert!(matches!(
            parse_sets(&["a=1".into(), "a=2".into()]),
            Err(DnsError::Duplicate(_))
        ));
    }

    #[test]
    fn names() {
        assert_eq!(fqdn("API.Example.com"), "api.example.com.");
        assert_eq!(fqdn("\\052.example.com."), "*.example.com.");
    }

    #[test]
    fn shares() {
        let mk = |id: &str, w: i64| {
            ResourceRecordSet::builder()
                .name("a.example.com.")
                .r#type(RrType::A)
                .set_identifier(id)
                .weight(w)
                .ttl(60)
                .resource_records(
                    ResourceRecord::builder()
                        .value("192.0.2.1")
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap()
        };
        let r = rows(&[mk("old", 90), mk("new", 10)]);
        assert_eq!(r[0].share_percent, Some(90.0));
        assert_eq!(r[1].share_percent, Some(10.0));
        let r = rows(&[mk("old", 0), mk("new", 0)]);
        assert_eq!(r[0].share_percent, Some(50.0));
    }
}
