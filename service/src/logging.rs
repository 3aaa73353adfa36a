//! Logs to stderr through `tracing`: the level from `RUST_LOG` (default `info`), the format from
//! `--log-format` (`pretty`, coloured only on a terminal, or `json` for collectors).

use clap::ValueEnum;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

/// Installs the global subscriber (level `info` unless `RUST_LOG` says otherwise); a second
/// call (tests starting several services in one process) keeps the first.
pub fn init(format: LogFormat) {
    init_with_default(format, "info")
}

/// The same, with another level when `RUST_LOG` is unset (a command line that prints its own
/// messages shows the libraries' logs only from `warn` up).
pub fn init_with_default(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = match format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init(),
        LogFormat::Pretty => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}
