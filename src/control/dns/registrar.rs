//! The registrar's name servers of a domain registered with Route53 Domains: show them, set
//! them (given, or a hosted zone's delegation set), wait for the registrar's operation, and
//! record when the change was made. Until the parent zone's NS TTL (two days for most TLDs)
//! has passed after the registry has the new name servers, resolvers may still ask the old
//! ones, so both zones must serve the same answers until then; `show` says when that is.

use std::path::PathBuf;
use std::time::Duration;

use aws_config::{Region, SdkConfig};
use aws_sdk_route53domains::types::{Nameserver, OperationStatus};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{fqdn, load_state, parse_rfc3339, rfc3339, smithy_to_time, update_state, DnsError};
use crate::control::aws::{self, WaitArgs};

type Result<T> = std::result::Result<T, DnsError>;

/// The parent zone's NS TTL assumed when none is given: two days, as most TLD registries use.
pub const DEFAULT_PARENT_TTL: i64 = 172_800;

/// A Route53 Domains client. The service is only served from us-east-1, whatever the
/// configured region; `--endpoint-url` still applies.
pub fn client(conf: &SdkConfig) -> aws_sdk_route53domains::Client {
    let c = aws_sdk_route53domains::config::Builder::from(conf)
        .region(Region::from_static("us-east-1"))
        .build();
    aws_sdk_route53domains::Client::from_conf(c)
}

/// What `nameservers` needs.
#[derive(Debug, Clone)]
pub struct NameserversArgs {
    /// The registered domain (`example.com`).
    pub domain: String,
    /// The new name servers; None with no `from_zone`: only show.
    pub set: Option<Vec<String>>,
    /// Take the new name servers from this hosted zone's delegation set.
    pub from_zone: Option<String>,
    /// The parent zone's NS TTL in seconds (CLI default 172800, two days).
    pub parent_ttl: i64,
    pub dry_run: bool,
    /// Poll the registrar's operation until SUCCESSFUL (default timeout 30m, poll 15s).
    pub wait: WaitArgs,
    pub state_dir: Option<PathBuf>,
}

impl NameserversArgs {
    /// Checks the domain, the name servers and the TTL; runs before any call.
    pub fn validate(&self) -> Result<()> {
        let domain = norm(&self.domain);
        if !valid_name(&domain) || !domain.contains('.') {
            return Err(DnsError::NameServer(format!(
                "--domain {:?}: not a domain name",
                self.domain
            )));
        }
        if !(0..=2_147_483_647).contains(&self.parent_ttl) {
            return Err(DnsError::Ttl(self.parent_ttl));
        }
        if let Some(set) = &self.set {
            check_servers(&domain, &set.iter().map(|s| norm(s)).collect::<Vec<_>>())?;
        }
        Ok(())
    }
}

/// Lower case, no final dot: how Route53 Domains writes names.
fn norm(s: &str) -> String {
    s.trim().trim_end_matches('.').to_ascii_lowercase()
}

fn valid_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn check_servers(domain: &str, servers: &[String]) -> Result<()> {
    if servers.is_empty() || servers.len() > 13 {
        return Err(DnsError::NameServer(format!(
            "--set: {} name servers; a domain has 1 to 13",
            servers.len()
        )));
    }
    for s in servers {
        if !valid_name(s) || !s.contains('.') {
            return Err(DnsError::NameServer(format!(
                "--set {s:?}: not a host name"
            )));
        }
        if s == domain || s.ends_with(&format!(".{domain}")) {
            return Err(DnsError::NameServer(format!(
                "--set {s}: a name server inside {domain} needs glue addresses, which switchyard does not set"
            )));
        }
    }
    let mut seen = servers.to_vec();
    seen.sort();
    seen.dedup();
    if seen.len() != servers.len() {
        return Err(DnsError::NameServer(
            "--set: a name server is given twice".into(),
        ));
    }
    Ok(())
}

/// The last name-server change switchyard made to a domain, as recorded in the state file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NsChange {
    pub operation_id: String,
    /// RFC 3339, when the registrar accepted the request.
    pub submitted_at: String,
    pub previous: Vec<String>,
    pub name_servers: Vec<String>,
    pub parent_ttl: i64,
    /// The operation's last known status (SUBMITTED, IN_PROGRESS, SUCCESSFUL, ERROR, FAILED).
    pub status: String,
    /// RFC 3339, when the operation was seen SUCCESSFUL (its LastUpdatedDate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
}

