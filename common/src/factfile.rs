//! Factfile parsing and validation: Snowplow's
//! `iglu:com.snowplowanalytics.factotum/factfile/jsonschema/1-0-0`, and this project's extension
//! `iglu:io.factotum/factfile/jsonschema/1-0-0` (the same document plus optional task and job
//! policies; its JSON Schema is `schemas/io.factotum/factfile/jsonschema/1-0-0`). Under the
//! Snowplow URI the extension's fields are errors, as upstream.
//!
//! Order of checks, as Factotum: JSON syntax, then the schema (reported valico-style as
//! `'<json path>' - <problem>`), then templating, then the rules the schema can't express.
//! Unlike Factotum, duplicate names, self/unknown dependencies and cycles are ordinary errors,
//! and dependencies may refer to tasks declared later in the file.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::constraint::Placement;
use crate::graph::{Graph, GraphError};
use crate::template::{TemplateError, Vars};

pub const SNOWPLOW_SCHEMA: &str = "iglu:com.snowplowanalytics.factotum/factfile/jsonschema/1-0-0";
/// This project's extension of the Snowplow document.
pub const FACTOTUM_SCHEMA: &str = "iglu:io.factotum/factfile/jsonschema/1-0-0";

/// The largest return code a factfile may name (the schema's `maximum`).
pub const MAX_CODE: i64 = 32767;

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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    /// Seconds the whole run may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// Tasks of one run running at once, at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
        static NONE: TaskExt = TaskExt {
            timeout: None,
            retry: None,
            continue_on_failure: None,
            env: None,
            cwd: None,
            constraints: None,
            on_lost: None,
        };
        self.ext.as_deref().unwrap_or(&NONE)
    }
}

/// A task as written: every field inline, unknown ones refused.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TaskDoc {
    name: String,
    executor: String,
    command: String,
    arguments: Vec<String>,
    depends_on: Vec<String>,
    on_result: OnResult,
    #[serde(default)]
    timeout: Option<u64>,
    #[serde(default)]
    retry: Option<Retry>,
    #[serde(default)]
    continue_on_failure: Option<bool>,
    #[serde(default)]
    env: Option<BTreeMap<String, String>>,
    #[serde(default)]
    cwd: Option<String>,
    #[serde(default)]
    constraints: Option<TaskConstraints>,
    #[serde(default)]
    on_lost: Option<OnLost>,
}

impl From<TaskDoc> for Task {
    fn from(d: TaskDoc) -> Task {
        let ext = TaskExt {
            timeout: d.timeout,
            retry: d.retry,
            continue_on_failure: d.continue_on_failure,
            env: d.env,
            cwd: d.cwd,
            constraints: d.constraints,
            on_lost: d.on_lost,
        };
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

impl TaskExt {
    /// Boxed, or `None` when no field is set.
    fn boxed(self) -> Option<Box<TaskExt>> {
        (self != TaskExt::default()).then(|| Box::new(self))
    }
}

/// The task fields of `iglu:io.factotum/factfile/jsonschema/1-0-0`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskExt {
    /// Seconds one attempt may take (then TERM, grace, KILL, and FAILED).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Dependents run even if this task fails (the job still ends FAILED).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continue_on_failure: Option<bool>,
    /// Added to the process environment; values are templated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// Working directory; templated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Where this task may run, on top of the run's constraints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraints: Option<TaskConstraints>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_lost: Option<OnLost>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retry {
    /// Attempts in all, the first included.
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OnLost {
    Fail,
    Retry,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OnResult {
    pub terminate_job_with_success: Vec<i32>,
    pub continue_job: Vec<i32>,
}

/// Why a factfile was refused. The display text follows Factotum's
/// `'<path>' is not a valid factotum factfile: ` prefix (added by the caller, who knows the path).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FactfileError {
    #[error("invalid JSON - {message} at line {line}, column {column}")]
    Json {
        message: String,
        line: usize,
        column: usize,
    },
    #[error("{}", .0.join("\n"))]
    Schema(Vec<String>),
    #[error("the task '{0}' has no way to continue successfully.")]
    NoContinue(String),
    #[error("the task '{0}' has conflicting actions.")]
    ConflictingActions(String),
    /// A duplicate name, a self or unknown dependency, or a cycle.
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error("{what}: {error}")]
    Template { what: String, error: TemplateError },
}

impl Factfile {
    /// Parses, templates and validates a factfile's text.
    pub fn parse(text: &str, vars: &Vars) -> Result<Factfile, FactfileError> {
        Self::read(text)?.finish(vars)
    }

