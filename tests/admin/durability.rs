//! The history under `--state` survives a restart and `kill -9` at any moment: nothing that
//! was acknowledged is lost, and a restart resumes the last version, not the files.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;

fn history_json(h: &serde_json::Value) -> Vec<(u64, String, String, String)> {
    h["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().unwrap(),
                v["actor"].as_str().unwrap().to_string(),
                v["time"].as_str().unwrap().to_string(),
                v["summary"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_survives_restart_and_kill_9() {
    let new = Origin::start("new").await;
    let legacy = Origin::start("legacy").await;
    let dir = routes_dir(&table(&new, &legacy, SPLIT));
    let state = tempfile::tempdir().unwrap();
    let state_arg = state.path().to_str().unwrap().to_string();
    let args = ["--state", state_arg.as_str()];

    let mut p = start(dir.path(), &args).await;
    assert_eq!(
        call(
            &p,
            "POST",
            "/v1/routes/users/rollback",
            r#"{"reason": "r1"}"#
        )
        .await
        .status,
        200
    );
    assert_eq!(
        call(
            &p,
            "PATCH",
            "/v1/routes/orders",
            r#"{"to": "legacy", "reason": "r2"}"#
        )
        .await
        .status,
        200
    );
    let before = history_json(&call(&p, "GET", "/v1/history", "").await.json());
    assert_eq!(before.len(), 3);

    // A graceful restart resumes version 3 (the API's table, not the files').
    p.terminate();
    let mut p = start(dir.path(), &args).await;
    assert_eq!(version(&p).await, 3);
    assert_eq!(p.table_version().await, 3);
    assert_eq!(
        history_json(&call(&p, "GET", "/v1/history", "").await.json()),
        before
    );
    assert_eq!(spread(&p, "/users/1", 10).await, (0, 10, 0));
    assert_eq!(spread(&p, "/orders/1", 5).await, (0, 5, 0));
    let t = call(&p, "GET", "/v1/table", "").await.json();
    assert_eq!(t["source"]["action"], "patch");
    assert_eq!(t["routes"][0]["api_changed"], true);

    // kill -9 right after an acknowledged change: the change is there after the restart, and
    // numbering continues.
    let r = call(&p, "POST", "/v1/revert", r#"{"to": 1, "reason": "r3"}"#).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["version"], 4);
    p.kill9();
    let mut p = start(dir.path(), &args).await;
    assert_eq!(version(&p).await, 4);
    let h = call(&p, "GET", "/v1/history", "").await.json();
    assert_eq!(h["versions"][0]["reverted_to"], 1);
    assert_eq!(h["versions"][0]["reason"], "r3");
    let (n, l, _) = spread(&p, "/users/1", 40).await;
    assert!(n > 0 && l > 0, "split again after the revert: {n} {l}");
    let r = call(&p, "PATCH", "/v1/routes/static", r#"{"to": "new"}"#).await;
    assert_eq!(r.json()["version"], 5);

    // kill -9 at an arbitrary moment while changes stream in: every acknowledged version is
    // in the history with its content, and the live table is the newest recorded one.
    for round in 0..3u64 {
        let acked: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
        let writer = {
            let (acked, url) = (acked.clone(), p.admin_url("/v1/routes/users"));
            tokio::spawn(async move {
                let c = client();
                let auth = bearer();
                for k in 1..100u64 {
                    let body = format!(
                        r#"{{"split": {{"new": {k}, "legacy": {}}}, "reason": "k{k}"}}"#,
                        100 - k
                    );
                    match send(&c, "PATCH", &url, &[("authorization", &auth)], body).await {
                        Ok(r) if r.status == 200 => acked
                            .lock()
                            .unwrap()
                            .push((r.json()["version"].as_u64().unwrap(), k)),
                        Ok(r) => panic!("PATCH refused: {} {}", r.status, r.body),
                        Err(_) => break,
                    }
                }
            })
        };
        // Some changes acknowledged, then an arbitrary moment (often mid-commit).
        wait_for(10, "a first acknowledged change", || async {
            !acked.lock().unwrap().is_empty()
        })
        .await;
        tokio::time::sleep(Duration::from_millis(rand::random_range(0..200))).await;
        p.kill9();
        writer.await.unwrap();
        let acked = acked.lock().unwrap().clone();
        assert!(
            !acked.is_empty(),
            "round {round}: nothing was acknowledged before the kill"
        );
        p = start(dir.path(), &args).await;
        let live = version(&p).await;
        let newest = call(&p, "GET", "/v1/history?limit=1", "").await.json()["versions"][0]
            ["version"]
            .as_u64()
            .unwrap();
        assert_eq!(live, newest, "round {round}");
        let last_acked = acked.last().unwrap().0;
        assert!(
            live >= last_acked,
            "round {round}: live {live} < acknowledged {last_acked}"
        );
        for (v, k) in &acked {
            let rec = call(&p, "GET", &format!("/v1/history/{v}"), "")
                .await
                .json();
            assert_eq!(
                rec["table"]["routes"][0]["split"]["new"], *k as f64,
                "round {round}, version {v}"
            );
            assert_eq!(rec["reason"], format!("k{k}"));
        }
        let t = call(&p, "GET", "/v1/table", "").await.json();
        let rec = call(&p, "GET", &format!("/v1/history/{live}"), "")
            .await
            .json();
        assert_eq!(
            t["table"], rec["table"],
            "round {round}: the live table is the newest version"
        );
    }
}