impl NsChange {
    /// When every resolver has the new name servers: the parent TTL after the registry has
    /// them (after submission while the operation is not known to be done).
    pub fn horizon(&self) -> Option<OffsetDateTime> {
        let from = self
            .completed_at
            .as_deref()
            .or(Some(self.submitted_at.as_str()))
            .and_then(parse_rfc3339)?;
        Some(from + time::Duration::seconds(self.parent_ttl))
    }
}

/// `nameservers` and `status --domain` output.
#[derive(Debug, Clone, Serialize)]
pub struct NsOutcome {
    pub domain: String,
    /// The name servers at the registrar, as read (before a change).
    pub name_servers: Vec<String>,
    /// The name servers asked for; None when only showing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<Vec<String>>,
    pub dry_run: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub succeeded_after_secs: Option<f64>,
    /// The last change switchyard made (after this one is sent, this one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_change: Option<NsChange>,
    /// RFC 3339: when every resolver will have the name servers of the last change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub visible_everywhere_at: Option<String>,
    /// Seconds until then, 0 when already past.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds_remaining: Option<i64>,
    pub notes: Vec<String>,
}

impl NsOutcome {
    fn new(domain: &str, current: Vec<String>) -> NsOutcome {
        NsOutcome {
            domain: domain.to_string(),
            name_servers: current,
            after: None,
            dry_run: false,
            operation_id: None,
            status: None,
            succeeded_after_secs: None,
            last_change: None,
            visible_everywhere_at: None,
            seconds_remaining: None,
            notes: Vec::new(),
        }
    }

    fn horizon_from(&mut self, c: &NsChange) {
        if let Some(at) = c.horizon() {
            self.visible_everywhere_at = Some(rfc3339(at));
            self.seconds_remaining = Some((at - OffsetDateTime::now_utc()).whole_seconds().max(0));
        }
    }

    /// The outcome as text for people.
    pub fn human(&self) -> String {
        let mut out = format!(
            "{}: name servers at the registrar: {}\n",
            self.domain,
            self.name_servers.join(", ")
        );
        if let Some(after) = &self.after {
            out.push_str(&format!("new name servers: {}\n", after.join(", ")));
        }
        for n in &self.notes {
            out.push_str(&format!("note: {n}\n"));
        }
        if self.dry_run {
            out.push_str("dry run: nothing was changed\n");
            return out;
        }
        if let Some(id) = &self.operation_id {
            out.push_str(&format!(
                "submitted registrar operation {id} ({})\n",
                self.status.as_deref().unwrap_or("?")
            ));
        }
        if let Some(s) = self.succeeded_after_secs {
            out.push_str(&format!(
                "SUCCESSFUL after {}\n",
                aws::human_duration(Duration::from_secs_f64(s))
            ));
        }
        match (&self.last_change, &self.visible_everywhere_at) {
            (Some(c), Some(at)) => {
                if self.operation_id.is_none() {
                    out.push_str(&format!(
                        "last change by switchyard: {} -> {} (operation {}, {}), submitted {}\n",
                        c.previous.join(", "),
                        c.name_servers.join(", "),
                        c.operation_id,
                        c.status,
                        c.submitted_at
                    ));
                }
                match self.seconds_remaining {
                    Some(0) | None => out.push_str(&format!(
                        "every resolver has seen the new name servers (since {at})\n"
                    )),
                    Some(s) => out.push_str(&format!(
                        "every resolver will have seen the new name servers by {at} (in {}; parent TTL {}): until then keep the old zone serving the same records\n",
                        aws::human_duration(Duration::from_secs(s.unsigned_abs())),
                        aws::human_duration(Duration::from_secs(c.parent_ttl.unsigned_abs()))
                    )),
                }
            }
            _ if self.after.is_none() => {
                out.push_str("no name-server change recorded by switchyard for this domain\n")
            }
            _ => {}
        }
        out
    }
}

async fn current(domains: &aws_sdk_route53domains::Client, domain: &str) -> Result<Vec<String>> {
    let d = domains
        .get_domain_detail()
        .domain_name(domain)
        .send()
        .await
        .map_err(|e| aws::classify("GetDomainDetail", e))?;
    Ok(d.nameservers
        .unwrap_or_default()
        .iter()
        .map(|n| norm(&n.name))
        .collect())
}

struct OpState {
    status: OperationStatus,
    message: String,
    updated: Option<OffsetDateTime>,
}

