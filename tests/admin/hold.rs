//! Hold and release: requests for held routes wait (queued, not refused) until release or
//! `max_ms`, then proceed on the table current at that moment; in-flight and queued counts.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::*;

async fn users_counts(p: &Proxy) -> (i64, i64) {
    let j = call(p, "GET", "/v1/inflight", "").await.json();
    (
        j["routes"]["users"]["inflight"].as_i64().unwrap(),
        j["routes"]["users"]["queued"].as_i64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_queues_until_release_then_uses_the_current_table() {
    let new = Origin::start("new").await;
    let legacy = Origin::start("legacy").await;
    let dir = routes_dir(&table(&new, &legacy, SPLIT));
    let p = start(dir.path(), &[]).await;

    // Bad input changes nothing.
    for (body, status) in [
        (r#"{"routes": ["nope"], "max_ms": 1000}"#, 404),
        (r#"{"routes": [], "max_ms": 1000}"#, 400),
        (r#"{"routes": ["users"], "max_ms": 0}"#, 400),
        (r#"{"routes": ["users"], "max_ms": 100000000}"#, 400),
        (r#"{"routes": ["users"]}"#, 400),
        (r#"{"routes": "users", "max_ms": 1000}"#, 400),
    ] {
        let r = call(&p, "POST", "/v1/hold", body).await;
        assert_eq!(r.status, status, "{body}: {}", r.body);
    }
    let r = call_with(
        &p,
        "POST",
        "/v1/hold",
        &[],
        r#"{"routes": ["users"], "max_ms": 1000}"#,
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        call(&p, "GET", "/v1/hold", "").await.json()["hold"],
        serde_json::Value::Null
    );

    // Hold users; five requests queue, none reaches an origin.
    let r = call(
        &p,
        "POST",
        "/v1/hold",
        r#"{"routes": ["users"], "max_ms": 30000, "reason": "db cutover"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["held"], serde_json::json!(["users"]));
    let hold = call(&p, "GET", "/v1/hold", "").await.json()["hold"].clone();
    assert_eq!(hold["routes"], serde_json::json!(["users"]));
    assert!(hold["remaining_ms"].as_u64().unwrap() > 25_000);
    let seen_before =
        new.state.requests.load(Ordering::SeqCst) + legacy.state.requests.load(Ordering::SeqCst);
    let held_at = Instant::now();
    let mut waiting = Vec::new();
    for i in 0..5 {
        let url = p.url(&format!("/users/{i}"));
        waiting.push(tokio::spawn(async move {
            let r = send(&client(), "GET", &url, &[], "").await;
            (Instant::now(), r)
        }));
    }
    wait_for(10, "5 queued requests", || async {
        users_counts(&p).await == (0, 5)
    })
    .await;
    // Other routes are not held.
    let t = Instant::now();
    assert_eq!(get(&p.url("/orders/1")).await.origin(), "new");
    assert!(t.elapsed() < Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen_now =
        new.state.requests.load(Ordering::SeqCst) + legacy.state.requests.load(Ordering::SeqCst);
    assert_eq!(
        seen_now,
        seen_before + 1,
        "only the /orders request reached an origin"
    );
    assert!(waiting.iter().all(|w| !w.is_finished()));
    let j = call(&p, "GET", "/v1/table", "").await.json();
    assert_eq!(j["hold"]["routes"], serde_json::json!(["users"]));

    // Switch while held (the cutover), then release: the queued requests complete on the new
    // table.
    let r = call(
        &p,
        "PATCH",
        "/v1/routes/users",
        r#"{"to": "legacy", "fallback": null}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let released_at = Instant::now();
    let r = call(&p, "POST", "/v1/release", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["released"], serde_json::json!(["users"]));
    for w in waiting {
        let (done, r) = w.await.unwrap();
        let r = r.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            r.origin(),
            "legacy",
            "a held request used the table from before the release"
        );
        assert!(
            done >= released_at,
            "a held request completed before the release"
        );
        assert!(done - held_at >= Duration::from_millis(300));
    }
    // In-flight counts drop in the proxy's logging phase, just after the response is sent.
    wait_for(5, "nothing in flight or queued", || async {
        users_counts(&p).await == (0, 0)
    })
    .await;
    assert_eq!(
        call(&p, "GET", "/v1/hold", "").await.json()["hold"],
        serde_json::Value::Null
    );

    // max_ms bounds the wait without a release.
    let r = call(
        &p,
        "POST",
        "/v1/hold",
        r#"{"routes": ["users"], "max_ms": 400}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    let t = Instant::now();
    let r = get(&p.url("/users/9")).await;
    let waited = t.elapsed();
    assert_eq!(r.status, 200);
    assert!(
        waited >= Duration::from_millis(380),
        "released too early: {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(400 + 1500),
        "max_ms not honored: {waited:?}"
    );
    assert_eq!(
        call(&p, "GET", "/v1/hold", "").await.json()["hold"],
        serde_json::Value::Null
    );
    // Release without a hold is fine.
    let r = call(&p, "POST", "/v1/release", "").await;
    assert_eq!(r.json()["released"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflight_counts_requests_on_the_way() {
    let slow = Origin::start("slow").await;
    slow.state.set_mode(Mode::Hang);
    let routes = format!(
        "[upstreams.slow]\naddrs = [\"{}\"]\nread_timeout_ms = 1500\n\
         [[routes]]\nid = \"users\"\npath = \"/*\"\nto = \"slow\"\n",
        slow.addr
    );
    let dir = routes_dir(&routes);
    let p = start(dir.path(), &[]).await;
    let mut reqs = Vec::new();
    for _ in 0..3 {
        let url = p.url("/x");
        reqs.push(tokio::spawn(async move {
            send(&client(), "GET", &url, &[], "").await
        }));
    }
    wait_for(5, "3 requests in flight", || async {
        users_counts(&p).await == (3, 0)
    })
    .await;
    for r in reqs {
        assert_eq!(r.await.unwrap().unwrap().status, 504);
    }
    wait_for(5, "nothing in flight", || async {
        users_counts(&p).await == (0, 0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_queue_overflow_and_reject_on_expiry_answer_503_with_retry_after() {
    let new = Origin::start("new").await;
    let legacy = Origin::start("legacy").await;
    let dir = routes_dir(&table(&new, &legacy, SPLIT));
    let p = start(dir.path(), &[]).await;
    let before =
        new.state.requests.load(Ordering::SeqCst) + legacy.state.requests.load(Ordering::SeqCst);

    // At most 3 queued: the 4th and 5th are refused at once, never silently dropped.
    let r = call(
        &p,
        "POST",
        "/v1/hold",
        r#"{"routes": ["users"], "max_ms": 30000, "max_queued": 3}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["hold"]["max_queued"], 3);
    let mut waiting = Vec::new();
    for i in 0..3 {
        let url = p.url(&format!("/users/{i}"));
        waiting.push(tokio::spawn(async move {
            send(&client(), "GET", &url, &[], "").await
        }));
    }
    wait_for(10, "3 queued requests", || async {
        users_counts(&p).await == (0, 3)
    })
    .await;
    for i in 3..5 {
        let r = send(&client(), "GET", &p.url(&format!("/users/{i}")), &[], "")
            .await
            .unwrap();
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.header("retry-after"), "1");
        assert!(r.body.contains("queue is full"), "{}", r.body);
    }
    let hold = call(&p, "GET", "/v1/hold", "").await.json()["hold"].clone();
    assert_eq!(hold["overflowed"], 2, "{hold}");
    // The byte cap: a declared body over it is refused while one under it queues.
    let r = call(
        &p,
        "POST",
        "/v1/hold",
        r#"{"routes": ["users"], "max_ms": 30000, "max_queued": 100, "max_queued_bytes": 4096}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    let r = send(
        &client(),
        "POST",
        &p.url("/users/big"),
        &[],
        vec![b'x'; 8192],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.header("retry-after"), "1");
    let r = call(&p, "POST", "/v1/release", "").await;
    assert_eq!(r.status, 200);
    for w in waiting {
        let r = w.await.unwrap().unwrap();
        assert_eq!(
            r.status, 200,
            "queued requests are served after the release"
        );
    }
    let after =
        new.state.requests.load(Ordering::SeqCst) + legacy.state.requests.load(Ordering::SeqCst);
    assert_eq!(after, before + 3, "refused requests reached an origin");

    // on_expiry = reject: past the deadline, requests for the held route get 503 until a
    // release (nobody confirmed the upstream writable), other routes are served.
    let r = call(
        &p,
        "POST",
        "/v1/hold",
        r#"{"routes": ["users"], "max_ms": 300, "on_expiry": "reject"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let t = Instant::now();
    let r = get(&p.url("/users/q")).await;
    assert_eq!(
        r.status, 503,
        "a queued request at the deadline: {}",
        r.body
    );
    assert!(t.elapsed() >= Duration::from_millis(280));
    assert_eq!(r.header("retry-after"), "1");
    let r = get(&p.url("/users/later")).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("until it is released"), "{}", r.body);
    assert_eq!(get(&p.url("/orders/1")).await.status, 200);
    let hold = call(&p, "GET", "/v1/hold", "").await.json()["hold"].clone();
    assert_eq!(hold["expired"], true, "{hold}");
    let m = call(&p, "GET", "/metrics", "").await.body;
    assert!(
        metric(&m, "switchyard_rejected_total{reason=\"hold_expired\"}") >= 2.0,
        "{m}"
    );
    assert!(
        metric(&m, "switchyard_rejected_total{reason=\"hold_queue_full\"}") >= 3.0,
        "{m}"
    );
    call(&p, "POST", "/v1/release", "").await;
    assert_eq!(get(&p.url("/users/after")).await.status, 200);
    // Bad caps are refused.
    let r = call(
        &p,
        "POST",
        "/v1/hold",
        r#"{"routes": ["users"], "max_ms": 100, "max_queued": 0}"#,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = call(
        &p,
        "POST",
        "/v1/hold",
        r#"{"routes": ["users"], "max_ms": 100, "on_expiry": "explode"}"#,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
}
