//! The command line, as Factotum 0.7 had it (plus a few flags of ours, marked as such).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use factotum_common::constraint::Placement;
use factotum_service::DurationRange;

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

/// What to run and how: the flags `run` and `submit` share (Factotum's `run` flags).
#[derive(Debug, Args)]
pub struct JobArgs {
    /// The factfile to run.
    pub factfile: PathBuf,
    /// Run only this task and its descendants (repeatable: several start tasks and everything
    /// below them). Every planned task that is not a start must depend only on planned tasks.
    #[arg(long, value_name = "TASK")]
    pub start: Vec<String>,
    /// Template variables as a JSON object, e.g. '{"message": "hi", "n": 3}'.
    #[arg(long, value_name = "JSON", env = "FACTOTUM_ENV")]
    pub env: Option<String>,
    /// Print each task's command line and simulate every task with exit code 0.
    #[arg(long)]
    pub dry_run: bool,
    /// (Ours) Show secrets: by default the string values of --env and the tasks' env values
    /// (4 characters or more) are replaced by [redacted] in the tasks' output, webhooks and the
    /// store, and webhooks carry the untemplated factfile with env values redacted.
    #[arg(long, env = "FACTOTUM_NO_REDACT")]
    pub no_redact: bool,
    /// (Ours) Run at most N of the job's tasks at once (within the factfile's maxParallel; on
    /// `submit` it sets the run's). Default: no limit, as Factotum — but `run` never starts more
    /// than the machine's process limits leave room for: the rest wait, and it says so.
    #[arg(long, value_name = "N", env = "FACTOTUM_PARALLEL",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub parallel: Option<u32>,
    /// No colours (also off with CLICOLOR=0, NO_COLOR, or when the output is not a terminal).
    #[arg(long, env = "FACTOTUM_NO_COLOUR")]
    pub no_colour: bool,
    /// POST every job and task transition to this URL (repeatable).
    #[arg(long, value_name = "URL")]
    pub webhook: Vec<String>,
    /// Tag the run "key,value" (repeatable); tags are also template variables `tag:<key>`.
    #[arg(long, value_name = "KEY,VALUE")]
    pub tag: Vec<String>,
    /// "host,<value>": `*`, the hostname, or a name or IP resolving to one of the machine's
    /// non-loopback addresses; with `submit` also "label,<key>=<value>" (repeatable; all must
    /// hold). `run` checks this machine and runs nothing if it does not match.
    #[arg(long, value_name = "KIND,VALUE")]
    pub constraint: Vec<String>,
    /// Characters of each task's stdout and stderr kept for webhooks (at most 524288, what a
    /// result can carry: a larger value is clamped to it, with a warning).
    #[arg(
        long,
        value_name = "N",
        default_value_t = factotum_common::run::DEFAULT_MAX_OUTPUT,
        env = "FACTOTUM_MAX_STDOUTERR_SIZE"
    )]
    pub max_stdouterr_size: usize,
}

impl JobArgs {
    /// `--max-stdouterr-size` as applied: clamped to what a result can carry
    /// ([`factotum_common::run::MAX_TAIL`]), saying so on stderr when it is.
    pub fn max_output(&self) -> usize {
        let kept = factotum_common::run::clamp_max_output(self.max_stdouterr_size);
        if kept < self.max_stdouterr_size {
            crate::out::errln!(
                "Warning: --max-stdouterr-size {} is more than a task's result can carry; keeping the last {kept} characters of each stream",
                self.max_stdouterr_size
            );
        }
        kept
    }
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub job: JobArgs,
    #[command(flatten)]
    pub remote: Remote,
    /// Keep the run on one agent (sticky) or place each task anywhere eligible (default: the
    /// factfile's `placement`, else sticky).
    #[arg(long, value_name = "sticky|spread", value_parser = placement)]
    pub placement: Option<Placement>,
    /// Stream the run's output like `factotum run` and exit with its exit code.
    #[arg(long)]
    pub wait: bool,
    /// Start even if a run of the same job (same factfile and tags) is still active.
    #[arg(long)]
    pub allow_concurrent: bool,
    /// Submit at most once: a repeated submission with this key gets the first one's run.
    #[arg(long, value_name = "KEY", env = "FACTOTUM_IDEMPOTENCY_KEY")]
    pub idempotency_key: Option<String>,
    /// Send a RUNNING task update (webhook) with the output so far at this interval, as `run`
    /// does; the coordinator sends them (off by default; at least 100ms).
    #[arg(
        long,
        value_name = "DURATION",
        env = "FACTOTUM_HEARTBEAT_INTERVAL",
        value_parser = DurationRange::from(Duration::from_millis(100)).parser()
    )]
    pub heartbeat_interval: Option<Duration>,
    /// With --wait, the run's output goes to stderr and the final status to stdout.
    #[command(flatten)]
    pub output: Output,
    #[command(flatten)]
    pub local_only: LocalOnly,
}

/// `run`'s flags that a submitted run cannot take: accepted by `submit` only to say so clearly
/// (hidden; without them clap would answer "unexpected argument").
#[derive(Debug, Args)]
pub struct LocalOnly {
    #[arg(long, hide = true, value_name = "DURATION")]
    pub webhook_timeout: Option<String>,
    #[arg(long, hide = true, value_name = "DURATION")]
    pub kill_grace: Option<String>,
}

