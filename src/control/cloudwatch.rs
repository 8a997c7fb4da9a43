//! CloudWatch: read a metric over a window (GetMetricData) with presets for API Gateway and
//! Lambda, gate a migration step on the error rate (exit 0 or 1), and publish the proxy's
//! per-route counters (PutMetricData) as deltas since the last publish.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use aws_sdk_cloudwatch::types::{
    Dimension, Metric, MetricDataQuery, MetricDatum, MetricStat, StandardUnit,
};
use aws_sdk_cloudwatch::Client;
use aws_smithy_types::DateTime;
use serde::{Deserialize, Serialize};

use super::aws::{self, parse_duration, AwsArgs, AwsError};
use super::{table, Output};

/// `switchyard metrics ...`
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub aws: AwsArgs,
    #[command(subcommand)]
    pub cmd: Command,
}

/// Which metrics: an API Gateway API, a Lambda function, or any namespace and dimensions.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// API Gateway REST API name (dimension ApiName; namespace AWS/ApiGateway).
    #[arg(long, value_name = "NAME", conflicts_with_all = ["function", "namespace"])]
    pub api_name: Option<String>,
    /// With `--api-name`: the stage (dimension Stage). Default: the API's all-stage metrics.
    #[arg(long, value_name = "NAME", requires = "api_name")]
    pub stage: Option<String>,
    /// Lambda function name (dimension FunctionName; namespace AWS/Lambda).
    #[arg(long, value_name = "NAME", conflicts_with = "namespace")]
    pub function: Option<String>,
    /// Any namespace, with `--dimension` for its dimensions.
    #[arg(long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// `NAME=VALUE`, repeatable; added to the preset's dimensions.
    #[arg(long = "dimension", value_name = "NAME=VALUE")]
    pub dimensions: Vec<String>,
}

/// The CloudWatch actions.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Read one metric over a window, per period and in total.
    Query {
        #[command(flatten)]
        target: Target,
        /// Metric name. Presets: API Gateway 5XXError, 4XXError, Count, Latency,
        /// IntegrationLatency; Lambda Errors, Throttles, Duration, Invocations.
        #[arg(long, value_name = "NAME")]
        metric: String,
        /// Statistic (Sum, Average, Minimum, Maximum, SampleCount, p99, ...). Default: Sum for
        /// counts, Average for latencies and durations.
        #[arg(long, value_name = "STAT")]
        stat: Option<String>,
        /// How far back from now.
        #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
        window: Duration,
        /// Length of each datapoint, a multiple of 60s.
        #[arg(long, default_value = "1m", value_parser = parse_duration, value_name = "DURATION")]
        period: Duration,
    },
    /// Exit 0 if the error rate over the window is at most the limit, else 1, with the figures.
    Gate {
        #[command(flatten)]
        target: Target,
        /// Largest acceptable error rate in percent (errors / requests x 100).
        #[arg(long, value_name = "PERCENT")]
        max_error_rate: f64,
        /// Also close the gate if the average latency (API Gateway Latency, Lambda Duration)
        /// is above this many milliseconds. Default: not checked.
        #[arg(long, value_name = "MS")]
        max_latency_ms: Option<f64>,
        /// Fewer requests than this in the window closes the gate (no evidence is not health).
        #[arg(long, default_value_t = 1.0, value_name = "N")]
        min_requests: f64,
        /// How far back from now.
        #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
        window: Duration,
    },
    /// Publish the proxy's per-route counters (`*_total` samples with a `route` label) from
    /// its Prometheus text metrics, as the increase since the previous publish.
    Publish {
        /// A file, `-` for stdin, or an `http://` URL (the admin API's `/metrics`).
        #[arg(long, value_name = "FILE|URL")]
        from: String,
        /// CloudWatch namespace.
        #[arg(long, default_value = "Switchyard", value_name = "NAMESPACE")]
        namespace: String,
        /// Where the previous values are kept. Default as for `dns`: `$SWITCHYARD_STATE_DIR`, else
        /// `$XDG_STATE_HOME/switchyard`, else `~/.local/state/switchyard`.
        #[arg(long, env = "SWITCHYARD_STATE_DIR", value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// Show what would be published and stop (the previous values are not updated either).
        #[arg(long)]
        dry_run: bool,
    },
}

