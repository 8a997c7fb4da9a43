//! Each endpoint with good and bad input.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_open_and_every_change_needs_the_token() {
    let new = Origin::start("new").await;
    let legacy = Origin::start("legacy").await;
    let dir = routes_dir(&table(&new, &legacy, SPLIT));
    let p = start(dir.path(), &[]).await;

    // Reads need no token on loopback.
    let t = call_with(&p, "GET", "/v1/table", &[], "").await;
    assert_eq!(t.status, 200, "{}", t.body);
    assert_eq!(t.header("etag"), "\"1\"");
    let j = t.json();
    assert_eq!(j["version"], 1);
    assert_eq!(j["source"]["source"], "files");
    assert_eq!(j["source"]["action"], "load");
    assert_eq!(j["source"]["actor"], "files");
    let routes = j["routes"].as_array().unwrap();
    assert_eq!(
        routes
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["users", "orders", "static"]
    );
    assert_eq!(
        routes[0]["weights"],
        serde_json::json!({"legacy": 50.0, "new": 50.0})
    );
    assert_eq!(routes[0]["fallbacks"], serde_json::json!(["legacy"]));
    assert!(routes[0]["origin"]
        .as_str()
        .unwrap()
        .ends_with("routes.toml"));
    assert_eq!(routes[0]["api_changed"], false);
    assert_eq!(j["upstreams"]["new"]["addrs"][0], new.addr.to_string());
    assert_eq!(j["files"]["conflict"], serde_json::Value::Null);
    let toml = call_with(&p, "GET", "/v1/table?format=toml", &[], "").await;
    assert_eq!(toml.header("content-type"), "application/toml");
    assert!(toml.body.contains("[[routes]]") && toml.body.contains("id = \"users\""));
    for path in [
        "/v1/history",
        "/v1/history/1",
        "/v1/upstreams",
        "/v1/inflight",
        "/v1/stats",
        "/v1/hold",
        "/healthz",
        "/metrics",
        "/",
    ] {
        let r = call_with(&p, "GET", path, &[], "").await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
    }

    // Every call that changes anything: 401 without a token, with a wrong one, or with
    // another scheme, and nothing changes.
    let changes: [(&str, &str, &str); 8] = [
        (
            "PUT",
            "/v1/table",
            "[[routes]]\nid = \"x\"\npath = \"/*\"\nto = \"new\"\n",
        ),
        ("PATCH", "/v1/routes/users", r#"{"split": {"new": 100}}"#),
        ("POST", "/v1/routes/users/rollback", r#"{"reason": "x"}"#),
        ("POST", "/v1/revert", r#"{"to": 1, "reason": "x"}"#),
        ("POST", "/v1/adopt", "{}"),
        (
            "POST",
            "/v1/hold",
            r#"{"routes": ["users"], "max_ms": 5000}"#,
        ),
        ("POST", "/v1/release", ""),
        ("PATCH", "/v1/routes/nope", r#"{"to": "new"}"#),
    ];
    let wrong = format!("Bearer {TOKEN}x");
    let basic = format!("Basic {TOKEN}");
    let short = format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]);
    for (method, path, body) in changes {
        for headers in [
            vec![],
            vec![("authorization", wrong.as_str())],
            vec![("authorization", short.as_str())],
            vec![("authorization", basic.as_str())],
        ] {
            let r = call_with(&p, method, path, &headers, body).await;
            assert_eq!(r.status, 401, "{method} {path} {headers:?}: {}", r.body);
            assert!(
                r.json()["error"].as_str().unwrap().contains("token"),
                "{}",
                r.body
            );
            assert!(r.json()["details"].is_array());
            assert_eq!(r.header("www-authenticate"), "Bearer realm=\"switchyard\"");
        }
    }
    assert_eq!(version(&p).await, 1);
    assert_eq!(
        call(&p, "GET", "/v1/hold", "").await.json()["hold"],
        serde_json::Value::Null
    );
    assert_eq!(
        call(&p, "GET", "/v1/history", "").await.json()["versions"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let (n, l, o) = spread(&p, "/users/1", 40).await;
    assert!(n > 0 && l > 0 && o == 0, "still split: {n} {l} {o}");

    // Unknown paths and wrong methods.
    assert_eq!(call(&p, "GET", "/v1/nothing", "").await.status, 404);
    assert_eq!(call(&p, "POST", "/v1/nothing", "").await.status, 404);
    assert_eq!(
        call_with(&p, "POST", "/v1/nothing", &[], "").await.status,
        404
    );
    let r = call(&p, "DELETE", "/v1/table", "").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), "GET, PUT");
    assert_eq!(
        call(&p, "GET", "/v1/routes/users/rollback", "")
            .await
            .status,
        405
    );
    assert_eq!(call(&p, "POST", "/v1/history", "").await.status, 405);
    for path in ["/metrics", "/healthz", "/", "/v1/stats", "/v1/inflight"] {
        assert_eq!(call(&p, "POST", path, "").await.status, 405, "POST {path}");
    }
    let page = call_with(&p, "GET", "/", &[], "").await;
    assert_eq!(page.header("content-type"), "text/html; charset=utf-8");
    assert!(page
        .header("content-security-policy")
        .contains("default-src 'none'"));
    // Self-contained: no external scripts, styles, images or fonts.
    for needle in ["http://", "https://", "src=", "<link", "@import"] {
        assert!(
            !page.body.contains(needle),
            "the dashboard references {needle:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_and_patch_with_every_kind_of_bad_input() {
    let new = Origin::start("new").await;
    let legacy = Origin::start("legacy").await;
    let dir = routes_dir(&table(&new, &legacy, SPLIT));
    let p = start(dir.path(), &[]).await;
    let auth = bearer();

    // 422: an invalid table with every error, the running table untouched.
    let bad = format!(
        "{}{}[[routes]]\nid = \"a\"\npath = \"/a b\"\nto = \"nope\"\n\
         [[routes]]\nid = \"a\"\npath = \"/x\"\nsplit = {{ new = 60 }}\n\
         [[routes]]\nid = \"c\"\npath = \"/c\"\nto = \"new\"\nfallback = \"new\"\n",
        upstream("new", &new),
        upstream("legacy", &legacy)
    );
    let r = call(&p, "PUT", "/v1/table", &bad).await;
    assert_eq!(r.status, 422, "{}", r.body);
    let details = r.json()["details"].as_array().unwrap().clone();
    let fields: Vec<(&str, &str)> = details
        .iter()
        .map(|d| (d["subject"].as_str().unwrap(), d["field"].as_str().unwrap()))
        .collect();
    for want in [
        ("route \"a\"", "path"),
        ("route \"a\"", "to"),
        ("route \"a\"", "id"),
        ("route \"a\"", "split"),
        ("route \"c\"", "fallback"),
    ] {
        assert!(fields.contains(&want), "missing {want:?} in {fields:?}");
    }
    assert_eq!(details.len(), 5, "{details:?}");
    assert!(details
        .iter()
        .all(|d| d["file"] == "api" && d["severity"] == "error"));
    // A parse error (TOML and JSON) is also a 422, naming the line.
    let r = call(
        &p,
        "PUT",
        "/v1/table",
        "[[routes]]\nid = \"a\"\npath = \"/\"\nto = \"new\"\nweight = 3\n",
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(
        r.json()["details"][0]["message"]
            .as_str()
            .unwrap()
            .contains("weight"),
        "{}",
        r.body
    );
    assert_eq!(r.json()["details"][0]["file"], "request body:5");
    let r = call(&p, "PUT", "/v1/table", "{\"routes\": [}").await;
    assert_eq!(r.status, 422, "{}", r.body);
    let r = call(&p, "PUT", "/v1/table", " \n").await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("empty body"));
    // 413: more than 1 MiB.
    let huge = format!("# {}\n", "x".repeat(2 * 1024 * 1024));
    let r = call(&p, "PUT", "/v1/table", &huge).await;
    assert_eq!(r.status, 413, "{}", &r.body[..r.body.len().min(200)]);
    assert!(r.json()["error"].as_str().unwrap().contains("larger than"));
    let r = call(
        &p,
        "PATCH",
        "/v1/routes/users",
        &format!("{{\"reason\": \"{}\"}}", "y".repeat(1100 * 1024)),
    )
    .await;
    assert_eq!(r.status, 413);
    // 409: a stale If-Match.
    let good = table(&new, &legacy, "to = \"new\"\nfallback = \"legacy\"");
    let r = call_with(
        &p,
        "PUT",
        "/v1/table",
        &[("authorization", &auth), ("if-match", "\"0\"")],
        &good,
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("version 1, not 0"),
        "{}",
        r.body
    );
    // 400: If-Match that is not a version.
    let r = call_with(
        &p,
        "PUT",
        "/v1/table",
        &[("authorization", &auth), ("if-match", "abc")],
        &good,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(version(&p).await, 1);
    let (n, l, _) = spread(&p, "/users/1", 40).await;
    assert!(n > 0 && l > 0);

    // PUT good: TOML with the right If-Match, then JSON.
    let r = call_with(
        &p,
        "PUT",
        "/v1/table",
        &[
            ("authorization", &auth),
            ("if-match", "\"1\""),
            ("x-switchyard-reason", "all to new"),
        ],
        &good,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let j = r.json();
    assert_eq!(j["version"], 2);
    assert_eq!(j["action"], "put");
    assert_eq!(j["reason"], "all to new");
    assert_eq!(j["changes"]["routes"][0]["route"], "users");
    assert_eq!(j["changes"]["routes"][0]["after"], "new, fallback legacy");
    assert_eq!(r.header("etag"), "\"2\"");
    assert_eq!(spread(&p, "/users/1", 20).await, (20, 0, 0));
    let mut t: serde_json::Value = call(&p, "GET", "/v1/table", "").await.json()["table"].clone();
    t["routes"][1]["to"] = "legacy".into();
    let r = call_with(
        &p,
        "PUT",
        "/v1/table",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
            ("if-match", "2"),
        ],
        &t.to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["version"], 3);
    assert_eq!(spread(&p, "/orders/1", 5).await, (0, 5, 0));
    let j = call(&p, "GET", "/v1/table", "").await.json();
    assert_eq!(j["source"]["source"], "api");
    assert_eq!(j["routes"][0]["origin"], "api");
    assert_eq!(j["routes"][0]["api_changed"], true);

    // PATCH good: split, then fallback removed, then `to`.
    let r = call(
        &p,
        "PATCH",
        "/v1/routes/users",
        r#"{"split": {"new": 10, "legacy": 90}, "reason": "canary"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["changes"]["routes"][0]["fields"],
        serde_json::json!(["split", "to"])
    );
    let j = call(&p, "GET", "/v1/table", "").await.json();
    assert_eq!(
        j["routes"][0]["weights"],
        serde_json::json!({"legacy": 90.0, "new": 10.0})
    );
    let r = call(&p, "PATCH", "/v1/routes/users", r#"{"fallback": null}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        call(&p, "GET", "/v1/table", "").await.json()["routes"][0]["fallbacks"],
        serde_json::json!([])
    );
    let r = call(
        &p,
        "PATCH",
        "/v1/routes/users",
        r#"{"to": "legacy", "fallback": ["new"]}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(spread(&p, "/users/1", 20).await, (0, 20, 0));
    let v = version(&p).await;

    // PATCH bad: each refused, nothing changed.
    for (body, status, needle) in [
        (
            r#"{"split": {"new": 10, "legacy": 80}}"#,
            422,
            "weights sum to 90",
        ),
        (r#"{"to": "nope"}"#, 422, "unknown upstream"),
        (r#"{"to": "new"}"#, 422, "only upstream"),
        (r#"{"to": "new", "split": {"new": 100}}"#, 400, "either"),
        (r#"{"weights": {"new": 100}}"#, 400, "unknown field"),
        (r#"{"reason": "nothing"}"#, 400, "nothing to change"),
        (r#"{"split": "half"}"#, 400, "split"),
        ("not json", 400, "not JSON"),
        ("[1]", 400, "JSON object"),
    ] {
        let r = call(&p, "PATCH", "/v1/routes/users", body).await;
        assert_eq!(r.status, status, "{body}: {}", r.body);
        let all = format!("{} {}", r.json()["error"], r.json()["details"]);
        assert!(all.contains(needle), "{body}: {all}");
    }
    let r = call(&p, "PATCH", "/v1/routes/nope", r#"{"to": "new"}"#).await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("unknown route \"nope\""));
    assert_eq!(version(&p).await, v);
    assert_eq!(spread(&p, "/users/1", 10).await, (0, 10, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_revert_and_history_name_the_actor() {
    let new = Origin::start("new").await;
    let legacy = Origin::start("legacy").await;
    let dir = routes_dir(&table(&new, &legacy, SPLIT));
    let tokens = tempfile::tempdir().unwrap();
    let tf = tokens.path().join("tokens");
    std::fs::write(&tf, "# ops team\nalice:alice-secret-1\nbob:bob-secret-2\n").unwrap();
    let p = Proxy::start_env(
        dir.path(),
        &["--admin-token-file", tf.to_str().unwrap()],
        &[],
    )
    .await;
    let as_ =
        |who: &'static str| format!("Bearer {who}-secret-{}", if who == "alice" { 1 } else { 2 });
    let alice = as_("alice");
    let bob = as_("bob");

    // Rollback: needs a reason, a known route, and a fallback.
    let r = call_with(
        &p,
        "POST",
        "/v1/routes/users/rollback",
        &[("authorization", &alice)],
        "{}",
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("reason"));
    let r = call_with(
        &p,
        "POST",
        "/v1/routes/nope/rollback",
        &[("authorization", &alice)],
        r#"{"reason": "x"}"#,
    )
    .await;
    assert_eq!(r.status, 404);
    let r = call_with(
        &p,
        "POST",
        "/v1/routes/orders/rollback",
        &[("authorization", &alice)],
        r#"{"reason": "x"}"#,
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.json()["error"].as_str().unwrap().contains("no fallback"),
        "{}",
        r.body
    );
    let r = call_with(
        &p,
        "POST",
        "/v1/routes/users/rollback",
        &[("authorization", &alice), ("if-match", "7")],
        r#"{"reason": "x"}"#,
    )
    .await;
    assert_eq!(r.status, 409);
    assert_eq!(version(&p).await, 1);

    let r = call_with(
        &p,
        "POST",
        "/v1/routes/users/rollback",
        &[("authorization", &alice)],
        r#"{"reason": "5xx on new"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["version"], 2);
    assert_eq!(r.json()["actor"], "alice");
    assert_eq!(spread(&p, "/users/1", 20).await, (0, 20, 0));
    // Rolled back: nothing left to roll back to.
    let r = call_with(
        &p,
        "POST",
        "/v1/routes/users/rollback",
        &[("authorization", &alice)],
        r#"{"reason": "again"}"#,
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("sends everything to legacy"));

    let r = call_with(
        &p,
        "PATCH",
        "/v1/routes/orders",
        &[("authorization", &bob)],
        r#"{"to": "legacy", "reason": "orders too"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Revert: bad input first.
    for (body, status) in [
        (r#"{"to": 99, "reason": "x"}"#, 404),
        (r#"{"to": 1}"#, 400),
        (r#"{"to": "one", "reason": "x"}"#, 400),
        (r#"{"reason": "x"}"#, 400),
    ] {
        let r = call_with(&p, "POST", "/v1/revert", &[("authorization", &bob)], body).await;
        assert_eq!(r.status, status, "{body}: {}", r.body);
    }
    assert_eq!(version(&p).await, 3);
    let r = call_with(
        &p,
        "POST",
        "/v1/revert",
        &[("authorization", &bob)],
        r#"{"to": 1, "reason": "back to the files"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["version"], 4);
    let (n, l, _) = spread(&p, "/users/1", 40).await;
    assert!(n > 0 && l > 0, "split again: {n} {l}");
    assert_eq!(spread(&p, "/orders/1", 5).await, (5, 0, 0));

    // History: every version, newest first, with time, actor, reason, source, summary.
    let h = call(&p, "GET", "/v1/history", "").await.json();
    let v = h["versions"].as_array().unwrap();
    assert_eq!(
        v.iter()
            .map(|x| x["version"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [4, 3, 2, 1]
    );
    assert_eq!(v[3]["actor"], "files");
    assert_eq!(v[3]["source"], "files");
    assert_eq!(v[2]["actor"], "alice");
    assert_eq!(v[2]["action"], "rollback");
    assert_eq!(v[2]["reason"], "5xx on new");
    assert_eq!(v[2]["source"], "api");
    assert_eq!(
        v[2]["changes"]["routes"][0],
        serde_json::json!({"route": "users", "change": "changed", "fields": ["fallback", "split", "to"],
                           "before": "legacy=50 new=50, fallback legacy", "after": "legacy"})
    );
    assert_eq!(v[1]["actor"], "bob");
    assert_eq!(v[1]["summary"], "orders: new -> legacy");
    assert_eq!(v[0]["action"], "revert");
    assert_eq!(v[0]["reverted_to"], 1);
    assert!(v[0]["time"].as_str().unwrap().ends_with('Z'));
    let h = call(&p, "GET", "/v1/history?limit=2&before=4", "")
        .await
        .json();
    assert_eq!(
        h["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["version"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [3, 2]
    );
    let one = call(&p, "GET", "/v1/history/2", "").await.json();
    assert_eq!(one["table"]["routes"][0]["to"], "legacy");
    assert_eq!(one["origins"]["routes"][0], "api");
    assert_eq!(call(&p, "GET", "/v1/history/99", "").await.status, 404);
    assert_eq!(call(&p, "GET", "/v1/history/two", "").await.status, 400);
    assert_eq!(call(&p, "GET", "/v1/history?limit=x", "").await.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_show_health_and_ejection() {
    let new = Origin::start("new").await;
    let closed = free_port();
    let routes = format!(
        "{}[upstreams.gone]\naddrs = [\"127.0.0.1:{closed}\"]\nconnect_timeout_ms = 300\n\
         outlier = {{ consecutive_failures = 1, base_ejection_ms = 30000, max_ejection_ms = 60000 }}\n\
         [[routes]]\nid = \"a\"\npath = \"/a\"\nto = \"new\"\n\
         [[routes]]\nid = \"gone\"\npath = \"/gone\"\nto = \"gone\"\nfallback = \"new\"\n",
        upstream("new", &new)
    );
    let dir = routes_dir(&routes);
    let p = start(dir.path(), &[]).await;
    let u = call(&p, "GET", "/v1/upstreams", "").await.json();
    let by = |u: &serde_json::Value, n: &str| {
        u["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == n)
            .cloned()
            .unwrap()
    };
    assert_eq!(by(&u, "gone")["state"], "up");
    assert_eq!(by(&u, "new")["routes"], serde_json::json!(["a", "gone"]));
    // One failed connect ejects `gone`; the request itself is served by the fallback.
    let r = get(&p.url("/gone")).await;
    assert_eq!(r.origin(), "new");
    let u = call(&p, "GET", "/v1/upstreams", "").await.json();
    let g = by(&u, "gone");
    assert_eq!(g["state"], "ejected", "{u}");
    let left = g["ejected_for_ms"].as_u64().unwrap();
    assert!(left > 20_000 && left <= 30_000, "{left}");
    assert_eq!(g["active_healthy"], true);
    assert_eq!(by(&u, "new")["state"], "up");
    assert_eq!(by(&u, "new")["ejected_for_ms"], serde_json::Value::Null);
    assert_eq!(call(&p, "POST", "/v1/upstreams", "").await.status, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_required_for_changes_and_for_non_loopback() {
    let new = Origin::start("new").await;
    let legacy = Origin::start("legacy").await;
    let dir = routes_dir(&table(&new, &legacy, SPLIT));
    let bin = env!("CARGO_BIN_EXE_switchyard");

    // A non-loopback admin address without a token: refused before binding anything.
    let port = free_port();
    let mut child = Command::new(bin)
        .args(["serve", "--routes"])
        .arg(dir.path())
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--admin", &format!("0.0.0.0:{port}")])
        .env_remove("SWITCHYARD_ADMIN_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("switchyard started on a non-loopback admin address without a token");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("refusing to serve the admin API on non-loopback address")
            && err.contains("without a token"),
        "{err}"
    );

    // A bad token file is refused too.
    let tf = dir.path().join("tokens.txt");
    std::fs::write(&tf, "alice:one\nbob:one\n").unwrap();
    let out = Command::new(bin)
        .args(["serve", "--routes"])
        .arg(dir.path().join("routes.toml"))
        .args(["--admin-token-file", tf.to_str().unwrap()])
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--admin", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("same token as actor \"alice\""));

    // On loopback without any token: reads work, every change is refused.
    let p = Proxy::start_env(dir.path(), &[], &[]).await;
    assert_eq!(call_with(&p, "GET", "/v1/table", &[], "").await.status, 200);
    let r = call(
        &p,
        "POST",
        "/v1/routes/users/rollback",
        r#"{"reason": "x"}"#,
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("changes are disabled"),
        "{}",
        r.body
    );
    assert_eq!(version(&p).await, 1);
}
