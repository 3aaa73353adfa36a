//! Turning a submission (factfile text, variables, tags, options) into a [`RunSpec`]: shared by
//! `factotum run` and the coordinator's `SubmitRun`, so both accept and refuse the same things
//! with the same words.

use std::collections::BTreeMap;
use std::net::{IpAddr, ToSocketAddrs};
use std::sync::Arc;

use factotum_common::constraint::Constraint;
use factotum_common::dag::{Plan, PlanTask};
use factotum_common::run::{clamp_max_output, DEFAULT_MAX_MESSAGE};
use factotum_common::template::{Limits, Vars};
use factotum_common::{Factfile, FactfileError};
use serde_json::Value;

use crate::model::{Placement, Redaction, RunSpec};

pub mod redaction;

/// What to run and how.
#[derive(Debug, Clone, Default)]
pub struct Submission {
    pub factfile: String,
    /// The factfile's name in messages (its path).
    pub factfile_name: String,
    /// `--env` text: a JSON object, or `None`.
    pub env: Option<String>,
    /// `--tag`s; they win over the factfile's own `tags`.
    pub tags: BTreeMap<String, String>,
    /// `--start` tasks (none: the whole factfile).
    pub start: Vec<String>,
    pub webhooks: Vec<String>,
    pub constraints: Vec<Constraint>,
    /// `--placement`; `None`: the factfile's `placement`, or sticky.
    pub placement: Option<Placement>,
    pub max_output: usize,
    pub dry_run: bool,
    pub allow_concurrent: bool,
    pub idempotency_key: Option<String>,
    /// Send `RUNNING → RUNNING` task updates (webhooks) with the output so far this often.
    pub heartbeat: Option<std::time::Duration>,
    /// `--max-rendered-size` and `--max-rendered-total`: how large templating may make it.
    pub render_limits: Limits,
    /// `--max-message-size` (0: [`DEFAULT_MAX_MESSAGE`]): a task whose lease would take more
    /// than [`lease_limit`] of it is refused.
    pub max_message: usize,
    /// `--no-redact`: output, payloads and the factfile field as Factotum has them.
    pub no_redact: bool,
    /// `--parallel`: at most this many of its tasks at once (within the job's `maxParallel`).
    pub parallel: Option<u32>,
}

/// `--max-factfile-size` and `--max-tasks`: how large a factfile may be before it is read whole,
/// and how many tasks it may hold before it is templated and planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLimits {
    pub max_size: usize,
    pub max_tasks: usize,
    /// Webhook URLs one submission may name (`--max-webhooks`).
    pub max_webhooks: usize,
}

/// `--max-factfile-size`'s default: the 100,000-task benchmark factfile (~20 MB) fits.
pub const DEFAULT_MAX_FACTFILE_SIZE: usize = 32 << 20;
/// `--max-tasks`'s default.
pub const DEFAULT_MAX_TASKS: usize = 100_000;
/// `--max-webhooks`'s default.
pub const DEFAULT_MAX_WEBHOOKS: usize = 16;

impl Default for InputLimits {
    fn default() -> InputLimits {
        InputLimits {
            max_size: DEFAULT_MAX_FACTFILE_SIZE,
            max_tasks: DEFAULT_MAX_TASKS,
            max_webhooks: DEFAULT_MAX_WEBHOOKS,
        }
    }
}

impl InputLimits {
    /// A factfile of `size` bytes past `--max-factfile-size` is invalid, naming both.
    pub fn check_size(&self, name: &str, size: u64) -> Result<(), SpecError> {
        if size > self.max_size as u64 {
            return Err(SpecError::InvalidFactfile(format!(
                "'{name}' is not a valid factotum factfile: it is {size} bytes, more than the {} \
                 --max-factfile-size allows",
                self.max_size
            )));
        }
        Ok(())
    }

    /// A factfile of `tasks` tasks past `--max-tasks` is invalid, naming both.
    pub fn check_tasks(&self, name: &str, tasks: usize) -> Result<(), SpecError> {
        if tasks > self.max_tasks {
            return Err(SpecError::InvalidFactfile(format!(
                "'{name}' is not a valid factotum factfile: it has {tasks} tasks, more than the {} \
                 --max-tasks allows",
                self.max_tasks
            )));
        }
        Ok(())
    }
}

/// Why a submission was refused; the exit code `factotum` gives each kind is Factotum's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The factfile is invalid (exit 1). The text includes Factotum's prefix naming the file.
    #[error("{0}")]
    InvalidFactfile(String),
    /// A bad argument (exit 3): `field` names the request field at fault (`env_json`,
    /// `start`, `webhooks`, `constraints`, `tags`, `max_output`); the message speaks of the
    /// CLI's flags, as Factotum's do ([`SpecError::api_message`] speaks of the request).
    #[error("{message}")]
    BadArgument {
        field: &'static str,
        message: String,
    },
}