    /// Templates what [`Factfile::read`] returned and checks the rules the schema can't express.
    pub fn finish(self, vars: &Vars) -> Result<Factfile, FactfileError> {
        let ff = self.template(vars)?;
        ff.check_rules()?;
        Ok(ff)
    }

    /// Reads and schema-checks a factfile without templating it (its `data.tags` are inputs of
    /// the templating, `{{tag:env}}`, so they are known before it). Fast path: typed
    /// deserialization, which accepts exactly what the schema does except the ranges and the
    /// schema URI, checked after. Anything it refuses is re-read as a plain JSON value to say
    /// precisely what is wrong.
    pub fn read(text: &str) -> Result<Factfile, FactfileError> {
        let json_error = |e: serde_json::Error| FactfileError::Json {
            message: json_message(&e),
            line: e.line(),
            column: e.column(),
        };
        match serde_json::from_str::<Factfile>(text) {
            Ok(ff) if ff.typed_checks_pass() => return Ok(ff),
            Err(e) if e.is_syntax() || e.is_eof() => return Err(json_error(e)),
            _ => {}
        }
        let doc: Value = serde_json::from_str(text).map_err(json_error)?;
        check_schema(&doc)
    }

    /// What the typed parse does not check: the schema URI, ranges, and (under the Snowplow
    /// URI) the absence of the extension's fields.
    fn typed_checks_pass(&self) -> bool {
        let ok = match self.schema.as_str() {
            SNOWPLOW_SCHEMA => !self.has_extension(),
            FACTOTUM_SCHEMA => self.extension_in_range(),
            _ => false,
        };
        ok && self.codes_in_range()
    }

    fn has_extension(&self) -> bool {
        let j = &self.data;
        j.tags.is_some()
            || j.timeout.is_some()
            || j.placement.is_some()
            || j.max_parallel.is_some()
            || j.tasks.iter().any(|t| t.ext.is_some())
    }

    fn extension_in_range(&self) -> bool {
        let at_least = |v: Option<f64>, min: f64| v.is_none_or(|v| v >= min);
        let j = &self.data;
        j.timeout.is_none_or(|t| t >= 1)
            && j.max_parallel.is_none_or(|m| m >= 1)
            && j.tasks.iter().all(|t| {
                let t = t.ext();
                t.timeout.is_none_or(|t| t >= 1)
                    && t.cwd.as_ref().is_none_or(|c| !c.is_empty())
                    && t.constraints
                        .as_ref()
                        .and_then(|c| c.host.as_ref())
                        .is_none_or(|h| !h.is_empty())
                    && t.retry.as_ref().is_none_or(|r| {
                        r.attempts >= 1
                            && at_least(r.delay_seconds, 0.0)
                            && at_least(r.backoff, 1.0)
                            && at_least(r.max_delay_seconds, 0.0)
                            && r.on_return_codes
                                .iter()
                                .flatten()
                                .all(|&c| (0..=MAX_CODE as i32).contains(&c))
                    })
            })
    }

    fn codes_in_range(&self) -> bool {
        self.data.tasks.iter().all(|t| {
            t.on_result
                .terminate_job_with_success
                .iter()
                .chain(&t.on_result.continue_job)
                .all(|&c| (0..=MAX_CODE as i32).contains(&c))
        })
    }

    /// Reads back a factfile this program produced with [`Factfile::compact_json`]: validated
    /// again, but not templated a second time.
    pub fn parse_compact(text: &str) -> Result<Factfile, FactfileError> {
        let ff = Self::read(text)?;
        ff.check_rules()?;
        Ok(ff)
    }