/// Why a CloudWatch command failed.
#[derive(Debug, thiserror::Error)]
pub enum CloudWatchError {
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error("say which metrics: --api-name, --function, or --namespace with --dimension")]
    NoTarget,
    #[error("--gate needs --api-name or --function (it knows their error and request metrics)")]
    GateTarget,
    #[error("--dimension {0:?}: expected NAME=VALUE")]
    Dimension(String),
    #[error("--period must be a whole number of minutes (at least 60s), not {0:?}")]
    Period(Duration),
    #[error("--window must be at least 1m and a whole number of minutes, not {0:?}")]
    Window(Duration),
    #[error("GetMetricData: query {0} returned {1}")]
    Partial(String, String),
    #[error("cannot read {0}: {1}")]
    Read(String, String),
    #[error("{0}")]
    Parse(String),
    #[error("state file {0}: {1}")]
    State(PathBuf, String),
}

type Result<T> = std::result::Result<T, CloudWatchError>;

/// A metric resolved from a target and a name.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricRef {
    pub namespace: String,
    pub name: String,
    pub dimensions: Vec<(String, String)>,
    pub stat: String,
}

fn default_stat(metric: &str) -> &'static str {
    match metric {
        "Latency" | "IntegrationLatency" | "Duration" => "Average",
        _ => "Sum",
    }
}

/// Resolves a target and metric name to a namespace, dimensions and statistic.
pub fn resolve(t: &Target, metric: &str, stat: Option<&str>) -> Result<MetricRef> {
    let mut dims = Vec::new();
    let namespace = if let Some(api) = &t.api_name {
        dims.push(("ApiName".to_string(), api.clone()));
        if let Some(s) = &t.stage {
            dims.push(("Stage".to_string(), s.clone()));
        }
        "AWS/ApiGateway".to_string()
    } else if let Some(f) = &t.function {
        dims.push(("FunctionName".to_string(), f.clone()));
        "AWS/Lambda".to_string()
    } else if let Some(ns) = &t.namespace {
        ns.clone()
    } else {
        return Err(CloudWatchError::NoTarget);
    };
    for d in &t.dimensions {
        let (k, v) = d
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| CloudWatchError::Dimension(d.clone()))?;
        dims.push((k.to_string(), v.to_string()));
    }
    Ok(MetricRef {
        namespace,
        name: metric.to_string(),
        dimensions: dims,
        stat: stat.unwrap_or(default_stat(metric)).to_string(),
    })
}

fn whole_minutes(d: Duration) -> Option<i32> {
    let s = d.as_secs();
    (s >= 60 && s.is_multiple_of(60) && d.subsec_nanos() == 0)
        .then(|| i32::try_from(s).ok())
        .flatten()
}

fn query(id: &str, m: &MetricRef, period: i32) -> MetricDataQuery {
    let metric = Metric::builder()
        .namespace(&m.namespace)
        .metric_name(&m.name)
        .set_dimensions(Some(
            m.dimensions
                .iter()
                .map(|(k, v)| Dimension::builder().name(k).value(v).build())
                .collect(),
        ))
        .build();
    MetricDataQuery::builder()
        .id(id)
        .metric_stat(
            MetricStat::builder()
                .metric(metric)
                .period(period)
                .stat(&m.stat)
                .build(),
        )
        .return_data(true)
        .build()
}

/// The datapoints of one query, oldest first.
type Series = Vec<(i64, f64)>;

