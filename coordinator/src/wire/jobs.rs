//! The client API's conversions (`factotum.jobs.v2`), both ways: what clients see of runs,
//! tasks, agents and watch events, and what their requests mean. The CLI turns what a
//! coordinator sends back into the very values its console prints for a local run.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use factotum_common::constraint::{Constraint, Placement};
use factotum_common::run::{JobState, Stream, TaskState};
use factotum_proto::jobs as pb;

use crate::model::{
    AgentInfo, RunInfo, RunSummary, ServerJob, ServerStatus, TaskChange, TaskInfo, WatchEvent,
};
use crate::webhook::dead::DeadLetter;
use crate::webhook::endpoint::Filter;
use crate::webhook::EndpointReport;

pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

pub fn from_timestamp(t: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    Utc.timestamp_opt(t.seconds, u32::try_from(t.nanos).ok()?)
        .single()
}

pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap_or(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 0,
    })
}

pub fn from_duration(d: &prost_types::Duration) -> Duration {
    Duration::try_from(*d).unwrap_or_default()
}

/// A run's state as the API shows it: a run that ended because it was cancelled is CANCELLED
/// (its webhooks say FAILED, as Factotum's would).
pub fn run_state(state: JobState, cancelled: bool) -> pb::RunState {
    match state {
        JobState::Waiting => pb::RunState::Waiting,
        JobState::Running => pb::RunState::Running,
        JobState::Succeeded => pb::RunState::Succeeded,
        JobState::Failed if cancelled => pb::RunState::Cancelled,
        JobState::Failed => pb::RunState::Failed,
    }
}

/// The engine's state for an API state (CANCELLED is a FAILED run that was cancelled).
pub fn run_state_from_pb(s: i32) -> Option<JobState> {
    Some(match pb::RunState::try_from(s).ok()? {
        pb::RunState::Unspecified => return None,
        pb::RunState::Waiting => JobState::Waiting,
        pb::RunState::Running => JobState::Running,
        pb::RunState::Succeeded => JobState::Succeeded,
        pb::RunState::Failed | pb::RunState::Cancelled => JobState::Failed,
    })
}

/// How the CLI names an API state (the engine's names, and CANCELLED).
pub fn run_state_name(s: i32) -> &'static str {
    match pb::RunState::try_from(s) {
        Ok(pb::RunState::Cancelled) => "CANCELLED",
        _ => run_state_from_pb(s).map_or("UNKNOWN", JobState::as_str),
    }
}

pub fn task_state(s: TaskState) -> pb::TaskState {
    match s {
        TaskState::Waiting => pb::TaskState::Waiting,
        TaskState::Running => pb::TaskState::Running,
        TaskState::Succeeded => pb::TaskState::Succeeded,
        TaskState::SucceededNoOp => pb::TaskState::SucceededNoOp,
        TaskState::Failed => pb::TaskState::Failed,
        TaskState::Skipped => pb::TaskState::Skipped,
    }
}

pub fn task_state_from_pb(s: i32) -> Option<TaskState> {
    Some(match pb::TaskState::try_from(s).ok()? {
        pb::TaskState::Unspecified => return None,
        pb::TaskState::Waiting => TaskState::Waiting,
        pb::TaskState::Running => TaskState::Running,
        pb::TaskState::Succeeded => TaskState::Succeeded,
        pb::TaskState::SucceededNoOp => TaskState::SucceededNoOp,
        pb::TaskState::Failed => TaskState::Failed,
        pb::TaskState::Skipped => TaskState::Skipped,
    })
}

fn stream(s: Stream) -> i32 {
    match s {
        Stream::Stdout => pb::Stream::Stdout as i32,
        Stream::Stderr => pb::Stream::Stderr as i32,
    }
}

fn stream_from_pb(s: i32) -> Stream {
    if s == pb::Stream::Stderr as i32 {
        Stream::Stderr
    } else {
        Stream::Stdout
    }
}

pub fn task(t: &TaskInfo) -> pb::Task {
    pb::Task {
        name: t.name.to_string(),
        state: task_state(t.state) as i32,
        attempt: t.attempt,
        agent: t.agent.clone().unwrap_or_default(),
        started: t.started.map(timestamp),
        duration: t.duration.map(duration),
        return_code: t.return_code,
        error_message: t.error_message.clone().unwrap_or_default(),
        dependencies: t.deps.iter().map(|d| d.to_string()).collect(),
        stdout: String::new(),
        stderr: String::new(),
    }
}

