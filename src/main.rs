//! switchyard's command line. Minimal wiring of the AWS control-plane subcommands; the proxy's
//! subcommands are added beside them.

use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Edge proxy and control plane for moving live traffic"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    #[command(flatten)]
    Control(switchyard::control::ControlCommand),
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.cmd {
        Command::Control(c) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(switchyard::control::run(c))
        }
    }
}
