//! A fleet of three switchyard nodes on a real etcd (Debian `etcd-server`, on loopback): a
//! change through one node is served by all, `wait_fleet` answers only once they do, If-Match
//! is exact across nodes, etcd down means serving the last table and refusing changes, a
//! killed node leaves after its lease, a node refusing a version is named, a hold queues on
//! every node, and a node restarted after compaction converges.

mod common;

#[path = "fleet/harness.rs"]
mod harness;

use std::time::Duration;

use common::*;
use harness::*;

/// `[upstreams.NAME]` for an origin (long connect timeout: a starved test machine must not
/// turn a slow connect into a fallback).
fn upstream(name: &str, o: &Origin) -> String {
    format!(
        "[upstreams.{name}]\naddrs = [\"{}\"]\nconnect_timeout_ms = 10000\n",
        o.addr
    )
}

/// `users` split new/legacy with legacy as fallback, `orders` to new.
fn routes(new: &Origin, legacy: &Origin, users: &str) -> String {
    format!(
        "{}{}[[routes]]\nid = \"users\"\npath = \"/users/*\"\n{users}\n\
         [[routes]]\nid = \"orders\"\npath = \"/orders/*\"\nto = \"new\"\n",
        upstream("new", new),
        upstream("legacy", legacy),
    )
}

const SPLIT: &str = "split = { new = 50, legacy = 50 }\nfallback = \"legacy\"";

/// Three nodes of a new fleet at `etcd`, each on its own copy of `toml`; `a` starts first and
/// seeds the fleet.
async fn three(etcd: &str, prefix: &str, toml: &str) -> (Vec<tempfile::TempDir>, Vec<Node>) {
    let dirs: Vec<_> = (0..3).map(|_| routes_dir(toml)).collect();
    let mut nodes = Vec::new();
    for (name, d) in ["a", "b", "c"].iter().zip(&dirs) {
        nodes.push(Node::start(etcd, prefix, name, d.path()).await);
    }
    // Every node confirmed version 1.
    let a = &nodes[0];
    until("three nodes at version 1", 20, || async {
        let f = a.fleet().await;
        f["nodes"].as_array().map_or(0, |n| n.len()) == 3 && f["converged"] == true
    })
    .await;
    (dirs, nodes)
}

