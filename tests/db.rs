//! The database cutover against real MariaDB 10.11 servers started by the harness, with two
//! small HTTP applications (one per database) behind the real switchyard binary.

mod common;
#[path = "db/harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use harness::*;
use mysql_async::prelude::Queryable;

/// `db check --json` from `s` to `t` with `extra` flags: the exit code and each check by name.
fn db_check(
    s: &Maria,
    t: &Maria,
    extra: &[&str],
) -> (Option<i32>, BTreeMap<String, serde_json::Value>) {
    let (su, tu) = (s.url(), t.url());
    let mut args = vec!["db", "check", "--source", &su, "--target", &tu, "--json"];
    args.extend_from_slice(extra);
    let o = run(&args);
    let j: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    let checks = j["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_string(), c.clone()))
        .collect();
    (o.status.code(), checks)
}

/// The verdict of check `name`.
fn verdict(checks: &BTreeMap<String, serde_json::Value>, name: &str) -> String {
    checks
        .get(name)
        .and_then(|c| c["verdict"].as_str())
        .unwrap_or_else(|| panic!("no check {name}: {checks:?}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_check_replicate_and_bad_input() {
    let (s, t) = tokio::join!(Maria::start(1), Maria::start(2));
    // Bad input: one line naming the server, exit 2, nothing changed.
    let no_port = format!("mysql://{SY_USER}:{SY_PASSWORD}@127.0.0.1");
    let wrong_pw = format!("mysql://{SY_USER}:nope@127.0.0.1:{}", t.port);
    let closed = format!("mysql://{SY_USER}:x@127.0.0.1:{}", free_port());
    for (target, want) in [
        (no_port.as_str(), "target URL: no port"),
        (wrong_pw.as_str(), "Access denied"),
        (closed.as_str(), "cannot connect"),
    ] {
        let o = run(&["db", "status", "--source", &s.url(), "--target", target]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{want}: {}", text(&o));
        assert_eq!(err.trim().lines().count(), 1, "{}", text(&o));
        assert!(!err.contains("nope"), "password printed: {err}");
    }
    // The password can come from the environment instead of the URL.
    let o = sy()
        .args(["db", "status", "--source", &s.url(), "--target"])
        .arg(format!("mysql://{SY_USER}@127.0.0.1:{}", t.port))
        .env("SWITCHYARD_TARGET_PASSWORD", SY_PASSWORD)
        .arg("--json")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["servers"][0]["flavor"], "mariadb");
    assert_eq!(j["servers"][1]["server_id"], 2);
    assert!(j["servers"][1]["replica"].is_null());

    // Not a replica yet: the check fails on `replication` (exit 1) and names it.
    let (code, j) = db_check(&s, &t, &[]);
    assert_eq!(code, Some(1), "{j:?}");
    assert_eq!(verdict(&j, "replication"), "fail");
    assert_eq!(verdict(&j, "target_read_only"), "fail");
    assert_eq!(verdict(&j, "server_id"), "ok");

    // Writes on the source before replication starts: the target gets them from the binlog.
    s.exec("INSERT INTO appdb.writes (id, origin) VALUES (1, 's'), (2, 's')")
        .await;
    let o = db_replicate(&s, &t);
    assert!(o.status.success(), "{}", text(&o));
    assert!(t.read_only().await);
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.ids().await != vec![1, 2] {
        assert!(Instant::now() < deadline, "rows did not replicate");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, j) = db_check(&s, &t, &["--repl-user", REPL_USER, "--max-lag-ms", "5000"]);
    assert_eq!(code, Some(0), "{j:?}");
    for name in [
        "replication",
        "gap_1236",
        "errant_transactions",
        "target_read_only",
        "lag",
        "binlog.source",
        "binlog.target",
    ] {
        assert_eq!(verdict(&j, name), "ok", "{name}: {j:?}");
    }
    // switchyard's account holds READ_ONLY ADMIN but is its own: not reported; another is.
    s.exec("CREATE USER 'ops'@'%' IDENTIFIED BY 'ops-pw'").await;
    s.exec("GRANT ALL PRIVILEGES ON *.* TO 'ops'@'%'").await;
    let (code, j) = db_check(&s, &t, &["--repl-user", REPL_USER]);
    assert_eq!(code, Some(0), "warnings do not fail: {j:?}");
    assert_eq!(verdict(&j, "read_only_bypass"), "warn");
    let figure = j["read_only_bypass"]["figure"].as_str().unwrap();
    assert!(figure.contains("ops (0 sessions)"), "{figure}");
    assert!(
        !figure.contains(SY_USER),
        "switchyard's own account reported: {figure}"
    );

    let o = run(&["db", "status", "--source", &s.url(), "--target", &t.url()]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("io=Yes sql=Yes"), "{out}");

    // A stopped SQL thread shows with the replication check failing.
    t.exec("STOP SLAVE SQL_THREAD").await;
    let (code, j) = db_check(&s, &t, &[]);
    assert_eq!(code, Some(1), "{j:?}");
    assert_eq!(verdict(&j, "replication"), "fail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn preflight_predicts_the_1236_gap_and_finds_errant_transactions() {
    let (s, t, u) = tokio::join!(Maria::start(1), Maria::start(2), Maria::start(3));
    // Source: writes, a new binlog, the old one purged: transactions 1-3 exist nowhere now.
    s.exec("INSERT INTO appdb.writes (id, origin) VALUES (1, 's'), (2, 's'), (3, 's')")
        .await;
    s.exec("FLUSH BINARY LOGS").await;
    s.exec("INSERT INTO appdb.writes (id, origin) VALUES (4, 's')")
        .await;
    // MariaDB keeps a binlog as long as crash recovery may need it: retry until it is gone.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut c = s.admin().await;
        let rows: Vec<mysql_async::Row> = c.query("SHOW BINARY LOGS").await.unwrap();
        let first = rows.first().unwrap().get::<String, _>(0).unwrap();
        let last = rows.last().unwrap().get::<String, _>(0).unwrap();
        if first == last {
            break;
        }
        c.query_drop(format!("PURGE BINARY LOGS TO '{last}'"))
            .await
            .unwrap();
        assert!(Instant::now() < deadline, "binlog {first} was never purged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, j) = db_check(&s, &t, &[]);
    assert_eq!(code, Some(1), "{j:?}");
    let gap = &j["gap_1236"];
    assert_eq!(gap["verdict"], "fail", "{gap}");
    assert!(gap["detail"].as_str().unwrap().contains("1236"), "{gap}");
    // `db replicate` refuses, changing nothing.
    let o = db_replicate(&s, &t);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("refused, nothing changed"),
        "{}",
        text(&o)
    );
    let mut c = t.admin().await;
    let r: Option<mysql_async::Row> = c.query_first("SHOW SLAVE STATUS").await.unwrap();
    assert!(r.is_none(), "the target was changed");
    // A target that starts at the source's current position has no gap.
    let pos = s.value("SELECT @@GLOBAL.gtid_binlog_pos").await;
    u.exec(&format!("SET GLOBAL gtid_slave_pos = '{pos}'"))
        .await;
    let (_, j) = db_check(&s, &u, &[]);
    let gap = &j["gap_1236"];
    assert_eq!(gap["verdict"], "ok", "{gap}");

    // Errant: a write made on the replica itself.
    u.replicate_from(&s).await;
    s.exec("INSERT INTO appdb.writes (id, origin) VALUES (5, 's')")
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !u.ids().await.contains(&5) {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, j) = db_check(&s, &u, &[]);
    let errant = &j["errant_transactions"];
    assert_eq!(errant["verdict"], "ok", "{errant}");
    u.exec("SET GLOBAL read_only = OFF").await;
    u.exec("INSERT INTO appdb.writes (id, origin) VALUES (1000, 'u')")
        .await;
    u.exec("SET GLOBAL read_only = ON").await;
    let (code, j) = db_check(&s, &u, &[]);
    assert_eq!(code, Some(1), "{j:?}");
    let errant = &j["errant_transactions"];
    assert_eq!(errant["verdict"], "fail", "{errant}");
    assert!(
        errant["figure"].as_str().unwrap().contains("0-3-"),
        "{errant}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cutover_under_write_load_back_and_forth() {
    let st = Setup::new().await;
    let sampler = Sampler::start(&st.s, &st.t).await;
    let load = Load::start(&st.proxy, 8, 400);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Dry run: nothing changes.
    let o = st.cutover("cutover", "app_t", &["--dry-run"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!st.s.read_only().await && st.t.read_only().await);
    assert_eq!(st.orders_upstream().await, "app_s");

    let mut pauses = Vec::new();
    for round in 0..2 {
        for (verb, app, primary_after) in [("cutover", "app_t", 2u32), ("rollback", "app_s", 1)] {
            let o = st.cutover(verb, app, &[]);
            assert_eq!(
                o.status.code(),
                Some(0),
                "round {round} {verb}: {}",
                text(&o)
            );
            let ev = events(&o);
            let release = ev
                .iter()
                .find(|e| e["step"] == "release")
                .expect("release event");
            pauses.push(release["pause_ms"].as_f64().unwrap());
            assert_eq!(st.orders_upstream().await, app);
            let (new, old) = if primary_after == 2 {
                (&st.t, &st.s)
            } else {
                (&st.s, &st.t)
            };
            assert!(!new.read_only().await && old.read_only().await);
            // The old primary wrote nothing after its final position: its newest GTID in the
            // domain is the new primary's (or the final position itself).
            let final_pos = ev
                .iter()
                .find(|e| e["step"] == "final_position")
                .and_then(|e| e["detail"].as_str())
                .unwrap()
                .to_string();
            tokio::time::sleep(Duration::from_millis(300)).await;
            let old_pos = old.value("SELECT @@GLOBAL.gtid_binlog_pos").await;
            let old_server = if primary_after == 2 { 1 } else { 2 };
            let top: Vec<&str> = old_pos.split(',').collect();
            for g in top {
                let parts: Vec<&str> = g.split('-').collect();
                assert!(
                    parts[1] != old_server.to_string() || g == final_pos,
                    "{verb}: the old primary wrote after the fence: {old_pos} (final {final_pos})"
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let (acked, failed, _) = load.finish().await;
    let (samples, both) = sampler.finish().await;
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(acked.len() > 500, "too little load: {}", acked.len());
    assert_eq!(
        both, 0,
        "both servers writable in {both} of {samples} samples"
    );
    assert!(samples > 100, "{samples}");
    // Back on the source; the target replicates from it again.
    st.t.wait_replicating().await;
    assert_exactly_once(&acked, &st.s.ids().await);
    let deadline = Instant::now() + Duration::from_secs(10);
    while st.t.ids().await.len() != st.s.ids().await.len() {
        assert!(Instant::now() < deadline, "target did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("pauses (ms): {pauses:?}");
    // History names the cutover.
    let r = send(
        &client(),
        "GET",
        &st.proxy.admin_url("/v1/history?limit=10"),
        &[],
        "",
    )
    .await
    .unwrap();
    assert!(
        r.body.contains("db-cutover") && r.body.contains("db cutover"),
        "{}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lagging_target_is_refused_and_a_long_write_aborts_the_fence() {
    let st = Setup::new().await;
    let load = Load::start(&st.proxy, 4, 100);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Replica SQL thread stopped: refused by the preflight, nothing changed.
    st.t.exec("STOP SLAVE SQL_THREAD").await;
    let o = st.cutover("cutover", "app_t", &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("refused"),
        "{}",
        text(&o)
    );
    assert!(!st.s.read_only().await && st.t.read_only().await);
    assert_eq!(st.orders_upstream().await, "app_s");
    assert!(!st.hold_in_force().await);
    st.t.exec("START SLAVE SQL_THREAD").await;
    st.t.wait_replicating().await;

    // A write running on the source for 5 s: the fence cannot finish within the budget, so the
    // cutover aborts: source writable again, hold released, the long write not lost.
    let s_port = st.s.port;
    let long = tokio::spawn(async move {
        let opts = mysql_async::OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(s_port)
            .user(Some(APP_USER))
            .pass(Some(APP_PASSWORD))
            .prefer_socket(false);
        let mut c = mysql_async::Conn::new(opts).await.unwrap();
        c.query_drop(
            "INSERT INTO appdb.writes (id, origin) SELECT -1, IF(SLEEP(5) = 0, 'long', 'x')",
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    let o = st.cutover("cutover", "app_t", &["--max-pause-ms", "800"]);
    let took = t0.elapsed();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("aborted at fence"), "{}", text(&o));
    let ev = events(&o);
    let abort = ev
        .iter()
        .find(|e| e["step"] == "abort")
        .expect("abort event");
    let pause = abort["pause_ms"].as_f64().unwrap();
    eprintln!("abort: pause {pause:.0} ms (budget 800), command {took:?}");
    assert!(
        pause < 800.0 + 500.0,
        "abort took {pause} ms after the hold"
    );
    assert!(!st.s.read_only().await, "source left read-only");
    assert!(st.t.read_only().await);
    assert!(!st.hold_in_force().await);
    assert_eq!(st.orders_upstream().await, "app_s");
    long.await
        .unwrap()
        .expect("the long write commits after the abort");
    let (acked, failed, _) = load.finish().await;
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    let ids = st.s.ids().await;
    assert!(ids.contains(&-1));
    assert_exactly_once(&acked, &ids);
    // A target that is not a replica at all: one line naming it, exit 2, nothing changed.
    st.t.exec("STOP SLAVE").await;
    st.t.exec("RESET SLAVE ALL").await;
    let o = st.cutover("cutover", "app_t", &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{}", text(&o));
    assert!(err.contains("not a replica of source"), "{}", text(&o));
    assert!(!st.s.read_only().await && st.t.read_only().await);
    assert!(!st.hold_in_force().await);
    // The journal says it ended.
    let o = run(&[
        "db",
        "status",
        "--source",
        &st.s.url(),
        "--target",
        &st.t.url(),
        "--state",
        &st.state(),
    ]);
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("interrupted"),
        "{}",
        text(&o)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_after_each_step_then_resume_converges() {
    let st = Setup::new().await;
    let load = Load::start(&st.proxy, 4, 100);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let steps = [
        "preflight",
        "catch_up",
        "hold",
        "drain",
        "fence",
        "final_position",
        "wait_target",
        "promote",
        "switch",
        "release",
        "reverse",
    ];
    let mut outcomes = BTreeMap::new();
    for step in steps {
        // Which way: from whichever server is primary now.
        let forward = !st.s.read_only().await;
        let (verb, app) = if forward {
            ("cutover", "app_t")
        } else {
            ("rollback", "app_s")
        };
        let args = st.cutover_args(verb, app, &[]);
        let mut child = sy()
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        // Kill the moment the step's event is printed.
        let want = step.to_string();
        let seen = tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if v["step"] == want.as_str() {
                    let _ = child.kill();
                    let _ = child.wait();
                    return true;
                }
            }
            let _ = child.wait();
            false
        })
        .await
        .unwrap();
        assert!(seen, "{verb} ended before step {step}");
        // The interrupted run shows in `db status` (unless it happened to finish).
        let o = run(&[
            "db",
            "status",
            "--source",
            &st.s.url(),
            "--target",
            &st.t.url(),
            "--state",
            &st.state(),
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let resume_args: Vec<String> = vec![
            "db".into(),
            verb.into(),
            "--resume".into(),
            "--state".into(),
            st.state(),
            "--source".into(),
            st.s.url(),
            "--target".into(),
            st.t.url(),
            "--json".into(),
        ];
        let refs: Vec<&str> = resume_args.iter().map(String::as_str).collect();
        let o = run(&refs);
        let code = o.status.code();
        outcomes.insert(step, code);
        assert!(
            matches!(code, Some(0) | Some(1)),
            "resume after {step}: {}",
            text(&o)
        );
        // Exactly one writable primary, routes pointing at its app, nothing held.
        let (s_ro, t_ro) = (st.s.read_only().await, st.t.read_only().await);
        assert!(
            s_ro != t_ro,
            "after {step}: source read_only={s_ro}, target read_only={t_ro}"
        );
        let want_app = if !s_ro { "app_s" } else { "app_t" };
        assert_eq!(
            st.orders_upstream().await,
            want_app,
            "after {step}: {}",
            text(&o)
        );
        assert!(
            !st.hold_in_force().await,
            "after {step}: hold left in force"
        );
        // The new replica replicates again (reverse), so the next round can go back.
        let replica = if !s_ro { &st.t } else { &st.s };
        replica.wait_replicating().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (acked, failed, _) = load.finish().await;
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    let primary = if !st.s.read_only().await {
        &st.s
    } else {
        &st.t
    };
    assert_exactly_once(&acked, &primary.ids().await);
    eprintln!("resume exit codes per step: {outcomes:?}");
}
