//! The state machine's words: task and job states, the events it takes, the actions and updates
//! it returns, what it records of each task and what a snapshot shows; the limits on output.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::dag::TaskId;
use crate::tail::Tail;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum TaskState {
    #[default]
    Waiting,
    Running,
    Succeeded,
    SucceededNoOp,
    Failed,
    Skipped,
}

impl TaskState {
    /// The webhook name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Waiting => "WAITING",
            TaskState::Running => "RUNNING",
            TaskState::Succeeded => "SUCCEEDED",
            TaskState::SucceededNoOp => "SUCCEEDED_NO_OP",
            TaskState::Failed => "FAILED",
            TaskState::Skipped => "SKIPPED",
        }
    }

    pub fn is_terminal(self) -> bool {
        !matches!(self, TaskState::Waiting | TaskState::Running)
    }

    /// Every state, in the order a task may go through them.
    pub const ALL: [TaskState; 6] = [
        TaskState::Waiting,
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::SucceededNoOp,
        TaskState::Failed,
        TaskState::Skipped,
    ];

    /// The state with this webhook name.
    pub fn parse(name: &str) -> Option<TaskState> {
        TaskState::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether the task's process ran to an end (what the console's `N/M tasks run` counts).
    pub fn ran(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::SucceededNoOp | TaskState::Failed
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    Waiting,
    Running,
    Succeeded,
    Failed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Waiting => "WAITING",
            JobState::Running => "RUNNING",
            JobState::Succeeded => "SUCCEEDED",
            JobState::Failed => "FAILED",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed)
    }

    /// The state with this webhook name.
    pub fn parse(name: &str) -> Option<JobState> {
        [
            JobState::Waiting,
            JobState::Running,
            JobState::Succeeded,
            JobState::Failed,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }
}

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The process exited with this code (a signal counts as 1, as in Factotum).
    Exited(i32),
    /// The process could not be started.
    SpawnFailed(String),
    /// The attempt was given up without a result (its agent was lost); the text says why.
    Lost(String),
}

/// What an executor reports when an attempt ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskResult {
    pub outcome: Outcome,
    /// Tails of the output (the last `--max-stdouterr-size` characters).
    pub stdout: String,
    pub stderr: String,
    pub duration: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The run begins: `job_update` null → WAITING.
    Start,
    /// The engine placed these ready tasks; each gets a new attempt and becomes RUNNING.
    Lease { tasks: Vec<TaskId> },
    /// One line of a running attempt's output, or a piece of a long one (`continued`: it goes
    /// on the line the stream's previous piece began).
    Output {
        task: TaskId,
        attempt: u32,
        stream: Stream,
        line: String,
        continued: bool,
    },
    /// An attempt ended (its agent's report, or a lost agent's verdict).
    AttemptEnded {
        task: TaskId,
        attempt: u32,
        result: TaskResult,
    },
    /// Heartbeat tick: every running task reports RUNNING → RUNNING with its output so far.
    Heartbeat,
    /// Stop the run: start nothing more, kill what runs (it ends FAILED with `reason`), skip what
    /// has not run with `reason`.
    Cancel { reason: String },
    /// Time has passed: fire the timers due at `now` (task and job timeouts, retry delays).
    Tick,
}

/// Why an attempt is being killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// It ran past the task's `timeout`.
    TimedOut,
    /// The run was cancelled (or timed out as a whole).
    Cancelled,
}

/// The reason a job timeout gives every task it stops or skips.
pub const JOB_TIMED_OUT: &str = "job timed out";

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start this attempt of the task.
    Dispatch { task: TaskId, attempt: u32 },
    /// Kill this attempt (TERM, grace, KILL).
    Kill { task: TaskId, attempt: u32 },
    /// One webhook payload's worth of change, in order.
    Emit(Update),
    /// The run reached its final state.
    RunEnded(JobState),
}

