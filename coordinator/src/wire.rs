//! Every conversion between the domain's types and the wire's (`factotum.v1`), both ways, in
//! one place: what clients see of runs and agents, what agents are sent (welcome, leases,
//! cancels, acknowledgements) and what their reports mean. The coordinator sends what the CLI
//! turns back into the very values its console prints for a local run.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use factotum_common::constraint::{Constraint, Placement};
use factotum_common::dag::{PlanTask, TaskId};
use factotum_common::format::{iso8601, timestamp};
use factotum_common::run::{JobState, Outcome, Stream, TaskResult, TaskState};
use factotum_proto as pb;
use pb::{coordinator_message::Msg as ToAgent, CoordinatorMessage, LeaseRef};

use crate::model::{AgentInfo, RunInfo, RunSummary, TaskChange, TaskInfo, WatchEvent};

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map(timestamp).unwrap_or_default()
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

pub fn stream_to_pb(s: Stream) -> i32 {
    match s {
        Stream::Stdout => pb::Stream::Stdout as i32,
        Stream::Stderr => pb::Stream::Stderr as i32,
    }
}

pub fn stream_from_pb(s: i32) -> Stream {
    if s == pb::Stream::Stderr as i32 {
        Stream::Stderr
    } else {
        Stream::Stdout
    }
}

pub fn task_status(t: &TaskInfo) -> pb::TaskStatus {
    pb::TaskStatus {
        name: t.name.to_string(),
        state: t.state.as_str().into(),
        attempt: t.attempt,
        agent: t.agent.clone().unwrap_or_default(),
        started: time(t.started),
        duration: t.duration.map(iso8601).unwrap_or_default(),
        return_code: t.return_code,
        error_message: t.error_message.clone().unwrap_or_default(),
    }
}

pub fn run_status(r: &RunInfo) -> pb::RunStatus {
    pb::RunStatus {
        run_id: r.run_id.clone(),
        job_name: r.job_name.clone(),
        job_reference: r.job_reference.clone(),
        state: r.state.as_str().into(),
        start_time: timestamp(r.start_time),
        duration: iso8601(r.duration),
        waiting_reason: r.waiting_reason.clone().unwrap_or_default(),
        tasks: r.tasks.iter().map(task_status).collect(),
        tags: r.tags.clone().into_iter().collect(),
        rerun_of: r.rerun_of.clone().unwrap_or_default(),
    }
}

pub fn agent_status(a: &AgentInfo) -> pb::AgentStatus {
    pb::AgentStatus {
        agent_id: a.agent_id.clone(),
        hostname: a.hostname.clone(),
        ips: a.ips.clone(),
        labels: a.labels.clone(),
        slots: a.slots,
        in_use: a.in_use,
        last_heard_ms: u64::try_from(a.last_heard.as_millis()).unwrap_or(u64::MAX),
        version: a.version.clone(),
        connected: a.connected,
    }
}