/// A run as `GetRun` shows it, with the output tails of the task named `output_of` (if any).
pub fn run_with_output(r: &RunInfo, output_of: &str) -> pb::Run {
    let mut run = run(r, true);
    if output_of.is_empty() {
        return run;
    }
    for (pb, info) in run.tasks.iter_mut().zip(&r.tasks) {
        if &*info.name == output_of {
            pb.stdout = info.stdout.clone();
            pb.stderr = info.stderr.clone();
        }
    }
    run
}

/// A run as `GetRun` shows it (`with_tasks`), or as `ListRuns` does (no task list).
pub fn run(r: &RunInfo, with_tasks: bool) -> pb::Run {
    pb::Run {
        run_id: r.run_id.clone(),
        job_name: r.job_name.clone(),
        job_reference: r.job_reference.clone(),
        state: run_state(r.state, r.cancel_reason.is_some()) as i32,
        start_time: Some(timestamp(r.start_time)),
        duration: Some(duration(r.duration)),
        waiting_reason: r.waiting_reason.clone().unwrap_or_default(),
        tags: r.tags.clone().into_iter().collect(),
        rerun_of: r.rerun_of.clone().unwrap_or_default(),
        cancelled_by: r.cancelled_by.clone().unwrap_or_default(),
        cancel_reason: r.cancel_reason.clone().unwrap_or_default(),
        task_count: u32::try_from(r.task_count).unwrap_or(u32::MAX),
        tasks_done: u32::try_from(r.tasks_done).unwrap_or(u32::MAX),
        tasks: if with_tasks {
            r.tasks.iter().map(task).collect()
        } else {
            vec![]
        },
    }
}

pub fn agent(a: &AgentInfo, now: DateTime<Utc>) -> pb::Agent {
    let heard = chrono::Duration::from_std(a.last_heard).unwrap_or_default();
    pb::Agent {
        agent_id: a.agent_id.clone(),
        hostname: a.hostname.clone(),
        ips: a.ips.clone(),
        labels: a.labels.clone(),
        slots: a.slots,
        in_use: a.in_use,
        last_heard: Some(timestamp(now - heard)),
        version: a.version.clone(),
        connected: a.connected,
    }
}

pub fn event(ev: WatchEvent) -> pb::RunEvent {
    use pb::run_event::Event;
    let event = match ev {
        WatchEvent::Job { previous, current } => Event::Job(pb::JobChange {
            previous: previous.map_or(0, |p| run_state(p, false) as i32),
            current: run_state(current, false) as i32,
        }),
        WatchEvent::Tasks(changes) => Event::Tasks(pb::TaskChanges {
            changes: changes
                .into_iter()
                .map(|c| pb::TaskChange {
                    name: c.name.to_string(),
                    previous: task_state(c.previous) as i32,
                    current: task_state(c.current) as i32,
                    started: c.started.map(timestamp),
                    duration: c.duration.map(duration),
                    return_code: c.return_code,
                    error_message: c.error_message.unwrap_or_default(),
                })
                .collect(),
        }),
        WatchEvent::Output {
            task,
            stream: s,
            line,
            continued,
        } => Event::Output(pb::OutputLine {
            task: task.to_string(),
            stream: stream(s),
            line,
            continued,
        }),
        WatchEvent::Lagged { skipped } => Event::Lagged(pb::Lagged { skipped }),
        WatchEvent::Gap => Event::Gap(pb::Gap {}),
        WatchEvent::Snapshot(r) => Event::Snapshot(pb::Snapshot {
            state: run_state(r.state, r.cancel_reason.is_some()) as i32,
            tasks: r.tasks.iter().map(task).collect(),
        }),
        WatchEvent::Done(s) => Event::End(pb::RunEnd {
            state: run_state(s.state, s.cancelled) as i32,
            duration: Some(duration(s.duration)),
            tasks: s
                .tasks
                .iter()
                .map(|(name, state)| pb::Task {
                    name: name.to_string(),
                    state: task_state(*state) as i32,
                    ..Default::default()
                })
                .collect(),
            first_failed: s.first_failed.map(|t| t.to_string()).unwrap_or_default(),
            first_no_op: s.first_no_op.map(|t| t.to_string()).unwrap_or_default(),
        }),
    };
    pb::RunEvent { event: Some(event) }
}