/// Runs GetMetricData over `[now - window, now)` and returns each query's datapoints by id.
async fn fetch(
    client: &Client,
    queries: Vec<MetricDataQuery>,
    window: Duration,
) -> Result<(BTreeMap<String, Series>, i64, i64)> {
    // Round the end up to the next second, so a datapoint stamped "now" is inside the window.
    let now = DateTime::from(std::time::SystemTime::now());
    let end_secs = now.secs() + i64::from(now.subsec_nanos() > 0);
    let start_secs = end_secs - i64::try_from(window.as_secs()).unwrap_or(i64::MAX / 2);
    let mut out: BTreeMap<String, Series> = BTreeMap::new();
    let mut token: Option<String> = None;
    for _ in 0..20 {
        let resp = client
            .get_metric_data()
            .set_metric_data_queries(Some(queries.clone()))
            .start_time(DateTime::from_secs(start_secs))
            .end_time(DateTime::from_secs(end_secs))
            .set_next_token(token.clone())
            .send()
            .await
            .map_err(|e| aws::classify("GetMetricData", e))?;
        for r in resp.metric_data_results.unwrap_or_default() {
            let id = r.id.clone().unwrap_or_default();
            if let Some(code) = &r.status_code {
                if code.as_str() != "Complete" && code.as_str() != "PartialData" {
                    return Err(CloudWatchError::Partial(id, code.as_str().to_string()));
                }
            }
            let ts = r.timestamps.unwrap_or_default();
            let vals = r.values.unwrap_or_default();
            let e = out.entry(id).or_default();
            e.extend(ts.iter().map(DateTime::secs).zip(vals));
        }
        match resp.next_token {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => break,
        }
    }
    for s in out.values_mut() {
        s.sort_by_key(|(t, _)| *t);
    }
    Ok((out, start_secs, end_secs))
}

/// `query` output.
#[derive(Debug, Serialize)]
struct QueryResult {
    metric: MetricRef,
    window_secs: u64,
    period_secs: i32,
    start: String,
    end: String,
    /// (RFC 3339, value), oldest first.
    datapoints: Vec<(String, f64)>,
    /// The statistic over the whole window (one period as long as the window); None: no data.
    total: Option<f64>,
}

fn ts(secs: i64) -> String {
    DateTime::from_secs(secs)
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_else(|_| secs.to_string())
}

impl QueryResult {
    fn human(&self) -> String {
        let dims: Vec<String> = self
            .metric
            .dimensions
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mut out = format!(
            "{} {} {} [{}] from {} to {} ({}s periods)\n",
            self.metric.namespace,
            self.metric.name,
            self.metric.stat,
            dims.join(", "),
            self.start,
            self.end,
            self.period_secs
        );
        if self.datapoints.is_empty() {
            out.push_str("no datapoints in the window\n");
        } else {
            let rows: Vec<Vec<String>> = self
                .datapoints
                .iter()
                .map(|(t, v)| vec![t.clone(), format!("{v}")])
                .collect();
            out.push_str(&table(&rows));
        }
        match self.total {
            Some(t) => out.push_str(&format!("{} over the window: {t}\n", self.metric.stat)),
            None => out.push_str("no data over the window\n"),
        }
        out
    }
}

/// `gate` output.
#[derive(Debug, Serialize)]
pub struct GateResult {
    pub pass: bool,
    pub window_secs: u64,
    pub requests: f64,
    pub errors: f64,
    /// Percent; None when there were no requests.
    pub error_rate: Option<f64>,
    pub max_error_rate: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_latency_ms: Option<f64>,
    /// Why the gate is closed; empty when it is open.
    pub reasons: Vec<String>,
    pub errors_metric: MetricRef,
    pub requests_metric: MetricRef,
}

