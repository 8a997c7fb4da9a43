//! Migration plans against the built binary: a real proxy with loopback origins, plan runners
//! as separate processes (`switchyard plan run --json`, events read line by line), moto for
//! the CloudWatch gate, and a tiny loopback server answering like Prometheus' HTTP API (no
//! Prometheus package is installed).

mod common;
#[allow(dead_code)]
#[path = "aws/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio::io::AsyncBufReadExt;

/// The token every test proxy accepts (actor `admin`).
const TOKEN: &str = "plan-test-token-41c9d2";

async fn start(dir: &Path) -> Proxy {
    Proxy::start_env(dir, &[], &[("SWITCHYARD_ADMIN_TOKEN", TOKEN)]).await
}

/// `users` on legacy (new at 0%), legacy as fallback; `orders` on legacy.
fn routes(new: &Origin, legacy: &Origin) -> String {
    format!(
        "[upstreams.new]\naddrs = [\"{}\"]\nconnect_timeout_ms = 10000\n\
         [upstreams.legacy]\naddrs = [\"{}\"]\nconnect_timeout_ms = 10000\n\
         [[routes]]\nid = \"users\"\npath = \"/users/*\"\nsplit = {{ new = 0, legacy = 100 }}\nfallback = \"legacy\"\n\
         [[routes]]\nid = \"orders\"\npath = \"/orders/*\"\nto = \"legacy\"\n",
        new.addr, legacy.addr
    )
}

