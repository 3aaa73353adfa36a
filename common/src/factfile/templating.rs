//! Applying `--env` and the tags to a factfile: every string Factotum templates (job name, task
//! names, executors, commands, arguments, `dependsOn`) and the extension's `env` values, `cwd`
//! and constraints. `tags` and `schema` are not templated.

use super::diagnostics::FactfileError;
use super::model::Factfile;
use crate::template::Vars;

impl Factfile {
    /// Renders every string field holding a `{{`, in place.
    pub(super) fn template(mut self, vars: &Vars) -> Result<Factfile, FactfileError> {
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
}