    /// The compact JSON used for `jobReference` and the webhook `factfile` field.
    pub fn compact_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Renders every string field holding a `{{`, in place.
    fn template(mut self, vars: &Vars) -> Result<Factfile, FactfileError> {
        let render = |what: &dyn Fn() -> String, s: &mut String| -> Result<(), FactfileError> {
            if s.contains("{{") {
                *s = vars.render(s).map_err(|error| FactfileError::Template {
                    what: what(),
                    error,
                })?;
            }
            Ok(())
        };
        render(&|| "the job name".to_string(), &mut self.data.name)?;
        for (i, t) in self.data.tasks.iter_mut().enumerate() {
            let field = |f: &str| format!("task {} field '{f}'", i + 1);
            render(&|| field("name"), &mut t.name)?;
            render(&|| field("executor"), &mut t.executor)?;
            render(&|| field("command"), &mut t.command)?;
            for a in &mut t.arguments {
                render(&|| field("arguments"), a)?;
            }
            for d in &mut t.depends_on {
                render(&|| field("dependsOn"), d)?;
            }
            let Some(ext) = t.ext.as_deref_mut() else {
                continue;
            };
            for v in ext.env.iter_mut().flat_map(|e| e.values_mut()) {
                render(&|| field("env"), v)?;
            }
            if let Some(cwd) = &mut ext.cwd {
                render(&|| field("cwd"), cwd)?;
            }
            let Some(c) = &mut ext.constraints else {
                continue;
            };
            if let Some(h) = &mut c.host {
                render(&|| field("constraints/host"), h)?;
            }
            for v in c.labels.iter_mut().flat_map(|l| l.values_mut()) {
                render(&|| field("constraints/labels"), v)?;
            }
        }
        // Deserializing grew the task list by doubling: give the slack back.
        self.data.tasks.shrink_to_fit();
        Ok(self)
    }

