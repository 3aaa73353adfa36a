//! The run state machine: `(RunState, Event, now) -> (RunState', Vec<Action>)`.
//!
//! Pure: no IO, no clock. The embedded runner and the coordinator feed it the same events and
//! carry out the same actions, so every scheduling rule below exists once:
//! - a task is ready as soon as its own dependencies succeeded (no level barrier);
//! - a return code in `terminateJobWithSuccess` is `SUCCEEDED_NO_OP` and skips the descendants,
//!   one in `continueJob` is `SUCCEEDED`, anything else is `FAILED` and skips the descendants;
//!   independent branches keep going; a task skipped again accumulates `<old>, <new>` reasons;
//! - every dispatch is a numbered attempt and a result for any other attempt is ignored;
//! - a failed attempt the task's `retry` covers goes back to WAITING (with that attempt's code and
//!   a message saying when the next starts) and is ready again at that time;
//! - timers (task and job timeouts, retry delays) are absolute times derived from recorded
//!   facts; [`Event::Tick`] fires the ones due at `now` and [`RunState::next_deadline`] says when
//!   the next one is, so a driver (or a new leader after a failover) only has to call back then.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::dag::{Plan, TaskId};
use crate::format::timestamp;
use crate::tail::Tail;

mod types;
pub use types::*;

#[derive(Debug, Clone)]
pub struct RunState {
    plan: Arc<Plan>,
    opts: RunOptions,
    job: JobState,
    started_at: DateTime<Utc>,
    tasks: Vec<TaskRecord>,
    ready: Vec<TaskId>,
    /// Tasks not yet in a terminal state.
    remaining: usize,
    /// Tasks running now (for the job's `maxParallel`).
    running: usize,
    cancelled: Option<String>,
    /// The first task that failed and the first that asked for an early finish (console summary).
    first_failed: Option<TaskId>,
    first_no_op: Option<TaskId>,
}

impl RunState {
    pub fn new(plan: Arc<Plan>, started_at: DateTime<Utc>, opts: RunOptions) -> RunState {
        let tasks = plan
            .tasks
            .iter()
            .map(|t| TaskRecord {
                state: TaskState::Waiting,
                attempt: 0,
                started: None,
                duration: None,
                stdout: Tail::new(opts.max_output),
                stderr: Tail::new(opts.max_output),
                return_code: None,
                error_message: None,
                retry_at: None,
                ready_at: None,
                stopping: None,
                unmet: t.deps.len() as u32,
            })
            .collect();
        RunState {
            remaining: plan.len(),
            running: 0,
            plan,
            opts,
            job: JobState::Waiting,
            started_at,
            tasks,
            ready: vec![],
            cancelled: None,
            first_failed: None,
            first_no_op: None,
        }
    }

    /// Rebuilds a run from what was recorded of it (by a coordinator that has since gone).
    /// Tasks without a record are waiting. Readiness and counts are derived, not stored.
    pub fn restore(
        plan: Arc<Plan>,
        started_at: DateTime<Utc>,
        opts: RunOptions,
        job: JobState,
        cancelled: Option<String>,
        records: Vec<Option<RestoredTask>>,
    ) -> RunState {
        let mut run = RunState::new(plan, started_at, opts);
        run.job = job;
        run.cancelled = cancelled;
        for (rec, saved) in run.tasks.iter_mut().zip(records) {
            let Some(t) = saved else { continue };
            rec.state = t.state;
            rec.attempt = t.attempt;
            rec.started = t.started;
            rec.duration = t.duration;
            rec.stdout = tail_of(&t.stdout, opts.max_output);
            rec.stderr = tail_of(&t.stderr, opts.max_output);
            rec.return_code = t.return_code;
            rec.error_message = t.error_message;
            rec.retry_at = t.retry_at.filter(|_| t.state == TaskState::Waiting);
            if t.state == TaskState::Running && run.cancelled.is_some() {
                rec.stopping = Some(Stop::Cancelled);
            }
        }
        let plan = Arc::clone(&run.plan);
        for (i, spec) in plan.tasks.iter().enumerate() {
            run.tasks[i].unmet = spec.deps.iter().filter(|&&d| !run.satisfies(d)).count() as u32;
        }
        run.remaining = run.tasks.iter().filter(|t| !t.state.is_terminal()).count();
        run.running = run
            .tasks
            .iter()
            .filter(|t| t.state == TaskState::Running)
            .count();
        run.ready = plan
            .order
            .iter()
            .copied()
            .filter(|&t| run.is_ready(t))
            .collect();

        // The first to fail and the first to finish early, as the live run saw them: by when
        // they ended (ties, and tasks without times, in display order).
        let first_ended = |state: TaskState| {
            plan.order
                .iter()
                .copied()
                .filter(|&t| run.tasks[t as usize].state == state)
                .min_by_key(|&t| {
                    let r = &run.tasks[t as usize];
                    let ended = r
                        .started
                        .zip(r.duration)
                        .and_then(|(s, d)| Some(s + chrono::Duration::from_std(d).ok()?));
                    (ended.is_none(), ended)
                })
        };
        run.first_failed = first_ended(TaskState::Failed);
        run.first_no_op = first_ended(TaskState::SucceededNoOp);
        run
    }