/// A plan file for `users` from legacy to new on proxy `p`, with `body` after the header.
/// The file goes to `dir/plans/`, not beside the route files (the proxy would try to load it).
fn plan_file(dir: &Path, name: &str, p: &Proxy, interval: &str, body: &str) -> PathBuf {
    let dir = dir.join("plans");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        "name = \"{name}\"\nadmin = \"http://{}\"\nroute = \"users\"\nto = \"new\"\nfrom = \"legacy\"\ninterval = \"{interval}\"\n{body}",
        p.admin
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A `switchyard` command with the test token, a private state directory and nothing from
/// the developer's environment that would change where it goes.
fn cmd(state: &Path, args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"));
    c.args(args)
        .env("SWITCHYARD_ADMIN_TOKEN", TOKEN)
        .env("SWITCHYARD_STATE_DIR", state)
        .env("SWITCHYARD_LOG", "warn")
        .env_remove("SWITCHYARD_ADMIN")
        .env_remove("AWS_ENDPOINT_URL")
        .stdin(Stdio::null());
    c
}

/// A finished command.
#[derive(Debug)]
struct Done {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn run(state: &Path, args: &[&str]) -> Done {
    let out = tokio::time::timeout(Duration::from_secs(120), cmd(state, args).output())
        .await
        .expect("command did not finish within 120 s")
        .expect("run switchyard");
    Done {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A plan runner in the background; its JSON events are collected as they come.
struct Runner {
    child: tokio::process::Child,
    events: Arc<Mutex<Vec<Value>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Runner {
    fn start(state: &Path, args: &[&str], env: &[(&str, &str)]) -> Runner {
        let mut c = cmd(state, args);
        c.envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = c.spawn().expect("start the plan runner");
        let stdout = child.stdout.take().unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let ev = events.clone();
        let reader = tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                let v: Value = serde_json::from_str(&l)
                    .unwrap_or_else(|e| panic!("event is not JSON ({e}): {l}"));
                ev.lock().unwrap().push(v);
            }
        });
        Runner {
            child,
            events,
            reader,
        }
    }

    fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    /// Waits up to `secs` for an event satisfying `f`.
    async fn wait_event(&self, secs: u64, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(e) = self.events().into_iter().find(|e| f(e)) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} event within {secs} s; events: {:#?}",
                self.events()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the process to end (at most `secs`): exit code and stderr.
    async fn finish(mut self, secs: u64) -> (i32, String, Vec<Value>) {
        let status = tokio::time::timeout(Duration::from_secs(secs), self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the runner did not end within {secs} s; events: {:#?}",
                    self.events()
                )
            })
            .unwrap();
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            use tokio::io::AsyncReadExt;
            let _ = e.read_to_string(&mut err).await;
        }
        let _ = (&mut self.reader).await;
        (status.code().unwrap_or(-1), err, self.events())
    }

    fn kill9(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Requests to `/users/N` every few ms until dropped.
struct Load {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl Load {
    fn start(p: &Proxy) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, url) = (stop.clone(), p.url("/users/1"));
        let task = tokio::spawn(async move {
            let c = client();
            let mut n = 0;
            while !s.load(Ordering::Relaxed) {
                let _ = send(&c, "GET", &url, &[], "").await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            n
        });
        Load { stop, task }
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// `users` is back on legacy: 100% there, nothing on new.
async fn assert_on_legacy(p: &Proxy) {
    let w = users_weights(p).await;
    assert_eq!(w["legacy"], 100.0, "{w}");
    assert!(w["new"].is_null() || w["new"] == 0.0, "{w}");
}

async fn admin_json(p: &Proxy, path: &str) -> Value {
    get(&p.admin_url(path)).await.json()
}

/// Percent of `users` on each upstream, from `GET /v1/table`.
async fn users_weights(p: &Proxy) -> Value {
    let t = admin_json(p, "/v1/table").await;
    t["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "users")
        .unwrap()["weights"]
        .clone()
}

/// The history, oldest first.
async fn history(p: &Proxy) -> Vec<Value> {
    let mut v = admin_json(p, "/v1/history?limit=100").await["versions"]
        .as_array()
        .unwrap()
        .clone();
    v.reverse();
    v
}

fn step_done_weights(events: &[Value]) -> Vec<f64> {
    events
        .iter()
        .filter(|e| e["event"] == "step_done")
        .filter_map(|e| e["weight"].as_f64())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_completes_with_each_weight_in_order_and_the_plan_as_actor() {
    let new = Origin::start("new").await;
    let legacy = Origin::start("legacy").await;
    let dir = routes_dir(&routes(&new, &legacy));
    let p = start(dir.path()).await;
    let state = tempfile::tempdir().unwrap();
    let plan = plan_file(
        dir.path(),
        "users-to-new",
        &p,
        "500ms",
        "[[gates]]\nkind = \"error_rate\"\nmax = 0.05\nmin_requests = 5\n\
         [[gates]]\nkind = \"latency_p99\"\nmax_ms = 2000\nmin_requests = 5\n\
         [[steps]]\nweight = 10\nbake = \"1s\"\n[[steps]]\nweight = 50\nbake = \"1s\"\n\
         [[steps]]\nweight = 100\nbake = \"1s\"\n",
    );
    let load = Load::start(&p);
    let r = Runner::start(
        state.path(),
        &["plan", "run", "--json", plan.to_str().unwrap()],
        &[],
    );
    let (code, err, events) = r.finish(60).await;
    load.stop().await;
    assert_eq!(code, 0, "stderr: {err}\nevents: {events:#?}");
    assert_eq!(step_done_weights(&events), vec![10.0, 50.0, 100.0]);
    // Gates were evaluated with figures and thresholds, and passed.
    let progress: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "progress" && e["gates"].is_array())
        .collect();
    assert!(!progress.is_empty(), "{events:#?}");
    for e in &progress {
        for g in e["gates"].as_array().unwrap() {
            assert!(g["threshold"].is_number(), "{g}");
            assert_ne!(g["verdict"], "fail", "{g}");
        }
    }
    assert!(progress
        .iter()
        .any(|e| e["gates"][0]["verdict"] == "pass" && e["gates"][0]["figure"].is_number()));
    // The history: one change per step, in order, by the plan (next to the token's name).
    let h = history(&p).await;
    let changes: Vec<&Value> = h.iter().filter(|v| v["action"] != "load").collect();
    assert_eq!(changes.len(), 3, "{h:#?}");
    for (c, (w, n)) in changes.iter().zip([(10, 1), (50, 2), (100, 3)]) {
        assert_eq!(c["actor"], "admin (plan:users-to-new)", "{c}");
        let reason = c["reason"].as_str().unwrap();
        assert!(
            reason.contains(&format!("step {n}/3")) && reason.contains(&format!("weight {w}%")),
            "{reason}"
        );
    }
    // The data plane: everything on new now; new answered while the plan ran.
    assert_eq!(users_weights(&p).await["new"], 100.0);
    let c = client();
    for _ in 0..10 {
        assert_eq!(
            send(&c, "GET", &p.url("/users/9"), &[], "")
                .await
                .unwrap()
                .origin(),
            "new"
        );
    }
    // The plan's state as the admin API and `plan status` show it.
    let v = admin_json(&p, "/v1/plans/users-to-new").await;
    assert_eq!(v["report"]["status"], "completed");
    let s = run(
        state.path(),
        &["plan", "status", "--admin", &p.admin_url("")],
    )
    .await;
    assert_eq!(s.code, 0, "{s:?}");
    assert!(
        s.stdout.contains("users-to-new") && s.stdout.contains("completed"),
        "{}",
        s.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_failing_mid_bake_is_rolled_back_at_the_next_gate_evaluation() {
    let new = Origin::start("new").await;
    let legacy = Origin::start("legacy").await;
    let dir = routes_dir(&routes(&new, &legacy));
    let p = start(dir.path()).await;
    let state = tempfile::tempdir().unwrap();
    let plan = plan_file(
        dir.path(),
        "fails",
        &p,
        "1s",
        "[[gates]]\nkind = \"error_rate\"\nmax = 0.1\nmin_requests = 5\n\
         [[steps]]\nweight = 50\nbake = \"60s\"\n",
    );
    let load = Load::start(&p);
    let r = Runner::start(
        state.path(),
        &["plan", "run", "--json", plan.to_str().unwrap()],
        &[],
    );
    // A passing evaluation first: the backend is healthy at 50%.
    r.wait_event(30, "a passing gate", |e| {
        e["event"] == "progress" && e["gates"][0]["verdict"] == "pass"
    })
    .await;
    let before = r
        .events()
        .iter()
        .filter(|e| e["event"] == "progress")
        .count();
    new.state.set_mode(Mode::Error500);
    let failed_at = Instant::now();
    // The client still sees 200s (the fallback answers): the gate judges new's attempts.
    let c = client();
    assert_eq!(
        send(&c, "GET", &p.url("/users/2"), &[], "")
            .await
            .unwrap()
            .status,
        200
    );
    let (code, err, events) = r.finish(30).await;
    let took = failed_at.elapsed();
    load.stop().await;
    assert_eq!(code, 1, "stderr: {err}");
    assert!(err.contains("gate error_rate"), "{err}");
    assert!(err.contains("step 1/1 (weight 50%)"), "{err}");
    assert!(err.contains("limit 0.1"), "{err}");
    // At most two evaluations after the failure began: the one whose window straddles the
    // switch, and the next; with a 1 s interval that is within one interval plus a second.
    let after = events.iter().filter(|e| e["event"] == "progress").count() - before;
    assert!(
        after <= 2,
        "{after} evaluations after the failure: {events:#?}"
    );
    eprintln!("rolled back {took:?} after the backend started failing");
    let last = events.last().unwrap();
    assert_eq!(last["event"], "rolled_back");
    assert_on_legacy(&p).await;
    let h = history(&p).await;
    let rb = h.last().unwrap();
    assert_eq!(rb["actor"], "admin (plan:fails)");
    assert!(
        rb["reason"].as_str().unwrap().contains("gate error_rate"),
        "{rb}"
    );
    assert_eq!(
        admin_json(&p, "/v1/plans/fails").await["report"]["status"],
        "rolled_back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_gate_rolls_back_a_slow_backend() {
    let new = Origin::start("new").await;
    let legacy = Origin::start("legacy").await;
    new.state.delay_ms.store(300, Ordering::SeqCst);
    let dir = routes_dir(&routes(&new, &legacy));
    let p = start(dir.path()).await;
    let state = tempfile::tempdir().unwrap();
    let plan = plan_file(
        dir.path(),
        "slow",
        &p,
        "1s",
        "[[gates]]\nkind = \"latency_p99\"\nmax_ms = 100\nmin_requests = 2\n\
         [[steps]]\nweight = 100\nbake = \"60s\"\n",
    );
    let load = Load::start(&p);
    let r = Runner::start(
        state.path(),
        &["plan", "run", "--json", plan.to_str().unwrap()],
        &[],
    );
    let (code, err, events) = r.finish(40).await;
    load.stop().await;
    assert_eq!(code, 1, "stderr: {err}\n{events:#?}");
    assert!(err.contains("gate latency_p99"), "{err}");
    let g = &events.last().unwrap()["gates"][0];
    assert_eq!(g["verdict"], "fail");
    assert!(g["figure"].as_f64().unwrap() > 250.0, "{g}");
    assert_eq!(g["threshold"], 100.0);
    assert_on_legacy(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_requests_gives_no_verdict_on_three_requests() {
    let new = Origin::start("new").await;
    let legacy = Origin::start("legacy").await;
    new.state.set_mode(Mode::Error500);
    let dir = routes_dir(&routes(&new, &legacy));
    let p = start(dir.path()).await;
    let state = tempfile::tempdir().unwrap();
    let plan = plan_file(
        dir.path(),
        "quiet",
        &p,
        "1s",
        "[[gates]]\nkind = \"error_rate\"\nmax = 0.01\nmin_requests = 20\nwindow = \"4s\"\n\
         [[steps]]\nweight = 100\nbake = \"4s\"\n",
    );
    let r = Runner::start(
        state.path(),
        &["plan", "run", "--json", plan.to_str().unwrap()],
        &[],
    );
    r.wait_event(20, "the bake", |e| e["event"] == "progress")
        .await;
    // Three requests, each a failed attempt at new (then answered by legacy).
    let c = client();
    for _ in 0..3 {
        let resp = send(&c, "GET", &p.url("/users/3"), &[], "").await.unwrap();
        assert_eq!(resp.origin(), "legacy");
    }
    let (code, err, events) = r.finish(30).await;
    assert_eq!(code, 0, "stderr: {err}\n{events:#?}");
    let seen: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "progress" && e["gates"].is_array())
        .flat_map(|e| e["gates"].as_array().unwrap())
        .collect();
    assert!(seen.iter().all(|g| g["verdict"] == "pending"), "{seen:#?}");
    assert!(
        seen.iter()
            .any(|g| g["detail"].as_str().unwrap().starts_with("3 attempts")),
        "{seen:#?}"
    );
    // The proxy counted the failed attempts of new although every client got a 200.
    let m = get(&p.admin_url("/metrics")).await.body;
    assert_eq!(
        metric(
            &m,
            "switchyard_upstream_attempts_total{outcome=\"5xx\",route=\"users\",upstream=\"new\"}"
        ),
        3.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_from_another_process_rolls_back_during_a_bake() {
    let new = Origin::start("new").await;
    let legacy = Origin::start("legacy").await;
    let dir = routes_dir(&routes(&new, &legacy));
    let p = start(dir.path()).await;
    let state = tempfile::tempdir().unwrap();
    let plan = plan_file(
        dir.path(),
        "long",
        &p,
        "1s",
        "[[gates]]\nkind = \"error_rate\"\nmax = 0.5\nmin_requests = 5\n\
         [[steps]]\nweight = 50\nbake = \"60s\"\n[[steps]]\nweight = 100\nbake = \"60s\"\n",
    );
    let r = Runner::start(
        state.path(),
        &["plan", "run", "--json", plan.to_str().unwrap()],
        &[],
    );
    r.wait_event(20, "the bake", |e| e["event"] == "progress")
        .await;
    assert_eq!(users_weights(&p).await["new"], 50.0);
    let other = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let a = run(
        other.path(),
        &[
            "plan",
            "abort",
            "long",
            "--reason",
            "pager went off",
            "--admin",
            &p.admin_url(""),
        ],
    )
    .await;
    // The abort itself rolled back: the route is on legacy as soon as the command returns.
    assert_eq!(a.code, 0, "{a:?}");
    assert!(
        a.stdout.contains("route users sent back to legacy"),
        "{}",
        a.stdout
    );
    eprintln!(
        "`plan abort` (a process) returned {:?} after it started, the route rolled back",
        t0.elapsed()
    );
    assert_on_legacy(&p).await;
    let h = history(&p).await;
    let last = h.last().unwrap();
    assert_eq!(last["actor"], "admin");
    assert_eq!(last["reason"], "abort plan long: pager went off");
    // The runner notices and stops, without setting any other weight.
    let (code, err, events) = r.finish(20).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("aborted by admin"), "{err}");
    assert_eq!(events.last().unwrap()["event"], "aborted");
    assert_eq!(history(&p).await.len(), h.len());
    assert_eq!(
        admin_json(&p, "/v1/plans/long").await["report"]["status"],
        "aborted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_then_resume_completes_without_repeating_a_step() {
    let new = Origin::start("new").await;
    let legacy = Origin::start("legacy").await;
    let dir = routes_dir(&routes(&new, &legacy));
    let p = start(dir.path()).await;
    let state = tempfile::tempdir().unwrap();
    let plan = plan_file(
        dir.path(),
        "crashy",
        &p,
        "500ms",
        "[[steps]]\nweight = 10\nbake = \"1s\"\n[[steps]]\nweight = 50\nbake = \"4s\"\n\
         [[steps]]\nweight = 100\nbake = \"1s\"\n",
    );
    let mut r = Runner::start(
        state.path(),
        &["plan", "run", "--json", plan.to_str().unwrap()],
        &[],
    );
    r.wait_event(30, "step 2 started", |e| {
        e["event"] == "step_started" && e["step"] == 1
    })
    .await;
    wait_for_weight(&p, 50.0).await;
    r.kill9();
    let (code, _, _) = r.finish(10).await;
    assert_ne!(code, 0);
    let j: Value = serde_json::from_str(
        &std::fs::read_to_string(state.path().join("plans/crashy.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(j["status"], "running");
    assert_eq!(j["step"], 1);
    // A second `run` is refused: the journal says resume.
    let again = run(state.path(), &["plan", "run", plan.to_str().unwrap()]).await;
    assert_eq!(again.code, 2, "{again:?}");
    assert!(
        again.stderr.contains("plan resume crashy"),
        "{}",
        again.stderr
    );
    let r = Runner::start(state.path(), &["plan", "resume", "--json", "crashy"], &[]);
    let (code, err, events) = r.finish(60).await;
    assert_eq!(code, 0, "{err}\n{events:#?}");
    assert_eq!(events[0]["event"], "plan_resumed");
    assert_eq!(step_done_weights(&events), vec![50.0, 100.0]);
    // Each weight was set exactly once.
    let h = history(&p).await;
    let reasons: Vec<&str> = h
        .iter()
        .filter(|v| v["action"] != "load")
        .map(|v| v["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:#?}");
    assert!(
        reasons[1].contains("weight 50%") && reasons[2].contains("weight 100%"),
        "{reasons:#?}"
    );
    assert_eq!(users_weights(&p).await["new"], 100.0);
}

async fn wait_for_weight(p: &Proxy, w: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while users_weights(p).await["new"].as_f64() != Some(w) {
        assert!(Instant::now() < deadline, "users never reached {w}% on new");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_step_waits_until_approved() {
    let new = Origin::start("new").await;
    let legacy = Origin::start("legacy").await;
    let dir = routes_dir(&routes(&new, &legacy));
    let p = start(dir.path()).await;
    let state = tempfile::tempdir().unwrap();
    let plan = plan_file(
        dir.path(),
        "gated",
        &p,
        "500ms",
        "[[steps]]\nweight = 10\nbake = \"500ms\"\n[[steps]]\napprove = true\n\
         [[steps]]\nweight = 100\nbake = \"500ms\"\n",
    );
    let r = Runner::start(
        state.path(),
        &["plan", "run", "--json", plan.to_str().unwrap()],
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = admin_json(&p, "/v1/plans/gated").await;
        if v["report"]["status"] == "waiting_approval" {
            break;
        }
        assert!(Instant::now() < deadline, "never waited for approval: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(users_weights(&p).await["new"], 10.0);
    assert!(!r
        .events()
        .iter()
        .any(|e| e["event"] == "step_done" && e["step"] == 1));
    let a = run(state.path(), &["plan", "approve", "gated"]).await;
    assert_eq!(a.code, 0, "{a:?}");
    let (code, err, events) = r.finish(30).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(step_done_weights(&events), vec![10.0, 10.0, 100.0]);
    assert_eq!(users_weights(&p).await["new"], 100.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_changes_nothing() {
    let new = Origin::start("new").await;
    let legacy = Origin::start("legacy").await;
    let dir = routes_dir(&routes(&new, &legacy));
    let p = start(dir.path()).await;
    let state = tempfile::tempdir().unwrap();
    let plan = plan_file(
        dir.path(),
        "dry",
        &p,
        "1s",
        "[[gates]]\nkind = \"error_rate\"\nmax = 0.02\n\
         [[steps]]\nweight = 5\nbake = \"2m\"\n[[steps]]\napprove = true\n\
         [[steps]]\nweight = 100\nbake = \"10m\"\n",
    );
    let before = users_weights(&p).await;
    let d = run(
        state.path(),
        &["plan", "run", "--dry-run", plan.to_str().unwrap()],
    )
    .await;
    assert_eq!(d.code, 0, "{d:?}");
    assert!(
        d.stdout
            .contains("at +0s: set users to new=5 legacy=95, bake 2m"),
        "{}",
        d.stdout
    );
    assert!(
        d.stdout
            .contains("at +2m: wait for `switchyard plan approve dry`"),
        "{}",
        d.stdout
    );
    assert!(
        d.stdout
            .contains("at +2m: set users to new=100 legacy=0, bake 10m"),
        "{}",
        d.stdout
    );
    assert_eq!(history(&p).await.len(), 1);
    assert_eq!(users_weights(&p).await, before);
    assert_eq!(
        admin_json(&p, "/v1/plans").await["plans"],
        serde_json::json!([])
    );
    assert!(!state.path().join("plans").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_plans_are_refused_with_every_error_before_anything_changes() {
    let new = Origin::start("new").await;
    let legacy = Origin::start("legacy").await;
    let dir = routes_dir(&routes(&new, &legacy));
    let p = start(dir.path()).await;
    let state = tempfile::tempdir().unwrap();
    let path = |name: &str| {
        dir.path()
            .join("plans")
            .join(name)
            .to_str()
            .unwrap()
            .to_string()
    };

    // A typo: unknown key, with its line.
    let typo = plan_file(
        dir.path(),
        "typo",
        &p,
        "1s",
        "[[steps]]\nweight = 5\nbaek = \"1m\"\n",
    );
    let r = run(state.path(), &["plan", "run", typo.to_str().unwrap()]).await;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("typo.toml:9: unknown field `baek`"),
        "{}",
        r.stderr
    );

    // Bad values: every one named.
    plan_file(
        dir.path(),
        "values",
        &p,
        "10s",
        "[[steps]]\nweight = 120\nbake = \"1m\"\n[[steps]]\nweight = -5\nbake = \"1m\"\n\
         [[steps]]\nweight = 50\nbake = \"2s\"\n",
    );
    let r = run(state.path(), &["plan", "check", &path("values.toml")]).await;
    assert_eq!(r.code, 2, "{r:?}");
    for want in [
        "values.toml:8: steps[0].weight: 120 is not a percentage",
        "values.toml:11: steps[1].weight: -5 is not a percentage",
        "values.toml:15: steps[2].bake: 2s is shorter than the gate interval (10s)",
    ] {
        assert!(
            r.stderr.contains(want),
            "{want:?} missing in:\n{}",
            r.stderr
        );
    }

    // Unknown route and upstreams: all three, from the live table.
    let text = format!(
        "name = \"ghost\"\nadmin = \"http://{}\"\nroute = \"userz\"\nto = \"neww\"\nfrom = \"old\"\n\
         [[steps]]\nweight = 5\nbake = \"20s\"\n",
        p.admin
    );
    std::fs::write(dir.path().join("plans/ghost.toml"), text).unwrap();
    for extra in [&[][..], &["--dry-run"][..]] {
        let mut args = vec!["plan", "run"];
        args.extend_from_slice(extra);
        let g = path("ghost.toml");
        args.push(&g);
        let r = run(state.path(), &args).await;
        assert_eq!(r.code, 2, "{r:?}");
        for want in [
            "route: \"userz\" is not a route of the live table (routes: users, orders)",
            "to: \"neww\" is not an upstream of the live table",
            "from: \"old\" is not an upstream of the live table",
        ] {
            assert!(
                r.stderr.contains(want),
                "{want:?} missing in:\n{}",
                r.stderr
            );
        }
    }

    // An unreachable admin API.
    let gone = format!("http://127.0.0.1:{}", reserve_port());
    let ok_plan = plan_file(
        dir.path(),
        "fine",
        &p,
        "1s",
        "[[steps]]\nweight = 5\nbake = \"20s\"\n",
    );
    let r = run(
        state.path(),
        &["plan", "run", "--admin", &gone, ok_plan.to_str().unwrap()],
    )
    .await;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("cannot reach the admin API"),
        "{}",
        r.stderr
    );

    assert_eq!(history(&p).await.len(), 1, "something changed");
    assert!(!state.path().join("plans").exists());

    // A plan already running under the same name, or on the same route, is refused.
    let first = Runner::start(
        state.path(),
        &["plan", "run", "--json", ok_plan.to_str().unwrap()],
        &[],
    );
    first
        .wait_event(20, "the bake", |e| e["event"] == "step_started")
        .await;
    let elsewhere = tempfile::tempdir().unwrap();
    let r = run(
        elsewhere.path(),
        &["plan", "run", ok_plan.to_str().unwrap()],
    )
    .await;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("plan \"fine\" is already running"),
        "{}",
        r.stderr
    );
    let same_route = plan_file(
        dir.path(),
        "rival",
        &p,
        "1s",
        "[[steps]]\nweight = 7\nbake = \"20s\"\n",
    );
    let r = run(
        elsewhere.path(),
        &["plan", "run", same_route.to_str().unwrap()],
    )
    .await;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr
            .contains("route \"users\" is being moved by plan \"fine\""),
        "{}",
        r.stderr
    );
    let a = run(state.path(), &["plan", "abort", "fine"]).await;
    assert_eq!(a.code, 0, "{a:?}");
    let (code, _, _) = first.finish(20).await;
    assert_eq!(code, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudwatch_gate_on_moto() {
    let m = harness::moto();
    let cw = harness::cloudwatch(m);
    let bad_api = harness::unique("users-api");
    let good_api = harness::unique("users-api");
    use aws_sdk_cloudwatch::types::{Dimension, MetricDatum};
    let t = aws_smithy_types::DateTime::from_secs(
        aws_smithy_types::DateTime::from(std::time::SystemTime::now()).secs() - 60,
    );
    for (api, metric, value) in [
        (&bad_api, "Count", 100.0),
        (&bad_api, "5XXError", 30.0),
        (&good_api, "Count", 100.0),
        (&good_api, "5XXError", 0.0),
    ] {
        cw.put_metric_data()
            .namespace("AWS/ApiGateway")
            .metric_data(
                MetricDatum::builder()
                    .metric_name(metric)
                    .value(value)
                    .timestamp(t)
                    .dimensions(
                        Dimension::builder()
                            .name("ApiName")
                            .value(api.as_str())
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await
            .unwrap();
    }
    let new = Origin::start("new").await;
    let legacy = Origin::start("legacy").await;
    let dir = routes_dir(&routes(&new, &legacy));
    let p = start(dir.path()).await;
    let aws_env: [(&str, &str); 6] = [
        ("AWS_ENDPOINT_URL", m),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/nonexistent"),
    ];
    let gate = |api: &str| {
        format!(
            "[[gates]]\nkind = \"cloudwatch\"\napi_name = \"{api}\"\nmax_error_rate = 5\nwindow = \"5m\"\n\
             [[steps]]\nweight = 20\nbake = \"2s\"\n"
        )
    };
    // 30 errors in 100 requests: 30% against a 5% limit.
    let state = tempfile::tempdir().unwrap();
    let plan = plan_file(dir.path(), "cw-bad", &p, "1s", &gate(&bad_api));
    let r = Runner::start(
        state.path(),
        &["plan", "run", "--json", plan.to_str().unwrap()],
        &aws_env,
    );
    let (code, err, events) = r.finish(60).await;
    assert_eq!(code, 1, "{err}\n{events:#?}");
    assert!(err.contains(&format!("gate cloudwatch:{bad_api}")), "{err}");
    let g = &events.last().unwrap()["gates"][0];
    assert_eq!(g["figure"], 30.0);
    assert_eq!(g["threshold"], 5.0);
    assert_on_legacy(&p).await;
    // No errors: the plan completes.
    let plan = plan_file(dir.path(), "cw-good", &p, "1s", &gate(&good_api));
    let r = Runner::start(
        state.path(),
        &["plan", "run", "--json", plan.to_str().unwrap()],
        &aws_env,
    );
    let (code, err, events) = r.finish(60).await;
    assert_eq!(code, 0, "{err}\n{events:#?}");
    assert!(events
        .iter()
        .any(|e| e["event"] == "progress" && e["gates"][0]["verdict"] == "pass"));
    // CloudWatch unreachable: not a pass; failed after the grace.
    let gone = format!("http://127.0.0.1:{}", reserve_port());
    let mut env = aws_env;
    env[0] = ("AWS_ENDPOINT_URL", &gone);
    let plan = plan_file(
        dir.path(),
        "cw-gone",
        &p,
        "1s",
        &format!(
            "[[gates]]\nkind = \"cloudwatch\"\napi_name = \"{good_api}\"\nmax_error_rate = 5\ngrace = \"2s\"\n\
             [[steps]]\nweight = 20\nbake = \"30s\"\n"
        ),
    );
    let r = Runner::start(
        state.path(),
        &["plan", "run", "--json", plan.to_str().unwrap()],
        &env,
    );
    let (code, err, _) = r.finish(90).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot be evaluated"), "{err}");
}

/// A loopback server answering `/api/v1/query` like Prometheus, with `value`; records queries.
async fn fake_prometheus(value: &'static str) -> (String, Arc<Mutex<Vec<String>>>) {
    use http_body_util::Full;
    use hyper::service::service_fn;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = l.accept().await else {
                return;
            };
            let s = s.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let s = s.clone();
                    async move {
                        s.lock().unwrap().push(req.uri().to_string());
                        let body = format!(
                            "{{\"status\":\"success\",\"data\":{{\"resultType\":\"vector\",\"result\":[{{\"metric\":{{}},\"value\":[1700000000.0,\"{value}\"]}}]}}}}"
                        );
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            bytes::Bytes::from(body),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_gate_against_a_loopback_server() {
    let (url, seen) = fake_prometheus("0.7").await;
    let new = Origin::start("new").await;
    let legacy = Origin::start("legacy").await;
    let dir = routes_dir(&routes(&new, &legacy));
    let p = start(dir.path()).await;
    let state = tempfile::tempdir().unwrap();
    let plan = plan_file(
        dir.path(),
        "prom",
        &p,
        "1s",
        &format!(
            "[[gates]]\nkind = \"prometheus\"\nurl = \"{url}\"\nquery = \"sum(rate(errors_total[1m]))\"\nmax = 0.5\n\
             [[steps]]\nweight = 20\nbake = \"20s\"\n"
        ),
    );
    let r = Runner::start(
        state.path(),
        &["plan", "run", "--json", plan.to_str().unwrap()],
        &[],
    );
    let (code, err, events) = r.finish(40).await;
    assert_eq!(code, 1, "{err}\n{events:#?}");
    assert!(err.contains("gate prometheus"), "{err}");
    let g = &events.last().unwrap()["gates"][0];
    assert_eq!(g["figure"], 0.7);
    assert_eq!(g["threshold"], 0.5);
    let q = seen.lock().unwrap().clone();
    assert!(
        q.iter()
            .any(|u| u == "/api/v1/query?query=sum%28rate%28errors_total%5B1m%5D%29%29"),
        "{q:?}"
    );
}

/// Depends on `GET /v1/traffic` (per-Host counts, built on the `charts` branch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_drain_waits_for_a_host_to_go_quiet() {
    let new = Origin::start("new").await;
    let legacy = Origin::start("legacy").await;
    let dir = routes_dir(&routes(&new, &legacy));
    let p = start(dir.path()).await;
    // The old edge: another switchyard whose traffic is counted per Host.
    let old_dir = routes_dir(&routes(&new, &legacy));
    let old = start(old_dir.path()).await;
    let busy = Load::start_host(&old, "busy.example.com");
    let state = tempfile::tempdir().unwrap();
    let plan = plan_file(
        dir.path(),
        "drain",
        &p,
        "1s",
        &format!(
            "[[steps]]\nwait_drain = \"quiet.example.com\"\nedge = \"http://{}\"\npoll = \"500ms\"\ntimeout = \"10s\"\n\
             [[steps]]\nwait_drain = \"busy.example.com\"\nedge = \"http://{}\"\npoll = \"500ms\"\ntimeout = \"3s\"\n",
            old.admin, old.admin
        ),
    );
    let r = Runner::start(
        state.path(),
        &["plan", "run", "--json", plan.to_str().unwrap()],
        &[],
    );
    let (code, err, events) = r.finish(40).await;
    busy.stop().await;
    assert_eq!(code, 1, "{err}\n{events:#?}");
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "step_done" && e["step"] == 0),
        "{events:#?}"
    );
    assert!(err.contains("busy.example.com still had traffic"), "{err}");
    assert!(events.iter().any(|e| e["event"] == "progress"
        && e["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("busy.example.com: ")));
}

impl Load {
    fn start_host(p: &Proxy, host: &'static str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, url) = (stop.clone(), p.url("/users/1"));
        let task = tokio::spawn(async move {
            let c = client();
            let mut n = 0;
            while !s.load(Ordering::Relaxed) {
                let _ = send(&c, "GET", &url, &[("host", host)], "").await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            n
        });
        Load { stop, task }
    }
}

#[test]
fn the_examples_pass_plan_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !(name.starts_with("plan-") && name.ends_with(".toml")) {
            continue;
        }
        n += 1;
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["plan", "check"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(n >= 2, "expected the plan examples in {}", dir.display());
}

/// The AWS environment of a runner against moto.
fn moto_env(m: &str) -> [(&str, &str); 7] {
    [
        ("AWS_ENDPOINT_URL", m),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/nonexistent"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"),
    ]
}

/// Weights of the weighted A records of `name`, by set id.
async fn dns_weights(
    r53: &aws_sdk_route53::Client,
    zone: &str,
    name: &str,
) -> std::collections::BTreeMap<String, i64> {
    r53.list_resource_record_sets()
        .hosted_zone_id(zone)
        .send()
        .await
        .unwrap()
        .resource_record_sets
        .into_iter()
        .filter(|r| r.name == name)
        .filter_map(|r| Some((r.set_identifier?, r.weight?)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_steps_run_on_moto_and_are_undone_on_rollback() {
    use aws_sdk_route53::types::{
        Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
    };
    let m = harness::moto();
    let r53 = harness::route53(m);
    let domain = format!("{}.example.com.", harness::unique("plan"));
    let zone = r53
        .create_hosted_zone()
        .name(&domain)
        .caller_reference(harness::unique("zone"))
        .send()
        .await
        .unwrap()
        .hosted_zone
        .unwrap()
        .id
        .trim_start_matches("/hostedzone/")
        .to_string();
    let name = format!("api.{domain}");
    let mut batch = ChangeBatch::builder();
    for (id, w, ip) in [("old", 100, "192.0.2.1"), ("new", 0, "192.0.2.2")] {
        batch = batch.changes(
            Change::builder()
                .action(ChangeAction::Create)
                .resource_record_set(
                    ResourceRecordSet::builder()
                        .name(&name)
                        .r#type(RrType::A)
                        .set_identifier(id)
                        .weight(w)
                        .ttl(60)
                        .resource_records(ResourceRecord::builder().value(ip).build().unwrap())
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        );
    }
    r53.change_resource_record_sets()
        .hosted_zone_id(&zone)
        .change_batch(batch.build().unwrap())
        .send()
        .await
        .unwrap();
    let before = dns_weights(&r53, &zone, &name).await;
    assert_eq!(before["old"], 100);

    let new = Origin::start("new").await;
    let legacy = Origin::start("legacy").await;
    let dir = routes_dir(&routes(&new, &legacy));
    let p = start(dir.path()).await;
    let state = tempfile::tempdir().unwrap();
    let shift = |old: u8, new: u8| {
        format!(
            "[\"dns\", \"--zone\", \"{zone}\", \"--name\", \"{name}\", \"shift\", \"--set\", \"old={old}\", \"--set\", \"new={new}\", \"--wait\", \"--poll-interval\", \"1s\"]"
        )
    };
    let plan = plan_file(
        dir.path(),
        "dns-then-weight",
        &p,
        "1s",
        &format!(
            "[[gates]]\nkind = \"error_rate\"\nmax = 0.1\nmin_requests = 5\n\
             [[steps]]\nname = \"DNS to the new edge\"\ncontrol = {}\nundo = {}\ntimeout = \"2m\"\n\
             [[steps]]\nweight = 50\nbake = \"60s\"\n",
            shift(0, 100),
            shift(100, 0)
        ),
    );
    let env = moto_env(m);
    // --dry-run runs the command's own --dry-run: checked against Route53, nothing changed.
    let r = Runner::start(
        state.path(),
        &["plan", "run", "--dry-run", "--json", plan.to_str().unwrap()],
        &env,
    );
    let (code, err, events) = r.finish(60).await;
    assert_eq!(code, 0, "{err}\n{events:#?}");
    let step = events.iter().find(|e| e["step"] == 0).unwrap();
    assert!(
        step["message"]
            .as_str()
            .unwrap()
            .contains("its --dry-run says"),
        "{step}"
    );
    assert_eq!(dns_weights(&r53, &zone, &name).await, before);

    // The real run: the DNS step completes, then the new backend fails its gate: the route
    // goes back to legacy and the DNS step's undo runs.
    new.state.set_mode(Mode::Error500);
    let load = Load::start(&p);
    let r = Runner::start(
        state.path(),
        &["plan", "run", "--json", plan.to_str().unwrap()],
        &env,
    );
    r.wait_event(60, "the DNS step done", |e| {
        e["event"] == "step_done" && e["step"] == 0
    })
    .await;
    let moved = dns_weights(&r53, &zone, &name).await;
    // Unless the gate already failed and the undo ran: then the events show it below.
    if !r.events().iter().any(|e| e["event"] == "undo") {
        assert_eq!((moved["old"], moved["new"]), (0, 100));
    }
    let (code, err, events) = r.finish(60).await;
    load.stop().await;
    assert_eq!(code, 1, "{err}\n{events:#?}");
    assert!(err.contains("gate error_rate"), "{err}");
    let undo = events.iter().find(|e| e["event"] == "undo").unwrap();
    assert!(
        undo["message"].as_str().unwrap().ends_with(": done"),
        "{undo}"
    );
    assert_eq!(dns_weights(&r53, &zone, &name).await, before);
    assert_on_legacy(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_after_the_runner_died_ends_the_run_for_good() {
    let new = Origin::start("new").await;
    let legacy = Origin::start("legacy").await;
    let dir = routes_dir(&routes(&new, &legacy));
    let p = start(dir.path()).await;
    let state = tempfile::tempdir().unwrap();
    let plan = plan_file(
        dir.path(),
        "orphan",
        &p,
        "500ms",
        "[[steps]]\nweight = 30\nbake = \"60s\"\n",
    );
    let mut r = Runner::start(
        state.path(),
        &["plan", "run", "--json", plan.to_str().unwrap()],
        &[],
    );
    r.wait_event(20, "the bake", |e| e["event"] == "step_started")
        .await;
    wait_for_weight(&p, 30.0).await;
    r.kill9();
    let _ = r.finish(10).await;
    let a = run(state.path(), &["plan", "abort", "orphan"]).await;
    assert_eq!(a.code, 0, "{a:?}");
    assert_on_legacy(&p).await;
    let j: Value = serde_json::from_str(
        &std::fs::read_to_string(state.path().join("plans/orphan.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(j["status"], "aborted");
    let r = run(state.path(), &["plan", "resume", "orphan"]).await;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("is aborted"), "{}", r.stderr);
    // A new run of the same plan starts clean.
    let again = plan_file(
        dir.path(),
        "orphan",
        &p,
        "500ms",
        "[[steps]]\nweight = 10\nbake = \"500ms\"\n",
    );
    let r = run(state.path(), &["plan", "run", again.to_str().unwrap()]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(users_weights(&p).await["new"], 10.0);
}

/// What the gates read: every attempt at `new` is counted with its outcome, although the
/// client got the fallback's answer each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_are_counted_per_upstream_whoever_answered() {
    let mut new = Origin::start("new").await;
    let legacy = Origin::start("legacy").await;
    let dir = routes_dir(&format!(
        "[upstreams.new]\naddrs = [\"{}\"]\nconnect_timeout_ms = 10000\nread_timeout_ms = 300\n\
         [upstreams.legacy]\naddrs = [\"{}\"]\nconnect_timeout_ms = 10000\n\
         [[routes]]\nid = \"users\"\npath = \"/users/*\"\nto = \"new\"\nfallback = \"legacy\"\n",
        new.addr, legacy.addr
    ));
    let p = start(dir.path()).await;
    let c = client();
    let get_one = || async {
        let r = send(&c, "GET", &p.url("/users/1"), &[], "").await.unwrap();
        (r.status, r.origin().to_string())
    };
    assert_eq!(get_one().await, (200, "new".into()));
    new.state.set_mode(Mode::Error500);
    assert_eq!(get_one().await, (200, "legacy".into()));
    new.state.set_mode(Mode::Hang);
    assert_eq!(get_one().await, (200, "legacy".into()));
    new.kill().await;
    assert_eq!(get_one().await, (200, "legacy".into()));
    let m = get(&p.admin_url("/metrics")).await.body;
    let n = |upstream: &str, outcome: &str| {
        metric(
            &m,
            &format!(
                "switchyard_upstream_attempts_total{{outcome=\"{outcome}\",route=\"users\",upstream=\"{upstream}\"}}"
            ),
        )
    };
    assert_eq!(
        (
            n("new", "ok"),
            n("new", "5xx"),
            n("new", "timeout"),
            n("new", "error")
        ),
        (1.0, 1.0, 1.0, 1.0),
        "{m}"
    );
    assert_eq!(n("legacy", "ok"), 3.0, "{m}");
    // The attempt histogram saw the timed-out attempt (at least 300 ms).
    let slow = metric(
        &m,
        "switchyard_upstream_attempt_duration_seconds_bucket{route=\"users\",upstream=\"new\",le=\"0.25\"}",
    );
    let all = metric(
        &m,
        "switchyard_upstream_attempt_duration_seconds_count{route=\"users\",upstream=\"new\"}",
    );
    assert_eq!(all, 4.0, "{m}");
    assert_eq!(slow, 3.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_match_gate_stops_a_plan_before_live_traffic_moves() {
    let new = Origin::start("new").await;
    let legacy = Origin::start("legacy").await;
    // Every request to `users` is copied to `new`, whose answers differ (they name the origin).
    let table = routes(&new, &legacy).replace(
        "fallback = \"legacy\"\n",
        "fallback = \"legacy\"\nshadow = { upstream = \"new\", percent = 100 }\n",
    );
    let dir = routes_dir(&table);
    let p = start(dir.path()).await;
    let state = tempfile::tempdir().unwrap();
    // A 0% step first: the gate judges the shadow before any live request moves.
    let plan = plan_file(
        dir.path(),
        "shadowed",
        &p,
        "1s",
        "[[gates]]\nkind = \"shadow_match\"\nmin_rate = 0.9\nmin_compared = 5\n\
         [[steps]]\nweight = 0\nbake = \"30s\"\n\
         [[steps]]\nweight = 50\nbake = \"5s\"\n",
    );
    let load = Load::start(&p);
    let r = Runner::start(
        state.path(),
        &["plan", "run", "--json", plan.to_str().unwrap()],
        &[],
    );
    let (code, err, events) = r.finish(60).await;
    load.stop().await;
    assert_eq!(code, 1, "stderr: {err}");
    assert!(err.contains("gate shadow_match"), "{err}");
    assert!(err.contains("step 1/2"), "{err}");
    // The figure it stopped on: no answer matched.
    let failed = events
        .iter()
        .rev()
        .find_map(|e| {
            e["gates"]
                .as_array()
                .and_then(|g| g.iter().find(|g| g["verdict"] == "fail").cloned())
        })
        .expect("a failing gate figure");
    assert_eq!(failed["name"], "shadow_match");
    assert_eq!(failed["figure"], 0.0, "{failed}");
    // Live traffic never moved: progress was reported at 0% (events carry the weight), never
    // at 50%.
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "progress" && e["weight"].as_f64() == Some(0.0)),
        "{events:#?}"
    );
    assert!(
        events.iter().all(|e| e["weight"].as_f64() != Some(50.0)),
        "{events:#?}"
    );
    assert!(step_done_weights(&events).is_empty(), "{events:#?}");
    assert_on_legacy(&p).await;
}