pub fn event_to_pb(ev: WatchEvent) -> pb::RunEvent {
    use pb::run_event::Event;
    let event = match ev {
        WatchEvent::Job { previous, current } => Event::Job(pb::JobChange {
            previous: previous.map(|p| p.as_str().to_string()).unwrap_or_default(),
            current: current.as_str().into(),
        }),
        WatchEvent::Tasks(changes) => Event::Tasks(pb::TaskChanges {
            changes: changes
                .into_iter()
                .map(|c| pb::TaskChange {
                    name: c.name.to_string(),
                    previous: c.previous.as_str().into(),
                    current: c.current.as_str().into(),
                    started: c
                        .started
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
                        .unwrap_or_default(),
                    duration_nanos: c.duration.map(nanos).unwrap_or_default(),
                    return_code: c.return_code,
                    error_message: c.error_message.unwrap_or_default(),
                })
                .collect(),
        }),
        WatchEvent::Output {
            task,
            stream,
            line,
            continued,
        } => Event::Output(pb::OutputLine {
            task: task.to_string(),
            stream: stream_to_pb(stream),
            line,
            continued,
        }),
        WatchEvent::Lagged { skipped } => Event::Lagged(pb::Lagged { skipped }),
        WatchEvent::Done(s) => Event::End(pb::RunEnd {
            state: s.state.as_str().into(),
            duration_nanos: nanos(s.duration),
            tasks: s
                .tasks
                .iter()
                .map(|(name, state)| pb::TaskStatus {
                    name: name.to_string(),
                    state: state.as_str().into(),
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
            previous: JobState::parse(&j.previous),
            current: JobState::parse(&j.current)?,
        },
        Event::Tasks(t) => WatchEvent::Tasks(
            t.changes
                .into_iter()
                .filter_map(|c| {
                    Some(TaskChange {
                        name: Arc::from(c.name.as_str()),
                        previous: TaskState::parse(&c.previous)?,
                        current: TaskState::parse(&c.current)?,
                        started: parse_time(&c.started),
                        duration: (c.duration_nanos > 0
                            || TaskState::parse(&c.current)?.is_terminal())
                        .then(|| Duration::from_nanos(c.duration_nanos)),
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
        Event::End(e) => WatchEvent::Done(RunSummary {
            run_id: run_id.to_string(),
            state: JobState::parse(&e.state)?,
            tasks: e
                .tasks
                .into_iter()
                .filter_map(|t| Some((Arc::from(t.name.as_str()), TaskState::parse(&t.state)?)))
                .collect(),
            duration: Duration::from_nanos(e.duration_nanos),
            first_failed: non_empty(e.first_failed).map(|s| Arc::from(s.as_str())),
            first_no_op: non_empty(e.first_no_op).map(|s| Arc::from(s.as_str())),
        }),
    })
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

pub fn placement_from_pb(p: i32) -> Placement {
    if p == pb::Placement::Spread as i32 {
        Placement::Spread
    } else {
        Placement::Sticky
    }
}

pub fn placement_to_pb(p: Placement) -> i32 {
    match p {
        Placement::Sticky => pb::Placement::Sticky as i32,
        Placement::Spread => pb::Placement::Spread as i32,
    }
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// The first message of every session: the leader's epoch and the agent's timings.
pub fn welcome(
    epoch: u64,
    heartbeat: Duration,
    lost_after: Option<Duration>,
) -> CoordinatorMessage {
    CoordinatorMessage {
        msg: Some(ToAgent::Welcome(pb::Welcome {
            epoch,
            heartbeat_ms: millis(heartbeat),
            lost_after_ms: lost_after.map_or(0, millis),
        })),
    }
}

/// Which attempt a message is about, stamped with the leader's epoch.
pub fn lease_ref(run_id: &str, task: TaskId, attempt: u32, epoch: u64) -> LeaseRef {
    LeaseRef {
        run_id: run_id.to_string(),
        task,
        attempt,
        epoch,
    }
}

/// What an agent needs to run one attempt of a task.
pub fn lease(r: LeaseRef, spec: &PlanTask, max_output: u32, dry_run: bool) -> CoordinatorMessage {
    CoordinatorMessage {
        msg: Some(ToAgent::Lease(pb::Lease {
            lease: Some(r),
            task_name: spec.name.to_string(),
            command_line: spec.command_line.clone(),
            max_output,
            dry_run,
            env: spec.policy().env.iter().cloned().collect(),
            cwd: spec.policy().cwd.clone().unwrap_or_default(),
        })),
    }
}

/// Tells an agent to stop an attempt (TERM, then KILL after its own kill grace).
pub fn cancel(r: LeaseRef) -> CoordinatorMessage {
    CoordinatorMessage {
        msg: Some(ToAgent::Cancel(pb::Cancel { lease: Some(r) })),
    }
}

/// Tells an agent a result is recorded: it may forget it.
pub fn ack(r: LeaseRef) -> CoordinatorMessage {
    CoordinatorMessage {
        msg: Some(ToAgent::Ack(pb::Ack { lease: Some(r) })),
    }
}

/// What an agent's report of an ended attempt means for the run. Each tail is cut to at most
/// [`MAX_TAIL`] bytes whatever the agent sent (an older agent may send more), so a task's record
/// always fits a store transaction.
pub fn result_from_pb(f: pb::AttemptResult) -> TaskResult {
    use factotum_common::run::MAX_TAIL;
    use factotum_common::tail::last_bytes;
    let cut = |s: String| {
        if s.len() <= MAX_TAIL {
            s
        } else {
            last_bytes(&s, MAX_TAIL).to_string()
        }
    };
    let outcome = match f.outcome {
        Some(pb::attempt_result::Outcome::ExitCode(c)) => Outcome::Exited(c),
        Some(pb::attempt_result::Outcome::SpawnError(e)) => Outcome::SpawnFailed(e),
        None => Outcome::SpawnFailed("the agent reported no outcome".into()),
    };
    TaskResult {
        outcome,
        stdout: cut(f.stdout_tail),
        stderr: cut(f.stderr_tail),
        duration: Duration::from_nanos(f.duration_nanos),
    }
}