/// One transition notice: a `job_update` or a `task_update`.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub kind: UpdateKind,
    pub at: DateTime<Utc>,
    /// The run as it was at this transition; captured only when someone consumes payloads.
    pub snapshot: Option<Arc<Snapshot>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum UpdateKind {
    Job {
        previous: Option<JobState>,
        current: JobState,
    },
    Tasks(Vec<TaskTransition>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskTransition {
    pub task: TaskId,
    pub previous: TaskState,
    pub current: TaskState,
}

impl TaskTransition {
    /// RUNNING → RUNNING: a heartbeat (`Event::Heartbeat`), which changes nothing.
    pub fn is_heartbeat(&self) -> bool {
        self.previous == self.current && self.current == TaskState::Running
    }
}

impl Update {
    /// An update of heartbeats only: nothing to record, best effort to send.
    pub fn is_heartbeat(&self) -> bool {
        match &self.kind {
            UpdateKind::Tasks(ts) => !ts.is_empty() && ts.iter().all(TaskTransition::is_heartbeat),
            UpdateKind::Job { .. } => false,
        }
    }
}

/// `runState`, `runDuration` and `taskStates` at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub run_state: JobState,
    pub run_duration: Duration,
    pub tasks: Vec<TaskView>,
}

/// One `taskStates` entry; optional fields are `None` until known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskView {
    pub name: Arc<str>,
    pub state: TaskState,
    pub started: Option<DateTime<Utc>>,
    pub duration: Option<Duration>,
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    pub return_code: Option<i32>,
    pub error_message: Option<String>,
}

/// Per-task record.
#[derive(Debug, Clone)]
pub struct TaskRecord {
    pub state: TaskState,
    /// The current attempt (0 = never dispatched).
    pub attempt: u32,
    pub started: Option<DateTime<Utc>>,
    pub duration: Option<Duration>,
    pub stdout: Tail,
    pub stderr: Tail,
    pub return_code: Option<i32>,
    pub error_message: Option<String>,
    /// A task waiting for its next attempt is not ready before this time.
    pub retry_at: Option<DateTime<Utc>>,
    /// When it last became ready (its dependencies met, its retry delay over): its wait for
    /// an agent is measured from here. Not recorded: a restored run's ready tasks have none
    /// until [`RunState::ready_from`] gives them one.
    pub ready_at: Option<DateTime<Utc>>,
    /// Why the current attempt is being killed, if it is.
    pub stopping: Option<Stop>,
    /// Dependencies not yet succeeded (or failed with `continueOnFailure`).
    pub(super) unmet: u32,
}

/// A task as recorded, for [`RunState::restore`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoredTask {
    pub state: TaskState,
    pub attempt: u32,
    pub started: Option<DateTime<Utc>>,
    pub duration: Option<Duration>,
    pub stdout: String,
    pub stderr: String,
    pub return_code: Option<i32>,
    pub error_message: Option<String>,
    pub retry_at: Option<DateTime<Utc>>,
}

/// Characters of output kept per stream unless told otherwise (`--max-stdouterr-size`).
pub const DEFAULT_MAX_OUTPUT: usize = 10_000;

/// The most of one stream a result carries, whatever `--max-stdouterr-size` asks: characters
/// kept, and also bytes (a tail is cut to this many bytes too). Two tails and the rest of a
/// result stay well under the smallest `--max-message-size` ([`MIN_MAX_MESSAGE`]) and a task's
/// store record under etcd's 1.5 MiB request limit.
pub const MAX_TAIL: usize = 512 * 1024;

/// The default of `--max-message-size`: the largest gRPC message a coordinator, an agent or
/// the CLI sends or accepts.
pub const DEFAULT_MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// The smallest `--max-message-size` accepted (tonic's own default): a result with two full
/// tails ([`MAX_TAIL`]) and an output line (1 MiB) always fit.
pub const MIN_MAX_MESSAGE: usize = 4 * 1024 * 1024;

/// `--max-stdouterr-size` as it is applied: at most [`MAX_TAIL`].
pub fn clamp_max_output(requested: usize) -> usize {
    requested.min(MAX_TAIL)
}

/// Options fixed for a run.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Characters of output kept per stream (`--max-stdouterr-size`).
    pub max_output: usize,
    /// Capture a [`Snapshot`] with every update (needed to build webhook payloads).
    pub snapshots: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            max_output: DEFAULT_MAX_OUTPUT,
            snapshots: true,
        }
    }
}
