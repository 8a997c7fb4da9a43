//! The data plane at the edge: TLS termination with certificates chosen by SNI and reloaded
//! from disk, HTTP/2 over TLS and h2c running the canary and fallback scenarios, and a graceful
//! binary upgrade under load.

mod common;
#[path = "edge_tls/harness.rs"]
mod harness;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use harness::*;

const TOKEN: &str = "edge-token";

fn upstream(name: &str, o: &Origin) -> String {
    format!("[upstreams.{name}]\naddrs = [\"{}\"]\n", o.addr)
}

fn catch_all(o: &Origin) -> String {
    format!(
        "{}[[routes]]\nid = \"all\"\npath = \"*\"\nto = \"legacy\"\n",
        upstream("legacy", o)
    )
}

fn metric_with(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn metrics(p: &Proxy) -> String {
    get(&p.admin_url("/metrics")).await.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_default_without_sni_and_old_tls_is_refused() {
    let o = Origin::start("legacy").await;
    let routes = routes_dir(&catch_all(&o));
    let certs = tempfile::tempdir().unwrap();
    let a = pair("alpha", &["a.test"], 30);
    let b = pair("beta", &["*.b.test", "b.test"], 30);
    let c = pair("gamma", &["c.test"], 30);
    install(certs.path(), "alpha", &a);
    install(certs.path(), "beta", &b);
    install(certs.path(), "gamma", &c);
    let (p, tls) = start_tls(
        routes.path(),
        certs.path(),
        &["--tls-default-cert", "gamma"],
        &[],
    )
    .await;

    // Exact and wildcard SAN matches, any case.
    assert_eq!(cert_for(tls, Some("a.test")).await.unwrap(), a.der);
    assert_eq!(cert_for(tls, Some("A.Test")).await.unwrap(), a.der);
    assert_eq!(cert_for(tls, Some("x.b.test")).await.unwrap(), b.der);
    assert_eq!(cert_for(tls, Some("b.test")).await.unwrap(), b.der);
    // A wildcard covers one label only; no match and no SNI get the default.
    assert_eq!(cert_for(tls, Some("y.x.b.test")).await.unwrap(), c.der);
    assert_eq!(cert_for(tls, Some("other.test")).await.unwrap(), c.der);
    assert_eq!(cert_for(tls, None).await.unwrap(), c.der);
    // The served certificate names the subject it was made for.
    let der = cert_for(tls, Some("a.test")).await.unwrap();
    let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(x.subject().to_string(), "CN=alpha");

    // HTTP/1.1 over TLS reaches the route; plain HTTP keeps working beside it.
    let r = https1(tls, "a.test", "/hello").await.unwrap();
    assert_eq!((r.status, r.origin()), (200, "legacy"), "{}", r.body);
    assert_eq!(r.json()["path"], "/hello");
    assert_eq!(get(&p.url("/plain")).await.status, 200);
    // ALPN: h2 preferred when offered, http/1.1 otherwise.
    let s = tls_connect(tls, Some("a.test"), &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(alpn(&s).as_deref(), Some("h2"));

    // TLS 1.2 without supported_versions is answered with a ServerHello; the same hello
    // offering TLS 1.1 gets a protocol_version alert (or a close), never a ServerHello.
    assert_eq!(
        first_record(tls, &client_hello(0x0303, "a.test")).await,
        Some((0x16, 2)),
        "TLS 1.2 ClientHello answered with a ServerHello"
    );
    let old = first_record(tls, &client_hello(0x0302, "a.test")).await;
    assert!(
        matches!(old, None | Some((0x15, 70))),
        "TLS 1.1 must be refused, got {old:?}"
    );
    let old = first_record(tls, &client_hello(0x0301, "a.test")).await;
    assert!(matches!(old, None | Some((0x15, 70))), "TLS 1.0: {old:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_certificate_serves_within_seconds_without_failed_requests() {
    let o = Origin::start("legacy").await;
    let routes = routes_dir(&catch_all(&o));
    let certs = tempfile::tempdir().unwrap();
    let first = pair("first", &["a.test"], 30);
    install(certs.path(), "site", &first);
    let (_p, tls) = start_tls(routes.path(), certs.path(), &[], &[]).await;
    assert_eq!(cert_for(tls, Some("a.test")).await.unwrap(), first.der);

    // New TLS connections and requests all the time while the pair is replaced.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                match https1(tls, "a.test", "/x").await {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::SeqCst),
                    other => {
                        errors.push(format!("{other:?}"));
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
            errors
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = pair("second", &["a.test"], 60);
    // Key first, then the certificate: between the two renames the pair does not match and
    // the first certificate must keep serving.
    install(certs.path(), "site", &second);
    let replaced = Instant::now();
    wait_until(Duration::from_secs(5), "the new certificate", || async {
        cert_for(tls, Some("a.test")).await.ok() == Some(second.der.clone())
    })
    .await;
    eprintln!("new certificate served after {:?}", replaced.elapsed());
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let mut errors = Vec::new();
    for t in load {
        errors.extend(t.await.unwrap());
    }
    let (ok, failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    eprintln!("{ok} requests on new TLS connections during the replacement, {failed} failed");
    assert!(ok > 10, "the load loop ran ({ok} requests)");
    assert_eq!(failed, 0, "failed requests: {errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_pair_is_rejected_and_the_previous_certificate_keeps_serving() {
    let o = Origin::start("legacy").await;
    let routes = routes_dir(&catch_all(&o));
    let certs = tempfile::tempdir().unwrap();
    let good = pair("good", &["a.test"], 10);
    install(certs.path(), "site", &good);
    let (p, tls) = start_tls(routes.path(), certs.path(), &[], &[]).await;

    // Expiry: metric and API agree with the certificate (10 days from now).
    let m = metrics(&p).await;
    let left = metric_with(
        &m,
        "switchyard_tls_cert_expiry_seconds",
        &[("name", "site")],
    )
    .expect("expiry metric");
    let ten_days = 10.0 * 86400.0;
    assert!(
        left <= ten_days && left > ten_days - 120.0,
        "expiry seconds {left}"
    );
    let v = get(&p.admin_url("/v1/tls")).await.json();
    assert_eq!(v["enabled"], true);
    assert_eq!(v["default"], "site");
    let c = &v["certificates"][0];
    assert_eq!(c["name"], "site");
    assert_eq!(c["sans"], serde_json::json!(["a.test"]));
    assert_eq!(c["subject"], "CN=good");
    assert_eq!(c["serving"], true);
    assert!(c["crt_file"].as_str().unwrap().ends_with("site.crt"));
    assert!(c["key_file"].as_str().unwrap().ends_with("site.key"));
    let secs = c["seconds_left"].as_f64().unwrap();
    assert!((secs - left).abs() < 60.0, "{secs} vs {left}");
    assert!(c["not_after"].as_str().unwrap().contains('T'));
    assert_eq!(c["last_error"], serde_json::Value::Null);

    // A certificate whose key is not the one on disk: rejected, logged, counted.
    let other = pair("other", &["a.test"], 30);
    write_atomic(&certs.path().join("site.crt"), &other.cert_pem);
    wait_until(
        Duration::from_secs(5),
        "the reload error metric",
        || async {
            let m = metrics(&p).await;
            metric_with(
                &m,
                "switchyard_tls_cert_reload_errors_total",
                &[("name", "site")],
            )
            .unwrap_or(0.0)
                >= 1.0
        },
    )
    .await;
    let c = get(&p.admin_url("/v1/tls")).await.json()["certificates"][0].clone();
    let err = c["last_error"].as_str().expect("last_error").to_string();
    assert!(
        err.contains("site.key") && err.contains("does not match"),
        "{err}"
    );
    assert_eq!(c["serving"], true);
    assert_eq!(c["subject"], "CN=good", "the previous certificate serves");
    assert_eq!(cert_for(tls, Some("a.test")).await.unwrap(), good.der);
    assert_eq!(https1(tls, "a.test", "/still").await.unwrap().status, 200);

    // Garbage in the certificate file: the same.
    write_atomic(
        &certs.path().join("site.crt"),
        "-----BEGIN CERTIFICATE-----\nnope\n",
    );
    wait_until(Duration::from_secs(5), "a second reload error", || async {
        let m = metrics(&p).await;
        metric_with(
            &m,
            "switchyard_tls_cert_reload_errors_total",
            &[("name", "site")],
        )
        .unwrap_or(0.0)
            >= 2.0
    })
    .await;
    let err = get(&p.admin_url("/v1/tls")).await.json()["certificates"][0]["last_error"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(err.contains("site.crt"), "{err}");
    assert_eq!(cert_for(tls, Some("a.test")).await.unwrap(), good.der);

    // The matching pair arrives: served, error cleared, expiry follows the new certificate.
    install(certs.path(), "site", &other);
    wait_until(Duration::from_secs(5), "the fixed pair", || async {
        cert_for(tls, Some("a.test")).await.ok() == Some(other.der.clone())
    })
    .await;
    let c = get(&p.admin_url("/v1/tls")).await.json()["certificates"][0].clone();
    assert_eq!(c["last_error"], serde_json::Value::Null);
    let secs = c["seconds_left"].as_f64().unwrap();
    assert!(secs > 29.0 * 86400.0, "{secs}");

    // SIGHUP reloads too: a new pair for b.test appears without a file event being needed.
    let b = pair("bee", &["b.test"], 30);
    install(certs.path(), "bee", &b);
    let _ = Command::new("kill")
        .args(["-HUP", &p.child.id().to_string()])
        .status();
    wait_until(Duration::from_secs(5), "the added pair", || async {
        cert_for(tls, Some("b.test")).await.ok() == Some(b.der.clone())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_can_be_turned_off_and_bad_certificates_refuse_to_start() {
    let o = Origin::start("legacy").await;
    let routes = routes_dir(&catch_all(&o));
    let certs = tempfile::tempdir().unwrap();
    install(certs.path(), "site", &pair("site", &["a.test"], 30));
    // Only TLS: --listen off.
    let tls: std::net::SocketAddr = format!("127.0.0.1:{}", reserve_port()).parse().unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", reserve_port()).parse().unwrap();
    let _child = Killed(
        serve_cmd(
            routes.path(),
            &[
                "--listen",
                "off",
                "--admin",
                &admin.to_string(),
                "--tls-listen",
                &tls.to_string(),
                "--tls-certs",
                &certs.path().display().to_string(),
            ],
        )
        .spawn()
        .unwrap(),
    );
    wait_port(tls).await;
    assert_eq!(https1(tls, "a.test", "/x").await.unwrap().status, 200);

    // No listener at all, an unknown default and a bad pair: refused with the reason.
    for (args, want) in [
        (vec!["--listen", "off"], "no data-plane listener"),
        (
            vec!["--tls-listen", "127.0.0.1:1", "--tls-default-cert", "nope"],
            "nope",
        ),
    ] {
        let mut a = args.clone();
        let dir = certs.path().display().to_string();
        if a.contains(&"--tls-listen") {
            a.extend(["--tls-certs", dir.as_str()]);
        }
        let out = serve_cmd(routes.path(), &a).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains(want), "{err}");
    }
    std::fs::write(certs.path().join("broken.crt"), "junk").unwrap();
    let dir = certs.path().display().to_string();
    let out = serve_cmd(
        routes.path(),
        &["--tls-listen", "127.0.0.1:1", "--tls-certs", &dir],
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("broken.crt"), "{err}");
}

fn serve_cmd(routes: &std::path::Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    c.args(["serve", "--routes"])
        .arg(routes)
        .args(["--threads", "2", "--access-log", "off"])
        .args(args)
        .env("SWITCHYARD_LOG", "warn")
        .env_remove("SWITCHYARD_ADMIN_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// The routes of the h2 scenarios: host and path routing, a split at both extremes and at
/// 10%, a fallback from a failing upstream, a route to hold.
fn scenario_routes(legacy: &Origin, new: &Origin, failing: &Origin) -> String {
    format!(
        "{}{}{}\
         [[routes]]\nid = \"shop\"\nhosts = [\"shop.example.com\"]\npath = \"*\"\nto = \"new\"\n\
         [[routes]]\nid = \"user\"\npath = \"/user/*\"\nto = \"new\"\n\
         [[routes]]\nid = \"zero\"\npath = \"/zero\"\nsplit = {{ new = 0, legacy = 100 }}\n\
         [[routes]]\nid = \"allnew\"\npath = \"/all\"\nsplit = {{ new = 100, legacy = 0 }}\n\
         [[routes]]\nid = \"ten\"\npath = \"/ten\"\nsplit = {{ new = 10, legacy = 90 }}\n\
         [[routes]]\nid = \"fb\"\npath = \"/fb\"\nto = \"failing\"\nfallback = \"legacy\"\n\
         [[routes]]\nid = \"held\"\npath = \"/held/*\"\nto = \"new\"\n\
         [[routes]]\nid = \"legacy\"\npath = \"/legacy/*\"\nto = \"legacy\"\n",
        upstream("legacy", legacy),
        upstream("new", new),
        upstream("failing", failing),
    )
}

/// The canary, fallback, hold and metrics scenarios over one h2 connection.
async fn h2_scenarios(
    p: &Proxy,
    h2: &H2,
    proto: &str,
    legacy: &Origin,
    new: &Origin,
    failing: &Origin,
) {
    // Routing by :authority and by path; unmatched is 404.
    let r = h2
        .send("GET", "/anything", Some("shop.example.com"), &[], "")
        .await
        .unwrap();
    assert_eq!((r.status, r.origin()), (200, "new"), "{}", r.body);
    // The origin sees a Host, and X-Forwarded-Host/-Proto as over HTTP/1.1.
    let seen = &r.json()["headers"];
    assert_eq!(seen["host"], "shop.example.com", "{seen}");
    assert_eq!(seen["x-forwarded-host"], "shop.example.com", "{seen}");
    assert_eq!(seen["x-forwarded-proto"], proto, "{seen}");
    assert_eq!(h2.get("/user/7").await.origin(), "new");
    assert_eq!(h2.get("/legacy/1").await.origin(), "legacy");
    assert_eq!(h2.get("/nothing").await.status, 404);

    // Split extremes exactly, 10% within its 99.9% binomial interval; requests multiplexed.
    for (path, want) in [("/zero", "legacy"), ("/all", "new")] {
        let rs = futures_all(h2, path, 300).await;
        let wrong = rs.iter().filter(|r| r.origin() != want).count();
        assert_eq!(wrong, 0, "{path}: {wrong} of 300 not on {want}");
        for r in &rs {
            assert_eq!(r.header("x-switchyard-upstream"), want);
        }
    }
    let n = 2000.0;
    let rs = futures_all(h2, "/ten", n as usize).await;
    let to_new = rs.iter().filter(|r| r.origin() == "new").count() as f64;
    let half = 3.29 * (n * 0.1 * 0.9f64).sqrt();
    assert!(
        (to_new - n * 0.1).abs() <= half,
        "10% split over h2: {to_new} of {n}"
    );

    // Fallback: GETs replay on legacy after the 5xx; a POST is not replayed.
    let before = failing.state.requests.load(Ordering::SeqCst);
    for _ in 0..5 {
        let r = h2.get("/fb").await;
        assert_eq!((r.status, r.origin()), (200, "legacy"), "{}", r.body);
    }
    assert_eq!(failing.state.requests.load(Ordering::SeqCst) - before, 5);
    let r = h2.send("POST", "/fb", None, &[], "order=1").await.unwrap();
    assert_eq!(r.status, 500);
    assert_eq!(legacy.state.count("POST"), 0, "a POST was replayed");

    // Hold: requests wait, then go on after release.
    let auth = format!("Bearer {TOKEN}");
    let hold = send(
        &client(),
        "POST",
        &p.admin_url("/v1/hold"),
        &[("authorization", &auth)],
        r#"{"routes": ["held"], "max_ms": 30000}"#,
    )
    .await
    .unwrap();
    assert_eq!(hold.status, 200, "{}", hold.body);
    let seen = new.state.requests.load(Ordering::SeqCst);
    let waiting: Vec<_> = (0..3)
        .map(|i| {
            let h2 = h2.clone();
            tokio::spawn(async move { h2.get(&format!("/held/{i}")).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        new.state.requests.load(Ordering::SeqCst),
        seen,
        "held requests reached the origin"
    );
    for w in &waiting {
        assert!(!w.is_finished(), "a held request was answered");
    }
    let rel = send(
        &client(),
        "POST",
        &p.admin_url("/v1/release"),
        &[("authorization", &auth)],
        "",
    )
    .await
    .unwrap();
    assert_eq!(rel.status, 200, "{}", rel.body);
    for w in waiting {
        let r = w.await.unwrap();
        assert_eq!((r.status, r.origin()), (200, "new"));
    }

    // Metrics count h2 requests like any other.
    let m = metrics(p).await;
    let count = |route: &str, up: &str, code: &str| {
        metric_with(
            &m,
            "switchyard_requests_total",
            &[("route", route), ("upstream", up), ("code", code)],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(count("allnew", "new", "2xx"), 300.0, "{m}");
    assert_eq!(count("zero", "legacy", "2xx"), 300.0);
    assert_eq!(count("held", "new", "2xx"), 3.0);
    assert_eq!(
        metric_with(
            &m,
            "switchyard_fallbacks_total",
            &[
                ("route", "fb"),
                ("from", "failing"),
                ("to", "legacy"),
                ("reason", "5xx")
            ]
        ),
        Some(5.0),
        "{m}"
    );
}

/// `n` concurrent GETs of `path` on one h2 connection (multiplexed streams).
async fn futures_all(h2: &H2, path: &str, n: usize) -> Vec<Resp> {
    let mut out = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(50) {
        let tasks: Vec<_> = (0..50.min(n - chunk * 50))
            .map(|_| {
                let (h2, path) = (h2.clone(), path.to_string());
                tokio::spawn(async move { h2.get(&path).await })
            })
            .collect();
        for t in tasks {
            out.push(t.await.unwrap());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_over_tls_runs_the_canary_fallback_and_hold_scenarios() {
    let legacy = Origin::start("legacy").await;
    let new = Origin::start("new").await;
    let failing = Origin::start("failing").await;
    failing.state.set_mode(Mode::Error500);
    let routes = routes_dir(&scenario_routes(&legacy, &new, &failing));
    let certs = tempfile::tempdir().unwrap();
    install(
        certs.path(),
        "site",
        &pair("site", &["a.test", "shop.example.com"], 30),
    );
    let (p, tls) = start_tls(
        routes.path(),
        certs.path(),
        &[],
        &[("SWITCHYARD_ADMIN_TOKEN", TOKEN)],
    )
    .await;
    let h2 = H2::tls(tls, "a.test").await;
    h2_scenarios(&p, &h2, "https", &legacy, &new, &failing).await;
    let r = https1(tls, "a.test", "/legacy/x").await.unwrap();
    assert_eq!(r.json()["headers"]["x-forwarded-proto"], "https");

    // curl negotiates h2 through ALPN.
    let out = Command::new("curl")
        .args([
            "-sk",
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
        ])
        .arg("--resolve")
        .arg(format!("a.test:{}:127.0.0.1", tls.port()))
        .arg(format!("https://a.test:{}/user/1", tls.port()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_with_prior_knowledge_runs_the_same_scenarios_beside_http1() {
    let legacy = Origin::start("legacy").await;
    let new = Origin::start("new").await;
    let failing = Origin::start("failing").await;
    failing.state.set_mode(Mode::Error500);
    let routes = routes_dir(&scenario_routes(&legacy, &new, &failing));
    let p = Proxy::start_env(
        routes.path(),
        &["--h2c"],
        &[("SWITCHYARD_ADMIN_TOKEN", TOKEN)],
    )
    .await;
    let h2 = H2::h2c(p.addr, "a.test").await;
    h2_scenarios(&p, &h2, "http", &legacy, &new, &failing).await;
    // HTTP/1.1 clients still work on the same listener.
    assert_eq!(get(&p.url("/user/1")).await.origin(), "new");
    assert_eq!(curl_h2c(&p.url("/user/1")), "2 200");
    // An idle h2 connection closes after --idle-timeout, as an HTTP/1.1 one does.
    let p3 = Proxy::start_with(routes.path(), &["--h2c", "--idle-timeout", "1"]).await;
    let h2 = H2::h2c(p3.addr, "a.test").await;
    assert_eq!(h2.get("/user/1").await.status, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(h2.usable().await, "closed before the idle timeout");
    wait_until(
        Duration::from_secs(5),
        "the idle h2 connection to close",
        || async { !h2.usable().await },
    )
    .await;
    // Without --h2c the plain listener speaks HTTP/1.1 only.
    let p2 = Proxy::start(routes.path()).await;
    assert_ne!(curl_h2c(&p2.url("/user/1")), "2 200");
}

/// `curl --http2-prior-knowledge URL`: "HTTP_VERSION STATUS" as curl saw them.
fn curl_h2c(url: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "--http2-prior-knowledge", "-o", "/dev/null", "-w"])
        .args(["%{http_version} %{http_code}", url])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A child process killed when dropped (a failed assertion must not leave a server running).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One load client's tally.
#[derive(Default)]
struct Tally {
    ok: u64,
    /// h2 requests hyper canceled before sending them (GOAWAY first), sent again.
    canceled: u64,
    errors: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_upgrade_under_load_fails_no_request() {
    let o = Origin::start("legacy").await;
    let routes = routes_dir(&catch_all(&o));
    let certs = tempfile::tempdir().unwrap();
    install(certs.path(), "site", &pair("site", &["a.test"], 30));
    let work = tempfile::tempdir().unwrap();
    let sock = work.path().join("upgrade.sock").display().to_string();
    let state = work.path().join("state").display().to_string();
    let plain: std::net::SocketAddr = format!("127.0.0.1:{}", reserve_port()).parse().unwrap();
    let tls: std::net::SocketAddr = format!("127.0.0.1:{}", reserve_port()).parse().unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", reserve_port()).parse().unwrap();
    let (plain_s, tls_s, admin_s) = (plain.to_string(), tls.to_string(), admin.to_string());
    let certs_s = certs.path().display().to_string();
    let args = [
        "--listen",
        plain_s.as_str(),
        "--tls-listen",
        tls_s.as_str(),
        "--tls-certs",
        certs_s.as_str(),
        "--admin",
        admin_s.as_str(),
        "--state",
        state.as_str(),
        "--upgrade-sock",
        sock.as_str(),
    ];
    let spawn = |extra: &[&str]| -> Child {
        let mut c = serve_cmd(routes.path(), &args);
        c.args(extra).stderr(Stdio::inherit());
        c.spawn().unwrap()
    };
    let mut old = Killed(spawn(&[]));
    for a in [plain, tls, admin] {
        wait_port(a).await;
    }
    let old_pid = old.0.id();

    // Keep-alive clients, new-connection clients (plain and TLS) and an h2 client.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for kind in 0..6 {
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let mut t = Tally::default();
            let keep = client();
            let url = format!("http://{plain}/k");
            while !stop.load(Ordering::SeqCst) {
                let r = match kind {
                    0 | 1 => send(&keep, "GET", &url, &[], Bytes::new()).await,
                    2 => send(&client(), "GET", &url, &[], Bytes::new()).await,
                    3 => https1(tls, "a.test", "/t").await,
                    5 => {
                        // HTTP/1.1 keep-alive over TLS: requests on one connection until the
                        // server ends it, then a new connection.
                        let mut c = match Https1::connect(tls, "a.test").await {
                            Ok(c) => c,
                            Err(e) => {
                                t.errors.push(format!("client {kind}: connect: {e}"));
                                continue;
                            }
                        };
                        while !stop.load(Ordering::SeqCst) && c.usable().await {
                            match c.get("/tk").await {
                                Ok(r) if r.status == 200 => t.ok += 1,
                                other => {
                                    t.errors
                                        .push(format!("client {kind} (TLS keep-alive): {other:?}"));
                                    break;
                                }
                            }
                        }
                        continue;
                    }
                    _ => {
                        // 20 requests per h2 connection, then a new one.
                        // A connection that got GOAWAY sends nothing more: the next request
                        // goes on a new connection, as HTTP/2 clients do.
                        let h2 = H2::tls(tls, "a.test").await;
                        for _ in 0..20 {
                            if !h2.usable().await {
                                break;
                            }
                            match h2.send("GET", "/h2", None, &[], "").await {
                                Ok(r) if r.status == 200 => t.ok += 1,
                                // Never sent (GOAWAY came first): a new connection, as the
                                // pooled hyper client and browsers do.
                                Err(e) if e.starts_with(CANCELED) => {
                                    t.canceled += 1;
                                    break;
                                }
                                other => {
                                    t.errors.push(format!("client {kind} (h2): {other:?}"));
                                    break;
                                }
                            }
                        }
                        continue;
                    }
                };
                match r {
                    Ok(r) if r.status == 200 => t.ok += 1,
                    other => t.errors.push(format!("client {kind}: {other:?}")),
                }
            }
            t
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The new process waits for the sockets; SIGQUIT makes the old one hand them over.
    let mut new = Killed(spawn(&["--upgrade"]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = Command::new("kill")
        .args(["-QUIT", &old_pid.to_string()])
        .status();
    // The old process exits once its requests are done (5 s hand-over window, 1 s grace).
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = old.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the old process did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("old process exited: {status}");
    // Load goes on against the new process alone for a while.
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::SeqCst);
    let (mut ok, mut canceled) = (0, 0);
    let mut errors = Vec::new();
    for t in load {
        let t = t.await.unwrap();
        ok += t.ok;
        canceled += t.canceled;
        errors.extend(t.errors);
    }
    eprintln!(
        "{ok} requests across the upgrade, {} failed, {canceled} h2 requests canceled by the client before sending (GOAWAY) and sent again",
        errors.len()
    );
    assert!(ok > 100, "the load ran ({ok} requests)");
    assert!(errors.is_empty(), "failed requests: {errors:#?}");

    // The new process serves everything: data plane, TLS, admin (with the history it took over).
    assert!(
        new.0.try_wait().unwrap().is_none(),
        "the new process is running"
    );
    assert_eq!(get(&format!("http://{plain}/after")).await.status, 200);
    assert_eq!(https1(tls, "a.test", "/after").await.unwrap().status, 200);
    let h = get(&format!("http://{admin}/healthz")).await;
    assert_eq!(h.status, 200, "{}", h.body);
    assert_eq!(
        get(&format!("http://{admin}/v1/tls")).await.json()["certificates"][0]["name"],
        "site"
    );
}

/// The pid of the process listening on `addr` (from `ss`).
fn listener_pid(addr: std::net::SocketAddr) -> Option<u32> {
    let out = Command::new("ss")
        .args(["-Hltnp", &format!("sport = :{}", addr.port())])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let at = text.find("pid=")? + 4;
    text[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_starts_the_same_binary_which_takes_over() {
    let o = Origin::start("legacy").await;
    let routes = routes_dir(&catch_all(&o));
    let work = tempfile::tempdir().unwrap();
    let sock = work.path().join("upgrade.sock").display().to_string();
    let plain: std::net::SocketAddr = format!("127.0.0.1:{}", reserve_port()).parse().unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", reserve_port()).parse().unwrap();
    let (plain_s, admin_s) = (plain.to_string(), admin.to_string());
    let mut old = Killed(
        serve_cmd(
            routes.path(),
            &[
                "--listen",
                &plain_s,
                "--admin",
                &admin_s,
                "--upgrade-sock",
                &sock,
            ],
        )
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap(),
    );
    wait_port(plain).await;
    wait_port(admin).await;
    let old_pid = old.0.id();
    let _ = Command::new("kill")
        .args(["-USR2", &old_pid.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while old.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the old process did not exit");
        // Requests keep being answered meanwhile, by one process or the other.
        assert_eq!(get(&format!("http://{plain}/during")).await.status, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let new_pid = listener_pid(plain).expect("a process listens after the upgrade");
    // Kill the successor at the end whatever happens (it is not this test's child).
    struct KillPid(u32);
    impl Drop for KillPid {
        fn drop(&mut self) {
            let _ = Command::new("kill").arg(self.0.to_string()).status();
        }
    }
    let _successor = KillPid(new_pid);
    assert_ne!(new_pid, old_pid);
    assert_eq!(get(&format!("http://{plain}/after")).await.status, 200);
    wait_until(Duration::from_secs(10), "the admin port", || async {
        listener_pid(admin) == Some(new_pid)
    })
    .await;
    let cmdline = std::fs::read_to_string(format!("/proc/{new_pid}/cmdline")).unwrap();
    assert!(cmdline.contains("--upgrade"), "{cmdline:?}");
}

/// Reads from `s` until the peer closes or `limit` passes; the bytes read, and whether it
/// closed.
async fn read_until_close(
    s: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    limit: Duration,
) -> (Vec<u8>, bool) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, false),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_over_tls_gets_the_head_deadline_and_pipelining() {
    use tokio::io::AsyncWriteExt;
    let o = Origin::start("legacy").await;
    let routes = routes_dir(&catch_all(&o));
    let certs = tempfile::tempdir().unwrap();
    install(certs.path(), "site", &pair("site", &["site.test"], 30));
    let (p, tls) = start_tls(routes.path(), certs.path(), &["--head-timeout", "1"], &[]).await;

    // Two requests in one write over TLS: both answered, in order, over the same connection;
    // the origin hears X-Forwarded-Proto https.
    let mut s = tls_connect(tls, Some("site.test"), &[b"http/1.1"])
        .await
        .unwrap();
    s.write_all(
        b"GET /one HTTP/1.1\r\nHost: site.test\r\n\r\nGET /two HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let (got, closed) = read_until_close(&mut s, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(closed, "Connection: close ends the connection: {text}");
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
    let (one, two) = (text.find("/one").unwrap(), text.find("/two").unwrap());
    assert!(one < two, "answered in order: {text}");
    assert!(text.contains(r#""x-forwarded-proto":"https""#), "{text}");

    // A head that never ends is closed at the deadline (1 s here), not kept open.
    let before = metric_with(
        &metrics(&p).await,
        "switchyard_rejected_total",
        &[("reason", "head_timeout")],
    )
    .unwrap_or(0.0);
    let mut slow = tls_connect(tls, Some("site.test"), &[b"http/1.1"])
        .await
        .unwrap();
    slow.write_all(b"GET /slow HTTP/1.1\r\nHost: site.test\r\n")
        .await
        .unwrap();
    let (got, closed) = read_until_close(&mut slow, Duration::from_secs(8)).await;
    assert!(closed, "a slow head over TLS stays open past its deadline");
    assert!(got.is_empty(), "no answer to an unfinished head: {got:?}");
    let after = metric_with(
        &metrics(&p).await,
        "switchyard_rejected_total",
        &[("reason", "head_timeout")],
    )
    .unwrap_or(0.0);
    assert_eq!(after, before + 1.0);
}
