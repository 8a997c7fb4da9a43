//! The dashboard in headless Chromium (Debian `chromium` + `chromium-driver`), driven over the
//! WebDriver protocol: a real click on a route's rollback button, a reason typed into the
//! prompt, and then the data plane answers from the fallback; the charts (series, markers,
//! health) and the per-host table checked through the DOM, with a screenshot saved for a person
//! to look at. Fails (does not skip) when Chromium is missing.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process and one browser session.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(bin).exists(),
                "{bin} is missing: install Debian's chromium and chromium-driver (tests/run does)"
            );
        }
        let port = reserve_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = send(&client(), "GET", &format!("{base}/status"), &[], "").await {
                if r.json()["value"]["ready"] == true {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--window-size=1300,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        }}});
        let r = send(
            &client(),
            "POST",
            &format!("{base}/session"),
            &[("content-type", "application/json")],
            caps.to_string(),
        )
        .await
        .expect("new WebDriver session");
        let session = r.json()["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {}", r.body))
            .to_string();
        Browser {
            driver,
            base,
            session,
            _profile: profile,
        }
    }

    /// One WebDriver command; returns its `value`, or the error's JSON as `Err`.
    async fn cmd(&self, method: &str, path: &str, body: Value) -> Result<Value, Value> {
        let url = format!("{}/session/{}{}", self.base, self.session, path);
        let body = if method == "GET" {
            String::new()
        } else {
            body.to_string()
        };
        let r = send(
            &client(),
            method,
            &url,
            &[("content-type", "application/json")],
            body,
        )
        .await
        .expect("WebDriver call");
        let v = r.json()["value"].clone();
        if r.status == 200 {
            Ok(v)
        } else {
            Err(v)
        }
    }

    async fn must(&self, method: &str, path: &str, body: Value) -> Value {
        self.cmd(method, path, body.clone())
            .await
            .unwrap_or_else(|e| panic!("{method} {path} {body}: {e}"))
    }

    /// The element matching `css`, if the page has one now.
    async fn try_find(&self, css: &str) -> Option<String> {
        let v = self
            .cmd(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await
            .ok()?;
        Some(
            v[ELEMENT]
                .as_str()
                .unwrap_or_else(|| panic!("find {css:?}: {v}"))
                .to_string(),
        )
    }

    /// Waits up to `secs` for an element matching `css`.
    async fn find(&self, css: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(e) = self.try_find(css).await {
                return e;
            }
            assert!(Instant::now() < deadline, "no element {css:?} on the page");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn text(&self, css: &str) -> String {
        let e = self.find(css, 10).await;
        self.must("GET", &format!("/element/{e}/text"), json!({}))
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    async fn attr(&self, css: &str, name: &str) -> String {
        let e = self.find(css, 10).await;
        self.must("GET", &format!("/element/{e}/attribute/{name}"), json!({}))
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// Waits up to `secs` until the text of `css` satisfies `f`.
    async fn wait_text(
        &self,
        css: &str,
        secs: u64,
        what: &str,
        f: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(e) = self.try_find(css).await {
                if let Ok(t) = self
                    .cmd("GET", &format!("/element/{e}/text"), json!({}))
                    .await
                {
                    let t = t.as_str().unwrap_or("").to_string();
                    if f(&t) {
                        return t;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what} in {css:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The result of a JavaScript snippet run in the page (`return ...;`).
    async fn js(&self, script: &str) -> Value {
        self.must(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    /// Waits up to `secs` until `script` returns a truthy value; returns it.
    async fn wait_js(&self, secs: u64, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.js(script).await;
            if !(v.is_null() || v == false || v == 0 || v == "") {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A PNG of the whole window.
    async fn screenshot(&self) -> Vec<u8> {
        let b64 = self.must("GET", "/screenshot", json!({})).await;
        base64_decode(b64.as_str().expect("screenshot is base64 text"))
    }

    async fn quit(mut self) {
        let _ = send(
            &client(),
            "DELETE",
            &format!("{}/session/{}", self.base, self.session),
            &[],
            "",
        )
        .await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Standard base64 (the WebDriver screenshot encoding).
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let data: Vec<u8> = chunk.iter().copied().filter(|&c| c != b'=').collect();
        let mut n = 0u32;
        for (i, &c) in data.iter().enumerate() {
            n |= val(c) << (18 - 6 * i);
        }
        for i in 0..data.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_click_rolls_a_route_back() {
    let new = Origin::start("new").await;
    let legacy = Origin::start("legacy").await;
    let dir = routes_dir(&table(&new, &legacy, SPLIT));
    let p = start(dir.path(), &[]).await;

    // Some traffic, so the page has rates to show.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, url) = (stop.clone(), p.url("/users/1"));
        tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::Relaxed) {
                let _ = send(&c, "GET", &url, &[], "").await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    let b = Browser::start().await;
    b.must("POST", "/url", json!({"url": p.admin_url("/")}))
        .await;
    assert_eq!(b.must("GET", "/title", json!({})).await, "switchyard");
    // Routes with weights, live rates, upstream health, history.
    b.find("tr[data-route=\"users\"] button.rollback", 15).await;
    let w: Value = serde_json::from_str(
        &b.attr("tr[data-route=\"users\"] td.weights", "data-weights")
            .await,
    )
    .unwrap();
    assert_eq!(w, json!({"legacy": 50, "new": 50}));
    b.wait_text(
        "tr[data-route=\"users\"] td.rps",
        15,
        "a request rate above 0",
        |t| t.parse::<f64>().is_ok_and(|x| x > 0.0),
    )
    .await;
    assert_eq!(b.text("tr[data-route=\"orders\"] td.eps").await, "0.0");
    assert!(b.text("tr[data-upstream=\"new\"]").await.contains("up"));
    assert!(b
        .text("#history tr[data-version=\"1\"]")
        .await
        .contains("load"));
    // The route without a fallback has nothing to roll back to.
    let orders = b.find("tr[data-route=\"orders\"] button.rollback", 5).await;
    assert_eq!(
        b.must("GET", &format!("/element/{orders}/enabled"), json!({}))
            .await,
        false
    );

    // Token, click, reason in the prompt, accept.
    let token = b.find("#token", 5).await;
    b.must(
        "POST",
        &format!("/element/{token}/value"),
        json!({"text": TOKEN}),
    )
    .await;
    let button = b.find("tr[data-route=\"users\"] button.rollback", 5).await;
    b.must("POST", &format!("/element/{button}/click"), json!({}))
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let prompt = loop {
        if let Ok(t) = b.cmd("GET", "/alert/text", json!({})).await {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "the rollback button opened no prompt"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        prompt
            .as_str()
            .unwrap()
            .contains("Roll back route \"users\""),
        "{prompt}"
    );
    b.must(
        "POST",
        "/alert/text",
        json!({"text": "clicked in the dashboard"}),
    )
    .await;
    b.must("POST", "/alert/accept", json!({})).await;
    let msg = b
        .wait_text("#msg", 10, "the rollback's result", |t| !t.is_empty())
        .await;
    assert!(msg.contains("Route users rolled back (version 2)"), "{msg}");

    // The data plane answers from the fallback; the history names the actor and the reason.
    assert_eq!(spread(&p, "/users/2", 20).await, (0, 20, 0));
    let h = call(&p, "GET", "/v1/history/2", "").await.json();
    assert_eq!(h["actor"], "admin");
    assert_eq!(h["action"], "rollback");
    assert_eq!(h["reason"], "clicked in the dashboard");
    // The page follows: new weights, the change in its history.
    b.wait_text(
        "#history tr[data-version=\"2\"]",
        10,
        "version 2 in the history",
        |t| t.contains("clicked in the dashboard"),
    )
    .await;
    let w: Value = serde_json::from_str(
        &b.attr("tr[data-route=\"users\"] td.weights", "data-weights")
            .await,
    )
    .unwrap();
    assert_eq!(w, json!({"legacy": 100}));

    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    b.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_draws_charts_markers_and_hosts() {
    let new = Origin::start("new").await;
    let legacy = Origin::start("legacy").await;
    let dir = routes_dir(&table(&new, &legacy, SPLIT));
    let p = start(dir.path(), &[]).await;

    // Steady load on two routes from three hosts, as long as the test runs.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let urls = [p.url("/users/1"), p.url("/orders/1"), p.url("/users/2")];
        tokio::spawn(async move {
            let c = client();
            let hosts = ["api.example.com", "www.example.com", "old-edge.example.com"];
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let _ = send(&c, "GET", &urls[i % 3], &[("host", hosts[i % 3])], "").await;
                i += 1;
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        })
    };
    // History to mark: a ramp, a burst of 5xx from `new` (users falls back, orders fails),
    // then a rollback, a hold and its release.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = call(
        &p,
        "PATCH",
        "/v1/routes/users",
        r#"{"split": {"new": 75, "legacy": 25}, "reason": "ramp to 75"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    tokio::time::sleep(Duration::from_secs(2)).await;
    new.state.set_mode(Mode::Error500);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = call(
        &p,
        "POST",
        "/v1/routes/users/rollback",
        r#"{"reason": "5xx from new"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    new.state.set_mode(Mode::Normal);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = call(
        &p,
        "POST",
        "/v1/hold",
        r#"{"routes": ["orders"], "max_ms": 400, "reason": "db switch"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(call(&p, "POST", "/v1/release", "").await.status, 200);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let b = Browser::start().await;
    b.must(
        "POST",
        "/window/rect",
        json!({"width": 1400, "height": 1500}),
    )
    .await;
    b.must("POST", "/url", json!({"url": p.admin_url("/")}))
        .await;
    // The past is there at once: charts for both busy routes, not for the idle one.
    let users = "div.route-charts[data-route=\"users\"]";
    b.find(&format!("{users} svg[data-chart=\"rate\"]"), 15)
        .await;
    for series in ["upstream:new", "upstream:legacy"] {
        b.find(
            &format!("{users} svg[data-chart=\"rate\"] path.series[data-series=\"{series}\"]"),
            5,
        )
        .await;
    }
    for (chart, series) in [
        ("errors", "errors_5xx"),
        ("errors", "fallbacks"),
        ("p99", "p99_ms"),
        ("p99", "p50_ms"),
    ] {
        let d = b
            .attr(
                &format!("{users} svg[data-chart=\"{chart}\"] path[data-series=\"{series}\"]"),
                "d",
            )
            .await;
        assert!(d.matches('L').count() > 3, "{chart}/{series}: {d}");
    }
    b.find(
        "div.route-charts[data-route=\"orders\"] svg[data-chart=\"errors\"]",
        5,
    )
    .await;
    assert!(b
        .try_find("div.route-charts[data-route=\"static\"]")
        .await
        .is_none());
    assert!(b.text("#charts-note").await.contains("static"));
    // The 5xx burst is in the error series: its line rises above the baseline somewhere.
    let rises = b
        .js(r#"const p = document.querySelector('div.route-charts[data-route="orders"] svg[data-chart="errors"] path[data-series="errors_5xx"]');
               const ys = p.getAttribute('d').split(/[ML]/).filter(Boolean).map(s => +s.split(',')[1]);
               return Math.max(...ys) - Math.min(...ys);"#)
        .await;
    assert!(rises.as_f64().unwrap() > 20.0, "{rises}");

    // A marker per version in the history, on every route chart, same x on each.
    let history = call(&p, "GET", "/v1/history", "").await.json();
    let versions: Vec<u64> = history["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [3, 2, 1]);
    for v in &versions {
        let xs = b
            .wait_js(
                10,
                &format!("markers of version {v}"),
                &format!(
                    r#"const m = [...document.querySelectorAll('div.route-charts svg g.marker[data-kind="version"][data-version="{v}"] line.vis')];
                       return m.length >= 6 ? m.map(l => l.getAttribute('x1')) : null;"#
                ),
            )
            .await;
        let xs: Vec<String> = serde_json::from_value(xs).unwrap();
        assert!(xs.iter().all(|x| *x == xs[0]), "version {v}: {xs:?}");
    }
    for kind in ["hold", "release"] {
        b.find(
            &format!("{users} svg[data-chart=\"rate\"] g.marker[data-kind=\"{kind}\"]"),
            10,
        )
        .await;
    }
    // Hovering a marker says what it stands for; so does clicking.
    // A real click (pointer events at the marker's position): the charts are redrawn with each
    // new sample, so an element reference could go stale before a WebDriver element click.
    let at = b
        .js(&format!(
            r#"const r = document.querySelector('{users} svg[data-chart="p99"] g.marker[data-version="3"] rect.hit');
               r.scrollIntoView({{block: "center"}});
               const b = r.getBoundingClientRect();
               return [Math.round(b.x + b.width / 2), Math.round(b.y + b.height / 2)];"#
        ))
        .await;
    b.must(
        "POST",
        "/actions",
        json!({"actions": [{"type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"},
            "actions": [
                {"type": "pointerMove", "duration": 0, "x": at[0], "y": at[1], "origin": "viewport"},
                {"type": "pointerDown", "button": 0},
                {"type": "pointerUp", "button": 0},
            ]}]}),
    )
    .await;
    let info = b
        .wait_text("#marker-info", 5, "the marker's details", |t| {
            t.contains("Version 3")
        })
        .await;
    assert!(
        info.contains("rollback by admin") && info.contains("5xx from new"),
        "{info}"
    );
    let title = b
        .js(r#"return document.querySelector('g.marker[data-kind="hold"] title').textContent;"#)
        .await;
    assert!(
        title.as_str().unwrap().contains("Hold of orders by admin"),
        "{title}"
    );

    // Health over time for each upstream.
    for u in ["new", "legacy"] {
        b.find(
            &format!(
                "svg[data-chart=\"health\"][data-upstream=\"{u}\"] rect.state[data-state=\"up\"]"
            ),
            10,
        )
        .await;
    }
    // Per-host table with a sparkline per host.
    for h in ["api.example.com", "www.example.com", "old-edge.example.com"] {
        let n = b
            .wait_text(
                &format!("#hosts tr[data-host=\"{h}\"] td.in-window"),
                10,
                "a request count",
                |t| t.parse::<u64>().is_ok_and(|n| n > 10),
            )
            .await;
        assert!(n.parse::<u64>().unwrap() > 10);
        b.find(&format!("#hosts tr[data-host=\"{h}\"] svg.spark rect"), 5)
            .await;
        assert!(b
            .text(&format!("#hosts tr[data-host=\"{h}\"] td.last-seen"))
            .await
            .ends_with("s ago"));
    }
    b.find("#hosts tr[data-host=\"(other)\"]", 5).await;

    // It updates live: the newest sample moves on.
    let last = "return Math.max(...Object.keys(S.routes.users.requests).map(Number));";
    let before = b.js(last).await.as_u64().unwrap();
    b.wait_js(
        10,
        "a newer sample",
        &format!(
            "return Math.max(...Object.keys(S.routes.users.requests).map(Number)) > {before};"
        ),
    )
    .await;

    let png = b.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-charts.png");
    std::fs::write(&path, &png).unwrap();
    eprintln!("dashboard screenshot: {}", path.display());

    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    b.quit().await;
}

// ---- Migration plans (src/admin/plans.rs): the running plan and its Abort button ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_a_running_plan_approves_it_and_its_abort_button_rolls_back() {
    let new = Origin::start("new").await;
    let legacy = Origin::start("legacy").await;
    let dir = routes_dir(&table(&new, &legacy, SPLIT));
    let p = start(dir.path(), &[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, url) = (stop.clone(), p.url("/users/1"));
        tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::Relaxed) {
                let _ = send(&c, "GET", &url, &[], "").await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    // Not beside the route files: the proxy would try to load it.
    let plans = tempfile::tempdir().unwrap();
    let plan = plans.path().join("dash.toml");
    std::fs::write(
        &plan,
        format!(
            "name = \"dash\"\nadmin = \"http://{}\"\nroute = \"users\"\nto = \"new\"\nfrom = \"legacy\"\ninterval = \"500ms\"\n\
             [[gates]]\nkind = \"error_rate\"\nmax = 0.5\nmin_requests = 1\n\
             [[steps]]\napprove = true\ntimeout = \"120s\"\n\
             [[steps]]\nweight = 30\nbake = \"120s\"\n",
            p.admin
        ),
    )
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut runner = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["plan", "run", "--json"])
        .arg(&plan)
        .env("SWITCHYARD_ADMIN_TOKEN", TOKEN)
        .env("SWITCHYARD_STATE_DIR", state.path())
        .env_remove("SWITCHYARD_ADMIN")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the plan runner");

    let b = Browser::start().await;
    b.must("POST", "/url", json!({"url": p.admin_url("/")}))
        .await;
    let row = "tr[data-plan=\"dash\"]";
    b.find(&format!("{row} button.abort"), 20).await;
    b.wait_text(
        &format!("{row} td.status"),
        15,
        "waiting for approval",
        |t| t == "waiting_approval",
    )
    .await;
    let token = b.find("#token", 5).await;
    b.must(
        "POST",
        &format!("/element/{token}/value"),
        json!({"text": TOKEN}),
    )
    .await;
    // Approve: a confirmation, then the plan goes on to its weight step.
    let approve = b.find(&format!("{row} button.approve"), 5).await;
    b.must("POST", &format!("/element/{approve}/click"), json!({}))
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let confirm = loop {
        if let Ok(t) = b.cmd("GET", "/alert/text", json!({})).await {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "the approve button asked nothing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        confirm
            .as_str()
            .unwrap()
            .contains("Approve step 1 of plan \"dash\""),
        "{confirm}"
    );
    b.must("POST", "/alert/accept", json!({})).await;
    b.wait_text(&format!("{row} td.step"), 15, "the weight step", |t| {
        t.contains("2/2 weight 30%")
    })
    .await;
    assert!(!b
        .must("GET", &format!("/element/{approve}/displayed"), json!({}))
        .await
        .as_bool()
        .unwrap());
    b.wait_text(
        &format!("{row} .gate[data-gate=\"error_rate\"]"),
        20,
        "the error_rate gate's figure",
        |t| t.contains("(limit 0.5) pass"),
    )
    .await;
    assert!(b.text(&format!("{row} td.bake")).await.contains("s left"));
    assert_eq!(b.text(&format!("{row} td.weight")).await, "30%");

    let button = b.find(&format!("{row} button.abort"), 5).await;
    b.must("POST", &format!("/element/{button}/click"), json!({}))
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let prompt = loop {
        if let Ok(t) = b.cmd("GET", "/alert/text", json!({})).await {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "the abort button opened no prompt"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        prompt.as_str().unwrap().contains("Abort plan \"dash\""),
        "{prompt}"
    );
    b.must("POST", "/alert/text", json!({"text": "from the dashboard"}))
        .await;
    b.must("POST", "/alert/accept", json!({})).await;
    let msg = b
        .wait_text("#msg", 10, "the abort's result", |t| !t.is_empty())
        .await;
    assert!(
        msg.contains("Plan dash aborted: route users sent back to legacy"),
        "{msg}"
    );
    assert_eq!(spread(&p, "/users/2", 20).await, (0, 20, 0));
    let h = call(&p, "GET", "/v1/history?limit=1", "").await.json();
    assert_eq!(
        h["versions"][0]["reason"],
        "abort plan dash: from the dashboard"
    );
    b.wait_text(&format!("{row} td.status"), 10, "aborted", |t| {
        t.starts_with("aborted")
    })
    .await;
    let status = tokio::time::timeout(Duration::from_secs(20), runner.wait())
        .await
        .expect("the runner stops after the abort")
        .unwrap();
    assert_eq!(status.code(), Some(1));

    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    b.quit().await;
}

// ---- Shadow traffic: each shadowed route shows its match rate -----------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_the_shadow_match_rate_of_a_route() {
    let new = Origin::start("new").await;
    let legacy = Origin::start("legacy").await;
    // `static` (on legacy) is copied to `new`, whose answers differ: they name the origin.
    let routes = table(&new, &legacy, SPLIT).replace(
        "path = \"/static/*\"\nto = \"legacy\"\n",
        "path = \"/static/*\"\nto = \"legacy\"\nshadow = { upstream = \"new\", percent = 100 }\n",
    );
    assert!(routes.contains("shadow ="), "{routes}");
    let dir = routes_dir(&routes);
    let p = start(dir.path(), &[]).await;
    let c = client();
    for i in 0..12 {
        let r = send(&c, "GET", &p.url(&format!("/static/{i}")), &[], "")
            .await
            .unwrap();
        assert_eq!(r.origin(), "legacy");
    }
    wait_for(10, "12 compared copies", || async {
        let j = call(&p, "GET", "/v1/shadow/static", "").await.json();
        j["routes"]["static"]["counts"]["body_mismatch"] == 12
    })
    .await;

    let b = Browser::start().await;
    b.must("POST", "/url", json!({"url": p.admin_url("/")}))
        .await;
    let badge = "#routes tr[data-route=\"static\"] span.shadow[data-shadow-route=\"static\"]";
    let text = b
        .wait_text(badge, 15, "the shadow badge", |t| t.contains("% match"))
        .await;
    assert_eq!(text, "shadow to new: 0.0% match of 12", "{text}");
    assert!(b.attr(badge, "class").await.contains("bad"));
    // Routes without a shadow option get no badge.
    assert!(b
        .try_find("#routes tr[data-route=\"users\"] span.shadow")
        .await
        .is_none());
    b.quit().await;
}
