//! `switchyard serve`: wires the route store, the file watcher, the admin listener and the
//! pingora proxy service together.

pub mod conn;
pub mod demo;
pub mod logging;
pub mod origin;
pub mod reload;
pub mod tls;
pub mod upgrade;
pub mod wbuf;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;

use crate::admin::auth::TOKEN_ENV;
use crate::admin::{AdminState, History, Ledger, Tokens};
use crate::proxy::limits::{self, Limits};
use crate::proxy::{log::AccessLog, Proxy};

/// Options of `switchyard serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Route file or directory of `*.toml` route files (read in file-name order).
    #[arg(long)]
    pub routes: PathBuf,
    /// Data-plane listen address (plain HTTP/1.1; `off` for none, e.g. with only
    /// `--tls-listen`).
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
    /// Request limits and slow-client defences (README "Request limits and slow clients").
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Fleet mode: the table and its history in etcd, shared by every node (`--etcd`).
    #[command(flatten)]
    pub fleet: crate::fleet::FleetArgs,
    /// Which engine serves plain HTTP/1.1 requests: `fast` (switchyard's own forwarding loop,
    /// handing anything unusual to pingora's proxy on the same connection) or `stock`
    /// (pingora's proxy for every request). Both make the same decisions (bench/RESULTS.md).
    #[arg(long, value_enum, default_value_t = Engine::Fast)]
    pub engine: Engine,
    /// TLS listen address of the data plane (HTTP/2 and HTTP/1.1 by ALPN); needs `--tls-certs`.
    /// Default: no TLS listener.
    #[arg(long, requires = "tls_certs")]
    pub tls_listen: Option<String>,
    /// Directory of `NAME.crt` (PEM chain, leaf first) + `NAME.key` (PEM key) pairs; the
    /// certificate for a connection is chosen by SNI against each certificate's DNS SANs.
    /// Re-read when its files change and on SIGHUP.
    #[arg(long, requires = "tls_listen")]
    pub tls_certs: Option<PathBuf>,
    /// The pair (`NAME`) served to clients without SNI or with a name no certificate covers
    /// (default: the first pair by name).
    #[arg(long, requires = "tls_certs")]
    pub tls_default_cert: Option<String>,
    /// Accept prior-knowledge HTTP/2 in clear text (h2c) on `--listen`, beside HTTP/1.1.
    #[arg(long)]
    pub h2c: bool,
    /// Take over the listening sockets of a running switchyard (a graceful upgrade): wait for
    /// its sockets on `--upgrade-sock`, then send that process SIGQUIT. It hands them over,
    /// keeps serving its in-flight requests and exits; the admin port and the state directory
    /// follow as soon as it lets them go.
    #[arg(long)]
    pub upgrade: bool,
    /// Unix socket over which listening sockets are handed to a new process on upgrade; old
    /// and new process must agree. Default: `upgrade.sock` in `--state`, else
    /// /tmp/switchyard-upgrade.sock.
    #[arg(long)]
    pub upgrade_sock: Option<PathBuf>,
}

/// Request limits of `switchyard serve`; defaults close to nginx's (see [`Limits`]).
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Largest request head (request line and headers) in bytes; larger: 431.
    #[arg(long, default_value_t = limits::DEFAULT_MAX_HEAD_BYTES as u64, value_parser = clap::value_parser!(u64).range(256..=1_048_576))]
    pub max_head_bytes: u64,
    /// Largest header line (`name: value`) in bytes; larger: 431.
    #[arg(long, default_value_t = limits::DEFAULT_MAX_HEADER_BYTES as u64, value_parser = clap::value_parser!(u64).range(64..=1_048_576))]
    pub max_header_bytes: u64,
    /// Most header lines in a request; more: 431. At most 256 (pingora's parser answers 400
    /// above that).
    #[arg(long, default_value_t = limits::DEFAULT_MAX_HEADERS as u64, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub max_headers: u64,
    /// Longest request target (URL) in bytes; longer: 414.
    #[arg(long, default_value_t = limits::DEFAULT_MAX_URL_BYTES as u64, value_parser = clap::value_parser!(u64).range(16..=1_048_576))]
    pub max_url_bytes: u64,
    /// Seconds a client may take to send a whole request head, from its first byte; then the
    /// connection is closed.
    #[arg(long, default_value_t = limits::DEFAULT_HEAD_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub head_timeout: u64,
    /// Minimum average request-body rate in bytes per second once `--body-grace` has passed;
    /// slower clients are disconnected. 0 = no minimum.
    #[arg(long, default_value_t = limits::DEFAULT_BODY_MIN_RATE)]
    pub body_min_rate: u64,
    /// Seconds a request body may take before `--body-min-rate` applies.
    #[arg(long, default_value_t = limits::DEFAULT_BODY_GRACE.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub body_grace: u64,
    /// Most client connections open at once on the listener; a connection over the cap is
    /// closed as soon as it is accepted. 0 = no cap.
    #[arg(long, default_value_t = 0)]
    pub max_connections: usize,
    /// Most client connections open at once from one IP address (same behaviour). 0 = no cap.
    #[arg(long, default_value_t = 0)]
    pub max_connections_per_ip: usize,
}

