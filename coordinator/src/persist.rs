//! What the engine writes to the store about a run, and how a coordinator reads it back.
//!
//! Per run: `runs/<id>/spec` (what was asked, JSON), `runs/<id>/factfile` (the templated compact
//! factfile; gzip when large: a 10,000-task factfile must fit etcd's 1.5 MiB request limit),
//! `runs/<id>/state` (job state, outbox sequence, cancel reason), `runs/<id>/tasks/<n>` (one small
//! record per task) and `outbox/<id>/<seq>/<i>` (webhook payloads not yet delivered).

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::time::Duration;

use chrono::{DateTime, Utc};
use factotum_common::constraint::Constraint;
use factotum_common::run::{JobState, RestoredTask, TaskRecord, TaskState};
use factotum_common::webhook::TaskStateJson;
use serde::{Deserialize, Serialize};

use factotum_common::constraint::Placement;

/// Factfiles larger than this are stored compressed.
const COMPRESS_ABOVE: usize = 64 * 1024;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpecRecord {
    pub job_name: String,
    pub job_reference: String,
    pub start_time: DateTime<Utc>,
    pub tags: BTreeMap<String, String>,
    /// The run's own webhooks (the coordinator's are added again at load).
    pub webhooks: Vec<String>,
    pub constraints: Vec<ConstraintRecord>,
    pub placement: Placement,
    pub max_output: usize,
    pub dry_run: bool,
    /// The planned tasks (all, or the sub-tree of `--start`).
    pub tasks: Vec<String>,
    /// The run this one re-runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun_of: Option<String>,
    /// Its webhook heartbeat, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_ms: Option<u64>,
    /// `--no-redact`: a new leader redacts nothing either.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_redact: bool,
    /// `--env`'s secrets (each task's own `env` values are in the factfile), for a new leader's
    /// leases. Secret: with `--store-key` the record is sealed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact: Vec<String>,
    /// `--parallel`: at most this many tasks at once (a new leader and a rerun keep it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ConstraintRecord {
    Host(String),
    Label { key: String, value: String },
}

impl ConstraintRecord {
    pub fn from_constraint(c: &Constraint) -> ConstraintRecord {
        match c {
            Constraint::Host { value, .. } => ConstraintRecord::Host(value.clone()),
            Constraint::Label { key, value } => ConstraintRecord::Label {
                key: key.clone(),
                value: value.clone(),
            },
        }
    }

    /// Host names are resolved again by the caller.
    pub fn to_constraint(&self) -> Constraint {
        match self {
            ConstraintRecord::Host(value) => Constraint::Host {
                value: value.clone(),
                resolved: vec![],
            },
            ConstraintRecord::Label { key, value } => Constraint::Label {
                key: key.clone(),
                value: value.clone(),
            },
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateRecord {
    pub state: String,
    /// The next webhook event's sequence number (event ids stay unique across failovers).
    pub outbox_seq: u64,
    /// The last webhook event's `ttm` (ms since the epoch).
    #[serde(default)]
    pub last_ttm: i64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cancelled: Option<String>,
    /// Who cancelled it (an authenticated caller's name).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cancelled_by: Option<String>,
}

impl StateRecord {
    pub fn job_state(&self) -> Option<JobState> {
        JobState::parse(&self.state)
    }
}

/// A task's record: its `taskStates` entry (readable with etcdctl) plus exact times.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskOut<'a> {
    attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    started_unix_nanos: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_nanos: Option<u64>,
    /// When a task waiting to be retried is ready again (an absolute time, so a new leader
    /// re-arms the same timer).
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_at_unix_nanos: Option<i64>,
    #[serde(flatten)]
    state: TaskStateJson<'a>,
}

impl<'a> TaskOut<'a> {
    pub fn new(name: &'a str, r: &'a TaskRecord) -> TaskOut<'a> {
        TaskOut {
            attempt: r.attempt,
            started_unix_nanos: r.started.and_then(|t| t.timestamp_nanos_opt()),
            duration_nanos: r
                .duration
                .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            retry_at_unix_nanos: r.retry_at.and_then(|t| t.timestamp_nanos_opt()),
            state: TaskStateJson::from_record(name, r),
        }
    }
}

/// Who an attempt was leased to, written with the lease (`runs/<id>/holders/<n>`): after a
/// failover, the agent that comes back without an attempt it was leased to either never
/// received it (the same process, or the same state directory: it is leased again) or
/// restarted without it (it fails).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HolderRecord {
    pub attempt: u32,
    pub agent: String,
    /// The agent process's `Hello.instance_id` (empty: an agent that does not say).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instance: String,
    /// The agent's `Hello.state_id` (empty: no state directory).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
}

impl HolderRecord {
    pub fn key(run: &str, task: u32) -> String {
        format!("runs/{run}/holders/{task:08}")
    }

    /// The write that records it for `task` of `run`.
    pub fn put(&self, run: &str, task: u32) -> crate::store::StoreOp {
        crate::store::StoreOp::Put {
            key: HolderRecord::key(run, task),
            value: serde_json::to_vec(self).unwrap_or_default(),
        }
    }

