//! Plan gates: each evaluation returns a figure and its threshold, and the verdict is computed
//! from them. switchyard's own gates (`error_rate`, `latency_p99`) diff successive readings of
//! the proxy's per-upstream attempt counters from `GET /metrics`; `cloudwatch` runs what
//! `switchyard metrics gate` runs; `prometheus` asks a Prometheus server's `/api/v1/query`.
//!
//! A gate without enough data has no verdict yet (`pending`); a gate that cannot be evaluated
//! (`error`) turns into a failure once it has been failing for its grace.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::admin::client::AdminClient;
use crate::admin::types::{GateFigure, RouteShadowView, ShadowView};
use crate::control::aws::{human_duration, AwsArgs};
use crate::control::cloudwatch::{self, Sample, Target};

/// Default `min_requests` of switchyard's own gates.
pub const DEFAULT_MIN_REQUESTS: u64 = 10;
/// Longest a Prometheus query may take.
const PROM_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a gate could not be evaluated.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("reading the proxy's metrics: {0}")]
    Metrics(String),
    #[error("CloudWatch: {0}")]
    CloudWatch(String),
    #[error("Prometheus {url}: {message}")]
    Prometheus { url: String, message: String },
    #[error("shadow results: {0}")]
    Shadow(String),
}

/// What a gate measures. New kinds (a `shadow_match` gate comparing answers) are new variants
/// here, in [`super::file::GateFile`] and in [`Gates::evaluate`].
#[derive(Debug, Clone)]
pub enum GateKind {
    /// Failed attempts / attempts of `to` on `route` over `window`; fails above `max`.
    ErrorRate {
        max: f64,
        min_requests: u64,
        window: Duration,
    },
    /// p99 of `to`'s attempt durations on `route` over `window`, in ms; fails above `max_ms`.
    LatencyP99 {
        max_ms: f64,
        min_requests: u64,
        window: Duration,
    },
    /// `switchyard metrics gate`: the error rate in percent; fails above `max_error_rate`, or
    /// when the average latency is above `max_latency_ms`.
    CloudWatch {
        target: Target,
        max_error_rate: f64,
        max_latency_ms: Option<f64>,
        min_requests: f64,
        window: Duration,
    },
    /// Matching shadow answers / compared shadow answers of the plan's route since the proxy
    /// started; fails below `min_rate`, no verdict below `min_compared`.
    ShadowMatch { min_rate: f64, min_compared: u64 },
    /// A PromQL expression's first value; fails above `max` or below `min`.
    Prometheus {
        url: String,
        query: String,
        max: Option<f64>,
        min: Option<f64>,
    },
}

/// A checked gate.
#[derive(Debug, Clone)]
pub struct Gate {
    /// `error_rate`, `latency_p99`, `cloudwatch:NAME`, `prometheus`.
    pub name: String,
    pub kind: GateKind,
    /// How long the gate may be impossible to evaluate before it counts as failed.
    pub grace: Duration,
}

impl Gate {
    /// A gate named after its kind.
    pub fn new(kind: GateKind, grace: Duration) -> Gate {
        let name = match &kind {
            GateKind::ErrorRate { .. } => "error_rate".to_string(),
            GateKind::LatencyP99 { .. } => "latency_p99".to_string(),
            GateKind::CloudWatch { target, .. } => format!(
                "cloudwatch:{}",
                target
                    .api_name
                    .as_deref()
                    .or(target.function.as_deref())
                    .unwrap_or("?")
            ),
            GateKind::Prometheus { .. } => "prometheus".to_string(),
            GateKind::ShadowMatch { .. } => "shadow_match".to_string(),
        };
        Gate { name, kind, grace }
    }

    /// The threshold shown next to the figure, and its unit.
    fn threshold(&self) -> (f64, &'static str) {
        match &self.kind {
            GateKind::ErrorRate { max, .. } => (*max, "ratio"),
            GateKind::LatencyP99 { max_ms, .. } => (*max_ms, "ms"),
            GateKind::CloudWatch { max_error_rate, .. } => (*max_error_rate, "%"),
            GateKind::Prometheus { max, min, .. } => (max.or(*min).unwrap_or(0.0), ""),
            GateKind::ShadowMatch { min_rate, .. } => (*min_rate, "ratio"),
        }
    }
}

