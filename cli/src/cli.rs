//! The command line, as Factotum 0.7 had it (plus a few flags of ours, marked as such).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

// The flags of the commands that run a job (`run`, `submit`, `validate`, `dot`).
mod job;
pub use job::*;

#[derive(Debug, Parser)]
#[command(
    name = "factotum",
    version,
    about = "Run Snowplow Factotum factfiles: DAGs of shell tasks.",
    long_about = "Run Snowplow Factotum factfiles: DAGs of shell tasks, here or on a fleet of agents.\n\n\
Exit codes: 0 every task succeeded (or the job finished early on request), 1 the factfile \
could not be read or is invalid, 2 a task failed, 3 bad arguments, 4 the coordinator could not \
be reached or refused the request."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a factfile on this machine: each task starts as soon as its own dependencies succeed.
    Run(RunArgs),
    /// Check a factfile (schema, templating, dependencies) without running it.
    Validate(ValidateArgs),
    /// Print the factfile's task graph in Graphviz DOT.
    Dot(DotArgs),
    /// Submit a factfile to a coordinator; prints the run's reference (with --wait: runs it to
    /// the end with `run`'s output and exit codes).
    ///
    /// Takes `run`'s flags except two that only a local run has: --webhook-timeout and
    /// --kill-grace (a submitted run's tasks are stopped with their agent's --kill-grace, and
    /// its coordinator delivers its webhooks for as long as it takes).
    Submit(SubmitArgs),
    /// Show a run's state, its tasks, and why it waits if it does.
    Status(StatusArgs),
    /// Follow a run's transitions and output until it ends.
    Watch(RunRef),
    /// Cancel a run: nothing more starts, running tasks are stopped (FAILED, "job cancelled"),
    /// the rest is skipped; the run's state is CANCELLED (its webhooks say FAILED).
    Cancel(CancelArgs),
    /// Start a new run of a finished run's factfile, variables and tags (prints its reference).
    Rerun(RerunArgs),
    /// List the runs a coordinator knows, newest first (the newest 50 unless --limit says).
    Runs(RunsArgs),
    /// List the agents connected to a coordinator.
    Agents(AgentsArgs),
    /// Print a task's complete output, as the agent that ran it keeps it (raw, not redacted):
    /// its stdout to stdout and its stderr to stderr, byte for byte.
    Logs(LogsArgs),
    /// Webhook delivery on a coordinator: endpoints and dead letters (`list`), sending a run's
    /// dead-lettered events again (`replay`), an endpoint a 410 disabled (`enable`).
    #[command(subcommand)]
    Webhooks(WebhooksCommand),
    /// Print a shell completion script for factotum (or, with --bin, factotum-coordinator or
    /// factotum-agent), e.g. `factotum completions bash > /etc/bash_completion.d/factotum`.
    Completions(CompletionsArgs),
    /// Write the manual pages of factotum, factotum-coordinator and factotum-agent (one per
    /// command and subcommand) into a directory (for packaging).
    #[command(hide = true)]
    Man(ManArgs),
}

/// How a command prints what it shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns and lines for people.
    #[default]
    Text,
    /// One JSON document on stdout for programs (fields in docs/CLI-OUTPUT.md).
    Json,
}

#[derive(Debug, Clone, Copy, Args)]
pub struct Output {
    /// text for people, json for programs: one JSON document on stdout (see docs/CLI-OUTPUT.md).
    #[arg(
        short = 'o',
        long = "output",
        value_name = "FORMAT",
        value_enum,
        default_value_t
    )]
    pub output: Format,
}

impl Output {
    pub fn json(&self) -> bool {
        self.output == Format::Json
    }
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub run: RunRef,
    #[command(flatten)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct AgentsArgs {
    #[command(flatten)]
    pub remote: Remote,
    #[command(flatten)]
    pub output: Output,
}

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// List webhook endpoints (state, filter, pending and dead-lettered events, last error) and
    /// the newest dead letters. Needs the `read` scope.
    List(WebhooksListArgs),
    /// Send a run's dead-lettered events again, in order, with their original webhook-id,
    /// sequence and ttm. Needs the `admin` scope.
    Replay(WebhooksReplayArgs),
    /// Enable an endpoint that answered 410 Gone (its events since then are dead letters:
    /// replay them per run). Needs the `admin` scope.
    Enable(WebhooksEnableArgs),
}

