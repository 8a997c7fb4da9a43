//! Shadow traffic end to end: the built binary in front of real loopback backends whose
//! answers (status, headers, body, delay) the test sets, checking what `/v1/shadow`, the
//! metrics and the CLI report and that the primary's answers never change.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// What a backend answers.
#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    delay_ms: u64,
}

impl Reply {
    fn json(body: &str) -> Reply {
        Reply {
            status: 200,
            headers: vec![("content-type", "application/json".into())],
            body: body.into(),
            delay_ms: 0,
        }
    }
}

#[derive(Default)]
struct Seen {
    /// `METHOD PATH marker body` per request, `marker` = the `x-switchyard-shadow` value.
    requests: Vec<String>,
    /// `x-forwarded-for | x-forwarded-proto | x-forwarded-host | host` per request.
    forwarded: Vec<String>,
}

/// A backend that answers every request with the current [`Reply`] and records what it saw.
struct Backend {
    addr: SocketAddr,
    reply: Arc<Mutex<Reply>>,
    seen: Arc<Mutex<Seen>>,
    hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    async fn start(reply: Reply) -> Backend {
        Self::start_tls(reply, None).await
    }

    /// A backend answering over TLS with `acceptor`'s certificate when given.
    async fn start_tls(reply: Reply, tls: Option<tokio_rustls::TlsAcceptor>) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reply = Arc::new(Mutex::new(reply));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let hits = Arc::new(AtomicU64::new(0));
        let (r, s, h) = (reply.clone(), seen.clone(), hits.clone());
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (r, s, h) = (r.clone(), s.clone(), h.clone());
                let tls = tls.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (r, s, h) = (r.clone(), s.clone(), h.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes());
                            let body =
                                String::from_utf8_lossy(&body.unwrap_or_default()).into_owned();
                            let marker = parts
                                .headers
                                .get("x-switchyard-shadow")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-")
                                .to_string();
                            s.lock().unwrap().requests.push(format!(
                                "{} {} {marker} {body}",
                                parts.method,
                                parts.uri.path()
                            ));
                            let hv = |n: &str| {
                                parts
                                    .headers
                                    .get(n)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("-")
                                    .to_string()
                            };
                            let fwd = [
                                "x-forwarded-for",
                                "x-forwarded-proto",
                                "x-forwarded-host",
                                "host",
                            ]
                            .map(hv)
                            .join(" | ");
                            s.lock().unwrap().forwarded.push(fwd);
                            h.fetch_add(1, Ordering::SeqCst);
                            let rep = r.lock().unwrap().clone();
                            if rep.delay_ms > 0 {
                                tokio::time::sleep(Duration::from_millis(rep.delay_ms)).await;
                            }
                            let mut b = Response::builder().status(rep.status);
                            for (k, v) in &rep.headers {
                                b = b.header(*k, v);
                            }
                            Ok::<_, hyper::Error>(b.body(Full::new(Bytes::from(rep.body))).unwrap())
                        }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                            }
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Backend {
            addr,
            reply,
            seen,
            hits,
            task,
        }
    }

    fn set(&self, r: Reply) {
        *self.reply.lock().unwrap() = r;
    }

    fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap().requests.clone()
    }

    fn forwarded(&self) -> Vec<String> {
        self.seen.lock().unwrap().forwarded.clone()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn upstream(name: &str, addr: SocketAddr, extra: &str) -> String {
    format!("[upstreams.{name}]\naddrs = [\"{addr}\"]\n{extra}\n")
}

async fn shadow_view(p: &Proxy, route: &str) -> serde_json::Value {
    let r = get(&p.admin_url(&format!("/v1/shadow/{route}"))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["routes"][route].clone()
}

fn count(v: &serde_json::Value, result: &str) -> u64 {
    v["counts"][result].as_u64().unwrap_or(0)
}

/// Waits until the route's `result` count reaches `n`; returns the route's view.
async fn wait_count(p: &Proxy, route: &str, result: &str, n: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = shadow_view(p, route).await;
        if count(&v, result) >= n {
            return v;
        }
        assert!(Instant::now() < deadline, "{result} never reached {n}: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

#[tokio::test]
async fn each_difference_is_counted_and_shown() {
    let primary = Backend::start(Reply::json(r#"{"id":1,"ts":100}"#)).await;
    let shadow = Backend::start(Reply::json(r#"{"id":1,"ts":100}"#)).await;
    for b in [&primary, &shadow] {
        let mut r = b.reply.lock().unwrap();
        r.headers.push(("etag", "\"v1\"".into()));
        r.headers.push(("x-request-id", "a".into()));
    }
    shadow.reply.lock().unwrap().headers[2].1 = "b".into();
    let dir = routes_dir(&format!(
        "{}{}[[routes]]\nid = \"api\"\npath = \"/api/*\"\nto = \"old\"\n\
         shadow = {{ upstream = \"new\", percent = 100, compare = [\"status\", \"headers\", \"body\"], \
         ignore_headers = [\"x-request-id\"], ignore_json_fields = [\"ts\"] }}\n",
        upstream("old", primary.addr, ""),
        upstream("new", shadow.addr, "")
    ));
    let p = Proxy::start(dir.path()).await;
    let c = client();
    let call = |path: &'static str| {
        let c = c.clone();
        let url = p.url(path);
        async move { send(&c, "GET", &url, &[], Bytes::new()).await.unwrap() }
    };

    // Identical answers (x-request-id differs but is ignored).
    let r = call("/api/a?x=1").await;
    assert_eq!((r.status, r.body.as_str()), (200, r#"{"id":1,"ts":100}"#));
    wait_count(&p, "api", "match", 1).await;
    let seen = shadow.requests();
    assert_eq!(
        seen,
        vec!["GET /api/a 1 ".to_string()],
        "the copy carries the marker"
    );

    // JSON differing only in an ignored field: still a match.
    let current = shadow.reply.lock().unwrap().clone();
    shadow.set(Reply {
        body: r#"{"ts": 999, "id": 1}"#.into(),
        ..current.clone()
    });
    call("/api/b").await;
    wait_count(&p, "api", "match", 2).await;

    // A different body.
    shadow.set(Reply {
        body: r#"{"id":2,"ts":5}"#.into(),
        ..current
    });
    let r = call("/api/c?secret=1").await;
    assert_eq!(
        r.body, r#"{"id":1,"ts":100}"#,
        "the client gets the primary's body"
    );
    let v = wait_count(&p, "api", "body_mismatch", 1).await;
    let m = &v["recent"][0];
    assert_eq!(m["result"], "body_mismatch");
    assert_eq!(m["method"], "GET");
    assert_eq!(m["path"], "/api/c", "no query string: {m}");
    assert_eq!(
        (m["primary_status"].as_u64(), m["shadow_status"].as_u64()),
        (Some(200), Some(200))
    );
    assert_eq!(m["primary_bytes"].as_u64(), Some(17));
    assert_eq!(m["shadow_bytes"].as_u64(), Some(15));
    assert_eq!(m["json_diff"], serde_json::json!(["$.id: 1 != 2"]));

    // A different header.
    let mut rep = Reply::json(r#"{"id":1,"ts":100}"#);
    rep.headers.push(("etag", "\"v2\"".into()));
    shadow.set(rep.clone());
    call("/api/d").await;
    let v = wait_count(&p, "api", "header_mismatch", 1).await;
    assert_eq!(v["recent"][0]["header"], "etag");

    // A different status.
    shadow.set(Reply { status: 503, ..rep });
    let r = call("/api/e").await;
    assert_eq!(r.status, 200);
    let v = wait_count(&p, "api", "status_mismatch", 1).await;
    assert_eq!(v["recent"][0]["shadow_status"].as_u64(), Some(503));
    assert_eq!(v["upstream"], "new");
    assert_eq!(v["match_rate"].as_f64(), Some(0.4));
    assert_eq!(count(&v, "skipped") + count(&v, "shadow_error"), 0);

    // The primary's metrics count only the client's requests; the shadow has its own.
    let m = get(&p.admin_url("/metrics")).await.body;
    assert_eq!(
        metric(
            &m,
            "switchyard_requests_total{code=\"2xx\",route=\"api\",upstream=\"old\"}"
        ),
        5.0
    );
    assert!(
        !m.contains("upstream=\"new\""),
        "the shadow upstream has no request metrics"
    );
    for (result, n) in [
        ("match", 2.0),
        ("body_mismatch", 1.0),
        ("header_mismatch", 1.0),
        ("status_mismatch", 1.0),
    ] {
        assert_eq!(
            metric(
                &m,
                &format!("switchyard_shadow_total{{result=\"{result}\",route=\"api\"}}")
            ),
            n,
            "{result}"
        );
    }
    assert_eq!(
        metric(
            &m,
            "switchyard_shadow_duration_seconds_count{route=\"api\",side=\"shadow\"}"
        ),
        5.0
    );

    // The CLI shows the same.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["shadow", "api", "--admin", &p.admin_url("")])
        .env_remove("SWITCHYARD_ADMIN_TOKEN")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("switchyard shadow api:\n{text}");
    assert!(text.contains("40.0%"), "{text}");
    assert!(
        text.contains("status_mismatch GET /api/e: primary 200"),
        "{text}"
    );
    assert!(text.contains("$.id: 1 != 2"), "{text}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["shadow", "nope", "--admin", &p.admin_url("")])
        .env_remove("SWITCHYARD_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test]
async fn slow_or_down_shadow_never_hurts_the_primary() {
    let primary = Backend::start(Reply::json(r#"{"ok":true}"#)).await;
    let slow = Backend::start(Reply {
        delay_ms: 2000,
        ..Reply::json(r#"{"ok":true}"#)
    })
    .await;
    let down: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = routes_dir(&format!(
        "{}{}{}\
         [[routes]]\nid = \"plain\"\npath = \"/plain/*\"\nto = \"old\"\n\
         [[routes]]\nid = \"slow\"\npath = \"/slow/*\"\nto = \"old\"\nshadow = {{ upstream = \"slow\" }}\n\
         [[routes]]\nid = \"down\"\npath = \"/down/*\"\nto = \"old\"\nshadow = {{ upstream = \"down\" }}\n",
        upstream("old", primary.addr, ""),
        upstream("slow", slow.addr, "read_timeout_ms = 5000"),
        upstream("down", down, "")
    ));
    let p = Proxy::start(dir.path()).await;
    let c = client();
    let mut p99s = Vec::new();
    // The slow shadow last: its copies hold the cap's slots for 2 s.
    for route in ["plain", "down", "slow"] {
        let mut times = Vec::new();
        for i in 0..200 {
            let t = Instant::now();
            let r = send(
                &c,
                "GET",
                &p.url(&format!("/{route}/{i}")),
                &[],
                Bytes::new(),
            )
            .await
            .unwrap();
            times.push(t.elapsed());
            assert_eq!(
                (r.status, r.body.as_str()),
                (200, r#"{"ok":true}"#),
                "{route}"
            );
        }
        p99s.push((route, p99(times)));
    }
    eprintln!("primary p99 over 200 requests: {p99s:?}");
    for (route, d) in &p99s {
        assert!(*d < Duration::from_millis(200), "{route}: p99 {d:?}");
    }
    // The slow shadow got copies (up to the cap; the rest skipped), the down one failed each.
    let v = shadow_view(&p, "slow").await;
    assert!(slow.hits.load(Ordering::SeqCst) > 0);
    let skipped = count(&v, "skipped");
    assert!(skipped < 200, "{v}");
    let v = wait_count(&p, "slow", "match", 200 - skipped).await;
    assert_eq!(count(&v, "shadow_error"), 0, "{v}");
    let v = wait_count(&p, "down", "shadow_error", 200).await;
    assert_eq!(count(&v, "skipped"), 0, "{v}");
    assert!(
        v["recent"][0]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{v}"
    );
    // A failing shadow never ejects anything or moves traffic.
    let m = get(&p.admin_url("/metrics")).await.body;
    assert_eq!(metric(&m, "switchyard_fallbacks_total"), 0.0);
    assert_eq!(metric(&m, "switchyard_upstream_ejections_total"), 0.0);
}

#[tokio::test]
async fn post_is_mirrored_only_when_listed() {
    let primary = Backend::start(Reply::json("{}")).await;
    let shadow = Backend::start(Reply::json("{}")).await;
    let dir = routes_dir(&format!(
        "{}{}\
         [[routes]]\nid = \"reads\"\npath = \"/reads/*\"\nto = \"old\"\nshadow = {{ upstream = \"new\" }}\n\
         [[routes]]\nid = \"writes\"\npath = \"/writes/*\"\nto = \"old\"\n\
         shadow = {{ upstream = \"new\", methods = [\"GET\", \"POST\"] }}\n",
        upstream("old", primary.addr, ""),
        upstream("new", shadow.addr, "")
    ));
    let p = Proxy::start(dir.path()).await;
    let c = client();
    for route in ["reads", "writes"] {
        let r = send(&c, "POST", &p.url(&format!("/{route}/x")), &[], "hello")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        send(&c, "GET", &p.url(&format!("/{route}/y")), &[], Bytes::new())
            .await
            .unwrap();
    }
    wait_count(&p, "reads", "match", 1).await;
    wait_count(&p, "writes", "match", 2).await;
    let mut seen = shadow.requests();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            "GET /reads/y 1 ",
            "GET /writes/y 1 ",
            "POST /writes/x 1 hello"
        ]
    );
    // A body too large to be kept whole is not copied.
    let big = "x".repeat(70_000);
    let r = send(&c, "POST", &p.url("/writes/big"), &[], big.clone())
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    wait_count(&p, "writes", "skipped", 1).await;
    assert_eq!(shadow.requests().len(), 3);
    assert!(primary.requests().iter().any(|r| r.ends_with(&big)));
}

#[tokio::test]
async fn over_the_cap_copies_are_skipped() {
    let primary = Backend::start(Reply::json("{}")).await;
    let shadow = Backend::start(Reply {
        delay_ms: 5000,
        ..Reply::json("{}")
    })
    .await;
    let dir = routes_dir(&format!(
        "[proxy]\nshadow_max_inflight = 2\n{}{}\
         [[routes]]\nid = \"api\"\npath = \"/*\"\nto = \"old\"\nshadow = {{ upstream = \"new\" }}\n",
        upstream("old", primary.addr, ""),
        upstream("new", shadow.addr, "")
    ));
    let p = Proxy::start(dir.path()).await;
    let c = client();
    for i in 0..10 {
        let r = send(&c, "GET", &p.url(&format!("/{i}")), &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    let v = shadow_view(&p, "api").await;
    assert_eq!(count(&v, "skipped"), 8, "{v}");
    let all = get(&p.admin_url("/v1/shadow")).await.json();
    assert_eq!(all["max_inflight"].as_u64(), Some(2));
    assert_eq!(all["inflight"].as_u64(), Some(2));
}

#[tokio::test]
async fn percent_is_respected() {
    let primary = Backend::start(Reply::json("{}")).await;
    let shadow = Backend::start(Reply::json("{}")).await;
    let dir = routes_dir(&format!(
        "{}{}[[routes]]\nid = \"api\"\npath = \"/*\"\nto = \"old\"\n\
         shadow = {{ upstream = \"new\", percent = 10 }}\n",
        upstream("old", primary.addr, ""),
        upstream("new", shadow.addr, "")
    ));
    let p = Proxy::start(dir.path()).await;
    let c = client();
    let n = 2000;
    for i in 0..n {
        send(&c, "GET", &p.url(&format!("/{i}")), &[], Bytes::new())
            .await
            .unwrap();
    }
    // Wait until the copies have settled: the backend's count equals the matches.
    let deadline = Instant::now() + Duration::from_secs(10);
    let copies = loop {
        let v = shadow_view(&p, "api").await;
        let hits = shadow.hits.load(Ordering::SeqCst);
        if count(&v, "match") == hits {
            break hits as f64;
        }
        assert!(Instant::now() < deadline, "{v} vs {hits}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Binomial(2000, 0.1): mean 200, sigma 13.4; allow 4 sigma.
    let sigma = (n as f64 * 0.1 * 0.9).sqrt();
    assert!(
        (copies - 200.0).abs() <= 4.0 * sigma,
        "{copies} copies of {n}"
    );
    assert_eq!(primary.hits.load(Ordering::SeqCst), n);
}

#[tokio::test]
async fn bad_shadow_options_are_refused_with_their_field() {
    let dir = routes_dir(
        "[upstreams.old]\naddrs = [\"127.0.0.1:1\"]\n\
         [[routes]]\nid = \"api\"\npath = \"/*\"\nto = \"old\"\n\
         shadow = { upstream = \"nope\", percent = 150 }\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("check")
        .arg(dir.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("route \"api\": shadow.upstream: unknown upstream \"nope\""),
        "{text}"
    );
    assert!(
        text.contains("shadow.percent: 150 is not a percentage"),
        "{text}"
    );
    std::fs::write(
        dir.path().join("routes.toml"),
        "[upstreams.old]\naddrs = [\"127.0.0.1:1\"]\n\
         [[routes]]\nid = \"api\"\npath = \"/*\"\nto = \"old\"\n\
         shadow = { upstream = \"old\", precent = 5 }\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("check")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("precent"));
}

#[tokio::test]
async fn tls_shadow_upstream_gets_the_primarys_forwarding_headers() {
    let primary = Backend::start(Reply::json(r#"{"id":1}"#)).await;
    let (acceptor, ca_pem) = self_signed(&["shadow.test"]);
    let shadow = Backend::start_tls(Reply::json(r#"{"id":1}"#), Some(acceptor)).await;
    // Same name, another key: not trusted by ca_file.
    let (untrusted_acc, _) = self_signed(&["shadow.test"]);
    let untrusted = Backend::start_tls(Reply::json(r#"{"id":1}"#), Some(untrusted_acc)).await;
    let dir = routes_dir(&format!(
        "{}{}{}[[routes]]\nid = \"api\"\npath = \"/api/*\"\nto = \"old\"\n\
         shadow = {{ upstream = \"new\", percent = 100 }}\n\
         [[routes]]\nid = \"bad\"\npath = \"/bad/*\"\nto = \"old\"\n\
         shadow = {{ upstream = \"untrusted\", percent = 100 }}\n",
        upstream("old", primary.addr, ""),
        upstream(
            "new",
            shadow.addr,
            "tls = true\nsni = \"shadow.test\"\nca_file = \"ca.pem\"\n"
        ),
        upstream(
            "untrusted",
            untrusted.addr,
            "tls = true\nsni = \"shadow.test\"\nca_file = \"ca.pem\"\n"
        ),
    ));
    std::fs::write(dir.path().join("ca.pem"), &ca_pem).unwrap();
    let p = Proxy::start(dir.path()).await;
    let c = client();
    let headers = [("host", "api.example"), ("x-forwarded-for", "10.1.1.1")];
    for i in 0..4 {
        let r = send(
            &c,
            "GET",
            &p.url(&format!("/api/{i}")),
            &headers,
            Bytes::new(),
        )
        .await
        .unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, r#"{"id":1}"#));
    }
    wait_count(&p, "api", "match", 4).await;
    let fwd = "10.1.1.1, 127.0.0.1 | http | api.example";
    assert_eq!(primary.forwarded(), vec![format!("{fwd} | api.example"); 4]);
    // The forwarding headers are the primary's; Host follows the shadow upstream's own rule
    // (a TLS upstream sends its SNI name, as it would for the primary).
    assert_eq!(
        shadow.forwarded(),
        vec![format!("{fwd} | shadow.test"); 4],
        "the copy carries what the primary's upstream request carried"
    );
    assert!(shadow.requests().iter().all(|r| r.starts_with("GET /api/")));

    // A certificate the roots do not trust: the copy fails, the primary does not notice.
    let r = send(&c, "GET", &p.url("/bad/x"), &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let v = wait_count(&p, "bad", "shadow_error", 1).await;
    let err = v["recent"][0]["error"]
        .as_str()
        .unwrap_or("")
        .to_lowercase();
    assert!(err.contains("certificate"), "{v}");
    assert_eq!(
        untrusted.hits.load(Ordering::SeqCst),
        0,
        "no request after a failed handshake"
    );
}