    pub fn plan(&self) -> &Arc<Plan> {
        &self.plan
    }

    /// Why the run was cancelled, if it was.
    pub fn cancelled(&self) -> Option<&str> {
        self.cancelled.as_deref()
    }

    pub fn job_state(&self) -> JobState {
        self.job
    }

    pub fn started_at(&self) -> DateTime<Utc> {
        self.started_at
    }

    pub fn task(&self, id: TaskId) -> Option<&TaskRecord> {
        self.tasks.get(id as usize)
    }

    pub fn tasks(&self) -> &[TaskRecord] {
        &self.tasks
    }

    pub fn first_failed(&self) -> Option<TaskId> {
        self.first_failed
    }

    pub fn first_no_op(&self) -> Option<TaskId> {
        self.first_no_op
    }

    /// Tasks whose dependencies are done and that wait for a placement, in display order.
    pub fn ready(&self) -> &[TaskId] {
        &self.ready
    }

    /// Tasks running now.
    pub fn running(&self) -> usize {
        self.running
    }

    /// Ready tasks with no time they became ready (a restored run's) count from `now`.
    pub fn ready_from(&mut self, now: DateTime<Utc>) {
        for &t in &self.ready {
            self.tasks[t as usize].ready_at.get_or_insert(now);
        }
    }

    /// The ready tasks that may start now: as many as the job's `maxParallel` leaves room for.
    pub fn leasable(&self) -> &[TaskId] {
        &self.ready[..self.room().min(self.ready.len())]
    }

    /// When the next timer is due (a task or job timeout, a retry delay), if any.
    pub fn next_deadline(&self) -> Option<DateTime<Utc>> {
        if self.job.is_terminal() || self.cancelled.is_some() || !self.plan.has_timers {
            return None;
        }
        let mut next: Option<DateTime<Utc>> = self.job_deadline();
        for (i, rec) in self.tasks.iter().enumerate() {
            let due = match rec.state {
                TaskState::Running if rec.stopping.is_none() => self.task_deadline(i as TaskId),
                TaskState::Waiting => rec.retry_at,
                _ => None,
            };
            if let Some(d) = due {
                next = Some(next.map_or(d, |n| n.min(d)));
            }
        }
        next
    }

    fn job_deadline(&self) -> Option<DateTime<Utc>> {
        let t = self.plan.timeout?;
        Some(self.started_at + chrono::Duration::from_std(t).ok()?)
    }

    fn task_deadline(&self, task: TaskId) -> Option<DateTime<Utc>> {
        let t = self.plan.tasks[task as usize].policy().timeout?;
        Some(self.tasks[task as usize].started? + chrono::Duration::from_std(t).ok()?)
    }

    /// Whether the task may be leased now: waiting, its dependencies met, no retry delay
    /// pending, and the run not cancelled.
    fn is_ready(&self, t: TaskId) -> bool {
        let rec = &self.tasks[t as usize];
        rec.state == TaskState::Waiting
            && rec.unmet == 0
            && rec.retry_at.is_none()
            && self.cancelled.is_none()
    }

    /// How many more tasks may run at once (the job's `maxParallel`).
    fn room(&self) -> usize {
        self.plan.max_parallel.map_or(usize::MAX, |max| {
            (max as usize).saturating_sub(self.running)
        })
    }

