//! The engine's vocabulary: what is asked of it ([`RunSpec`]), what it shows ([`RunInfo`],
//! [`AgentInfo`]), what watchers see ([`WatchEvent`]) and how it refuses ([`EngineError`]).
//!
//! Plain data with no behaviour, so the submission parser, the store records, the wire
//! conversions and the engine can all speak it without importing one another.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::{DateTime, Utc};
use factotum_common::constraint::Constraint;
pub use factotum_common::constraint::Placement;
use factotum_common::dag::Plan;
use factotum_common::run::{JobState, Stream, TaskState};
use tokio::sync::mpsc;

/// A run to start.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// The templated compact factfile (for `jobReference` and the payloads' `factfile`).
    pub compact_factfile: String,
    pub plan: Arc<Plan>,
    pub tags: BTreeMap<String, String>,
    /// This run's own webhook URLs.
    pub webhooks: Vec<String>,
    /// Characters of output kept per stream.
    pub max_output: usize,
    /// Simulate every task with exit code 0.
    pub dry_run: bool,
    /// Every one must hold for an agent to take the run's tasks.
    pub constraints: Vec<Constraint>,
    pub placement: Placement,
    /// Start even if a run of the same job (same `jobReference`) is still active.
    pub allow_concurrent: bool,
    /// A repeated submission with this key gets the run the first one started.
    pub idempotency_key: Option<String>,
    /// A fresh UUIDv4 string; the run's reference is its SHA-256.
    pub uuid: String,
    /// The run this one re-runs (`factotum rerun`).
    pub rerun_of: Option<String>,
    /// Send `RUNNING → RUNNING` task updates (webhooks) with the output so far this often.
    pub heartbeat: Option<Duration>,
    /// `--no-redact`: nothing is redacted (`redaction` is empty).
    pub no_redact: bool,
    /// `--parallel` (already applied to the plan; recorded so a new leader applies it too).
    pub parallel: Option<u32>,
    /// What the run's tasks' output and payloads hide (the plan's tasks carry their lists).
    pub redaction: Redaction,
}

/// A run's redaction, decided at submission (`spec::redaction`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Redaction {
    /// `--env`'s string leaves worth redacting (longest first); with each task's own `env`
    /// values they make its lease's `redact`.
    pub secrets: Vec<String>,
    /// The factfile the payloads' `factfile` field carries instead of the templated one: the
    /// submitted text, compact, with every task `env` value and every secret replaced by
    /// `[redacted]`. `None`: nothing to hide (no `--env` strings, no task `env`), or redaction
    /// is off — the templated factfile, as Factotum sends it.
    pub shown_factfile: Option<String>,
}

/// A run as `status` shows it.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub run_id: String,
    pub job_name: String,
    pub job_reference: String,
    pub state: JobState,
    pub start_time: DateTime<Utc>,
    pub duration: Duration,
    /// Why ready tasks are not running.
    pub waiting_reason: Option<String>,
    pub tasks: Vec<TaskInfo>,
    pub tags: BTreeMap<String, String>,
    /// The run this one re-runs.
    pub rerun_of: Option<String>,
    /// Why it was cancelled, if it was (a whole-job timeout is not a cancel).
    pub cancel_reason: Option<String>,
    /// Who cancelled it: the caller's name when clients authenticate (`--tokens`).
    pub cancelled_by: Option<String>,
    /// How many tasks it has, and how many have ended (`tasks` may be left out: a brief).
    pub task_count: usize,
    pub tasks_done: usize,
}

impl RunInfo {
    /// Its state as the API and the CLI name it: a cancelled run that ended is CANCELLED.
    pub fn shown_state(&self) -> &'static str {
        match (self.state, &self.cancel_reason) {
            (JobState::Failed, Some(_)) => "CANCELLED",
            (s, _) => s.as_str(),
        }
    }

    /// The same run without its task list (for listings).
    pub fn brief(&self) -> RunInfo {
        RunInfo {
            tasks: vec![],
            waiting_reason: self.waiting_reason.clone(),
            tags: self.tags.clone(),
            rerun_of: self.rerun_of.clone(),
            cancel_reason: self.cancel_reason.clone(),
            cancelled_by: self.cancelled_by.clone(),
            run_id: self.run_id.clone(),
            job_name: self.job_name.clone(),
            job_reference: self.job_reference.clone(),
            ..*self
        }
    }
}

