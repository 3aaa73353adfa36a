//! Applying `--env` and the tags to a factfile: every string Factotum templates (job name, task
//! names, executors, commands, arguments, `dependsOn`) and the extension's `env` values, `cwd`
//! and constraints. `tags` and `schema` are not templated.
//!
//! Every render keeps to the [`Limits`] of the [`Vars`]: a field to `--max-rendered-size`, and
//! all templated fields together to `--max-rendered-total` (each field is given what is left of
//! the total, so no render builds more than either allows). A field past its limit is an
//! invalid factfile naming the task, the field and the limit.

use super::diagnostics::FactfileError;
use super::model::Factfile;
use crate::template::{Limits, RenderError, Size, TemplateError, Vars};

/// Renders fields one after the other, keeping count of the total.
struct Renderer<'v> {
    vars: &'v Vars,
    limits: Limits,
    /// What the fields rendered so far cost.
    used: usize,
}

impl Renderer<'_> {
    /// Renders `s` in place if it holds a `{{`. `who` names the job or the task, `field` the
    /// field (for a size error); `what` is the older wording of a malformed template's place.
    fn render(
        &mut self,
        s: &mut String,
        who: &dyn Fn() -> String,
        field: &dyn Fn() -> String,
        what: &dyn Fn() -> String,
    ) -> Result<(), FactfileError> {
        if !s.contains("{{") {
            return Ok(());
        }
        let left = self.limits.total.saturating_sub(self.used);
        let max = self.limits.field.min(left);
        match self.vars.render_at_most(s, max) {
            Ok(r) => {
                self.used += r.cost;
                *s = r.text;
                Ok(())
            }
            Err(RenderError::Template(error)) => Err(FactfileError::Template {
                what: what(),
                error,
            }),
            Err(RenderError::TooLarge) => {
                let why = if self.limits.field <= left {
                    format!(
                        "the rendered {} is larger than --max-rendered-size ({})",
                        field(),
                        Size(self.limits.field)
                    )
                } else {
                    format!(
                        "the rendered {} takes the factfile's templated fields past \
                         --max-rendered-total ({})",
                        field(),
                        Size(self.limits.total)
                    )
                };
                Err(FactfileError::Template {
                    what: who(),
                    error: TemplateError(why),
                })
            }
        }
    }
}

