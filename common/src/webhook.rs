//! Webhook payloads: Snowplow's `job_update` and `task_update` 1-0-0, exactly.

use std::collections::BTreeMap;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::format::{iso8601, timestamp};
use crate::run::{Snapshot, TaskRecord, TaskView, Update, UpdateKind};

pub const JOB_UPDATE: &str = "iglu:com.snowplowanalytics.factotum/job_update/jsonschema/1-0-0";
pub const TASK_UPDATE: &str = "iglu:com.snowplowanalytics.factotum/task_update/jsonschema/1-0-0";

/// What every payload of a run repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunMeta {
    pub job_name: String,
    pub job_reference: String,
    pub run_reference: String,
    /// Standard base64 of the templated compact factfile.
    pub factfile_base64: String,
    pub tags: BTreeMap<String, String>,
    pub start_time: DateTime<Utc>,
}

impl RunMeta {
    pub fn new(
        compact_factfile: &str,
        job_name: &str,
        tags: BTreeMap<String, String>,
        run_reference: String,
        start_time: DateTime<Utc>,
    ) -> RunMeta {
        let mut meta = RunMeta::unsent(compact_factfile, job_name, tags, run_reference, start_time);
        meta.factfile_base64 = base64::engine::general_purpose::STANDARD.encode(compact_factfile);
        meta
    }

    /// The same for a run that sends no webhooks: no base64 copy of its factfile (a
    /// 200,000-task factfile's is some 50 MB).
    pub fn unsent(
        compact_factfile: &str,
        job_name: &str,
        tags: BTreeMap<String, String>,
        run_reference: String,
        start_time: DateTime<Utc>,
    ) -> RunMeta {
        RunMeta {
            job_name: job_name.to_string(),
            job_reference: crate::reference::job_reference(compact_factfile, &tags),
            run_reference,
            factfile_base64: String::new(),
            tags,
            start_time,
        }
    }
}

#[derive(Serialize)]
struct Payload<'a> {
    schema: &'static str,
    data: Data<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Data<'a> {
    job_name: &'a str,
    job_reference: &'a str,
    run_reference: &'a str,
    run_state: &'static str,
    factfile: &'a str,
    application_context: AppContext,
    start_time: String,
    run_duration: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    job_transition: Option<JobTransition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    task_transitions: Option<Vec<TaskTransitionOut<'a>>>,
    task_states: Vec<TaskStateJson<'a>>,
    tags: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
struct AppContext {
    name: &'static str,
    version: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JobTransition {
    previous_state: Option<&'static str>,
    current_state: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TaskTransitionOut<'a> {
    task_name: &'a str,
    previous_state: &'static str,
    current_state: &'static str,
}

/// One `taskStates` entry as JSON; the store keeps tasks in this shape too.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskStateJson<'a> {
    task_name: &'a str,
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    started: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stdout: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stderr: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    return_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_message: Option<&'a str>,
}

impl<'a> TaskStateJson<'a> {
    pub fn from_view(v: &'a TaskView) -> Self {
        TaskStateJson {
            task_name: &v.name,
            state: v.state.as_str(),
            started: v.started.map(timestamp),
            duration: v.duration.map(iso8601),
            stdout: v.stdout.as_deref(),
            stderr: v.stderr.as_deref(),
            return_code: v.return_code,
            error_message: v.error_message.as_deref(),
        }
    }

    pub fn from_record(name: &'a str, r: &'a TaskRecord) -> Self {
        TaskStateJson {
            task_name: name,
            state: r.state.as_str(),
            started: r.started.map(timestamp),
            duration: r.duration.map(iso8601),
            stdout: r.stdout.field(),
            stderr: r.stderr.field(),
            return_code: r.return_code,
            error_message: r.error_message.as_deref(),
        }
    }
}