/// A gate's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    /// Not enough data for a verdict yet.
    Pending,
    /// Could not be evaluated; within the grace.
    Error,
}

impl Verdict {
    /// The name shown in figures and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Pending => "pending",
            Verdict::Error => "error",
        }
    }
}

/// The `shadow_match` verdict from one route's shadow counts: (figure, verdict, detail).
fn judge_shadow(
    r: Option<&RouteShadowView>,
    min_rate: f64,
    min_compared: u64,
) -> (Option<f64>, Verdict, String) {
    let count = |k: &str| r.and_then(|r| r.counts.get(k)).copied().unwrap_or(0);
    let matched = count("match");
    let compared =
        matched + count("status_mismatch") + count("header_mismatch") + count("body_mismatch");
    let detail = format!(
        "{matched} of {compared} compared shadow answers matched ({} shadow errors, {} skipped)",
        count("shadow_error"),
        count("skipped")
    );
    if compared < min_compared {
        let rate = (compared > 0).then(|| matched as f64 / compared as f64);
        return (
            rate,
            Verdict::Pending,
            format!("{detail}; at least {min_compared} for a verdict"),
        );
    }
    let rate = matched as f64 / compared as f64;
    let v = if rate >= min_rate {
        Verdict::Pass
    } else {
        Verdict::Fail
    };
    (Some(rate), v, detail)
}

/// One reading of `to`'s attempt counters on `route`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    pub attempts: f64,
    pub failed: f64,
    /// Cumulative histogram buckets: (upper bound in seconds, count), ascending, `+Inf` last.
    pub buckets: Vec<(f64, f64)>,
}

/// Extracts `to`'s reading on `route` from the proxy's metrics text.
pub fn reading(samples: &[Sample], route: &str, to: &str) -> Reading {
    let mut r = Reading::default();
    let ours = |s: &Sample| {
        let mut ro = false;
        let mut up = false;
        for (k, v) in &s.labels {
            ro |= k == "route" && v == route;
            up |= k == "upstream" && v == to;
        }
        ro && up
    };
    for s in samples.iter().filter(|s| ours(s)) {
        if s.name == "switchyard_upstream_attempts_total" {
            r.attempts += s.value;
            let outcome = s
                .labels
                .iter()
                .find(|(k, _)| k == "outcome")
                .map_or("", |(_, v)| v.as_str());
            if outcome != "ok" {
                r.failed += s.value;
            }
        } else if s.name == "switchyard_upstream_attempt_duration_seconds_bucket" {
            let le = s.labels.iter().find(|(k, _)| k == "le").map(|(_, v)| {
                if v == "+Inf" {
                    f64::INFINITY
                } else {
                    v.parse().unwrap_or(f64::INFINITY)
                }
            });
            if let Some(le) = le {
                r.buckets.push((le, s.value));
            }
        }
    }
    r.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    r
}

impl Reading {
    /// `self - base`; a counter that went down was reset (proxy restart), so all of it is new.
    pub fn since(&self, base: &Reading) -> Reading {
        let d = |now: f64, then: f64| if now >= then { now - then } else { now };
        let buckets_reset = self.attempts < base.attempts;
        Reading {
            attempts: d(self.attempts, base.attempts),
            failed: d(self.failed, base.failed),
            buckets: self
                .buckets
                .iter()
                .map(|(le, c)| {
                    let then = base
                        .buckets
                        .iter()
                        .find(|(l, _)| l == le)
                        .map_or(0.0, |(_, c)| *c);
                    (*le, if buckets_reset { *c } else { d(*c, then) })
                })
                .collect(),
        }
    }

