//! A small in-process fake of exactly the AWS behaviors moto 5.2.5 does not model:
//! CloudFront's changing ETag with 412 PreconditionFailed on a stale If-Match and
//! InProgress -> Deployed; API Gateway stage canarySettings; Route53 PENDING -> INSYNC, the
//! change batches as sent (actions in order), and Route53's rules for a batch (CREATE of an
//! existing record set, DELETE that does not match exactly, a plain record beside weighted or
//! failover ones of the same type: the whole batch is refused), health checks that report
//! failure; Route53 Domains operations that stay IN_PROGRESS before SUCCESSFUL.
//! Response shapes follow the services' wire formats (what the SDK deserializers read):
//! CloudFront and Route53 REST-XML with wrapped `ErrorResponse` errors, API Gateway REST-JSON
//! with epoch-second dates and `x-amzn-ErrorType` errors, Route53 Domains JSON 1.1. It also
//! answers the first `fail_first` requests with 503, to show the CLI's retries.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

const CF_NS: &str = "http://cloudfront.amazonaws.com/doc/2020-05-31/";
const R53_NS: &str = "https://route53.amazonaws.com/doc/2013-04-01/";

/// One Route53 record set as the fake keeps it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rec {
    pub name: String,
    pub rtype: String,
    pub set_id: Option<String>,
    pub weight: Option<i64>,
    pub ttl: Option<i64>,
    pub values: Vec<String>,
    /// `PRIMARY` or `SECONDARY`.
    pub failover: Option<String>,
    pub health_check_id: Option<String>,
    /// Alias target: hosted zone id, DNS name, EvaluateTargetHealth.
    pub alias: Option<(String, String, bool)>,
}

/// Everything the fake knows; tests set it up and inspect it.
#[derive(Debug, Default)]
pub struct State {
    /// CloudFront distribution id served.
    pub cf_id: String,
    /// The DistributionConfig element, as XML.
    pub cf_config: String,
    /// Current ETag version; the ETag is `E{n}`.
    pub cf_version: u32,
    /// GetDistribution answers InProgress this many more times, then Deployed.
    pub cf_in_progress: u32,
    /// After each accepted update, `cf_in_progress` is set to this.
    pub cf_deploy_polls: u32,
    /// A concurrent editor: after the first GetDistributionConfig, replace `.0` by `.1` in the
    /// config and bump the ETag.
    pub cf_edit_after_first_get: Option<(String, String)>,
    pub cf_gets: u32,
    pub cf_updates_accepted: u32,
    pub cf_updates_rejected: u32,
    /// API Gateway: REST API id, stage name, the Stage JSON, the deployments JSON.
    pub api_id: String,
    pub stage_name: String,
    pub stage: Value,
    pub deployments: Vec<Value>,
    pub stage_updates: u32,
    /// Route53: zone id, its records, changes by id with the GetChange polls left as PENDING.
    pub zone_id: String,
    pub records: Vec<Rec>,
    pub change_pending_polls: u32,
    pub changes: BTreeMap<String, u32>,
    pub change_batches: u32,
    /// Every accepted change batch, one `ACTION TYPE SET_ID` (`-` for none) per change.
    pub batches: Vec<Vec<String>>,
    /// Route53 Domains: the domain, its name servers, operations by id with the
    /// GetOperationDetail polls left as IN_PROGRESS, and how many polls a new one gets.
    pub domain: String,
    pub domain_ns: Vec<String>,
    pub domain_ops: BTreeMap<String, u32>,
    pub domain_op_polls: u32,
    /// Route53 health checks: what each of the checkers reports (true = Success).
    pub health_checks: BTreeMap<String, Vec<bool>>,
    /// Answer this many requests with 503 ServiceUnavailable first.
    pub fail_first: u32,
    pub failed: u32,
    /// Every request as `METHOD PATH`.
    pub log: Vec<String>,
}

impl State {
    pub fn cf_etag(&self) -> String {
        format!("E{}", self.cf_version)
    }
}

