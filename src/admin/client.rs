//! The one admin API client in the crate: base URL, token, actor, timeouts, retries on 503 and
//! error mapping. The CLI, the database cutover and the plan runner all talk to a running
//! switchyard through it, reading the typed bodies of [`super::types`].

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Full};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::auth::TOKEN_ENV;
use super::types::{
    ChangeResult, ErrorBody, FleetView, HoldRequest, HoldResult, InflightView, ReleaseResult,
    RoutePatchBody, TableView,
};

/// Request header naming the program acting for the token holder (`plan:NAME`,
/// `db-cutover`); the history records `TOKEN_NAME (ACTOR)`.
pub const ACTOR_HEADER: &str = "x-switchyard-actor";
/// How long one call may take, connect to last byte, unless changed with
/// [`AdminClient::with_timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a 503 answer is retried (with 100, 200, 400 ms pauses) before it is returned:
/// the server answers 503 only when it did not apply the call.
const RETRIES_ON_503: u32 = 3;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach the admin API at {url}: {message}")]
    Transport { url: String, message: String },
    #[error("{message} (HTTP {status})")]
    Server {
        status: u16,
        message: String,
        details: Vec<serde_json::Value>,
    },
    #[error("unexpected answer from {url}: {message}")]
    Decode { url: String, message: String },
}

impl ClientError {
    /// The HTTP status of a refused call, if the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Server { status, .. } => Some(*status),
            _ => None,
        }
    }
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// A connection to one switchyard's admin API. Cheap to clone.
#[derive(Clone)]
pub struct AdminClient {
    base: String,
    token: Option<String>,
    actor: Option<String>,
    timeout: Duration,
    http: HttpClient,
    /// `wait_fleet=` added to every changing call (fleet mode; `--wait-fleet`).
    wait_fleet: Option<String>,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("AdminClient")
            .field("base", &self.base)
            .field("actor", &self.actor)
            .finish()
    }
}

