//! `switchyard demo`: one process with a "legacy" and a "new" origin on loopback and the proxy
//! in front of them, using the embedded `routes/demo.toml`.

use std::net::SocketAddr;

use anyhow::Context;

use super::ServeArgs;

/// The demo route table, embedded so the demo runs from anywhere.
pub const DEMO_ROUTES: &str = include_str!("../../routes/demo.toml");

/// Options of `switchyard demo`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DemoArgs {
    /// Also serve HTTPS (and HTTP/2) on 127.0.0.1:8443 with the `NAME.crt` + `NAME.key` pairs in
    /// this directory (`deploy/demo` generates a self-signed one for localhost).
    #[arg(long)]
    pub tls_certs: Option<std::path::PathBuf>,
}

/// Starts both origins and serves the demo table until interrupted.
pub fn run(demo: DemoArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("switchyard-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let routes = dir.join("demo.toml");
    std::fs::write(&routes, DEMO_ROUTES)
        .with_context(|| format!("writing {}", routes.display()))?;
    std::thread::Builder::new()
        .name("demo-origins".into())
        .spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("demo runtime");
            rt.block_on(async {
                let legacy: SocketAddr = "127.0.0.1:8081".parse().expect("literal");
                let new: SocketAddr = "127.0.0.1:8082".parse().expect("literal");
                let (a, b) = tokio::join!(
                    super::origin::run("legacy", legacy),
                    super::origin::run("new", new)
                );
                if let Err(e) = a.and(b) {
                    eprintln!(
                        "demo origin failed: {e} (is something else on 127.0.0.1:8081/8082?)"
                    );
                    std::process::exit(1);
                }
            });
        })?;
    println!(
        "switchyard demo\n\
         \x20 legacy origin  http://127.0.0.1:8081\n\
         \x20 new origin     http://127.0.0.1:8082\n\
         \x20 proxy          http://127.0.0.1:8080   (routes: {routes})\n\
         \x20 admin          http://127.0.0.1:9090   (dashboard; changes need SWITCHYARD_ADMIN_TOKEN)\n{tls}\n\
         Try:\n\
         \x20 curl -s localhost:8080/static/logo.png              # -> legacy\n\
         \x20 curl -s localhost:8080/api/orders/7                 # -> new\n\
         \x20 curl -si -b sid=alice localhost:8080/api/users/1    # 25% of sids go to new; the same sid always does\n\
         \x20 curl -s -H 'x-switchyard-upstream: new' localhost:8080/api/users/1   # force an upstream\n\
         \x20 curl -s localhost:8080/nothing-here                 # catch-all -> legacy\n\
         \x20 curl -s localhost:9090/metrics | grep switchyard_requests_total\n\
         Edit {routes} and save: the proxy reloads it.\n",
        routes = routes.display(),
        tls = match &demo.tls_certs {
            Some(d) => format!(
                "\x20 proxy (TLS)    https://localhost:8443      (certificates: {}; HTTP/2 by ALPN)\n\
                 \x20 try: curl -sk --http2 https://localhost:8443/api/orders/7 -w ' %{{http_version}}\\n'\n\
                 \x20      curl -s localhost:9090/v1/tls\n",
                d.display()
            ),
            None => String::new(),
        }
    );
    super::run(ServeArgs {
        routes,
        listen: "127.0.0.1:8080".into(),
        admin: "127.0.0.1:9090".parse().expect("literal"),
        access_log: "off".into(),
        threads: None,
        scheduler: super::Scheduler::Auto,
        idle_timeout: 60,
        state: None,
        admin_token_file: None,
        force_files: false,
        limits: super::LimitArgs::default(),
        fleet: Default::default(),
        engine: super::Engine::Fast,
        tls_listen: demo
            .tls_certs
            .as_ref()
            .map(|_| "127.0.0.1:8443".to_string()),
        tls_certs: demo.tls_certs.clone(),
        tls_default_cert: None,
        h2c: false,
        upgrade: false,
        upgrade_sock: None,
    })
}