/// The running fake; stops when dropped.
pub struct Fake {
    pub url: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fake {
    /// Starts serving `state` on an ephemeral loopback port.
    pub async fn start(state: State) -> Fake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let state = Arc::new(Mutex::new(state));
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(handle(st, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Fake { url, state, task }
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("fake state")
    }
}

type Resp = Response<Full<Bytes>>;

fn resp(status: StatusCode, ctype: &str, body: String, headers: &[(&str, String)]) -> Resp {
    let mut b = Response::builder()
        .status(status)
        .header("content-type", ctype)
        .header("x-amzn-requestid", "fake-request");
    for (k, v) in headers {
        b = b.header(*k, v.as_str());
    }
    b.body(Full::new(Bytes::from(body))).expect("response")
}

fn xml_error(status: StatusCode, ns: &str, code: &str, msg: &str) -> Resp {
    let kind = if status.is_server_error() {
        "Receiver"
    } else {
        "Sender"
    };
    resp(
        status,
        "text/xml",
        format!("<?xml version=\"1.0\"?>\n<ErrorResponse xmlns=\"{ns}\"><Error><Type>{kind}</Type><Code>{code}</Code><Message>{msg}</Message></Error><RequestId>fake-request</RequestId></ErrorResponse>"),
        &[],
    )
}

fn json_error(status: StatusCode, code: &str, msg: &str) -> Resp {
    resp(
        status,
        "application/json",
        json!({ "message": msg }).to_string(),
        &[("x-amzn-errortype", code.to_string())],
    )
}

/// Inner texts of every `<tag>...</tag>` in `xml` (the fake's inputs never nest a tag in itself).
fn tags<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(&after[..j]);
        rest = &after[j + close.len()..];
    }
    out
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format time")
}

