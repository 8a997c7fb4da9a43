//! Database cutover under write load: the write pause clients see (p50, p99, max over many
//! cutovers, back and forth), each step's duration, lost writes; and how long an abort takes
//! when the fence cannot finish (a long write on the source).
//!
//! Whole-system: two real MariaDB servers (started like the tests do), an HTTP application on
//! each, the real switchyard binary in front, clients writing through it.
//!
//! ```text
//! cargo bench --bench db_cutover                 # release build, 20 cutovers
//! cargo test --bench db_cutover -- --bench       # debug build, same
//! DB_CUTOVERS=40 DB_WRITES_PER_SEC=650 cargo bench --bench db_cutover
//! ```
//! Under `cargo test` (no `--bench`) it runs one cutover and one rollback as a smoke test.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/db/harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use harness::*;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summary(name: &str, mut v: Vec<f64>) -> String {
    v.sort_by(|a, b| a.total_cmp(b));
    format!(
        "{name:<34} n={:<3} p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms",
        v.len(),
        pct(&v, 0.5),
        pct(&v, 0.99),
        pct(&v, 1.0)
    )
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let cutovers = if full { env_num("DB_CUTOVERS", 20) } else { 2 };
    let rate = env_num("DB_WRITES_PER_SEC", 650);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let st = Setup::new().await;
        let load = Load::start(&st.proxy, 16, rate);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut pause = Vec::new();
        let mut client_pause = Vec::new();
        let mut steps: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let mut windows = Vec::new();
        for i in 0..cutovers {
            let (verb, app) = if i % 2 == 0 { ("cutover", "app_t") } else { ("rollback", "app_s") };
            let t0 = Instant::now();
            let o = st.cutover(verb, app, &[]);
            let t1 = Instant::now();
            assert_eq!(o.status.code(), Some(0), "{verb} {i}: {}", text(&o));
            windows.push((t0, t1));
            for e in events(&o) {
                let step = e["step"].as_str().unwrap_or("").to_string();
                if let Some(ms) = e["duration_ms"].as_f64() {
                    steps.entry(step.clone()).or_default().push(ms);
                }
                if step == "reverse" && i < 3 {
                    println!("reverse {i}: {}", e["detail"].as_str().unwrap_or(""));
                }
                if step == "release" {
                    pause.push(e["pause_ms"].as_f64().unwrap_or(0.0));
                }
            }
            // Let reverse replication settle before going back.
            let replica = if verb == "cutover" { &st.s } else { &st.t };
            replica.wait_replicating().await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let (acked, failed, latencies) = load.finish().await;
        // The pause a client saw: the slowest write that started during each cutover command.
        for (a, b) in &windows {
            let worst = latencies
                .iter()
                .filter(|(t, _)| t >= a && t <= b)
                .map(|(_, d)| d.as_secs_f64() * 1000.0)
                .fold(0.0, f64::max);
            client_pause.push(worst);
        }
        let primary = if st.s.read_only().await { &st.t } else { &st.s };
        let ids = primary.ids().await;
        let have: std::collections::BTreeSet<i64> = ids.iter().copied().collect();
        let lost = acked.iter().filter(|id| !have.contains(id)).count();
        let all: Vec<f64> = latencies.iter().map(|(_, d)| d.as_secs_f64() * 1000.0).collect();

        // Abort when the fence cannot finish: a write running 5 s on the primary.
        let primary_port = primary.port;
        let long = tokio::spawn(async move {
            use mysql_async::prelude::Queryable;
            let opts = mysql_async::OptsBuilder::default()
                .ip_or_hostname("127.0.0.1")
                .tcp_port(primary_port)
                .user(Some(APP_USER))
                .pass(Some(APP_PASSWORD))
                .prefer_socket(false);
            let mut c = mysql_async::Conn::new(opts).await.unwrap();
            c.query_drop("INSERT INTO appdb.writes (id, origin) SELECT -7, IF(SLEEP(5) = 0, 'long', 'x')")
                .await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let verb = if primary.port == st.s.port { ("cutover", "app_t") } else { ("rollback", "app_s") };
        let o = st.cutover(verb.0, verb.1, &["--max-pause-ms", "1000"]);
        let abort_ms = events(&o)
            .iter()
            .find(|e| e["step"] == "abort")
            .and_then(|e| e["pause_ms"].as_f64());
        let _ = long.await;

        println!("db cutover bench: {cutovers} cutovers (alternating cutover/rollback with --reverse), {rate} writes/s offered through the proxy, MariaDB 10.11, {} build", if cfg!(debug_assertions) { "debug" } else { "release" });
        println!("{}", summary("pause, hold -> release (switchyard)", pause));
        println!("{}", summary("slowest client write per cutover", client_pause));
        println!("{}", summary("every client write", all));
        for (step, v) in steps {
            println!("{}", summary(&format!("  step {step}"), v));
        }
        println!("writes acknowledged {}, failed {}, lost {lost}", acked.len(), failed.len());
        match abort_ms {
            Some(ms) => println!("abort with a 5 s write on the source, --max-pause-ms 1000: hold -> abort done {ms:.0} ms"),
            None => println!("abort scenario did not abort: {}", text(&o)),
        }
        assert_eq!(lost, 0, "lost writes");
        assert!(failed.is_empty(), "failed writes: {failed:?}");
    });
}
