//! Rollback under continuous load: no request fails, and every request started after the
//! rollback call returned is served by the fallback.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

/// One request as a load loop saw it.
struct Seen {
    started: Instant,
    result: Result<(u16, String, String), String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_under_load_fails_nothing_and_takes_effect_for_the_next_request() {
    let new = Origin::start("new").await;
    let legacy = Origin::start("legacy").await;
    let dir = routes_dir(&table(&new, &legacy, SPLIT));
    let p = start(dir.path(), &[]).await;

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut loops = Vec::new();
    for i in 0..4 {
        let (stop, done, url) = (stop.clone(), done.clone(), p.url(&format!("/users/{i}")));
        loops.push(tokio::spawn(async move {
            let c = client();
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let result = send(&c, "GET", &url, &[], "").await.map(|r| {
                    (
                        r.status,
                        r.origin().to_string(),
                        r.header("x-switchyard-upstream").to_string(),
                    )
                });
                seen.push(Seen { started, result });
                done.fetch_add(1, Ordering::Relaxed);
            }
            seen
        }));
    }
    // Load on the split first, so both arms are in use when the rollback lands. Time and
    // request counts both, so that a slow machine still gets a meaningful sample.
    let enough = |n: u64| {
        let done = done.clone();
        async move {
            let t = Instant::now();
            wait_for(30, &format!("{n} more requests"), || {
                let base = done.clone();
                async move { base.load(Ordering::Relaxed) >= n }
            })
            .await;
            let spent = t.elapsed();
            if spent < Duration::from_millis(700) {
                tokio::time::sleep(Duration::from_millis(700) - spent).await;
            }
        }
    };
    enough(100).await;
    let r = call(
        &p,
        "POST",
        "/v1/routes/users/rollback",
        r#"{"reason": "errors on new"}"#,
    )
    .await;
    let returned = Instant::now();
    assert_eq!(r.status, 200, "{}", r.body);
    enough(done.load(Ordering::Relaxed) + 100).await;
    stop.store(true, Ordering::Relaxed);

    let mut all = Vec::new();
    for l in loops {
        all.extend(l.await.unwrap());
    }
    let failures: Vec<String> = all
        .iter()
        .filter_map(|s| match &s.result {
            Ok((200, o, u)) if (o == "new" || o == "legacy") && o == u => None,
            Ok((st, o, u)) => Some(format!("{st} origin={o} header={u}")),
            Err(e) => Some(e.clone()),
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} failed: {:?}",
        failures.len(),
        all.len(),
        &failures[..failures.len().min(5)]
    );
    let before: Vec<&Seen> = all.iter().filter(|s| s.started < returned).collect();
    let after: Vec<&Seen> = all.iter().filter(|s| s.started >= returned).collect();
    let origin = |s: &Seen| s.result.as_ref().map(|r| r.1.clone()).unwrap_or_default();
    assert!(
        before.iter().any(|s| origin(s) == "new"),
        "the split was not in use before the rollback"
    );
    assert!(
        after.len() > 20,
        "too few requests after the rollback: {}",
        after.len()
    );
    let wrong: Vec<String> = after
        .iter()
        .map(|s| origin(s))
        .filter(|o| o != "legacy")
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} requests started after the rollback returned went to {:?}",
        wrong.len(),
        after.len(),
        wrong.first()
    );
}