/// The JSON body for one update, or `None` when the update carries no snapshot.
/// `names` maps task ids to names (the plan's).
pub fn payload(meta: &RunMeta, update: &Update, names: &dyn Fn(u32) -> String) -> Option<String> {
    let snap: &Snapshot = update.snapshot.as_deref()?;
    let (schema, job_transition, task_transitions) = match &update.kind {
        UpdateKind::Job { previous, current } => (
            JOB_UPDATE,
            Some(JobTransition {
                previous_state: previous.map(|p| p.as_str()),
                current_state: current.as_str(),
            }),
            None,
        ),
        UpdateKind::Tasks(ts) => (TASK_UPDATE, None, Some(ts)),
    };
    let transition_names: Vec<String> = task_transitions
        .map(|ts| ts.iter().map(|t| names(t.task)).collect())
        .unwrap_or_default();
    let body = Payload {
        schema,
        data: Data {
            job_name: &meta.job_name,
            job_reference: &meta.job_reference,
            run_reference: &meta.run_reference,
            run_state: snap.run_state.as_str(),
            factfile: &meta.factfile_base64,
            application_context: AppContext {
                name: "factotum",
                version: crate::VERSION,
            },
            start_time: timestamp(meta.start_time),
            run_duration: iso8601(snap.run_duration),
            job_transition,
            task_transitions: task_transitions.map(|ts| {
                ts.iter()
                    .zip(&transition_names)
                    .map(|(t, name)| TaskTransitionOut {
                        task_name: name,
                        previous_state: t.previous.as_str(),
                        current_state: t.current.as_str(),
                    })
                    .collect()
            }),
            task_states: snap.tasks.iter().map(TaskStateJson::from_view).collect(),
            tags: &meta.tags,
        },
    };
    serde_json::to_string(&body).ok()
}

/// The largest request body sent: Snowplow collectors refuse 2 MiB and more.
pub const MAX_BODY: usize = 1 << 20;