async fn handle(st: Arc<Mutex<State>>, req: Request<hyper::body::Incoming>) -> Resp {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let if_match = req
        .headers()
        .get("if-match")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let amz_target = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = match req.into_body().collect().await {
        Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
        Err(_) => String::new(),
    };
    let mut s = st.lock().expect("fake state");
    match &amz_target {
        Some(t) => s.log.push(format!("{method} {path} {t}")),
        None => s.log.push(format!("{method} {path}")),
    }
    if s.failed < s.fail_first {
        s.failed += 1;
        return xml_error(
            StatusCode::SERVICE_UNAVAILABLE,
            CF_NS,
            "ServiceUnavailable",
            "fake: try again",
        );
    }
    if let Some(t) = amz_target.as_deref() {
        if let Some(op) = t.strip_prefix("Route53Domains_v20140515.") {
            return domains(&mut s, op, &body);
        }
    }
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        (Method::GET, ["2020-05-31", "distribution", id, "config"]) => {
            if *id != s.cf_id {
                return xml_error(
                    StatusCode::NOT_FOUND,
                    CF_NS,
                    "NoSuchDistribution",
                    "The specified distribution does not exist.",
                );
            }
            let out = resp(
                StatusCode::OK,
                "text/xml",
                format!("<?xml version=\"1.0\"?>\n{}", s.cf_config),
                &[("etag", s.cf_etag())],
            );
            s.cf_gets += 1;
            if s.cf_gets == 1 {
                if let Some((from, to)) = s.cf_edit_after_first_get.take() {
                    assert!(s.cf_config.contains(&from), "fake edit {from:?} not found");
                    s.cf_config = s.cf_config.replacen(&from, &to, 1);
                    s.cf_version += 1;
                }
            }
            out
        }
        (Method::GET, ["2020-05-31", "distribution", id]) => {
            if *id != s.cf_id {
                return xml_error(
                    StatusCode::NOT_FOUND,
                    CF_NS,
                    "NoSuchDistribution",
                    "The specified distribution does not exist.",
                );
            }
            let status = if s.cf_in_progress > 0 {
                s.cf_in_progress -= 1;
                "InProgress"
            } else {
                "Deployed"
            };
            let body = distribution_xml(&s, status);
            resp(StatusCode::OK, "text/xml", body, &[("etag", s.cf_etag())])
        }
        (Method::PUT, ["2020-05-31", "distribution", id, "config"]) => {
            if *id != s.cf_id {
                return xml_error(
                    StatusCode::NOT_FOUND,
                    CF_NS,
                    "NoSuchDistribution",
                    "The specified distribution does not exist.",
                );
            }
            if if_match.as_deref() != Some(s.cf_etag().as_str()) {
                s.cf_updates_rejected += 1;
                return xml_error(
                    StatusCode::PRECONDITION_FAILED,
                    CF_NS,
                    "PreconditionFailed",
                    "The precondition given in one or more of the request-header fields evaluated to false.",
                );
            }
            let Some(start) = body.find("<DistributionConfig") else {
                return xml_error(
                    StatusCode::BAD_REQUEST,
                    CF_NS,
                    "MalformedInput",
                    "no DistributionConfig",
                );
            };
            s.cf_config = body[start..].trim().to_string();
            s.cf_version += 1;
            s.cf_updates_accepted += 1;
            s.cf_in_progress = s.cf_deploy_polls;
            let body = distribution_xml(&s, "InProgress");
            resp(StatusCode::OK, "text/xml", body, &[("etag", s.cf_etag())])
        }
        (Method::GET, ["restapis", api, "stages", stage]) => {
            if *api != s.api_id || *stage != s.stage_name {
                return json_error(
                    StatusCode::NOT_FOUND,
                    "NotFoundException",
                    "Invalid stage identifier specified",
                );
            }
            resp(StatusCode::OK, "application/json", s.stage.to_string(), &[])
        }
        (Method::GET, ["restapis", api, "deployments"]) => {
            if *api != s.api_id {
                return json_error(
                    StatusCode::NOT_FOUND,
                    "NotFoundException",
                    "Invalid API identifier specified",
                );
            }
            resp(
                StatusCode::OK,
                "application/json",
                json!({ "item": s.deployments }).to_string(),
                &[],
            )
        }
        (Method::PATCH, ["restapis", api, "stages", stage]) => {
            if *api != s.api_id || *stage != s.stage_name {
                return json_error(
                    StatusCode::NOT_FOUND,
                    "NotFoundException",
                    "Invalid stage identifier specified",
                );
            }
            let ops: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            let ops = ops["patchOperations"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            // All or nothing, as the service: apply to a copy, keep it only if every op is valid.
            let mut stage = s.stage.clone();
            for op in &ops {
                if let Err(msg) = patch_stage(&mut stage, op, &s.deployments) {
                    return json_error(StatusCode::BAD_REQUEST, "BadRequestException", &msg);
                }
            }
            stage["lastUpdatedDate"] = json!(time::OffsetDateTime::now_utc().unix_timestamp());
            s.stage = stage;
            s.stage_updates += 1;
            resp(StatusCode::OK, "application/json", s.stage.to_string(), &[])
        }
        (Method::GET, ["2013-04-01", "hostedzone", zone, "rrset"]) => {
            if *zone != s.zone_id {
                return xml_error(
                    StatusCode::NOT_FOUND,
                    R53_NS,
                    "NoSuchHostedZone",
                    "No hosted zone found",
                );
            }
            let start = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("name="))
                .map(|n| n.replace("%2A", "*").to_ascii_lowercase())
                .unwrap_or_default();
            let start = if start.ends_with('.') || start.is_empty() {
                start
            } else {
                format!("{start}.")
            };
            let mut recs: Vec<&Rec> = s.records.iter().filter(|r| r.name >= start).collect();
            recs.sort_by(|a, b| {
                (&a.name, &a.rtype, &a.set_id).cmp(&(&b.name, &b.rtype, &b.set_id))
            });
            let mut xml = format!("<?xml version=\"1.0\"?>\n<ListResourceRecordSetsResponse xmlns=\"{R53_NS}\"><ResourceRecordSets>");
            for r in recs {
                xml.push_str(&rec_xml(r));
            }
            xml.push_str("</ResourceRecordSets><IsTruncated>false</IsTruncated><MaxItems>300</MaxItems></ListResourceRecordSetsResponse>");
            resp(StatusCode::OK, "text/xml", xml, &[])
        }
        (Method::POST, ["2013-04-01", "hostedzone", zone, "rrset"]) => {
            if *zone != s.zone_id {
                return xml_error(
                    StatusCode::NOT_FOUND,
                    R53_NS,
                    "NoSuchHostedZone",
                    "No hosted zone found",
                );
            }
            let mut next = s.records.clone();
            let mut batch = Vec::new();
            for change in tags(&body, "Change") {
                let action = tags(change, "Action").first().copied().unwrap_or("");
                let one = |t: &str| tags(change, t).first().map(|v| v.to_string());
                let mut name = one("Name").unwrap_or_default().to_ascii_lowercase();
                if !name.ends_with('.') {
                    name.push('.');
                }
                let alias = tags(change, "AliasTarget").first().map(|a| {
                    let f = |t: &str| {
                        tags(a, t)
                            .first()
                            .map(|v| v.to_string())
                            .unwrap_or_default()
                    };
                    (
                        f("HostedZoneId"),
                        f("DNSName"),
                        f("EvaluateTargetHealth") == "true",
                    )
                });
                let rec = Rec {
                    name,
                    rtype: one("Type").unwrap_or_default(),
                    set_id: one("SetIdentifier"),
                    weight: one("Weight").and_then(|w| w.parse().ok()),
                    ttl: one("TTL").and_then(|w| w.parse().ok()),
                    values: tags(change, "Value")
                        .iter()
                        .map(|v| v.to_string())
                        .collect(),
                    failover: one("Failover"),
                    health_check_id: one("HealthCheckId"),
                    alias,
                };
                if let Some(w) = rec.weight {
                    if !(0..=255).contains(&w) {
                        return xml_error(
                            StatusCode::BAD_REQUEST,
                            R53_NS,
                            "InvalidInput",
                            "Weight must be between 0 and 255",
                        );
                    }
                }
                batch.push(format!(
                    "{action} {} {}",
                    rec.rtype,
                    rec.set_id.as_deref().unwrap_or("-")
                ));
                let at = next.iter().position(|r| {
                    r.name == rec.name && r.rtype == rec.rtype && r.set_id == rec.set_id
                });
                let refuse = |msg: String| {
                    xml_error(
                        StatusCode::BAD_REQUEST,
                        R53_NS,
                        "InvalidChangeBatch",
                        &xml_escape(&msg),
                    )
                };
                match (action, at) {
                    ("UPSERT", Some(i)) => next[i] = rec,
                    ("UPSERT", None) | ("CREATE", None) => next.push(rec),
                    ("CREATE", Some(_)) => {
                        return refuse(format!(
                            "[Tried to create resource record set [name='{}', type='{}'] but it already exists]",
                            rec.name, rec.rtype
                        ))
                    }
                    ("DELETE", Some(i)) if next[i] == rec => {
                        next.remove(i);
                    }
                    ("DELETE", _) => {
                        return refuse(format!(
                            "[Tried to delete resource record set [name='{}', type='{}'] but it was not found or the values provided do not match the current values]",
                            rec.name, rec.rtype
                        ))
                    }
                    (a, _) => return refuse(format!("unknown action {a}")),
                }
            }
            // Route53 checks the state the whole batch leads to: one plain record set per name
            // and type, never beside weighted or failover ones.
            for r in &next {
                let same: Vec<&Rec> = next
                    .iter()
                    .filter(|o| o.name == r.name && o.rtype == r.rtype)
                    .collect();
                let plain = same.iter().filter(|o| o.set_id.is_none()).count();
                if plain > 1 || (plain == 1 && same.len() > 1) {
                    return xml_error(
                        StatusCode::BAD_REQUEST,
                        R53_NS,
                        "InvalidChangeBatch",
                        &format!(
                            "[RRSet with DNS name {}, type {} cannot be created as a non-weighted set exists with the same name and type.]",
                            r.name, r.rtype
                        ),
                    );
                }
            }
            s.batches.push(batch);
            s.records = next;
            s.change_batches += 1;
            let id = format!("C{:04}FAKE", s.change_batches);
            let polls = s.change_pending_polls;
            s.changes.insert(id.clone(), polls);
            let xml = format!(
                "<?xml version=\"1.0\"?>\n<ChangeResourceRecordSetsResponse xmlns=\"{R53_NS}\"><ChangeInfo><Id>/change/{id}</Id><Status>PENDING</Status><SubmittedAt>{}</SubmittedAt></ChangeInfo></ChangeResourceRecordSetsResponse>",
                now_rfc3339()
            );
            resp(StatusCode::OK, "text/xml", xml, &[])
        }
        (Method::GET, ["2013-04-01", "healthcheck", id, "status"]) => {
            let Some(reports) = s.health_checks.get(*id) else {
                return xml_error(
                    StatusCode::NOT_FOUND,
                    R53_NS,
                    "NoSuchHealthCheck",
                    "A health check with the specified ID does not exist.",
                );
            };
            let mut xml = format!("<?xml version=\"1.0\"?>\n<GetHealthCheckStatusResponse xmlns=\"{R53_NS}\"><HealthCheckObservations>");
            for (i, ok) in reports.iter().enumerate() {
                let status = if *ok {
                    "Success: HTTP Status Code 200, OK"
                } else {
                    "Failure: Connection timed out."
                };
                xml.push_str(&format!(
                    "<HealthCheckObservation><Region>us-east-1</Region><IPAddress>15.177.{i}.1</IPAddress><StatusReport><Status>{status}</Status><CheckedTime>{}</CheckedTime></StatusReport></HealthCheckObservation>",
                    now_rfc3339()
                ));
            }
            xml.push_str("</HealthCheckObservations></GetHealthCheckStatusResponse>");
            resp(StatusCode::OK, "text/xml", xml, &[])
        }
        (Method::GET, ["2013-04-01", "change", id]) => {
            let id = id.to_string();
            let Some(left) = s.changes.get_mut(&id) else {
                return xml_error(
                    StatusCode::NOT_FOUND,
                    R53_NS,
                    "NoSuchChange",
                    "A change with the specified change ID does not exist.",
                );
            };
            let status = if *left > 0 {
                *left -= 1;
                "PENDING"
            } else {
                "INSYNC"
            };
            let xml = format!(
                "<?xml version=\"1.0\"?>\n<GetChangeResponse xmlns=\"{R53_NS}\"><ChangeInfo><Id>/change/{id}</Id><Status>{status}</Status><SubmittedAt>{}</SubmittedAt></ChangeInfo></GetChangeResponse>",
                now_rfc3339()
            );
            resp(StatusCode::OK, "text/xml", xml, &[])
        }
        (m, _) => xml_error(
            StatusCode::NOT_FOUND,
            CF_NS,
            "NotImplemented",
            &format!("the fake does not serve {m} {path}"),
        ),
    }
}

