//! `factotum`: run, validate and draw Factotum factfiles.
//!
//! Thin: argument parsing and exit codes live here; the engine, agent and rules live in the
//! libraries. Exit codes are Factotum's: 0 success (or an early finish), 1 invalid factfile,
//! 2 a task failed, 3 bad arguments.

mod cli;
mod client;
mod connect;
mod console;
mod docs;
mod follow;
mod headroom;
mod json;
mod load;
mod logs;
mod out;
mod progress;
mod route;
mod run;
mod show;
mod webhooks;

use std::process::ExitCode;

use clap::Parser;

// Loading a big factfile is allocation-bound; mimalloc roughly halves that cost.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Process exit codes (Factotum's).
pub mod exit {
    pub const OK: u8 = 0;
    pub const INVALID_FACTFILE: u8 = 1;
    pub const TASK_FAILED: u8 = 2;
    pub const BAD_ARGUMENTS: u8 = 3;
    pub const COORDINATOR: u8 = 4;
}

fn main() -> ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp
                | clap::error::ErrorKind::DisplayVersion
                | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    ExitCode::from(exit::OK)
                }
                _ => ExitCode::from(exit::BAD_ARGUMENTS),
            };
        }
    };
    logging();
    let code = match args.command {
        cli::Command::Run(a) => run::run(a),
        cli::Command::Validate(a) => run::validate(a),
        cli::Command::Dot(a) => run::dot(a),
        cli::Command::Submit(a) => client::submit(a),
        cli::Command::Status(a) => show::status(a),
        cli::Command::Watch(a) => client::watch(a),
        cli::Command::Cancel(a) => client::cancel(a),
        cli::Command::Rerun(a) => client::rerun(a),
        cli::Command::Runs(a) => show::runs(a),
        cli::Command::Agents(a) => show::agents(a),
        cli::Command::Logs(a) => logs::logs(a),
        cli::Command::Webhooks(c) => webhooks::command(c),
        cli::Command::Completions(a) => docs::completions(a),
        cli::Command::Man(a) => docs::man(a),
    };
    // A progress line still shown (an early return) must not stay on the terminal.
    out::progress_clear();
    ExitCode::from(code)
}

/// The services' logging set-up, quieter by default: a command line prints its own messages,
/// so the libraries' logs show only from `warn` up unless `RUST_LOG` asks for more.
fn logging() {
    factotum_service::logging::init_with_default(factotum_service::LogFormat::Pretty, "warn");
}
