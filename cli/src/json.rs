//! `-o json`: what `status`, `runs`, `agents`, `submit` and `validate` print for programs.
//!
//! One document per command on stdout (an array for lists), described field by field in
//! `docs/CLI-OUTPUT.md`. The shapes follow the API's protobuf JSON mapping, so a script that
//! reads `grpcurl`'s answers reads these too: lowerCamelCase field names (`runId`, `taskCount`),
//! enum values by their proto names (`RUN_STATE_SUCCEEDED`), times as RFC 3339 in UTC. Two
//! deliberate differences, for scripts: durations are a number of seconds (`4.550203463`), not
//! the mapping's `"4.550203463s"` string; and every field is always present, `null` when it
//! has no value (the mapping leaves empty fields out), so a field's absence never needs a test.
//!
//! These are the CLI's own view structs over the `factotum_proto::jobs` messages: changing a
//! proto field does not change this output unless this module is changed too.

use std::collections::BTreeMap;

use chrono::SecondsFormat;
use factotum_coordinator::wire::jobs as wire;
use factotum_proto::jobs as pb;
use serde::Serialize;

use crate::out::outln;

/// Prints `value` as one JSON document (pretty, with a final newline) on stdout.
pub fn print(value: &impl Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => outln!("{text}"),
        // Serializing these plain structs cannot fail; say so rather than print nothing.
        Err(e) => crate::out::errln!("Error: cannot write JSON: {e}"),
    }
}

/// A run: `status` (with `tasks`), each element of `runs` (`tasks` is `null` there: a listing
/// carries no task lists), and `submit --wait`'s final document.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Run<'a> {
    pub run_id: &'a str,
    pub job_name: &'a str,
    pub job_reference: &'a str,
    pub state: &'static str,
    pub start_time: Option<String>,
    pub duration: Option<f64>,
    pub waiting_reason: Option<&'a str>,
    pub tags: BTreeMap<&'a str, &'a str>,
    pub rerun_of: Option<&'a str>,
    pub cancelled_by: Option<&'a str>,
    pub cancel_reason: Option<&'a str>,
    pub task_count: u32,
    pub tasks_done: u32,
    pub tasks: Option<Vec<Task<'a>>>,
}

/// One task of a run (`status`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Task<'a> {
    pub name: &'a str,
    pub state: &'static str,
    pub attempt: u32,
    pub agent: Option<&'a str>,
    pub started: Option<String>,
    pub duration: Option<f64>,
    pub return_code: Option<i32>,
    pub error_message: Option<&'a str>,
}

/// One connected (or recently cut off) agent (`agents`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Agent<'a> {
    pub agent_id: &'a str,
    pub hostname: &'a str,
    pub ips: &'a [String],
    pub labels: BTreeMap<&'a str, &'a str>,
    /// `null`: no limit (the agent runs any number of tasks at once).
    pub slots: Option<u32>,
    pub in_use: u32,
    pub last_heard: Option<String>,
    pub version: Option<&'a str>,
    pub connected: bool,
}

/// `submit` without `--wait`: the new run.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Submitted<'a> {
    pub run_id: &'a str,
    pub job_reference: &'a str,
    pub existing: bool,
}

/// `validate`: whether the factfile is valid, and what it holds if it is.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Validation<'a> {
    pub valid: bool,
    pub factfile: String,
    pub job_name: Option<&'a str>,
    pub task_count: Option<usize>,
    pub errors: Vec<&'a str>,
}

/// Whether the run has not ended (only then can it wait for anything).
pub fn active(r: &pb::Run) -> bool {
    r.state == pb::RunState::Waiting as i32 || r.state == pb::RunState::Running as i32
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// RFC 3339 in UTC with 0, 3, 6 or 9 fractional digits (as the protobuf JSON mapping).
fn time(t: Option<&prost_types::Timestamp>) -> Option<String> {
    t.and_then(wire::from_timestamp)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

/// Seconds, with the nanoseconds as the fraction.
fn seconds(d: Option<&prost_types::Duration>) -> Option<f64> {
    d.map(|d| wire::from_duration(d).as_secs_f64())
}

/// A run state's proto name (`RUN_STATE_CANCELLED`); `RUN_STATE_UNSPECIFIED` for a value this
/// version does not know.
pub fn run_state(s: i32) -> &'static str {
    pb::RunState::try_from(s)
        .unwrap_or(pb::RunState::Unspecified)
        .as_str_name()
}

fn task_state(s: i32) -> &'static str {
    pb::TaskState::try_from(s)
        .unwrap_or(pb::TaskState::Unspecified)
        .as_str_name()
}