fn distribution_xml(s: &State, status: &str) -> String {
    format!(
        "<?xml version=\"1.0\"?>\n<Distribution xmlns=\"{CF_NS}\"><Id>{id}</Id><ARN>arn:aws:cloudfront::123456789012:distribution/{id}</ARN><Status>{status}</Status><LastModifiedTime>{now}</LastModifiedTime><InProgressInvalidationBatches>0</InProgressInvalidationBatches><DomainName>d111111abcdef8.cloudfront.net</DomainName>{cfg}</Distribution>",
        id = s.cf_id,
        now = now_rfc3339(),
        cfg = s.cf_config.replacen(&format!(" xmlns=\"{CF_NS}\""), "", 1),
    )
}

fn rec_xml(r: &Rec) -> String {
    let mut x = format!(
        "<ResourceRecordSet><Name>{}</Name><Type>{}</Type>",
        xml_escape(&r.name),
        r.rtype
    );
    if let Some(id) = &r.set_id {
        x.push_str(&format!(
            "<SetIdentifier>{}</SetIdentifier>",
            xml_escape(id)
        ));
    }
    if let Some(w) = r.weight {
        x.push_str(&format!("<Weight>{w}</Weight>"));
    }
    if let Some(f) = &r.failover {
        x.push_str(&format!("<Failover>{f}</Failover>"));
    }
    if let Some(t) = r.ttl {
        x.push_str(&format!("<TTL>{t}</TTL>"));
    }
    if !r.values.is_empty() {
        x.push_str("<ResourceRecords>");
        for v in &r.values {
            x.push_str(&format!(
                "<ResourceRecord><Value>{}</Value></ResourceRecord>",
                xml_escape(v)
            ));
        }
        x.push_str("</ResourceRecords>");
    }
    if let Some((zone, dns, eval)) = &r.alias {
        x.push_str(&format!(
            "<AliasTarget><HostedZoneId>{}</HostedZoneId><DNSName>{}</DNSName><EvaluateTargetHealth>{eval}</EvaluateTargetHealth></AliasTarget>",
            xml_escape(zone),
            xml_escape(dns)
        ));
    }
    if let Some(h) = &r.health_check_id {
        x.push_str(&format!("<HealthCheckId>{}</HealthCheckId>", xml_escape(h)));
    }
    x.push_str("</ResourceRecordSet>");
    x
}

