//! Rollback latency: the time from a `POST /v1/routes/{id}/rollback` call returning to the
//! first request served by the fallback, over many trials, idle and under load. Also reports
//! the call's own duration (compile + durable history commit + swap) and, for scale, the round
//! trip of an ordinary request.
//!
//! Whole-system: the real binary on loopback, two origins, a keep-alive client.
//!
//! ```text
//! cargo bench --bench rollback_latency                 # release build, 300 trials per mode
//! cargo test --bench rollback_latency -- --bench       # debug build, same trials
//! ROLLBACK_TRIALS=1000 cargo bench --bench rollback_latency
//! ```
//! Under `cargo test` (no `--bench`) it runs 5 trials as a smoke test.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const TOKEN: &str = "bench-token-rollback";

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn line(name: &str, mut v: Vec<Duration>) -> String {
    v.sort();
    format!(
        "{name:<44} median {:>9}  p90 {:>9}  p99 {:>9}  worst {:>9}",
        us(pct(&v, 0.5)),
        us(pct(&v, 0.9)),
        us(pct(&v, 0.99)),
        us(pct(&v, 1.0))
    )
}

struct Trials {
    /// Rollback call: request sent -> response read.
    call: Vec<Duration>,
    /// Call returned -> first response served by the fallback.
    to_fallback: Vec<Duration>,
    /// An ordinary request's round trip, just before the rollback.
    rtt: Vec<Duration>,
    /// Requests sent after the call returned until one came from the fallback (1 = the next).
    most_requests: usize,
}

async fn run(p: &Proxy, trials: usize, load: bool) -> Trials {
    let stop = Arc::new(AtomicBool::new(false));
    let mut loops = Vec::new();
    if load {
        for i in 0..4 {
            let (stop, url) = (stop.clone(), p.url(&format!("/load/{i}")));
            loops.push(tokio::spawn(async move {
                let c = client();
                while !stop.load(Ordering::Relaxed) {
                    let _ = send(&c, "GET", &url, &[], "").await;
                }
            }));
        }
    }
    let c = client();
    let auth = format!("Bearer {TOKEN}");
    let h = [("authorization", auth.as_str())];
    let mut out = Trials {
        call: Vec::new(),
        to_fallback: Vec::new(),
        rtt: Vec::new(),
        most_requests: 0,
    };
    let route = p.admin_url("/v1/routes/r");
    let rollback = p.admin_url("/v1/routes/r/rollback");
    for i in 0..trials {
        // Back to the new upstream, and check a request goes there (connections warm).
        let r = send(
            &c,
            "PATCH",
            &route,
            &h,
            r#"{"to": "new", "fallback": "legacy"}"#,
        )
        .await
        .expect("reset");
        assert_eq!(r.status, 200, "{}", r.body);
        let t = Instant::now();
        let r = send(&c, "GET", &p.url("/x"), &[], "").await.expect("probe");
        out.rtt.push(t.elapsed());
        assert_eq!(r.origin(), "new", "trial {i}: reset did not take");

        let body = format!(r#"{{"reason": "bench trial {i}"}}"#);
        let t0 = Instant::now();
        let r = send(&c, "POST", &rollback, &h, body)
            .await
            .expect("rollback");
        let returned = Instant::now();
        assert_eq!(r.status, 200, "{}", r.body);
        out.call.push(returned - t0);
        let mut n = 0;
        loop {
            n += 1;
            let r = send(&c, "GET", &p.url("/x"), &[], "")
                .await
                .expect("request");
            if r.origin() == "legacy" {
                out.to_fallback.push(returned.elapsed());
                break;
            }
            assert!(n < 10_000, "trial {i}: the fallback never answered");
        }
        out.most_requests = out.most_requests.max(n);
    }
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        let _ = l.await;
    }
    out
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let trials: usize = if bench {
        std::env::var("ROLLBACK_TRIALS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300)
    } else {
        5
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let new = Origin::start("new").await;
        let legacy = Origin::start("legacy").await;
        let state = tempfile::tempdir().expect("state dir");
        let dir = routes_dir(&format!(
            "[upstreams.new]\naddrs = [\"{}\"]\n[upstreams.legacy]\naddrs = [\"{}\"]\n\
             [[routes]]\nid = \"r\"\npath = \"/*\"\nto = \"new\"\nfallback = \"legacy\"\n",
            new.addr, legacy.addr
        ));
        let p = Proxy::start_env(
            dir.path(),
            &["--state", state.path().to_str().expect("utf-8 path")],
            &[("SWITCHYARD_ADMIN_TOKEN", TOKEN)],
        )
        .await;
        println!(
            "rollback latency: {trials} trials per mode, {} build of switchyard, history on disk (--state, fsync per commit)",
            if cfg!(debug_assertions) { "debug" } else { "release" }
        );
        for load in [false, true] {
            let t = run(&p, trials, load).await;
            println!(
                "\n{}",
                if load {
                    "under load (4 keep-alive client loops on the same route)"
                } else {
                    "idle"
                }
            );
            println!(
                "{}",
                line("call returned -> first fallback response", t.to_fallback)
            );
            println!("{}", line("rollback call duration", t.call));
            println!("{}", line("ordinary request round trip (reference)", t.rtt));
            println!(
                "requests needed after the call returned:     at most {} (1 = the very next request)",
                t.most_requests
            );
        }
    });
}
