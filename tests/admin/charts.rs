//! The charts' data and per-host traffic against the real binary: `/v1/series` adds up to a
//! known load (split and 5xx), version and hold markers match the history, `/v1/traffic` and
//! `switchyard traffic` count three hosts, and a log written to a file has no escape codes.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use switchyard::metrics::series::SeriesView;
use switchyard::metrics::traffic::TrafficView;

use super::*;

/// `/v1/series` (with `query`) decoded into the server's own type.
async fn series(p: &Proxy, query: &str) -> SeriesView {
    let r = call(p, "GET", &format!("/v1/series{query}"), "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

/// Waits until the series holds a sample that ended at least `after_ms` + one step, so
/// everything answered before `after_ms` has been sampled.
async fn series_after(p: &Proxy, after_ms: u64) -> SeriesView {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = series(p, "").await;
        if v.to_ms >= after_ms + v.step_ms {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "no sample after {after_ms}: {}",
            v.to_ms
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn sum(v: &[u32]) -> u64 {
    v.iter().map(|&x| u64::from(x)).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_add_up_to_a_known_load() {
    let new = Origin::start("new").await;
    let legacy = Origin::start("legacy").await;
    let dir = routes_dir(&table(&new, &legacy, SPLIT));
    let p = start(dir.path(), &[]).await;

    // 80 requests to the 50/50 split, counted by the origin that answered.
    let (n_new, n_legacy, other) = spread(&p, "/users/1", 80).await;
    assert_eq!(other, 0);
    assert!(n_new > 0 && n_legacy > 0, "{n_new}/{n_legacy}");
    // 7 requests to a route without fallback while its upstream answers 500.
    new.state.set_mode(Mode::Error500);
    for _ in 0..7 {
        assert_eq!(get(&p.url("/orders/1")).await.status, 500);
    }
    new.state.set_mode(Mode::Normal);
    // The proxy counts in its logging phase, just after the answer: leave it a moment.
    let done = now_ms() + 200;

    let v = series_after(&p, done).await;
    assert_eq!(v.step_ms, 2_000);
    assert_eq!(v.slots, 480);
    assert!(v.memory_bytes > 0 && v.memory_bytes <= v.memory_bound_bytes);
    let steps = v.steps();
    let users = v.routes.iter().find(|r| r.route == "users").unwrap();
    for arr in [&users.requests, &users.errors_5xx, &users.fallbacks] {
        assert_eq!(arr.len(), steps);
    }
    assert_eq!(sum(&users.requests), 80);
    assert_eq!(sum(&users.errors_5xx), 0);
    assert_eq!(sum(&users.fallbacks), 0);
    assert_eq!(sum(&users.by_upstream["new"]), n_new as u64);
    assert_eq!(sum(&users.by_upstream["legacy"]), n_legacy as u64);
    // A latency wherever there were requests, none where there were not.
    for i in 0..steps {
        assert_eq!(users.p99_ms[i].is_some(), users.requests[i] > 0, "step {i}");
        if let (Some(p50), Some(p99)) = (users.p50_ms[i], users.p99_ms[i]) {
            assert!(p50 > 0.0 && p50 <= p99, "{p50} {p99}");
        }
    }
    let orders = v.routes.iter().find(|r| r.route == "orders").unwrap();
    assert_eq!(sum(&orders.requests), 7);
    assert_eq!(sum(&orders.errors_5xx), 7);
    assert!(v.routes.iter().all(|r| r.route != "static"));
    let up = v.upstreams.iter().find(|u| u.upstream == "new").unwrap();
    assert_eq!(sum(&up.requests), n_new as u64 + 7);
    assert_eq!(sum(&up.errors_5xx), 7);
    assert!(up.state.iter().all(|&s| s == 1), "{:?}", up.state);
    assert_eq!(v.states, ["none", "up", "unhealthy", "ejected"]);

    // Filtered by route and time: a route with no requests answers zeros, `since` cuts.
    let f = series(
        &p,
        &format!("?route=static,users&since={}", v.to_ms - 4_000),
    )
    .await;
    let ids: Vec<&str> = f.routes.iter().map(|r| r.route.as_str()).collect();
    assert_eq!(ids, ["users", "static"]);
    assert!(f.from_ms >= v.to_ms - 4_000);
    assert_eq!(f.routes[1].requests, vec![0; f.steps()]);
    // Bad input.
    let r = call(&p, "GET", "/v1/series?route=nope", "").await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(r.json()["error"].as_str().unwrap().contains("nope"));
    let r = call(&p, "GET", "/v1/series?since=yesterday", "").await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(call(&p, "POST", "/v1/series", "").await.status, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_and_hold_markers_follow_the_history() {
    let new = Origin::start("new").await;
    let legacy = Origin::start("legacy").await;
    let dir = routes_dir(&table(&new, &legacy, SPLIT));
    let p = start(dir.path(), &[]).await;
    let r = call(
        &p,
        "PATCH",
        "/v1/routes/users",
        r#"{"split": {"new": 25, "legacy": 75}, "reason": "ramp to 25"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = call(
        &p,
        "POST",
        "/v1/routes/users/rollback",
        r#"{"reason": "errors went up"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Events are ordered by their millisecond: a version and a hold of the same millisecond
    // have no defined order, so the hold comes a few milliseconds later.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let r = call(
        &p,
        "POST",
        "/v1/hold",
        r#"{"routes": ["orders"], "max_ms": 60000, "reason": "db switch"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(call(&p, "POST", "/v1/release", "").await.status, 200);
    // A hold left to run out is marked when its deadline passes.
    let r = call(
        &p,
        "POST",
        "/v1/hold",
        r#"{"routes": ["orders"], "max_ms": 300}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);

    let history = call(&p, "GET", "/v1/history", "").await.json();
    let versions = history["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 3);
    let deadline = Instant::now() + Duration::from_secs(20);
    let v = loop {
        let v = series(&p, "").await;
        if v.events.iter().any(|e| e.kind == "hold_expired") {
            break v;
        }
        assert!(Instant::now() < deadline, "no hold_expired: {:?}", v.events);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let marks: Vec<&switchyard::metrics::series::Event> =
        v.events.iter().filter(|e| e.kind == "version").collect();
    assert_eq!(marks.len(), 3, "{:?}", v.events);
    for h in versions {
        let n = h["version"].as_u64().unwrap();
        let m = marks.iter().find(|e| e.version == Some(n)).unwrap();
        assert_eq!(m.time, h["time"].as_str().unwrap());
        assert_eq!(m.actor.as_deref(), h["actor"].as_str());
        assert_eq!(m.reason.as_deref(), h["reason"].as_str());
        assert_eq!(m.action.as_deref(), h["action"].as_str());
        assert_eq!(m.summary.as_deref(), h["summary"].as_str());
        assert!(m.time_ms >= v.from_ms && m.time_ms <= v.now_ms);
    }
    assert_eq!(marks[1].routes, ["users"]);
    assert_eq!(marks[2].reason.as_deref(), Some("errors went up"));
    let kinds: Vec<&str> = v.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "version",
            "version",
            "version",
            "hold",
            "release",
            "hold",
            "hold_expired"
        ]
    );
    let hold = &v.events[3];
    assert_eq!(hold.actor.as_deref(), Some("admin"));
    assert_eq!(hold.reason.as_deref(), Some("db switch"));
    assert_eq!(hold.routes, ["orders"]);
    assert_eq!(hold.max_ms, Some(60_000));
    assert_eq!(v.events[4].routes, ["orders"]);
    assert_eq!(v.events[6].time_ms, v.events[5].time_ms + 300);
    // Events are sorted by time.
    assert!(v.events.windows(2).all(|w| w[0].time_ms <= w[1].time_ms));
    // `since` after the versions leaves them out.
    let later = series(&p, &format!("?since={}", v.events[3].time_ms)).await;
    assert!(later.events.iter().all(|e| e.kind != "version"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_per_host() {
    let new = Origin::start("new").await;
    let legacy = Origin::start("legacy").await;
    let dir = routes_dir(&table(&new, &legacy, SPLIT));
    let p = start(dir.path(), &[]).await;
    let c = client();
    for (host, n) in [
        ("api.example.com", 5),
        ("OLD.Example.com:8080", 3),
        ("static.example.com.", 1),
    ] {
        for _ in 0..n {
            let r = send(&c, "GET", &p.url("/orders/1"), &[("host", host)], "")
                .await
                .unwrap();
            assert_eq!(r.status, 200);
        }
    }
    // A request no route matches is still a request for its host.
    assert_eq!(
        send(
            &c,
            "GET",
            &p.url("/nothing"),
            &[("host", "api.example.com")],
            ""
        )
        .await
        .unwrap()
        .status,
        404
    );
    tokio::time::sleep(Duration::from_millis(200)).await;

    let r = call(&p, "GET", "/v1/traffic?window=48h", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let raw = r.json();
    let t: TrafficView = serde_json::from_value(raw.clone()).unwrap();
    assert_eq!(t.window_ms, 48 * 3_600_000);
    assert_eq!(t.tracked_hosts_max, 128);
    let hosts: Vec<(&str, u64, u64)> = t
        .hosts
        .iter()
        .map(|h| (h.host.as_str(), h.traffic.in_window, h.traffic.requests))
        .collect();
    assert_eq!(
        hosts,
        [
            ("api.example.com", 6, 6),
            ("old.example.com", 3, 3),
            ("static.example.com", 1, 1)
        ]
    );
    for h in &t.hosts {
        assert!(h.traffic.last_seen.is_some());
        assert!(h.traffic.last_seen_ms_ago.unwrap() < 60_000);
        assert_eq!(
            h.traffic.per_minute.iter().sum::<u64>(),
            h.traffic.in_window
        );
    }
    assert_eq!(t.other.requests, 0);
    assert_eq!(raw["other"]["last_seen"], Value::Null);
    assert!(raw["hosts"][0]["per_minute"].is_array());
    // The default window is 15 minutes; bad windows are refused.
    let d: TrafficView =
        serde_json::from_str(&call(&p, "GET", "/v1/traffic", "").await.body).unwrap();
    assert_eq!(d.window_ms, 900_000);
    for (w, needle) in [
        ("73h", "longer than the 72h"),
        ("soon", "expected a duration"),
    ] {
        let r = call(&p, "GET", &format!("/v1/traffic?window={w}"), "").await;
        assert_eq!(r.status, 400, "{w}: {}", r.body);
        assert!(
            r.json()["error"].as_str().unwrap().contains(needle),
            "{}",
            r.body
        );
    }

    // The CLI: a table, and the same JSON with --json.
    let cli = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(args)
            .env("SWITCHYARD_ADMIN", p.admin_url(""))
            .env_remove("SWITCHYARD_ADMIN_TOKEN")
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, out, err) = cli(&["traffic", "--window", "48h"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.starts_with("requests per host, window 2d (3 of 128 host slots used)"),
        "{out}"
    );
    let line = out
        .lines()
        .find(|l| l.starts_with("old.example.com"))
        .unwrap();
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&cols[1..3], ["3", "3"], "{line}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("(other)") && l.contains("never")),
        "{out}"
    );
    let (code, out, _) = cli(&["traffic", "--json"]);
    assert_eq!(code, Some(0));
    let j: TrafficView = serde_json::from_str(&out).unwrap();
    assert_eq!(j.hosts.len(), 3);
    let (code, _, err) = cli(&["traffic", "--window", "4d"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("--window: window \"4d\" is longer than the 72h kept"),
        "{err}"
    );
}

/// Starts `switchyard serve` with stderr going to `log` and the given environment; returns the
/// child once the admin listener answers (or after it exits, for a bad setting).
fn serve_logging_to(
    dir: &std::path::Path,
    log: &std::path::Path,
    env: &[(&str, &str)],
) -> (std::process::Child, String) {
    let admin = format!("127.0.0.1:{}", reserve_port());
    let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["serve", "--routes"])
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{}", reserve_port())])
        .args(["--admin", &admin, "--threads", "1", "--access-log", "off"])
        .env("SWITCHYARD_LOG", "info")
        .env_remove("SWITCHYARD_LOG_FORMAT")
        .env_remove("NO_COLOR")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    (child, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_to_a_file_have_no_escape_codes() {
    let new = Origin::start("new").await;
    let legacy = Origin::start("legacy").await;
    let dir = routes_dir(&table(&new, &legacy, SPLIT));
    let tmp = tempfile::tempdir().unwrap();

    for format in ["text", "json"] {
        let log = tmp.path().join(format!("{format}.log"));
        let (mut child, admin) =
            serve_logging_to(dir.path(), &log, &[("SWITCHYARD_LOG_FORMAT", format)]);
        // Wait for the start line, then cause a warning with fields (a refused admin call).
        let deadline = Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("switchyard serving")
        {
            assert!(
                Instant::now() < deadline,
                "no start line in {}",
                log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let r = send(
            &client(),
            "POST",
            &format!("http://{admin}/v1/release"),
            &[("authorization", "Bearer wrong")],
            "",
        )
        .await
        .unwrap();
        assert_eq!(r.status, 401);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = child.kill();
        let _ = child.wait();
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(!text.contains('\x1b'), "{format}: escape codes in {text:?}");
        assert!(text.contains("not authenticated"), "{format}: {text}");
        if format == "json" {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let v: Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
            }
            assert!(text.contains(r#""message":"switchyard serving""#), "{text}");
        } else {
            assert!(
                text.contains(" INFO ") && text.contains("switchyard serving"),
                "{text}"
            );
        }
    }

    // A format switchyard does not know stops it at once, saying which.
    let log = tmp.path().join("bad.log");
    let (mut child, _) = serve_logging_to(dir.path(), &log, &[("SWITCHYARD_LOG_FORMAT", "xml")]);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(2));
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.trim(),
        r#"switchyard: SWITCHYARD_LOG_FORMAT="xml": expected "text" or "json""#
    );
}