    /// Whether `dep` no longer holds back its dependents.
    fn satisfies(&self, dep: TaskId) -> bool {
        match self.tasks[dep as usize].state {
            TaskState::Succeeded => true,
            TaskState::Failed => self.plan.tasks[dep as usize].policy().continue_on_failure,
            _ => false,
        }
    }

    /// Applies one event at `now`; returns what to do, in order.
    pub fn apply(&mut self, event: Event, now: DateTime<Utc>) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Start => self.start(now, &mut out),
            Event::Lease { tasks } => self.lease(tasks, now, &mut out),
            Event::Output {
                task,
                attempt,
                stream,
                line,
                continued,
            } => {
                if let Some(rec) = self.current_attempt(task, attempt) {
                    match stream {
                        Stream::Stdout => rec.stdout.push_piece(&line, continued),
                        Stream::Stderr => rec.stderr.push_piece(&line, continued),
                    }
                }
            }
            Event::AttemptEnded {
                task,
                attempt,
                result,
            } => self.finished(task, attempt, result, now, &mut out),
            Event::Heartbeat => {
                for &t in &self.plan.order {
                    if self.tasks[t as usize].state == TaskState::Running {
                        let tr = TaskTransition {
                            task: t,
                            previous: TaskState::Running,
                            current: TaskState::Running,
                        };
                        out.push(self.update(UpdateKind::Tasks(vec![tr]), now));
                    }
                }
            }
            Event::Cancel { reason } => self.cancel(reason, now, &mut out),
            Event::Tick => self.tick(now, &mut out),
        }
        out
    }

    fn tick(&mut self, now: DateTime<Utc>, out: &mut Vec<Action>) {
        if self.job.is_terminal() || self.cancelled.is_some() || !self.plan.has_timers {
            return;
        }
        if self.job_deadline().is_some_and(|d| d <= now) {
            self.cancel(JOB_TIMED_OUT.to_string(), now, out);
            return;
        }
        let mut due = vec![];
        for i in 0..self.tasks.len() {
            let t = i as TaskId;
            let rec = &self.tasks[i];
            match rec.state {
                TaskState::Running
                    if rec.stopping.is_none()
                        && self.task_deadline(t).is_some_and(|d| d <= now) =>
                {
                    let rec = &mut self.tasks[i];
                    rec.stopping = Some(Stop::TimedOut);
                    out.push(Action::Kill {
                        task: t,
                        attempt: rec.attempt,
                    });
                }
                TaskState::Waiting if rec.retry_at.is_some_and(|d| d <= now) => {
                    let rec = &mut self.tasks[i];
                    rec.ready_at = rec.retry_at.take();
                    due.push(t);
                }
                _ => {}
            }
        }
        if !due.is_empty() {
            self.ready.extend(due);
            self.plan.sort_display(&mut self.ready);
        }
    }

    /// Whether this is the task's running attempt (results and output of any other are ignored).
    pub fn is_current(&self, task: TaskId, attempt: u32) -> bool {
        self.tasks
            .get(task as usize)
            .is_some_and(|r| r.state == TaskState::Running && r.attempt == attempt)
    }

    fn current_attempt(&mut self, task: TaskId, attempt: u32) -> Option<&mut TaskRecord> {
        self.is_current(task, attempt)
            .then(|| &mut self.tasks[task as usize])
    }

    fn start(&mut self, now: DateTime<Utc>, out: &mut Vec<Action>) {
        if self.job != JobState::Waiting
            || !self.ready.is_empty()
            || self.tasks.iter().any(|t| t.attempt > 0)
        {
            return;
        }
        out.push(self.update(
            UpdateKind::Job {
                previous: None,
                current: JobState::Waiting,
            },
            now,
        ));
        self.ready = self
            .plan
            .order
            .iter()
            .copied()
            .filter(|&t| self.tasks[t as usize].unmet == 0)
            .collect();
        for &t in &self.ready {
            self.tasks[t as usize].ready_at = Some(now);
        }
        if self.plan.is_empty() {
            self.set_job(JobState::Running, now, out);
            self.finish_if_done(now, out);
        }
    }

    fn lease(&mut self, mut tasks: Vec<TaskId>, now: DateTime<Utc>, out: &mut Vec<Action>) {
        if self.job.is_terminal() || self.cancelled.is_some() {
            return;
        }
        tasks.retain(|&t| (t as usize) < self.tasks.len() && self.is_ready(t));
        self.plan.sort_display(&mut tasks);
        tasks.dedup();
        tasks.truncate(self.room());
        if tasks.is_empty() {
            return;
        }
        self.running += tasks.len();
        self.ready.retain(|t| !tasks.contains(t));
        let mut transitions = Vec::with_capacity(tasks.len());
        for &t in &tasks {
            let rec = &mut self.tasks[t as usize];
            rec.state = TaskState::Running;
            rec.attempt += 1;
            rec.started = Some(now);
            rec.duration = None;
            rec.return_code = None;
            rec.error_message = None;
            rec.retry_at = None;
            rec.stopping = None;
            rec.stdout = Tail::new(self.opts.max_output);
            rec.stderr = Tail::new(self.opts.max_output);
            transitions.push(TaskTransition {
                task: t,
                previous: TaskState::Waiting,
                current: TaskState::Running,
            });
        }
        if self.job == JobState::Waiting {
            self.set_job(JobState::Running, now, out);
        }
        out.push(self.update(UpdateKind::Tasks(transitions), now));
        for &t in &tasks {
            out.push(Action::Dispatch {
                task: t,
                attempt: self.tasks[t as usize].attempt,
            });
        }
    }

    fn finished(
        &mut self,
        task: TaskId,
        attempt: u32,
        result: TaskResult,
        now: DateTime<Utc>,
        out: &mut Vec<Action>,
    ) {
        let plan = Arc::clone(&self.plan);
        let Some(spec) = plan.task(task) else { return };
        let max = self.opts.max_output;
        let cancelled = self.cancelled.clone();
        let Some(rec) = self.current_attempt(task, attempt) else {
            return; // a stale or unknown attempt: ignored
        };
        rec.duration = Some(result.duration);
        rec.stdout = tail_of(&result.stdout, max);
        rec.stderr = tail_of(&result.stderr, max);
        let stopping = rec.stopping.take();
        rec.return_code = match &result.outcome {
            Outcome::Exited(code) => Some(*code),
            Outcome::SpawnFailed(_) => Some(-1),
            Outcome::Lost(_) => None,
        };
        // What the attempt came to; for a failure, its message and what kind of retry may follow.
        // The attempt's verdict: a final success state, or a failure's message and the retry
        // rule that applies to it.
        let verdict = match (stopping, result.outcome) {
            (Some(Stop::Cancelled), _) => Err((cancelled.unwrap_or_default(), Retry::Never)),
            (Some(Stop::TimedOut), _) => Err((
                format!(
                    "the task timed out after {}s",
                    spec.policy().timeout.unwrap_or_default().as_secs()
                ),
                Retry::Failure(None),
            )),
            (None, Outcome::Exited(code)) if spec.terminate_job_with_success.contains(&code) => {
                Ok(TaskState::SucceededNoOp)
            }
            (None, Outcome::Exited(code)) if spec.continue_job.contains(&code) => {
                Ok(TaskState::Succeeded)
            }
            (None, Outcome::Exited(code)) => Err((
                format!(
                    "the task exited with a value not specified in continue_job - {code} (task expects one of the following return codes to continue [{}])",
                    spec.continue_job.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",")
                ),
                Retry::Failure(Some(code)),
            )),
            (None, Outcome::SpawnFailed(err)) => Err((
                format!("Error executing process - {err}"),
                Retry::Failure(None),
            )),
            (None, Outcome::Lost(reason)) => Err((reason, Retry::Lost)),
        };
        let policy = spec.policy();
        let (state, error_message) = match verdict {
            Ok(state) => (state, None),
            Err((message, kind)) => {
                let allowed = policy.max_attempts(kind == Retry::Lost);
                let retry = self.cancelled.is_none()
                    && attempt < allowed
                    && match kind {
                        Retry::Never => false,
                        Retry::Lost => policy.retry_when_lost,
                        Retry::Failure(c) => policy.retry.as_ref().is_some_and(|r| r.retries(c)),
                    };
                if retry {
                    self.retry_later(task, attempt, allowed, &message, now, out);
                    return;
                }
                (TaskState::Failed, Some(message))
            }
        };
        let rec = &mut self.tasks[task as usize];
        rec.state = state;
        rec.error_message = error_message;
        self.running -= 1;
        self.remaining -= 1;
        let cascade = match state {
            TaskState::Failed => {
                self.first_failed.get_or_insert(task);
                // After a cancel everything that waited is already skipped with its reason.
                (!policy.continue_on_failure && self.cancelled.is_none())
                    .then(|| format!("the task '{}' failed", spec.name))
            }
            TaskState::SucceededNoOp => {
                self.first_no_op.get_or_insert(task);
                Some(format!(
                    "the task '{}' requested early termination",
                    spec.name
                ))
            }
            _ => None,
        };
        let mut transitions = vec![TaskTransition {
            task,
            previous: TaskState::Running,
            current: state,
        }];
        match cascade {
            Some(reason) => self.skip_descendants(task, &reason, &mut transitions),
            None => {
                let mut newly_ready = vec![];
                for &c in &spec.children {
                    let child = &mut self.tasks[c as usize];
                    child.unmet -= 1;
                    if child.unmet == 0 && child.state == TaskState::Waiting {
                        newly_ready.push(c);
                    }
                }
                self.plan.sort_display(&mut newly_ready);
                match self.cancelled.clone() {
                    Some(reason) => {
                        for c in newly_ready {
                            self.skip(c, &reason, &mut transitions);
                            self.skip_descendants(c, &reason, &mut transitions);
                        }
                    }
                    None => {
                        for &c in &newly_ready {
                            self.tasks[c as usize].ready_at = Some(now);
                        }
                        self.ready.extend(newly_ready);
                    }
                }
            }
        }
        out.push(self.update(UpdateKind::Tasks(transitions), now));
        self.finish_if_done(now, out);
    }

    /// A failed attempt with attempts left: RUNNING → WAITING, ready again after the delay.
    fn retry_later(
        &mut self,
        task: TaskId,
        attempt: u32,
        allowed: u32,
        message: &str,
        now: DateTime<Utc>,
        out: &mut Vec<Action>,
    ) {
        let spec = &self.plan.tasks[task as usize];
        let next = attempt + 1;
        let delay = spec
            .policy()
            .retry
            .as_ref()
            .map(|r| r.delay_before(next))
            .unwrap_or_default();
        let at = now + chrono::Duration::from_std(delay).unwrap_or_default();
        let rec = &mut self.tasks[task as usize];
        rec.state = TaskState::Waiting;
        rec.error_message = Some(format!(
            "attempt {attempt} of {allowed} failed: {message}; attempt {next} starts at {}",
            timestamp(at)
        ));
        self.running -= 1;
        if delay.is_zero() {
            rec.retry_at = None;
            rec.ready_at = Some(now);
            self.ready.push(task);
            self.plan.sort_display(&mut self.ready);
        } else {
            rec.retry_at = Some(at);
        }
        let tr = TaskTransition {
            task,
            previous: TaskState::Running,
            current: TaskState::Waiting,
        };
        out.push(self.update(UpdateKind::Tasks(vec![tr]), now));
    }

    fn cancel(&mut self, reason: String, now: DateTime<Utc>, out: &mut Vec<Action>) {
        if self.job.is_terminal() || self.cancelled.is_some() {
            return;
        }
        self.cancelled = Some(reason.clone());
        self.ready.clear();
        for i in 0..self.tasks.len() {
            let rec = &mut self.tasks[i];
            if rec.state == TaskState::Running {
                rec.stopping = Some(Stop::Cancelled);
                out.push(Action::Kill {
                    task: i as TaskId,
                    attempt: rec.attempt,
                });
            }
        }
        let mut transitions = vec![];
        for i in 0..self.plan.order.len() {
            let t = self.plan.order[i];
            if self.tasks[t as usize].state == TaskState::Waiting {
                self.skip(t, &reason, &mut transitions);
            }
        }
        if !transitions.is_empty() {
            out.push(self.update(UpdateKind::Tasks(transitions), now));
        }
        self.finish_if_done(now, out);
    }

    /// Skips every waiting or skipped descendant of `task`, in display order.
    fn skip_descendants(
        &mut self,
        task: TaskId,
        reason: &str,
        transitions: &mut Vec<TaskTransition>,
    ) {
        for d in self.plan.descendants(task) {
            self.skip(d, reason, transitions);
        }
    }

    fn skip(&mut self, t: TaskId, reason: &str, transitions: &mut Vec<TaskTransition>) {
        let rec = &mut self.tasks[t as usize];
        let previous = rec.state;
        match previous {
            TaskState::Waiting => {
                rec.error_message = Some(reason.to_string());
                rec.retry_at = None;
                self.remaining -= 1;
            }
            TaskState::Skipped => {
                let old = rec.error_message.take().unwrap_or_default();
                rec.error_message = Some(if old.is_empty() {
                    reason.to_string()
                } else {
                    format!("{old}, {reason}")
                });
            }
            _ => return,
        }
        rec.state = TaskState::Skipped;
        self.ready.retain(|&r| r != t);
        transitions.push(TaskTransition {
            task: t,
            previous,
            current: TaskState::Skipped,
        });
    }

    fn finish_if_done(&mut self, now: DateTime<Utc>, out: &mut Vec<Action>) {
        if self.remaining > 0 || self.job.is_terminal() {
            return;
        }
        let failed =
            self.cancelled.is_some() || self.tasks.iter().any(|t| t.state == TaskState::Failed);
        let end = if failed {
            JobState::Failed
        } else {
            JobState::Succeeded
        };
        if self.job == JobState::Waiting {
            self.set_job(JobState::Running, now, out);
        }
        self.set_job(end, now, out);
        out.push(Action::RunEnded(end));
    }

    fn set_job(&mut self, state: JobState, now: DateTime<Utc>, out: &mut Vec<Action>) {
        let previous = self.job;
        self.job = state;
        out.push(self.update(
            UpdateKind::Job {
                previous: Some(previous),
                current: state,
            },
            now,
        ));
    }

    fn update(&self, kind: UpdateKind, now: DateTime<Utc>) -> Action {
        Action::Emit(Update {
            kind,
            at: now,
            snapshot: self.opts.snapshots.then(|| Arc::new(self.snapshot(now))),
        })
    }

    /// The run as it is now, tasks in display order.
    pub fn snapshot(&self, now: DateTime<Utc>) -> Snapshot {
        Snapshot {
            run_state: self.job,
            run_duration: (now - self.started_at).to_std().unwrap_or_default(),
            tasks: self
                .plan
                .order
                .iter()
                .map(|&t| {
                    let r = &self.tasks[t as usize];
                    TaskView {
                        name: Arc::clone(&self.plan.tasks[t as usize].name),
                        state: r.state,
                        started: r.started,
                        duration: r.duration,
                        stdout: r.stdout.to_field(),
                        stderr: r.stderr.to_field(),
                        return_code: r.return_code,
                        error_message: r.error_message.clone(),
                    }
                })
                .collect(),
        }
    }
}

