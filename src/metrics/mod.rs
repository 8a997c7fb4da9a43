//! Every Prometheus metric switchyard exports, registered in one place. Labels are bounded:
//! route ids, upstream names, status classes and fixed reasons, never raw paths or addresses.
//! Beside them, in memory only: the charts' history ([`series`]) and requests per Host
//! ([`traffic`]).

pub mod series;
pub mod traffic;

use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The process's metrics.
pub struct Metrics {
    pub registry: Registry,
    /// `switchyard_requests_total{route,upstream,code}`; `code` is `1xx`..`5xx`.
    pub requests: IntCounterVec,
    /// `switchyard_request_duration_seconds{route,upstream}`.
    pub duration: HistogramVec,
    /// `switchyard_route_table_version`.
    pub table_version: IntGauge,
    /// `switchyard_reloads_total{result}`; `result` is `ok`, `error`, `conflict` (refused: it would
    /// undo an admin API change) or `unchanged`.
    pub reloads: IntCounterVec,
    /// `switchyard_upstream_healthy{upstream}`: 1 healthy, 0 unhealthy (active checks).
    pub upstream_healthy: IntGaugeVec,
    /// `switchyard_upstream_ejections_total{upstream}`: passive outlier ejections.
    pub ejections: IntCounterVec,
    /// `switchyard_fallbacks_total{route,from,to,reason}`.
    pub fallbacks: IntCounterVec,
    /// `switchyard_access_log_dropped_total`: lines dropped because the writer fell behind.
    pub access_log_dropped: IntCounter,
    /// `switchyard_rejected_total{reason}`: requests answered by switchyard itself before any
    /// upstream saw them (`hold_queue_full`, `hold_expired`, the request limits' reasons in
    /// `proxy::limits`: `head_too_large`, `url_too_long`, `body_too_large`, ...), and client
    /// connections switchyard closed (`head_timeout`, `body_too_slow`, `connection_cap`, ...).
    pub rejected: IntCounterVec,
    /// `switchyard_websocket_connections_total{route}`: connections upgraded (101) through a route.
    pub websocket_connections: IntCounterVec,
    /// `switchyard_websocket_active`: upgraded connections open now.
    pub websocket_active: IntGauge,
    /// `switchyard_shadow_total{route,result}`; `result` is one of [`SHADOW_RESULTS`].
    pub shadow: IntCounterVec,
    /// `switchyard_shadow_duration_seconds{route,side}`; `side` is `primary` or `shadow`,
    /// observed for each compared pair.
    pub shadow_duration: HistogramVec,
    /// `switchyard_upstream_attempts_total{route,upstream,outcome}`: every attempt at an
    /// upstream, whoever finally answered the client; `outcome` is one of [`ATTEMPT_OUTCOMES`].
    /// Plan gates judge a backend by these, not by what the client saw after a fallback.
    pub attempts: IntCounterVec,
    /// `switchyard_upstream_attempt_duration_seconds{route,upstream}`: from choosing the
    /// upstream to its response head (or the attempt's failure).
    pub attempt_duration: HistogramVec,
    /// `switchyard_fleet_nodes`: live nodes of the fleet as this node sees them (fleet mode).
    pub fleet_nodes: IntGauge,
    /// `switchyard_fleet_converged`: 1 when every live node serves the fleet's newest version.
    pub fleet_converged: IntGauge,
    /// `switchyard_fleet_version_lag{node}`: versions a live node is behind the fleet's newest.
    pub fleet_version_lag: IntGaugeVec,
    /// `switchyard_fleet_etcd_up`: 1 while this node reaches etcd; 0 while it serves its last
    /// table without it (changes are then refused).
    pub fleet_etcd_up: IntGauge,
    /// `switchyard_fleet_propagation_seconds`: from a version's commit in etcd (its recorded
    /// time) to this node serving it, for versions committed by other nodes.
    pub fleet_propagation: Histogram,
    /// `switchyard_fleet_resyncs_total{reason}`: full re-reads of the fleet's state after the
    /// watch stopped; `reason` is `cancelled` (by etcd, e.g. its revision was compacted),
    /// `ended` or `error` (etcd unreachable, or an error answer).
    pub fleet_resyncs: IntCounterVec,
    /// `switchyard_tls_cert_expiry_seconds{name}`: seconds until each loaded certificate's
    /// `not_after` (negative once expired); refreshed on every reload and every 10 s.
    pub tls_cert_expiry: IntGaugeVec,
    /// `switchyard_tls_cert_reload_errors_total{name}`: certificate pairs rejected on load or
    /// reload (unreadable, unparsable, key not matching the certificate); `name` is the pair's
    /// file stem in the certificate directory.
    pub tls_cert_reload_errors: IntCounterVec,
}

