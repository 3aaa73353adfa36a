//! `factotum-coordinator`: owns runs, leases their tasks to agents, sends webhooks.
//! Thin: parse flags, set up logging and signals, call [`factotum_coordinator::server::run`].

use factotum_coordinator::server::{self, Config};
use factotum_service::{lifecycle, logging, Lifecycle};
use tokio_util::sync::CancellationToken;

fn main() -> std::process::ExitCode {
    let config: Config = factotum_service::config::parse();
    if let Some(tool) = &config.command {
        return match server::tool(tool) {
            Ok(lines) => {
                for line in lines {
                    println!("{line}");
                }
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("Error: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    logging::init(config.log_format);
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(coordinator(config)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line a person can act on, never a backtrace.
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn coordinator(config: Config) -> anyhow::Result<()> {
    let listener = config.bind().await?;
    let http = config.bind_http().await?;
    // Tests and scripts read these lines to learn the ports when listening on :0: written
    // at once, and a reader that stopped reading (a closed pipe) is no reason to fail.
    let mut lines = format!("listening on {}\n", listener.local_addr()?);
    if let Some(http) = &http {
        lines.push_str(&format!("http listening on {}\n", http.local_addr()?));
    }
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(lines.as_bytes()).and_then(|()| out.flush());
    }
    let shutdown = CancellationToken::new();
    let signals = Lifecycle::new();
    lifecycle::cancel_on_signal(&signals, shutdown.clone())?;
    server::run_with_http(config, listener, http, shutdown).await?;
    signals.token.cancel();
    Ok(())
}
