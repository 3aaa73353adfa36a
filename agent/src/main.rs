//! `factotum-agent`: runs the tasks a coordinator leases to this machine. Flags plus
//! [`factotum_agent::run`]; everything that decides lives in the library.

use std::time::Duration;

use anyhow::bail;
use factotum_agent::{shim, AgentArgs};
use factotum_service::lifecycle::cancel_on_signal;
use factotum_service::Lifecycle;
use tokio_util::sync::CancellationToken;

fn main() -> std::process::ExitCode {
    match agent_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line a person can act on, never a backtrace.
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn agent_main() -> anyhow::Result<()> {
    // `factotum-agent --shim <attempt dir>`: the per-task supervisor, when the separate
    // `factotum-shim` binary is not installed beside the agent (see factotum_agent::shim).
    let mut argv = std::env::args_os().skip(1);
    if argv.next().is_some_and(|a| a == "--shim") {
        let Some(dir) = argv.next().map(std::path::PathBuf::from) else {
            bail!("--shim needs a directory")
        };
        std::process::exit(shim::main(&dir));
    }
    let args: AgentArgs = factotum_service::config::parse();
    factotum_service::logging::init(args.log_format);
    let (config, endpoints) = args.config()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            // SIGTERM or SIGINT: drain (see `run`).
            let signals = Lifecycle::new();
            let drain = CancellationToken::new();
            cancel_on_signal(&signals, drain.clone())?;
            let result = factotum_agent::run(config, endpoints, drain).await;
            signals.shut_down(Duration::from_secs(1)).await;
            result
        })
}