impl Factfile {
    /// Renders every string field holding a `{{`, in place.
    pub(super) fn template(mut self, vars: &Vars) -> Result<Factfile, FactfileError> {
        let mut r = Renderer {
            vars,
            limits: vars.limits(),
            used: 0,
        };
        let job = || "the job".to_string();
        let named = |f: &'static str| move || f.to_string();
        r.render(&mut self.data.name, &job, &named("name"), &|| {
            "the job name".to_string()
        })?;
        for (i, t) in self.data.tasks.iter_mut().enumerate() {
            let field = |f: &str| format!("task {} field '{f}'", i + 1);
            let numbered = || format!("task {}", i + 1);
            r.render(&mut t.name, &numbered, &named("name"), &|| field("name"))?;
            // The name is rendered: size errors name the task by it.
            let name = t.name.clone();
            let who = || format!("task '{name}'");
            r.render(&mut t.executor, &who, &named("executor"), &|| {
                field("executor")
            })?;
            r.render(&mut t.command, &who, &named("command"), &|| {
                field("command")
            })?;
            for (n, a) in t.arguments.iter_mut().enumerate() {
                r.render(a, &who, &|| format!("argument {}", n + 1), &|| {
                    field("arguments")
                })?;
            }
            for d in &mut t.depends_on {
                r.render(d, &who, &named("dependsOn"), &|| field("dependsOn"))?;
            }
            let Some(ext) = t.ext.as_deref_mut() else {
                continue;
            };
            for (k, v) in ext.env.iter_mut().flatten() {
                r.render(v, &who, &|| format!("env value '{k}'"), &|| field("env"))?;
            }
            if let Some(cwd) = &mut ext.cwd {
                r.render(cwd, &who, &named("cwd"), &|| field("cwd"))?;
            }
            let Some(c) = &mut ext.constraints else {
                continue;
            };
            if let Some(h) = &mut c.host {
                r.render(h, &who, &named("host constraint"), &|| {
                    field("constraints/host")
                })?;
            }
            for (k, v) in c.labels.iter_mut().flatten() {
                r.render(v, &who, &|| format!("label constraint '{k}'"), &|| {
                    field("constraints/labels")
                })?;
            }
        }
        // Deserializing grew the task list by doubling: give the slack back.
        self.data.tasks.shrink_to_fit();
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::factfile::SNOWPLOW_SCHEMA;
    use serde_json::{json, Value};
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    fn task(name: &str, command: &str, arguments: &[&str]) -> Value {
        json!({"name": name, "executor": "shell", "command": command, "arguments": arguments,
               "dependsOn": [], "onResult": {"terminateJobWithSuccess": [], "continueJob": [0]}})
    }

    fn doc(tasks: Vec<Value>) -> String {
        json!({"schema": SNOWPLOW_SCHEMA, "data": {"name": "j", "tasks": tasks}}).to_string()
    }

    fn vars(n: usize, limits: Limits) -> Vars {
        let xs: Vec<usize> = (1..=n).collect();
        Vars::new(&json!({ "xs": xs }), &BTreeMap::new())
            .unwrap()
            .with_limits(limits)
    }

    const BOMB: &str = "{{#xs}}{{#xs}}{{#xs}}x{{/xs}}{{/xs}}{{/xs}}";

    #[test]
    fn a_bomb_in_a_command_is_an_invalid_factfile_naming_task_field_and_limit() {
        let text = doc(vec![task("ok", "echo", &[]), task("bomb", BOMB, &[])]);
        let started = Instant::now();
        let err = Factfile::parse(&text, &vars(1000, Limits::default())).unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            err.to_string(),
            "task 'bomb': the rendered command is larger than --max-rendered-size (1 MiB)"
        );
        let text = doc(vec![task("b{{#xs}}{{/xs}}", "echo", &["a", BOMB])]);
        let err = Factfile::parse(&text, &vars(1000, Limits::default())).unwrap_err();
        assert_eq!(
            err.to_string(),
            "task 'b': the rendered argument 2 is larger than --max-rendered-size (1 MiB)"
        );
    }

    /// Each field under its limit, together over the total: the field that passes it is named.
    #[test]
    fn the_total_counts_every_templated_field() {
        let hundred = "{{#xs}}x{{/xs}}";
        let tasks: Vec<Value> = (1..=10)
            .map(|i| task(&format!("t{i}"), hundred, &[]))
            .collect();
        let text = doc(tasks);
        let limits = |total| Limits { field: 1000, total };
        let ff = Factfile::parse(&text, &vars(100, limits(1000))).unwrap();
        assert_eq!(ff.data.tasks[9].command, "x".repeat(100));
        let err = Factfile::parse(&text, &vars(100, limits(550))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "task 't6': the rendered command takes the factfile's templated fields past \
             --max-rendered-total (550 bytes)"
        );
        // Fields without a tag are not rendered and do not count.
        let plain = doc(vec![task("p", &"y".repeat(5000), &["z"; 100])]);
        assert!(Factfile::parse(&plain, &vars(100, limits(1))).is_ok());
    }

    /// The job's name and a task's name are fields too.
    #[test]
    fn names_are_bounded() {
        let limits = Limits {
            field: 10,
            total: 100,
        };
        let text =
            json!({"schema": SNOWPLOW_SCHEMA, "data": {"name": "{{#xs}}j{{/xs}}", "tasks": []}});
        let err = Factfile::parse(&text.to_string(), &vars(11, limits)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the job: the rendered name is larger than --max-rendered-size (10 bytes)"
        );
        let text = doc(vec![task("{{#xs}}t{{/xs}}", "echo", &[])]);
        let err = Factfile::parse(&text, &vars(11, limits)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "task 1: the rendered name is larger than --max-rendered-size (10 bytes)"
        );
        assert!(Factfile::parse(&text, &vars(10, limits)).is_ok());
    }
}
