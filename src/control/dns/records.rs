//! Record changes beyond weights, each one change batch: `switch` a plain or alias record
//! (CNAME, A, AAAA) to a new target, `undo` the last of these changes, turn a plain record
//! into weighted ones and back (`to-weighted`, `to-plain`), and swap failover roles
//! (`failover`). Each saves the record sets it replaces, field by field, in the state file
//! before it sends the change, so `undo` restores exactly what was there.
//!
//! These are library functions: a plan step calls them with an SDK client and an args struct
//! and gets an [`Outcome`]; the command line only parses flags and prints.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use aws_sdk_route53::types::{
    AliasTarget, Change, ChangeAction, ResourceRecord, ResourceRecordSet,
    ResourceRecordSetFailover, RrType,
};
use aws_sdk_route53::Client;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{
    check, finish, fqdn, load_state, rfc3339, rows, state_file_name, update_state, DnsError,
    Outcome, Pending, RecordRow, R53,
};
use crate::control::aws::{self, WaitArgs};

type Result<T> = std::result::Result<T, DnsError>;

/// How long a resolver may cache an alias answer: an alias has no TTL of its own and answers
/// with its target's, which is 60 s for load balancers and CloudFront.
const ALIAS_TTL: i64 = 60;

/// How a change is made; shared by every operation here.
#[derive(Debug, Clone)]
pub struct ChangeOpts {
    /// Read, check and show the change batch; send nothing and write no state.
    pub dry_run: bool,
    /// `wait.wait`: poll GetChange until INSYNC (default timeout 10m, poll every 5s).
    pub wait: WaitArgs,
    /// Where changes are recorded. None: `$SWITCHYARD_STATE_DIR`, else
    /// `$XDG_STATE_HOME/switchyard`, else `~/.local/state/switchyard`.
    pub state_dir: Option<PathBuf>,
}

/// The new target of a record.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// Record values: IPv4 addresses (A), IPv6 addresses (AAAA) or one host name (CNAME).
    Values(Vec<String>),
    /// An alias to an AWS resource (load balancer, CloudFront): its DNS name and hosted zone
    /// id. `evaluate_target_health` None keeps the replaced alias record's setting, else false.
    Alias {
        dns_name: String,
        hosted_zone_id: String,
        evaluate_target_health: Option<bool>,
    },
}

impl Target {
    /// What `--check-url` connects to: the values, or the alias's DNS name.
    pub fn hosts(&self) -> Vec<String> {
        match self {
            Target::Values(v) => v.clone(),
            Target::Alias { dns_name, .. } => vec![dns_name.trim_end_matches('.').to_string()],
        }
    }

    /// The type the values imply (IPv4 -> A, IPv6 -> AAAA, a host name -> CNAME); None for an
    /// alias. Mixed or missing values are an error.
    fn implied(&self) -> Result<Option<RrType>> {
        let Target::Values(v) = self else {
            return Ok(None);
        };
        let kinds: BTreeSet<String> = v
            .iter()
            .map(|x| value_kind(x).as_str().to_string())
            .collect();
        match kinds.len() {
            0 => Err(DnsError::Target("no target given".into())),
            1 => Ok(v.first().map(|x| value_kind(x))),
            _ => Err(DnsError::Target(format!(
                "{}: mixes kinds of values (IPv4, IPv6, host names); one record holds one kind",
                v.join(",")
            ))),
        }
    }

    fn describe(&self) -> String {
        match self {
            Target::Values(v) => v.join(","),
            Target::Alias { dns_name, .. } => format!("alias:{dns_name}"),
        }
    }
}

fn value_kind(v: &str) -> RrType {
    if v.parse::<Ipv4Addr>().is_ok() {
        RrType::A
    } else if v.parse::<Ipv6Addr>().is_ok() {
        RrType::Aaaa
    } else {
        RrType::Cname
    }
}

/// `CNAME`, `A` or `AAAA` (any case); any other type is refused.
pub fn parse_type(s: &str) -> Result<RrType> {
    match s.trim().to_ascii_uppercase().as_str() {
        "A" => Ok(RrType::A),
        "AAAA" => Ok(RrType::Aaaa),
        "CNAME" => Ok(RrType::Cname),
        _ => Err(DnsError::Type(s.to_string())),
    }
}

fn valid_host(h: &str) -> bool {
    let h = h.strip_suffix('.').unwrap_or(h);
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// Checks that `values` fit a record of type `t`.
fn check_values(t: &RrType, values: &[String]) -> Result<()> {
    if values.is_empty() {
        return Err(DnsError::Target("no target given".into()));
    }
    for v in values {
        let ok = match t {
            RrType::A => v.parse::<Ipv4Addr>().is_ok(),
            RrType::Aaaa => v.parse::<Ipv6Addr>().is_ok(),
            RrType::Cname => value_kind(v) == RrType::Cname && valid_host(v),
            _ => false,
        };
        if !ok {
            let holds = match t {
                RrType::A => "an IPv4 address",
                RrType::Aaaa => "an IPv6 address",
                _ => "one host name",
            };
            return Err(DnsError::Target(format!(
                "{v:?} does not fit the {} record, which holds {holds}",
                t.as_str()
            )));
        }
    }
    if *t == RrType::Cname && values.len() > 1 {
        return Err(DnsError::Target(format!(
            "{}: a CNAME record holds one host name",
            values.join(",")
        )));
    }
    Ok(())
}

fn check_ttl(ttl: Option<i64>, target: &Target) -> Result<()> {
    match (ttl, target) {
        (Some(_), Target::Alias { .. }) => Err(DnsError::AliasTtl),
        (Some(t), _) if !(0..=2_147_483_647).contains(&t) => Err(DnsError::Ttl(t)),
        _ => Ok(()),
    }
}

/// An alias target as saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedAlias {
    pub hosted_zone_id: String,
    pub dns_name: String,
    pub evaluate_target_health: bool,
}

/// One record set as saved for `undo`: every field of a plain, alias, weighted or failover
/// record, so restoring it sends back exactly what Route53 listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedSet {
    pub name: String,
    #[serde(rename = "type")]
    pub rtype: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_identifier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
    /// `PRIMARY` or `SECONDARY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<SavedAlias>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_id: Option<String>,
}