/// Decides the gate from the figures. Pure, so every branch is unit-tested.
pub fn judge(
    requests: f64,
    errors: f64,
    latency_ms: Option<f64>,
    max_error_rate: f64,
    max_latency_ms: Option<f64>,
    min_requests: f64,
) -> (bool, Option<f64>, Vec<String>) {
    let mut reasons = Vec::new();
    let rate = (requests > 0.0).then(|| errors * 100.0 / requests);
    if requests < min_requests {
        reasons.push(format!(
            "only {requests} requests in the window (at least {min_requests} needed)"
        ));
    }
    if let Some(r) = rate {
        if r > max_error_rate {
            reasons.push(format!("error rate {r:.3}% is above {max_error_rate}%"));
        }
    }
    if let Some(max) = max_latency_ms {
        match latency_ms {
            Some(l) if l > max => reasons.push(format!("latency {l:.1} ms is above {max} ms")),
            Some(_) => {}
            None => reasons.push("no latency data in the window".into()),
        }
    }
    (reasons.is_empty(), rate, reasons)
}

impl GateResult {
    fn human(&self) -> String {
        let rate = self
            .error_rate
            .map(|r| format!("{r:.3}%"))
            .unwrap_or_else(|| "n/a".into());
        let mut out = format!(
            "{}: error rate {rate} ({} errors / {} requests over {}; limit {}%)",
            if self.pass { "PASS" } else { "FAIL" },
            self.errors,
            self.requests,
            aws::human_duration(Duration::from_secs(self.window_secs)),
            self.max_error_rate
        );
        if let (Some(l), Some(m)) = (self.latency_ms, self.max_latency_ms) {
            out.push_str(&format!("; latency {l:.1} ms (limit {m} ms)"));
        }
        out.push('\n');
        for r in &self.reasons {
            out.push_str(&format!("  {r}\n"));
        }
        out
    }
}

/// One counter sample from Prometheus text.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parses the Prometheus text format's sample lines (comments and blank lines skipped);
/// label values may hold escaped quotes.
pub fn parse_prometheus(text: &str) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad =
            || CloudWatchError::Parse(format!("metrics line {}: cannot parse {line:?}", n + 1));
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => (&line[..i], &line[i..]),
            None => return Err(bad()),
        };
        let mut labels = Vec::new();
        let rest = if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices().peekable();
            let end;
            loop {
                // label name
                while chars.peek().is_some_and(|(_, c)| *c == ',' || *c == ' ') {
                    chars.next();
                }
                if let Some((i, '}')) = chars.peek().copied() {
                    end = i;
                    break;
                }
                let mut key = String::new();
                for (_, c) in chars.by_ref() {
                    if c == '=' {
                        break;
                    }
                    key.push(c);
                }
                if chars.next().map(|(_, c)| c) != Some('"') {
                    return Err(bad());
                }
                let mut val = String::new();
                let mut closed = false;
                while let Some((_, c)) = chars.next() {
                    match c {
                        '\\' => match chars.next() {
                            Some((_, 'n')) => val.push('\n'),
                            Some((_, c)) => val.push(c),
                            None => return Err(bad()),
                        },
                        '"' => {
                            closed = true;
                            break;
                        }
                        c => val.push(c),
                    }
                }
                if !closed {
                    return Err(bad());
                }
                labels.push((key.trim().to_string(), val));
                if chars.peek().is_none() {
                    return Err(bad());
                }
            }
            &body[end + 1..]
        } else {
            rest
        };
        let value = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(bad)?;
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok(out)
}

/// The counters worth publishing: `*_total` samples with a `route` label (labels are bounded
/// by the proxy's own rules: route, upstream, status class).
pub fn route_counters(samples: Vec<Sample>) -> Vec<Sample> {
    samples
        .into_iter()
        .filter(|s| s.name.ends_with("_total") && s.labels.iter().any(|(k, _)| k == "route"))
        .collect()
}

fn sample_key(s: &Sample) -> String {
    let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{}{{{}}}", s.name, labels.join(","))
}