    fn check_rules(&self) -> Result<(), FactfileError> {
        for t in &self.data.tasks {
            if t.on_result.continue_job.is_empty() {
                return Err(FactfileError::NoContinue(t.name.clone()));
            }
            if t.on_result
                .terminate_job_with_success
                .iter()
                .any(|c| t.on_result.continue_job.contains(c))
            {
                return Err(FactfileError::ConflictingActions(t.name.clone()));
            }
        }
        let (_, problem) = Graph::resolve(&self.data.tasks, |t| &t.name, |t| &t.depends_on);
        match problem {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}

/// serde_json's message without its trailing " at line L column C".
fn json_message(e: &serde_json::Error) -> String {
    let full = e.to_string();
    match full.rfind(" at line ") {
        Some(i) => full[..i].to_string(),
        None => full,
    }
}

/// Collects every schema violation, then converts the document.
fn check_schema(doc: &Value) -> Result<Factfile, FactfileError> {
    let mut errs = Errors::default();
    let root = errs.object(doc, "");
    let mut schema = String::new();
    let mut job = Job::default();
    if let Some(root) = root {
        errs.only(root, "", &["schema", "data"]);
        if let Some(s) = errs
            .required(root, "", "schema")
            .and_then(|v| errs.string(v, "/schema"))
        {
            if s != SNOWPLOW_SCHEMA && s != FACTOTUM_SCHEMA {
                errs.push(
                    "/schema",
                    format!(
                        "Unsupported schema ('{s}' is not {SNOWPLOW_SCHEMA} or {FACTOTUM_SCHEMA})"
                    ),
                );
            }
            schema = s.to_string();
        }
        let ext = schema == FACTOTUM_SCHEMA;
        if let Some(data) = errs
            .required(root, "", "data")
            .and_then(|v| errs.object(v, "/data"))
        {
            errs.only(
                data,
                "/data",
                if ext {
                    JOB_FIELDS_EXT
                } else {
                    &JOB_FIELDS_EXT[..2]
                },
            );
            if let Some(n) = errs
                .required(data, "/data", "name")
                .and_then(|v| errs.string(v, "/data/name"))
            {
                job.name = n.to_string();
            }
            if let Some(list) = errs
                .required(data, "/data", "tasks")
                .and_then(|v| errs.array(v, "/data/tasks"))
            {
                job.tasks.reserve(list.len());
                for (i, t) in list.iter().enumerate() {
                    if let Some(task) = check_task(&mut errs, t, &format!("/data/tasks/{i}"), ext) {
                        job.tasks.push(task);
                    }
                }
            }
            if ext {
                job.tags = errs.string_map(data, "/data", "tags");
                job.timeout = errs.integer(data, "/data", "timeout", 1);
                job.placement = errs.one_of(data, "/data", "placement", &["sticky", "spread"]);
                job.max_parallel = errs
                    .integer(data, "/data", "maxParallel", 1)
                    .map(|m| u32::try_from(m).unwrap_or(u32::MAX));
            }
        }
    }
    if !errs.0.is_empty() {
        return Err(FactfileError::Schema(errs.0));
    }
    Ok(Factfile { schema, data: job })
}

/// The job's fields; the Snowplow schema allows the first two.
const JOB_FIELDS_EXT: &[&str] = &[
    "name",
    "tasks",
    "tags",
    "timeout",
    "placement",
    "maxParallel",
];

/// A task's fields; the Snowplow schema allows the first six.
const TASK_FIELDS_EXT: &[&str] = &[
    "name",
    "executor",
    "command",
    "arguments",
    "dependsOn",
    "onResult",
    "timeout",
    "retry",
    "continueOnFailure",
    "env",
    "cwd",
    "constraints",
    "onLost",
];

fn check_task(errs: &mut Errors, v: &Value, path: &str, ext: bool) -> Option<Task> {
    let obj = errs.object(v, path)?;
    errs.only(
        obj,
        path,
        if ext {
            TASK_FIELDS_EXT
        } else {
            &TASK_FIELDS_EXT[..6]
        },
    );
    let before = errs.0.len();
    let mut text = |field: &str| -> String {
        errs.required(obj, path, field)
            .and_then(|v| errs.string(v, &format!("{path}/{field}")))
            .unwrap_or_default()
            .to_string()
    };
    let name = text("name");
    let executor = text("executor");
    let command = text("command");
    let arguments = strings(errs, obj, path, "arguments");
    let depends_on = strings(errs, obj, path, "dependsOn");
    let mut on_result = OnResult {
        terminate_job_with_success: vec![],
        continue_job: vec![],
    };
    let rpath = format!("{path}/onResult");
    if let Some(r) = errs
        .required(obj, path, "onResult")
        .and_then(|v| errs.object(v, &rpath))
    {
        errs.only(r, &rpath, &["terminateJobWithSuccess", "continueJob"]);
        on_result.terminate_job_with_success = codes(errs, r, &rpath, "terminateJobWithSuccess");
        on_result.continue_job = codes(errs, r, &rpath, "continueJob");
    }
    let mut task = Task {
        name,
        executor,
        command,
        arguments,
        depends_on,
        on_result,
        ..Task::default()
    };
    if ext {
        let mut fields = TaskExt::default();
        check_task_extension(errs, obj, path, &mut fields);
        task.ext = fields.boxed();
        // Name the task in what is wrong with it: `/data/tasks/7` alone is hard to find.
        if !task.name.is_empty() {
            for e in &mut errs.0[before..] {
                e.push_str(&format!(" (task '{}')", task.name));
            }
        }
    }
    (errs.0.len() == before).then_some(task)
}

/// The extension's optional task fields.
fn check_task_extension(
    errs: &mut Errors,
    obj: &serde_json::Map<String, Value>,
    path: &str,
    task: &mut TaskExt,
) {
    task.timeout = errs.integer(obj, path, "timeout", 1);
    if let Some(v) = obj.get("continueOnFailure") {
        task.continue_on_failure = v.as_bool();
        if task.continue_on_failure.is_none() {
            errs.wrong_type(&format!("{path}/continueOnFailure"), "boolean");
        }
    }
    task.env = errs.string_map(obj, path, "env");
    if let Some(v) = obj.get("cwd") {
        task.cwd = errs.non_empty(v, &format!("{path}/cwd"));
    }
    task.on_lost = errs.one_of(obj, path, "onLost", &["fail", "retry"]);
    let cpath = format!("{path}/constraints");
    if let Some(c) = obj.get("constraints").and_then(|v| errs.object(v, &cpath)) {
        errs.only(c, &cpath, &["host", "labels"]);
        task.constraints = Some(TaskConstraints {
            host: c
                .get("host")
                .and_then(|v| errs.non_empty(v, &format!("{cpath}/host"))),
            labels: errs.string_map(c, &cpath, "labels"),
        });
    }
    let rpath = format!("{path}/retry");
    if let Some(r) = obj.get("retry").and_then(|v| errs.object(v, &rpath)) {
        errs.only(
            r,
            &rpath,
            &[
                "attempts",
                "delaySeconds",
                "backoff",
                "maxDelaySeconds",
                "onReturnCodes",
            ],
        );
        if errs.required(r, &rpath, "attempts").is_some() {
            task.retry = Some(Retry {
                attempts: errs
                    .integer(r, &rpath, "attempts", 1)
                    .map(|a| u32::try_from(a).unwrap_or(u32::MAX))
                    .unwrap_or(1),
                delay_seconds: errs.number(r, &rpath, "delaySeconds", 0.0),
                backoff: errs.number(r, &rpath, "backoff", 1.0),
                max_delay_seconds: errs.number(r, &rpath, "maxDelaySeconds", 0.0),
                on_return_codes: r
                    .contains_key("onReturnCodes")
                    .then(|| codes(errs, r, &rpath, "onReturnCodes")),
            });
        }
    }
}

fn strings(
    errs: &mut Errors,
    obj: &serde_json::Map<String, Value>,
    path: &str,
    field: &str,
) -> Vec<String> {
    let Some((p, items)) = errs.required_array(obj, path, field) else {
        return vec![];
    };
    items
        .iter()
        .enumerate()
        .filter_map(|(i, v)| errs.string(v, &format!("{p}/{i}")).map(str::to_string))
        .collect()
}

fn codes(
    errs: &mut Errors,
    obj: &serde_json::Map<String, Value>,
    path: &str,
    field: &str,
) -> Vec<i32> {
    let Some((p, items)) = errs.required_array(obj, path, field) else {
        return vec![];
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, v) in items.iter().enumerate() {
        let ip = format!("{p}/{i}");
        match v.as_i64() {
            Some(n) if n < 0 => errs.push(
                &ip,
                "Minimum condition is not met (the value must be at least 0)".into(),
            ),
            Some(n) if n > MAX_CODE => errs.push(
                &ip,
                format!("Maximum condition is not met (the value must be at most {MAX_CODE})"),
            ),
            Some(n) => out.push(n as i32),
            None => errs.wrong_type(&ip, "integer"),
        }
    }
    out
}

/// Schema violations, each `'<json pointer>' - <title> (<detail>)` like valico's.
#[derive(Default)]
struct Errors(Vec<String>);

impl Errors {
    fn push(&mut self, path: &str, msg: String) {
        let path = if path.is_empty() { "/" } else { path };
        self.0.push(format!("'{path}' - {msg}"));
    }

    fn wrong_type(&mut self, path: &str, expected: &str) {
        self.push(
            path,
            format!("Type of the value is wrong (The value must be {expected})"),
        );
    }

    fn object<'a>(
        &mut self,
        v: &'a Value,
        path: &str,
    ) -> Option<&'a serde_json::Map<String, Value>> {
        let o = v.as_object();
        if o.is_none() {
            self.wrong_type(path, "object");
        }
        o
    }