impl SavedSet {
    /// The record set as saved; one that uses a field switchyard cannot restore (latency,
    /// geolocation, multivalue, IP-based or geoproximity routing, traffic policies) is refused.
    pub fn from_sdk(r: &ResourceRecordSet) -> Result<SavedSet> {
        let unsupported = [
            (r.region.is_some(), "Region (latency routing)"),
            (r.geo_location.is_some(), "GeoLocation"),
            (r.multi_value_answer.is_some(), "MultiValueAnswer"),
            (r.traffic_policy_instance_id.is_some(), "a traffic policy"),
            (r.cidr_routing_config.is_some(), "CidrRoutingConfig"),
            (r.geo_proximity_location.is_some(), "GeoProximityLocation"),
        ];
        if let Some((_, field)) = unsupported.iter().find(|(set, _)| *set) {
            return Err(DnsError::Unsupported {
                name: r.name.clone(),
                what: describe_sdk(r),
                field: field.to_string(),
            });
        }
        Ok(SavedSet::copy_of(r))
    }

    /// The fields switchyard keeps, copied without checking what it cannot restore.
    fn copy_of(r: &ResourceRecordSet) -> SavedSet {
        SavedSet {
            name: r.name.clone(),
            rtype: r.r#type.as_str().to_string(),
            set_identifier: r.set_identifier.clone(),
            weight: r.weight,
            failover: r.failover.as_ref().map(|f| f.as_str().to_string()),
            ttl: r.ttl,
            values: r
                .resource_records
                .as_deref()
                .unwrap_or_default()
                .iter()
                .map(|v| v.value.clone())
                .collect(),
            alias: r.alias_target.as_ref().map(|a| SavedAlias {
                hosted_zone_id: a.hosted_zone_id.clone(),
                dns_name: a.dns_name.clone(),
                evaluate_target_health: a.evaluate_target_health,
            }),
            health_check_id: r.health_check_id.clone(),
        }
    }

    /// The SDK record set to send.
    pub fn to_sdk(&self) -> Result<ResourceRecordSet> {
        let build = |e: aws_sdk_route53::error::BuildError| DnsError::Build(e.to_string());
        let mut b = ResourceRecordSet::builder()
            .name(&self.name)
            .r#type(RrType::from(self.rtype.as_str()))
            .set_set_identifier(self.set_identifier.clone())
            .set_weight(self.weight)
            .set_failover(
                self.failover
                    .as_deref()
                    .map(ResourceRecordSetFailover::from),
            )
            .set_ttl(self.ttl)
            .set_health_check_id(self.health_check_id.clone());
        if !self.values.is_empty() {
            b = b.set_resource_records(Some(
                self.values
                    .iter()
                    .map(|v| ResourceRecord::builder().value(v).build())
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(build)?,
            ));
        }
        if let Some(a) = &self.alias {
            b = b.alias_target(
                AliasTarget::builder()
                    .hosted_zone_id(&a.hosted_zone_id)
                    .dns_name(&a.dns_name)
                    .evaluate_target_health(a.evaluate_target_health)
                    .build()
                    .map_err(build)?,
            );
        }
        b.build().map_err(build)
    }

    /// What identifies the record set in its name: type and set identifier.
    fn key(&self) -> (String, Option<String>) {
        (self.rtype.clone(), self.set_identifier.clone())
    }

    /// For comparing what was saved with what is listed now: name and alias name as FQDNs,
    /// values in order.
    fn normalized(&self) -> SavedSet {
        let mut s = self.clone();
        s.name = fqdn(&s.name);
        s.values.sort();
        if let Some(a) = s.alias.as_mut() {
            a.dns_name = fqdn(&a.dns_name);
            a.hosted_zone_id = a.hosted_zone_id.trim_start_matches("/hostedzone/").into();
        }
        s
    }

    fn describe(&self) -> String {
        let target = match &self.alias {
            Some(a) => format!("alias:{}", a.dns_name),
            None => self.values.join(","),
        };
        let mut d = self.rtype.clone();
        if let Some(id) = &self.set_identifier {
            d.push_str(&format!(" {id}"));
        }
        if let Some(w) = self.weight {
            d.push_str(&format!(" weight {w}"));
        }
        if let Some(f) = &self.failover {
            d.push_str(&format!(" {f}"));
        }
        format!("{d} {target}")
    }

    /// How long resolvers may cache an answer from it.
    fn cache_ttl(&self) -> i64 {
        self.ttl.unwrap_or(ALIAS_TTL)
    }
}

fn describe_sdk(r: &ResourceRecordSet) -> String {
    SavedSet {
        health_check_id: None,
        ..SavedSet::copy_of(r)
    }
    .describe()
}

fn same_sets(a: &[SavedSet], b: &[SavedSet]) -> bool {
    let norm = |v: &[SavedSet]| {
        let mut n: Vec<SavedSet> = v.iter().map(SavedSet::normalized).collect();
        n.sort_by_key(|s| s.key());
        n
    };
    norm(a) == norm(b)
}

fn list(sets: &[SavedSet]) -> String {
    if sets.is_empty() {
        return "nothing".into();
    }
    sets.iter()
        .map(SavedSet::describe)
        .collect::<Vec<_>>()
        .join("; ")
}

/// What `undo` restores for one name: the record sets a change replaced (`before`, empty
/// when it created the name) and the ones it made (`after`, which must still be there).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UndoRecord {
    /// `switch`, `to-weighted`, `to-plain` or `failover`.
    pub action: String,
    /// RFC 3339, when the change was about to be sent.
    pub saved_at: String,
    pub before: Vec<SavedSet>,
    pub after: Vec<SavedSet>,
}

fn change(action: ChangeAction, set: ResourceRecordSet) -> Result<Change> {
    Change::builder()
        .action(action)
        .resource_record_set(set)
        .build()
        .map_err(|e| DnsError::Build(e.to_string()))
}