/// The engine event a wire event stands for (`None` for one this version does not know).
pub fn event_from_pb(ev: pb::RunEvent, run_id: &str) -> Option<WatchEvent> {
    use pb::run_event::Event;
    let non_empty = |s: String| (!s.is_empty()).then_some(s);
    Some(match ev.event? {
        Event::Job(j) => WatchEvent::Job {
            previous: run_state_from_pb(j.previous),
            current: run_state_from_pb(j.current)?,
        },
        Event::Tasks(t) => WatchEvent::Tasks(
            t.changes
                .into_iter()
                .filter_map(|c| {
                    let current = task_state_from_pb(c.current)?;
                    Some(TaskChange {
                        name: Arc::from(c.name.as_str()),
                        previous: task_state_from_pb(c.previous)?,
                        current,
                        started: c.started.as_ref().and_then(from_timestamp),
                        duration: c
                            .duration
                            .as_ref()
                            .map(from_duration)
                            .or_else(|| current.is_terminal().then_some(Duration::ZERO)),
                        return_code: c.return_code,
                        error_message: non_empty(c.error_message),
                    })
                })
                .collect(),
        ),
        Event::Output(o) => WatchEvent::Output {
            task: Arc::from(o.task.as_str()),
            stream: stream_from_pb(o.stream),
            line: o.line,
            continued: o.continued,
        },
        Event::Lagged(l) => WatchEvent::Lagged { skipped: l.skipped },
        Event::Gap(_) => WatchEvent::Gap,
        Event::Snapshot(s) => WatchEvent::Snapshot(Box::new(snapshot_info(s, run_id))),
        Event::End(e) => WatchEvent::Done(RunSummary {
            run_id: run_id.to_string(),
            state: run_state_from_pb(e.state)?,
            cancelled: e.state == pb::RunState::Cancelled as i32,
            tasks: e
                .tasks
                .into_iter()
                .filter_map(|t| Some((Arc::from(t.name.as_str()), task_state_from_pb(t.state)?)))
                .collect(),
            duration: e.duration.as_ref().map(from_duration).unwrap_or_default(),
            first_failed: non_empty(e.first_failed).map(|s| Arc::from(s.as_str())),
            first_no_op: non_empty(e.first_no_op).map(|s| Arc::from(s.as_str())),
        }),
    })
}

/// What a snapshot says of a run, as the engine's [`RunInfo`] (the fields it carries).
fn snapshot_info(s: pb::Snapshot, run_id: &str) -> RunInfo {
    let tasks: Vec<TaskInfo> = s
        .tasks
        .into_iter()
        .filter_map(|t| {
            Some(TaskInfo {
                name: Arc::from(t.name.as_str()),
                state: task_state_from_pb(t.state)?,
                attempt: t.attempt,
                agent: Some(t.agent).filter(|a| !a.is_empty()),
                started: t.started.as_ref().and_then(from_timestamp),
                duration: t.duration.as_ref().map(from_duration),
                return_code: t.return_code,
                error_message: Some(t.error_message).filter(|e| !e.is_empty()),
                deps: t
                    .dependencies
                    .iter()
                    .map(|d| Arc::from(d.as_str()))
                    .collect(),
                stdout: t.stdout,
                stderr: t.stderr,
            })
        })
        .collect();
    let done = tasks.iter().filter(|t| t.state.is_terminal()).count();
    RunInfo {
        run_id: run_id.to_string(),
        job_name: String::new(),
        job_reference: String::new(),
        state: run_state_from_pb(s.state).unwrap_or(JobState::Running),
        start_time: DateTime::<Utc>::MIN_UTC,
        duration: Duration::ZERO,
        waiting_reason: None,
        task_count: tasks.len(),
        tasks_done: done,
        tasks,
        tags: Default::default(),
        rerun_of: None,
        cancel_reason: (s.state == pb::RunState::Cancelled as i32).then(String::new),
        cancelled_by: None,
    }
}