impl Default for LimitArgs {
    /// The flags' defaults (those of [`Limits::default`]).
    fn default() -> Self {
        let l = Limits::default();
        LimitArgs {
            max_head_bytes: l.max_head_bytes as u64,
            max_header_bytes: l.max_header_bytes as u64,
            max_headers: l.max_headers as u64,
            max_url_bytes: l.max_url_bytes as u64,
            head_timeout: l.head_timeout.as_secs(),
            body_min_rate: l.body_min_rate,
            body_grace: l.body_grace.as_secs(),
            max_connections: l.max_connections,
            max_connections_per_ip: l.max_connections_per_ip,
        }
    }
}

impl LimitArgs {
    /// The limits these flags describe.
    pub fn limits(&self) -> Limits {
        Limits {
            max_head_bytes: self.max_head_bytes as usize,
            max_header_bytes: self.max_header_bytes as usize,
            max_headers: self.max_headers as usize,
            max_url_bytes: self.max_url_bytes as usize,
            head_timeout: std::time::Duration::from_secs(self.head_timeout),
            body_min_rate: self.body_min_rate,
            body_grace: std::time::Duration::from_secs(self.body_grace),
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
        }
    }
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
/// not compile (every error printed), when a TLS certificate pair is bad, or with no
/// data-plane listener. With `--upgrade`, first takes over the sockets of the running process.
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
    let plain_listen = match args.listen.as_str() {
        "off" | "" => None,
        a => Some(a.to_string()),
    };
    if plain_listen.is_none() && args.tls_listen.is_none() {
        return Err(anyhow!(
            "no data-plane listener: --listen off needs --tls-listen ADDR --tls-certs DIR"
        ));
    }
    let certs = match &args.tls_certs {
        Some(dir) => Some(
            tls::CertStore::open(dir, args.tls_default_cert.as_deref())
                .context("loading TLS certificates")?,
        ),
        None => None,
    };

    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let upgrade_sock = upgrade::sock_path(args.upgrade_sock.as_deref(), args.state.as_deref());
    let conf = ServerConf {
        threads,
        upstream_keepalive_pool_size: 4096,
        work_stealing: args.scheduler.work_stealing(threads),
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(5),
        upgrade_sock: upgrade_sock.display().to_string(),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: args.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    if args.upgrade {
        tracing::info!(sock = %upgrade_sock.display(), "upgrade: waiting for the running switchyard's listening sockets (send it SIGQUIT)");
    }
    // With --upgrade: receives the old process's listening sockets (exits when none come).
    server.bootstrap();
    let phases = server.watch_execution_phase();

    // Fleet mode: etcd calls run on a runtime of their own, which lives as long as the process.
    let fleet_rt = if args.fleet.etcd.is_empty() {
        None
    } else {
        Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("fleet")
                .enable_all()
                .build()
                .context("starting the fleet runtime")?,
        )
    };
    let fleet = match &fleet_rt {
        Some(rt) => Some(Arc::new(
            crate::fleet::Fleet::new(&args.fleet, args.state.clone(), rt.handle().clone())
                .context("fleet mode")?,
        )),
        None => None,
    };
    let started = match &fleet {
        Some(f) => Ledger::start_shared(
            Box::new(f.store()),
            args.routes.clone(),
            args.force_files,
            f.last_known(),
        ),
        None => {
            // With --upgrade the old process lets the state directory go when it starts
            // handing over; until then it is busy.
            let history = match &args.state {
                Some(dir) => upgrade::retry(args.upgrade, || History::open(dir))
                    .context("opening the state directory")?,
                None => History::in_memory().context("creating the in-memory history")?,
            };
            Ledger::start(history, args.routes.clone(), args.force_files)
        }
    };
    let ledger = match started {
        Ok(l) => Arc::new(l),
        Err(crate::admin::ledger::ChangeError::Invalid(diags)) => {
            let list: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
            return Err(anyhow!("route files do not compile:\n{}", list.join("\n")));
        }
        Err(e) => return Err(anyhow!(e).context("loading the route table")),
    };
    if let Some(f) = &fleet {
        f.start(ledger.clone());
    }
    let store = ledger.store().clone();
    let access_log = match args.access_log.as_str() {
        "off" | "" => None,
        t => Some(AccessLog::start(t).with_context(|| format!("opening access log {t}"))?),
    };