/// [`payload`] kept within `limit` bytes by shortening the largest output tails first (each
/// keeps its end, as a tail does); `Err(size)` when even empty tails leave it larger, with
/// that size. `None` when the update carries no snapshot.
pub fn payload_within(
    meta: &RunMeta,
    update: &Update,
    names: &dyn Fn(u32) -> String,
    limit: usize,
) -> Option<Result<String, usize>> {
    let body = payload(meta, update, names)?;
    if body.len() <= limit {
        return Some(Ok(body));
    }
    let mut snap: Snapshot = update.snapshot.as_deref()?.clone();
    let mut size = body.len();
    loop {
        // Every tail is cut down to one level of JSON bytes, the highest that removes what is
        // over; the loop is for what rounding to characters leaves.
        let over = size - limit;
        let lens: Vec<usize> = (snap.tasks.iter())
            .flat_map(|t| [&t.stdout, &t.stderr])
            .filter_map(|s| s.as_deref().map(json_len))
            .collect();
        if lens.iter().all(|l| *l == 0) {
            return Some(Err(size));
        }
        let cut_at = |level: usize| lens.iter().map(|l| l.saturating_sub(level)).sum::<usize>();
        let (mut lo, mut hi) = (0, lens.iter().copied().max().unwrap_or(0));
        while lo < hi {
            // The highest level whose cut is enough: cut_at falls as the level rises.
            let mid = (lo + hi).div_ceil(2);
            if cut_at(mid) >= over {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        for tail in (snap.tasks.iter_mut())
            .flat_map(|t| [&mut t.stdout, &mut t.stderr])
            .filter_map(|s| s.as_mut())
        {
            keep_end(tail, lo);
        }
        let shrunk = Update {
            kind: update.kind.clone(),
            at: update.at,
            snapshot: Some(std::sync::Arc::new(snap.clone())),
        };
        let body = payload(meta, &shrunk, names)?;
        if body.len() <= limit {
            return Some(Ok(body));
        }
        size = body.len();
    }
}

/// Bytes a character takes in a JSON string.
fn json_char_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// Bytes a string takes in JSON, quotes aside.
fn json_len(s: &str) -> usize {
    s.chars().map(json_char_len).sum()
}

/// Keeps the end of `tail` that takes at most `max` bytes in JSON.
fn keep_end(tail: &mut String, max: usize) {
    let mut kept = 0;
    let mut start = tail.len();
    for (i, c) in tail.char_indices().rev() {
        kept += json_char_len(c);
        if kept > max {
            break;
        }
        start = i;
    }
    tail.replace_range(..start, "");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{JobState, TaskState, TaskTransition};
    use chrono::TimeZone;
    use serde_json::Value;
    use std::sync::Arc;
    use std::time::Duration;

    fn meta() -> RunMeta {
        RunMeta::new(
            "{\"x\":1}",
            "job",
            BTreeMap::from([("env".into(), "prod".into())]),
            "rr".into(),
            Utc.with_ymd_and_hms(2026, 11, 22, 22, 25, 39).unwrap(),
        )
    }

    fn snap() -> Arc<Snapshot> {
        Arc::new(Snapshot {
            run_state: JobState::Running,
            run_duration: Duration::from_millis(1500),
            tasks: vec![
                TaskView {
                    name: "a".into(),
                    state: TaskState::Failed,
                    started: Some(Utc.with_ymd_and_hms(2026, 11, 22, 22, 25, 40).unwrap()),
                    duration: Some(Duration::from_millis(5)),
                    stdout: Some("out".into()),
                    stderr: None,
                    return_code: Some(2),
                    error_message: Some("boom".into()),
                },
                TaskView {
                    name: "b".into(),
                    state: TaskState::Waiting,
                    started: None,
                    duration: None,
                    stdout: None,
                    stderr: None,
                    return_code: None,
                    error_message: None,
                },
            ],
        })
    }

    #[test]
    fn job_update_has_null_previous_state_first() {
        let u = Update {
            kind: UpdateKind::Job {
                previous: None,
                current: JobState::Waiting,
            },
            at: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
            snapshot: Some(snap()),
        };
        let v: Value =
            serde_json::from_str(&payload(&meta(), &u, &|_| String::new()).unwrap()).unwrap();
        assert_eq!(v["schema"], JOB_UPDATE);
        assert_eq!(v["data"]["jobTransition"]["previousState"], Value::Null);
        assert_eq!(v["data"]["startTime"], "2026-11-22T22:25:39.000Z");
        assert_eq!(v["data"]["runDuration"], "PT1.500S");
        assert_eq!(v["data"]["factfile"], "eyJ4IjoxfQ==");
        assert!(v["data"].get("taskTransitions").is_none());
    }

    #[test]
    fn task_update_omits_unknown_fields() {
        let u = Update {
            kind: UpdateKind::Tasks(vec![TaskTransition {
                task: 0,
                previous: TaskState::Running,
                current: TaskState::Failed,
            }]),
            at: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
            snapshot: Some(snap()),
        };
        let v: Value =
            serde_json::from_str(&payload(&meta(), &u, &|_| "a".into()).unwrap()).unwrap();
        assert_eq!(v["schema"], TASK_UPDATE);
        assert!(v["data"].get("jobTransition").is_none());
        assert_eq!(v["data"]["taskTransitions"][0]["taskName"], "a");
        let a = &v["data"]["taskStates"][0];
        assert_eq!(a["returnCode"], 2);
        assert_eq!(a["duration"], "PT0.005S");
        assert!(a.get("stderr").is_none());
        let b = v["data"]["taskStates"][1].as_object().unwrap();
        assert_eq!(b.len(), 2, "{b:?}");
    }

    #[test]
    fn large_tails_are_shortened_largest_first_to_fit() {
        let mut s = (*snap()).clone();
        s.tasks[0].stdout = Some(format!("start{}end", "x".repeat(600_000)));
        s.tasks[1].stderr = Some("\u{e9}\n".repeat(200_000)); // 2 + 2 bytes each in JSON
        let u = Update {
            kind: UpdateKind::Job {
                previous: None,
                current: JobState::Running,
            },
            at: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
            snapshot: Some(Arc::new(s)),
        };
        let full = payload(&meta(), &u, &|_| String::new()).unwrap();
        assert!(full.len() > 1_000_000);
        let body = payload_within(&meta(), &u, &|_| String::new(), 500_000)
            .unwrap()
            .unwrap();
        assert!(body.len() <= 500_000, "{}", body.len());
        let v: Value = serde_json::from_str(&body).unwrap();
        let out = v["data"]["taskStates"][0]["stdout"].as_str().unwrap();
        let err = v["data"]["taskStates"][1]["stderr"].as_str().unwrap();
        assert!(
            out.ends_with("xend") && out.len() > 100_000,
            "tails keep their end"
        );
        // Both were cut to one level of JSON bytes.
        let (o, e) = (json_len(out), json_len(err));
        assert!(o.abs_diff(e) <= 4 && e > 100_000, "{o} {e}");
        // Nothing left to cut: the size is reported.
        let small = payload_within(&meta(), &u, &|_| String::new(), 100).unwrap();
        assert!(matches!(small, Err(n) if n > 100 && n < 2_000), "{small:?}");
    }

    #[test]
    fn no_snapshot_no_payload() {
        let u = Update {
            kind: UpdateKind::Tasks(vec![]),
            at: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
            snapshot: None,
        };
        assert!(payload(&meta(), &u, &|_| String::new()).is_none());
    }
}