    /// The `q` quantile of the histogram in milliseconds, interpolated within its bucket as
    /// Prometheus' `histogram_quantile` does; `None` without observations.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last().map(|(_, c)| *c)?;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut prev = (0.0, 0.0);
        for &(le, c) in &self.buckets {
            if c >= rank {
                if le.is_infinite() {
                    return Some(prev.0 * 1000.0);
                }
                let in_bucket = c - prev.1;
                let frac = if in_bucket > 0.0 {
                    (rank - prev.1) / in_bucket
                } else {
                    1.0
                };
                return Some((prev.0 + (le - prev.0) * frac) * 1000.0);
            }
            prev = (le, c);
        }
        Some(prev.0 * 1000.0)
    }
}

/// A gate's evaluation history within one run.
#[derive(Debug, Default)]
struct GateState {
    /// Readings newer than the window (and one older, the base), oldest first.
    readings: VecDeque<(Instant, Reading)>,
    /// When the gate started failing to evaluate.
    error_since: Option<Instant>,
}

/// The plan's gates and what they have seen.
pub struct Gates {
    pub gates: Vec<Gate>,
    states: Vec<GateState>,
    route: String,
    to: String,
    aws: AwsArgs,
}

fn window_of(k: &GateKind) -> Option<Duration> {
    match k {
        GateKind::ErrorRate { window, .. } | GateKind::LatencyP99 { window, .. } => Some(*window),
        _ => None,
    }
}

impl Gates {
    /// The gates of a plan moving `route` to `to`.
    pub fn new(gates: Vec<Gate>, route: &str, to: &str) -> Gates {
        let states = gates.iter().map(|_| GateState::default()).collect();
        Gates {
            gates,
            states,
            route: route.to_string(),
            to: to.to_string(),
            aws: AwsArgs {
                endpoint_url: std::env::var("AWS_ENDPOINT_URL")
                    .ok()
                    .filter(|v| !v.is_empty()),
                region: None,
                max_attempts: 3,
                json: false,
            },
        }
    }

    fn needs_metrics(&self) -> bool {
        self.gates.iter().any(|g| window_of(&g.kind).is_some())
    }

    async fn read_metrics(&self, client: &AdminClient) -> Result<Reading, String> {
        let text = client.metrics_text().await.map_err(|e| e.to_string())?;
        let samples = cloudwatch::parse_prometheus(&text).map_err(|e| e.to_string())?;
        Ok(reading(&samples, &self.route, &self.to))
    }

    /// Forgets earlier readings and takes a new base, so the next evaluation judges only
    /// what happened from now (called when a weight is applied).
    pub async fn baseline(&mut self, client: &AdminClient) {
        if !self.needs_metrics() {
            return;
        }
        let r = self.read_metrics(client).await;
        let now = Instant::now();
        for (g, st) in self.gates.iter().zip(&mut self.states) {
            st.readings.clear();
            if window_of(&g.kind).is_some() {
                if let Ok(r) = &r {
                    st.readings.push_back((now, r.clone()));
                }
            }
        }
    }