/// Which runs a listing shows, and where its page starts.
#[derive(Debug, Clone, Default)]
pub struct RunQuery {
    /// Runs on the page, at most.
    pub limit: usize,
    /// The page starts after this run, in the listing's order (newest first, then by id):
    /// the start time and id of the last run of the previous page.
    pub after: Option<(DateTime<Utc>, String)>,
    pub job_name: Option<String>,
    /// States as [`RunInfo::shown_state`] names them (any, when empty).
    pub states: Vec<&'static str>,
    /// Tags every run shown carries.
    pub tags: BTreeMap<String, String>,
    pub started_after: Option<DateTime<Utc>>,
    pub started_before: Option<DateTime<Utc>>,
}

impl RunQuery {
    pub fn admits(&self, r: &RunInfo) -> bool {
        self.job_name.as_ref().is_none_or(|j| *j == r.job_name)
            && (self.states.is_empty() || self.states.contains(&r.shown_state()))
            && self.tags.iter().all(|(k, v)| r.tags.get(k) == Some(v))
            && self.started_after.is_none_or(|t| r.start_time > t)
            && self.started_before.is_none_or(|t| r.start_time < t)
    }
}

/// A page of a listing: the runs (briefs), and where the next page starts if there is one.
#[derive(Debug, Clone)]
pub struct RunPage {
    pub runs: Vec<RunInfo>,
    pub next: Option<(DateTime<Utc>, String)>,
}

#[derive(Debug, Clone)]
pub struct TaskInfo {
    pub name: Arc<str>,
    pub state: TaskState,
    pub attempt: u32,
    pub agent: Option<String>,
    pub started: Option<DateTime<Utc>>,
    pub duration: Option<Duration>,
    pub return_code: Option<i32>,
    pub error_message: Option<String>,
    /// The tasks it depends on.
    pub deps: Vec<Arc<str>>,
    /// The current attempt's output tails.
    pub stdout: String,
    pub stderr: String,
}

/// An agent as `agents` shows it.
#[derive(Debug, Clone)]
pub struct AgentInfo {
    pub agent_id: String,
    pub hostname: String,
    pub ips: Vec<String>,
    pub labels: HashMap<String, String>,
    pub slots: u32,
    pub in_use: u32,
    pub last_heard: Duration,
    pub version: String,
    pub connected: bool,
}

/// What a watcher of a run sees, in order.
#[derive(Debug, Clone)]
pub enum WatchEvent {
    Job {
        previous: Option<JobState>,
        current: JobState,
    },
    Tasks(Vec<TaskChange>),
    /// A line of output, or a piece of a long one (`continued`: it goes on the line the
    /// previous piece of this task and stream began).
    Output {
        task: Arc<str>,
        stream: Stream,
        line: String,
        continued: bool,
    },
    Done(RunSummary),
    /// This watcher fell behind: `skipped` output lines were not queued for it (transitions
    /// and the end are never skipped).
    Lagged {
        skipped: u64,
    },
    /// A resumed watch may have missed output lines (they are not re-sent).
    Gap,
    /// The run as it is now: first in a resumed watch, in place of its history.
    Snapshot(Box<RunInfo>),
}

/// A task transition with what is known about the task right after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskChange {
    pub name: Arc<str>,
    pub previous: TaskState,
    pub current: TaskState,
    pub started: Option<DateTime<Utc>>,
    pub duration: Option<Duration>,
    pub return_code: Option<i32>,
    pub error_message: Option<String>,
}

/// The end of a run.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub run_id: String,
    pub state: JobState,
    /// Every task with its final state, in display order.
    pub tasks: Vec<(Arc<str>, TaskState)>,
    pub duration: Duration,
    pub first_failed: Option<Arc<str>>,
    pub first_no_op: Option<Arc<str>>,
    /// It ended because it was cancelled.
    pub cancelled: bool,
}