    fn array<'a>(&mut self, v: &'a Value, path: &str) -> Option<&'a Vec<Value>> {
        let a = v.as_array();
        if a.is_none() {
            self.wrong_type(path, "array");
        }
        a
    }

    fn string<'a>(&mut self, v: &'a Value, path: &str) -> Option<&'a str> {
        let s = v.as_str();
        if s.is_none() {
            self.wrong_type(path, "string");
        }
        s
    }

    fn required<'a>(
        &mut self,
        obj: &'a serde_json::Map<String, Value>,
        path: &str,
        field: &str,
    ) -> Option<&'a Value> {
        let v = obj.get(field);
        if v.is_none() {
            self.push(
                &format!("{path}/{field}"),
                "This property is required".into(),
            );
        }
        v
    }

    /// A required array field, with its path.
    fn required_array<'a>(
        &mut self,
        obj: &'a serde_json::Map<String, Value>,
        path: &str,
        field: &str,
    ) -> Option<(String, &'a Vec<Value>)> {
        let p = format!("{path}/{field}");
        let items = self
            .required(obj, path, field)
            .and_then(|v| self.array(v, &p))?;
        Some((p, items))
    }

    /// An optional integer field of at least `min`.
    fn integer(
        &mut self,
        obj: &serde_json::Map<String, Value>,
        path: &str,
        field: &str,
        min: u64,
    ) -> Option<u64> {
        let v = obj.get(field)?;
        let p = format!("{path}/{field}");
        match v.as_i64() {
            Some(n) if n < min as i64 => {
                self.push(
                    &p,
                    format!("Minimum condition is not met (the value must be at least {min})"),
                );
                None
            }
            Some(n) => Some(n as u64),
            None => {
                self.wrong_type(&p, "integer");
                None
            }
        }
    }

    /// An optional number field of at least `min`.
    fn number(
        &mut self,
        obj: &serde_json::Map<String, Value>,
        path: &str,
        field: &str,
        min: f64,
    ) -> Option<f64> {
        let v = obj.get(field)?;
        let p = format!("{path}/{field}");
        match v.as_f64() {
            Some(n) if n < min => {
                self.push(
                    &p,
                    format!("Minimum condition is not met (the value must be at least {min})"),
                );
                None
            }
            Some(n) => Some(n),
            None => {
                self.wrong_type(&p, "number");
                None
            }
        }
    }

    /// An optional string field that must be one of `allowed`.
    fn one_of<T: serde::de::DeserializeOwned>(
        &mut self,
        obj: &serde_json::Map<String, Value>,
        path: &str,
        field: &str,
        allowed: &[&str],
    ) -> Option<T> {
        let v = obj.get(field)?;
        let p = format!("{path}/{field}");
        let s = self.string(v, &p)?;
        if !allowed.contains(&s) {
            let list: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
            self.push(
                &p,
                format!(
                    "Enum conditions are not met (the value must be one of {})",
                    list.join(", ")
                ),
            );
            return None;
        }
        serde_json::from_value(v.clone()).ok()
    }

    /// A non-empty string.
    fn non_empty(&mut self, v: &Value, path: &str) -> Option<String> {
        let s = self.string(v, path)?;
        if s.is_empty() {
            self.push(
                path,
                "MinLength condition is not met (the value must not be empty)".into(),
            );
            return None;
        }
        Some(s.to_string())
    }

    /// An optional object whose values are all strings.
    fn string_map(
        &mut self,
        obj: &serde_json::Map<String, Value>,
        path: &str,
        field: &str,
    ) -> Option<BTreeMap<String, String>> {
        let p = format!("{path}/{field}");
        let o = self.object(obj.get(field)?, &p)?;
        let mut out = BTreeMap::new();
        for (k, v) in o {
            if let Some(s) = self.string(v, &format!("{p}/{k}")) {
                out.insert(k.clone(), s.to_string());
            }
        }
        Some(out)
    }

    fn only(&mut self, obj: &serde_json::Map<String, Value>, path: &str, allowed: &[&str]) {
        for k in obj.keys() {
            if !allowed.contains(&k.as_str()) {
                self.push(
                    &format!("{path}/{k}"),
                    "Additional properties are not allowed (this property is not part of the schema)".into(),
                );
            }
        }
    }
}