    /// Evaluates every gate once; never fails (a gate that cannot be evaluated says so in its
    /// figure, and fails once past its grace).
    pub async fn evaluate(&mut self, client: &AdminClient) -> Vec<GateFigure> {
        let metrics = if self.needs_metrics() {
            Some(self.read_metrics(client).await)
        } else {
            None
        };
        let now = Instant::now();
        let mut out = Vec::with_capacity(self.gates.len());
        for i in 0..self.gates.len() {
            let gate = self.gates[i].clone();
            let result = match &gate.kind {
                GateKind::ErrorRate { .. } | GateKind::LatencyP99 { .. } => match &metrics {
                    Some(Ok(r)) => Ok(self.judge_own(i, now, r.clone())),
                    Some(Err(e)) => Err(GateError::Metrics(e.clone())),
                    None => Err(GateError::Metrics("not read".into())),
                },
                GateKind::CloudWatch {
                    target,
                    max_error_rate,
                    max_latency_ms,
                    min_requests,
                    window,
                } => cloudwatch::gate(
                    &self.aws,
                    target,
                    *max_error_rate,
                    *max_latency_ms,
                    *min_requests,
                    *window,
                )
                .await
                .map_err(|e| GateError::CloudWatch(e.to_string()))
                .map(|g| {
                    let figure = g.error_rate;
                    if g.requests < *min_requests {
                        (
                            figure,
                            Verdict::Pending,
                            format!(
                                "{} requests over {} (at least {min_requests} for a verdict)",
                                g.requests,
                                human_duration(*window)
                            ),
                        )
                    } else {
                        let mut detail = format!(
                            "{} errors / {} requests over {}",
                            g.errors,
                            g.requests,
                            human_duration(*window)
                        );
                        if let Some(l) = g.latency_ms {
                            detail.push_str(&format!("; latency {l:.1} ms"));
                        }
                        if !g.reasons.is_empty() {
                            detail.push_str(&format!("; {}", g.reasons.join("; ")));
                        }
                        let v = if g.pass { Verdict::Pass } else { Verdict::Fail };
                        (figure, v, detail)
                    }
                }),
                GateKind::ShadowMatch {
                    min_rate,
                    min_compared,
                } => client
                    .get::<ShadowView>(&format!("/v1/shadow/{}", self.route))
                    .await
                    .map_err(|e| GateError::Shadow(e.to_string()))
                    .map(|v| judge_shadow(v.routes.get(&self.route), *min_rate, *min_compared)),
                GateKind::Prometheus {
                    url,
                    query,
                    max,
                    min,
                } => prometheus_query(url, query).await.map(|v| match v {
                    None => (
                        None,
                        Verdict::Pending,
                        "the query returned no samples".into(),
                    ),
                    Some(x) => {
                        let over = max.is_some_and(|m| x > m);
                        let under = min.is_some_and(|m| x < m);
                        let mut detail = String::new();
                        if let Some(m) = max {
                            detail.push_str(&format!("max {m}"));
                        }
                        if let Some(m) = min {
                            if !detail.is_empty() {
                                detail.push_str(", ");
                            }
                            detail.push_str(&format!("min {m}"));
                        }
                        let v = if over || under {
                            Verdict::Fail
                        } else {
                            Verdict::Pass
                        };
                        (Some(x), v, detail)
                    }
                }),
            };
            let st = &mut self.states[i];
            let (threshold, unit) = gate.threshold();
            let (figure, verdict, detail) = match result {
                Ok((f, v, d)) => {
                    st.error_since = None;
                    (f, v, d)
                }
                Err(e) => {
                    let since = *st.error_since.get_or_insert(now);
                    let failing = now.duration_since(since);
                    if failing >= gate.grace {
                        (
                            None,
                            Verdict::Fail,
                            format!(
                                "cannot be evaluated for {} (grace {}): {e}",
                                human_duration(failing),
                                human_duration(gate.grace)
                            ),
                        )
                    } else {
                        (
                            None,
                            Verdict::Error,
                            format!(
                                "cannot be evaluated ({} of grace {} used): {e}",
                                human_duration(failing),
                                human_duration(gate.grace)
                            ),
                        )
                    }
                }
            };
            out.push(GateFigure {
                name: gate.name.clone(),
                figure,
                threshold,
                unit: unit.to_string(),
                verdict: verdict.as_str().to_string(),
                detail,
            });
        }
        out
    }

