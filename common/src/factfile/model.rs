//! The factfile as Rust types. Serde reads a valid document straight into them (the fast path of
//! [`super::reading`]) and writes them back as the compact JSON Factotum hashes; what a field may
//! hold is stated in [`super::schema`].

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde::{Deserialize, Deserializer, Serialize};

use crate::constraint::Placement;

pub const SNOWPLOW_SCHEMA: &str = "iglu:com.snowplowanalytics.factotum/factfile/jsonschema/1-0-0";
/// This project's extension of the Snowplow document.
pub const FACTOTUM_SCHEMA: &str = "iglu:io.factotum/factfile/jsonschema/1-0-0";

/// The largest return code a factfile may name (the schema's `maximum`).
pub const MAX_CODE: i64 = 32767;

/// Tags keyed by name, as passed to templating and `jobReference`.
pub type Tags = BTreeMap<String, String>;

/// A templated, validated factfile. Serializes (compactly, in this field order) to exactly the
/// document Factotum hashes for `jobReference` and sends, base64-encoded, as `factfile`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Factfile {
    pub schema: String,
    pub data: Job,
}

/// The job. Fields after `tasks` exist only under [`FACTOTUM_SCHEMA`]; absent ones are not
/// serialized, so a Snowplow factfile's compact JSON (and `jobReference`) stays Factotum's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Job {
    pub name: String,
    pub tasks: Vec<Task>,
    /// Tags of every run (merged with `--tag`; the command line wins). Not templated.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "unique_opt"
    )]
    pub tags: Option<BTreeMap<String, String>>,
    /// Seconds the whole run may take.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "integer_opt"
    )]
    pub timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// Tasks of one run running at once, at most.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "count_opt"
    )]
    pub max_parallel: Option<u32>,
}

/// A task. The extension's fields live in one optional box, so a 100,000-task Snowplow factfile
/// costs no more memory than before they existed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", from = "TaskDoc")]
pub struct Task {
    pub name: String,
    pub executor: String,
    pub command: String,
    pub arguments: Vec<String>,
    pub depends_on: Vec<String>,
    pub on_result: OnResult,
    /// `None` when the task uses none of the extension's fields.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub ext: Option<Box<TaskExt>>,
}

impl Task {
    /// The extension's fields (all `None` when absent).
    pub fn ext(&self) -> &TaskExt {
        static NONE: LazyLock<TaskExt> = LazyLock::new(TaskExt::default);
        self.ext.as_deref().unwrap_or(&NONE)
    }
}

impl TaskExt {
    /// Boxed, or `None` when no field is set.
    pub(super) fn boxed(self) -> Option<Box<TaskExt>> {
        (self != TaskExt::default()).then(|| Box::new(self))
    }
}

/// Declares the extension's task fields once, making [`TaskExt`] (the model; it serializes in
/// this order, which `jobReference` hashes) and `TaskDoc` (a task as written: every field inline,
/// unknown ones refused, read without serde's slow `flatten`), and the move from one to the other.
macro_rules! task_extension {
    ($($(#[$attr:meta])* $field:ident: $ty:ty,)*) => {
        /// The task fields of `iglu:io.factotum/factfile/jsonschema/1-0-0`.
        #[derive(Debug, Clone, Default, PartialEq, Serialize)]
        #[serde(rename_all = "camelCase")]
        pub struct TaskExt {
            $(
                $(#[$attr])*
                #[serde(skip_serializing_if = "Option::is_none")]
                pub $field: Option<$ty>,
            )*
        }

        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        struct TaskDoc {
            name: String,
            executor: String,
            command: String,
            arguments: Vec<String>,
            depends_on: Vec<String>,
            on_result: OnResult,
            $(
                $(#[$attr])*
                #[serde(default)]
                $field: Option<$ty>,
            )*
        }

        impl From<TaskDoc> for Task {
            fn from(d: TaskDoc) -> Task {
                let ext = TaskExt { $($field: d.$field,)* };
                Task {
                    name: d.name,
                    executor: d.executor,
                    command: d.command,
                    arguments: d.arguments,
                    depends_on: d.depends_on,
                    on_result: d.on_result,
                    ext: ext.boxed(),
                }
            }
        }
    };
}

task_extension! {
    /// Seconds one attempt may take (then TERM, grace, KILL, and FAILED).
    #[serde(deserialize_with = "integer_opt")]
    timeout: u64,
    retry: Retry,
    /// Dependents run even if this task fails (the job still ends FAILED).
    continue_on_failure: bool,
    /// Added to the process environment; values are templated.
    #[serde(deserialize_with = "unique_opt")]
    env: BTreeMap<String, String>,
    /// Working directory; templated.
    cwd: String,
    /// Where this task may run, on top of the run's constraints.
    constraints: TaskConstraints,
    on_lost: OnLost,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retry {
    /// Attempts in all, the first included.
    #[serde(deserialize_with = "count")]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_seconds: Option<f64>,
    /// Each further delay is the previous one times this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delay_seconds: Option<f64>,
    /// Only these exit codes are retried (absent: any failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_return_codes: Option<Vec<i32>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskConstraints {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "unique_opt"
    )]
    pub labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OnLost {
    Fail,
    Retry,
}

impl OnLost {
    pub const NAMES: [&'static str; 2] = ["fail", "retry"];
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OnResult {
    pub terminate_job_with_success: Vec<i32>,
    pub continue_job: Vec<i32>,
}

// JSON Schema's `integer`, as the schema check reads it: an `i64`. Larger numbers are refused on
// both paths; negative ones are read as 0 for the range check to refuse with the right message.

fn integer_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Option::<i64>::deserialize(d).map(|n| n.map(|n| n.max(0) as u64))
}

/// A count: past `u32::MAX` it means "no limit", not an error.
fn count<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    i64::deserialize(d).map(|n| u32::try_from(n.max(0)).unwrap_or(u32::MAX))
}

fn count_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    Option::<i64>::deserialize(d).map(|n| n.map(|n| u32::try_from(n.max(0)).unwrap_or(u32::MAX)))
}

/// A map of strings in which a key written twice is an error (a `BTreeMap` keeps the last one,
/// silently); the slow path then names it.
struct Unique(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for Unique {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Unique, D::Error> {
        struct Entries;
        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = Unique;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of strings")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Unique, A::Error> {
                let mut map = BTreeMap::new();
                while let Some(k) = m.next_key::<String>()? {
                    if map.contains_key(&k) {
                        return Err(serde::de::Error::custom(format_args!(
                            "duplicate key \"{k}\""
                        )));
                    }
                    let v = m.next_value()?;
                    map.insert(k, v);
                }
                Ok(Unique(map))
            }
        }
        d.deserialize_map(Entries)
    }
}

fn unique_opt<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    Option::<Unique>::deserialize(d).map(|m| m.map(|m| m.0))
}
