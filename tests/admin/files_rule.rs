//! Files vs API: a rollback made through the API is not silently undone by a route file
//! reload. A reload that would change a route changed through the API since the files' last
//! load is refused and reported until `adopt`; `--force-files` lets files always win.

use std::process::Command;

use super::*;

async fn reloads(p: &Proxy, result: &str) -> f64 {
    let m = get(&p.admin_url("/metrics")).await.body;
    metric(
        &m,
        &format!("switchyard_reloads_total{{result=\"{result}\"}}"),
    )
}

async fn wait_reloads(p: &Proxy, result: &str, n: f64) {
    wait_for(
        10,
        &format!("reloads_total{{result={result:?}}} >= {n}"),
        || async { reloads(p, result).await >= n },
    )
    .await;
}

fn static_to(t: &str, to: &str) -> String {
    t.replace(
        "id = \"static\"\npath = \"/static/*\"\nto = \"legacy\"",
        &format!("id = \"static\"\npath = \"/static/*\"\nto = \"{to}\""),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_reloads_never_silently_undo_an_api_change() {
    let new = Origin::start("new").await;
    let legacy = Origin::start("legacy").await;
    let files = table(&new, &legacy, SPLIT);
    let dir = routes_dir(&files);
    let p = start(dir.path(), &[]).await;
    let r = call(
        &p,
        "POST",
        "/v1/routes/users/rollback",
        r#"{"reason": "incident"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Re-reading unchanged files (SIGHUP) keeps the rollback.
    Command::new("kill")
        .args(["-HUP", &p.child.id().to_string()])
        .status()
        .unwrap();
    wait_reloads(&p, "unchanged", 1.0).await;
    assert_eq!(version(&p).await, 2);
    assert_eq!(spread(&p, "/users/1", 10).await, (0, 10, 0));

    // A file edit elsewhere, with the files still saying 50/50 for users: refused, reported
    // (metric, log, GET /v1/table), nothing applied.
    rewrite_routes(dir.path(), &static_to(&files, "new"));
    wait_reloads(&p, "conflict", 1.0).await;
    assert_eq!(version(&p).await, 2);
    assert_eq!(spread(&p, "/users/1", 10).await, (0, 10, 0));
    assert_eq!(spread(&p, "/static/1", 3).await, (0, 3, 0));
    let t = call(&p, "GET", "/v1/table", "").await.json();
    assert_eq!(
        t["files"]["conflict"]["subjects"],
        serde_json::json!(["route:users"])
    );
    assert_eq!(
        t["files"]["api_changed"],
        serde_json::json!(["route:users"])
    );
    assert_eq!(t["routes"][0]["api_changed"], true);

    // Files that agree with the rollback are accepted; the API marks and the conflict clear.
    let agreed = static_to(&table(&new, &legacy, "to = \"legacy\""), "new");
    rewrite_routes(dir.path(), &agreed);
    p.wait_version(3).await;
    assert_eq!(spread(&p, "/static/1", 3).await, (3, 0, 0));
    assert_eq!(spread(&p, "/users/1", 10).await, (0, 10, 0));
    let t = call(&p, "GET", "/v1/table", "").await.json();
    assert_eq!(t["files"]["conflict"], serde_json::Value::Null);
    assert_eq!(t["files"]["api_changed"], serde_json::json!([]));
    assert_eq!(t["files"]["loaded_version"], 3);
    assert_eq!(t["source"]["action"], "reload");

    // An API change, then files that would undo it: refused until adopt, then the files win.
    let r = call(
        &p,
        "PATCH",
        "/v1/routes/users",
        r#"{"split": {"new": 90, "legacy": 10}, "fallback": "legacy"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    rewrite_routes(dir.path(), &static_to(&files, "new"));
    wait_reloads(&p, "conflict", 2.0).await;
    assert_eq!(version(&p).await, 4);
    let r = call_with(&p, "POST", "/v1/adopt", &[], "{}").await;
    assert_eq!(r.status, 401);
    let r = call(&p, "POST", "/v1/adopt", r#"{"reason": "files are right"}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["version"], 5);
    assert_eq!(r.json()["action"], "adopt");
    let t = call(&p, "GET", "/v1/table", "").await.json();
    assert_eq!(
        t["routes"][0]["weights"],
        serde_json::json!({"legacy": 50.0, "new": 50.0})
    );
    assert_eq!(t["files"]["conflict"], serde_json::Value::Null);
    let h = call(&p, "GET", "/v1/history?limit=1", "").await.json();
    assert_eq!(h["versions"][0]["source"], "files");
    assert_eq!(h["versions"][0]["actor"], "admin");
    assert_eq!(h["versions"][0]["reason"], "files are right");
    // Adopting files that do not compile is a 422 and changes nothing.
    rewrite_routes(
        dir.path(),
        "[[routes]]\nid = \"x\"\npath = \"/*\"\nto = \"nope\"\n",
    );
    wait_reloads(&p, "error", 1.0).await;
    let r = call(&p, "POST", "/v1/adopt", "").await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.json()["details"][0]["message"]
        .as_str()
        .unwrap()
        .contains("unknown upstream"));
    assert_eq!(version(&p).await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_files_lets_files_win() {
    let new = Origin::start("new").await;
    let legacy = Origin::start("legacy").await;
    let files = table(&new, &legacy, SPLIT);
    let dir = routes_dir(&files);
    let p = start(dir.path(), &["--force-files"]).await;
    assert_eq!(
        call(
            &p,
            "POST",
            "/v1/routes/users/rollback",
            r#"{"reason": "x"}"#
        )
        .await
        .status,
        200
    );
    assert_eq!(spread(&p, "/users/1", 10).await, (0, 10, 0));
    rewrite_routes(dir.path(), &static_to(&files, "new"));
    p.wait_version(3).await;
    let (n, l, _) = spread(&p, "/users/1", 40).await;
    assert!(n > 0 && l > 0, "the files' split is back: {n} {l}");
    assert_eq!(reloads(&p, "conflict").await, 0.0);
    let t = call(&p, "GET", "/v1/table", "").await.json();
    assert_eq!(t["files"]["force_files"], true);
}
