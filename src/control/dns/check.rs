//! `--check-url`: before a record is pointed at a new target, one HTTP GET of the URL through
//! that target (connect to the target's addresses, Host header and TLS SNI from the URL, the
//! way a client will once the record points there), so a switch never sends users to a
//! target that does not answer. Every address must answer 2xx or 3xx; redirects are not
//! followed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::header;
use pingora::connectors::http::v1::Connector;
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use serde::Serialize;

use super::DnsError;
use crate::control::aws;

type Result<T> = std::result::Result<T, DnsError>;

/// Connect plus TLS handshake, per address.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// From connect to the response header, per address.
const TOTAL_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many addresses of one target are checked.
const MAX_ADDRESSES: usize = 8;
/// User-Agent of check requests, so the target's logs can tell them apart.
pub const USER_AGENT: &str = "switchyard-dns-check";

/// One GET through one address of the new target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Probe {
    pub url: String,
    /// The target (a value or the alias's DNS name) and the address connected to.
    pub through: String,
    /// The answer's status code; None when there was no answer.
    pub status: Option<u16>,
    /// Time to the response header (or the failure).
    pub millis: u64,
    /// 2xx or 3xx.
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Probe {
    /// `GET URL through HOST (ADDR): 200 in 12 ms`.
    pub fn line(&self) -> String {
        let what = match (self.status, &self.error) {
            (Some(s), _) => format!("{s}"),
            (None, Some(e)) => e.clone(),
            (None, None) => "no answer".into(),
        };
        format!(
            "GET {} through {}: {what} in {} ms ({})",
            self.url,
            self.through,
            self.millis,
            if self.ok { "ok" } else { "FAILED" }
        )
    }
}

/// A checked `--check-url`.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckUrl {
    pub tls: bool,
    /// Host name for SNI (no port).
    pub host: String,
    pub port: u16,
    /// The Host header: the URL's authority.
    pub authority: String,
    pub path: String,
}

/// Parses `http://` or `https://` URLs with a host; called before any AWS call.
pub fn parse(url: &str) -> Result<CheckUrl> {
    let bad = |why: &str| DnsError::CheckUrl(format!("{url}: {why}"));
    let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad("use an http:// or https:// URL")),
    };
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad("no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_else(|| host.clone());
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/".into());
    Ok(CheckUrl {
        tls,
        host,
        port,
        authority,
        path,
    })
}

/// GETs `url` through every address of every host in `targets` (IP addresses or DNS names).
/// All probes are returned when every one answered 2xx/3xx; otherwise the first failure is
/// [`DnsError::CheckFailed`].
pub async fn run(url: &str, targets: &[String]) -> Result<Vec<Probe>> {
    let u = parse(url)?;
    let connector = Connector::new(None);
    let mut probes = Vec::new();
    for t in targets {
        let started = Instant::now();
        let addrs: Vec<SocketAddr> = match tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::lookup_host((t.as_str(), u.port)),
        )
        .await
        {
            Ok(Ok(a)) => {
                let mut v: Vec<SocketAddr> = a.collect();
                v.dedup();
                v.truncate(MAX_ADDRESSES);
                v
            }
            Ok(Err(e)) => {
                return Err(failed(url, t, &format!("cannot resolve {t}: {e}")));
            }
            Err(_) => return Err(failed(url, t, &format!("cannot resolve {t}: timed out"))),
        };
        if addrs.is_empty() {
            return Err(failed(url, t, &format!("{t} has no address")));
        }
        for addr in addrs {
            let through = if t.parse::<std::net::IpAddr>().is_ok() {
                addr.to_string()
            } else {
                format!("{t} ({addr})")
            };
            let status = get(&connector, &u, addr).await;
            let millis = started.elapsed().as_millis() as u64;
            let p = match status {
                Ok(s) => Probe {
                    url: url.to_string(),
                    through,
                    status: Some(s),
                    millis,
                    ok: (200..400).contains(&s),
                    error: None,
                },
                Err(e) => Probe {
                    url: url.to_string(),
                    through,
                    status: None,
                    millis,
                    ok: false,
                    error: Some(e),
                },
            };
            if !p.ok {
                let reason = match (p.status, &p.error) {
                    (Some(s), _) => format!("answered {s}, not 2xx/3xx"),
                    (None, Some(e)) => e.clone(),
                    (None, None) => "no answer".into(),
                };
                return Err(DnsError::CheckFailed {
                    url: url.to_string(),
                    through: p.through,
                    reason,
                });
            }
            probes.push(p);
        }
    }
    Ok(probes)
}

