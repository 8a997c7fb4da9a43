//! The dashboard in headless Chromium (Debian `chromium` + `chromium-driver`), driven over the
//! WebDriver protocol: a real click on a route's rollback button, a reason typed into the
//! prompt, and then the data plane answers from the fallback. Fails (does not skip) when
//! Chromium is missing.

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
