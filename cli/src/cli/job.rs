//! The flags of the commands that run a job: `run`, `submit`, `validate` and `dot`, and the
//! groups they share.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use factotum_common::constraint::Placement;
use factotum_service::DurationRange;

use super::{Output, Remote};

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
