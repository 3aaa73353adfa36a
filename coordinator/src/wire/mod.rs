//! Every conversion between the domain's types and the wire's, both ways, in one place: here
//! the agent protocol (`factotum.v1`: what agents are sent — welcome, leases, cancels,
//! acknowledgements — and what their reports mean); in [`jobs`] the client API
//! (`factotum.jobs.v2`).

pub mod jobs;

use std::time::Duration;

use factotum_common::dag::{PlanTask, TaskId};
use factotum_common::run::{Outcome, Stream, TaskResult};
use factotum_proto as pb;
use pb::{coordinator_message::Msg as ToAgent, CoordinatorMessage, LeaseRef};

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
            redact: spec.policy().redact.as_deref().unwrap_or_default().to_vec(),
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