#[derive(Debug, Args)]
pub struct WebhooksListArgs {
    #[command(flatten)]
    pub remote: Remote,
    #[command(flatten)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct WebhooksReplayArgs {
    /// The run (its reference, or a unique prefix of at least 6 characters).
    #[arg(value_name = "RUN")]
    pub run: String,
    /// Only events with this sequence number (the factotum-sequence header) or later.
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    pub from: u64,
    /// Only to this URL (one of the run's own endpoints).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Args)]
pub struct WebhooksEnableArgs {
    /// The endpoint's URL, as `webhooks list` shows it.
    #[arg(value_name = "URL")]
    pub url: String,
    #[command(flatten)]
    pub remote: Remote,
}

/// The programs `completions --bin` and `man` know.
pub const BINARIES: [&str; 3] = ["factotum", "factotum-coordinator", "factotum-agent"];

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh or fish (also elvish, powershell).
    #[arg(value_name = "SHELL")]
    pub shell: clap_complete::Shell,
    /// The program to complete.
    #[arg(long, value_name = "PROGRAM", default_value = "factotum", value_parser = BINARIES)]
    pub bin: String,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// The directory to write the pages into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct Remote {
    /// A coordinator's gRPC address (repeatable; comma-separated in the variable). They are
    /// tried in order until one answers; a follower's answer leads to the leader it names.
    #[arg(
        long,
        value_name = "URL",
        env = "FACTOTUM_COORDINATOR",
        value_delimiter = ',',
        default_value = factotum_proto::DEFAULT_COORDINATOR
    )]
    pub coordinator: Vec<String>,
    /// The largest gRPC message sent to or accepted from a coordinator (a run's status, a
    /// factfile); keep it at the coordinators' `--max-message-size`. Like 16MiB or 4000000.
    #[arg(long, env = "FACTOTUM_MAX_MESSAGE_SIZE", value_name = "BYTES", default_value = "16MiB",
          value_parser = factotum_service::size::at_least(factotum_common::run::MIN_MAX_MESSAGE as u64))]
    pub max_message_size: usize,
    /// A token for coordinators that need one (`--tokens` on the coordinator); sent as
    /// `authorization: Bearer <token>`. Prefer the variable: a flag shows in `ps`.
    #[arg(
        long,
        env = "FACTOTUM_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    #[command(flatten)]
    pub tls: factotum_service::tls::ClientArgs,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    #[command(flatten)]
    pub run: RunRef,
    /// Why: kept on the run (`status` shows it) and given to its skipped tasks.
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(Debug, Args)]
pub struct RunsArgs {
    /// Only runs of this job name.
    #[arg(long, value_name = "NAME")]
    pub job: Option<String>,
    /// Only runs in this state (repeatable): WAITING, RUNNING, SUCCEEDED, FAILED, CANCELLED.
    #[arg(long, value_name = "STATE", value_parser = parse_run_state)]
    pub state: Vec<String>,
    /// Only runs started since then: a time (RFC 3339, like 2026-11-30T08:00:00Z) or a
    /// duration back from now (like 2h, 30m or 1d).
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// At most this many runs (newest first), fetched a page at a time.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    #[command(flatten)]
    pub remote: Remote,
    #[command(flatten)]
    pub output: Output,
}

/// The run states `runs --state` takes (any case).
pub const RUN_STATES: [&str; 5] = ["WAITING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"];

fn parse_run_state(s: &str) -> Result<String, String> {
    let up = s.to_ascii_uppercase();
    if RUN_STATES.contains(&up.as_str()) {
        Ok(up)
    } else {
        Err(format!(
            "'{s}' is not a run state: one of {}",
            RUN_STATES.join(", ")
        ))
    }
}

#[derive(Debug, Args)]
pub struct RunRef {
    /// The run's reference (as printed by `submit`), or a unique start of it (6 or more
    /// characters).
    pub run: String,
    #[command(flatten)]
    pub remote: Remote,
    /// No colours.
    #[arg(long, env = "FACTOTUM_NO_COLOUR")]
    pub no_colour: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The run's reference, or a unique start of it.
    pub run: String,
    /// The task's name.
    pub task: String,
    /// Which attempt (from 1; default: the latest).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub attempt: u32,
    /// Keep printing what the task writes until the attempt ends.
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last BYTES of each stream (then, with --follow, what comes).
    #[arg(long, value_name = "BYTES", value_parser = factotum_service::size::parse_size)]
    pub tail: Option<u64>,
    /// Which of the task's streams: both (stdout to stdout, stderr to stderr), stdout or stderr.
    #[arg(long, value_enum, default_value = "both")]
    pub stream: LogStreams,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogStreams {
    Both,
    Stdout,
    Stderr,
}

#[derive(Debug, Args)]
pub struct RerunArgs {
    /// The finished run to run again.
    pub run: String,
    /// Run only the tasks that did not succeed and their descendants (without it: every task
    /// the old run planned). Tasks skipped because another asked for an early finish stay done.
    #[arg(long)]
    pub from_failed: bool,
    #[command(flatten)]
    pub remote: Remote,
    /// Stream the new run's output like `factotum run` and exit with its exit code.
    #[arg(long)]
    pub wait: bool,
    /// No colours.
    #[arg(long, env = "FACTOTUM_NO_COLOUR")]
    pub no_colour: bool,
}