/// A submitted run: its id and the stream of what happens to it.
#[derive(Debug)]
pub struct Submitted {
    pub run_id: String,
    pub job_reference: String,
    /// The run an idempotency key pointed at, rather than a new one.
    pub existing: bool,
    pub watch: Watch,
}

/// What a watcher receives, in order. The engine never waits for a watcher: it queues at most
/// `--watch-buffer` bytes of output lines for one (counted in `queued`, given back as they
/// are read); past that, lines are skipped and a [`WatchEvent::Lagged`] says how many.
#[derive(Debug)]
pub struct Watch {
    rx: mpsc::UnboundedReceiver<WatchEvent>,
    queued: Arc<AtomicUsize>,
}

impl Watch {
    pub fn new(rx: mpsc::UnboundedReceiver<WatchEvent>, queued: Arc<AtomicUsize>) -> Watch {
        Watch { rx, queued }
    }

    /// A watch that has ended (nothing more will come).
    pub fn ended() -> Watch {
        Watch::new(mpsc::unbounded_channel().1, Arc::default())
    }

    /// The next event; `None` once the engine has nothing more for this watcher.
    pub async fn recv(&mut self) -> Option<WatchEvent> {
        std::future::poll_fn(|cx| self.poll_next_event(cx)).await
    }

    /// Bytes of output lines queued for this watcher and not read yet.
    pub fn queued_output(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    fn poll_next_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<WatchEvent>> {
        let ev = std::task::ready!(self.rx.poll_recv(cx));
        if let Some(WatchEvent::Output { line, .. }) = &ev {
            self.queued.fetch_sub(line.len(), Ordering::Relaxed);
        }
        Poll::Ready(ev)
    }
}

impl tokio_stream::Stream for Watch {
    type Item = WatchEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<WatchEvent>> {
        self.get_mut().poll_next_event(cx)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the engine has stopped")]
    Stopped,
    /// `--max-queued-calls` calls are already waiting for the engine.
    #[error("{0} calls are already waiting for the engine")]
    Busy(usize),
    #[error("no run '{0}'")]
    NoSuchRun(String),
    /// A run id prefix that more than one run starts with (up to five of them).
    #[error("'{prefix}' is the start of more than one run id")]
    AmbiguousRun {
        prefix: String,
        candidates: Vec<String>,
    },
    #[error("run {0} has already finished")]
    Finished(String),
    #[error("a run of this job (same factfile and tags) is still active: {0}")]
    AlreadyActive(String),
    #[error("run {0} has not finished: cancel it or wait for it before re-running it")]
    StillActive(String),
    #[error("run {0} has no task that did not succeed: nothing to re-run")]
    NothingToRerun(String),
    #[error("run {run} cannot be re-run: {why}")]
    CannotRerun { run: String, why: String },
    #[error("{url} is not one of run {run}'s webhook endpoints ({})", endpoints.join(", "))]
    NotAnEndpoint {
        run: String,
        url: String,
        endpoints: Vec<String>,
    },
    #[error("the factfile is {0} characters in base64, over the 1000000 the webhook schemas allow in `factfile`: with webhooks, submit a smaller factfile")]
    TooLargeForWebhooks(usize),
    #[error("webhook endpoint {0} is not disabled")]
    NotDisabled(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Factotum Server's `drain` state: no new runs until `run` (see `engine::server_jobs`).
    #[error("the coordinators are draining: no new runs are accepted until the state is set back to run")]
    Draining,
    /// A run of the same Factotum Server job id is still active (the run's id).
    #[error("a run of this server job is still active: {0}")]
    ServerJobActive(String),
}

/// A Factotum Server job request (`/submit`'s body, its id computed).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerJob {
    pub job_id: String,
    pub job_name: String,
    pub factfile_path: String,
    pub factfile_args: Vec<String>,
}

/// The queue as `/status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServerStatus {
    pub draining: bool,
    /// Active runs none of whose tasks was leased yet.
    pub waiting_runs: u32,
}

/// What `/check` shows: the job (empty when the run was not submitted through `/submit`)
/// and its run.
#[derive(Debug, Clone)]
pub struct ServerJobRun {
    pub job: ServerJob,
    pub run: RunInfo,
}