    // The control side (admin API, file watchers, health checks) runs on its own runtime so
    // it never competes with, or waits on, the data plane's workers.
    let admin_listener = upgrade::retry(args.upgrade, || std::net::TcpListener::bind(args.admin))
        .with_context(|| format!("binding admin listener {}", args.admin))?;
    admin_listener.set_nonblocking(true)?;
    let control_ledger = ledger.clone();
    let control_certs = certs.clone();
    let control_sock = upgrade_sock.clone();
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
                let mut state =
                    AdminState::new(control_ledger.clone(), tokens, loopback).with_fleet(fleet);
                state.tls = control_certs.clone();
                tokio::spawn(crate::admin::serve(listener, Arc::new(state)));
                tokio::spawn(crate::health::active::supervise(
                    control_ledger.store().clone(),
                ));
                tokio::spawn(crate::metrics::series::run(control_ledger.store().clone()));
                if let Some(c) = control_certs {
                    tokio::spawn(tls::watch(c));
                }
                tokio::spawn(upgrade::on_sigusr2(control_sock));
                tokio::select! {
                    _ = reload::watch(control_ledger) => {}
                    _ = upgrade::handing_over(phases) => {}
                }
            });
            // Only reached when a new process takes over: stopping the control runtime closes
            // the admin listener and drops the last handle on the history database.
            rt.shutdown_timeout(std::time::Duration::from_secs(2));
            tracing::info!("upgrade: admin listener closed and state directory released for the new process; the data plane finishes its requests");
        })?;

    let limits = args.limits.limits();
    let proxy_impl = Proxy {
        store,
        access_log,
        limits: Arc::new(limits.clone()),
    };
    let fast = (args.engine == Engine::Fast).then(|| {
        Arc::new(crate::proxy::fast::Engine::new(
            proxy_impl.clone(),
            &server.configuration,
            args.idle_timeout,
        ))
    });
    let mut proxy = pingora::proxy::http_proxy(&server.configuration, proxy_impl);
    // An idle HTTP/2 connection (no open stream) closes after the same keep-alive timeout as
    // an HTTP/1.1 one (pingora's default: never).
    let mut options = pingora::apps::HttpServerOptions::default();
    options.h2c = args.h2c;
    options.h2_idle_timeout = Some(std::time::Duration::from_secs(args.idle_timeout));
    proxy.server_options = Some(options);
    let mut svc = pingora::services::listening::Service::new(
        "switchyard".to_string(),
        conn::Connections::new(proxy, std::time::Duration::from_secs(args.idle_timeout))
            .with_limits(limits)
            .with_fast(fast),
    );
    if let Some(addr) = &plain_listen {
        // No socket buffers per client connection (pingora's defaults: 64 KiB to read,
        // 1,460 bytes to write, for the connection's whole life): the connection loop reads
        // each request's first bytes through a per-thread scratch buffer and its head into a
        // buffer of its own (`conn::next_request`), and buffers writes only while a response
        // is written (`wbuf`), so an idle keep-alive connection holds neither.
        svc.add_listener(
            pingora::listeners::ListenerConfig::tcp(addr)
                .l4_buffer(pingora::listeners::L4BufferSettings::unbuffered()),
        );
    }
    if let (Some(addr), Some(certs)) = (&args.tls_listen, &certs) {
        // No socket buffers either: rustls reads whole records into its own buffer, and
        // HTTP/1.1 responses are buffered above TLS (`wbuf`), so a response's head and small
        // body make one record; HTTP/2 buffers its own frames.
        svc.add_listener(
            pingora::listeners::ListenerConfig::tcp(addr)
                .tls(tls::settings(certs, true)?)
                .l4_buffer(pingora::listeners::L4BufferSettings::unbuffered()),
        );
    }
    server.add_service(svc);
    tracing::info!(listen = ?plain_listen, tls_listen = ?args.tls_listen, h2c = args.h2c, admin = %args.admin, threads, engine = ?args.engine, work_stealing = args.scheduler.work_stealing(threads), version = ledger.store().version(), upgraded = args.upgrade, "switchyard serving");
    // The control thread holds the ledger from here on; when it stops (upgrade), the history
    // database closes.
    drop(ledger);
    upgrade::notify_systemd_ready();
    // The fleet runtime must outlive the server, which ends the process.
    let _fleet_rt = fleet_rt;
    server.run_forever()
}