/// `result` label values of `switchyard_shadow_total`, indexed by `proxy::shadow::Outcome`.
pub const SHADOW_RESULTS: [&str; 6] = [
    "match",
    "status_mismatch",
    "header_mismatch",
    "body_mismatch",
    "shadow_error",
    "skipped",
];

/// The process-wide metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Status class label values, indexed by `status / 100 - 1` (anything else counts as `5xx`).
pub const CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Upper bounds (seconds) of `switchyard_request_duration_seconds`' buckets.
pub const BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Outcome label values of `switchyard_upstream_attempts_total`: a response below 500, a 5xx
/// response, a connect or protocol error, a timeout (connect, read or write).
pub const ATTEMPT_OUTCOMES: [&str; 4] = ["ok", "5xx", "error", "timeout"];

/// How one attempt at an upstream ended; the index into [`ATTEMPT_OUTCOMES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    Ok = 0,
    Status5xx = 1,
    Error = 2,
    Timeout = 3,
}

impl AttemptOutcome {
    /// The outcome of an attempt that got a response head with `status`.
    pub fn of_status(status: u16) -> AttemptOutcome {
        if status >= 500 {
            AttemptOutcome::Status5xx
        } else {
            AttemptOutcome::Ok
        }
    }
}

/// Index into [`CODE_CLASSES`] for a status code.
#[inline]
pub fn code_class(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "switchyard_requests_total",
                "Requests answered, by route, upstream and status class.",
            ),
            &["route", "upstream", "code"],
        )
        .expect("static metric definition");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_request_duration_seconds",
                "Time from request start to the end of the response.",
            )
            .buckets(BUCKETS.to_vec()),
            &["route", "upstream"],
        )
        .expect("static metric definition");
        let table_version = IntGauge::new(
            "switchyard_route_table_version",
            "Version of the live route table.",
        )
        .expect("static metric definition");
        let reloads = IntCounterVec::new(
            Opts::new(
                "switchyard_reloads_total",
                "Route table reloads from files, by result.",
            ),
            &["result"],
        )
        .expect("static metric definition");
        let upstream_healthy = IntGaugeVec::new(
            Opts::new(
                "switchyard_upstream_healthy",
                "1 when the upstream passes its active health checks.",
            ),
            &["upstream"],
        )
        .expect("static metric definition");
        let ejections = IntCounterVec::new(
            Opts::new(
                "switchyard_upstream_ejections_total",
                "Passive outlier ejections.",
            ),
            &["upstream"],
        )
        .expect("static metric definition");
        let fallbacks = IntCounterVec::new(
            Opts::new(
                "switchyard_fallbacks_total",
                "Requests moved from one upstream to another.",
            ),
            &["route", "from", "to", "reason"],
        )
        .expect("static metric definition");
        let access_log_dropped = IntCounter::new(
            "switchyard_access_log_dropped_total",
            "Access log lines dropped because the writer fell behind.",
        )
        .expect("static metric definition");
        let rejected = IntCounterVec::new(
            Opts::new(
                "switchyard_rejected_total",
                "Requests answered by switchyard itself before reaching an upstream, by reason.",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        let websocket_connections = IntCounterVec::new(
            Opts::new(
                "switchyard_websocket_connections_total",
                "Client connections upgraded (HTTP/1.1 101, e.g. WebSocket) through a route.",
            ),
            &["route"],
        )
        .expect("static metric definition");
        let websocket_active = IntGauge::new(
            "switchyard_websocket_active",
            "Upgraded client connections open now.",
        )
        .expect("static metric definition");
        let attempts = IntCounterVec::new(
            Opts::new(
                "switchyard_upstream_attempts_total",
                "Attempts at an upstream (first tries and fallbacks), by route, upstream and outcome.",
            ),
            &["route", "upstream", "outcome"],
        )
        .expect("static metric definition");
        let attempt_duration = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_upstream_attempt_duration_seconds",
                "Time from choosing an upstream to its response head, or to the attempt's failure.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            &["route", "upstream"],
        )
        .expect("static metric definition");
        let shadow = IntCounterVec::new(
            Opts::new(
                "switchyard_shadow_total",
                "Shadow copies of requests, by route and comparison result.",
            ),
            &["route", "result"],
        )
        .expect("static metric definition");
        let shadow_duration = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_shadow_duration_seconds",
                "Duration of compared primary and shadow requests, by side.",
            )
            .buckets(BUCKETS.to_vec()),
            &["route", "side"],
        )
        .expect("static metric definition");
        let fleet_nodes = IntGauge::new(
            "switchyard_fleet_nodes",
            "Live nodes of the fleet (fleet mode).",
        )
        .expect("static metric definition");
        let fleet_converged = IntGauge::new(
            "switchyard_fleet_converged",
            "1 when every live node serves the fleet's newest version.",
        )
        .expect("static metric definition");
        let fleet_version_lag = IntGaugeVec::new(
            Opts::new(
                "switchyard_fleet_version_lag",
                "Versions a live node is behind the fleet's newest.",
            ),
            &["node"],
        )
        .expect("static metric definition");
        let fleet_etcd_up = IntGauge::new(
            "switchyard_fleet_etcd_up",
            "1 while this node reaches etcd (fleet mode).",
        )
        .expect("static metric definition");
        let fleet_propagation = Histogram::with_opts(
            HistogramOpts::new(
                "switchyard_fleet_propagation_seconds",
                "From a version's commit in etcd to this node serving it.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        )
        .expect("static metric definition");
        let fleet_resyncs = IntCounterVec::new(
            Opts::new(
                "switchyard_fleet_resyncs_total",
                "Full re-reads of the fleet's state after the watch stopped, by reason.",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        let tls_cert_expiry = IntGaugeVec::new(
            Opts::new(
                "switchyard_tls_cert_expiry_seconds",
                "Seconds until each loaded TLS certificate expires (negative once expired).",
            ),
            &["name"],
        )
        .expect("static metric definition");
        let tls_cert_reload_errors = IntCounterVec::new(
            Opts::new(
                "switchyard_tls_cert_reload_errors_total",
                "TLS certificate pairs rejected on load or reload, by certificate name.",
            ),
            &["name"],
        )
        .expect("static metric definition");
        for c in [
            Box::new(tls_cert_expiry.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(tls_cert_reload_errors.clone()),
            Box::new(fleet_nodes.clone()),
            Box::new(fleet_resyncs.clone()),
            Box::new(fleet_converged.clone()),
            Box::new(fleet_version_lag.clone()),
            Box::new(fleet_etcd_up.clone()),
            Box::new(fleet_propagation.clone()),
            Box::new(shadow.clone()),
            Box::new(shadow_duration.clone()),
            Box::new(rejected.clone()),
            Box::new(requests.clone()),
            Box::new(attempts.clone()),
            Box::new(attempt_duration.clone()),
            Box::new(duration.clone()),
            Box::new(table_version.clone()),
            Box::new(reloads.clone()),
            Box::new(upstream_healthy.clone()),
            Box::new(ejections.clone()),
            Box::new(fallbacks.clone()),
            Box::new(access_log_dropped.clone()),
            Box::new(websocket_connections.clone()),
            Box::new(websocket_active.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            requests,
            duration,
            table_version,
            reloads,
            upstream_healthy,
            ejections,
            fallbacks,
            access_log_dropped,
            rejected,
            websocket_connections,
            websocket_active,
            shadow,
            shadow_duration,
            attempts,
            attempt_duration,
            fleet_nodes,
            fleet_converged,
            fleet_version_lag,
            fleet_etcd_up,
            fleet_propagation,
            fleet_resyncs,
            tls_cert_expiry,
            tls_cert_reload_errors,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Handles for one route/upstream pair, so the request path does no label lookups.
    pub fn pair(&self, route: &str, upstream: &str) -> PairStats {
        PairStats {
            codes: CODE_CLASSES.map(|c| self.requests.with_label_values(&[route, upstream, c])),
            duration: self.duration.with_label_values(&[route, upstream]),
            attempts: ATTEMPT_OUTCOMES
                .map(|o| self.attempts.with_label_values(&[route, upstream, o])),
            attempt_duration: self.attempt_duration.with_label_values(&[route, upstream]),
        }
    }
}

/// Handles for one route's shadow results, so recording one does no label lookups.
pub fn shadow_stats(route: &str) -> ShadowStats {
    let m = &*METRICS;
    ShadowStats {
        results: SHADOW_RESULTS.map(|r| m.shadow.with_label_values(&[route, r])),
        primary: m.shadow_duration.with_label_values(&[route, "primary"]),
        shadow: m.shadow_duration.with_label_values(&[route, "shadow"]),
    }
}

/// Resolved shadow counters and histograms of one route.
#[derive(Clone)]
pub struct ShadowStats {
    pub results: [IntCounter; 6],
    pub primary: Histogram,
    pub shadow: Histogram,
}

/// Resolved counters for one route/upstream pair; cached per table in the route.
#[derive(Clone)]
pub struct PairStats {
    pub codes: [IntCounter; 5],
    pub duration: Histogram,
    /// Attempts by [`AttemptOutcome`].
    pub attempts: [IntCounter; 4],
    pub attempt_duration: Histogram,
}

impl PairStats {
    /// Counts one attempt at this pair's upstream that took `secs`. Called once per attempt
    /// by the proxy (and by any other engine serving requests), never per retry of the count.
    #[inline]
    pub fn attempt(&self, outcome: AttemptOutcome, secs: f64) {
        self.attempts[outcome as usize].inc();
        self.attempt_duration.observe(secs);
    }
}

impl std::fmt::Debug for PairStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PairStats")
    }
}