impl AdminClient {
    /// A client for the admin API at `base` (`http://HOST:PORT`), with the token from
    /// `SWITCHYARD_ADMIN_TOKEN` when set. Must be called inside a tokio runtime's context only
    /// when a call is made, not here.
    pub fn new(base: &str) -> Result<AdminClient, ClientError> {
        let base = base.trim_end_matches('/').to_string();
        let rest = base.strip_prefix("http://").ok_or_else(|| {
            ClientError::Usage(format!(
                "admin URL {base:?}: expected http://HOST:PORT (the admin API speaks plain HTTP; reach a remote one through an SSH tunnel)"
            ))
        })?;
        if rest.is_empty() {
            return Err(ClientError::Usage(format!("admin URL {base:?}: no host")));
        }
        let http =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        Ok(AdminClient {
            base,
            token: std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty()),
            actor: None,
            timeout: DEFAULT_TIMEOUT,
            http,
            wait_fleet: None,
        })
    }

    /// The same client acting as `actor` (recorded in the history next to the token's name).
    pub fn with_actor(mut self, actor: impl Into<String>) -> AdminClient {
        self.actor = Some(actor.into());
        self
    }

    /// The same client with another bearer token (None: no token).
    pub fn with_token(mut self, token: Option<String>) -> AdminClient {
        self.token = token;
        self
    }

    /// The same client with another per-call timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> AdminClient {
        self.timeout = timeout;
        self
    }

    /// The same client asking every changing call to answer only once every live node of the
    /// fleet serves the change (`wait_fleet=TIMEOUT`, e.g. `30s`); the per-call timeout grows
    /// to cover the wait.
    pub fn with_wait_fleet(mut self, wait: Option<String>) -> Result<AdminClient, ClientError> {
        if let Some(w) = &wait {
            let d = crate::fleet::parse_wait(w).map_err(ClientError::Usage)?;
            self.timeout = self.timeout.max(d + Duration::from_secs(10));
        }
        self.wait_fleet = wait;
        Ok(self)
    }

    /// The base URL, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends one call and returns the status and body text. 503 answers are retried; other
    /// statuses are returned as they are.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        if_match: Option<u64>,
    ) -> Result<(u16, String), ClientError> {
        let url = match (&self.wait_fleet, method == Method::GET) {
            (Some(w), false) => {
                let sep = if path.contains('?') { '&' } else { '?' };
                format!("{}{}{sep}wait_fleet={w}", self.base, path)
            }
            _ => format!("{}{}", self.base, path),
        };
        let mut attempt = 0;
        loop {
            let mut b = http::Request::builder().method(method.clone()).uri(&url);
            if let Some(t) = &self.token {
                b = b.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
            }
            if let Some(a) = &self.actor {
                b = b.header(ACTOR_HEADER, a.as_str());
            }
            if let Some(v) = if_match {
                b = b.header(http::header::IF_MATCH, format!("\"{v}\""));
            }
            if body.is_some() {
                b = b.header(http::header::CONTENT_TYPE, "application/json");
            }
            let req = b
                .body(Full::new(body.clone().unwrap_or_default()))
                .map_err(|e| ClientError::Usage(format!("{url}: {e}")))?;
            let transport = |message: String| ClientError::Transport {
                url: url.clone(),
                message,
            };
            let fut = async {
                let resp = self
                    .http
                    .request(req)
                    .await
                    .map_err(|e| transport(error_chain(&e)))?;
                let status = resp.status().as_u16();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| transport(e.to_string()))?
                    .to_bytes();
                Ok::<_, ClientError>((status, String::from_utf8_lossy(&body).into_owned()))
            };
            let (status, text) = tokio::time::timeout(self.timeout, fut)
                .await
                .map_err(|_| transport(format!("timed out after {:?}", self.timeout)))??;
            if status == 503 && attempt < RETRIES_ON_503 {
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                attempt += 1;
                continue;
            }
            return Ok((status, text));
        }
    }

    /// Sends one call with an optional JSON body and decodes a successful JSON answer as `T`;
    /// an error answer becomes [`ClientError::Server`] with the server's message and details.
    pub async fn send<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        if_match: Option<u64>,
    ) -> Result<T, ClientError> {
        let payload = body
            .map(|b| serde_json::to_vec(b).map(Bytes::from))
            .transpose()
            .map_err(|e| ClientError::Usage(format!("encoding the request: {e}")))?;
        let (status, text) = self.raw(method, path, payload, if_match).await?;
        self.decode(path, status, &text)
    }

    /// `GET path`, decoded as `T`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send::<(), T>(Method::GET, path, None, None).await
    }

    /// Decodes an answer: `T` on 2xx, the server's error otherwise.
    fn decode<T: DeserializeOwned>(
        &self,
        path: &str,
        status: u16,
        text: &str,
    ) -> Result<T, ClientError> {
        let url = || format!("{}{}", self.base, path);
        if status >= 300 {
            let e: ErrorBody = serde_json::from_str(text).unwrap_or_else(|_| ErrorBody {
                error: format!("HTTP {status}: {}", text.trim()),
                details: vec![],
            });
            return Err(ClientError::Server {
                status,
                message: e.error,
                details: e.details,
            });
        }
        serde_json::from_str(text).map_err(|e| ClientError::Decode {
            url: url(),
            message: format!("HTTP {status}, {e}: {}", text.trim()),
        })
    }

    /// `GET /v1/table`.
    pub async fn table(&self) -> Result<TableView, ClientError> {
        self.get("/v1/table").await
    }

    /// `PATCH /v1/routes/{id}`; `if_match` refuses the change (409) unless the live table is at
    /// that version.
    pub async fn patch_route(
        &self,
        id: &str,
        patch: &RoutePatchBody,
        if_match: Option<u64>,
    ) -> Result<ChangeResult, ClientError> {
        self.send(
            Method::PATCH,
            &format!("/v1/routes/{id}"),
            Some(patch),
            if_match,
        )
        .await
    }

    /// `POST /v1/routes/{id}/rollback`: 100% to the route's first fallback.
    pub async fn rollback(&self, id: &str, reason: &str) -> Result<ChangeResult, ClientError> {
        self.send(
            Method::POST,
            &format!("/v1/routes/{id}/rollback"),
            Some(&serde_json::json!({ "reason": reason })),
            None,
        )
        .await
    }

    /// `POST /v1/hold`.
    pub async fn hold(&self, req: &HoldRequest) -> Result<HoldResult, ClientError> {
        self.send(Method::POST, "/v1/hold", Some(req), None).await
    }

    /// `POST /v1/release`.
    pub async fn release(&self) -> Result<ReleaseResult, ClientError> {
        self.send::<(), _>(Method::POST, "/v1/release", None, None)
            .await
    }

    /// `GET /v1/inflight`.
    pub async fn inflight(&self) -> Result<InflightView, ClientError> {
        self.get("/v1/inflight").await
    }

    /// `GET /v1/fleet`: every node's version (fleet mode).
    pub async fn fleet(&self) -> Result<FleetView, ClientError> {
        self.get("/v1/fleet").await
    }

    /// `GET /metrics`, the Prometheus text.
    pub async fn metrics_text(&self) -> Result<String, ClientError> {
        let (status, text) = self.raw(Method::GET, "/metrics", None, None).await?;
        if status >= 300 {
            return self
                .decode::<serde_json::Value>("/metrics", status, &text)
                .map(|_| text);
        }
        Ok(text)
    }
}

/// An error with its sources, on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_forms() {
        assert!(AdminClient::new("http://127.0.0.1:9090/").is_ok());
        assert_eq!(
            AdminClient::new("http://127.0.0.1:9090/").unwrap().base(),
            "http://127.0.0.1:9090"
        );
        assert!(matches!(
            AdminClient::new("https://x:1"),
            Err(ClientError::Usage(_))
        ));
        assert!(matches!(
            AdminClient::new("http://"),
            Err(ClientError::Usage(_))
        ));
    }

    #[test]
    fn error_answers_decode() {
        let c = AdminClient::new("http://127.0.0.1:1").unwrap();
        let e = c
            .decode::<ChangeResult>("/v1/x", 409, r#"{"error":"stale","details":["a"]}"#)
            .unwrap_err();
        assert_eq!(e.status(), Some(409));
        assert_eq!(e.to_string(), "stale (HTTP 409)");
        let e = c
            .decode::<ChangeResult>("/v1/x", 502, "bad gateway")
            .unwrap_err();
        assert!(e.to_string().contains("HTTP 502: bad gateway"), "{e}");
        let e = c.decode::<ChangeResult>("/v1/x", 200, "{}").unwrap_err();
        assert!(matches!(e, ClientError::Decode { .. }), "{e}");
    }
}