    /// Judges gate `i` (one of switchyard's own) from a new reading.
    fn judge_own(&mut self, i: usize, now: Instant, r: Reading) -> (Option<f64>, Verdict, String) {
        let gate = &self.gates[i];
        let Some(window) = window_of(&gate.kind) else {
            return (None, Verdict::Error, "not a metrics gate".into());
        };
        let st = &mut self.states[i];
        st.readings.push_back((now, r.clone()));
        // Keep one reading at or before the window's start (the base) and those after it.
        while st.readings.len() > 2
            && st
                .readings
                .get(1)
                .is_some_and(|(t, _)| now.duration_since(*t) >= window)
        {
            st.readings.pop_front();
        }
        let Some((t0, base)) = st.readings.front().filter(|_| st.readings.len() > 1) else {
            return (None, Verdict::Pending, "first reading taken".into());
        };
        let span = now.duration_since(*t0);
        let d = r.since(base);
        let over = human_duration(span);
        match &gate.kind {
            GateKind::ErrorRate {
                max, min_requests, ..
            } => {
                let rate = (d.attempts > 0.0).then(|| d.failed / d.attempts);
                if d.attempts < *min_requests as f64 {
                    return (
                        rate,
                        Verdict::Pending,
                        format!(
                            "{} attempts over {over} (at least {min_requests} for a verdict)",
                            d.attempts
                        ),
                    );
                }
                let rate = rate.unwrap_or(0.0);
                let v = if rate > *max {
                    Verdict::Fail
                } else {
                    Verdict::Pass
                };
                (
                    Some(rate),
                    v,
                    format!("{} failed / {} attempts over {over}", d.failed, d.attempts),
                )
            }
            GateKind::LatencyP99 {
                max_ms,
                min_requests,
                ..
            } => {
                let p99 = d.quantile_ms(0.99);
                if d.attempts < *min_requests as f64 {
                    return (
                        p99,
                        Verdict::Pending,
                        format!(
                            "{} attempts over {over} (at least {min_requests} for a verdict)",
                            d.attempts
                        ),
                    );
                }
                match p99 {
                    None => (None, Verdict::Pending, "no timed attempts".into()),
                    Some(p) => {
                        let v = if p > *max_ms {
                            Verdict::Fail
                        } else {
                            Verdict::Pass
                        };
                        (Some(p), v, format!("{} attempts over {over}", d.attempts))
                    }
                }
            }
            _ => (None, Verdict::Error, "not a metrics gate".into()),
        }
    }
}