impl LocalOnly {
    /// Why the flag given cannot apply to a submitted run, if one was given.
    pub fn refusal(&self) -> Option<String> {
        let why = if self.webhook_timeout.is_some() {
            "--webhook-timeout is for `factotum run` only: a coordinator delivers a submitted run's webhooks for as long as it takes"
        } else if self.kill_grace.is_some() {
            "--kill-grace is for `factotum run` only: a submitted run's tasks are stopped with their agent's --kill-grace"
        } else {
            return None;
        };
        Some(format!("Error: {why}"))
    }
}

/// (Ours) How large templating may make a factfile (`run` and `validate`; a coordinator has the
/// same flags for what is submitted to it).
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// The most one templated field may render to; a larger one makes the factfile invalid.
    /// Sizes take units (512KiB, 1MiB); a bare number is bytes.
    #[arg(
        long,
        value_name = "BYTES",
        default_value = "1MiB",
        env = "FACTOTUM_MAX_RENDERED_SIZE",
        value_parser = factotum_service::size::at_least(1)
    )]
    pub max_rendered_size: usize,
    /// The most all of the factfile's templated fields may render to together.
    #[arg(
        long,
        value_name = "BYTES",
        default_value = "64MiB",
        env = "FACTOTUM_MAX_RENDERED_TOTAL",
        value_parser = factotum_service::size::at_least(1)
    )]
    pub max_rendered_total: usize,
}

impl RenderArgs {
    pub fn limits(&self) -> factotum_common::template::Limits {
        factotum_common::template::Limits {
            field: self.max_rendered_size,
            total: self.max_rendered_total,
        }
    }
}

/// (Ours) How large a factfile may be (`run`, `validate`, `dot`; a coordinator has its own
/// limits for what is submitted to it).
#[derive(Debug, Args)]
pub struct InputArgs {
    /// The largest factfile read; a larger one is invalid, refused before it is read whole.
    /// Sizes take units (512KiB, 32MiB); a bare number is bytes.
    #[arg(
        long,
        value_name = "BYTES",
        default_value = "32MiB",
        env = "FACTOTUM_MAX_FACTFILE_SIZE",
        value_parser = factotum_service::size::at_least(1024)
    )]
    pub max_factfile_size: usize,
    /// The most tasks a factfile may hold; one with more is invalid.
    #[arg(
        long,
        value_name = "N",
        default_value_t = factotum_coordinator::spec::DEFAULT_MAX_TASKS,
        env = "FACTOTUM_MAX_TASKS"
    )]
    pub max_tasks: usize,
}

impl InputArgs {
    pub fn limits(&self) -> factotum_coordinator::spec::InputLimits {
        factotum_coordinator::spec::InputLimits {
            max_size: self.max_factfile_size,
            max_tasks: self.max_tasks,
            // `run` on one's own machine: as many as the command line gives.
            max_webhooks: usize::MAX,
        }
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub job: JobArgs,
    #[command(flatten)]
    pub render: RenderArgs,
    #[command(flatten)]
    pub input: InputArgs,
    /// Send a RUNNING task update with the output so far at this interval (off by default).
    /// A bare number is seconds; units work too: 500ms, 15s, 2m, 1h30m.
    #[arg(
        long,
        value_name = "DURATION",
        env = "FACTOTUM_HEARTBEAT_INTERVAL",
        value_parser = DurationRange::POSITIVE.parser()
    )]
    pub heartbeat_interval: Option<Duration>,
    /// (Ours) At the end, wait at most this long for webhooks still being delivered (a bare
    /// number is seconds; units work too: 500ms, 15s, 2m).
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "30s",
        env = "FACTOTUM_WEBHOOK_TIMEOUT",
        value_parser = DurationRange::ANY.parser()
    )]
    pub webhook_timeout: Duration,
    #[command(flatten)]
    pub signing: factotum_coordinator::webhook::sign::SigningArgs,
    /// (Ours) On cancel, the time between TERM and KILL of a task's process group (a bare
    /// number is seconds; units work too: 500ms, 15s, 2m).
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "10s",
        env = "FACTOTUM_KILL_GRACE",
        value_parser = DurationRange::ANY.parser()
    )]
    pub kill_grace: Duration,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The factfile to check.
    pub factfile: PathBuf,
    /// Template variables as a JSON object.
    #[arg(long, value_name = "JSON", env = "FACTOTUM_ENV")]
    pub env: Option<String>,
    #[command(flatten)]
    pub render: RenderArgs,
    #[command(flatten)]
    pub input: InputArgs,
    #[command(flatten)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct DotArgs {
    /// The factfile to draw.
    pub factfile: PathBuf,
    /// Draw only this task and its descendants (repeatable).
    #[arg(long, value_name = "TASK")]
    pub start: Vec<String>,
    /// Write to this file instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Replace the --output file if it exists.
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub input: InputArgs,
}

/// `--placement sticky|spread`, as the factfile spells it.
fn placement(s: &str) -> Result<Placement, String> {
    s.parse()
}