/// A constraint as a client sent it (host names not resolved yet).
pub fn constraint_from_pb(c: pb::Constraint) -> Result<Constraint, String> {
    match c.kind {
        Some(pb::constraint::Kind::Host(value)) if !value.is_empty() => Ok(Constraint::Host {
            value,
            resolved: vec![],
        }),
        Some(pb::constraint::Kind::Label(l)) if !l.key.is_empty() => Ok(Constraint::Label {
            key: l.key,
            value: l.value,
        }),
        _ => Err("a constraint needs a host value or a label key".into()),
    }
}

/// A requested placement; `None` for unspecified (the factfile's, or sticky).
pub fn placement_from_pb(p: i32) -> Option<Placement> {
    match pb::Placement::try_from(p).ok()? {
        pb::Placement::Unspecified => None,
        pb::Placement::Sticky => Some(Placement::Sticky),
        pb::Placement::Spread => Some(Placement::Spread),
    }
}

pub fn placement(p: Placement) -> pb::Placement {
    match p {
        Placement::Sticky => pb::Placement::Sticky,
        Placement::Spread => pb::Placement::Spread,
    }
}

/// Dead letters a ListWebhooks answer lists, at most (the total is counted).
const MAX_DEAD_LISTED: usize = 1000;

/// The ListWebhooks answer: endpoints, and the newest dead letters.
pub fn webhooks(endpoints: &[EndpointReport], dead: &[DeadLetter]) -> pb::ListWebhooksResponse {
    pb::ListWebhooksResponse {
        endpoints: (endpoints.iter())
            .map(|e| pb::WebhookEndpoint {
                url: e.url.clone(),
                disabled: e.disabled.is_some(),
                disabled_since: e.disabled.as_ref().map(|d| timestamp(d.since)),
                pending: e.pending as u64,
                dead_lettered: e.dead as u64,
                last_error: (e.disabled.as_ref().map(|d| d.error.clone()))
                    .or_else(|| e.last_error.clone())
                    .unwrap_or_default(),
                filter: match e.filter {
                    Filter::All => "all",
                    Filter::Job => "job",
                    Filter::Terminal => "terminal",
                }
                .into(),
                signed: e.signed,
            })
            .collect(),
        dead_letters: (dead.iter().take(MAX_DEAD_LISTED))
            .map(|d| pb::DeadLetter {
                run_id: d.run.clone(),
                sequence: d.seq,
                url: d.url.clone(),
                event_id: crate::webhook::event_id(&d.run, d.seq),
                reason: d.why.as_str().into(),
                error: d.error.clone(),
                attempts: d.attempts,
                dead_at: Some(timestamp(d.at)),
                transition_time: DateTime::from_timestamp_millis(d.ttm).map(timestamp),
            })
            .collect(),
        dead_letters_total: dead.len() as u64,
    }
}

/// Factotum Server's job request, from a `SubmitRunRequest`.
pub fn server_job_from_pb(j: pb::ServerJob) -> ServerJob {
    ServerJob {
        job_id: j.job_id,
        job_name: j.job_name,
        factfile_path: j.factfile_path,
        factfile_args: j.factfile_args,
    }
}

pub fn server_job(j: &ServerJob) -> pb::ServerJob {
    pb::ServerJob {
        job_id: j.job_id.clone(),
        job_name: j.job_name.clone(),
        factfile_path: j.factfile_path.clone(),
        factfile_args: j.factfile_args.clone(),
    }
}

pub fn server_status(s: ServerStatus) -> pb::ServerStatus {
    pb::ServerStatus {
        draining: s.draining,
        waiting_runs: s.waiting_runs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_states_go_there_and_back() {
        let t = Utc.timestamp_opt(1_764_540_000, 123_456_789).unwrap();
        assert_eq!(from_timestamp(&timestamp(t)), Some(t));
        let d = Duration::from_millis(4_600);
        assert_eq!(from_duration(&duration(d)), d);
        for s in TaskState::ALL {
            assert_eq!(task_state_from_pb(task_state(s) as i32), Some(s));
        }
        let cancelled = run_state(JobState::Failed, true) as i32;
        assert_eq!(run_state_name(cancelled), "CANCELLED");
        assert_eq!(run_state_from_pb(cancelled), Some(JobState::Failed));
        assert_eq!(
            run_state_name(run_state(JobState::Running, true) as i32),
            "RUNNING"
        );
        assert_eq!(run_state_from_pb(0), None);
    }
}