async fn operation(domains: &aws_sdk_route53domains::Client, id: &str) -> Result<OpState> {
    let o = domains
        .get_operation_detail()
        .operation_id(id)
        .send()
        .await
        .map_err(|e| aws::classify("GetOperationDetail", e))?;
    Ok(OpState {
        status: o.status.unwrap_or_else(|| OperationStatus::from("UNKNOWN")),
        message: o.message.unwrap_or_default(),
        updated: o.last_updated_date.as_ref().map(smithy_to_time),
    })
}

fn done(s: &OperationStatus) -> bool {
    matches!(s, OperationStatus::Successful)
}

fn failed(s: &OperationStatus) -> bool {
    matches!(s, OperationStatus::Error | OperationStatus::Failed)
}

/// Shows the domain's name servers at the registrar and, when switchyard changed them, when
/// every resolver will have seen the change (refreshing the operation's status first).
pub async fn show(
    domains: &aws_sdk_route53domains::Client,
    domain: &str,
    state_dir: Option<&PathBuf>,
) -> Result<NsOutcome> {
    let domain = norm(domain);
    let servers = current(domains, &domain).await?;
    let mut out = NsOutcome::new(&domain, servers.clone());
    let recorded = load_state(state_dir)?.registrar.get(&domain).cloned();
    if let Some(mut c) = recorded {
        if c.completed_at.is_none() {
            let op = operation(domains, &c.operation_id).await?;
            c.status = op.status.as_str().to_string();
            if done(&op.status) {
                c.completed_at = Some(rfc3339(op.updated.unwrap_or_else(OffsetDateTime::now_utc)));
                let (d, saved) = (domain.clone(), c.clone());
                update_state(state_dir, |st| {
                    st.registrar.insert(d, saved);
                })?;
            } else if failed(&op.status) {
                out.notes.push(format!(
                    "the registrar operation {} ended {}: {}",
                    c.operation_id,
                    c.status,
                    aws::one_line(&op.message)
                ));
            }
        }
        if c.completed_at.is_none() {
            out.notes.push(format!(
                "operation {} is {}: the time below counts from its submission and moves once it succeeds",
                c.operation_id, c.status
            ));
        }
        let mut want = c.name_servers.clone();
        let mut have = servers;
        want.sort();
        have.sort();
        if want != have && !failed(&OperationStatus::from(c.status.as_str())) {
            out.notes.push(format!(
                "the registrar's name servers are not the ones switchyard set ({})",
                c.name_servers.join(", ")
            ));
        }
        out.horizon_from(&c);
        out.last_change = Some(c);
    }
    Ok(out)
}

