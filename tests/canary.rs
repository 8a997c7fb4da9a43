//! Canary shifting and health-driven fallback, end to end: the built binary in front of real
//! loopback origins that fail on command (500s, hangs, killed listeners).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;

fn upstream(name: &str, o: &Origin, extra: &str) -> String {
    format!("[upstreams.{name}]\naddrs = [\"{}\"]\n{extra}\n", o.addr)
}

/// Sum of every sample of metric `name` whose labels include all of `labels`.
fn metric_with(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (head, value) = l.rsplit_once(' ')?;
            let (n, rest) = head.split_once('{').unwrap_or((head, "}"));
            if n != name {
                return None;
            }
            let set = rest.trim_end_matches('}');
            let ok = labels
                .iter()
                .all(|(k, v)| set.split(',').any(|p| p == format!("{k}=\"{v}\"")));
            ok.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Whether any sample of `name` has all of `labels`.
fn has_metric(text: &str, name: &str, labels: &[(&str, &str)]) -> bool {
    text.lines().filter(|l| !l.starts_with('#')).any(|l| {
        l.split_once('{').is_some_and(|(n, rest)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
    })
}

async fn metrics(p: &Proxy) -> String {
    get(&p.admin_url("/metrics")).await.body
}

/// Waits (at most `limit`) until `cond` holds on the proxy's metrics.
async fn wait_metrics(p: &Proxy, limit: Duration, what: &str, cond: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        let m = metrics(p).await;
        if cond(&m) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn healthy_is(upstream: &str, v: f64) -> impl Fn(&str) -> bool + '_ {
    move |m: &str| {
        has_metric(m, "switchyard_upstream_healthy", &[("upstream", upstream)])
            && metric_with(m, "switchyard_upstream_healthy", &[("upstream", upstream)]) == v
    }
}

fn fallbacks(m: &str, route: &str, from: &str, to: &str, reason: &str) -> f64 {
    metric_with(
        m,
        "switchyard_fallbacks_total",
        &[
            ("route", route),
            ("from", from),
            ("to", to),
            ("reason", reason),
        ],
    )
}

/// Sends `n` GETs to `url` with up to `conc` in flight; `headers(i)` gives request `i`'s
/// headers. Returns the responses in request order; panics on transport errors.
async fn fire(
    url: &str,
    n: usize,
    conc: usize,
    headers: impl Fn(usize) -> Vec<(String, String)> + Send + Sync + 'static,
) -> Vec<Resp> {
    let next = Arc::new(AtomicU64::new(0));
    let headers = Arc::new(headers);
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (next, headers, url) = (next.clone(), headers.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= n {
                    break;
                }
                let h = headers(i);
                let h: Vec<(&str, &str)> =
                    h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let r = send(&c, "GET", &url, &h, Bytes::new())
                    .await
                    .unwrap_or_else(|e| panic!("request {i}: {e}"));
                out.push((i, r));
            }
            out
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, r)| r).collect()
}

/// The upstream that answered, checked against the origin's own header.
fn answered_by(r: &Resp) -> String {
    assert_eq!(r.status, 200, "{}", r.body);
    let up = r.header("x-switchyard-upstream");
    assert_eq!(
        up,
        r.origin(),
        "response header names the origin that answered"
    );
    up.to_string()
}