fn sorted(map: &std::collections::HashMap<String, String>) -> BTreeMap<&str, &str> {
    map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

impl<'a> Run<'a> {
    /// `with_tasks`: `status` and `submit --wait` show the task list, `runs` does not.
    pub fn new(r: &'a pb::Run, with_tasks: bool) -> Run<'a> {
        Run {
            run_id: &r.run_id,
            job_name: &r.job_name,
            job_reference: &r.job_reference,
            state: run_state(r.state),
            start_time: time(r.start_time.as_ref()),
            duration: seconds(r.duration.as_ref()),
            waiting_reason: non_empty(&r.waiting_reason).filter(|_| active(r)),
            tags: sorted(&r.tags),
            rerun_of: non_empty(&r.rerun_of),
            cancelled_by: non_empty(&r.cancelled_by),
            cancel_reason: non_empty(&r.cancel_reason),
            task_count: r.task_count,
            tasks_done: r.tasks_done,
            tasks: with_tasks.then(|| r.tasks.iter().map(Task::new).collect()),
        }
    }
}

impl<'a> Task<'a> {
    pub fn new(t: &'a pb::Task) -> Task<'a> {
        Task {
            name: &t.name,
            state: task_state(t.state),
            attempt: t.attempt,
            agent: non_empty(&t.agent),
            started: time(t.started.as_ref()),
            duration: seconds(t.duration.as_ref()),
            return_code: t.return_code,
            error_message: non_empty(&t.error_message),
        }
    }
}

impl<'a> Agent<'a> {
    pub fn new(a: &'a pb::Agent) -> Agent<'a> {
        Agent {
            agent_id: &a.agent_id,
            hostname: &a.hostname,
            ips: &a.ips,
            labels: sorted(&a.labels),
            slots: (a.slots > 0).then_some(a.slots),
            in_use: a.in_use,
            last_heard: time(a.last_heard.as_ref()),
            version: non_empty(&a.version),
            connected: a.connected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_run_has_every_field_with_camel_case_names_and_seconds() {
        let r = pb::Run {
            run_id: "ab".into(),
            job_name: "job".into(),
            job_reference: "ref".into(),
            state: pb::RunState::Cancelled as i32,
            start_time: Some(prost_types::Timestamp {
                seconds: 1_764_540_000,
                nanos: 5_000_000,
            }),
            duration: Some(prost_types::Duration {
                seconds: 4,
                nanos: 550_203_463,
            }),
            tags: [("k".to_string(), "v".to_string())].into(),
            cancel_reason: "job cancelled: maintenance".into(),
            task_count: 2,
            tasks_done: 1,
            tasks: vec![pb::Task {
                name: "t".into(),
                state: pb::TaskState::SucceededNoOp as i32,
                attempt: 1,
                return_code: Some(3),
                ..Default::default()
            }],
            ..Default::default()
        };
        let v = serde_json::to_value(Run::new(&r, true)).unwrap();
        assert_eq!(
            v,
            json!({
                "runId": "ab", "jobName": "job", "jobReference": "ref",
                "state": "RUN_STATE_CANCELLED",
                "startTime": "2025-11-30T22:00:00.005Z", "duration": 4.550203463,
                "waitingReason": null, "tags": {"k": "v"}, "rerunOf": null,
                "cancelledBy": null, "cancelReason": "job cancelled: maintenance",
                "taskCount": 2, "tasksDone": 1,
                "tasks": [{"name": "t", "state": "TASK_STATE_SUCCEEDED_NO_OP", "attempt": 1,
                           "agent": null, "started": null, "duration": null,
                           "returnCode": 3, "errorMessage": null}],
            })
        );
        let listed = serde_json::to_value(Run::new(&r, false)).unwrap();
        assert_eq!(listed["tasks"], json!(null));
    }

    #[test]
    fn an_unknown_state_is_unspecified() {
        assert_eq!(run_state(99), "RUN_STATE_UNSPECIFIED");
        assert_eq!(task_state(99), "TASK_STATE_UNSPECIFIED");
    }
}