fn is_address(r: &ResourceRecordSet) -> bool {
    matches!(r.r#type, RrType::A | RrType::Aaaa | RrType::Cname)
}

fn ids(sets: &[&ResourceRecordSet], pick: impl Fn(&ResourceRecordSet) -> bool) -> String {
    sets.iter()
        .filter(|r| pick(r))
        .map(|r| r.set_identifier.clone().unwrap_or_else(|| "-".into()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Refuses a name whose address records use a routing policy: weighted ones belong to
/// `shift` / `to-plain`, failover ones to `failover`, the rest are not changed here.
fn refuse_routed(name: &str, sets: &[&ResourceRecordSet]) -> Result<()> {
    if sets.iter().any(|r| r.weight.is_some()) {
        return Err(DnsError::Weighted {
            name: name.into(),
            ids: ids(sets, |r| r.weight.is_some()),
        });
    }
    if sets.iter().any(|r| r.failover.is_some()) {
        return Err(DnsError::FailoverRouted {
            name: name.into(),
            ids: ids(sets, |r| r.failover.is_some()),
        });
    }
    if let Some(r) = sets.iter().find(|r| r.set_identifier.is_some()) {
        let policy = if r.region.is_some() {
            "latency"
        } else if r.geo_location.is_some() {
            "geolocation"
        } else if r.multi_value_answer.is_some() {
            "multivalue answer"
        } else if r.cidr_routing_config.is_some() {
            "IP-based"
        } else if r.geo_proximity_location.is_some() {
            "geoproximity"
        } else {
            "routed"
        };
        return Err(DnsError::Routed {
            name: name.into(),
            policy: policy.into(),
            ids: ids(sets, |r| r.set_identifier.is_some()),
        });
    }
    Ok(())
}

fn types_of(sets: &[&ResourceRecordSet]) -> BTreeSet<String> {
    sets.iter().map(|r| r.r#type.as_str().to_string()).collect()
}

/// The records of `name` that `keep` selects (of type `given`, when given), all of one type:
/// none is [`DnsError::Nothing`] saying `none`, several types [`DnsError::Ambiguous`].
fn of_one_type<'a>(
    recs: &'a [ResourceRecordSet],
    given: Option<&RrType>,
    keep: impl Fn(&ResourceRecordSet) -> bool,
    none: &str,
    name: &str,
    zone: &str,
) -> Result<Vec<&'a ResourceRecordSet>> {
    let sets: Vec<&ResourceRecordSet> = recs
        .iter()
        .filter(|r| keep(r) && given.is_none_or(|t| r.r#type == *t))
        .collect();
    if sets.is_empty() {
        return Err(DnsError::Nothing {
            name: name.to_string(),
            zone: zone.to_string(),
            what: none.into(),
        });
    }
    let types = types_of(&sets);
    if types.len() > 1 {
        return Err(DnsError::Ambiguous {
            name: name.to_string(),
            types: types.into_iter().collect::<Vec<_>>().join(", "),
        });
    }
    Ok(sets)
}

/// The type `switch` writes: `--type`, else what the target and the name's records say.
/// A name with A and AAAA records cannot be switched to an alias or a host name without
/// `--type`: which one is meant is not for switchyard to guess.
fn decide_type(
    name: &str,
    sets: &[&ResourceRecordSet],
    target: &Target,
    given: Option<RrType>,
) -> Result<RrType> {
    if let Some(t) = given {
        return Ok(t);
    }
    let types = types_of(sets);
    let both = types.contains("A") && types.contains("AAAA");
    let ambiguous = || DnsError::Ambiguous {
        name: name.into(),
        types: types.iter().cloned().collect::<Vec<_>>().join(", "),
    };
    match target.implied()? {
        Some(RrType::Cname) if both => Err(ambiguous()),
        Some(t) => Ok(t),
        None if both => Err(ambiguous()),
        None if types.contains("AAAA") => Ok(RrType::Aaaa),
        None => Ok(RrType::A),
    }
}

/// The record set `switch` and `to-weighted` write for `target`.
fn build(
    name: &str,
    rtype: &RrType,
    target: &Target,
    ttl: Option<i64>,
    replaced: Option<&ResourceRecordSet>,
) -> Result<SavedSet> {
    let mut s = SavedSet {
        name: name.to_string(),
        rtype: rtype.as_str().to_string(),
        set_identifier: None,
        weight: None,
        failover: None,
        ttl: None,
        values: Vec::new(),
        alias: None,
        health_check_id: replaced.and_then(|r| r.health_check_id.clone()),
    };
    match target {
        Target::Values(v) => {
            s.ttl = Some(ttl.or(replaced.and_then(|r| r.ttl)).unwrap_or(300));
            s.values = v.clone();
        }
        Target::Alias {
            dns_name,
            hosted_zone_id,
            evaluate_target_health,
        } => {
            s.alias = Some(SavedAlias {
                hosted_zone_id: hosted_zone_id.clone(),
                dns_name: dns_name.clone(),
                evaluate_target_health: evaluate_target_health
                    .or(replaced
                        .and_then(|r| r.alias_target.as_ref())
                        .map(|a| a.evaluate_target_health))
                    .unwrap_or(false),
            });
        }
    }
    Ok(s)
}

fn now() -> String {
    rfc3339(OffsetDateTime::now_utc())
}

fn sdk_rows(sets: &[SavedSet]) -> Result<Vec<RecordRow>> {
    let sdk = sets
        .iter()
        .map(SavedSet::to_sdk)
        .collect::<Result<Vec<_>>>()?;
    Ok(rows(&sdk))
}

/// What `switch` needs.
#[derive(Debug, Clone)]
pub struct SwitchArgs {
    pub zone: String,
    pub name: String,
    pub target: Target,
    /// `CNAME`, `A` or `AAAA`; None: decided from the name's record and the target.
    pub rtype: Option<String>,
    /// None: the replaced record's TTL, else 300.
    pub ttl: Option<i64>,
    /// GET this through the new target before changing anything; 2xx/3xx or no change.
    pub check_url: Option<String>,
    pub opts: ChangeOpts,
}

/// Points the name's plain or alias record at `target` in one change batch (an UPSERT; plus a
/// DELETE of a CNAME replaced by an A/AAAA record or the reverse), after saving the replaced
/// record sets for [`undo`]. Refused, before any change, for weighted, failover or otherwise
/// routed names, for a name with A and AAAA records when the type is not given, and when
/// `check_url` does not answer 2xx/3xx through the new target. Nothing to change when the
/// record already is the target.
pub async fn switch(client: &Client, a: &SwitchArgs) -> Result<Outcome> {
    let name = fqdn(&a.name);
    // Inputs first, before any call.
    let given = a.rtype.as_deref().map(parse_type).transpose()?;
    a.target.implied()?;
    if let (Some(t), Target::Values(v)) = (&given, &a.target) {
        check_values(t, v)?;
    }
    check_ttl(a.ttl, &a.target)?;
    if let Some(u) = &a.check_url {
        check::parse(u)?;
    }
    let r53 = R53 {
        client: client.clone(),
        zone: a.zone.clone(),
    };
    let recs = r53.records(&name).await?;
    let addr: Vec<&ResourceRecordSet> = recs.iter().filter(|r| is_address(r)).collect();
    refuse_routed(&name, &addr)?;
    let wanted = decide_type(&name, &addr, &a.target, given)?;
    if let Target::Values(v) = &a.target {
        check_values(&wanted, v)?;
    }
    let same = addr.iter().copied().find(|r| r.r#type == wanted);
    // A CNAME cannot share its name with A/AAAA records: one replaces the others.
    let conflicting: Vec<&ResourceRecordSet> = addr
        .iter()
        .copied()
        .filter(|r| r.r#type != wanted && (wanted == RrType::Cname || r.r#type == RrType::Cname))
        .collect();
    let new = build(&name, &wanted, &a.target, a.ttl, same)?;
    let mut notes = Vec::new();
    for r in addr
        .iter()
        .filter(|r| r.r#type != wanted && !conflicting.iter().any(|c| std::ptr::eq(*c, **r)))
    {
        notes.push(format!(
            "the {} record still points at {}: switch it too with --type {}",
            r.r#type.as_str(),
            describe_sdk(r),
            r.r#type.as_str()
        ));
    }
    for c in &conflicting {
        notes.push(format!(
            "the {} record ({}) is replaced by the {} record: a CNAME cannot share its name",
            c.r#type.as_str(),
            describe_sdk(c),
            wanted.as_str()
        ));
    }
    if let (Some(s), Target::Values(_)) = (same, &a.target) {
        if s.alias_target.is_some() {
            notes.push(format!(
                "the {} record was an alias; it becomes a plain record (use --alias and --alias-zone to keep an alias)",
                wanted.as_str()
            ));
        }
    }
    let replaced: Vec<&ResourceRecordSet> = same.into_iter().chain(conflicting.clone()).collect();
    let before: Vec<SavedSet> = replaced
        .iter()
        .map(|r| SavedSet::from_sdk(r))
        .collect::<Result<_>>()?;
    let unchanged =
        conflicting.is_empty() && before.len() == 1 && before[0].normalized() == new.normalized();
    let mut changes = Vec::new();
    if !unchanged {
        for c in &conflicting {
            changes.push(change(ChangeAction::Delete, (*c).clone())?);
        }
        changes.push(change(ChangeAction::Upsert, new.to_sdk()?)?);
    }
    let probes = match (&a.check_url, unchanged) {
        (Some(u), false) => check::run(u, &a.target.hosts()).await?,
        _ => Vec::new(),
    };
    let previous_ttl = before.iter().map(SavedSet::cache_ttl).max().unwrap_or(0);
    if before.iter().any(|s| s.alias.is_some()) {
        notes.push(format!(
            "an alias answer is cached for its target's TTL; {ALIAS_TTL}s (load balancers, CloudFront) is assumed"
        ));
    }
    finish(
        &r53,
        Pending {
            action: format!("switch {} to {}", wanted.as_str(), a.target.describe()),
            kind: "switch",
            name,
            before: rows(&replaced.into_iter().cloned().collect::<Vec<_>>()),
            after: sdk_rows(std::slice::from_ref(&new))?,
            changes,
            previous_ttl,
            ttl: new.cache_ttl(),
            notes,
            dry_run: a.opts.dry_run,
            wait: a.opts.wait.clone(),
            state_dir: a.opts.state_dir.clone(),
            undo: Some(UndoRecord {
                action: "switch".into(),
                saved_at: now(),
                before,
                after: vec![new],
            }),
            check: probes,
            state_edit: None,
        },
    )
    .await
}

/// What `undo` needs.
#[derive(Debug, Clone)]
pub struct UndoArgs {
    pub zone: String,
    pub name: String,
    /// Restore even when the name's records are no longer what the change made.
    pub force: bool,
    pub opts: ChangeOpts,
}

/// Restores the record sets saved by the last `switch`, `to-weighted`, `to-plain` or
/// `failover` of the name, in one change batch: DELETEs of the record sets that change made,
/// then UPSERTs (same type and set identifier) or CREATEs of the saved ones. Refused when the
/// name changed since (someone else's change would be lost) unless `force`. The saved entry
/// is removed once the batch is accepted.
pub async fn undo(client: &Client, a: &UndoArgs) -> Result<Outcome> {
    let name = fqdn(&a.name);
    let key = format!("{} {}", a.zone, name);
    let state = load_state(a.opts.state_dir.as_ref())?;
    let Some(rec) = state.undo.get(&key).cloned() else {
        return Err(DnsError::NothingToUndo {
            name,
            zone: a.zone.clone(),
            path: state_file_name(a.opts.state_dir.as_ref()),
        });
    };
    let r53 = R53 {
        client: client.clone(),
        zone: a.zone.clone(),
    };
    let recs = r53.records(&name).await?;
    let types: BTreeSet<&str> = rec
        .before
        .iter()
        .chain(&rec.after)
        .map(|s| s.rtype.as_str())
        .collect();
    let current: Vec<&ResourceRecordSet> = recs
        .iter()
        .filter(|r| types.contains(r.r#type.as_str()))
        .collect();
    let current_saved: Vec<SavedSet> = current
        .iter()
        .map(|r| SavedSet::from_sdk(r))
        .collect::<Result<_>>()?;
    let mut notes = Vec::new();
    if !same_sets(&current_saved, &rec.after) {
        if !a.force {
            return Err(DnsError::ChangedSince {
                name,
                action: rec.action,
                at: rec.saved_at,
                now: list(&current_saved),
                expected: list(&rec.after),
            });
        }
        notes.push(format!(
            "--force: the records changed since the {} ({}) are replaced",
            rec.action,
            list(&current_saved)
        ));
    }
    let matching = |s: &SavedSet, others: &[SavedSet]| -> Option<usize> {
        others
            .iter()
            .position(|o| o.key() == s.key() && o.failover == s.failover)
    };
    let mut changes = Vec::new();
    for (sdk, cur) in current.iter().zip(&current_saved) {
        if matching(cur, &rec.before).is_none() {
            changes.push(change(ChangeAction::Delete, (*sdk).clone())?);
        }
    }
    for b in &rec.before {
        match matching(b, &current_saved) {
            Some(i) if current_saved[i].normalized() == b.normalized() => {}
            Some(_) => changes.push(change(ChangeAction::Upsert, b.to_sdk()?)?),
            None => changes.push(change(ChangeAction::Create, b.to_sdk()?)?),
        }
    }
    let previous_ttl = current_saved
        .iter()
        .map(SavedSet::cache_ttl)
        .max()
        .unwrap_or(0);
    let ttl = rec
        .before
        .iter()
        .map(SavedSet::cache_ttl)
        .max()
        .unwrap_or(0);
    let dry_run = a.opts.dry_run;
    let out = finish(
        &r53,
        Pending {
            action: format!("undo the {} of {}", rec.action, rec.saved_at),
            kind: "undo",
            name: name.clone(),
            before: rows(&current.into_iter().cloned().collect::<Vec<_>>()),
            after: sdk_rows(&rec.before)?,
            changes,
            previous_ttl,
            ttl,
            notes,
            dry_run,
            wait: a.opts.wait.clone(),
            state_dir: a.opts.state_dir.clone(),
            undo: None,
            check: Vec::new(),
            state_edit: None,
        },
    )
    .await?;
    // Accepted, or nothing was left to restore: the saved entry is used up.
    if !dry_run {
        let failover = rec.action == "failover";
        let prefix = format!("{key} ");
        update_state(a.opts.state_dir.as_ref(), |st| {
            st.undo.remove(&key);
            if failover {
                // The roles are back to what they were before switchyard's failover.
                st.failover_home.retain(|k, _| !k.starts_with(&prefix));
            }
        })?;
    }
    Ok(out)
}

/// What `to-weighted` needs.
#[derive(Debug, Clone)]
pub struct ToWeightedArgs {
    pub zone: String,
    pub name: String,
    /// The new target (weight 0); it must fit the plain record's type.
    pub target: Target,
    /// Which record, when the name has A and AAAA records.
    pub rtype: Option<String>,
    /// Set identifier of the record keeping the old target (weight 100). CLI default `old`.
    pub old_id: String,
    /// Set identifier of the new target's record (weight 0). CLI default `new`.
    pub new_id: String,
    /// TTL of the new record. None: the old record's, or 60 when the old one is an alias.
    pub ttl: Option<i64>,
    pub check_url: Option<String>,
    pub opts: ChangeOpts,
}

/// Turns the name's plain record into two weighted records of the same type, `old_id` with
/// the old target at weight 100 and `new_id` with `target` at 0, in one change batch (DELETE
/// of the plain record and both CREATEs together, which Route53 applies atomically, so the
/// name always resolves). The plain record is saved for [`undo`].
pub async fn to_weighted(client: &Client, a: &ToWeightedArgs) -> Result<Outcome> {
    let name = fqdn(&a.name);
    let given = a.rtype.as_deref().map(parse_type).transpose()?;
    a.target.implied()?;
    check_ttl(a.ttl, &a.target)?;
    let (old_id, new_id) = (a.old_id.trim(), a.new_id.trim());
    if old_id.is_empty() || new_id.is_empty() || old_id == new_id || old_id.len() > 128 {
        return Err(DnsError::Target(format!(
            "--old-id {old_id:?} / --new-id {new_id:?}: two different set identifiers of 1 to 128 characters"
        )));
    }
    if let Some(u) = &a.check_url {
        check::parse(u)?;
    }
    let r53 = R53 {
        client: client.clone(),
        zone: a.zone.clone(),
    };
    let recs = r53.records(&name).await?;
    let addr: Vec<&ResourceRecordSet> = recs.iter().filter(|r| is_address(r)).collect();
    refuse_routed(&name, &addr)?;
    let plain = match (&given, addr.as_slice()) {
        (Some(t), _) => addr.iter().copied().find(|r| r.r#type == *t),
        (None, [one]) => Some(*one),
        (None, []) => None,
        (None, _) => {
            return Err(DnsError::Ambiguous {
                name,
                types: types_of(&addr).into_iter().collect::<Vec<_>>().join(", "),
            })
        }
    };
    let Some(plain) = plain else {
        return Err(DnsError::Nothing {
            name,
            zone: a.zone.clone(),
            what: format!(
                "no plain {} record to turn into weighted ones",
                given.as_ref().map_or("CNAME, A or AAAA", |t| t.as_str())
            ),
        });
    };
    let t = plain.r#type.clone();
    if let Target::Values(v) = &a.target {
        check_values(&t, v).map_err(|e| {
            DnsError::Target(format!(
                "{e} (the weighted records of a name share one type, and {name} is {})",
                t.as_str()
            ))
        })?;
    }
    let saved_plain = SavedSet::from_sdk(plain)?;
    let mut old = saved_plain.clone();
    old.set_identifier = Some(old_id.to_string());
    old.weight = Some(100);
    // An alias has no TTL; its answers live as long as its target's (60 s for ALBs).
    let ttl = a.ttl.or(plain.ttl).or(Some(ALIAS_TTL));
    let mut new = build(&name, &t, &a.target, ttl, None)?;
    new.set_identifier = Some(new_id.to_string());
    new.weight = Some(0);
    if let Target::Alias {
        evaluate_target_health: None,
        ..
    } = &a.target
    {
        if let (Some(na), Some(oa)) = (new.alias.as_mut(), plain.alias_target.as_ref()) {
            na.evaluate_target_health = oa.evaluate_target_health;
        }
    }
    let changes = vec![
        change(ChangeAction::Delete, plain.clone())?,
        change(ChangeAction::Create, old.to_sdk()?)?,
        change(ChangeAction::Create, new.to_sdk()?)?,
    ];
    let probes = match &a.check_url {
        Some(u) => check::run(u, &a.target.hosts()).await?,
        None => Vec::new(),
    };
    let notes = vec![format!(
        "all answers stay with {old_id} (weight 100); move them with `switchyard dns shift --set {old_id}=90 --set {new_id}=10`"
    )];
    finish(
        &r53,
        Pending {
            action: format!(
                "turn the {} record into weighted records {old_id}=100, {new_id}=0 ({})",
                t.as_str(),
                a.target.describe()
            ),
            kind: "to-weighted",
            name,
            before: rows(std::slice::from_ref(plain)),
            after: sdk_rows(&[old.clone(), new.clone()])?,
            changes,
            previous_ttl: saved_plain.cache_ttl(),
            ttl: saved_plain.cache_ttl().max(new.cache_ttl()),
            notes,
            dry_run: a.opts.dry_run,
            wait: a.opts.wait.clone(),
            state_dir: a.opts.state_dir.clone(),
            undo: Some(UndoRecord {
                action: "to-weighted".into(),
                saved_at: now(),
                before: vec![saved_plain],
                after: vec![old, new],
            }),
            check: probes,
            state_edit: None,
        },
    )
    .await
}

/// What `to-plain` needs.
#[derive(Debug, Clone)]
pub struct ToPlainArgs {
    pub zone: String,
    pub name: String,
    /// Set identifier whose target stays; None: the one with the largest weight.
    pub keep: Option<String>,
    /// Which weighted records, when the name has them for several types.
    pub rtype: Option<String>,
    pub opts: ChangeOpts,
}

/// Turns the name's weighted records (of one type) into one plain record with the target of
/// `keep` (default: the largest weight; a tie is refused), in one change batch: DELETE of
/// every weighted record and CREATE of the plain one. The weighted records are saved for
/// [`undo`]. A health check of the kept record is dropped (a plain record is not routed).
pub async fn to_plain(client: &Client, a: &ToPlainArgs) -> Result<Outcome> {
    let name = fqdn(&a.name);
    let given = a.rtype.as_deref().map(parse_type).transpose()?;
    let r53 = R53 {
        client: client.clone(),
        zone: a.zone.clone(),
    };
    let recs = r53.records(&name).await?;
    let weighted = of_one_type(
        &recs,
        given.as_ref(),
        |r| r.weight.is_some(),
        "no weighted records",
        &name,
        &a.zone,
    )?;
    let kept = match &a.keep {
        Some(id) => weighted
            .iter()
            .copied()
            .find(|r| r.set_identifier.as_deref() == Some(id.as_str()))
            .ok_or_else(|| DnsError::Refused {
                name: name.clone(),
                msg: format!(
                    "no weighted record with set identifier {id:?} (it has: {})",
                    ids(&weighted, |_| true)
                ),
            })?,
        None => {
            let top = weighted.iter().filter_map(|r| r.weight).max().unwrap_or(0);
            let tops: Vec<&ResourceRecordSet> = weighted
                .iter()
                .copied()
                .filter(|r| r.weight == Some(top))
                .collect();
            if tops.len() > 1 {
                return Err(DnsError::Refused {
                    name,
                    msg: format!(
                        "the largest weight, {top}, is shared by {}: pass --keep ID to say whose target stays",
                        ids(&tops, |_| true)
                    ),
                });
            }
            tops[0]
        }
    };
    let total: i64 = weighted.iter().filter_map(|r| r.weight).sum();
    let mut notes = Vec::new();
    for r in weighted.iter().filter(|r| !std::ptr::eq(**r, kept)) {
        let w = r.weight.unwrap_or(0);
        if w > 0 {
            notes.push(format!(
                "{} had weight {w} ({:.1}% of answers): those answers now go to {}'s target",
                r.set_identifier.as_deref().unwrap_or("-"),
                w as f64 * 100.0 / total.max(1) as f64,
                kept.set_identifier.as_deref().unwrap_or("-")
            ));
        }
    }
    let mut plain = SavedSet::from_sdk(kept)?;
    plain.set_identifier = None;
    plain.weight = None;
    if plain.health_check_id.take().is_some() {
        notes.push("the kept record's health check is not carried over: a plain record is not routed by health".into());
    }
    let saved: Vec<SavedSet> = weighted
        .iter()
        .map(|r| SavedSet::from_sdk(r))
        .collect::<Result<_>>()?;
    let mut changes = Vec::new();
    for r in &weighted {
        changes.push(change(ChangeAction::Delete, (*r).clone())?);
    }
    changes.push(change(ChangeAction::Create, plain.to_sdk()?)?);
    let previous_ttl = saved.iter().map(SavedSet::cache_ttl).max().unwrap_or(0);
    finish(
        &r53,
        Pending {
            action: format!(
                "turn the weighted {} records into one plain record ({}'s target)",
                kept.r#type.as_str(),
                kept.set_identifier.as_deref().unwrap_or("-")
            ),
            kind: "to-plain",
            name,
            before: rows(&weighted.iter().map(|r| (*r).clone()).collect::<Vec<_>>()),
            after: sdk_rows(std::slice::from_ref(&plain))?,
            changes,
            previous_ttl,
            ttl: plain.cache_ttl(),
            notes,
            dry_run: a.opts.dry_run,
            wait: a.opts.wait.clone(),
            state_dir: a.opts.state_dir.clone(),
            undo: Some(UndoRecord {
                action: "to-plain".into(),
                saved_at: now(),
                before: saved,
                after: vec![plain],
            }),
            check: Vec::new(),
            state_edit: None,
        },
    )
    .await
}

/// Which record `failover` makes primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailoverTo {
    /// The current SECONDARY becomes PRIMARY.
    Secondary,
    /// The record that was PRIMARY before switchyard's first failover of the name is PRIMARY
    /// again (as recorded in the state file).
    Primary,
    /// This set identifier becomes PRIMARY.
    Set(String),
}

impl FailoverTo {
    /// `secondary`, `primary` (any case), else a set identifier.
    pub fn parse(s: &str) -> FailoverTo {
        match s.trim().to_ascii_lowercase().as_str() {
            "secondary" => FailoverTo::Secondary,
            "primary" => FailoverTo::Primary,
            _ => FailoverTo::Set(s.trim().to_string()),
        }
    }
}

/// What `failover` needs.
#[derive(Debug, Clone)]
pub struct FailoverArgs {
    pub zone: String,
    pub name: String,
    pub to: FailoverTo,
    /// Which failover records, when the name has them for several types.
    pub rtype: Option<String>,
    pub opts: ChangeOpts,
}

/// A health check's state: how many Route53 checkers report it healthy. Route53 counts an
/// endpoint healthy when more than 18% of its checkers do.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    pub health_check_id: String,
    /// `healthy`, `unhealthy`, or `unknown` when no checker has reported.
    pub verdict: String,
    pub checkers: usize,
    pub reporting_healthy: usize,
    /// The last report of a checker, as Route53 words it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_report: Option<String>,
}

impl Health {
    /// `healthy (3/3)` for a table cell.
    pub fn short(&self) -> String {
        format!(
            "{} ({}/{})",
            self.verdict, self.reporting_healthy, self.checkers
        )
    }
}

/// Route53's rule: an endpoint is healthy when more than 18% of its checkers report it
/// healthy; `unknown` when none has reported.
fn verdict(healthy: usize, checkers: usize) -> &'static str {
    if checkers == 0 {
        "unknown"
    } else if healthy * 100 > checkers * 18 {
        "healthy"
    } else {
        "unhealthy"
    }
}

/// The state of health check `id` (GetHealthCheckStatus).
pub async fn health(client: &Client, id: &str) -> Result<Health> {
    let out = client
        .get_health_check_status()
        .health_check_id(id)
        .send()
        .await
        .map_err(|e| aws::classify("GetHealthCheckStatus", e))?;
    let reports: Vec<&str> = out
        .health_check_observations
        .iter()
        .filter_map(|o| o.status_report.as_ref()?.status.as_deref())
        .collect();
    let healthy = reports.iter().filter(|s| s.starts_with("Success")).count();
    Ok(Health {
        health_check_id: id.to_string(),
        verdict: verdict(healthy, reports.len()).into(),
        checkers: reports.len(),
        reporting_healthy: healthy,
        last_report: reports.first().map(|s| aws::one_line(s)),
    })
}

/// [`health`], with a failed call (no permission for GetHealthCheckStatus, a deleted check)
/// shown as `unknown` with the error as its report, so the records are still shown.
pub async fn health_or_unknown(client: &Client, id: &str) -> Health {
    match health(client, id).await {
        Ok(h) => h,
        Err(e) => Health {
            health_check_id: id.to_string(),
            verdict: "unknown".into(),
            checkers: 0,
            reporting_healthy: 0,
            last_report: Some(aws::one_line(&e.to_string())),
        },
    }
}

/// Forces a failover: the PRIMARY and SECONDARY records of the name swap roles (each keeps
/// its target and health check) in one change batch of two DELETEs and two CREATEs. The first
/// failover of a name records which record was primary, so `FailoverTo::Primary` can go back.
/// The records are saved for [`undo`]. The output shows each record's health check state; a
/// new primary whose check fails gets a note, since Route53 then keeps answering with the
/// secondary.
pub async fn failover(client: &Client, a: &FailoverArgs) -> Result<Outcome> {
    let name = fqdn(&a.name);
    let given = a.rtype.as_deref().map(parse_type).transpose()?;
    let r53 = R53 {
        client: client.clone(),
        zone: a.zone.clone(),
    };
    let recs = r53.records(&name).await?;
    let fo = of_one_type(
        &recs,
        given.as_ref(),
        |r| r.failover.is_some(),
        "no failover records",
        &name,
        &a.zone,
    )?;
    let role = |f: ResourceRecordSetFailover| -> Vec<&ResourceRecordSet> {
        fo.iter()
            .copied()
            .filter(|r| r.failover.as_ref() == Some(&f))
            .collect()
    };
    let (prim, sec) = (
        role(ResourceRecordSetFailover::Primary),
        role(ResourceRecordSetFailover::Secondary),
    );
    let (primary, secondary) = match (prim.as_slice(), sec.as_slice()) {
        ([p], [s]) => (*p, *s),
        _ => {
            return Err(DnsError::Refused {
                name,
                msg: format!(
                    "has {} PRIMARY and {} SECONDARY records; a failover swaps exactly one of each",
                    prim.len(),
                    sec.len()
                ),
            })
        }
    };
    let rtype = primary.r#type.as_str().to_string();
    let home_key = format!("{} {} {}", a.zone, name, rtype);
    let home = load_state(a.opts.state_dir.as_ref())?
        .failover_home
        .get(&home_key)
        .cloned();
    let id_of = |r: &ResourceRecordSet| r.set_identifier.clone().unwrap_or_default();
    let (p_id, s_id) = (id_of(primary), id_of(secondary));
    let mut notes = Vec::new();
    let wanted = match &a.to {
        FailoverTo::Secondary => s_id.clone(),
        FailoverTo::Primary => match &home {
            Some(h) => h.clone(),
            None => {
                notes.push(format!(
                    "no failover by switchyard is recorded for {name}: {p_id} is primary, as it was"
                ));
                p_id.clone()
            }
        },
        FailoverTo::Set(id) if *id == p_id || *id == s_id => id.clone(),
        FailoverTo::Set(id) => {
            return Err(DnsError::Refused {
                name,
                msg: format!(
                "no failover record with set identifier {id:?} (primary {p_id}, secondary {s_id})"
            ),
            })
        }
    };
    let mut before_rows = rows(&[primary.clone(), secondary.clone()]);
    for r in before_rows.iter_mut() {
        if let Some(id) = &r.health_check_id {
            r.health = Some(health_or_unknown(client, id).await);
        }
    }
    let saved = vec![SavedSet::from_sdk(primary)?, SavedSet::from_sdk(secondary)?];
    let mut swapped = saved.clone();
    swapped[0].failover = Some("SECONDARY".into());
    swapped[1].failover = Some("PRIMARY".into());
    let swap = wanted != p_id;
    let mut changes = Vec::new();
    let after_sets = if swap {
        changes.push(change(ChangeAction::Delete, primary.clone())?);
        changes.push(change(ChangeAction::Delete, secondary.clone())?);
        changes.push(change(ChangeAction::Create, swapped[1].to_sdk()?)?);
        changes.push(change(ChangeAction::Create, swapped[0].to_sdk()?)?);
        vec![swapped[1].clone(), swapped[0].clone()]
    } else {
        if notes.is_empty() {
            notes.push(format!("{p_id} is already primary"));
        }
        saved.clone()
    };
    let mut after_rows = sdk_rows(&after_sets)?;
    for r in after_rows.iter_mut() {
        r.health = before_rows
            .iter()
            .find(|b| b.set_identifier == r.set_identifier)
            .and_then(|b| b.health.clone());
    }
    if swap {
        let new_primary = before_rows
            .iter()
            .find(|b| b.set_identifier.as_deref() == Some(wanted.as_str()));
        match new_primary.and_then(|r| r.health.as_ref()) {
            Some(h) if h.verdict != "healthy" => notes.push(format!(
                "{wanted}'s health check {} is {} ({}/{} checkers report healthy): Route53 keeps answering with the secondary ({p_id}) until it passes",
                h.health_check_id, h.verdict, h.reporting_healthy, h.checkers
            )),
            None => notes.push(format!(
                "{wanted} has no health check: Route53 answers with it whatever its state"
            )),
            _ => {}
        }
    }
    let previous_ttl = saved.iter().map(SavedSet::cache_ttl).max().unwrap_or(0);
    let back_home = home.as_deref() == Some(wanted.as_str());
    let first = home.is_none();
    let edit_key = home_key.clone();
    let old_primary = p_id.clone();
    let state_edit: Option<super::StateEdit> = if swap {
        Some(Box::new(move |st: &mut super::StateFile| {
            if back_home {
                st.failover_home.remove(&edit_key);
            } else if first {
                st.failover_home.insert(edit_key, old_primary);
            }
        }))
    } else {
        None
    };
    finish(
        &r53,
        Pending {
            action: format!("fail over {rtype} to {wanted} (primary {p_id} -> {wanted})"),
            kind: "failover",
            name,
            before: before_rows,
            after: after_rows,
            changes,
            previous_ttl,
            ttl: previous_ttl,
            notes,
            dry_run: a.opts.dry_run,
            wait: a.opts.wait.clone(),
            state_dir: a.opts.state_dir.clone(),
            undo: swap.then(|| UndoRecord {
                action: "failover".into(),
                saved_at: now(),
                before: saved,
                after: after_sets,
            }),
            check: Vec::new(),
            state_edit,
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(t: RrType, values: &[&str]) -> ResourceRecordSet {
        let mut b = ResourceRecordSet::builder()
            .name("api.example.com.")
            .r#type(t)
            .ttl(300);
        for v in values {
            b = b.resource_records(ResourceRecord::builder().value(*v).build().unwrap());
        }
        b.build().unwrap()
    }

    #[test]
    fn types_follow_target_and_records() {
        let v = |s: &str| Target::Values(vec![s.into()]);
        let alias = Target::Alias {
            dns_name: "lb.example.net".into(),
            hosted_zone_id: "Z1".into(),
            evaluate_target_health: None,
        };
        let a = set(RrType::A, &["192.0.2.1"]);
        let aaaa = set(RrType::Aaaa, &["2001:db8::1"]);
        let cname = set(RrType::Cname, &["old.example.net"]);
        let n = "api.example.com.";
        assert_eq!(
            decide_type(n, &[&cname], &v("new.example.net"), None).unwrap(),
            RrType::Cname
        );
        assert_eq!(
            decide_type(n, &[&cname], &v("192.0.2.9"), None).unwrap(),
            RrType::A
        );
        assert_eq!(decide_type(n, &[&a], &alias, None).unwrap(), RrType::A);
        assert_eq!(
            decide_type(n, &[&aaaa], &alias, None).unwrap(),
            RrType::Aaaa
        );
        assert_eq!(
            decide_type(n, &[&a, &aaaa], &v("2001:db8::2"), None).unwrap(),
            RrType::Aaaa
        );
        assert!(matches!(
            decide_type(n, &[&a, &aaaa], &alias, None),
            Err(DnsError::Ambiguous { .. })
        ));
        assert!(matches!(
            decide_type(n, &[&a, &aaaa], &v("x.example.net"), None),
            Err(DnsError::Ambiguous { .. })
        ));
        assert_eq!(
            decide_type(n, &[&a, &aaaa], &alias, Some(RrType::Aaaa)).unwrap(),
            RrType::Aaaa
        );
        assert!(
            Target::Values(vec!["192.0.2.1".into(), "x.example.net".into()])
                .implied()
                .is_err()
        );
    }

    #[test]
    fn values_must_fit_the_type() {
        assert!(check_values(&RrType::A, &["192.0.2.1".into(), "192.0.2.2".into()]).is_ok());
        assert!(check_values(&RrType::A, &["2001:db8::1".into()]).is_err());
        assert!(check_values(&RrType::Aaaa, &["2001:db8::1".into()]).is_ok());
        assert!(check_values(&RrType::Cname, &["lb-1.eu-west-1.elb.amazonaws.com".into()]).is_ok());
        assert!(check_values(
            &RrType::Cname,
            &["a.example.net".into(), "b.example.net".into()]
        )
        .is_err());
        assert!(check_values(&RrType::Cname, &["bad host".into()]).is_err());
        assert!(check_values(&RrType::Cname, &["192.0.2.1".into()]).is_err());
        assert!(parse_type("mx").is_err());
        assert_eq!(parse_type("aaaa").unwrap(), RrType::Aaaa);
    }

    #[test]
    fn saved_sets_round_trip_through_the_sdk_type() {
        let alias = ResourceRecordSet::builder()
            .name("api.example.com.")
            .r#type(RrType::A)
            .set_identifier("eu")
            .failover(ResourceRecordSetFailover::Secondary)
            .health_check_id("hc-1")
            .alias_target(
                AliasTarget::builder()
                    .hosted_zone_id("Z32O12XQLNTSW2")
                    .dns_name("dr-alb.eu-west-1.elb.amazonaws.com.")
                    .evaluate_target_health(true)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let s = SavedSet::from_sdk(&alias).unwrap();
        assert_eq!(s.to_sdk().unwrap(), alias);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<SavedSet>(&json).unwrap(), s);
        let plain = set(RrType::A, &["192.0.2.2", "192.0.2.1"]);
        assert_eq!(SavedSet::from_sdk(&plain).unwrap().to_sdk().unwrap(), plain);
        let latency = ResourceRecordSet::builder()
            .name("api.example.com.")
            .r#type(RrType::A)
            .set_identifier("us")
            .region(aws_sdk_route53::types::ResourceRecordSetRegion::UsEast1)
            .ttl(60)
            .resource_records(
                ResourceRecord::builder()
                    .value("192.0.2.1")
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        assert!(matches!(
            SavedSet::from_sdk(&latency),
            Err(DnsError::Unsupported { .. })
        ));
    }

    #[test]
    fn health_verdict_is_route53s_18_percent_rule() {
        assert_eq!(verdict(1, 3), "healthy");
        assert_eq!(verdict(1, 6), "unhealthy", "16.7% is not more than 18%");
        assert_eq!(verdict(0, 16), "unhealthy");
        assert_eq!(verdict(0, 0), "unknown");
    }

    #[test]
    fn routed_names_are_refused_naming_the_command() {
        let w = ResourceRecordSet::builder()
            .name("api.example.com.")
            .r#type(RrType::A)
            .set_identifier("old")
            .weight(100)
            .ttl(60)
            .resource_records(
                ResourceRecord::builder()
                    .value("192.0.2.1")
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let e = refuse_routed("api.example.com.", &[&w])
            .unwrap_err()
            .to_string();
        assert!(e.contains("dns shift") && e.contains("old"), "{e}");
        let plain = set(RrType::A, &["192.0.2.1"]);
        assert!(refuse_routed("api.example.com.", &[&plain]).is_ok());
    }
}