/// Tags keyed by name, as passed to templating and `jobReference`.
pub type Tags = BTreeMap<String, String>;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn task(name: &str, deps: &[&str]) -> Value {
        json!({"name": name, "executor": "shell", "command": "echo", "arguments": [name],
               "dependsOn": deps, "onResult": {"terminateJobWithSuccess": [3], "continueJob": [0]}})
    }

    fn doc(tasks: Vec<Value>) -> String {
        json!({"schema": SNOWPLOW_SCHEMA, "data": {"name": "j", "tasks": tasks}}).to_string()
    }

    fn parse(text: &str) -> Result<Factfile, FactfileError> {
        Factfile::parse(text, &Vars::new(&Value::Null, &Tags::new()).unwrap())
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn forward_references_are_allowed() {
        let ff = parse(&doc(vec![task("b", &["a"]), task("a", &[])])).unwrap();
        assert_eq!(ff.data.tasks.len(), 2);
    }

    #[test]
    fn empty_task_list_is_valid() {
        assert!(parse(&doc(vec![])).unwrap().data.tasks.is_empty());
    }

    #[test]
    fn invalid_json_message() {
        assert_eq!(
            err("xyz\nmore"),
            "invalid JSON - expected value at line 1, column 1"
        );
    }

    #[test]
    fn factotum_rule_messages() {
        let mut t = task("continue", &[]);
        t["onResult"]["continueJob"] = json!([]);
        assert_eq!(
            err(&doc(vec![t])),
            "the task 'continue' has no way to continue successfully."
        );
        let mut t = task("ambi", &[]);
        t["onResult"] = json!({"terminateJobWithSuccess": [0], "continueJob": [0]});
        assert_eq!(
            err(&doc(vec![t])),
            "the task 'ambi' has conflicting actions."
        );
    }

    #[test]
    fn graph_errors_are_clear() {
        assert_eq!(
            err(&doc(vec![task("a", &[]), task("a", &[])])),
            "the task name 'a' is used by more than one task"
        );
        assert_eq!(
            err(&doc(vec![task("a", &["a"])])),
            "the task 'a' depends on itself"
        );
        assert_eq!(
            err(&doc(vec![task("a", &["zz"])])),
            "the task 'a' depends on 'zz', which is not a task in this factfile"
        );
        let e = err(&doc(vec![
            task("a", &["c"]),
            task("b", &["a"]),
            task("c", &["b"]),
            task("d", &[]),
        ]));
        assert!(e.starts_with("the tasks form a cycle: "), "{e}");
        for n in ["'a'", "'b'", "'c'"] {
            assert!(e.contains(n), "{e}");
        }
        assert!(!e.contains("'d'"), "{e}");
    }

    #[test]
    fn schema_errors_name_the_path() {
        let mut t = task("a", &[]);
        t["onResult"]["terminateJobWithSuccess"] = json!(["this isn't a number!"]);
        assert_eq!(
            err(&doc(vec![t])),
            "'/data/tasks/0/onResult/terminateJobWithSuccess/0' - Type of the value is wrong (The value must be integer)"
        );
        let no_name = json!({"schema": SNOWPLOW_SCHEMA, "data": {"tasks": []}}).to_string();
        assert_eq!(err(&no_name), "'/data/name' - This property is required");
        let mut t = task("a", &[]);
        t["timeout"] = json!(5);
        assert!(err(&doc(vec![t]))
            .starts_with("'/data/tasks/0/timeout' - Additional properties are not allowed"));
        let mut t = task("a", &[]);
        t["onResult"]["continueJob"] = json!([0, 40000, -1]);
        let e = err(&doc(vec![t]));
        assert!(
            e.contains("'/data/tasks/0/onResult/continueJob/1' - Maximum"),
            "{e}"
        );
        assert!(
            e.contains("'/data/tasks/0/onResult/continueJob/2' - Minimum"),
            "{e}"
        );
        assert!(err("[1]").starts_with("'/' - Type of the value is wrong"));
        let other = json!({"schema": "iglu:com.acme/factfile/jsonschema/1-0-0", "data": {"name": "x", "tasks": []}});
        assert!(err(&other.to_string()).starts_with("'/schema' - Unsupported schema"));
    }

    #[test]
    fn templating_applies_to_names_args_deps_and_command() {
        let text = json!({"schema": SNOWPLOW_SCHEMA, "data": {"name": "job {{ tag:env }}", "tasks": [
            {"name": "a {{x}}", "executor": "shell", "command": "echo {{x}}", "arguments": ["{{ x }}"],
             "dependsOn": [], "onResult": {"terminateJobWithSuccess": [], "continueJob": [0]}},
            {"name": "b", "executor": "shell", "command": "echo", "arguments": [],
             "dependsOn": ["a {{x}}"], "onResult": {"terminateJobWithSuccess": [], "continueJob": [0]}}]}})
        .to_string();
        let tags = Tags::from([("env".to_string(), "prod".to_string())]);
        let ff = Factfile::parse(&text, &Vars::new(&json!({"x": "1"}), &tags).unwrap()).unwrap();
        assert_eq!(ff.data.name, "job prod");
        assert_eq!(ff.data.tasks[0].name, "a 1");
        assert_eq!(ff.data.tasks[0].command, "echo 1");
        assert_eq!(ff.data.tasks[0].arguments, vec!["1"]);
        assert_eq!(ff.data.tasks[1].depends_on, vec!["a 1"]);
    }

    #[test]
    fn the_extension_parses_and_round_trips_through_its_compact_json() {
        let mut t = task("load", &[]);
        t["timeout"] = json!(30);
        t["retry"] = json!({"attempts": 3, "delaySeconds": 1.5, "onReturnCodes": [75]});
        t["env"] = json!({"TARGET": "{{ tag:env }}"});
        t["cwd"] = json!("/tmp");
        t["constraints"] = json!({"host": "etl-1", "labels": {"disk": "ssd"}});
        t["onLost"] = json!("retry");
        t["continueOnFailure"] = json!(true);
        let text = json!({"schema": FACTOTUM_SCHEMA, "data": {"name": "j", "tasks": [t],
            "tags": {"env": "{{ not templated }}"}, "timeout": 600, "placement": "spread",
            "maxParallel": 4}})
        .to_string();
        let raw = Factfile::read(&text).unwrap();
        assert_eq!(
            raw.data.tags.as_ref().unwrap()["env"],
            "{{ not templated }}"
        );
        let tags = Tags::from([("env".to_string(), "prod".to_string())]);
        let ff = raw
            .finish(&Vars::new(&Value::Null, &tags).unwrap())
            .unwrap();
        let load = &ff.data.tasks[0];
        assert_eq!(load.ext().env.as_ref().unwrap()["TARGET"], "prod");
        assert_eq!(load.ext().retry.as_ref().unwrap().delay_seconds, Some(1.5));
        assert_eq!(ff.data.placement, Some(Placement::Spread));
        assert_eq!(Factfile::parse_compact(&ff.compact_json()).unwrap(), ff);
        // A Snowplow factfile's compact JSON has none of the extension's fields.
        let plain = parse(&doc(vec![task("a", &[])])).unwrap();
        assert!(!plain.compact_json().contains("timeout"));
    }

    #[test]
    fn extension_values_out_of_range_are_named() {
        let mut t = task("t", &[]);
        t["timeout"] = json!(0);
        t["retry"] = json!({"attempts": 2, "backoff": 0.5});
        t["cwd"] = json!("");
        let text =
            json!({"schema": FACTOTUM_SCHEMA, "data": {"name": "j", "tasks": [t]}}).to_string();
        let e = err(&text);
        for want in [
            "'/data/tasks/0/timeout' - Minimum condition is not met (the value must be at least 1) (task 't')",
            "'/data/tasks/0/retry/backoff' - Minimum condition is not met (the value must be at least 1) (task 't')",
            "'/data/tasks/0/cwd' - MinLength condition is not met (the value must not be empty) (task 't')",
        ] {
            assert!(e.contains(want), "missing {want:?} in {e}");
        }
    }

    #[test]
    fn compact_json_is_factotums_and_gives_the_vector_references() {
        let text = doc(vec![task("echo alpha", &[])]);
        let ff = parse(&text).unwrap();
        assert!(ff.compact_json().starts_with(
            "{\"schema\":\"iglu:com.snowplowanalytics.factotum/factfile/jsonschema/1-0-0\",\"data\":{\"name\":\"j\",\"tasks\":[{\"name\":\"echo alpha\",\"executor\":\"shell\",\"command\":\"echo\",\"arguments\":[\"echo alpha\"],\"dependsOn\":[],\"onResult\":{\"terminateJobWithSuccess\":[3],\"continueJob\":[0]}}"
        ));
    }
}
