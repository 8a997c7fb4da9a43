//! The CLI over the API: readable output by default, `--json` for scripts, exit code 1 with
//! the server's message on failure.

use std::process::Command;

use super::*;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `switchyard ARGS` against `p`'s admin API, with `token` in the environment.
fn sy(p: &Proxy, token: Option<&str>, args: &[&str]) -> Out {
    let mut c = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    c.args(args)
        .env("SWITCHYARD_ADMIN", p.admin_url(""))
        .env_remove("SWITCHYARD_ADMIN_TOKEN");
    if let Some(t) = token {
        c.env("SWITCHYARD_ADMIN_TOKEN", t);
    }
    let o = c.output().unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn ok(o: Out) -> String {
    assert_eq!(o.code, 0, "stdout: {}\nstderr: {}", o.stdout, o.stderr);
    o.stdout
}

fn fails(o: Out, code: i32, needles: &[&str]) {
    assert_eq!(o.code, code, "stdout: {}\nstderr: {}", o.stdout, o.stderr);
    for n in needles {
        assert!(o.stderr.contains(n), "{n:?} not in stderr: {}", o.stderr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_commands_over_the_api() {
    let new = Origin::start("new").await;
    let legacy = Origin::start("legacy").await;
    let dir = routes_dir(&table(&new, &legacy, SPLIT));
    let p = start(dir.path(), &[]).await;
    let t = Some(TOKEN);

    let out = ok(sy(&p, t, &["table"]));
    assert!(
        out.starts_with("version 1  (files load by files at "),
        "{out}"
    );
    let users = out.lines().find(|l| l.starts_with("users ")).unwrap();
    for want in ["/users/*", "legacy=50 new=50", "legacy", "routes.toml"] {
        assert!(users.contains(want), "{want:?} not in {users:?}");
    }
    assert!(out.contains("ROUTE") && out.contains("WEIGHTS") && out.contains("FALLBACK"));
    let j: serde_json::Value = serde_json::from_str(&ok(sy(&p, t, &["table", "--json"]))).unwrap();
    assert_eq!(j["version"], 1);
    let toml = ok(sy(&p, t, &["table", "--toml"]));
    assert!(toml.contains("[[routes]]"), "{toml}");

    // weight: good, then each kind of failure with the server's message and exit 1.
    let out = ok(sy(
        &p,
        t,
        &[
            "weight",
            "users",
            "new=25",
            "legacy=75",
            "--reason",
            "canary 25",
        ],
    ));
    assert!(out.contains("version 2 (patch by admin)"), "{out}");
    assert!(
        out.contains("legacy=50 new=50, fallback legacy -> legacy=75 new=25, fallback legacy"),
        "{out}"
    );
    let j = call(&p, "GET", "/v1/table", "").await.json();
    assert_eq!(
        j["routes"][0]["weights"],
        serde_json::json!({"legacy": 75.0, "new": 25.0})
    );
    fails(
        sy(&p, t, &["weight", "users", "new=25", "legacy=70"]),
        1,
        &[
            "(HTTP 422)",
            "weights sum to 95, must be 100",
            "route \"users\": split",
        ],
    );
    fails(
        sy(&p, t, &["weight", "nope", "new=100"]),
        1,
        &["unknown route \"nope\" (HTTP 404)"],
    );
    fails(
        sy(&p, t, &["weight", "users", "new"]),
        1,
        &["expected UPSTREAM=PERCENT"],
    );
    fails(
        sy(
            &p,
            t,
            &["weight", "users", "new=20", "legacy=80", "--if-match", "1"],
        ),
        1,
        &["(HTTP 409)", "version 2, not 1"],
    );
    fails(
        sy(&p, None, &["weight", "users", "new=20", "legacy=80"]),
        1,
        &["missing bearer token", "(HTTP 401)"],
    );
    fails(
        sy(
            &p,
            Some("wrong"),
            &["weight", "users", "new=20", "legacy=80"],
        ),
        1,
        &["invalid token (HTTP 401)"],
    );
    assert_eq!(version(&p).await, 2);

    // rollback, history, diff, revert.
    fails(sy(&p, t, &["rollback", "users"]), 2, &["--reason"]);
    let out = ok(sy(
        &p,
        t,
        &["rollback", "users", "--reason", "errors from new"],
    ));
    assert!(out.contains("version 3 (rollback by admin)"), "{out}");
    assert_eq!(spread(&p, "/users/1", 10).await, (0, 10, 0));
    fails(
        sy(&p, t, &["rollback", "orders", "--reason", "x"]),
        1,
        &["no fallback", "(HTTP 409)"],
    );
    let out = ok(sy(&p, t, &["history"]));
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("VERSION")
            && lines[0].contains("ACTOR")
            && lines[0].contains("REASON")
    );
    assert!(
        lines[1].starts_with("3 ")
            && lines[1].contains("admin")
            && lines[1].contains("rollback")
            && lines[1].contains("errors from new"),
        "{out}"
    );
    assert!(
        lines[3].starts_with("1 ") && lines[3].contains("files"),
        "{out}"
    );
    let j: serde_json::Value =
        serde_json::from_str(&ok(sy(&p, t, &["history", "--json", "--limit", "2"]))).unwrap();
    assert_eq!(j["versions"].as_array().unwrap().len(), 2);
    let out = ok(sy(&p, t, &["history", "3"]));
    assert!(
        out.contains("reason  errors from new") && out.contains("action  rollback"),
        "{out}"
    );
    fails(
        sy(&p, t, &["history", "42"]),
        1,
        &["version 42 is not in the history (HTTP 404)"],
    );
    let out = ok(sy(&p, t, &["diff", "1", "3"]));
    assert!(out.contains("version 1 -> 3"), "{out}");
    assert!(
        out.contains("route users  legacy=50 new=50, fallback legacy -> legacy"),
        "{out}"
    );
    let j: serde_json::Value =
        serde_json::from_str(&ok(sy(&p, t, &["diff", "2", "3", "--json"]))).unwrap();
    assert_eq!(j["changes"]["routes"][0]["after"], "legacy");
    fails(sy(&p, t, &["diff", "1", "9"]), 1, &["(HTTP 404)"]);
    let out = ok(sy(&p, t, &["revert", "1", "--reason", "back to the files"]));
    assert!(out.contains("version 4 (revert by admin)"), "{out}");
    fails(
        sy(&p, t, &["revert", "77", "--reason", "x"]),
        1,
        &["(HTTP 404)"],
    );

    // hold, inflight, release, upstreams, adopt.
    let out = ok(sy(&p, t, &["hold", "users", "static", "--max-ms", "5000"]));
    assert!(
        out.contains("holding static users for at most 5000 ms"),
        "{out}"
    );
    let out = ok(sy(&p, t, &["inflight"]));
    assert!(out.contains("hold: static users"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("users ")), "{out}");
    fails(
        sy(&p, t, &["hold", "nope", "--max-ms", "5000"]),
        1,
        &["(HTTP 404)"],
    );
    assert!(ok(sy(&p, t, &["release"])).contains("released static users"));
    assert!(ok(sy(&p, t, &["release"])).contains("no hold was in force"));
    let out = ok(sy(&p, t, &["upstreams"]));
    assert!(
        out.lines()
            .any(|l| l.starts_with("legacy ") && l.contains("up")),
        "{out}"
    );
    let out = ok(sy(&p, t, &["adopt", "--reason", "files win"]));
    assert!(out.contains("version 5 (adopt by admin)"), "{out}");

    // Nothing listening: exit 1 and say where.
    let mut c = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    let o = c
        .args([
            "table",
            "--admin",
            &format!("http://127.0.0.1:{}", free_port()),
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot reach the admin API"));
}
