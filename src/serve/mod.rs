//! `switchyard serve`: wires the route store, the file watcher, the admin listener and the
//! pingora proxy service together.

pub mod conn;
pub mod demo;
pub mod logging;
pub mod origin;
pub mod reload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;

use crate::admin::auth::TOKEN_ENV;
use crate::admin::{AdminState, History, Ledger, Tokens};
use crate::proxy::{log::AccessLog, Proxy};

/// Options of `switchyard serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Route file or directory of `*.toml` route files (read in file-name order).
    #[arg(long)]
    pub routes: PathBuf,
    /// Data-plane listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Admin API listen address. A non-loopback address needs an admin token.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin: SocketAddr,
    /// Directory of the durable state (the version history, `history.redb`). Without it the
    /// history is kept in memory and a restart starts again from the route files.
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// File of `NAME:TOKEN` lines: admin tokens and the actor names the history records.
    /// `SWITCHYARD_ADMIN_TOKEN` (actor `admin`) may be used instead or as well.
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// Let route file reloads undo changes made through the admin API (default: such a reload
    /// is refused until `switchyard adopt`).
    #[arg(long)]
    pub force_files: bool,
    /// Access log target: `-` (stdout), a file path, or `off`.
    #[arg(long, default_value = "-")]
    pub access_log: String,
    /// Worker threads for the data plane (default: the CPUs this process may run on, which
    /// follows `taskset`/cpusets and cgroup CPU limits).
    #[arg(long)]
    pub threads: Option<usize>,
    /// How data-plane threads share work: `work-stealing` (one scheduler; idle threads take
    /// tasks from busy ones), `per-thread` (an independent scheduler per thread, connections
    /// spread over them at random), or `auto`: per-thread with one thread, work-stealing with
    /// more (measured in bench/RESULTS.md).
    #[arg(long, value_enum, default_value_t = Scheduler::Auto)]
    pub scheduler: Scheduler,
    /// Seconds a client keep-alive connection may stay idle between requests before it is
    /// closed. Idle connections are also closed as soon as a graceful stop begins.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub idle_timeout: u64,
    /// Which engine serves plain HTTP/1.1 requests: `fast` (switchyard's own forwarding loop,
    /// handing anything unusual to pingora's proxy on the same connection) or `stock`
    /// (pingora's proxy for every request). Both make the same decisions (bench/RESULTS.md).
    #[arg(long, value_enum, default_value_t = Engine::Fast)]
    pub engine: Engine,
}

/// The engine of the plain HTTP/1.1 listener (`serve --engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    Fast,
    Stock,
}

/// Scheduler layout of the data-plane threads (`serve --scheduler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scheduler {
    Auto,
    WorkStealing,
    PerThread,
}

impl Scheduler {
    /// Whether pingora's work-stealing runtime is used for `threads` threads. pingora's
    /// per-thread runtimes spawn the upstream pool's idle watcher of every request on a
    /// random thread, which costs a cross-thread wake-up per request with two or more; with
    /// one thread the per-thread runtime is tokio's lighter single-threaded scheduler.
    pub fn work_stealing(self, threads: usize) -> bool {
        match self {
            Scheduler::Auto => threads > 1,
            Scheduler::WorkStealing => true,
            Scheduler::PerThread => false,
        }
    }
}

/// Runs the proxy until the process is told to stop. Refuses to start when the route files do
/// not compile (every error printed).
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let env_token = std::env::var(TOKEN_ENV).ok();
    let tokens = Tokens::load(env_token.as_deref(), args.admin_token_file.as_deref())
        .context("admin tokens")?;
    let loopback = args.admin.ip().is_loopback();
    if !loopback && tokens.is_empty() {
        return Err(anyhow!(
            "refusing to serve the admin API on non-loopback address {} without a token: set {TOKEN_ENV} or --admin-token-file",
            args.admin
        ));
    }
    if tokens.is_empty() {
        tracing::warn!(
            "no admin token: the admin API is read-only (set {TOKEN_ENV} or --admin-token-file)"
        );
    }
    let history = match &args.state {
        Some(dir) => History::open(dir).context("opening the state directory")?,
        None => History::in_memory().context("creating the in-memory history")?,
    };
    let ledger = match Ledger::start(history, args.routes.clone(), args.force_files) {
        Ok(l) => Arc::new(l),
        Err(crate::admin::ledger::ChangeError::Invalid(diags)) => {
            let list: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
            return Err(anyhow!("route files do not compile:\n{}", list.join("\n")));
        }
        Err(e) => return Err(anyhow!(e).context("loading the route table")),
    };
    let store = ledger.store().clone();
    let access_log = match args.access_log.as_str() {
        "off" | "" => None,
        t => Some(AccessLog::start(t).with_context(|| format!("opening access log {t}"))?),
    };

    // The control side (admin API, file watcher, health checks) runs on its own runtime so
    // it never competes with, or waits on, the data plane's workers.
    let admin_listener = std::net::TcpListener::bind(args.admin)
        .with_context(|| format!("binding admin listener {}", args.admin))?;
    admin_listener.set_nonblocking(true)?;
    let control_ledger = ledger.clone();
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the control runtime");
                    std::process::exit(1);
                }
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(admin_listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "admin listener");
                        std::process::exit(1);
                    }
                };
                let state = Arc::new(AdminState::new(control_ledger.clone(), tokens, loopback));
                tokio::spawn(crate::admin::serve(listener, state));
                tokio::spawn(crate::health::active::supervise(
                    control_ledger.store().clone(),
                ));
                tokio::spawn(crate::metrics::series::run(control_ledger.store().clone()));
                reload::watch(control_ledger).await;
            });
        })?;

    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let conf = ServerConf {
        threads,
        upstream_keepalive_pool_size: 4096,
        work_stealing: args.scheduler.work_stealing(threads),
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(5),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let proxy_impl = Proxy { store, access_log };
    let fast = (args.engine == Engine::Fast).then(|| {
        Arc::new(crate::proxy::fast::Engine::new(
            proxy_impl.clone(),
            &server.configuration,
            args.idle_timeout,
        ))
    });
    let proxy = pingora::proxy::http_proxy(&server.configuration, proxy_impl);
    let mut svc = pingora::services::listening::Service::new(
        "switchyard".to_string(),
        conn::Connections::new(proxy, std::time::Duration::from_secs(args.idle_timeout))
            .with_fast(fast),
    );
    // A small read buffer per client connection instead of pingora's 64 KiB: a typical
    // request still arrives in one read, and an idle keep-alive connection holds 1 KiB.
    svc.add_listener(
        pingora::listeners::ListenerConfig::tcp(&args.listen)
            .l4_buffer(pingora::listeners::L4BufferSettings::default().read(conn::READ_BUFFER)),
    );
    server.add_service(svc);
    tracing::info!(listen = %args.listen, admin = %args.admin, threads, engine = ?args.engine, work_stealing = args.scheduler.work_stealing(threads), version = ledger.store().version(), "switchyard serving");
    server.run_forever()
}
