//! What a run redacts (issue 14): the secrets of a submission, and the factfile its webhook
//! payloads show when it has any.
//!
//! The agent does the redacting (each lease carries its task's list, see
//! [`factotum_common::dag::Plan::redacting`]); here the coordinator decides what is secret —
//! `--env`'s string leaves and the tasks' `env` values — and keeps the templated factfile (which
//! holds them) out of the payloads.

use factotum_common::dag::Plan;
use factotum_common::redact::{string_leaves, Redactor, REDACTED};
use factotum_common::template::html_escape;
use factotum_common::webhook::RunMeta;
use serde_json::Value;

use crate::model::Redaction;

/// What to redact in a run of `text` (the factfile as submitted) with `--env` `env`.
pub fn decide(text: &str, env: &Value) -> Redaction {
    let leaves = string_leaves(env);
    // `{{x}}` writes a value HTML-escaped: a task may print it that way too.
    let escaped = leaves.iter().map(|l| html_escape(l));
    let secrets = factotum_common::redact::secrets(leaves.iter().cloned().chain(escaped));
    // The document as a JSON tree costs ~3 KB a task (600 MB for 200k tasks, more than the rest
    // of a run): built only when the payloads need a redacted factfile.
    let shown_factfile = if !leaves.is_empty() || any_task_env(text) {
        serde_json::from_str::<Value>(text)
            .ok()
            .map(|doc| shown(doc, &secrets))
    } else {
        None
    };
    Redaction {
        secrets,
        shown_factfile,
    }
}

/// Makes the payloads of a run show `shown` (when it redacts) as their `factfile`; its
/// `jobReference` stays that of the templated factfile.
pub fn show(meta: &mut RunMeta, shown: Option<&str>) {
    if let Some(text) = shown {
        meta.factfile_base64 = factotum_common::redact::factfile_base64(text);
    }
}

/// A recorded run's plan with its leases' redaction set again (after a failover, or for a
/// rerun): `secrets` are its `--env` secrets as recorded; `no_redact`: none at all.
pub fn replan(plan: Plan, no_redact: bool, secrets: &[String]) -> Plan {
    if no_redact {
        plan
    } else {
        plan.redacting(secrets)
    }
}

/// Whether a task of the factfile `text` has an `env` object, read without the JSON tree: the
/// tasks' other fields are skipped.
fn any_task_env(text: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Doc {
        data: Option<Data>,
    }
    #[derive(serde::Deserialize)]
    struct Data {
        tasks: Option<Vec<EnvOf>>,
    }
    #[derive(serde::Deserialize)]
    struct EnvOf {
        env: Option<Value>,
    }
    serde_json::from_str::<Doc>(text).is_ok_and(|d| {
        let tasks = d.data.and_then(|d| d.tasks).unwrap_or_default();
        tasks
            .iter()
            .any(|t| t.env.as_ref().is_some_and(Value::is_object))
    })
}

/// `doc` with its tasks' `env` values and every occurrence of a secret redacted, compact.
fn shown(mut doc: Value, secrets: &[String]) -> String {
    if let Some(tasks) = doc
        .get_mut("data")
        .and_then(|d| d.get_mut("tasks"))
        .and_then(Value::as_array_mut)
    {
        for t in tasks {
            if let Some(env) = t.get_mut("env").and_then(Value::as_object_mut) {
                for v in env.values_mut() {
                    *v = Value::String(REDACTED.into());
                }
            }
        }
    }
    let redactor = Redactor::new(secrets);
    redact_leaves(&mut doc, &redactor);
    doc.to_string()
}

fn redact_leaves(v: &mut Value, r: &Redactor) {
    match v {
        Value::String(s) => {
            if let std::borrow::Cow::Owned(red) = r.redact(s) {
                *s = red;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| redact_leaves(i, r)),
        Value::Object(map) => map.values_mut().for_each(|i| redact_leaves(i, r)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_shown_factfile_is_the_untemplated_one_without_env_values() {
        let text = json!({"schema": "s", "data": {"name": "j", "tasks": [
            {"name": "a", "command": "echo", "arguments": ["{{ $.env.token }}", "literal-s3cr3t"],
             "env": {"KEY": "key-value-1", "T": "{{ $.env.token }}"}},
            {"name": "b", "command": "echo", "arguments": []}
        ]}})
        .to_string();
        let env = json!({"token": "literal-s3cr3t", "n": 5, "short": "ab", "amp": "a&b'c"});
        let r = decide(&text, &env);
        assert_eq!(r.secrets, ["literal-s3cr3t", "a&amp;b&#39;c", "a&b'c"]);
        let shown: Value = serde_json::from_str(r.shown_factfile.as_deref().unwrap()).unwrap();
        let a = &shown["data"]["tasks"][0];
        assert_eq!(a["env"], json!({"KEY": "[redacted]", "T": "[redacted]"}));
        assert_eq!(a["arguments"], json!(["{{ $.env.token }}", "[redacted]"]));
        // Nothing secret: the templated factfile as before.
        let plain = json!({"data": {"tasks": [{"name": "b"}]}}).to_string();
        assert_eq!(decide(&plain, &Value::Null), Redaction::default());
        assert!(decide(&plain, &json!({"x": "value"}))
            .shown_factfile
            .is_some());
    }
}