/// Increases since `prev`. A counter lower than before was reset (proxy restart), so all of
/// its value is new. Samples not seen before only set the baseline (their history is unknown).
pub fn deltas(now: &[Sample], prev: &BTreeMap<String, f64>) -> Vec<(Sample, f64)> {
    now.iter()
        .filter_map(|s| {
            let p = prev.get(&sample_key(s))?;
            let d = if s.value >= *p { s.value - p } else { s.value };
            Some((s.clone(), d))
        })
        .collect()
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct PublishState {
    /// Namespace -> sample key -> last value published from.
    counters: BTreeMap<String, BTreeMap<String, f64>>,
}

fn publish_state_path(dir: Option<&PathBuf>) -> Option<PathBuf> {
    let dir = match dir {
        Some(d) => d.clone(),
        None => match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
            Some(x) => PathBuf::from(x).join("switchyard"),
            None => PathBuf::from(std::env::var_os("HOME")?).join(".local/state/switchyard"),
        },
    };
    Some(dir.join("metrics-publish.json"))
}

async fn read_source(from: &str) -> Result<String> {
    if from == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| CloudWatchError::Read("stdin".into(), e.to_string()))?;
        return Ok(s);
    }
    if from.starts_with("http://") {
        return http_get(from).await;
    }
    std::fs::read_to_string(from)
        .map_err(|e| CloudWatchError::Read(from.to_string(), e.to_string()))
}

async fn http_get(url: &str) -> Result<String> {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client as HttpClient;
    use hyper_util::rt::TokioExecutor;
    let err = |e: String| CloudWatchError::Read(url.to_string(), e);
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| err(e.to_string()))?;
    let client = HttpClient::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.get(uri))
        .await
        .map_err(|_| err("timed out after 10s".into()))?
        .map_err(|e| err(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(err(format!("HTTP {}", resp.status())));
    }
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| err(e.to_string()))?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|e| err(e.to_string()))
}

/// One datapoint sent (or that would be sent) by `publish`.
#[derive(Debug, Serialize)]
struct PublishedDatum {
    metric: String,
    dimensions: Vec<(String, String)>,
    /// Increase since the previous publish.
    increase: f64,
}

/// `publish` output.
#[derive(Debug, Serialize)]
struct Published {
    namespace: String,
    datums: Vec<PublishedDatum>,
    /// Counters seen for the first time: recorded as the baseline, not published.
    baselined: usize,
    dry_run: bool,
}

impl Published {
    fn human(&self) -> String {
        let mut out = String::new();
        let rows: Vec<Vec<String>> = self
            .datums
            .iter()
            .map(|p| {
                vec![
                    p.metric.clone(),
                    p.dimensions
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(","),
                    format!("+{}", p.increase),
                ]
            })
            .collect();
        out.push_str(&table(&rows));
        out.push_str(&format!(
            "{} {} datapoints to namespace {}; {} new counters recorded as baseline\n",
            if self.dry_run {
                "would publish"
            } else {
                "published"
            },
            self.datums.len(),
            self.namespace,
            self.baselined
        ));
        out
    }
}

/// Evaluates the error-rate gate of `metrics gate` over the last `window` (a whole number of
/// minutes): API Gateway 5XXError/Count (`--api-name`) or Lambda Errors/Invocations
/// (`--function`), plus the average latency when `max_latency_ms` is given. Runs when the
/// command or a plan's `cloudwatch` gate asks; an `Err` means the figures could not be read
/// (never an open gate).
pub async fn gate(
    aws_args: &AwsArgs,
    target: &Target,
    max_error_rate: f64,
    max_latency_ms: Option<f64>,
    min_requests: f64,
    window: Duration,
) -> Result<GateResult> {
    let (errors_name, requests_name, latency_name) = if target.api_name.is_some() {
        ("5XXError", "Count", "Latency")
    } else if target.function.is_some() {
        ("Errors", "Invocations", "Duration")
    } else {
        return Err(CloudWatchError::GateTarget);
    };
    let window_s = whole_minutes(window).ok_or(CloudWatchError::Window(window))?;
    let em = resolve(target, errors_name, Some("Sum"))?;
    let rm = resolve(target, requests_name, Some("Sum"))?;
    let lm = resolve(target, latency_name, Some("Average"))?;
    let mut queries = vec![
        query("errors", &em, window_s),
        query("requests", &rm, window_s),
    ];
    if max_latency_ms.is_some() {
        queries.push(query("latency", &lm, window_s));
    }
    let conf = aws::load(aws_args).await;
    let client = Client::new(&conf);
    let (data, _, _) = fetch(&client, queries, window).await?;
    // fold from +0.0: `sum` of no floats is -0.0, which would print as "-0".
    let sum = |id: &str| {
        data.get(id)
            .map_or(0.0, |s| s.iter().fold(0.0, |acc, (_, v)| acc + v))
    };
    let requests = sum("requests");
    let errors = sum("errors");
    let latency = data
        .get("latency")
        .filter(|s| !s.is_empty())
        .map(|s| s.iter().fold(0.0, |acc, (_, v)| acc + v) / s.len() as f64);
    let (pass, rate, reasons) = judge(
        requests,
        errors,
        latency,
        max_error_rate,
        max_latency_ms,
        min_requests,
    );
    Ok(GateResult {
        pass,
        window_secs: window.as_secs(),
        requests,
        errors,
        error_rate: rate,
        max_error_rate,
        latency_ms: latency,
        max_latency_ms,
        reasons,
        errors_metric: em,
        requests_metric: rm,
    })
}