impl SpecError {
    pub fn bad(field: &'static str, message: impl Into<String>) -> SpecError {
        SpecError::BadArgument {
            field,
            message: message.into(),
        }
    }

    /// The message for an API client: about the request's fields, not the CLI's flags.
    pub fn api_message(&self) -> String {
        const FIELDS: [(&str, &str); 6] = [
            ("the --env value", "env_json"),
            ("--webhook", "webhooks"),
            ("the --dry-run option", "dry_run"),
            ("--start", "start"),
            ("--max-stdouterr-size", "max_output"),
            ("--tag", "tags"),
        ];
        let text = self.to_string();
        let mut text = text.strip_prefix("Error: ").unwrap_or(&text).to_string();
        for (flag, field) in FIELDS {
            text = text.replace(flag, field);
        }
        // `factotum run` keeps Factotum's words, typo included (COMPAT); the API spells them.
        text.replace("the specifed ", "the specified ")
    }
}

/// Parses `--env`: a JSON object (nested values and numbers allowed).
pub fn parse_env(env: Option<&str>) -> Result<Value, SpecError> {
    let Some(text) = env.filter(|t| !t.trim().is_empty()) else {
        return Ok(Value::Null);
    };
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(SpecError::bad("env_json", format!(
            "Error: the --env value must be a JSON object, like '{{\"name\": \"value\"}}', not {text}"
        ))),
        Err(e) => Err(SpecError::bad("env_json", format!("Error: the --env value is not valid JSON: {e}"))),
    }
}

/// Factotum's webhook URL check, with its message (typo included).
pub fn check_webhook_url(url: &str) -> Result<(), SpecError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    let reason = match rest {
        None => Some("the URL must start with http:// or https://"),
        Some(r) if r.is_empty() || r.starts_with('/') => Some("the URL has no host"),
        Some(r) if r.chars().any(char::is_whitespace) => Some("the URL contains whitespace"),
        Some(_) => None,
    };
    match reason {
        Some(why) => Err(SpecError::bad(
            "webhooks",
            format!("Error: the specifed webhook URL \"{url}\" is invalid. Reason: {why}"),
        )),
        None => Ok(()),
    }
}

/// Resolves a host constraint's value to addresses (an IP is itself; a name is looked up).
pub fn resolve(value: &str) -> Vec<IpAddr> {
    match value.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) if value == "*" => vec![],
        Err(_) => (value, 0)
            .to_socket_addrs()
            .map(|a| a.map(|s| s.ip()).collect())
            .unwrap_or_default(),
    }
}

/// Fills in the addresses of the tasks' own host constraints (each name looked up once).
pub fn resolve_plan(mut plan: Plan) -> Plan {
    let mut seen: std::collections::HashMap<String, Vec<IpAddr>> = Default::default();
    for t in &mut plan.tasks {
        let Some(policy) = t.policy.as_deref_mut() else {
            continue;
        };
        for c in &mut policy.constraints {
            if let Constraint::Host { value, resolved } = c {
                *resolved = seen
                    .entry(value.clone())
                    .or_insert_with(|| resolve(value))
                    .clone();
            }
        }
    }
    plan
}

/// Fills in the addresses of host constraints.
pub fn resolve_constraints(constraints: Vec<Constraint>) -> Vec<Constraint> {
    constraints
        .into_iter()
        .map(|c| match c {
            Constraint::Host { value, .. } => {
                let resolved = resolve(&value);
                Constraint::Host { value, resolved }
            }
            other => other,
        })
        .collect()
}

/// Parses, templates and validates a factfile's text; errors carry Factotum's prefix naming it.
/// Returns it with the run's tags: the factfile's own `tags` with `tags` (the command line's)
/// over them; those are also the `{{tag:…}}` variables. Templating keeps to `limits`: a field
/// or the whole past them is an invalid factfile, refused before anything larger is built.
pub fn parse_factfile(
    text: &str,
    name: &str,
    env: &Value,
    tags: &BTreeMap<String, String>,
    limits: Limits,
    input: InputLimits,
) -> Result<(Factfile, BTreeMap<String, String>), SpecError> {
    let invalid = |e: FactfileError| {
        SpecError::InvalidFactfile(format!("'{name}' is not a valid factotum factfile: {e}"))
    };
    input.check_size(name, text.len() as u64)?;
    let raw = Factfile::read(text).map_err(invalid)?;
    input.check_tasks(name, raw.data.tasks.len())?;
    let mut merged = raw.data.tags.clone().unwrap_or_default();
    merged.extend(tags.iter().map(|(k, v)| (k.clone(), v.clone())));
    let vars = Vars::new(env, &merged)
        .map_err(|e| SpecError::bad("tags", format!("Error: {e}")))?
        .with_limits(limits);
    let ff = raw.finish(&vars).map_err(invalid)?;
    Ok((ff, merged))
}

