//! Integration tests of the AWS subcommands: the built binary against moto_server (and, for
//! the behaviors moto does not model, the small fake in `tests/aws/fake.rs`), with the
//! resulting state checked through the SDK. Run `python3 -m venv .venv && .venv/bin/pip
//! install 'moto[server]'` at the repo root first, or set MOTO_SERVER.

// Behaviors are built with the legacy cache settings (ForwardedValues, TTLs) on purpose: they
// are deprecated in the API but common, and apply must keep or copy them.
#![allow(deprecated)]

#[path = "aws/fake.rs"]
mod fake;
#[path = "aws/harness.rs"]
mod harness;

use std::time::Duration;

use aws_sdk_cloudfront::types::{
    CacheBehavior, CacheBehaviors, CookiePreference, CustomOriginConfig, DefaultCacheBehavior,
    DistributionConfig, ForwardedValues, ItemSelection, Origin, OriginProtocolPolicy, Origins,
    ViewerProtocolPolicy,
};
use aws_smithy_types::DateTime;
use fake::{Fake, Rec, State};
use harness::{moto, switchyard, unique};
use serde_json::json;

// ---------------------------------------------------------------------------------------
// CloudFront on moto
// ---------------------------------------------------------------------------------------

fn custom_origin(id: &str) -> Origin {
    Origin::builder()
        .id(id)
        .domain_name(format!("{id}.example.com"))
        .origin_path(if id == "new" { "/prod" } else { "" })
        .custom_origin_config(
            CustomOriginConfig::builder()
                .http_port(80)
                .https_port(443)
                .origin_protocol_policy(OriginProtocolPolicy::HttpsOnly)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

fn forwarded() -> ForwardedValues {
    ForwardedValues::builder()
        .query_string(true)
        .cookies(
            CookiePreference::builder()
                .forward(ItemSelection::None)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

/// A distribution with origins old/new/static, the given behaviors and default origin `old`.
async fn create_distribution(endpoint: &str, behaviors: &[(&str, &str)]) -> String {
    let cf = harness::cloudfront(endpoint);
    let items: Vec<CacheBehavior> = behaviors
        .iter()
        .map(|(p, o)| {
            CacheBehavior::builder()
                .path_pattern(*p)
                .target_origin_id(*o)
                .viewer_protocol_policy(ViewerProtocolPolicy::AllowAll)
                .forwarded_values(forwarded())
                .min_ttl(5)
                .build()
                .unwrap()
        })
        .collect();
    let cfg = DistributionConfig::builder()
        .caller_reference(unique("ref"))
        .comment("switchyard test")
        .enabled(true)
        .origins(
            Origins::builder()
                .quantity(3)
                .items(custom_origin("old"))
                .items(custom_origin("new"))
                .items(custom_origin("static"))
                .build()
                .unwrap(),
        )
        .default_cache_behavior(
            DefaultCacheBehavior::builder()
                .target_origin_id("old")
                .viewer_protocol_policy(ViewerProtocolPolicy::RedirectToHttps)
                .forwarded_values(forwarded())
                .min_ttl(42)
                .build()
                .unwrap(),
        )
        .cache_behaviors(
            CacheBehaviors::builder()
                .quantity(items.len() as i32)
                .set_items(Some(items))
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let out = cf
        .create_distribution()
        .distribution_config(cfg)
        .send()
        .await
        .expect("CreateDistribution on moto");
    out.distribution.unwrap().id
}

async fn behaviors(endpoint: &str, id: &str) -> (Vec<CacheBehavior>, DefaultCacheBehavior) {
    let out = harness::cloudfront(endpoint)
        .get_distribution_config()
        .id(id)
        .send()
        .await
        .expect("GetDistributionConfig");
    let cfg = out.distribution_config.unwrap();
    (
        cfg.cache_behaviors
            .and_then(|c| c.items)
            .unwrap_or_default(),
        cfg.default_cache_behavior.unwrap(),
    )
}

fn pairs(b: &[CacheBehavior]) -> Vec<(String, String)> {
    b.iter()
        .map(|b| (b.path_pattern.clone(), b.target_origin_id.clone()))
        .collect()
}

const ROUTES: &str = r#"
[upstreams.static]
addrs = ["static.example.com:443"]
[upstreams.new]
addrs = ["new.example.com:443"]
[upstreams.old]
addrs = ["old.example.com:443"]

[[routes]]
id = "static"
path = "/static/*"
to = "static"

[[routes]]
id = "api"
path = "/api/*"
split = { new = 90.0, old = 10.0 }

[[routes]]
id = "v2"
path = "/v2/*"
to = "new"

[[routes]]
id = "rest"
path = "*"
to = "new"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudfront_plan_apply_dry_run_and_refusals_on_moto() {
    let m = moto();
    let home = tempfile::tempdir().unwrap();
    let id = create_distribution(
        m,
        &[
            ("/api/*", "old"),
            ("/static/*", "static"),
            ("/legacy/*", "old"),
        ],
    )
    .await;
    let routes = home.path().join("routes.toml");
    std::fs::write(&routes, ROUTES).unwrap();
    let r = routes.to_str().unwrap();

    // plan: readable, in route order, with every kind of change and the split note.
    let plan = switchyard(
        m,
        home.path(),
        &["cloudfront", "plan", "--distribution", &id, "--routes", r],
    )
    .await;
    plan.ok();
    let lines: Vec<&str> = plan.stdout.lines().collect();
    assert!(lines[0].contains("5 changes"), "{}", plan.stdout);
    let row = |pat: &str| {
        *lines
            .iter()
            .find(|l| l.split_whitespace().nth(1) == Some(pat))
            .unwrap_or_else(|| panic!("no row for {pat}:\n{}", plan.stdout))
    };
    assert!(
        row("/static/*").starts_with('1') && row("/static/*").contains("moved (was #2)"),
        "{}",
        plan.stdout
    );
    assert!(
        row("/api/*").starts_with('2') && row("/api/*").contains("old -> new"),
        "{}",
        plan.stdout
    );
    assert!(row("/v2/*").contains("added"), "{}", plan.stdout);
    assert!(
        row("/legacy/*").contains("removed (was #3)"),
        "{}",
        plan.stdout
    );
    assert!(plan.stdout.contains("largest arm"), "{}", plan.stdout);

    let pj = switchyard(
        m,
        home.path(),
        &[
            "cloudfront",
            "plan",
            "--distribution",
            &id,
            "--routes",
            r,
            "--json",
        ],
    )
    .await;
    let pj = pj.ok().json();
    assert_eq!(pj["changes"], 5);
    assert_eq!(pj["behaviors"][1]["action"], "changed");
    assert_eq!(pj["behaviors"][1]["previous_origin"], "old");
    assert_eq!(pj["default"]["to"], "new");
    assert_eq!(pj["removed"][0]["pattern"], "/legacy/*");

    // --dry-run changes nothing.
    let before = behaviors(m, &id).await;
    switchyard(
        m,
        home.path(),
        &[
            "cloudfront",
            "apply",
            "--distribution",
            &id,
            "--routes",
            r,
            "--dry-run",
        ],
    )
    .await
    .ok();
    assert_eq!(behaviors(m, &id).await, before);

    // An origin the distribution does not have is refused, in one line, before any update.
    let bad = home.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[routes]]\nid = \"x\"\npath = \"/x/*\"\nto = \"nowhere\"\n",
    )
    .unwrap();
    let refused = switchyard(
        m,
        home.path(),
        &[
            "cloudfront",
            "apply",
            "--distribution",
            &id,
            "--routes",
            bad.to_str().unwrap(),
        ],
    )
    .await;
    refused.expect_code(2);
    assert_eq!(refused.stderr.lines().count(), 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("\"nowhere\" is not an origin"),
        "{}",
        refused.stderr
    );
    assert_eq!(behaviors(m, &id).await, before);

    // apply: targets, order and presence change; everything else of kept behaviors stays;
    // the new behavior copies the default behavior's settings.
    let applied = switchyard(
        m,
        home.path(),
        &["cloudfront", "apply", "--distribution", &id, "--routes", r],
    )
    .await;
    applied.ok();
    assert!(applied.stdout.contains("applied"), "{}", applied.stdout);
    let (after, default) = behaviors(m, &id).await;
    assert_eq!(
        pairs(&after),
        [
            ("/static/*".to_string(), "static".to_string()),
            ("/api/*".to_string(), "new".to_string()),
            ("/v2/*".to_string(), "new".to_string())
        ]
    );
    assert_eq!(default.target_origin_id, "new");
    assert_eq!(
        after[1].min_ttl,
        Some(5),
        "kept from the existing /api/* behavior"
    );
    assert_eq!(
        after[1].viewer_protocol_policy,
        ViewerProtocolPolicy::AllowAll
    );
    assert_eq!(
        after[2].min_ttl,
        Some(42),
        "copied from the default behavior"
    );
    assert_eq!(
        after[2].viewer_protocol_policy,
        ViewerProtocolPolicy::RedirectToHttps
    );

    // Applying again is a no-op.
    let again = switchyard(
        m,
        home.path(),
        &["cloudfront", "apply", "--distribution", &id, "--routes", r],
    )
    .await;
    assert!(
        again.ok().stdout.contains("nothing to change"),
        "{}",
        again.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudfront_rollback_touches_one_behavior_and_export_round_trips() {
    let m = moto();
    let home = tempfile::tempdir().unwrap();
    let id = create_distribution(
        m,
        &[("/api/*", "new"), ("/img/*", "static"), ("/v2/*", "new")],
    )
    .await;
    let (before, _) = behaviors(m, &id).await;

    let dry = switchyard(
        m,
        home.path(),
        &[
            "cloudfront",
            "rollback",
            "--distribution",
            &id,
            "--path",
            "/api/*",
            "--dry-run",
        ],
    )
    .await;
    assert!(dry.ok().stdout.contains("dry run"), "{}", dry.stdout);
    assert_eq!(behaviors(m, &id).await.0, before);

    switchyard(
        m,
        home.path(),
        &[
            "cloudfront",
            "rollback",
            "--distribution",
            &id,
            "--path",
            "/api/*",
        ],
    )
    .await
    .ok();
    let (after, _) = behaviors(m, &id).await;
    assert_eq!(after.len(), 3);
    assert_eq!(
        after[0].target_origin_id, "old",
        "back to the default origin"
    );
    let mut expect0 = before[0].clone();
    expect0.target_origin_id = "old".into();
    assert_eq!(after[0], expect0, "only the target changed");
    assert_eq!(after[1..], before[1..], "other behaviors identical");

    let unknown = switchyard(
        m,
        home.path(),
        &[
            "cloudfront",
            "rollback",
            "--distribution",
            &id,
            "--path",
            "/nope/*",
        ],
    )
    .await;
    unknown.expect_code(2);
    assert!(
        unknown
            .stderr
            .contains("no behavior with path pattern \"/nope/*\""),
        "{}",
        unknown.stderr
    );

    switchyard(
        m,
        home.path(),
        &[
            "cloudfront",
            "rollback",
            "--distribution",
            &id,
            "--path",
            "/v2/*",
            "--remove",
        ],
    )
    .await
    .ok();
    let (after2, _) = behaviors(m, &id).await;
    assert_eq!(after2[..], after[..2], "only /v2/* removed");

    // export -> a route file config::load_path accepts, mirroring the behaviors.
    let out = home.path().join("exported.toml");
    switchyard(
        m,
        home.path(),
        &[
            "cloudfront",
            "export",
            "--distribution",
            &id,
            "--out",
            out.to_str().unwrap(),
        ],
    )
    .await
    .ok();
    let doc = switchyard::config::load_path(&out).expect("exported file loads");
    let t = doc.table;
    let routes: Vec<(&str, &str, &str)> = t
        .routes
        .iter()
        .map(|r| (r.id.as_str(), r.path.as_str(), r.to.as_deref().unwrap()))
        .collect();
    assert_eq!(
        routes,
        [
            ("cf-api", "/api/*", "old"),
            ("cf-img", "/img/*", "static"),
            ("cf-default", "*", "old")
        ]
    );
    let new = &t.upstreams["new"];
    assert_eq!(new.addrs, ["new.example.com:443"]);
    assert!(new.tls);
    assert_eq!(new.sni.as_deref(), Some("new.example.com"));
    assert_eq!(new.path_prefix.as_deref(), Some("/prod"));
    assert_eq!(t.upstreams["old"].path_prefix, None);

    // The exported table plans as "no changes" against the distribution it came from.
    let plan = switchyard(
        m,
        home.path(),
        &[
            "cloudfront",
            "plan",
            "--distribution",
            &id,
            "--routes",
            out.to_str().unwrap(),
            "--json",
        ],
    )
    .await;
    assert_eq!(plan.ok().json()["changes"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_call_is_one_clear_line() {
    let m = moto();
    let home = tempfile::tempdir().unwrap();
    let r = switchyard(
        m,
        home.path(),
        &["cloudfront", "export", "--distribution", "ENOSUCHDIST"],
    )
    .await;
    r.expect_code(2);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr
            .starts_with("error: GetDistributionConfig: not found (NoSuchDistribution)"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("testing"), "no secret in errors");

    let r = switchyard(
        m,
        home.path(),
        &[
            "dns",
            "status",
            "--zone",
            "ZNOSUCHZONE",
            "--name",
            "a.example.com",
        ],
    )
    .await;
    r.expect_code(2);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("not found (NoSuchHostedZone)"),
        "{}",
        r.stderr
    );

    // Nothing listening: one line, after the SDK's retries.
    let dead = format!("http://127.0.0.1:{}", {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    });
    let r = switchyard(
        &dead,
        home.path(),
        &[
            "apigw",
            "deployments",
            "--api",
            "x",
            "--stage",
            "p",
            "--max-attempts",
            "2",
        ],
    )
    .await;
    r.expect_code(2);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("GetStage: could not reach the endpoint"),
        "{}",
        r.stderr
    );
}

// ---------------------------------------------------------------------------------------
// CloudFront gaps on the fake: stale ETag, InProgress -> Deployed, retries
// ---------------------------------------------------------------------------------------

fn fake_cf_state(edit: Option<(&str, &str)>) -> State {
    State {
        cf_id: "EFAKE123".into(),
        cf_config: fake::cf_config_xml(&[("/api/*", "old"), ("/img/*", "static")], "old", "before"),
        cf_version: 1,
        cf_deploy_polls: 2,
        cf_edit_after_first_get: edit.map(|(a, b)| (a.to_string(), b.to_string())),
        ..State::default()
    }
}

const API_TO_NEW: &str = "[[routes]]\nid='api'\npath='/api/*'\nto='new'\n[[routes]]\nid='img'\npath='/img/*'\nto='static'\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudfront_stale_etag_with_a_changed_plan_stops() {
    // Someone else retargets /api/* between our read and our update.
    let f = Fake::start(fake_cf_state(Some((
        "<PathPattern>/api/*</PathPattern><TargetOriginId>old</TargetOriginId>",
        "<PathPattern>/api/*</PathPattern><TargetOriginId>static</TargetOriginId>",
    ))))
    .await;
    let home = tempfile::tempdir().unwrap();
    let routes = home.path().join("r.toml");
    std::fs::write(&routes, API_TO_NEW).unwrap();
    let r = switchyard(
        &f.url,
        home.path(),
        &[
            "cloudfront",
            "apply",
            "--distribution",
            "EFAKE123",
            "--routes",
            routes.to_str().unwrap(),
        ],
    )
    .await;
    r.expect_code(2);
    assert!(r.stderr.contains("changed while applying"), "{}", r.stderr);
    assert!(r.stderr.contains("nothing was changed"), "{}", r.stderr);
    let s = f.state();
    assert_eq!(s.cf_updates_rejected, 1, "the stale update was refused");
    assert_eq!(s.cf_updates_accepted, 0, "and not retried");
    assert_eq!(s.cf_gets, 2, "re-read after the 412");
    assert!(
        s.cf_config
            .contains("<TargetOriginId>static</TargetOriginId>"),
        "the other edit stands"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudfront_stale_etag_with_same_plan_retries_then_waits_for_deployed() {
    // Someone else edits only the comment: the plan is the same, so apply goes ahead with the
    // new ETag; the first request is a 503, which the SDK retries.
    let mut st = fake_cf_state(Some((
        "<Comment>before</Comment>",
        "<Comment>edited elsewhere</Comment>",
    )));
    st.fail_first = 1;
    let f = Fake::start(st).await;
    let home = tempfile::tempdir().unwrap();
    let routes = home.path().join("r.toml");
    std::fs::write(&routes, API_TO_NEW).unwrap();
    let r = switchyard(
        &f.url,
        home.path(),
        &[
            "cloudfront",
            "apply",
            "--distribution",
            "EFAKE123",
            "--routes",
            routes.to_str().unwrap(),
            "--wait",
            "--poll-interval",
            "100ms",
            "--timeout",
            "30s",
        ],
    )
    .await;
    r.ok();
    assert!(r.stdout.contains("the ETag was stale"), "{}", r.stdout);
    assert!(r.stdout.contains("deployed after"), "{}", r.stdout);
    let progress: Vec<&str> = r.stderr.lines().collect();
    assert!(progress.len() >= 3, "{}", r.stderr);
    assert!(progress[0].contains("InProgress"), "{}", r.stderr);
    assert!(progress[1].contains("InProgress"), "{}", r.stderr);
    assert!(
        progress.last().unwrap().contains("Deployed"),
        "{}",
        r.stderr
    );

    {
        let s = f.state();
        assert_eq!(s.failed, 1);
        assert_eq!((s.cf_updates_rejected, s.cf_updates_accepted), (1, 1));
    }
    // The result, read back through the SDK: our change and the other editor's both stand.
    let out = harness::cloudfront(&f.url)
        .get_distribution_config()
        .id("EFAKE123")
        .send()
        .await
        .unwrap();
    let cfg = out.distribution_config.unwrap();
    assert_eq!(cfg.comment, "edited elsewhere");
    assert_eq!(
        pairs(&cfg.cache_behaviors.unwrap().items.unwrap()),
        [
            ("/api/*".to_string(), "new".to_string()),
            ("/img/*".to_string(), "static".to_string())
        ]
    );
    assert_eq!(out.e_tag.as_deref(), Some("E3"));

    // A wait that cannot finish in time says so and exits non-zero.
    {
        let mut s = f.state();
        s.cf_deploy_polls = 1000;
    }
    std::fs::write(&routes, "[[routes]]\nid='api'\npath='/api/*'\nto='old'\n[[routes]]\nid='img'\npath='/img/*'\nto='static'\n").unwrap();
    let r = switchyard(
        &f.url,
        home.path(),
        &[
            "cloudfront",
            "apply",
            "--distribution",
            "EFAKE123",
            "--routes",
            routes.to_str().unwrap(),
            "--wait",
            "--poll-interval",
            "100ms",
            "--timeout",
            "1s",
        ],
    )
    .await;
    r.expect_code(2);
    assert!(
        r.stderr.lines().last().unwrap().contains("timed out"),
        "{}",
        r.stderr
    );
}

// ---------------------------------------------------------------------------------------
// API Gateway
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apigw_deployments_and_rollback_on_moto() {
    let m = moto();
    let home = tempfile::tempdir().unwrap();
    let api = harness::apigateway(m);
    let rest = api
        .create_rest_api()
        .name(unique("api"))
        .send()
        .await
        .unwrap();
    let api_id = rest.id.unwrap();
    let root = api
        .get_resources()
        .rest_api_id(&api_id)
        .send()
        .await
        .unwrap()
        .items
        .unwrap()
        .into_iter()
        .find(|r| r.path.as_deref() == Some("/"))
        .unwrap()
        .id
        .unwrap();
    api.put_method()
        .rest_api_id(&api_id)
        .resource_id(&root)
        .http_method("GET")
        .authorization_type("NONE")
        .send()
        .await
        .unwrap();
    api.put_integration()
        .rest_api_id(&api_id)
        .resource_id(&root)
        .http_method("GET")
        .r#type(aws_sdk_apigateway::types::IntegrationType::Mock)
        .send()
        .await
        .unwrap();
    let mut ids = Vec::new();
    for (i, d) in ["v1", "v2", "v3"].iter().enumerate() {
        if i > 0 {
            // moto's createdDate has one-second resolution.
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        let out = api
            .create_deployment()
            .rest_api_id(&api_id)
            .stage_name("prod")
            .description(*d)
            .send()
            .await
            .unwrap();
        ids.push(out.id.unwrap());
    }
    let stage_dep = || async {
        harness::apigateway(m)
            .get_stage()
            .rest_api_id(&api_id)
            .stage_name("prod")
            .send()
            .await
            .unwrap()
            .deployment_id
            .unwrap()
    };
    assert_eq!(stage_dep().await, ids[2]);
    let base = ["apigw", "--api", api_id.as_str(), "--stage", "prod"];
    let run = |extra: &'static [&'static str]| {
        let mut a: Vec<&str> = base.to_vec();
        a.extend_from_slice(extra);
        let a: Vec<String> = a.into_iter().map(String::from).collect();
        let home = home.path().to_path_buf();
        async move {
            let refs: Vec<&str> = a.iter().map(String::as_str).collect();
            switchyard(m, &home, &refs).await
        }
    };

    // Newest first, the active one marked.
    let list = run(&["deployments"]).await;
    list.ok();
    let rows: Vec<&str> = list
        .stdout
        .lines()
        .skip(2)
        .filter(|l| ids.iter().any(|i| l.contains(i.as_str())))
        .collect();
    assert_eq!(rows.len(), 3, "{}", list.stdout);
    assert!(
        rows[0].starts_with('*') && rows[0].contains(&ids[2]) && rows[0].contains("v3"),
        "{}",
        list.stdout
    );
    assert!(
        rows[1].contains(&ids[1]) && !rows[1].starts_with('*'),
        "{}",
        list.stdout
    );
    assert!(rows[2].contains(&ids[0]), "{}", list.stdout);
    let j = run(&["deployments", "--json"]).await.ok().json();
    assert_eq!(j["deployments"][0]["id"], json!(ids[2]));
    assert_eq!(j["deployments"][0]["active"], true);
    assert_eq!(j["deployments"][2]["active"], false);

    // --dry-run, then rollback to the previous deployment.
    run(&["rollback", "--dry-run"]).await.ok();
    assert_eq!(stage_dep().await, ids[2]);
    let rb = run(&["rollback"]).await;
    assert!(
        rb.ok()
            .stdout
            .contains(&format!("from deployment {} to {}", ids[2], ids[1])),
        "{}",
        rb.stdout
    );
    assert_eq!(stage_dep().await, ids[1]);

    // Refuse an id that does not exist; the stage is unchanged.
    let bad = run(&["rollback", "--to", "nosuchdep"]).await;
    bad.expect_code(2);
    assert!(
        bad.stderr
            .contains("deployment \"nosuchdep\" does not exist"),
        "{}",
        bad.stderr
    );
    assert_eq!(stage_dep().await, ids[1]);

    // Rollback to a given id.
    let to0 = ids[0].clone();
    let mut a: Vec<&str> = base.to_vec();
    a.extend(["rollback", "--to", to0.as_str()]);
    switchyard(m, home.path(), &a).await.ok();
    assert_eq!(stage_dep().await, ids[0]);
    // Nothing before the oldest.
    let none = run(&["rollback"]).await;
    none.expect_code(2);
    assert!(
        none.stderr.contains("no deployment before"),
        "{}",
        none.stderr
    );
    assert_eq!(stage_dep().await, ids[0]);
}

fn fake_api_state() -> State {
    State {
        api_id: "fakeapi".into(),
        stage_name: "prod".into(),
        stage: json!({
            "deploymentId": "dep1",
            "stageName": "prod",
            "variables": { "backend": "old" },
            "createdDate": 1_700_000_000,
            "lastUpdatedDate": 1_700_000_000
        }),
        deployments: vec![
            json!({ "id": "dep1", "description": "v1", "createdDate": 1_700_000_000 }),
            json!({ "id": "dep2", "description": "v2", "createdDate": 1_700_000_100 }),
        ],
        ..State::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apigw_canary_set_promote_off_on_fake() {
    let f = Fake::start(fake_api_state()).await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let stage = || async {
        harness::apigateway(&f.url)
            .get_stage()
            .rest_api_id("fakeapi")
            .stage_name("prod")
            .send()
            .await
            .unwrap()
    };
    let base = ["apigw", "--api", "fakeapi", "--stage", "prod"];
    let with = |extra: &[&'static str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        a
    };

    // Out-of-range percent: refused before any call.
    let r = switchyard(&f.url, h, &with(&["canary", "--percent", "101"])).await;
    r.expect_code(2);
    assert!(f.state().log.is_empty(), "no call was made");

    // dry run
    switchyard(
        &f.url,
        h,
        &with(&["canary", "--percent", "10", "--dry-run"]),
    )
    .await
    .ok();
    assert_eq!(f.state().stage_updates, 0);

    // 10% to the newest deployment.
    let r = switchyard(&f.url, h, &with(&["canary", "--percent", "10"])).await;
    assert!(r.ok().stdout.contains("canary dep2 at 10%"), "{}", r.stdout);
    let s = stage().await;
    assert_eq!(s.deployment_id.as_deref(), Some("dep1"));
    let c = s.canary_settings.unwrap();
    assert_eq!(
        (c.deployment_id.as_deref(), c.percent_traffic),
        (Some("dep2"), 10.0)
    );

    // An unknown deployment is refused and nothing changes.
    let r = switchyard(
        &f.url,
        h,
        &with(&["canary", "--percent", "50", "--deployment", "nope"]),
    )
    .await;
    r.expect_code(2);
    assert!(r.stderr.contains("\"nope\" does not exist"), "{}", r.stderr);
    assert_eq!(stage().await.canary_settings.unwrap().percent_traffic, 10.0);

    // Raise it, keeping the canary's deployment.
    switchyard(&f.url, h, &with(&["canary", "--percent", "50"]))
        .await
        .ok();
    assert_eq!(stage().await.canary_settings.unwrap().percent_traffic, 50.0);

    // The deployments list marks stage and canary.
    let d = switchyard(&f.url, h, &with(&["deployments"])).await;
    let lines: Vec<&str> = d.ok().stdout.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with('c') && l.contains("dep2")),
        "{}",
        d.stdout
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with('*') && l.contains("dep1")),
        "{}",
        d.stdout
    );

    // Promote: the stage serves the canary's deployment; canary at 0%.
    switchyard(&f.url, h, &with(&["promote"])).await.ok();
    let s = stage().await;
    assert_eq!(s.deployment_id.as_deref(), Some("dep2"));
    assert_eq!(s.canary_settings.unwrap().percent_traffic, 0.0);

    // Off: no canary settings left.
    switchyard(&f.url, h, &with(&["canary", "--off"]))
        .await
        .ok();
    assert!(stage().await.canary_settings.is_none());
    let r = switchyard(&f.url, h, &with(&["promote"])).await;
    r.expect_code(2);
    assert!(r.stderr.contains("no canary"), "{}", r.stderr);
}

// ---------------------------------------------------------------------------------------
// Route53
// ---------------------------------------------------------------------------------------

async fn weighted(
    r53: &aws_sdk_route53::Client,
    zone: &str,
    name: &str,
    sets: &[(&str, i64, &str)],
    ttl: i64,
) {
    use aws_sdk_route53::types::{
        Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
    };
    let mut batch = ChangeBatch::builder();
    for (id, w, ip) in sets {
        batch = batch.changes(
            Change::builder()
                .action(ChangeAction::Create)
                .resource_record_set(
                    ResourceRecordSet::builder()
                        .name(name)
                        .r#type(RrType::A)
                        .set_identifier(*id)
                        .weight(*w)
                        .ttl(ttl)
                        .resource_records(ResourceRecord::builder().value(*ip).build().unwrap())
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        );
    }
    r53.change_resource_record_sets()
        .hosted_zone_id(zone)
        .change_batch(batch.build().unwrap())
        .send()
        .await
        .unwrap();
}

async fn create_zone(r53: &aws_sdk_route53::Client, name: &str) -> String {
    let z = r53
        .create_hosted_zone()
        .name(name)
        .caller_reference(unique("zone"))
        .send()
        .await
        .unwrap();
    z.hosted_zone
        .unwrap()
        .id
        .trim_start_matches("/hostedzone/")
        .to_string()
}

async fn records(
    r53: &aws_sdk_route53::Client,
    zone: &str,
    name: &str,
) -> Vec<(String, Option<i64>, Option<i64>, Vec<String>)> {
    let out = r53
        .list_resource_record_sets()
        .hosted_zone_id(zone)
        .send()
        .await
        .unwrap();
    let mut v: Vec<_> = out
        .resource_record_sets
        .into_iter()
        .filter(|r| r.name == name)
        .map(|r| {
            (
                r.set_identifier
                    .unwrap_or_else(|| r.r#type.as_str().to_string()),
                r.weight,
                r.ttl,
                r.resource_records
                    .unwrap_or_default()
                    .into_iter()
                    .map(|x| x.value)
                    .collect(),
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_status_shift_lower_ttl_on_moto() {
    let m = moto();
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let r53 = harness::route53(m);
    let domain = format!("{}.example.com", unique("z"));
    let zone = create_zone(&r53, &domain).await;
    let name = format!("api.{domain}.");
    weighted(
        &r53,
        &zone,
        &name,
        &[("old", 100, "192.0.2.1"), ("new", 0, "192.0.2.2")],
        300,
    )
    .await;
    let other = format!("www.{domain}.");
    weighted(&r53, &zone, &other, &[("old", 100, "192.0.2.9")], 300).await;
    let other_before = records(&r53, &zone, &other).await;
    let before = records(&r53, &zone, &name).await;
    let base = ["dns", "--zone", zone.as_str(), "--name", name.as_str()];
    let with = |extra: &[&'static str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        a
    };

    let st = switchyard(m, h, &with(&["status"])).await;
    st.ok();
    assert!(
        st.stdout.contains("100%") && st.stdout.contains("192.0.2.2"),
        "{}",
        st.stdout
    );
    assert!(st.stdout.contains("no change recorded"), "{}", st.stdout);

    // 256 is rejected before any call (the endpoint is not even reachable here).
    let r = switchyard(
        "http://127.0.0.1:9",
        h,
        &with(&["shift", "--set", "old=256", "--set", "new=10"]),
    )
    .await;
    r.expect_code(2);
    assert!(r.stderr.contains("0 to 255"), "{}", r.stderr);
    let r = switchyard(m, h, &with(&["shift", "--set", "nosuch=10"])).await;
    r.expect_code(2);
    assert!(
        r.stderr
            .contains("no weighted record with set identifier \"nosuch\""),
        "{}",
        r.stderr
    );
    switchyard(
        m,
        h,
        &with(&["shift", "--set", "old=90", "--set", "new=10", "--dry-run"]),
    )
    .await
    .ok();
    assert_eq!(records(&r53, &zone, &name).await, before);

    let r = switchyard(
        m,
        h,
        &with(&[
            "shift",
            "--set",
            "old=90",
            "--set",
            "new=10",
            "--wait",
            "--poll-interval",
            "100ms",
        ]),
    )
    .await;
    r.ok();
    assert!(r.stdout.contains("INSYNC"), "{}", r.stdout);
    let after = records(&r53, &zone, &name).await;
    assert_eq!(
        after,
        [
            (
                "new".to_string(),
                Some(10),
                Some(300),
                vec!["192.0.2.2".to_string()]
            ),
            (
                "old".to_string(),
                Some(90),
                Some(300),
                vec!["192.0.2.1".to_string()]
            )
        ]
    );
    assert_eq!(
        records(&r53, &zone, &other).await,
        other_before,
        "other names untouched"
    );

    // status: weights, shares, and when every resolver has seen the shift (300 s TTL).
    let j = switchyard(m, h, &with(&["status", "--json"]))
        .await
        .ok()
        .json();
    let shares: Vec<(String, f64)> = j["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["set_identifier"].as_str().unwrap().to_string(),
                r["share_percent"].as_f64().unwrap(),
            )
        })
        .collect();
    assert!(
        shares.contains(&("old".into(), 90.0)) && shares.contains(&("new".into(), 10.0)),
        "{j}"
    );
    assert_eq!(j["last_change"]["previous_ttl"], 300);
    assert_eq!(j["last_change"]["action"], "shift");
    assert_eq!(j["last_change_status"], "INSYNC");
    let left = j["seconds_remaining"].as_i64().unwrap();
    assert!((290..=300).contains(&left), "{j}");
    let text = switchyard(m, h, &with(&["status"])).await;
    assert!(
        text.ok()
            .stdout
            .contains("every resolver will have seen it by"),
        "{}",
        text.stdout
    );

    // lower-ttl: every record of the name to 60 s; says to wait the old 300 s.
    let r = switchyard(m, h, &with(&["lower-ttl", "--ttl", "60"])).await;
    r.ok();
    assert!(r.stdout.contains("wait 300s"), "{}", r.stdout);
    let after = records(&r53, &zone, &name).await;
    assert!(after.iter().all(|r| r.2 == Some(60)), "{after:?}");
    assert_eq!(after[1].1, Some(90), "weights kept");
    assert_eq!(records(&r53, &zone, &other).await, other_before);

    // A shift right after lowering the TTL: answers cached with the old 300 s TTL may live
    // until 300 s after the lower-ttl change, not 60 s after the shift; both are said.
    let r = switchyard(
        m,
        h,
        &with(&["shift", "--set", "old=50", "--set", "new=50", "--json"]),
    )
    .await;
    let j = r.ok().json();
    let notes = j["notes"].to_string();
    assert!(
        notes.contains("lower-ttl") && notes.contains("not yet seen everywhere"),
        "{j}"
    );
    let st = switchyard(m, h, &with(&["status", "--json"]))
        .await
        .ok()
        .json();
    assert_eq!(st["last_change"]["action"], "shift");
    assert_eq!(st["last_change"]["previous_ttl"], 60);
    let left = st["seconds_remaining"].as_i64().unwrap();
    assert!(
        (280..=300).contains(&left),
        "horizon of the old TTL kept: {st}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_delegate_on_moto() {
    let m = moto();
    let home = tempfile::tempdir().unwrap();
    let r53 = harness::route53(m);
    let parent_name = format!("{}.example.com", unique("p"));
    let parent = create_zone(&r53, &parent_name).await;
    let dev = format!("dev.{parent_name}");
    let child = create_zone(&r53, &dev).await;
    let servers = r53
        .get_hosted_zone()
        .id(&child)
        .send()
        .await
        .unwrap()
        .delegation_set
        .unwrap()
        .name_servers;
    assert!(!servers.is_empty());

    let args = [
        "dns",
        "delegate",
        "--zone",
        parent.as_str(),
        "--subdomain",
        dev.as_str(),
        "--to-zone",
        child.as_str(),
    ];
    let mut dry = args.to_vec();
    dry.push("--dry-run");
    switchyard(m, home.path(), &dry).await.ok();
    assert!(records(&r53, &parent, &format!("{dev}.")).await.is_empty());

    let r = switchyard(m, home.path(), &args).await;
    r.ok();
    let ns = records(&r53, &parent, &format!("{dev}.")).await;
    assert_eq!(ns.len(), 1, "{ns:?}");
    assert_eq!(ns[0].0, "NS");
    assert_eq!(ns[0].2, Some(172_800));
    assert_eq!(ns[0].3, servers);

    // The wrong zone for the subdomain is refused.
    let wrong = format!("qa.{parent_name}");
    let r = switchyard(
        m,
        home.path(),
        &[
            "dns",
            "delegate",
            "--zone",
            parent.as_str(),
            "--subdomain",
            wrong.as_str(),
            "--to-zone",
            child.as_str(),
        ],
    )
    .await;
    r.expect_code(2);
    assert!(
        r.stderr.contains(&format!("is for {dev}., not {wrong}.")),
        "{}",
        r.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_shift_waits_pending_to_insync_on_fake() {
    let rec = |id: &str, w: i64, ip: &str| Rec {
        name: "api.example.com.".into(),
        rtype: "A".into(),
        set_id: Some(id.into()),
        weight: Some(w),
        ttl: Some(60),
        values: vec![ip.into()],
        ..Rec::default()
    };
    let f = Fake::start(State {
        zone_id: "ZFAKE".into(),
        records: vec![rec("old", 100, "192.0.2.1"), rec("new", 0, "192.0.2.2")],
        change_pending_polls: 2,
        ..State::default()
    })
    .await;
    let home = tempfile::tempdir().unwrap();
    let r = switchyard(
        &f.url,
        home.path(),
        &[
            "dns",
            "shift",
            "--zone",
            "ZFAKE",
            "--name",
            "api.example.com",
            "--set",
            "old=50",
            "--set",
            "new=50",
            "--wait",
            "--poll-interval",
            "100ms",
            "--json",
        ],
    )
    .await;
    r.ok();
    let progress: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(progress.len(), 3, "{}", r.stderr);
    assert!(
        progress[0].contains("PENDING") && progress[1].contains("PENDING"),
        "{}",
        r.stderr
    );
    assert!(progress[2].contains("INSYNC"), "{}", r.stderr);
    let j = r.json();
    assert_eq!(j["status"], "INSYNC");
    assert_eq!(j["change_id"], "C0001FAKE");
    let s = f.state();
    assert_eq!(s.change_batches, 1, "one change batch");
    assert!(s.records.iter().all(|r| r.weight == Some(50)));
}

// ---------------------------------------------------------------------------------------
// Route53 beyond weights: switch / undo, check-url, to-weighted / to-plain, failover,
// registrar name servers
// ---------------------------------------------------------------------------------------

/// Every record set of `name`, as the SDK returns them, sorted by type and set identifier:
/// comparing two of these compares every field.
async fn sets(
    r53: &aws_sdk_route53::Client,
    zone: &str,
    name: &str,
) -> Vec<aws_sdk_route53::types::ResourceRecordSet> {
    let out = r53
        .list_resource_record_sets()
        .hosted_zone_id(zone)
        .send()
        .await
        .unwrap();
    let mut v: Vec<_> = out
        .resource_record_sets
        .into_iter()
        .filter(|r| r.name == name)
        .collect();
    v.sort_by_key(|r| (r.r#type.as_str().to_string(), r.set_identifier.clone()));
    v
}

/// UPSERTs record sets (UPSERT, not CREATE: moto refuses a later CREATE identical to an
/// earlier CREATE, which a DELETE + CREATE batch of the CLI may send).
async fn upsert(
    r53: &aws_sdk_route53::Client,
    zone: &str,
    recs: Vec<aws_sdk_route53::types::ResourceRecordSet>,
) {
    use aws_sdk_route53::types::{Change, ChangeAction, ChangeBatch};
    let mut batch = ChangeBatch::builder();
    for r in recs {
        batch = batch.changes(
            Change::builder()
                .action(ChangeAction::Upsert)
                .resource_record_set(r)
                .build()
                .unwrap(),
        );
    }
    r53.change_resource_record_sets()
        .hosted_zone_id(zone)
        .change_batch(batch.build().unwrap())
        .send()
        .await
        .unwrap();
}

fn plain(
    name: &str,
    t: aws_sdk_route53::types::RrType,
    ttl: i64,
    values: &[&str],
) -> aws_sdk_route53::types::ResourceRecordSet {
    use aws_sdk_route53::types::{ResourceRecord, ResourceRecordSet};
    let mut b = ResourceRecordSet::builder().name(name).r#type(t).ttl(ttl);
    for v in values {
        b = b.resource_records(ResourceRecord::builder().value(*v).build().unwrap());
    }
    b.build().unwrap()
}

fn alias_a(
    name: &str,
    zone: &str,
    dns: &str,
    evaluate: bool,
) -> aws_sdk_route53::types::ResourceRecordSet {
    use aws_sdk_route53::types::{AliasTarget, ResourceRecordSet, RrType};
    ResourceRecordSet::builder()
        .name(name)
        .r#type(RrType::A)
        .alias_target(
            AliasTarget::builder()
                .hosted_zone_id(zone)
                .dns_name(dns)
                .evaluate_target_health(evaluate)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

fn args<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = base.to_vec();
    a.extend_from_slice(extra);
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_switch_and_undo_cname_and_alias_on_moto() {
    use aws_sdk_route53::types::RrType;
    let m = moto();
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let r53 = harness::route53(m);
    let domain = format!("{}.example.com", unique("sw"));
    let zone = create_zone(&r53, &domain).await;

    // A CNAME from the old load balancer to the new one, and back.
    let www = format!("www.{domain}.");
    upsert(
        &r53,
        &zone,
        vec![plain(&www, RrType::Cname, 300, &["old-lb.example.net"])],
    )
    .await;
    let original = sets(&r53, &zone, &www).await;
    assert_eq!(original.len(), 1);
    let base = ["dns", "--zone", zone.as_str(), "--name", www.as_str()];

    let dry = switchyard(
        m,
        h,
        &args(
            &base,
            &[
                "switch",
                "--to",
                "new-lb.example.net",
                "--dry-run",
                "--json",
            ],
        ),
    )
    .await;
    let j = dry.ok().json();
    assert_eq!(j["dry_run"], true);
    assert_eq!(j["batch"], json!(["UPSERT CNAME -"]));
    assert_eq!(
        sets(&r53, &zone, &www).await,
        original,
        "dry run changed nothing"
    );

    let r = switchyard(
        m,
        h,
        &args(&base, &["switch", "--to", "new-lb.example.net", "--json"]),
    )
    .await;
    let j = r.ok().json();
    assert_eq!(j["batch"], json!(["UPSERT CNAME -"]), "one UPSERT");
    let now = sets(&r53, &zone, &www).await;
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].ttl, Some(300), "TTL kept");
    assert_eq!(
        now[0].resource_records.as_ref().unwrap()[0].value,
        "new-lb.example.net"
    );

    let r = switchyard(m, h, &args(&base, &["undo"])).await;
    r.ok();
    assert_eq!(
        sets(&r53, &zone, &www).await,
        original,
        "restored field by field"
    );
    let r = switchyard(m, h, &args(&base, &["undo"])).await;
    r.expect_code(2);
    assert!(r.stderr.contains("no change to undo"), "{}", r.stderr);

    // Someone changes the record after the switch: undo refuses, --force restores anyway.
    switchyard(
        m,
        h,
        &args(&base, &["switch", "--to", "new-lb.example.net"]),
    )
    .await
    .ok();
    upsert(
        &r53,
        &zone,
        vec![plain(&www, RrType::Cname, 60, &["third-lb.example.net"])],
    )
    .await;
    let r = switchyard(m, h, &args(&base, &["undo"])).await;
    r.expect_code(2);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("changed since") && r.stderr.contains("third-lb.example.net"),
        "{}",
        r.stderr
    );
    switchyard(m, h, &args(&base, &["undo", "--force"]))
        .await
        .ok();
    assert_eq!(sets(&r53, &zone, &www).await, original);

    // An alias A record from one region's ALB to the other's, EvaluateTargetHealth kept.
    let api = format!("api.{domain}.");
    upsert(
        &r53,
        &zone,
        vec![alias_a(
            &api,
            "Z35SXDOTRQ7X7K",
            "old-alb-1.us-east-1.elb.amazonaws.com.",
            true,
        )],
    )
    .await;
    let original = sets(&r53, &zone, &api).await;
    let base = ["dns", "--zone", zone.as_str(), "--name", api.as_str()];
    let r = switchyard(
        m,
        h,
        &args(
            &base,
            &[
                "switch",
                "--alias",
                "dr-alb-2.eu-west-1.elb.amazonaws.com.",
                "--alias-zone",
                "Z32O12XQLNTSW2",
            ],
        ),
    )
    .await;
    r.ok();
    let now = sets(&r53, &zone, &api).await;
    assert_eq!(now.len(), 1, "{now:?}");
    let a = now[0].alias_target.as_ref().expect("still an alias");
    assert_eq!(a.dns_name, "dr-alb-2.eu-west-1.elb.amazonaws.com.");
    assert_eq!(a.hosted_zone_id, "Z32O12XQLNTSW2");
    assert!(a.evaluate_target_health, "EvaluateTargetHealth kept");
    assert_eq!(now[0].r#type, RrType::A);
    assert_eq!(now[0].ttl, None);
    // --ttl on an alias is refused before any call.
    let r = switchyard(
        "http://127.0.0.1:9",
        h,
        &args(
            &base,
            &[
                "switch",
                "--alias",
                "x.example.net",
                "--alias-zone",
                "Z1",
                "--ttl",
                "60",
            ],
        ),
    )
    .await;
    r.expect_code(2);
    assert!(r.stderr.contains("alias record has no TTL"), "{}", r.stderr);

    let r = switchyard(m, h, &args(&base, &["undo", "--json"])).await;
    let j = r.ok().json();
    assert_eq!(j["batch"], json!(["UPSERT A -"]));
    assert_eq!(
        sets(&r53, &zone, &api).await,
        original,
        "alias restored field by field"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_switch_refuses_routed_and_ambiguous_names_on_moto() {
    use aws_sdk_route53::types::{ResourceRecordSetFailover, RrType};
    let m = moto();
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let r53 = harness::route53(m);
    let domain = format!("{}.example.com", unique("rf"));
    let zone = create_zone(&r53, &domain).await;

    let w = format!("w.{domain}.");
    weighted(
        &r53,
        &zone,
        &w,
        &[("old", 100, "192.0.2.1"), ("new", 0, "192.0.2.2")],
        60,
    )
    .await;
    let before = sets(&r53, &zone, &w).await;
    let r = switchyard(
        m,
        h,
        &[
            "dns",
            "switch",
            "--zone",
            &zone,
            "--name",
            &w,
            "--to",
            "192.0.2.9",
        ],
    )
    .await;
    r.expect_code(2);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("weighted records (old, new)")
            && r.stderr.contains("switchyard dns shift"),
        "{}",
        r.stderr
    );
    assert_eq!(sets(&r53, &zone, &w).await, before);

    let f = format!("f.{domain}.");
    let mk = |id: &str, role: ResourceRecordSetFailover, ip: &str| {
        let mut r = plain(&f, RrType::A, 60, &[ip]);
        r.set_identifier = Some(id.into());
        r.failover = Some(role);
        r
    };
    upsert(
        &r53,
        &zone,
        vec![
            mk("home", ResourceRecordSetFailover::Primary, "192.0.2.1"),
            mk("dr", ResourceRecordSetFailover::Secondary, "192.0.2.2"),
        ],
    )
    .await;
    let r = switchyard(
        m,
        h,
        &[
            "dns",
            "switch",
            "--zone",
            &zone,
            "--name",
            &f,
            "--to",
            "192.0.2.9",
        ],
    )
    .await;
    r.expect_code(2);
    assert!(r.stderr.contains("switchyard dns failover"), "{}", r.stderr);

    let both = format!("both.{domain}.");
    upsert(
        &r53,
        &zone,
        vec![
            plain(&both, RrType::A, 60, &["192.0.2.1"]),
            plain(&both, RrType::Aaaa, 60, &["2001:db8::1"]),
        ],
    )
    .await;
    let before = sets(&r53, &zone, &both).await;
    let alias = [
        "dns",
        "switch",
        "--zone",
        &zone,
        "--name",
        &both,
        "--alias",
        "lb.example.net",
        "--alias-zone",
        "Z35SXDOTRQ7X7K",
    ];
    let r = switchyard(m, h, &alias).await;
    r.expect_code(2);
    assert!(
        r.stderr.contains("several record sets (A, AAAA)") && r.stderr.contains("--type"),
        "{}",
        r.stderr
    );
    assert_eq!(sets(&r53, &zone, &both).await, before);
    // An IPv6 address says which one is meant; the A record stays, and the output says so.
    let r = switchyard(
        m,
        h,
        &[
            "dns",
            "switch",
            "--zone",
            &zone,
            "--name",
            &both,
            "--to",
            "2001:db8::2",
            "--json",
        ],
    )
    .await;
    let j = r.ok().json();
    assert!(
        j["notes"].to_string().contains("the A record still points"),
        "{j}"
    );
    let now = sets(&r53, &zone, &both).await;
    assert_eq!(now[0], before[0], "A untouched");
    assert_eq!(
        now[1].resource_records.as_ref().unwrap()[0].value,
        "2001:db8::2"
    );
}

/// A loopback origin answering every request with `status`; its port and the Host headers
/// it was sent.
async fn origin(status: u16) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let hosts = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = hosts.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut n = 0;
                while n < buf.len() {
                    match s.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                if let Some(host) = req.lines().find_map(|l| {
                    l.to_ascii_lowercase()
                        .starts_with("host:")
                        .then(|| l[5..].trim().to_string())
                }) {
                    seen.lock().unwrap().push(host);
                }
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    (port, hosts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_switch_check_url_on_moto() {
    use aws_sdk_route53::types::RrType;
    let m = moto();
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let r53 = harness::route53(m);
    let domain = format!("{}.example.com", unique("ck"));
    let zone = create_zone(&r53, &domain).await;
    let app = format!("app.{domain}.");
    upsert(
        &r53,
        &zone,
        vec![plain(&app, RrType::A, 60, &["192.0.2.10"])],
    )
    .await;
    let original = sets(&r53, &zone, &app).await;
    let base = ["dns", "--zone", zone.as_str(), "--name", app.as_str()];

    // Down: nothing listens on the port. No change.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://app.{domain}:{dead}/healthz");
    let r = switchyard(
        m,
        h,
        &args(&base, &["switch", "--to", "127.0.0.1", "--check-url", &url]),
    )
    .await;
    r.expect_code(2);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("--check-url") && r.stderr.contains("nothing was changed"),
        "{}",
        r.stderr
    );
    assert_eq!(sets(&r53, &zone, &app).await, original, "record unchanged");

    // Up, but answering 503: no change either.
    let (sick, _) = origin(503).await;
    let url = format!("http://app.{domain}:{sick}/healthz");
    let r = switchyard(
        m,
        h,
        &args(&base, &["switch", "--to", "127.0.0.1", "--check-url", &url]),
    )
    .await;
    r.expect_code(2);
    assert!(r.stderr.contains("answered 503"), "{}", r.stderr);
    assert_eq!(sets(&r53, &zone, &app).await, original, "record unchanged");

    // Up: the GET goes to the new target with the URL's Host, then the switch happens.
    let (up, hosts) = origin(200).await;
    let url = format!("http://app.{domain}:{up}/healthz");
    let r = switchyard(
        m,
        h,
        &args(
            &base,
            &["switch", "--to", "127.0.0.1", "--check-url", &url, "--json"],
        ),
    )
    .await;
    let j = r.ok().json();
    assert_eq!(j["check"][0]["status"], 200, "{j}");
    assert_eq!(j["check"][0]["ok"], true);
    assert_eq!(
        hosts.lock().unwrap().as_slice(),
        [format!("app.{domain}:{up}")],
        "Host from the URL"
    );
    let now = sets(&r53, &zone, &app).await;
    assert_eq!(
        now[0].resource_records.as_ref().unwrap()[0].value,
        "127.0.0.1"
    );
    assert_eq!(now[0].ttl, Some(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_to_weighted_shift_to_plain_and_undo_on_moto() {
    use aws_sdk_route53::types::RrType;
    let m = moto();
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let r53 = harness::route53(m);
    let domain = format!("{}.example.com", unique("tw"));
    let zone = create_zone(&r53, &domain).await;
    let api = format!("api.{domain}.");
    upsert(
        &r53,
        &zone,
        vec![plain(&api, RrType::A, 60, &["192.0.2.1"])],
    )
    .await;
    let original = sets(&r53, &zone, &api).await;
    let base = ["dns", "--zone", zone.as_str(), "--name", api.as_str()];

    // A new target of another type is refused before any change.
    let r = switchyard(
        m,
        h,
        &args(&base, &["to-weighted", "--new", "new-lb.example.net"]),
    )
    .await;
    r.expect_code(2);
    assert!(r.stderr.contains("share one type"), "{}", r.stderr);

    let r = switchyard(
        m,
        h,
        &args(&base, &["to-weighted", "--new", "192.0.2.2", "--dry-run"]),
    )
    .await;
    r.ok();
    assert_eq!(
        sets(&r53, &zone, &api).await,
        original,
        "dry run changed nothing"
    );

    let r = switchyard(
        m,
        h,
        &args(&base, &["to-weighted", "--new", "192.0.2.2", "--json"]),
    )
    .await;
    let j = r.ok().json();
    assert_eq!(
        j["batch"],
        json!(["DELETE A -", "CREATE A old", "CREATE A new"]),
        "one batch: the plain record's DELETE with both CREATEs"
    );
    assert_eq!(
        records(&r53, &zone, &api).await,
        [
            (
                "new".to_string(),
                Some(0),
                Some(60),
                vec!["192.0.2.2".to_string()]
            ),
            (
                "old".to_string(),
                Some(100),
                Some(60),
                vec!["192.0.2.1".to_string()]
            ),
        ],
        "the name resolves to the old target, now through weighted records"
    );

    switchyard(
        m,
        h,
        &args(&base, &["shift", "--set", "old=0", "--set", "new=100"]),
    )
    .await
    .ok();
    let weighted_now = sets(&r53, &zone, &api).await;
    let r = switchyard(m, h, &args(&base, &["to-plain", "--json"])).await;
    let j = r.ok().json();
    let batch: Vec<&str> = j["batch"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(batch.len(), 3, "{j}");
    assert!(batch[..2].contains(&"DELETE A old") && batch[..2].contains(&"DELETE A new"));
    assert_eq!(
        batch[2], "CREATE A -",
        "one batch: both DELETEs and the CREATE"
    );
    assert_eq!(
        records(&r53, &zone, &api).await,
        [(
            "A".to_string(),
            None,
            Some(60),
            vec!["192.0.2.2".to_string()]
        )],
        "the largest weight's target kept"
    );

    // undo restores the weighted records as they were before to-plain.
    switchyard(m, h, &args(&base, &["undo"])).await.ok();
    assert_eq!(sets(&r53, &zone, &api).await, weighted_now);

    // Equal weights: which target stays is not guessed.
    switchyard(
        m,
        h,
        &args(&base, &["shift", "--set", "old=50", "--set", "new=50"]),
    )
    .await
    .ok();
    let r = switchyard(m, h, &args(&base, &["to-plain"])).await;
    r.expect_code(2);
    assert!(r.stderr.contains("--keep"), "{}", r.stderr);
    let r = switchyard(m, h, &args(&base, &["to-plain", "--keep", "old"])).await;
    r.ok();
    assert!(
        r.stdout.contains("new had weight 50 (50.0% of answers)"),
        "{}",
        r.stdout
    );
    assert_eq!(
        records(&r53, &zone, &api).await,
        [(
            "A".to_string(),
            None,
            Some(60),
            vec!["192.0.2.1".to_string()]
        )]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_failover_status_and_swap_on_moto() {
    use aws_sdk_route53::types::{
        HealthCheckConfig, HealthCheckType, ResourceRecordSetFailover, RrType,
    };
    let m = moto();
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let r53 = harness::route53(m);
    let domain = format!("{}.example.com", unique("fo"));
    let zone = create_zone(&r53, &domain).await;
    let hc = r53
        .create_health_check()
        .caller_reference(unique("hc"))
        .health_check_config(
            HealthCheckConfig::builder()
                .r#type(HealthCheckType::Http)
                .ip_address("192.0.2.1")
                .port(80)
                .resource_path("/healthz")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap()
        .health_check
        .unwrap()
        .id;
    let svc = format!("service.{domain}.");
    let mut home_site = plain(&svc, RrType::A, 60, &["192.0.2.1"]);
    home_site.set_identifier = Some("us-east-1".into());
    home_site.failover = Some(ResourceRecordSetFailover::Primary);
    home_site.health_check_id = Some(hc.clone());
    let mut dr_site = alias_a(
        &svc,
        "Z32O12XQLNTSW2",
        "dr-alb.eu-west-1.elb.amazonaws.com.",
        true,
    );
    dr_site.set_identifier = Some("eu-west-1".into());
    dr_site.failover = Some(ResourceRecordSetFailover::Secondary);
    upsert(&r53, &zone, vec![home_site, dr_site]).await;
    let original = sets(&r53, &zone, &svc).await;
    let base = ["dns", "--zone", zone.as_str(), "--name", svc.as_str()];

    let st = switchyard(m, h, &args(&base, &["status"])).await;
    st.ok();
    assert!(
        st.stdout.contains("PRIMARY") && st.stdout.contains("SECONDARY"),
        "{}",
        st.stdout
    );
    assert!(st.stdout.contains("healthy (1/1)"), "{}", st.stdout);
    let j = switchyard(m, h, &args(&base, &["status", "--json"]))
        .await
        .ok()
        .json();
    let primary = j["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["failover"] == "PRIMARY")
        .unwrap()
        .clone();
    assert_eq!(primary["set_identifier"], "us-east-1");
    assert_eq!(primary["health"]["verdict"], "healthy");
    assert_eq!(primary["health"]["health_check_id"], hc.as_str());

    switchyard(
        m,
        h,
        &args(&base, &["failover", "--to", "secondary", "--dry-run"]),
    )
    .await
    .ok();
    assert_eq!(
        sets(&r53, &zone, &svc).await,
        original,
        "dry run changed nothing"
    );

    let r = switchyard(
        m,
        h,
        &args(&base, &["failover", "--to", "secondary", "--json"]),
    )
    .await;
    let j = r.ok().json();
    assert_eq!(
        j["batch"],
        json!([
            "DELETE A us-east-1",
            "DELETE A eu-west-1",
            "CREATE A eu-west-1",
            "CREATE A us-east-1"
        ])
    );
    let now = sets(&r53, &zone, &svc).await;
    let role = |id: &str| {
        now.iter()
            .find(|r| r.set_identifier.as_deref() == Some(id))
            .unwrap()
            .clone()
    };
    assert_eq!(
        role("eu-west-1").failover,
        Some(ResourceRecordSetFailover::Primary)
    );
    assert_eq!(
        role("us-east-1").failover,
        Some(ResourceRecordSetFailover::Secondary)
    );
    // Each record keeps its target and health check.
    assert_eq!(
        role("us-east-1").health_check_id.as_deref(),
        Some(hc.as_str())
    );
    assert!(
        role("eu-west-1")
            .alias_target
            .as_ref()
            .unwrap()
            .evaluate_target_health
    );

    // Back: the record that was primary before switchyard's failover.
    let r = switchyard(m, h, &args(&base, &["failover", "--to", "primary"])).await;
    r.ok();
    assert_eq!(
        sets(&r53, &zone, &svc).await,
        original,
        "roles back, field by field"
    );
    let r = switchyard(m, h, &args(&base, &["failover", "--to", "primary"])).await;
    assert!(r.ok().stdout.contains("nothing to change"), "{}", r.stdout);
}

fn domains_client(endpoint: &str) -> aws_sdk_route53domains::Client {
    let conf = aws_sdk_route53domains::Config::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_cloudfront::config::Credentials::new(
            "testing", "testing", None, None, "tests",
        ))
        .build();
    aws_sdk_route53domains::Client::from_conf(conf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_nameservers_from_zone_on_moto() {
    use aws_sdk_route53domains::types::ContactDetail;
    let m = moto();
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let rd = domains_client(m);
    let r53 = harness::route53(m);
    let domain = format!("{}.com", unique("ns"));
    let contact = ContactDetail::builder()
        .first_name("Test")
        .last_name("Owner")
        .contact_type(aws_sdk_route53domains::types::ContactType::Person)
        .build();
    rd.register_domain()
        .domain_name(&domain)
        .duration_in_years(2)
        .admin_contact(contact.clone())
        .registrant_contact(contact.clone())
        .tech_contact(contact)
        .send()
        .await
        .unwrap();
    let before: Vec<String> = rd
        .get_domain_detail()
        .domain_name(&domain)
        .send()
        .await
        .unwrap()
        .nameservers
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    // The hosted zone in the new account.
    let zone = create_zone(&r53, &domain).await;
    let servers = r53
        .get_hosted_zone()
        .id(&zone)
        .send()
        .await
        .unwrap()
        .delegation_set
        .unwrap()
        .name_servers;
    assert_ne!(before, servers);

    let show = switchyard(m, h, &["dns", "nameservers", "--domain", &domain, "--json"]).await;
    assert_eq!(show.ok().json()["name_servers"], json!(before));

    let base = ["dns", "nameservers", "--domain", domain.as_str()];
    let r = switchyard(
        m,
        h,
        &args(&base, &["--from-zone", &zone, "--dry-run", "--json"]),
    )
    .await;
    let j = r.ok().json();
    assert_eq!(j["after"], json!(servers));
    let now: Vec<String> = rd
        .get_domain_detail()
        .domain_name(&domain)
        .send()
        .await
        .unwrap()
        .nameservers
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(now, before, "dry run changed nothing");

    let r = switchyard(
        m,
        h,
        &args(
            &base,
            &[
                "--from-zone",
                &zone,
                "--wait",
                "--poll-interval",
                "100ms",
                "--json",
            ],
        ),
    )
    .await;
    let j = r.ok().json();
    assert_eq!(j["status"], "SUCCESSFUL", "{j}");
    let now: Vec<String> = rd
        .get_domain_detail()
        .domain_name(&domain)
        .send()
        .await
        .unwrap()
        .nameservers
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(now, servers, "read back from the registrar");

    // status says when every resolver will have seen it: the 48 h parent TTL from now.
    let st = switchyard(m, h, &["dns", "status", "--domain", &domain, "--json"])
        .await
        .ok()
        .json();
    assert_eq!(st["name_servers"], json!(servers));
    assert_eq!(st["last_change"]["previous"], json!(before));
    assert_eq!(st["last_change"]["parent_ttl"], 172_800);
    let left = st["seconds_remaining"].as_i64().unwrap();
    assert!((172_000..=172_800).contains(&left), "{st}");
    let text = switchyard(m, h, &["dns", "status", "--domain", &domain]).await;
    assert!(
        text.ok()
            .stdout
            .contains("every resolver will have seen the new name servers by"),
        "{}",
        text.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_dry_runs_send_nothing_and_batches_are_whole_on_fake() {
    let rec = |name: &str, id: Option<&str>, w: Option<i64>, fo: Option<&str>, ip: &str| Rec {
        name: name.into(),
        rtype: "A".into(),
        set_id: id.map(str::to_string),
        weight: w,
        ttl: Some(60),
        values: vec![ip.into()],
        failover: fo.map(str::to_string),
        // The failover records have health checks: home's passes, dr's fails everywhere.
        health_check_id: fo.map(|_| format!("hc-{}", id.unwrap_or("-"))),
        ..Rec::default()
    };
    let f = Fake::start(State {
        zone_id: "ZFAKE".into(),
        records: vec![
            rec("api.example.com.", None, None, None, "192.0.2.1"),
            rec("solo.example.com.", None, None, None, "192.0.2.1"),
            rec(
                "dr.example.com.",
                Some("home"),
                None,
                Some("PRIMARY"),
                "192.0.2.1",
            ),
            rec(
                "dr.example.com.",
                Some("dr"),
                None,
                Some("SECONDARY"),
                "192.0.2.2",
            ),
        ],
        domain: "example.com".into(),
        domain_ns: vec!["ns-1.old-dns.net".into(), "ns-2.old-dns.net".into()],
        domain_op_polls: 2,
        health_checks: [
            ("hc-home".to_string(), vec![true, true, true]),
            ("hc-dr".to_string(), vec![false, false, false]),
        ]
        .into_iter()
        .collect(),
        ..State::default()
    })
    .await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let api = ["dns", "--zone", "ZFAKE", "--name", "api.example.com"];
    let dr = ["dns", "--zone", "ZFAKE", "--name", "dr.example.com"];
    for a in [
        args(&api, &["switch", "--to", "192.0.2.9", "--dry-run"]),
        args(&api, &["to-weighted", "--new", "192.0.2.2", "--dry-run"]),
        args(&dr, &["failover", "--to", "secondary", "--dry-run"]),
        vec![
            "dns",
            "nameservers",
            "--domain",
            "example.com",
            "--set",
            "ns-1.new-dns.org,ns-2.new-dns.org",
            "--dry-run",
        ],
    ] {
        let r = switchyard(&f.url, h, &a).await;
        r.ok();
        assert!(
            r.stdout.contains("dry run: nothing was changed"),
            "{}",
            r.stdout
        );
    }
    {
        let s = f.state();
        let changing: Vec<&String> = s
            .log
            .iter()
            .filter(|l| l.starts_with("POST /2013-04-01") || l.contains("UpdateDomain"))
            .collect();
        assert!(changing.is_empty(), "dry runs sent {changing:?}");
        assert!(s.batches.is_empty());
        assert!(!h.join("state").exists(), "dry runs write no state");
    }

    // to-weighted: one batch; the fake, like Route53, refuses a plain record beside weighted
    // ones (shown first), so only DELETE and both CREATEs together are accepted.
    {
        use aws_sdk_route53::types::{
            Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
        };
        let weighted_beside_plain = ChangeBatch::builder()
            .changes(
                Change::builder()
                    .action(ChangeAction::Create)
                    .resource_record_set(
                        ResourceRecordSet::builder()
                            .name("solo.example.com.")
                            .r#type(RrType::A)
                            .set_identifier("new")
                            .weight(0)
                            .ttl(60)
                            .resource_records(
                                ResourceRecord::builder()
                                    .value("192.0.2.2")
                                    .build()
                                    .unwrap(),
                            )
                            .build()
                            .unwrap(),
                    )
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let refused = harness::route53(&f.url)
            .change_resource_record_sets()
            .hosted_zone_id("ZFAKE")
            .change_batch(weighted_beside_plain)
            .send()
            .await;
        assert!(
            refused.is_err(),
            "a weighted record beside a plain one is refused"
        );
        assert!(f.state().batches.is_empty());
    }
    let r = switchyard(
        &f.url,
        h,
        &args(&api, &["to-weighted", "--new", "192.0.2.2"]),
    )
    .await;
    r.ok();
    {
        let s = f.state();
        assert_eq!(
            s.batches,
            [vec!["DELETE A -", "CREATE A old", "CREATE A new"]],
            "one batch"
        );
        let api_recs: Vec<&Rec> = s
            .records
            .iter()
            .filter(|r| r.name == "api.example.com.")
            .collect();
        assert_eq!(api_recs.len(), 2);
        assert!(api_recs.iter().all(|r| r.weight.is_some()));
    }

    // status shows each role with its health check's figures.
    let st = switchyard(&f.url, h, &args(&dr, &["status"])).await;
    st.ok();
    assert!(
        st.stdout.contains("healthy (3/3)") && st.stdout.contains("unhealthy (0/3)"),
        "{}",
        st.stdout
    );

    // failover: both DELETEs and both CREATEs in one batch; the new primary's failing check
    // is pointed out (Route53 keeps answering with the secondary until it passes).
    let r = switchyard(&f.url, h, &args(&dr, &["failover", "--to", "dr", "--json"])).await;
    let j = r.ok().json();
    assert!(
        j["notes"]
            .to_string()
            .contains("keeps answering with the secondary (home)"),
        "{j}"
    );
    {
        let s = f.state();
        assert_eq!(s.batches.len(), 2);
        assert_eq!(
            s.batches[1],
            [
                "DELETE A home",
                "DELETE A dr",
                "CREATE A dr",
                "CREATE A home"
            ]
        );
        let role = |id: &str| {
            s.records
                .iter()
                .find(|r| r.set_id.as_deref() == Some(id))
                .and_then(|r| r.failover.clone())
        };
        assert_eq!(role("dr").as_deref(), Some("PRIMARY"));
        assert_eq!(role("home").as_deref(), Some("SECONDARY"));
    }

    // Name servers: set, wait IN_PROGRESS -> SUCCESSFUL, read back.
    let r = switchyard(
        &f.url,
        h,
        &[
            "dns",
            "nameservers",
            "--domain",
            "example.com",
            "--set",
            "ns-1.new-dns.org,ns-2.new-dns.org",
            "--wait",
            "--poll-interval",
            "100ms",
            "--json",
        ],
    )
    .await;
    r.ok();
    let progress: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(progress.len(), 3, "{}", r.stderr);
    assert!(progress[0].contains("IN_PROGRESS"), "{}", r.stderr);
    assert!(progress[2].contains("SUCCESSFUL"), "{}", r.stderr);
    let j = r.json();
    assert_eq!(j["status"], "SUCCESSFUL");
    assert_eq!(
        j["last_change"]["previous"],
        json!(["ns-1.old-dns.net", "ns-2.old-dns.net"])
    );
    assert_eq!(
        f.state().domain_ns,
        ["ns-1.new-dns.org", "ns-2.new-dns.org"]
    );
    let st = switchyard(
        &f.url,
        h,
        &["dns", "status", "--domain", "example.com", "--json"],
    )
    .await
    .ok()
    .json();
    assert_eq!(
        st["name_servers"],
        json!(["ns-1.new-dns.org", "ns-2.new-dns.org"])
    );
    assert_eq!(st["last_change"]["status"], "SUCCESSFUL");
    assert!(st["seconds_remaining"].as_i64().unwrap() > 172_000, "{st}");
}

// ---------------------------------------------------------------------------------------
// CloudWatch on moto
// ---------------------------------------------------------------------------------------

async fn put(
    cw: &aws_sdk_cloudwatch::Client,
    ns: &str,
    dims: &[(&str, &str)],
    metric: &str,
    value: f64,
) {
    use aws_sdk_cloudwatch::types::{Dimension, MetricDatum};
    let t = DateTime::from_secs(DateTime::from(std::time::SystemTime::now()).secs() - 60);
    let mut d = MetricDatum::builder()
        .metric_name(metric)
        .value(value)
        .timestamp(t);
    for (k, v) in dims {
        d = d.dimensions(Dimension::builder().name(*k).value(*v).build());
    }
    cw.put_metric_data()
        .namespace(ns)
        .metric_data(d.build())
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_query_and_gate_on_moto() {
    let m = moto();
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let cw = harness::cloudwatch(m);
    let api = unique("shop");
    let dims = [("ApiName", api.as_str())];
    put(&cw, "AWS/ApiGateway", &dims, "Count", 600.0).await;
    put(&cw, "AWS/ApiGateway", &dims, "Count", 400.0).await;
    put(&cw, "AWS/ApiGateway", &dims, "5XXError", 5.0).await;
    put(&cw, "AWS/ApiGateway", &dims, "Latency", 120.0).await;
    let func = unique("fn");
    put(
        &cw,
        "AWS/Lambda",
        &[("FunctionName", func.as_str())],
        "Errors",
        3.0,
    )
    .await;
    put(
        &cw,
        "AWS/Lambda",
        &[("FunctionName", func.as_str())],
        "Invocations",
        10.0,
    )
    .await;

    let q = switchyard(
        m,
        h,
        &[
            "metrics",
            "query",
            "--api-name",
            &api,
            "--metric",
            "Count",
            "--window",
            "5m",
            "--json",
        ],
    )
    .await;
    let j = q.ok().json();
    assert_eq!(j["metric"]["namespace"], "AWS/ApiGateway");
    assert_eq!(j["metric"]["stat"], "Sum");
    assert_eq!(j["total"], 1000.0);
    let q = switchyard(
        m,
        h,
        &[
            "metrics",
            "query",
            "--function",
            &func,
            "--metric",
            "Errors",
        ],
    )
    .await;
    assert!(
        q.ok().stdout.contains("Sum over the window: 3"),
        "{}",
        q.stdout
    );

    // 5 errors / 1000 requests = 0.5%.
    let pass = switchyard(
        m,
        h,
        &[
            "metrics",
            "gate",
            "--api-name",
            &api,
            "--max-error-rate",
            "1",
            "--window",
            "5m",
        ],
    )
    .await;
    pass.expect_code(0);
    assert!(
        pass.stdout.starts_with("PASS: error rate 0.500%"),
        "{}",
        pass.stdout
    );
    let fail = switchyard(
        m,
        h,
        &[
            "metrics",
            "gate",
            "--api-name",
            &api,
            "--max-error-rate",
            "0.1",
            "--window",
            "5m",
            "--json",
        ],
    )
    .await;
    fail.expect_code(1);
    let j = fail.json();
    assert_eq!(j["pass"], false);
    assert_eq!(j["errors"], 5.0);
    assert_eq!(j["requests"], 1000.0);
    // Latency limit.
    let slow = switchyard(
        m,
        h,
        &[
            "metrics",
            "gate",
            "--api-name",
            &api,
            "--max-error-rate",
            "1",
            "--max-latency-ms",
            "100",
        ],
    )
    .await;
    slow.expect_code(1);
    assert!(
        slow.stdout.contains("latency 120.0 ms is above 100 ms"),
        "{}",
        slow.stdout
    );
    // Lambda: 3 / 10 = 30%.
    switchyard(
        m,
        h,
        &[
            "metrics",
            "gate",
            "--function",
            &func,
            "--max-error-rate",
            "1",
        ],
    )
    .await
    .expect_code(1);
    // No traffic is no evidence: closed.
    let none = unique("idle");
    let r = switchyard(
        m,
        h,
        &[
            "metrics",
            "gate",
            "--api-name",
            &none,
            "--max-error-rate",
            "1",
        ],
    )
    .await;
    r.expect_code(1);
    assert!(r.stdout.contains("only 0 requests"), "{}", r.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_publish_route_counters_on_moto() {
    let m = moto();
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let ns = unique("Switchyard");
    let file = h.join("metrics.txt");
    let text = |n: u32| {
        format!("# TYPE switchyard_requests_total counter\nswitchyard_requests_total{{route=\"api\",status_class=\"2xx\"}} {n}\nswitchyard_up 1\n")
    };
    std::fs::write(&file, text(100)).unwrap();
    let f = file.to_str().unwrap();
    let r = switchyard(
        m,
        h,
        &["metrics", "publish", "--from", f, "--namespace", &ns],
    )
    .await;
    assert!(
        r.ok().stdout.contains("published 0 datapoints"),
        "{}",
        r.stdout
    );
    std::fs::write(&file, text(130)).unwrap();
    let r = switchyard(
        m,
        h,
        &[
            "metrics",
            "publish",
            "--from",
            f,
            "--namespace",
            &ns,
            "--dry-run",
        ],
    )
    .await;
    assert!(
        r.ok().stdout.contains("would publish 1 datapoints"),
        "{}",
        r.stdout
    );
    let r = switchyard(
        m,
        h,
        &["metrics", "publish", "--from", f, "--namespace", &ns],
    )
    .await;
    assert!(r.ok().stdout.contains("+30"), "{}", r.stdout);

    let q = switchyard(
        m,
        h,
        &[
            "metrics",
            "query",
            "--namespace",
            &ns,
            "--dimension",
            "route=api",
            "--dimension",
            "status_class=2xx",
            "--metric",
            "switchyard_requests_total",
            "--stat",
            "Sum",
            "--json",
        ],
    )
    .await;
    assert_eq!(q.ok().json()["total"], 30.0, "{}", q.stdout);
}