fn patch_to(to: &str) -> String {
    format!(r#"{{"to": "{to}", "fallback": null, "reason": "test"}}"#)
}

/// PATCHes route `users` to `to` through `node`, waiting (up to 10 s) for the whole fleet.
async fn patch_users(node: &Node, to: &str) -> Resp {
    node.call(
        "PATCH",
        "/v1/routes/users?wait_fleet=10s",
        &[],
        &patch_to(to),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_node_is_served_by_all() {
    let (new, legacy) = (Origin::start("new").await, Origin::start("legacy").await);
    let etcd = shared_etcd();
    let (_dirs, nodes) = three(etcd, &prefix("change"), &routes(&new, &legacy, SPLIT)).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    for n in &nodes {
        assert_eq!(n.version().await, 1, "node {}", n.name);
    }

    // PATCH through A with wait_fleet: when it answers, B and C already serve version 2.
    let r = patch_users(a, "new").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["version"], 2);
    for n in [b, c] {
        assert_eq!(n.version().await, 2, "node {} after wait_fleet", n.name);
        for _ in 0..5 {
            assert_eq!(n.origin_of("/users/1").await, "new", "node {}", n.name);
        }
    }
    let f = c.fleet().await;
    assert_eq!(f["version"], 2, "{f}");
    assert_eq!(f["converged"], true, "{f}");
    let names: Vec<&str> = f["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b", "c"]);

    // B's metrics: three live nodes, converged, no lag, and B applied A's version through its
    // watch (one propagation observed at least).
    let m = get(&b.proxy.admin_url("/metrics")).await.body;
    assert_eq!(metric(&m, "switchyard_fleet_nodes"), 3.0, "{m}");
    assert_eq!(metric(&m, "switchyard_fleet_converged"), 1.0, "{m}");
    assert_eq!(metric(&m, "switchyard_fleet_etcd_up"), 1.0, "{m}");
    assert_eq!(
        metric(&m, "switchyard_fleet_version_lag{node=\"c\"}"),
        0.0,
        "{m}"
    );
    assert!(
        metric(&m, "switchyard_fleet_propagation_seconds_count") >= 1.0,
        "{m}"
    );

    // The history is the fleet's: B lists the version A made.
    let h = get(&b.proxy.admin_url("/v1/history")).await.json();
    assert_eq!(h["versions"][0]["version"], 2, "{h}");
    assert_eq!(h["versions"][0]["action"], "patch");
    assert_eq!(h["versions"].as_array().unwrap().len(), 2);

    // A stale If-Match through another node is refused, exactly as on one proxy.
    let r = b
        .call(
            "PATCH",
            "/v1/routes/users",
            &[("if-match", "\"1\"")],
            &patch_to("legacy"),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    // Two nodes racing on the same version: exactly one wins.
    let body = patch_to("legacy");
    let (r1, r2) = tokio::join!(
        b.call(
            "PATCH",
            "/v1/routes/orders",
            &[("if-match", "\"2\"")],
            &body
        ),
        c.call(
            "PATCH",
            "/v1/routes/orders",
            &[("if-match", "\"2\"")],
            &body
        ),
    );
    let mut statuses = [r1.status, r2.status];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{} / {}", r1.body, r2.body);

    // Rollback through C (with the CLI's --wait-fleet) reaches A and B.
    let admin_c = format!("http://{}", c.proxy.admin);
    let rollback_via_c = || {
        cli(&[
            "rollback",
            "users",
            "--reason",
            "fleet test",
            "--wait-fleet=10s",
            "--admin",
            &admin_c,
        ])
    };
    let out = rollback_via_c();
    // users went to `new` without fallback above: give it one first, then roll back.
    assert!(!out.status.success(), "no fallback: refused");
    let r = c
        .call(
            "PATCH",
            "/v1/routes/users?wait_fleet=10s",
            &[],
            r#"{"split": {"new": 90, "legacy": 10}, "fallback": "legacy"}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let out = rollback_via_c();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = c.version().await;
    for n in [a, b] {
        assert_eq!(n.version().await, v, "node {}", n.name);
        for _ in 0..5 {
            assert_eq!(n.origin_of("/users/1").await, "legacy", "node {}", n.name);
        }
    }

    // `fleet status` shows the three nodes at that version.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args([
            "fleet",
            "status",
            "--admin",
            &format!("http://{}", b.proxy.admin),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("fleet version {v} (converged)")),
        "{text}"
    );
    for n in ["a", "b", "c"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(n) && l.contains(&v.to_string())),
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_files_seed_then_push_under_the_files_rule() {
    let (new, legacy) = (Origin::start("new").await, Origin::start("legacy").await);
    let etcd = shared_etcd();
    let p = prefix("push");
    let a_dir = routes_dir(&routes(&new, &legacy, SPLIT));
    let a = Node::start(etcd, &p, "a", a_dir.path()).await;
    // B starts with other files: the fleet's table wins, B's files are not loaded.
    let b_dir = routes_dir(&routes(&new, &legacy, "to = \"new\""));
    let b = Node::start(etcd, &p, "b", b_dir.path()).await;
    assert_eq!(b.version().await, 1);
    assert_eq!(a.version().await, 1);
    let t = get(&b.proxy.admin_url("/v1/table")).await.json();
    assert!(t["table"]["routes"][0]["split"].is_object(), "{t}");

    // Noise in B's routes directory makes no version; an edit of B's route file is a change
    // of the fleet (the files-vs-API rule allows it: nothing was changed through the API).
    // (B's route file rewritten as it was: seen by the watcher, but B's files did not change,
    // though they differ from the fleet's.)
    rewrite_routes(b_dir.path(), &routes(&new, &legacy, "to = \"new\""));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(a.version().await, 1);
    rewrite_routes(b_dir.path(), &routes(&new, &legacy, "to = \"legacy\""));
    until("b's file edit to reach a", 10, || async {
        a.version().await == 2
    })
    .await;
    assert_eq!(a.origin_of("/users/1").await, "legacy");
    let h = get(&a.proxy.admin_url("/v1/history")).await.json();
    assert_eq!(h["versions"][0]["action"], "reload", "{h}");

    // An API change to `orders`, then a push that would undo it: refused; --force wins.
    let r = a
        .call(
            "PATCH",
            "/v1/routes/orders?wait_fleet=10s",
            &[],
            &patch_to("legacy"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let push_dir = routes_dir(&routes(&new, &legacy, "to = \"new\""));
    let push = |force: bool| {
        let mut args = vec![
            "fleet".to_string(),
            "push".into(),
            push_dir.path().display().to_string(),
            "--wait-fleet=10s".into(),
            "--admin".into(),
            format!("http://{}", b.proxy.admin),
        ];
        if force {
            args.push("--force".into());
        }
        std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(args)
            .env("SWITCHYARD_ADMIN_TOKEN", TOKEN)
            .output()
            .unwrap()
    };
    let out = push(false);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("route:orders"), "{err}");
    assert_eq!(a.version().await, 3);
    let out = push(true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for n in [&a, &b] {
        assert_eq!(n.version().await, 4, "node {}", n.name);
        assert_eq!(n.origin_of("/users/1").await, "new");
        assert_eq!(n.origin_of("/orders/1").await, "new");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_serves_the_last_table_and_refuses_changes() {
    let (new, legacy) = (Origin::start("new").await, Origin::start("legacy").await);
    let mut etcd = Etcd::start();
    let (_dirs, mut nodes) = three(&etcd.url, "/sy", &routes(&new, &legacy, SPLIT)).await;
    let r = nodes[0]
        .call(
            "PATCH",
            "/v1/routes/users?wait_fleet=10s",
            &[],
            &patch_to("new"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    etcd.kill9();
    // Every node keeps serving version 2 and says etcd is unreachable.
    for n in &nodes {
        until("healthz to report etcd unreachable", 20, || async {
            get(&n.proxy.admin_url("/healthz")).await.json()["fleet"]["etcd"] == "unreachable"
        })
        .await;
        let m = get(&n.proxy.admin_url("/metrics")).await.body;
        assert_eq!(
            metric(&m, "switchyard_fleet_etcd_up"),
            0.0,
            "node {}",
            n.name
        );
        assert_eq!(n.origin_of("/users/1").await, "new", "node {}", n.name);
        assert_eq!(n.version().await, 2);
        // A change is refused with a clear 503 and changes nothing.
        let r = n
            .call("PATCH", "/v1/routes/users", &[], &patch_to("legacy"))
            .await;
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(
            r.json()["error"].as_str().unwrap().contains("etcd"),
            "{}",
            r.body
        );
        assert_eq!(n.origin_of("/users/1").await, "new");
    }
    // A node restarted while etcd is down starts from its last table on disk.
    nodes[2].restart().await;
    assert_eq!(nodes[2].version().await, 2);
    assert_eq!(nodes[2].origin_of("/users/1").await, "new");

    // etcd returns: the nodes catch up by themselves, and a change propagates again.
    etcd.restart();
    let a = &nodes[0];
    until("the fleet to see etcd again", 30, || async {
        let f = a.fleet().await;
        f["etcd"] == "up" && f["nodes"].as_array().map_or(0, |n| n.len()) == 3
    })
    .await;
    let r = a
        .call(
            "PATCH",
            "/v1/routes/users?wait_fleet=20s",
            &[],
            &patch_to("legacy"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    for n in &nodes {
        assert_eq!(n.version().await, 3, "node {}", n.name);
        assert_eq!(n.origin_of("/users/1").await, "legacy", "node {}", n.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_leaves_after_its_lease() {
    let (new, legacy) = (Origin::start("new").await, Origin::start("legacy").await);
    let (_dirs, mut nodes) = three(
        shared_etcd(),
        &prefix("kill"),
        &routes(&new, &legacy, SPLIT),
    )
    .await;
    // A node that stops answering (SIGSTOP) is named by wait_fleet until its lease expires.
    let pid = nodes[2].proxy.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    let r = nodes[0]
        .call(
            "PATCH",
            "/v1/routes/orders?wait_fleet=300ms",
            &[],
            &patch_to("legacy"),
        )
        .await;
    assert_eq!(r.status, 504, "{}", r.body);
    let err = r.json()["error"].as_str().unwrap().to_string();
    assert!(
        err.starts_with("version 2 is committed, but not served by: c (not confirmed"),
        "{err}"
    );
    let b = &nodes[1];
    until("b to serve version 2", 10, || async {
        b.version().await == 2
    })
    .await;
    nodes[2].kill9();
    let a = &nodes[0];
    until("node c to leave the fleet", 20, || async {
        let f = a.fleet().await;
        let names: Vec<String> = f["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["node"].as_str().unwrap().to_string())
            .collect();
        names == ["a", "b"]
    })
    .await;
    let m = get(&a.proxy.admin_url("/metrics")).await.body;
    assert_eq!(metric(&m, "switchyard_fleet_nodes"), 2.0);
    // A change waits only for the live nodes.
    let r = nodes[1]
        .call(
            "PATCH",
            "/v1/routes/users?wait_fleet=10s",
            &[],
            &patch_to("new"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_missing_a_ca_file_refuses_the_version_and_is_named() {
    let (new, legacy) = (Origin::start("new").await, Origin::start("legacy").await);
    let (_dirs, nodes) = three(shared_etcd(), &prefix("ca"), &routes(&new, &legacy, SPLIT)).await;
    let (_, pem) = self_signed(&["origin.test"]);
    // A and B have the CA file in their routes directory; C does not.
    for n in &nodes[..2] {
        std::fs::write(n.routes.join("ca.pem"), &pem).unwrap();
    }
    let mut t: serde_json::Value =
        get(&nodes[0].proxy.admin_url("/v1/table")).await.json()["table"].clone();
    t["upstreams"]["secure"] = serde_json::json!({
        "addrs": [new.addr.to_string()], "tls": true, "sni": "origin.test", "ca_file": "ca.pem"
    });
    let r = nodes[0]
        .call(
            "PUT",
            "/v1/table?wait_fleet=10s",
            &[("content-type", "application/json")],
            &t.to_string(),
        )
        .await;
    assert_eq!(r.status, 504, "{}", r.body);
    let err = r.json()["error"].as_str().unwrap().to_string();
    assert!(
        err.contains("c (refused version 2") && err.contains("ca_file"),
        "{err}"
    );
    assert!(!err.contains("a (") && !err.contains("b ("), "{err}");
    for n in &nodes[..2] {
        assert_eq!(n.version().await, 2, "node {}", n.name);
    }
    assert_eq!(nodes[2].version().await, 1, "c keeps serving version 1");
    let f = nodes[1].fleet().await;
    assert_eq!(f["converged"], false, "{f}");
    let c = &f["nodes"][2];
    assert_eq!(c["version"], 1, "{f}");
    assert_eq!(c["rejected"]["version"], 2, "{f}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_hold_queues_requests_on_every_node() {
    let (new, legacy) = (Origin::start("new").await, Origin::start("legacy").await);
    let (_dirs, nodes) = three(
        shared_etcd(),
        &prefix("hold"),
        &routes(&new, &legacy, "to = \"new\""),
    )
    .await;
    let r = nodes[0]
        .call(
            "POST",
            "/v1/hold",
            &[],
            r#"{"routes": ["users"], "max_ms": 20000}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let confirmed = r.json()["fleet_confirmed"].clone();
    assert_eq!(confirmed, serde_json::json!(["a", "b", "c"]), "{}", r.body);
    // On every node a request for the held route waits.
    let mut held = Vec::new();
    for n in &nodes {
        let url = n.proxy.url("/users/1");
        held.push(tokio::spawn(async move { get(&url).await }));
    }
    for n in &nodes {
        until("a queued request on each node", 10, || async {
            let v = get(&n.proxy.admin_url("/v1/inflight")).await.json();
            v["routes"]["users"]["queued"] == 1
        })
        .await;
    }
    assert!(held.iter().all(|h| !h.is_finished()));
    // Another route is not held.
    assert_eq!(nodes[1].origin_of("/orders/1").await, "new");
    // A release through B reaches every node.
    let r = nodes[1]
        .call("POST", "/v1/release?wait_fleet=10s", &[], "")
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    for h in held {
        let r = tokio::time::timeout(Duration::from_secs(10), h)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.origin(), "new");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_after_compaction_converges() {
    let (new, legacy) = (Origin::start("new").await, Origin::start("legacy").await);
    let etcd = Etcd::start();
    let (_dirs, mut nodes) = three(&etcd.url, "/sy", &routes(&new, &legacy, SPLIT)).await;
    nodes[2].kill9();
    let a = &nodes[0];
    for (i, to) in ["new", "legacy", "new", "legacy", "new"].iter().enumerate() {
        let r = a
            .call("PATCH", "/v1/routes/orders", &[], &patch_to(to))
            .await;
        assert_eq!(r.status, 200, "change {i}: {}", r.body);
    }
    // Compact past every revision C saw.
    etcd.compact_all().await;
    nodes[2].restart().await;
    let (a, c) = (&nodes[0], &nodes[2]);
    until("c to converge after compaction", 20, || async {
        c.version().await == 6
    })
    .await;
    assert_eq!(c.origin_of("/orders/1").await, "new");
    until("the fleet to converge", 20, || async {
        a.fleet().await["converged"] == true
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_with_a_password() {
    let (new, legacy) = (Origin::start("new").await, Origin::start("legacy").await);
    let certs = tempfile::tempdir().unwrap();
    tls_files(certs.path());
    let mut etcd = Etcd::start_tls(certs.path());
    let ca = std::fs::read(certs.path().join("ca.pem")).unwrap();
    let tls = || {
        etcd_client::ConnectOptions::new().with_tls(
            etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(ca.clone())),
        )
    };
    // Authentication on, with a root user.
    let mut admin = etcd_client::Client::connect([etcd.url.as_str()], Some(tls()))
        .await
        .unwrap();
    until("etcd over TLS to answer", 20, || {
        let mut c = admin.clone();
        async move { c.status().await.is_ok() }
    })
    .await;
    admin.user_add("root", "s3cret", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.auth_enable().await.unwrap();

    let dir = routes_dir(&routes(&new, &legacy, SPLIT));
    let ca_file = certs.path().join("ca.pem").display().to_string();
    let mut a = Node::start_with(
        &etcd.url,
        "/tls",
        "a",
        dir.path(),
        &["--etcd-ca-file", &ca_file, "--etcd-user", "root"],
        &[("SWITCHYARD_ETCD_PASSWORD", "s3cret")],
    )
    .await;
    assert_eq!(a.version().await, 1);
    let r = patch_users(&a, "new").await;
    assert_eq!(r.status, 200, "{}", r.body);
    // The node reports what it serves in its own etcd key, a moment after it applied it.
    until("a to report version 2 in the fleet", 10, || async {
        a.fleet().await["nodes"][0]["version"] == 2
    })
    .await;
    // The version is in etcd, readable only with the password.
    let mut c =
        etcd_client::Client::connect([etcd.url.as_str()], Some(tls().with_user("root", "s3cret")))
            .await
            .unwrap();
    let v = c.get("/tls/version", None).await.unwrap();
    assert_eq!(v.kvs()[0].value(), b"2");

    // Restarted while etcd is down, the node serves its disk copy, then logs in once etcd
    // is back (which also forgot the old token) and follows the fleet again.
    etcd.kill9();
    a.restart().await;
    assert_eq!(a.version().await, 2);
    etcd.restart();
    let a = &a;
    until("the node to reach etcd again", 30, || async {
        a.fleet().await["etcd"] == "up"
    })
    .await;
    let r = patch_users(a, "legacy").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(a.origin_of("/users/1").await, "legacy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_cancelled_by_compaction_reads_everything_again() {
    let (new, legacy) = (Origin::start("new").await, Origin::start("legacy").await);
    let etcd = Etcd::start();
    // A large table, so that a stopped node's watch stream fills and etcd stops delivering
    // to it (its watcher falls behind, where compaction cancels it).
    let mut toml = routes(&new, &legacy, SPLIT);
    for i in 0..60 {
        toml.push_str(&format!(
            "[[routes]]\nid = \"r{i}\"\npath = \"/r{i}/padding-padding-padding-padding/*\"\nto = \"new\"\n"
        ));
    }
    let da = routes_dir(&toml);
    let dc = routes_dir(&toml);
    let a = Node::start(&etcd.url, "/sy", "a", da.path()).await;
    let c = Node::start(&etcd.url, "/sy", "c", dc.path()).await;
    let pid = c.proxy.child.id().to_string();
    let signal = |sig: &str| {
        assert!(std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success())
    };
    signal("-STOP");
    for i in 0..400 {
        let to = if i % 2 == 0 { "legacy" } else { "new" };
        let r = a
            .call("PATCH", "/v1/routes/orders", &[], &patch_to(to))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    etcd.compact_all().await;
    signal("-CONT");
    until("c to converge", 30, || async { c.version().await == 401 }).await;
    until("c's watch to be cancelled and replaced", 30, || async {
        let m = get(&c.proxy.admin_url("/metrics")).await.body;
        metric(&m, "switchyard_fleet_resyncs_total{reason=\"cancelled\"}") >= 1.0
    })
    .await;
}

/// p-th percentile (0..1) of sorted `v`, in ms.
fn pct(v: &[f64], p: f64) -> f64 {
    let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// `n` changes through the nodes in turn; for each, ms from the admin call's answer to every
/// node serving the new version (each node's `/healthz` polled back to back).
async fn propagation(nodes: &[Node], n: usize) -> Vec<f64> {
    let clients: Vec<Client> = nodes.iter().map(|_| client()).collect();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let to = if i % 2 == 0 { "legacy" } else { "new" };
        let r = nodes[i % nodes.len()]
            .call("PATCH", "/v1/routes/orders", &[], &patch_to(to))
            .await;
        let t0 = std::time::Instant::now();
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json()["version"].as_u64().unwrap();
        let waits = nodes.iter().zip(&clients).map(|(node, c)| {
            let url = node.proxy.admin_url("/healthz");
            let c = c.clone();
            async move {
                loop {
                    let h = send(&c, "GET", &url, &[], "").await.unwrap();
                    if h.json()["version"].as_u64().unwrap_or(0) >= v {
                        return t0.elapsed();
                    }
                }
            }
        });
        let all = futures_join_all(waits).await;
        let worst = all.into_iter().max().unwrap_or_default();
        out.push(worst.as_secs_f64() * 1000.0);
    }
    out.sort_by(|a, b| a.total_cmp(b));
    out
}

async fn futures_join_all<F>(fs: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let hs: Vec<_> = fs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in hs {
        out.push(h.await.unwrap());
    }
    out
}

/// The fleet benchmark (bench/fleet.sh runs it): propagation p50/p99 over 200 changes, idle
/// and under wrk load, and failed requests during 100 fleet-wide changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: bench/fleet.sh"]
async fn bench_fleet() {
    let n: usize = std::env::var("FLEET_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let (new, legacy) = (Origin::start("new").await, Origin::start("legacy").await);
    let etcd = Etcd::start();
    let (_dirs, nodes) = three(&etcd.url, "/bench", &routes(&new, &legacy, SPLIT)).await;

    let idle = propagation(&nodes, n).await;
    println!(
        "propagation idle: {n} changes, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(&idle, 0.5),
        pct(&idle, 0.99),
        idle[idle.len() - 1]
    );

    // The same under data-plane load: wrk on every node for the duration.
    let mut wrks = Vec::new();
    for node in &nodes {
        match std::process::Command::new("wrk")
            .args(["-t1", "-c16", "-d600s", &node.proxy.url("/users/1")])
            .stdout(std::process::Stdio::piped())
            .spawn()
        {
            Ok(c) => wrks.push(c),
            Err(e) => println!("wrk not started: {e}"),
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let loaded = propagation(&nodes, n).await;
    for mut w in wrks {
        let _ = w.kill();
        let _ = w.wait();
    }
    println!(
        "propagation under wrk load (3 x wrk -t1 -c16): {n} changes, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(&loaded, 0.5),
        pct(&loaded, 0.99),
        loaded[loaded.len() - 1]
    );

    // Requests failed during 100 fleet-wide changes of the route they hit.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut loops = Vec::new();
    for node in &nodes {
        let url = node.proxy.url("/users/1");
        let stop = stop.clone();
        loops.push(tokio::spawn(async move {
            let c = client();
            let (mut total, mut failed) = (0u64, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                total += 1;
                match send(&c, "GET", &url, &[], "").await {
                    Ok(r) if r.status == 200 => {}
                    _ => failed += 1,
                }
            }
            (total, failed)
        }));
    }
    for i in 0..100 {
        let to = if i % 2 == 0 { "legacy" } else { "new" };
        let body = format!(r#"{{"to": "{to}", "fallback": null}}"#);
        let r = nodes[i % 3]
            .call("PATCH", "/v1/routes/users?wait_fleet=10s", &[], &body)
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut total, mut failed) = (0, 0);
    for l in loops {
        let (t, f) = l.await.unwrap();
        total += t;
        failed += f;
    }
    println!("100 fleet-wide changes of the route under requests: {failed} failed of {total}");
}
