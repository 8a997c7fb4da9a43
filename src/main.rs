//! The `switchyard` binary: parses the command line and hands off to the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// jemalloc instead of the system allocator: fewer instructions per proxied request (the
/// request path allocates about 100 times, mostly inside pingora); see bench/RESULTS.md.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's start-up options: a thread cache that keeps freed blocks up to 128 KiB (the
/// default stops at 32 KiB), so the 64 KiB body buffer pingora allocates for each upstream
/// response comes from the thread's cache instead of the arena (bench/RESULTS.md).
#[cfg(feature = "jemalloc")]
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: &[u8; 18] = b"tcache_max:131072\0";

/// Edge proxy and control plane for moving live traffic between infrastructures.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy: route by host and path, reload on file change or SIGHUP.
    Serve(switchyard::serve::ServeArgs),
    /// Compile route files and print every error and warning; exit 1 on errors.
    Check(switchyard::cli::CheckArgs),
    /// Run a self-contained demo: two origins and the proxy on loopback.
    Demo(switchyard::serve::demo::DemoArgs),
    #[command(flatten)]
    Admin(switchyard::cli::admin::AdminCommand),
    #[command(flatten)]
    Control(switchyard::control::ControlCommand),
    /// Migration plans: steps, gates, automatic rollback, approvals, resume.
    Plan(switchyard::plan::cli::PlanArgs),
}

/// Logs on stderr: colour only on a terminal, JSON with `SWITCHYARD_LOG_FORMAT=json`.
fn init_tracing() -> Result<(), ExitCode> {
    switchyard::serve::logging::init().map(drop).map_err(|e| {
        eprintln!("switchyard: {e}");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check(args) => switchyard::cli::check(&args),
        Command::Serve(args) => match init_tracing() {
            Ok(()) => exit(switchyard::serve::run(args)),
            Err(code) => code,
        },
        Command::Demo(args) => match init_tracing() {
            Ok(()) => exit(switchyard::serve::demo::run(args)),
            Err(code) => code,
        },
        Command::Admin(cmd) => switchyard::cli::admin::run(&cmd),
        Command::Plan(args) => switchyard::plan::cli::run(args),
        Command::Control(c) => {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: starting the runtime: {e}");
                    return ExitCode::from(2);
                }
            };
            match rt.block_on(switchyard::control::run(c)) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn exit(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard: {e:#}");
            ExitCode::FAILURE
        }
    }
}