/// Route53 Domains (JSON 1.1): GetDomainDetail, UpdateDomainNameservers, GetOperationDetail.
fn domains(s: &mut State, op: &str, body: &str) -> Resp {
    let req: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let ok = |v: Value| {
        resp(
            StatusCode::OK,
            "application/x-amz-json-1.1",
            v.to_string(),
            &[],
        )
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    match op {
        "GetDomainDetail" | "UpdateDomainNameservers"
            if req["DomainName"].as_str() != Some(s.domain.as_str()) =>
        {
            json_error(
                StatusCode::BAD_REQUEST,
                "InvalidInput",
                "Domain is not registered to the current AWS account",
            )
        }
        "GetDomainDetail" => ok(json!({
            "DomainName": s.domain,
            "Nameservers": s.domain_ns.iter().map(|n| json!({ "Name": n })).collect::<Vec<_>>(),
        })),
        "UpdateDomainNameservers" => {
            s.domain_ns = req["Nameservers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .filter_map(|n| n["Name"].as_str().map(str::to_string))
                .collect();
            let id = format!("op-{:04}", s.domain_ops.len() + 1);
            let polls = s.domain_op_polls;
            s.domain_ops.insert(id.clone(), polls);
            ok(json!({ "OperationId": id }))
        }
        "GetOperationDetail" => {
            let id = req["OperationId"].as_str().unwrap_or("").to_string();
            let Some(left) = s.domain_ops.get_mut(&id) else {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidInput",
                    "Operation with that id doesn't exist",
                );
            };
            let status = if *left > 0 {
                *left -= 1;
                "IN_PROGRESS"
            } else {
                "SUCCESSFUL"
            };
            ok(json!({
                "OperationId": id,
                "Status": status,
                "DomainName": s.domain,
                "Type": "UPDATE_NAMESERVER",
                "SubmittedDate": now,
                "LastUpdatedDate": now,
            }))
        }
        _ => json_error(
            StatusCode::BAD_REQUEST,
            "UnsupportedOperation",
            &format!("the fake does not serve Route53Domains {op}"),
        ),
    }
}

/// Applies one JSON Patch operation to a Stage the way API Gateway documents for canaries.
fn patch_stage(stage: &mut Value, op: &Value, deployments: &[Value]) -> Result<(), String> {
    let kind = op["op"].as_str().unwrap_or("");
    let path = op["path"].as_str().unwrap_or("");
    let value = op["value"].as_str();
    let known = |id: &str| deployments.iter().any(|d| d["id"] == id);
    match (kind, path) {
        ("replace", "/deploymentId") => {
            let v = value.ok_or("value required")?;
            if !known(v) {
                return Err(format!("Invalid deployment identifier specified: {v}"));
            }
            stage["deploymentId"] = json!(v);
        }
        ("replace", "/canarySettings/deploymentId") => {
            let v = value.ok_or("value required")?;
            if !known(v) {
                return Err(format!("Invalid deployment identifier specified: {v}"));
            }
            ensure_canary(stage)["deploymentId"] = json!(v);
        }
        ("replace", "/canarySettings/percentTraffic") => {
            let v: f64 = value
                .and_then(|v| v.parse().ok())
                .filter(|p| (0.0..=100.0).contains(p))
                .ok_or("percentTraffic must be a number between 0.0 and 100.0")?;
            ensure_canary(stage)["percentTraffic"] = json!(v);
        }
        ("remove", "/canarySettings") => {
            if let Some(o) = stage.as_object_mut() {
                o.remove("canarySettings");
            }
        }
        ("replace", p) if p.starts_with("/variables/") => {
            let k = &p["/variables/".len()..];
            if !stage["variables"].is_object() {
                stage["variables"] = json!({});
            }
            stage["variables"][k] = json!(value.unwrap_or(""));
        }
        _ => return Err(format!("Invalid patch path {path} for op {kind}")),
    }
    Ok(())
}

fn ensure_canary(stage: &mut Value) -> &mut Value {
    if !stage["canarySettings"].is_object() {
        stage["canarySettings"] = json!({ "percentTraffic": 0.0, "useStageCache": false });
    }
    &mut stage["canarySettings"]
}

/// A minimal but complete DistributionConfig: origins `old`, `new`, `static`, the given
/// behaviors (pattern, origin) and default origin.
pub fn cf_config_xml(behaviors: &[(&str, &str)], default: &str, comment: &str) -> String {
    let origins: String = ["old", "new", "static"]
        .iter()
        .map(|o| format!("<Origin><Id>{o}</Id><DomainName>{o}.example.com</DomainName><OriginPath></OriginPath><CustomHeaders><Quantity>0</Quantity></CustomHeaders><CustomOriginConfig><HTTPPort>80</HTTPPort><HTTPSPort>443</HTTPSPort><OriginProtocolPolicy>https-only</OriginProtocolPolicy></CustomOriginConfig></Origin>"))
        .collect();
    let items: String = behaviors
        .iter()
        .map(|(p, o)| format!("<CacheBehavior><PathPattern>{p}</PathPattern><TargetOriginId>{o}</TargetOriginId><ViewerProtocolPolicy>allow-all</ViewerProtocolPolicy><Compress>false</Compress><CachePolicyId>658327ea-f89d-4fab-a63d-7e88639e58f6</CachePolicyId></CacheBehavior>"))
        .collect();
    let behaviors_xml = if behaviors.is_empty() {
        "<CacheBehaviors><Quantity>0</Quantity></CacheBehaviors>".to_string()
    } else {
        format!(
            "<CacheBehaviors><Quantity>{}</Quantity><Items>{items}</Items></CacheBehaviors>",
            behaviors.len()
        )
    };
    format!(
        "<DistributionConfig xmlns=\"{CF_NS}\"><CallerReference>fake-ref</CallerReference><Origins><Quantity>3</Quantity><Items>{origins}</Items></Origins><DefaultCacheBehavior><TargetOriginId>{default}</TargetOriginId><ViewerProtocolPolicy>redirect-to-https</ViewerProtocolPolicy><Compress>true</Compress><CachePolicyId>4135ea2d-6df8-44a3-9df3-4b5a84be39ad</CachePolicyId></DefaultCacheBehavior>{behaviors_xml}<Comment>{comment}</Comment><Enabled>true</Enabled></DistributionConfig>"
    )
}