/// Half-width of the 99.9% two-sided binomial interval for `n` trials at probability `p`.
fn binomial_999(n: f64, p: f64) -> f64 {
    3.29 * (n * p * (1.0 - p)).sqrt()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_distribution_is_binomial_and_extremes_are_exact() {
    let legacy = Origin::start("legacy").await;
    let new = Origin::start("new").await;
    let routes = format!(
        "{}{}\
         [[routes]]\nid = \"ten\"\npath = \"/ten\"\nsplit = {{ new = 10, legacy = 90 }}\n\
         [[routes]]\nid = \"zero\"\npath = \"/zero\"\nsplit = {{ new = 0, legacy = 100 }}\n\
         [[routes]]\nid = \"all\"\npath = \"/all\"\nsplit = {{ new = 100, legacy = 0 }}\n\
         [[routes]]\nid = \"tiny\"\npath = \"/tiny\"\nsplit = {{ new = 0.01, legacy = 99.99 }}\n",
        upstream("legacy", &legacy, ""),
        upstream("new", &new, ""),
    );
    let dir = routes_dir(&routes);
    let p = Proxy::start(dir.path()).await;

    let n = 10_000;
    let rs = fire(&p.url("/ten"), n, 32, |_| vec![]).await;
    let to_new = rs.iter().filter(|r| answered_by(r) == "new").count() as f64;
    let (mean, half) = (n as f64 * 0.1, binomial_999(n as f64, 0.1));
    eprintln!("10% split: {to_new} of {n} to new (99.9% interval {mean} ± {half:.0})");
    assert!(
        (to_new - mean).abs() <= half,
        "{to_new} of {n} went to new; 99.9% interval is {mean} ± {half:.0}"
    );
    assert_eq!(new.state.requests.load(Ordering::SeqCst) as f64, to_new);

    for (path, want) in [("/zero", "legacy"), ("/all", "new")] {
        let rs = fire(&p.url(path), 2_000, 32, |_| vec![]).await;
        let wrong = rs.iter().filter(|r| answered_by(r) != want).count();
        assert_eq!(wrong, 0, "{path}: {wrong} of 2000 not on {want}");
    }
    // 0.01% is one bucket of 10,000: possible, just rare (expected 0.2 in 2,000).
    let rs = fire(&p.url("/tiny"), 2_000, 32, |_| vec![]).await;
    let tiny = rs.iter().filter(|r| answered_by(r) == "new").count();
    assert!(tiny <= 5, "0.01% split sent {tiny} of 2000 to new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_clients_only_move_toward_the_raised_arm() {
    let legacy = Origin::start("legacy").await;
    let new = Origin::start("new").await;
    let table = |w: u32| {
        format!(
            "{}{}\
             [[routes]]\nid = \"c\"\npath = \"/c\"\nsplit = {{ new = {w}, legacy = {} }}\nsticky = \"cookie:sid\"\nfallback = \"legacy\"\n\
             [[routes]]\nid = \"h\"\npath = \"/h\"\nsplit = {{ new = {w}, legacy = {} }}\nsticky = \"header:X-User\"\n",
            upstream("legacy", &legacy, ""),
            upstream("new", &new, ""),
            100 - w,
            100 - w,
        )
    };
    let dir = routes_dir(&table(5));
    let p = Proxy::start(dir.path()).await;
    let clients = 1_000;
    let cookie = |i: usize| vec![("cookie".to_string(), format!("theme=dark; sid=user-{i}"))];
    let arms =
        |rs: Vec<Resp>| -> Vec<bool> { rs.iter().map(|r| answered_by(r) == "new").collect() };

    let mut prev = arms(fire(&p.url("/c"), clients, 16, cookie).await);
    // The same key always lands in the same arm.
    assert_eq!(arms(fire(&p.url("/c"), clients, 16, cookie).await), prev);
    let header_arms = arms(
        fire(&p.url("/h"), clients, 16, |i| {
            vec![("x-user".to_string(), format!("user-{i}"))]
        })
        .await,
    );
    assert_eq!(header_arms, prev, "the key hashes the same from a header");

    let v0 = p.table_version().await;
    for (step, w) in [25u32, 50, 100].into_iter().enumerate() {
        let on_new = prev.iter().filter(|&&b| b).count();
        rewrite_routes(dir.path(), &table(w));
        p.wait_version(v0 + step as u64 + 1).await;
        let now = arms(fire(&p.url("/c"), clients, 16, cookie).await);
        let back: Vec<usize> = (0..clients).filter(|&i| prev[i] && !now[i]).collect();
        assert!(
            back.is_empty(),
            "raising new to {w}%: {} clients moved from new back to legacy: {:?}",
            back.len(),
            &back[..back.len().min(10)]
        );
        let count = now.iter().filter(|&&b| b).count();
        let (mean, half) = (
            clients as f64 * f64::from(w) / 100.0,
            binomial_999(clients as f64, f64::from(w) / 100.0),
        );
        eprintln!("sticky at {w}%: {count} of {clients} on new (was {on_new})");
        assert!(
            (count as f64 - mean).abs() <= half.max(0.5),
            "{count} of {clients} on new at {w}%"
        );
        prev = now;
    }
    assert!(prev.iter().all(|&b| b), "at 100% every client is on new");

    // Without the sticky key, assignment is per request: at 50% both arms show up.
    rewrite_routes(dir.path(), &table(50));
    p.wait_version(v0 + 4).await;
    let rs = fire(&p.url("/c"), 200, 8, |_| vec![]).await;
    let to_new = rs.iter().filter(|r| answered_by(r) == "new").count();
    assert!(
        (40..=160).contains(&to_new),
        "{to_new} of 200 without a key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_header_with_and_without_secret() {
    let legacy = Origin::start("legacy").await;
    let new = Origin::start("new").await;
    let other = Origin::start("other").await;
    let ups = format!(
        "{}{}{}",
        upstream("legacy", &legacy, ""),
        upstream("new", &new, ""),
        upstream("other", &other, "")
    );
    let routes = "[[routes]]\nid = \"r\"\npath = \"/r\"\nsplit = { new = 0, legacy = 100 }\n\
                  [[routes]]\nid = \"only-legacy\"\npath = \"/l\"\nto = \"legacy\"\n\
                  [[routes]]\nid = \"f\"\npath = \"/f\"\nto = \"other\"\nfallback = \"legacy\"\n";
    let c = client();
    let go = |p: &Proxy, path: &str, h: &[(&str, &str)]| {
        let (c, url) = (c.clone(), p.url(path));
        let h: Vec<(String, String)> = h
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        async move {
            let h: Vec<(&str, &str)> = h.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
            send(&c, "GET", &url, &h, Bytes::new()).await.unwrap()
        }
    };

    // Defaults: `x-switchyard-upstream` forces any upstream of the route, no secret needed.
    let dir = routes_dir(&format!("{ups}{routes}"));
    let p = Proxy::start(dir.path()).await;
    assert_eq!(go(&p, "/r", &[]).await.origin(), "legacy");
    let r = go(&p, "/r", &[("x-switchyard-upstream", "new")]).await;
    assert_eq!(answered_by(&r), "new");
    assert!(
        r.json()["headers"].get("x-switchyard-upstream").is_none(),
        "the override header is not forwarded: {}",
        r.body
    );
    // Only an upstream of the route can be forced; anything else is ignored.
    assert_eq!(
        go(&p, "/l", &[("x-switchyard-upstream", "new")])
            .await
            .origin(),
        "legacy"
    );
    assert_eq!(
        go(&p, "/r", &[("x-switchyard-upstream", "nope")])
            .await
            .origin(),
        "legacy"
    );
    // A fallback is an upstream of the route too.
    assert_eq!(
        go(&p, "/f", &[("x-switchyard-upstream", "legacy")])
            .await
            .origin(),
        "legacy"
    );
    // A forced upstream that fails is not fallen back from: the tester sees its real answer.
    other.state.set_mode(Mode::Error500);
    assert_eq!(
        go(&p, "/f", &[]).await.origin(),
        "legacy",
        "unforced: fallback"
    );
    let r = go(&p, "/f", &[("x-switchyard-upstream", "other")]).await;
    assert_eq!((r.status, r.origin()), (500, "other"));
    other.state.set_mode(Mode::Normal);
    drop(p);

    // A renamed header that requires a secret; the response header turned off.
    let dir = routes_dir(&format!(
        "[proxy]\noverride_header = \"X-Pick\"\noverride_secret_env = \"SY_CANARY_SECRET\"\nresponse_header = false\n{ups}{routes}"
    ));
    let p = Proxy::start_env(dir.path(), &[], &[("SY_CANARY_SECRET", "s3cret")]).await;
    assert_eq!(
        go(&p, "/r", &[("x-pick", "new")]).await.origin(),
        "legacy",
        "no secret"
    );
    let r = go(
        &p,
        "/r",
        &[("x-pick", "new"), ("x-switchyard-secret", "wrong")],
    )
    .await;
    assert_eq!(r.origin(), "legacy", "wrong secret");
    let r = go(
        &p,
        "/r",
        &[("x-pick", "new"), ("x-switchyard-secret", "s3creT")],
    )
    .await;
    assert_eq!(r.origin(), "legacy", "secret is case-sensitive");
    let r = go(
        &p,
        "/r",
        &[("x-pick", "new"), ("x-switchyard-secret", "s3cret")],
    )
    .await;
    assert_eq!((r.status, r.origin()), (200, "new"), "right secret");
    let j = r.json();
    assert!(
        j["headers"].get("x-switchyard-secret").is_none(),
        "secret forwarded: {j}"
    );
    assert!(
        j["headers"].get("x-pick").is_none(),
        "override forwarded: {j}"
    );
    assert_eq!(
        r.header("x-switchyard-upstream"),
        "",
        "response header is off"
    );
    // The default name means nothing once the header is renamed.
    let r = go(
        &p,
        "/r",
        &[
            ("x-switchyard-upstream", "new"),
            ("x-switchyard-secret", "s3cret"),
        ],
    )
    .await;
    assert_eq!(r.origin(), "legacy");
    drop(p);

    // The secret's variable unset: the table does not compile, so the proxy refuses to start.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("check")
        .arg(dir.path())
        .env_remove("SY_CANARY_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("override_secret_env"));

    // Overrides disabled.
    let dir = routes_dir(&format!("[proxy]\noverride_header = \"\"\n{ups}{routes}"));
    let p = Proxy::start(dir.path()).await;
    let r = go(&p, "/r", &[("x-switchyard-upstream", "new")]).await;
    assert_eq!(answered_by(&r), "legacy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_under_load_no_client_errors_then_recovers() {
    let legacy = Origin::start("legacy").await;
    let mut new = Origin::start("new").await;
    let health = "health = { path = \"/healthz\", interval_ms = 100, timeout_ms = 200, healthy = 2, unhealthy = 2 }";
    let routes = format!(
        "{}{}[[routes]]\nid = \"app\"\npath = \"/*\"\nto = \"new\"\nfallback = \"legacy\"\n",
        upstream("legacy", &legacy, ""),
        upstream("new", &new, health),
    );
    // Each answer takes 30 ms, so the kill always catches requests in flight on new.
    new.state.delay_ms.store(30, Ordering::SeqCst);
    legacy.state.delay_ms.store(30, Ordering::SeqCst);
    let dir = routes_dir(&routes);
    let p = Proxy::start_env(
        dir.path(),
        &[],
        &[(
            "SWITCHYARD_LOG",
            "warn,pingora_proxy=error,pingora_core=error",
        )],
    )
    .await;
    wait_metrics(
        &p,
        Duration::from_secs(5),
        "new healthy",
        healthy_is("new", 1.0),
    )
    .await;

    // ~400 requests/s: 16 clients with keep-alive, each starting a request every 40 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for w in 0..16 {
        let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
        let url = p.url(&format!("/item/{w}"));
        workers.push(tokio::spawn(async move {
            let c = client();
            let mut tick = tokio::time::interval(Duration::from_millis(40));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                match send(&c, "GET", &url, &[], Bytes::new()).await {
                    Ok(r) if r.status == 200 && matches!(r.origin(), "new" | "legacy") => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures.lock().unwrap().push(format!(
                        "{} {} {}",
                        r.status,
                        r.origin(),
                        r.body
                    )),
                    Err(e) => failures.lock().unwrap().push(e),
                }
            }
        }));
    }
    let served = |o: &Origin| o.state.requests.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let new_before = served(&new);
    assert!(
        new_before > 50,
        "new took {new_before} requests before the kill"
    );

    // Kill: listener and every open connection (the proxy's pooled ones included) close.
    let killed_at = Instant::now();
    let legacy_at_kill = served(&legacy);
    new.kill().await;
    wait_metrics(
        &p,
        Duration::from_secs(5),
        "new unhealthy",
        healthy_is("new", 0.0),
    )
    .await;
    eprintln!("marked unhealthy {:?} after the kill", killed_at.elapsed());
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        served(&legacy) > legacy_at_kill + 100,
        "legacy took over: {} requests",
        served(&legacy) - legacy_at_kill
    );

    // Revive: traffic returns after `healthy` passing checks.
    let new_at_revive = served(&new);
    let revived_at = Instant::now();
    new.revive().await;
    wait_metrics(
        &p,
        Duration::from_secs(5),
        "new healthy again",
        healthy_is("new", 1.0),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while served(&new) < new_at_revive + 50 {
        assert!(Instant::now() < deadline, "new never took traffic again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "traffic back on new {:?} after the revive",
        revived_at.elapsed()
    );
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let failures = std::mem::take(&mut *failures.lock().unwrap());
    let ok = ok.load(Ordering::Relaxed);
    eprintln!("chaos: {ok} ok, {} failed", failures.len());
    assert!(
        failures.is_empty(),
        "{} client-visible errors of {}: {:?}",
        failures.len(),
        ok + failures.len() as u64,
        &failures[..failures.len().min(5)]
    );
    let m = metrics(&p).await;
    assert!(
        fallbacks(&m, "app", "new", "legacy", "unhealthy") > 0.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_backend_5xx_replays_idempotent_only() {
    let legacy = Origin::start("legacy").await;
    let new = Origin::start("new").await;
    new.state.set_mode(Mode::Error500);
    let routes = format!(
        "{}{}\
         [[routes]]\nid = \"a\"\npath = \"/a\"\nto = \"new\"\nfallback = \"legacy\"\n\
         [[routes]]\nid = \"b\"\npath = \"/b\"\nto = \"new\"\nfallback = \"legacy\"\nretry_non_idempotent = true\n",
        upstream("legacy", &legacy, ""),
        upstream("new", &new, ""),
    );
    let dir = routes_dir(&routes);
    let p = Proxy::start(dir.path()).await;
    let c = client();
    let req = |m: &'static str, path: &str, body: Vec<u8>| {
        let (c, url) = (c.clone(), p.url(path));
        async move { send(&c, m, &url, &[], body).await.unwrap() }
    };

    for _ in 0..10 {
        assert_eq!(answered_by(&req("GET", "/a", vec![]).await), "legacy");
    }
    for m in ["PUT", "DELETE", "OPTIONS"] {
        let r = req(m, "/a", vec![b'p'; 1000]).await;
        assert_eq!(answered_by(&r), "legacy", "{m}");
        assert_eq!(
            r.json()["body_len"],
            1000,
            "{m}: the replayed body is whole"
        );
    }
    let r = req("HEAD", "/a", vec![]).await;
    assert_eq!((r.status, r.origin()), (200, "legacy"), "HEAD");
    for m in ["POST", "PATCH"] {
        for _ in 0..3 {
            let r = req(m, "/a", b"order=1".to_vec()).await;
            assert_eq!(r.status, 500, "{m} is not replayed: {}", r.body);
            assert_eq!(r.header("x-switchyard-upstream"), "new");
        }
        assert_eq!(legacy.state.count(m), 0, "legacy saw a replayed {m}");
        assert_eq!(new.state.count(m), 3);
    }
    // The route opted in: POST is replayed on legacy, with the body intact.
    let r = req("POST", "/b", vec![b'x'; 10_000]).await;
    assert_eq!(answered_by(&r), "legacy");
    assert_eq!(r.json()["body_len"], 10_000);
    assert_eq!(legacy.state.count("POST"), 1);
    assert_eq!(new.state.count("POST"), 4);

    let m = metrics(&p).await;
    assert_eq!(fallbacks(&m, "a", "new", "legacy", "5xx"), 14.0, "{m}");
    assert_eq!(fallbacks(&m, "b", "new", "legacy", "5xx"), 1.0, "{m}");
    // 5xx do not count for outlier detection unless the upstream opts in.
    assert_eq!(
        metric_with(
            &m,
            "switchyard_upstream_ejections_total",
            &[("upstream", "new")]
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connection_falls_back_for_idempotent_requests_only() {
    let legacy = Origin::start("legacy").await;
    let new = Origin::start("new").await;
    new.state.set_mode(Mode::Close);
    let routes = format!(
        "{}{}[[routes]]\nid = \"d\"\npath = \"/*\"\nto = \"new\"\nfallback = \"legacy\"\n",
        upstream("legacy", &legacy, ""),
        upstream("new", &new, "outlier = { consecutive_failures = 0 }"),
    );
    let dir = routes_dir(&routes);
    let p = Proxy::start(dir.path()).await;
    let c = client();
    // Fresh connections to new: the request is sent, then the connection closes unanswered.
    for _ in 0..3 {
        let r = send(&c, "GET", &p.url("/x"), &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(answered_by(&r), "legacy");
    }
    let r = send(&c, "PUT", &p.url("/x"), &[], "v=1").await.unwrap();
    assert_eq!(answered_by(&r), "legacy");
    assert_eq!(new.state.count("GET"), 3);
    // The POST may have been acted on: it is not replayed.
    let r = send(&c, "POST", &p.url("/x"), &[], "v=1").await.unwrap();
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(legacy.state.count("POST"), 0);
    assert_eq!(new.state.count("POST"), 1);
    let m = metrics(&p).await;
    assert_eq!(
        fallbacks(&m, "d", "new", "legacy", "upstream_error"),
        4.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_retry_once_response_headers_went_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let legacy = Origin::start("legacy").await;
    // An origin that sends its headers and part of the body, then drops the connection.
    let raw = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let raw_addr = raw.local_addr().unwrap();
    let served = Arc::new(AtomicU64::new(0));
    let counter = served.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = raw.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\nx-origin: raw\r\n\r\npartial",
                    )
                    .await;
                let _ = s.flush().await;
            });
        }
    });
    let routes = format!(
        "{}[upstreams.new]\naddrs = [\"{raw_addr}\"]\n\
         [[routes]]\nid = \"p\"\npath = \"/*\"\nto = \"new\"\nfallback = \"legacy\"\n",
        upstream("legacy", &legacy, ""),
    );
    let dir = routes_dir(&routes);
    let p = Proxy::start(dir.path()).await;
    let r = send(&client(), "GET", &p.url("/x"), &[], Bytes::new()).await;
    assert!(
        r.is_err(),
        "a cut body reaches the client as an error: {r:?}"
    );
    assert_eq!(served.load(Ordering::SeqCst), 1);
    assert_eq!(
        legacy.state.requests.load(Ordering::SeqCst),
        0,
        "replayed after headers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_ejection_grows_and_one_trial_decides() {
    let legacy = Origin::start("legacy").await;
    let new = Origin::start("new").await;
    new.state.set_mode(Mode::Error500);
    let outlier = "outlier = { consecutive_failures = 3, count_5xx = true, base_ejection_ms = 500, max_ejection_ms = 5000 }";
    let routes = format!(
        "{}{}[[routes]]\nid = \"o\"\npath = \"/*\"\nto = \"new\"\nfallback = \"legacy\"\n",
        upstream("legacy", &legacy, ""),
        upstream("new", &new, outlier),
    );
    let dir = routes_dir(&routes);
    let p = Proxy::start(dir.path()).await;
    let c = client();
    let get1 = || {
        let (c, url) = (c.clone(), p.url("/x"));
        async move { send(&c, "GET", &url, &[], Bytes::new()).await.unwrap() }
    };
    let new_served = || new.state.requests.load(Ordering::SeqCst);

    for _ in 0..3 {
        assert_eq!(answered_by(&get1().await), "legacy");
    }
    assert_eq!(new_served(), 3);
    // Ejected: requests go straight to legacy without touching new.
    let t0 = Instant::now();
    for _ in 0..5 {
        assert_eq!(answered_by(&get1().await), "legacy");
    }
    assert!(
        t0.elapsed() < Duration::from_millis(300),
        "test too slow to see the ejection"
    );
    assert_eq!(new_served(), 3);
    let m = metrics(&p).await;
    assert_eq!(
        metric_with(
            &m,
            "switchyard_upstream_ejections_total",
            &[("upstream", "new")]
        ),
        1.0
    );
    assert_eq!(fallbacks(&m, "o", "new", "legacy", "ejected"), 5.0, "{m}");

    // After the cool-off one trial goes to new; it fails, so new is ejected again, for longer.
    // Ten requests at once: exactly one is the trial.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let rs = fire(&p.url("/x"), 10, 10, |_| vec![]).await;
    assert!(rs.iter().all(|r| answered_by(r) == "legacy"));
    assert_eq!(new_served(), 4, "exactly one trial");
    new.state.set_mode(Mode::Normal);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // 500 ms into a 1000 ms cool-off: still ejected.
    assert_eq!(answered_by(&get1().await), "legacy");
    assert_eq!(new_served(), 4);
    tokio::time::sleep(Duration::from_millis(650)).await;
    // The trial succeeds: new is back in service.
    for _ in 0..5 {
        assert_eq!(answered_by(&get1().await), "new");
    }
    let m = metrics(&p).await;
    assert_eq!(
        metric_with(
            &m,
            "switchyard_upstream_ejections_total",
            &[("upstream", "new")]
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_backend_times_out_to_legacy() {
    let legacy = Origin::start("legacy").await;
    let new = Origin::start("new").await;
    new.state.set_mode(Mode::Hang);
    let routes = format!(
        "{}{}[[routes]]\nid = \"h\"\npath = \"/*\"\nto = \"new\"\nfallback = \"legacy\"\n",
        upstream("legacy", &legacy, ""),
        upstream("new", &new, "read_timeout_ms = 300"),
    );
    let dir = routes_dir(&routes);
    let p = Proxy::start(dir.path()).await;
    let c = client();
    let t = Instant::now();
    let r = send(&c, "GET", &p.url("/slow"), &[], Bytes::new())
        .await
        .unwrap();
    let took = t.elapsed();
    assert_eq!(answered_by(&r), "legacy");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // A POST that timed out is not replayed: the client gets the timeout.
    let r = send(&c, "POST", &p.url("/slow"), &[], "x=1").await.unwrap();
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(legacy.state.count("POST"), 0);
    assert_eq!(new.state.count("POST"), 1);
    let m = metrics(&p).await;
    assert_eq!(fallbacks(&m, "h", "new", "legacy", "timeout"), 1.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_the_retry_limit_is_not_replayed() {
    let legacy = Origin::start("legacy").await;
    let new = Origin::start("new").await;
    let mid = Origin::start("mid").await;
    new.state.set_mode(Mode::Error500);
    mid.state.set_mode(Mode::Error500);
    let routes = format!(
        "{}{}{}\
         [[routes]]\nid = \"small\"\npath = \"/small\"\nto = \"new\"\nfallback = \"legacy\"\nretry_buffer_bytes = 1024\n\
         [[routes]]\nid = \"default\"\npath = \"/default\"\nto = \"new\"\nfallback = \"legacy\"\n\
         [[routes]]\nid = \"chain\"\npath = \"/chain\"\nto = \"new\"\nfallback = [\"mid\", \"legacy\"]\n",
        upstream("legacy", &legacy, ""),
        upstream("new", &new, ""),
        upstream("mid", &mid, ""),
    );
    let dir = routes_dir(&routes);
    let p = Proxy::start(dir.path()).await;
    let c = client();
    let put = |path: &str, len: usize| {
        let (c, url) = (c.clone(), p.url(path));
        async move { send(&c, "PUT", &url, &[], vec![b'b'; len]).await.unwrap() }
    };
    // Replayed twice (new, then mid, then legacy): the body still counts once against the limit.
    let r = put("/chain", 40_000).await;
    assert_eq!(answered_by(&r), "legacy");
    assert_eq!(r.json()["body_len"], 40_000);
    assert_eq!(mid.state.count("PUT"), 1);
    let cases = [
        ("/small", 1024, Some(1024)),
        ("/small", 1025, None),
        ("/small", 40_000, None),
        ("/default", 60 * 1024, Some(60 * 1024)),
        ("/default", 64 * 1024, Some(64 * 1024)),
        ("/default", 64 * 1024 + 1, None),
        ("/default", 300 * 1024, None),
    ];
    for (path, len, replayed) in cases {
        let before = legacy.state.count("PUT");
        let r = put(path, len).await;
        match replayed {
            Some(n) => {
                assert_eq!(answered_by(&r), "legacy", "{path} {len}");
                assert_eq!(r.json()["body_len"], n, "{path} {len}: body intact");
                assert_eq!(legacy.state.count("PUT"), before + 1);
            }
            None => {
                assert_eq!(r.status, 500, "{path} {len}: the upstream's error");
                assert_eq!(r.header("x-switchyard-upstream"), "new", "{path} {len}");
                assert_eq!(r.json()["body_len"], len, "{path} {len}: new got it all");
                assert_eq!(legacy.state.count("PUT"), before, "{path} {len} replayed");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_follow_reloads_tls_and_all_down() {
    let legacy = Origin::start("legacy").await;
    let new = Origin::start("new").await;
    let (acceptor, cert_pem) = self_signed(&["origin.test"]);
    let tls = Origin::start_on("tls", "127.0.0.1:0".parse().unwrap(), Some(acceptor)).await;
    let (untrusted_acc, _) = self_signed(&["origin.test"]);
    let untrusted = Origin::start_on(
        "untrusted",
        "127.0.0.1:0".parse().unwrap(),
        Some(untrusted_acc),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &cert_pem).unwrap();
    let hc = |extra: &str| {
        format!("health = {{ path = \"/healthz\", interval_ms = 100, timeout_ms = 300, healthy = 1, unhealthy = 2{extra} }}")
    };
    let tls_opts = "tls = true\nsni = \"origin.test\"\nca_file = \"ca.pem\"\n";
    let table = |legacy_health: &str, new_health: &str| {
        format!(
            "{}{}{}{}\
             [[routes]]\nid = \"app\"\npath = \"/app\"\nto = \"new\"\nfallback = \"legacy\"\n\
             [[routes]]\nid = \"secure\"\npath = \"/secure\"\nto = \"tls\"\nfallback = \"legacy\"\n\
             [[routes]]\nid = \"untrusted\"\npath = \"/untrusted\"\nto = \"untrusted\"\nfallback = \"legacy\"\n",
            upstream("legacy", &legacy, legacy_health),
            upstream("new", &new, new_health),
            upstream("tls", &tls, &format!("{tls_opts}{}", hc(""))),
            upstream("untrusted", &untrusted, &format!("{tls_opts}{}", hc(""))),
        )
    };
    // new's checks want a status the origin never sends.
    std::fs::write(
        dir.path().join("routes.toml"),
        table("", &hc(", expect_status = 204")),
    )
    .unwrap();
    let p = Proxy::start(dir.path()).await;
    let limit = Duration::from_secs(5);
    wait_metrics(&p, limit, "tls healthy, others unhealthy", |m| {
        healthy_is("tls", 1.0)(m) && healthy_is("untrusted", 0.0)(m) && healthy_is("new", 0.0)(m)
    })
    .await;
    assert!(tls.state.health_requests.load(Ordering::SeqCst) > 0);
    assert_eq!(untrusted.state.health_requests.load(Ordering::SeqCst), 0);
    let c = client();
    let get1 = |path: &str| {
        let (c, url) = (c.clone(), p.url(path));
        async move { send(&c, "GET", &url, &[], Bytes::new()).await.unwrap() }
    };
    assert_eq!(answered_by(&get1("/secure").await), "tls");
    // Unhealthy upstreams are skipped without being tried.
    let before = new.state.requests.load(Ordering::SeqCst);
    assert_eq!(answered_by(&get1("/app").await), "legacy");
    assert_eq!(answered_by(&get1("/untrusted").await), "legacy");
    assert_eq!(new.state.requests.load(Ordering::SeqCst), before);
    let m = metrics(&p).await;
    assert_eq!(
        fallbacks(&m, "app", "new", "legacy", "unhealthy"),
        1.0,
        "{m}"
    );

    // Every upstream of the route down: the fallback is still tried (and here it answers).
    let v = p.table_version().await;
    rewrite_routes(
        dir.path(),
        &table(&hc(", expect_status = 204"), &hc(", expect_status = 204")),
    );
    p.wait_version(v + 1).await;
    wait_metrics(&p, limit, "legacy unhealthy", healthy_is("legacy", 0.0)).await;
    assert_eq!(answered_by(&get1("/app").await), "legacy");
    let m = metrics(&p).await;
    assert_eq!(
        fallbacks(&m, "app", "new", "legacy", "all_down"),
        1.0,
        "{m}"
    );

    // Checks follow reloads: removing them makes the upstream healthy (no checks = healthy)
    // and drops its gauge; fixing them makes it healthy through checks.
    rewrite_routes(dir.path(), &table("", &hc("")));
    p.wait_version(v + 2).await;
    wait_metrics(&p, limit, "legacy gauge removed, new healthy", |m| {
        !has_metric(m, "switchyard_upstream_healthy", &[("upstream", "legacy")])
            && healthy_is("new", 1.0)(m)
    })
    .await;
    assert_eq!(answered_by(&get1("/app").await), "new");
    let checks = legacy.state.health_requests.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        legacy.state.health_requests.load(Ordering::SeqCst),
        checks,
        "legacy's checks stopped"
    );
}

#[test]
fn bad_canary_input_names_file_route_and_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("10-ups.toml"),
        "[upstreams.legacy]\naddrs = [\"127.0.0.1:1\"]\n[upstreams.new]\naddrs = [\"127.0.0.1:2\"]\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("20-canary.toml"),
        "[[routes]]\nid = \"sum\"\npath = \"/a\"\nsplit = { new = 5.5, legacy = 94 }\n\
         [[routes]]\nid = \"fine\"\npath = \"/b\"\nsplit = { new = 0.005, legacy = 99.995 }\n\
         [[routes]]\nid = \"unknown-fb\"\npath = \"/c\"\nto = \"new\"\nfallback = [\"legacy\", \"gone\"]\n\
         [[routes]]\nid = \"self-fb\"\npath = \"/d\"\nto = \"new\"\nfallback = \"new\"\n\
         [[routes]]\nid = \"sticky\"\npath = \"/e\"\nto = \"new\"\nsticky = \"cookie\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("check")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let f = dir.path().join("20-canary.toml").display().to_string();
    for want in [
        format!("error: {f}: route \"sum\": split: weights sum to 99.5, must be 100"),
        format!("error: {f}: route \"fine\": split.legacy: 99.995 has more than two decimals"),
        format!("error: {f}: route \"fine\": split.new: 0.005 has more than two decimals"),
        format!("error: {f}: route \"unknown-fb\": fallback[1]: unknown upstream \"gone\""),
        format!("error: {f}: route \"self-fb\": fallback: \"new\" is the route's only upstream"),
        format!("error: {f}: route \"sticky\": sticky: \"cookie\" is not a sticky key"),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
}
