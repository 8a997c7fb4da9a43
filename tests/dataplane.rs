//! Data plane: routing semantics, upstream TLS, reload under load, error mapping, `check`.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

fn upstream(name: &str, o: &Origin) -> String {
    format!("[upstreams.{name}]\naddrs = [\"{}\"]\n", o.addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_semantics() {
    let legacy = Origin::start("legacy").await;
    let new = Origin::start("new").await;
    let api = Origin::start("api").await;
    let routes = format!(
        "{}{}{}path_prefix = \"/prod\"\nstrip_prefix = \"/api\"\n\
         [[routes]]\nid = \"admin\"\npath = \"/user/admin/*\"\nto = \"legacy\"\n\
         [[routes]]\nid = \"user\"\npath = \"/user/*\"\nto = \"new\"\n\
         [[routes]]\nid = \"versioned\"\npath = \"/v?/items\"\nto = \"new\"\n\
         [[routes]]\nid = \"images\"\npath = \"/img/*.png\"\nto = \"new\"\n\
         [[routes]]\nid = \"exact-host\"\nhosts = [\"shop.example.com\"]\npath = \"*\"\nto = \"new\"\n\
         [[routes]]\nid = \"wild-host\"\nhosts = [\"*.example.com\"]\npath = \"/wild/*\"\nto = \"new\"\n\
         [[routes]]\nid = \"api\"\npath = \"/api/*\"\nto = \"api\"\n\
         [[routes]]\nid = \"legacy\"\npath = \"/legacy/*\"\nto = \"legacy\"\n",
        upstream("legacy", &legacy),
        upstream("new", &new),
        upstream("api", &api),
    );
    let dir = routes_dir(&routes);
    let p = Proxy::start(dir.path()).await;
    let c = client();
    let go = |path: &str, host: &str| {
        let c = c.clone();
        let url = p.url(path);
        let host = host.to_string();
        async move { send(&c, "GET", &url, &[("host", &host)], "").await.unwrap() }
    };

    // Precedence: the earlier, more specific route wins; the later general one takes the rest.
    assert_eq!(go("/user/admin/1", "x").await.origin(), "legacy");
    assert_eq!(go("/user/42", "x").await.origin(), "new");
    // `?` is exactly one character; `*` crosses slashes.
    assert_eq!(go("/v1/items", "x").await.origin(), "new");
    assert_eq!(go("/v10/items", "x").await.status, 404);
    assert_eq!(go("/img/a/b/c.png", "x").await.origin(), "new");
    assert_eq!(go("/img/a.jpg", "x").await.status, 404);
    // Case-sensitive paths.
    assert_eq!(go("/USER/1", "x").await.status, 404);
    // Hosts: exact (any case, with port) and wildcard.
    assert_eq!(
        go("/anything", "Shop.Example.com:8080").await.origin(),
        "new"
    );
    assert_eq!(go("/wild/1", "a.b.example.com").await.origin(), "new");
    assert_eq!(go("/wild/1", "example.com").await.status, 404);
    // Query strings go upstream untouched; the match ignores them.
    let r = go("/user/7?a=1&b=%20x&c", "x").await.json();
    assert_eq!(r["path"], "/user/7");
    assert_eq!(r["query"], "a=1&b=%20x&c");
    // strip_prefix then path_prefix: /api/users/1 -> /prod/users/1, query kept.
    let r = go("/api/users/1?q=2", "x").await.json();
    assert_eq!(r["path"], "/prod/users/1");
    assert_eq!(r["query"], "q=2");
    // Forwarding headers.
    let r = go("/legacy/x", "client.example.org").await.json();
    assert_eq!(r["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(r["headers"]["x-forwarded-proto"], "http");
    assert_eq!(r["headers"]["x-forwarded-host"], "client.example.org");
    assert_eq!(r["headers"]["host"], "client.example.org");
    let r = send(
        &c,
        "GET",
        &p.url("/legacy/x"),
        &[
            ("x-forwarded-for", "10.1.1.1"),
            ("connection", "x-drop, keep-alive"),
            ("x-drop", "1"),
            ("keep-alive", "timeout=5"),
        ],
        "",
    )
    .await
    .unwrap();
    let j = r.json();
    assert_eq!(j["headers"]["x-forwarded-for"], "10.1.1.1, 127.0.0.1");
    assert!(
        j["headers"].get("x-drop").is_none(),
        "header named by Connection must not be forwarded: {j}"
    );
    assert!(j["headers"].get("keep-alive").is_none());
    assert_eq!(r.header("x-switchyard-upstream"), "legacy");
    // No route: 404 with a JSON body.
    let r = go("/nowhere", "x").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.json()["error"], "no route matches this request");
    // Bodies pass through whole (streamed, not limited by the replay buffer).
    let big = vec![b'x'; 3 * 1024 * 1024];
    let r = send(&c, "POST", &p.url("/user/upload"), &[], big)
        .await
        .unwrap();
    assert_eq!(r.json()["body_len"], 3 * 1024 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_with_ca_file_sni_and_host() {
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
    let routes = format!(
        "[upstreams.secure]\naddrs = [\"{}\"]\ntls = true\nsni = \"origin.test\"\nca_file = \"ca.pem\"\n\
         [upstreams.secure_host]\naddrs = [\"{}\"]\ntls = true\nsni = \"origin.test\"\nhost = \"api.internal\"\nca_file = \"ca.pem\"\n\
         [upstreams.untrusted]\naddrs = [\"{}\"]\ntls = true\nsni = \"origin.test\"\nca_file = \"ca.pem\"\n\
         [[routes]]\nid = \"a\"\npath = \"/a/*\"\nto = \"secure\"\n\
         [[routes]]\nid = \"b\"\npath = \"/b/*\"\nto = \"secure_host\"\n\
         [[routes]]\nid = \"c\"\npath = \"/c/*\"\nto = \"untrusted\"\n",
        tls.addr, tls.addr, untrusted.addr
    );
    std::fs::write(dir.path().join("routes.toml"), routes).unwrap();
    let p = Proxy::start(dir.path()).await;
    let r = get(&p.url("/a/1")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.origin(), "tls");
    // With tls and no `host`, the Host sent upstream is the SNI name.
    assert_eq!(r.json()["headers"]["host"], "origin.test");
    assert_eq!(
        tls.state.last_sni.lock().unwrap().as_deref(),
        Some("origin.test")
    );
    let r = get(&p.url("/b/1")).await;
    assert_eq!(r.json()["headers"]["host"], "api.internal");
    // A certificate not signed by a trusted root is refused.
    let r = get(&p.url("/c/1")).await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(r.body.contains("TLS"), "{}", r.body);
    assert_eq!(untrusted.state.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refused_is_502_and_hang_is_504() {
    let hang = Origin::start("hang").await;
    hang.state.set_mode(Mode::Hang);
    let closed = free_port();
    let routes = format!(
        "[upstreams.gone]\naddrs = [\"127.0.0.1:{closed}\"]\nconnect_timeout_ms = 500\n\
         [upstreams.hang]\naddrs = [\"{}\"]\nread_timeout_ms = 400\n\
         [[routes]]\nid = \"gone\"\npath = \"/gone\"\nto = \"gone\"\n\
         [[routes]]\nid = \"hang\"\npath = \"/hang\"\nto = \"hang\"\n",
        hang.addr
    );
    let dir = routes_dir(&routes);
    let p = Proxy::start(dir.path()).await;
    let t = Instant::now();
    let r = get(&p.url("/gone")).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "could not connect to upstream");
    assert!(
        !r.body.contains("127.0.0.1"),
        "no internal addresses: {}",
        r.body
    );
    assert!(t.elapsed() < Duration::from_secs(2));
    let t = Instant::now();
    let r = get(&p.url("/hang")).await;
    let took = t.elapsed();
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.json()["error"], "upstream timed out");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_never_fails_a_request() {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let table = |to: &str| {
        format!(
            "{}{}[[routes]]\nid = \"r\"\npath = \"/*\"\nto = \"{to}\"\n",
            upstream("a", &a),
            upstream("b", &b)
        )
    };
    let dir = routes_dir(&table("a"));
    let p = Proxy::start(dir.path()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, ok, url) = (stop.clone(), ok.clone(), p.url("/x"));
        workers.push(tokio::spawn(async move {
            let c = client();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match send(&c, "GET", &url, &[], "").await {
                    Ok(r) if r.status == 200 && (r.origin() == "a" || r.origin() == "b") => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures.push(format!("{} {}", r.status, r.body)),
                    Err(e) => failures.push(e),
                }
            }
            failures
        }));
    }
    let v0 = p.table_version().await;
    for i in 0..60u64 {
        rewrite_routes(dir.path(), &table(if i % 2 == 0 { "b" } else { "a" }));
        p.wait_version(v0 + i + 1).await;
    }
    // An invalid rewrite is rejected and the last good table keeps serving.
    rewrite_routes(
        dir.path(),
        "[[routes]]\nid = \"r\"\npath = \"/*\"\nto = \"missing\"\n",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = get(&p.admin_url("/metrics")).await.body;
        if metric(&m, "switchyard_reloads_total{result=\"error\"}") >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "invalid rewrite never reported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(p.table_version().await, v0 + 60);
    assert_eq!(get(&p.url("/x")).await.origin(), "a");
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for w in workers {
        failures.extend(w.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        ok.load(Ordering::Relaxed) > 100,
        "load loop too slow: {}",
        ok.load(Ordering::Relaxed)
    );
    assert!(
        a.state.requests.load(Ordering::SeqCst) > 0 && b.state.requests.load(Ordering::SeqCst) > 0
    );
}

#[test]
fn check_reports_every_error_with_exit_codes() {
    let bin = env!("CARGO_BIN_EXE_switchyard");
    let good = routes_dir("[upstreams.a]\naddrs = [\"127.0.0.1:1\"]\n[[routes]]\nid = \"r\"\npath = \"/*\"\nto = \"a\"\n");
    let out = std::process::Command::new(bin)
        .arg("check")
        .arg(good.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok: 1 routes, 1 upstreams"));

    let bad = tempfile::tempdir().unwrap();
    std::fs::write(
        bad.path().join("10-ups.toml"),
        "[upstreams.a]\naddrs = []\n[upstreams.b]\naddrs = [\"127.0.0.1:2\"]\n",
    )
    .unwrap();
    std::fs::write(
        bad.path().join("20-routes.toml"),
        "[[routes]]\nid = \"all\"\npath = \"/*\"\nto = \"b\"\n\
         [[routes]]\nid = \"dup\"\npath = \"/x y\"\nto = \"nope\"\n\
         [[routes]]\nid = \"dup\"\npath = \"/z\"\nsplit = { b = 60 }\n\
         [[routes]]\nid = \"shadowed\"\npath = \"/user/*\"\nto = \"b\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin)
        .arg("check")
        .arg(bad.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let f = |name: &str| bad.path().join(name).display().to_string();
    for want in [
        format!(
            "error: {}: upstream \"a\": addrs: is empty",
            f("10-ups.toml")
        ),
        format!("error: {}: route \"dup\": path:", f("20-routes.toml")),
        format!(
            "error: {}: route \"dup\": to: unknown upstream \"nope\"",
            f("20-routes.toml")
        ),
        format!(
            "error: {}: route \"dup\": id: duplicate id",
            f("20-routes.toml")
        ),
        format!(
            "error: {}: route \"dup\": split: weights sum to 60, must be 100",
            f("20-routes.toml")
        ),
        format!(
            "warning: {}: route \"shadowed\": path: can never match",
            f("20-routes.toml")
        ),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }

    // Unknown keys are errors with the file and line.
    let typo = routes_dir("[upstreams.a]\naddrs = [\"127.0.0.1:1\"]\n[[routes]]\nid = \"r\"\npath = \"/*\"\nto = \"a\"\nweight = 5\n");
    let out = std::process::Command::new(bin)
        .arg("check")
        .arg(typo.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("routes.toml:7:") && err.contains("weight"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_and_metrics() {
    let o = Origin::start("legacy").await;
    let dir = routes_dir(&format!(
        "{}[[routes]]\nid = \"users\"\npath = \"/user/*\"\nto = \"legacy\"\n",
        upstream("legacy", &o)
    ));
    let log = dir.path().join("access.log");
    let p = Proxy::start_with(dir.path(), &["--access-log", log.to_str().unwrap()]).await;
    let c = client();
    for path in ["/user/1?secret=x", "/user/2", "/nope"] {
        send(&c, "GET", &p.url(path), &[("host", "Shop.Example.com")], "")
            .await
            .unwrap();
    }
    // Metrics are recorded in the logging phase, just after the response went out: wait for
    // the last request's to land.
    let deadline = Instant::now() + Duration::from_secs(5);
    let m = loop {
        let m = get(&p.admin_url("/metrics")).await.body;
        let none = "switchyard_requests_total{code=\"4xx\",route=\"none\",upstream=\"none\"}";
        if metric(&m, none) >= 1.0 || Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        metric(
            &m,
            "switchyard_requests_total{code=\"2xx\",route=\"users\",upstream=\"legacy\"}"
        ),
        2.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "switchyard_requests_total{code=\"4xx\",route=\"none\",upstream=\"none\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "switchyard_request_duration_seconds_count{route=\"users\",upstream=\"legacy\"}"
        ),
        2.0,
        "{m}"
    );
    assert_eq!(metric(&m, "switchyard_route_table_version"), 1.0);
    assert_eq!(metric(&m, "switchyard_reloads_total{result=\"ok\"}"), 1.0);
    // The writer thread flushes asynchronously.
    let deadline = Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect();
        if lines.len() >= 3 || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(lines.len(), 3);
    let first = &lines[0];
    assert_eq!(first["method"], "GET");
    assert_eq!(first["host"], "shop.example.com");
    assert_eq!(first["path"], "/user/1", "the query string is not logged");
    assert_eq!(first["route"], "users");
    assert_eq!(first["upstream"], "legacy");
    assert_eq!(first["status"], 200);
    assert_eq!(first["table_version"], 1);
    assert!(first["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(lines[2]["status"], 404);
    assert_eq!(lines[2]["route"], "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_keeps_serving() {
    let o = Origin::start("legacy").await;
    let dir = routes_dir(&format!(
        "{}[[routes]]\nid = \"r\"\npath = \"*\"\nto = \"legacy\"\n",
        upstream("legacy", &o)
    ));
    let p = Proxy::start(dir.path()).await;
    let v = p.table_version().await;
    let status = std::process::Command::new("kill")
        .args(["-HUP", &p.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    p.wait_version(v + 1).await;
    assert_eq!(get(&p.url("/x")).await.origin(), "legacy");
}

/// Reads one response with a `Content-Length` body from a raw connection; `None` when the
/// proxy closed the connection first.
async fn read_response(c: &mut tokio::net::TcpStream) -> Option<(u16, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match c.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    while buf.len() < head_end + len {
        let n = c.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed inside a body");
        buf.extend_from_slice(&chunk[..n]);
    }
    Some((status, buf[head_end..head_end + len].to_vec()))
}

/// True when the proxy closes `c` within `within` (EOF or reset), false if it stays open.
async fn closed_within(c: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(within, c.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// Client keep-alive connections: a request arriving in pieces, headers larger than the
/// connection's read buffer, reuse after an idle pause, closing after `--idle-timeout`, and
/// idle connections closed at once when a graceful stop begins (not after the grace period).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_connections_idle_timeout_and_graceful_stop() {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    let o = Origin::start("legacy").await;
    let dir = routes_dir(&format!(
        "{}[[routes]]\nid = \"r\"\npath = \"*\"\nto = \"legacy\"\n",
        upstream("legacy", &o)
    ));
    let p = Proxy::start_with(dir.path(), &["--idle-timeout", "1"]).await;

    let mut c = TcpStream::connect(p.addr).await.unwrap();
    for piece in ["GET /pieces HT", "TP/1.1\r\nHost: a.test\r\n", "\r\n"] {
        c.write_all(piece.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let (status, _) = read_response(&mut c)
        .await
        .expect("response to a request sent in pieces");
    assert_eq!(status, 200);

    // Headers of 6 KB: several reads of the 1 KiB connection buffer.
    let big = format!(
        "GET /big HTTP/1.1\r\nHost: a.test\r\nX-Big: {}\r\n\r\n",
        "v".repeat(6000)
    );
    c.write_all(big.as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut c).await.unwrap().0, 200);

    // Idle for less than the timeout: the connection is reused.
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.write_all(b"GET /again HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut c).await.unwrap().0, 200);
    assert_eq!(
        o.state.count("GET"),
        3,
        "all three requests reached the origin"
    );

    // Idle past the timeout: closed by the proxy.
    let idle_since = Instant::now();
    assert!(
        closed_within(&mut c, Duration::from_secs(3)).await,
        "an idle connection outlived --idle-timeout 1"
    );
    let idled = idle_since.elapsed();
    assert!(
        idled >= Duration::from_millis(900),
        "closed too early: {idled:?}"
    );

    // Graceful stop (default 60 s idle timeout): idle connections close right away.
    let mut p2 = Proxy::start(dir.path()).await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut c = TcpStream::connect(p2.addr).await.unwrap();
        c.write_all(b"GET /x HTTP/1.1\r\nHost: a.test\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(&mut c).await.unwrap().0, 200);
        idle.push(c);
    }
    let pid = p2.child.id().to_string();
    let stop = std::thread::spawn(move || {
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
    });
    let t = Instant::now();
    for c in &mut idle {
        assert!(
            closed_within(c, Duration::from_millis(700)).await,
            "an idle connection stayed open {:?} into a graceful stop (grace period is 1 s)",
            t.elapsed()
        );
    }
    assert!(stop.join().unwrap().success());
    let _ = p2.child.wait();
    drop(p);
}

/// Every example in `routes/` compiles without errors (golden test; CI also runs `check`).
#[test]
fn example_route_files_compile() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("routes");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (compiled, diags) = switchyard::routing::compile::check_path(&path);
            assert!(compiled.is_some(), "{}: {diags:?}", path.display());
            n += 1;
        }
    }
    assert!(n >= 3, "expected the demo and two migration examples");
}