/// The tasks a `--from-failed` rerun of a finished run executes, in display order: each task that
/// did not succeed, and its descendants. A task skipped only because an ancestor asked for an
/// early finish (`SUCCEEDED_NO_OP`) counts as done: that decision stands.
pub fn rerun_set(plan: &Plan, states: &[TaskState]) -> Vec<TaskId> {
    let state = |t: TaskId| states.get(t as usize).copied().unwrap_or_default();
    // Display order lists every task after its dependencies.
    let mut below_no_op = vec![false; plan.len()];
    for &t in &plan.order {
        below_no_op[t as usize] = plan.tasks[t as usize]
            .deps
            .iter()
            .any(|&d| state(d) == TaskState::SucceededNoOp || below_no_op[d as usize]);
    }
    let done: Vec<bool> = (0..plan.len() as TaskId)
        .map(|t| match state(t) {
            TaskState::Succeeded | TaskState::SucceededNoOp => true,
            TaskState::Skipped => below_no_op[t as usize],
            _ => false,
        })
        .collect();
    plan.not_succeeded(&done)
}

/// Which retry rule a failure falls under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// The run was cancelled: never.
    Never,
    /// The agent was lost: `onLost`.
    Lost,
    /// The task failed (with this exit code, if it has one): `retry`.
    Failure(Option<i32>),
}

fn tail_of(text: &str, max: usize) -> Tail {
    let mut t = Tail::new(max);
    if !text.is_empty() {
        t.push_line(text);
    }
    t
}

#[cfg(test)]
mod tests;