    /// The holder records under `runs/<run>/holders/`, by task.
    pub fn read_all(run: &str, kvs: &[(String, Vec<u8>)]) -> HashMap<u32, HolderRecord> {
        let prefix = format!("runs/{run}/holders/");
        kvs.iter()
            .filter_map(|(k, v)| {
                let task = k.strip_prefix(&prefix)?.parse().ok()?;
                Some((task, serde_json::from_slice(v).ok()?))
            })
            .collect()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TaskIn {
    state: String,
    attempt: u32,
    started_unix_nanos: Option<i64>,
    duration_nanos: Option<u64>,
    retry_at_unix_nanos: Option<i64>,
    stdout: Option<String>,
    stderr: Option<String>,
    return_code: Option<i32>,
    error_message: Option<String>,
}

/// A run as its records have it: what `runs/<id>/` holds, keyed by the rest of the key
/// (`spec`, `factfile`, `state`, `tasks/<n>`). What a new leader restores and a rerun repeats.
pub struct Recorded {
    pub spec: SpecRecord,
    /// The templated compact factfile.
    pub compact: String,
    /// What the payloads' `factfile` shows instead, when the run redacts
    /// (`runs/<id>/shown`; see `model::Redaction`).
    pub shown: Option<String>,
    pub factfile: factotum_common::Factfile,
    keys: HashMap<String, Vec<u8>>,
}

impl Recorded {
    /// Reads the run's spec and factfile; says what is missing or unreadable.
    pub fn read(keys: HashMap<String, Vec<u8>>) -> Result<Recorded, String> {
        let spec: SpecRecord = serde_json::from_slice(keys.get("spec").ok_or("no spec record")?)
            .map_err(|e| format!("its spec record is unreadable: {e}"))?;
        let compact = keys
            .get("factfile")
            .and_then(|b| unpack_factfile(b))
            .ok_or("no readable factfile")?;
        let factfile = factotum_common::Factfile::parse_compact(&compact)
            .map_err(|e| format!("its factfile no longer parses: {e}"))?;
        let shown = keys.get("shown").and_then(|b| unpack_factfile(b));
        Ok(Recorded {
            spec,
            compact,
            shown,
            factfile,
            keys,
        })
    }

    /// The run's state record.
    pub fn state(&self) -> Result<StateRecord, String> {
        serde_json::from_slice(self.keys.get("state").ok_or("no state record")?)
            .map_err(|e| e.to_string())
    }

    /// Task `t`'s record (by its index in the recorded plan), if it has one.
    pub fn task(&self, t: u32) -> Option<RestoredTask> {
        read_task(self.keys.get(&format!("tasks/{t:08}"))?)
    }

    /// The run's constraints as recorded (host names not resolved).
    pub fn constraints(&self) -> Vec<Constraint> {
        self.spec
            .constraints
            .iter()
            .map(ConstraintRecord::to_constraint)
            .collect()
    }
}

/// A stored task record, or `None` if it is not one.
pub fn read_task(bytes: &[u8]) -> Option<RestoredTask> {
    let t: TaskIn = serde_json::from_slice(bytes).ok()?;
    Some(RestoredTask {
        state: TaskState::parse(&t.state)?,
        attempt: t.attempt,
        started: t.started_unix_nanos.map(DateTime::from_timestamp_nanos),
        duration: t.duration_nanos.map(Duration::from_nanos),
        stdout: t.stdout.unwrap_or_default(),
        stderr: t.stderr.unwrap_or_default(),
        return_code: t.return_code,
        error_message: t.error_message,
        retry_at: t.retry_at_unix_nanos.map(DateTime::from_timestamp_nanos),
    })
}

/// The factfile as stored: as is, or gzip when large.
pub fn pack_factfile(compact: &str) -> Vec<u8> {
    if compact.len() <= COMPRESS_ABOVE {
        return compact.as_bytes().to_vec();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    match gz.write_all(compact.as_bytes()).and_then(|()| gz.finish()) {
        Ok(bytes) => bytes,
        Err(_) => compact.as_bytes().to_vec(),
    }
}

/// An outbox entry: `<url>\n<payload>`, gzip when large (a 10,000-task run's payloads are
/// megabytes of JSON).
pub fn pack_outbox(url: &str, ttm: i64, body: &str) -> Vec<u8> {
    pack_factfile(&format!("{url}\n{ttm}\n{body}"))
}

/// The URL, `ttm` and payload of an outbox entry (one written before `ttm` was recorded,
/// `<url>\n<payload>`, reads with `ttm` 0).
pub fn unpack_outbox(bytes: &[u8]) -> Option<(String, i64, String)> {
    let text = unpack_factfile(bytes)?;
    let (url, rest) = text.split_once('\n')?;
    match rest.split_once('\n') {
        Some((ttm, body)) if !ttm.starts_with('{') => {
            Some((url.to_string(), ttm.parse().ok()?, body.to_string()))
        }
        _ => Some((url.to_string(), 0, rest.to_string())),
    }
}

pub fn unpack_factfile(bytes: &[u8]) -> Option<String> {
    if bytes.starts_with(&GZIP_MAGIC) {
        let mut text = String::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_string(&mut text)
            .ok()?;
        Some(text)
    } else {
        String::from_utf8(bytes.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_factfiles_are_compressed_and_come_back() {
        let small = "{\"x\":1}";
        assert_eq!(pack_factfile(small), small.as_bytes());
        let big = format!("{{\"x\":\"{}\"}}", "task ".repeat(100_000));
        let packed = pack_factfile(&big);
        assert!(packed.len() < big.len() / 10, "{}", packed.len());
        assert_eq!(unpack_factfile(&packed).unwrap(), big);
        assert_eq!(unpack_factfile(small.as_bytes()).unwrap(), small);
    }
}
