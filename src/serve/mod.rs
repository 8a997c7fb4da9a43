//! `switchyard serve`: wires the route store, the file watcher, the admin listener and the
//! pingora proxy service together.

pub mod demo;
pub mod origin;
pub mod reload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;

use crate::admin::AdminState;
use crate::proxy::{log::AccessLog, Proxy};
use crate::routing::{RouteTable, TableStore};

/// Options of `switchyard serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Route file or directory of `*.toml` route files (read in file-name order).
    #[arg(long)]
    pub routes: PathBuf,
    /// Data-plane listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Admin API listen address.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin: SocketAddr,
    /// Access log target: `-` (stdout), a file path, or `off`.
    #[arg(long, default_value = "-")]
    pub access_log: String,
    /// Worker threads for the data plane (default: the number of cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Runs the proxy until the process is told to stop. Refuses to start when the route files do
/// not compile (every error printed).
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let store = Arc::new(TableStore::new(RouteTable::empty()));
    if let Err(diags) = reload::reload(&args.routes, &store) {
        let list: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
        return Err(anyhow!("route files do not compile:\n{}", list.join("\n")));
    }
    let access_log = match args.access_log.as_str() {
        "off" | "" => None,
        t => Some(AccessLog::start(t).with_context(|| format!("opening access log {t}"))?),
    };

    // The control side (admin API, file watcher, health checks) runs on its own runtime so
    // it never competes with, or waits on, the data plane's workers.
    let admin_listener = std::net::TcpListener::bind(args.admin)
        .with_context(|| format!("binding admin listener {}", args.admin))?;
    admin_listener.set_nonblocking(true)?;
    let control_store = store.clone();
    let routes_path = args.routes.clone();
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
                let state = Arc::new(AdminState {
                    store: control_store.clone(),
                    routes_path: Some(routes_path.clone()),
                });
                tokio::spawn(crate::admin::serve(listener, state));
                tokio::spawn(crate::health::active::supervise(control_store.clone()));
                reload::watch(routes_path, control_store).await;
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
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(5),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut svc = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Proxy { store, access_log },
        "switchyard",
    );
    svc.add_tcp(&args.listen);
    server.add_service(svc);
    tracing::info!(listen = %args.listen, admin = %args.admin, threads, "switchyard serving");
    server.run_forever()
}