/// Runs one `metrics` action. `gate`'s exit code is 0 (open) or 1 (closed); failures to read
/// the metrics are errors (exit 2), never an open gate.
pub async fn run(args: Args) -> Result<Output> {
    let json = args.aws.json;
    match args.cmd {
        Command::Query {
            target,
            metric,
            stat,
            window,
            period,
        } => {
            let m = resolve(&target, &metric, stat.as_deref())?;
            let period_s = whole_minutes(period).ok_or(CloudWatchError::Period(period))?;
            let window_s = whole_minutes(window).ok_or(CloudWatchError::Window(window))?;
            let conf = aws::load(&args.aws).await;
            let client = Client::new(&conf);
            let (data, start, end) = fetch(
                &client,
                vec![query("series", &m, period_s), query("total", &m, window_s)],
                window,
            )
            .await?;
            let series = data.get("series").cloned().unwrap_or_default();
            let total = data.get("total").and_then(|s| s.first()).map(|(_, v)| *v);
            let r = QueryResult {
                metric: m,
                window_secs: window.as_secs(),
                period_secs: period_s,
                start: ts(start),
                end: ts(end),
                datapoints: series.into_iter().map(|(t, v)| (ts(t), v)).collect(),
                total,
            };
            Ok(Output::new(json, &r, QueryResult::human))
        }
        Command::Gate {
            target,
            max_error_rate,
            max_latency_ms,
            min_requests,
            window,
        } => {
            let g = gate(
                &args.aws,
                &target,
                max_error_rate,
                max_latency_ms,
                min_requests,
                window,
            )
            .await?;
            let pass = g.pass;
            Ok(Output::new(json, &g, GateResult::human).with_code(if pass { 0 } else { 1 }))
        }
        Command::Publish {
            from,
            namespace,
            state_dir,
            dry_run,
        } => {
            let text = read_source(&from).await?;
            let counters = route_counters(parse_prometheus(&text)?);
            let path = publish_state_path(state_dir.as_ref());
            let mut st: PublishState = match &path {
                Some(p) => match std::fs::read_to_string(p) {
                    Ok(t) => serde_json::from_str(&t)
                        .map_err(|e| CloudWatchError::State(p.clone(), e.to_string()))?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => PublishState::default(),
                    Err(e) => return Err(CloudWatchError::State(p.clone(), e.to_string())),
                },
                None => PublishState::default(),
            };
            let prev = st.counters.get(&namespace).cloned().unwrap_or_default();
            let ds = deltas(&counters, &prev);
            let baselined = counters.len() - ds.len();
            let now = DateTime::from(std::time::SystemTime::now());
            let datums: Vec<MetricDatum> = ds
                .iter()
                .map(|(s, d)| {
                    MetricDatum::builder()
                        .metric_name(&s.name)
                        .set_dimensions(Some(
                            s.labels
                                .iter()
                                .take(30)
                                .map(|(k, v)| Dimension::builder().name(k).value(v).build())
                                .collect(),
                        ))
                        .value(*d)
                        .unit(StandardUnit::Count)
                        .timestamp(now)
                        .build()
                })
                .collect();
            if !dry_run {
                let conf = aws::load(&args.aws).await;
                let client = Client::new(&conf);
                for chunk in datums.chunks(500) {
                    client
                        .put_metric_data()
                        .namespace(&namespace)
                        .set_metric_data(Some(chunk.to_vec()))
                        .send()
                        .await
                        .map_err(|e| aws::classify("PutMetricData", e))?;
                }
                // Only after every batch was accepted, so a failure republishes next time.
                if let Some(p) = &path {
                    st.counters.insert(
                        namespace.clone(),
                        counters.iter().map(|s| (sample_key(s), s.value)).collect(),
                    );
                    if let Some(dir) = p.parent() {
                        std::fs::create_dir_all(dir)
                            .map_err(|e| CloudWatchError::State(p.clone(), e.to_string()))?;
                    }
                    let text = serde_json::to_string_pretty(&st)
                        .map_err(|e| CloudWatchError::State(p.clone(), e.to_string()))?;
                    std::fs::write(p, text)
                        .map_err(|e| CloudWatchError::State(p.clone(), e.to_string()))?;
                }
            }
            let out = Published {
                namespace,
                datums: ds
                    .into_iter()
                    .map(|(s, d)| PublishedDatum {
                        metric: s.name,
                        dimensions: s.labels,
                        increase: d,
                    })
                    .collect(),
                baselined,
                dry_run,
            };
            Ok(Output::new(json, &out, Published::human))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_judgement() {
        assert!(judge(1000.0, 5.0, None, 1.0, None, 1.0).0);
        let (pass, rate, reasons) = judge(1000.0, 20.0, None, 1.0, None, 1.0);
        assert!(!pass);
        assert_eq!(rate, Some(2.0));
        assert_eq!(reasons.len(), 1);
        let (pass, rate, _) = judge(0.0, 0.0, None, 1.0, None, 1.0);
        assert!(!pass);
        assert_eq!(rate, None);
        assert!(!judge(10.0, 0.0, Some(900.0), 1.0, Some(500.0), 1.0).0);
        assert!(!judge(10.0, 0.0, None, 1.0, Some(500.0), 1.0).0);
    }

    #[test]
    fn presets() {
        let t = Target {
            api_name: Some("shop".into()),
            stage: Some("prod".into()),
            function: None,
            namespace: None,
            dimensions: vec![],
        };
        let m = resolve(&t, "Latency", None).unwrap();
        assert_eq!(m.namespace, "AWS/ApiGateway");
        assert_eq!(m.stat, "Average");
        assert_eq!(m.dimensions.len(), 2);
        assert_eq!(resolve(&t, "5XXError", None).unwrap().stat, "Sum");
    }

    #[test]
    fn prometheus_and_deltas() {
        let text = "# HELP x\n# TYPE switchyard_requests_total counter\nswitchyard_requests_total{route=\"api\",status_class=\"5xx\"} 7\nswitchyard_requests_total{route=\"a\\\"b\"} 3 1700000000\nother_total 4\nswitchyard_up{route=\"api\"} 1\n";
        let s = route_counters(parse_prometheus(text).unwrap());
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].labels[0].1, "a\"b");
        let prev: BTreeMap<String, f64> =
            [(sample_key(&s[0]), 5.0), (sample_key(&s[1]), 10.0)].into();
        let d = deltas(&s, &prev);
        assert_eq!(d[0].1, 2.0);
        assert_eq!(d[1].1, 3.0, "a counter that went down was reset");
        assert!(deltas(&s, &BTreeMap::new()).is_empty());
        assert!(parse_prometheus("x{route=\"a} 1").is_err());
    }
}