/// Sets the domain's name servers at the registrar (UpdateDomainNameservers) to `set`, or to
/// the delegation set of `from_zone` (which must be a zone for the domain itself); without
/// either, only shows them. The change is recorded in the state file (operation id, time,
/// previous and new name servers, parent TTL) before waiting, so `status --domain` can say when
/// every resolver will have seen it. Nothing is sent when the name servers already are those.
pub async fn nameservers(
    domains: &aws_sdk_route53domains::Client,
    r53: &aws_sdk_route53::Client,
    a: &NameserversArgs,
) -> Result<NsOutcome> {
    a.validate()?;
    let domain = norm(&a.domain);
    let wanted: Vec<String> = match (&a.set, &a.from_zone) {
        (Some(s), _) => s.iter().map(|x| norm(x)).collect(),
        (None, Some(z)) => {
            let hz = r53
                .get_hosted_zone()
                .id(z)
                .send()
                .await
                .map_err(|e| aws::classify("GetHostedZone", e))?;
            let zone_name = hz
                .hosted_zone
                .as_ref()
                .map(|h| fqdn(&h.name))
                .unwrap_or_default();
            if zone_name != fqdn(&domain) {
                return Err(DnsError::WrongZone {
                    zone: z.clone(),
                    zone_name,
                    subdomain: fqdn(&domain),
                });
            }
            let servers: Vec<String> = hz
                .delegation_set
                .map(|d| d.name_servers)
                .unwrap_or_default()
                .iter()
                .map(|s| norm(s))
                .collect();
            if servers.is_empty() {
                return Err(DnsError::NoNameServers(z.clone()));
            }
            check_servers(&domain, &servers)?;
            servers
        }
        (None, None) => return show(domains, &domain, a.state_dir.as_ref()).await,
    };
    let before = current(domains, &domain).await?;
    let mut out = NsOutcome::new(&domain, before.clone());
    out.after = Some(wanted.clone());
    out.dry_run = a.dry_run;
    if wanted.len() < 2 {
        out.notes
            .push("one name server is no redundancy: most registries ask for two or more".into());
    }
    let (mut x, mut y) = (before.clone(), wanted.clone());
    x.sort();
    y.sort();
    if x == y {
        out.notes
            .push("the registrar already has these name servers: nothing to change".into());
        out.after = None;
        return Ok(out);
    }
    if a.dry_run {
        return Ok(out);
    }
    let servers = wanted
        .iter()
        .map(|n| Nameserver::builder().name(n).build())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| DnsError::Build(e.to_string()))?;
    let submitted = OffsetDateTime::now_utc();
    let resp = domains
        .update_domain_nameservers()
        .domain_name(&domain)
        .set_nameservers(Some(servers))
        .send()
        .await
        .map_err(|e| aws::classify("UpdateDomainNameservers", e))?;
    let id = resp.operation_id.unwrap_or_default();
    let mut change = NsChange {
        operation_id: id.clone(),
        submitted_at: rfc3339(submitted),
        previous: before,
        name_servers: wanted,
        parent_ttl: a.parent_ttl,
        status: OperationStatus::Submitted.as_str().to_string(),
        completed_at: None,
    };
    // Recorded before waiting, so an interrupted wait still leaves `status` its facts.
    let save = |c: &NsChange| {
        let (d, c) = (domain.clone(), c.clone());
        update_state(a.state_dir.as_ref(), |st| {
            st.registrar.insert(d, c);
        })
    };
    save(&change)?;
    out.operation_id = Some(id.clone());
    out.status = Some(change.status.clone());
    if a.wait.wait {
        let timeout = a.wait.timeout.unwrap_or(Duration::from_secs(1800));
        let interval = a.wait.poll_interval.unwrap_or(Duration::from_secs(15));
        let last: std::sync::Mutex<Option<OpState>> = std::sync::Mutex::new(None);
        let what = format!("registrar operation {id} to succeed");
        let took = aws::wait_until(&what, timeout, interval, || {
            let op = operation(domains, &id);
            let last = &last;
            async move {
                let op = op.await.map_err(|e| match e {
                    DnsError::Aws(a) => a,
                    other => aws::AwsError::Response {
                        op: "GetOperationDetail".into(),
                        message: other.to_string(),
                    },
                })?;
                let s = op.status.as_str().to_string();
                let end = done(&op.status) || failed(&op.status);
                if let Ok(mut l) = last.lock() {
                    *l = Some(op);
                }
                Ok((end, s))
            }
        })
        .await?;
        let last = last.into_inner().ok().flatten();
        if let Some(op) = last {
            change.status = op.status.as_str().to_string();
            if failed(&op.status) {
                save(&change)?;
                return Err(DnsError::Operation {
                    id,
                    domain,
                    status: change.status,
                    message: aws::one_line(&op.message),
                });
            }
            change.completed_at = Some(rfc3339(op.updated.unwrap_or_else(OffsetDateTime::now_utc)));
            save(&change)?;
            out.status = Some(change.status.clone());
            out.succeeded_after_secs = Some(took.as_secs_f64());
        }
    }
    out.horizon_from(&change);
    out.notes.push(format!(
        "resolvers may keep asking the old name servers for the parent TTL ({}) after the registry has the new ones: keep both zones serving the same records until then",
        aws::human_duration(Duration::from_secs(a.parent_ttl.unsigned_abs()))
    ));
    out.last_change = Some(change);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_checked() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(check_servers(
            "example.com",
            &v(&["ns-1.awsdns-01.org", "ns-2.awsdns-02.net"])
        )
        .is_ok());
        assert!(check_servers("example.com", &v(&[])).is_err());
        assert!(check_servers("example.com", &v(&["ns1.example.com"])).is_err());
        assert!(check_servers("example.com", &v(&["bad name"])).is_err());
        assert!(check_servers("example.com", &v(&["a.example.net", "a.example.net"])).is_err());
    }

    #[test]
    fn horizon_counts_from_completion() {
        let c = NsChange {
            operation_id: "op".into(),
            submitted_at: "2025-03-01T10:00:00Z".into(),
            previous: vec![],
            name_servers: vec![],
            parent_ttl: 172_800,
            status: "SUCCESSFUL".into(),
            completed_at: Some("2025-03-01T10:30:00Z".into()),
        };
        assert_eq!(
            c.horizon().map(rfc3339).as_deref(),
            Some("2025-03-03T10:30:00Z")
        );
    }
}