#[derive(Debug, Deserialize)]
struct PromResponse {
    status: String,
    #[serde(default)]
    data: Option<PromData>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PromData {
    #[serde(rename = "resultType")]
    result_type: String,
    result: serde_json::Value,
}

#[derive(Debug, Deserialize)]
struct PromSample {
    value: (f64, String),
}

/// The first value of a PromQL instant query (`vector` or `scalar`); `None` for no samples.
pub async fn prometheus_query(url: &str, query: &str) -> Result<Option<f64>, GateError> {
    let err = |message: String| GateError::Prometheus {
        url: url.to_string(),
        message,
    };
    let full = format!("{url}/api/v1/query?query={}", encode_query(query));
    let (status, body) = http_get(&full).await.map_err(err)?;
    let resp: PromResponse = serde_json::from_str(&body)
        .map_err(|e| err(format!("HTTP {status}, not a Prometheus answer ({e})")))?;
    if resp.status != "success" {
        return Err(err(format!(
            "HTTP {status}: {}",
            resp.error.unwrap_or_else(|| resp.status.clone())
        )));
    }
    let data = resp
        .data
        .ok_or_else(|| err("no `data` in the answer".into()))?;
    let text = match data.result_type.as_str() {
        "vector" => {
            let v: Vec<PromSample> = serde_json::from_value(data.result)
                .map_err(|e| err(format!("vector result: {e}")))?;
            match v.into_iter().next() {
                Some(s) => s.value.1,
                None => return Ok(None),
            }
        }
        "scalar" => {
            let (_, v): (f64, String) = serde_json::from_value(data.result)
                .map_err(|e| err(format!("scalar result: {e}")))?;
            v
        }
        other => {
            return Err(err(format!(
                "result type {other:?}: the query must give a scalar or an instant vector"
            )))
        }
    };
    let x: f64 = text
        .parse()
        .map_err(|_| err(format!("value {text:?} is not a number")))?;
    Ok((!x.is_nan()).then_some(x))
}

/// Percent-encodes a query string value.
fn encode_query(q: &str) -> String {
    let mut out = String::with_capacity(q.len() * 3);
    for b in q.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A GET through the crate's HTTP client (no admin token: this is not the admin API).
async fn http_get(url: &str) -> Result<(u16, String), String> {
    let (base, path) = match url
        .strip_prefix("http://")
        .and_then(|r| r.find('/').map(|i| i + 7))
    {
        Some(i) => (&url[..i], &url[i..]),
        None => (url, "/"),
    };
    let c = AdminClient::new(base)
        .map_err(|e| e.to_string())?
        .with_token(None)
        .with_timeout(PROM_TIMEOUT);
    c.raw(http::Method::GET, path, None, None)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_match_verdicts() {
        let view = |m: u64, mism: u64| RouteShadowView {
            counts: [
                ("match".to_string(), m),
                ("body_mismatch".to_string(), mism),
                ("skipped".to_string(), 5),
            ]
            .into(),
            ..Default::default()
        };
        let (f, v, d) = judge_shadow(Some(&view(95, 5)), 0.9, 20);
        assert_eq!((f, v), (Some(0.95), Verdict::Pass), "{d}");
        assert!(d.contains("95 of 100") && d.contains("5 skipped"), "{d}");
        let (f, v, _) = judge_shadow(Some(&view(80, 20)), 0.9, 20);
        assert_eq!((f, v), (Some(0.8), Verdict::Fail));
        // Too few compared: no verdict, skips do not count as compared.
        let (f, v, d) = judge_shadow(Some(&view(3, 1)), 0.9, 20);
        assert_eq!((f, v), (Some(0.75), Verdict::Pending), "{d}");
        let (f, v, _) = judge_shadow(None, 0.9, 20);
        assert_eq!((f, v), (None, Verdict::Pending));
        let g = Gate::new(
            GateKind::ShadowMatch {
                min_rate: 0.99,
                min_compared: 20,
            },
            Duration::from_secs(30),
        );
        assert_eq!(g.name, "shadow_match");
        assert_eq!(g.threshold(), (0.99, "ratio"));
    }

    fn samples(text: &str) -> Vec<Sample> {
        cloudwatch::parse_prometheus(text).unwrap()
    }

    #[test]
    fn reading_counts_failed_attempts_of_to_only() {
        let s = samples(
            "switchyard_upstream_attempts_total{route=\"users\",upstream=\"new\",outcome=\"ok\"} 90\n\
             switchyard_upstream_attempts_total{route=\"users\",upstream=\"new\",outcome=\"5xx\"} 7\n\
             switchyard_upstream_attempts_total{route=\"users\",upstream=\"new\",outcome=\"timeout\"} 3\n\
             switchyard_upstream_attempts_total{route=\"users\",upstream=\"legacy\",outcome=\"5xx\"} 50\n\
             switchyard_upstream_attempts_total{route=\"orders\",upstream=\"new\",outcome=\"5xx\"} 50\n",
        );
        let r = reading(&s, "users", "new");
        assert_eq!((r.attempts, r.failed), (100.0, 10.0));
    }

    #[test]
    fn quantiles_interpolate_and_handle_resets() {
        let r = Reading {
            attempts: 100.0,
            failed: 0.0,
            buckets: vec![
                (0.1, 50.0),
                (0.5, 90.0),
                (1.0, 100.0),
                (f64::INFINITY, 100.0),
            ],
        };
        // rank 99 is 9/10 of the way through the (0.5, 1.0] bucket.
        let p = r.quantile_ms(0.99).unwrap();
        assert!((p - 950.0).abs() < 1e-6, "{p}");
        let base = Reading {
            attempts: 40.0,
            failed: 0.0,
            buckets: vec![(0.1, 40.0), (0.5, 40.0), (1.0, 40.0), (f64::INFINITY, 40.0)],
        };
        let d = r.since(&base);
        assert_eq!(d.attempts, 60.0);
        assert_eq!(d.buckets[0].1, 10.0);
        // A proxy restart: counters lower than before are all new.
        let d = base.since(&r);
        assert_eq!(d.attempts, 40.0);
        assert_eq!(Reading::default().quantile_ms(0.99), None);
    }

    #[test]
    fn query_encoding() {
        assert_eq!(
            encode_query("sum(rate(x[5m]))"),
            "sum%28rate%28x%5B5m%5D%29%29"
        );
    }
}