fn failed(url: &str, through: &str, reason: &str) -> DnsError {
    DnsError::CheckFailed {
        url: url.to_string(),
        through: through.to_string(),
        reason: aws::one_line(reason),
    }
}

/// One GET over a fresh connection to `addr`; the status code, or why there is none.
async fn get(
    connector: &Connector,
    u: &CheckUrl,
    addr: SocketAddr,
) -> std::result::Result<u16, String> {
    let attempt = async {
        let mut peer = HttpPeer::new(addr, u.tls, u.host.clone());
        let o = &mut peer.options;
        o.connection_timeout = Some(CONNECT_TIMEOUT);
        o.total_connection_timeout = Some(CONNECT_TIMEOUT);
        o.read_timeout = Some(TOTAL_TIMEOUT);
        o.write_timeout = Some(TOTAL_TIMEOUT);
        let (mut s, _) = connector
            .get_http_session(&peer)
            .await
            .map_err(|e| describe(&e))?;
        let mut req = RequestHeader::build("GET", u.path.as_bytes(), Some(3))
            .map_err(|e| format!("building request: {e}"))?;
        for (name, value) in [
            (header::HOST, u.authority.as_str()),
            (header::USER_AGENT, USER_AGENT),
            (header::CONNECTION, "close"),
        ] {
            req.insert_header(name, value)
                .map_err(|e| format!("building request: {e}"))?;
        }
        s.write_request_header(Box::new(req))
            .await
            .map_err(|e| describe(&e))?;
        s.finish_body().await.map_err(|e| describe(&e))?;
        s.read_response().await.map_err(|e| describe(&e))?;
        Ok(s.get_status().map_or(0, |c| c.as_u16()))
    };
    match tokio::time::timeout(TOTAL_TIMEOUT, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {}s", TOTAL_TIMEOUT.as_secs())),
    }
}

/// The error's kind and its root cause (`ConnectRefused (Connection refused (os error 111))`),
/// without pingora's repeated context.
fn describe(e: &pingora::Error) -> String {
    let mut cause = e.cause.as_deref();
    let mut root = None;
    while let Some(c) = cause {
        let inner = c
            .downcast_ref::<pingora::Error>()
            .or_else(|| c.downcast_ref::<Box<pingora::Error>>().map(|b| &**b));
        match inner {
            Some(inner) => {
                root = inner
                    .context
                    .as_ref()
                    .map(|x| x.as_str().to_string())
                    .or(root);
                cause = inner.cause.as_deref();
            }
            None => {
                root = Some(c.to_string());
                break;
            }
        }
    }
    match root {
        Some(r) => aws::one_line(&format!("{} ({r})", e.etype().as_str())),
        None => e.etype().as_str().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse("https://api.example.com/healthz?x=1").unwrap();
        assert!(u.tls);
        assert_eq!((u.host.as_str(), u.port), ("api.example.com", 443));
        assert_eq!(u.path, "/healthz?x=1");
        let u = parse("http://api.example.com:8080").unwrap();
        assert_eq!((u.port, u.path.as_str()), (8080, "/"));
        assert_eq!(u.authority, "api.example.com:8080");
        assert!(parse("ftp://x.example.com/").is_err());
        assert!(parse("not a url").is_err());
    }
}