/// The factfile's text, or why it can't be read (an invalid-factfile error naming it). One past
/// `--max-factfile-size` is refused by its length before it is read, and at most one byte more
/// than the limit is ever read (a file that grows, or has no length, like a pipe).
pub fn read_factfile(path: &std::path::Path, input: InputLimits) -> Result<String, SpecError> {
    use std::io::Read;
    let name = path.display().to_string();
    let unreadable = |e: std::io::Error| {
        SpecError::InvalidFactfile(format!(
            "'{name}' is not a valid factotum factfile: couldn't read the file ({e})"
        ))
    };
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let len = file.metadata().map_err(unreadable)?.len();
    input.check_size(&name, len)?;
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0).min(input.max_size) + 1);
    file.take(input.max_size as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    input.check_size(&name, bytes.len() as u64)?;
    String::from_utf8(bytes)
        .map_err(|e| unreadable(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

/// Parses, templates, validates and plans a submission within the default [`InputLimits`].
pub fn prepare(sub: Submission) -> Result<RunSpec, SpecError> {
    prepare_within(sub, InputLimits::default())
}

/// Parses, templates, validates and plans a submission; a factfile past `input` is refused
/// before it is templated or planned.
pub fn prepare_within(mut sub: Submission, input: InputLimits) -> Result<RunSpec, SpecError> {
    let env = parse_env(sub.env.as_deref())?;
    if sub.webhooks.len() > input.max_webhooks {
        return Err(SpecError::bad(
            "webhooks",
            format!(
                "Error: {} --webhook URLs, more than the {} a run may have (--max-webhooks on the coordinator)",
                sub.webhooks.len(),
                input.max_webhooks
            ),
        ));
    }
    for url in &sub.webhooks {
        check_webhook_url(url)?;
    }
    if sub.dry_run && !sub.webhooks.is_empty() {
        return Err(SpecError::bad(
            "webhooks",
            "Error: --webhook cannot be used with the --dry-run option",
        ));
    }
    let (ff, tags) = parse_factfile(
        &sub.factfile,
        &sub.factfile_name,
        &env,
        &sub.tags,
        sub.render_limits,
        input,
    )?;
    let plan = Plan::from_starts(&ff, &sub.start)
        .map_err(|e| SpecError::bad("start", e.to_string()))?
        .limited(sub.parallel);
    let redaction = if sub.no_redact {
        Redaction::default()
    } else {
        redaction::decide(&sub.factfile, &env)
    };
    let plan = redaction::replan(plan, sub.no_redact, &redaction.secrets);
    // The text is read no more: a big factfile's text goes before its compact copy is made.
    drop(std::mem::take(&mut sub.factfile));
    let max_message = if sub.max_message == 0 {
        DEFAULT_MAX_MESSAGE
    } else {
        sub.max_message
    };
    for task in &plan.tasks {
        let size = lease_size(task);
        if size > lease_limit(max_message) {
            return Err(SpecError::InvalidFactfile(format!(
                "'{}' is not a valid factotum factfile: task '{}' would be sent to its agent in a \
                 message of about {size} bytes, more than the {} bytes a lease may take (half of \
                 --max-message-size, {max_message} bytes); shorten its command, arguments, env or cwd",
                sub.factfile_name,
                task.name,
                lease_limit(max_message),
            )));
        }
    }
    let placement = sub.placement.or(ff.data.placement).unwrap_or_default();
    Ok(RunSpec {
        compact_factfile: ff.compact_json(),
        plan: Arc::new(resolve_plan(plan)),
        tags,
        webhooks: sub.webhooks,
        max_output: clamp_max_output(sub.max_output),
        dry_run: sub.dry_run,
        constraints: resolve_constraints(sub.constraints),
        placement,
        allow_concurrent: sub.allow_concurrent,
        idempotency_key: sub.idempotency_key,
        uuid: uuid::Uuid::new_v4().to_string(),
        rerun_of: None,
        heartbeat: sub.heartbeat,
        no_redact: sub.no_redact,
        parallel: sub.parallel,
        redaction,
    })
}

/// The most of a message (`--max-message-size`) one task's lease may take: half, so the lease
/// and everything framing it always fit.
pub fn lease_limit(max_message: usize) -> usize {
    max_message / 2
}

/// About how many bytes a task's lease takes on the wire: its name, command line, env and cwd,
/// each with its protobuf framing, and a little for the fixed fields (an upper bound: a varint
/// length prefix is at most 10 bytes).
pub fn lease_size(task: &PlanTask) -> usize {
    const FIELD: usize = 1 + 10;
    let policy = task.policy();
    let env: usize = policy
        .env
        .iter()
        .map(|(k, v)| 3 * FIELD + k.len() + v.len())
        .sum();
    let cwd = policy.cwd.as_deref().map_or(0, str::len);
    128 + 3 * FIELD + task.name.len() + task.command_line.len() + env + cwd
}

#[cfg(test)]
mod tests {
    use super::*;
    use factotum_common::run::MAX_TAIL;
    use serde_json::json;

    fn factfile(command: &str, args: &[&str]) -> String {
        json!({
            "schema": "iglu:com.snowplowanalytics.factotum/factfile/jsonschema/1-0-0",
            "data": {"name": "big", "tasks": [{
                "name": "big one", "executor": "shell", "command": command,
                "arguments": args, "dependsOn": [],
                "onResult": {"terminateJobWithSuccess": [], "continueJob": [0]}
            }]}
        })
        .to_string()
    }

    fn submission(text: String) -> Submission {
        Submission {
            factfile: text,
            factfile_name: "big.factfile".into(),
            max_output: 10_000,
            render_limits: Limits::default(),
            ..Submission::default()
        }
    }

    #[test]
    fn max_output_is_clamped_to_what_a_result_can_carry() {
        let mut sub = submission(factfile("echo", &["hi"]));
        sub.max_output = 10_000_000;
        assert_eq!(prepare(sub).unwrap().max_output, MAX_TAIL);
        let sub = submission(factfile("echo", &["hi"]));
        assert_eq!(prepare(sub).unwrap().max_output, 10_000);
    }

    #[test]
    fn a_lease_over_half_the_message_limit_is_refused_naming_the_task() {
        let arg = "x".repeat(600 * 1024);
        let args: Vec<&str> = std::iter::repeat_n(arg.as_str(), 4).collect();
        let mut sub = submission(factfile("echo", &args));
        sub.max_message = 4 * 1024 * 1024;
        let err = prepare(sub).unwrap_err();
        let SpecError::InvalidFactfile(text) = err else {
            panic!("not an invalid factfile: {err:?}");
        };
        assert!(text.contains("task 'big one'"), "{text}");
        assert!(text.contains("--max-message-size"), "{text}");
        // The same factfile fits the default limit (16 MiB).
        let sub = submission(factfile("echo", &args));
        prepare(sub).unwrap();
    }

    #[test]
    fn a_factfile_past_the_input_limits_is_refused_naming_them() {
        let text = factfile("echo", &["hi"]);
        let small = InputLimits {
            max_size: text.len() - 1,
            ..InputLimits::default()
        };
        let err = prepare_within(submission(text.clone()), small).unwrap_err();
        assert_eq!(
            err,
            SpecError::InvalidFactfile(format!(
                "'big.factfile' is not a valid factotum factfile: it is {} bytes, more than the {} \
                 --max-factfile-size allows",
                text.len(),
                text.len() - 1
            ))
        );
        let mut many = submission(text.clone());
        many.webhooks = vec!["http://127.0.0.1:9/h".into(); 3];
        let two = InputLimits {
            max_webhooks: 2,
            ..InputLimits::default()
        };
        let err = prepare_within(many, two).unwrap_err();
        assert!(
            matches!(&err, SpecError::BadArgument { field: "webhooks", message } if message.contains("3 --webhook URLs, more than the 2")),
            "{err:?}"
        );
        let none = InputLimits {
            max_tasks: 0,
            ..InputLimits::default()
        };
        let err = prepare_within(submission(text.clone()), none).unwrap_err();
        assert_eq!(
            err,
            SpecError::InvalidFactfile(
                "'big.factfile' is not a valid factotum factfile: it has 1 tasks, more than the 0 \
                 --max-tasks allows"
                    .into()
            )
        );
        prepare_within(submission(text), InputLimits::default()).unwrap();
    }

    #[test]
    fn the_lease_size_bounds_the_encoded_lease() {
        let ff = factfile("echo", &["hello", "world"]);
        let spec = prepare(submission(ff)).unwrap();
        let task = &spec.plan.tasks[0];
        let encoded = prost::Message::encoded_len(&factotum_proto::Lease {
            lease: Some(factotum_proto::LeaseRef {
                run_id: uuid::Uuid::new_v4().to_string(),
                task: u32::MAX,
                attempt: u32::MAX,
                epoch: u64::MAX,
            }),
            task_name: task.name.to_string(),
            command_line: task.command_line.clone(),
            max_output: u32::MAX,
            dry_run: true,
            env: Default::default(),
            cwd: String::new(),
            redact: vec![],
        });
        assert!(
            lease_size(task) >= encoded,
            "{} < {encoded}",
            lease_size(task)
        );
    }
}
