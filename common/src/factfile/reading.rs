//! Text to a valid [`Factfile`]: JSON syntax, then the schema ([`super::schema`]), then
//! templating ([`super::templating`]), then the rules a schema can't express (the `onResult`
//! lists and the task graph, [`crate::graph`]).

use serde_json::Value;

use super::diagnostics::{Diagnostics, FactfileError};
use super::model::{Factfile, FACTOTUM_SCHEMA, SNOWPLOW_SCHEMA};
use super::schema::{self, code_in_range};
use crate::graph::Graph;
use crate::template::Vars;

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
    /// schema URI, checked after on the model itself. Anything it refuses is re-read as a plain
    /// JSON value to say precisely what is wrong.
    pub fn read(text: &str) -> Result<Factfile, FactfileError> {
        match serde_json::from_str::<Factfile>(text) {
            Ok(mut ff) => {
                if ff.in_range() {
                    return Ok(ff);
                }
            }
            Err(e) if e.is_syntax() || e.is_eof() => return Err(FactfileError::json(&e)),
            Err(_) => {}
        }
        let doc: Value = serde_json::from_str(text).map_err(|e| FactfileError::json(&e))?;
        Self::from_document(doc)
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

    /// The slow path: every schema violation in the document, or the model read from it.
    pub(super) fn from_document(doc: Value) -> Result<Factfile, FactfileError> {
        let mut diags = Diagnostics::default();
        let extension = doc.get("schema").and_then(Value::as_str) == Some(FACTOTUM_SCHEMA);
        schema::check(&mut diags, &doc, "", &schema::ROOT, extension);
        if !diags.is_empty() {
            return Err(FactfileError::Schema(diags.0));
        }
        // The schema and the model agree (the tests hold them to it), so this cannot fail; if it
        // did, serde's word is better than none.
        serde_json::from_value(doc).map_err(|e| FactfileError::Schema(vec![format!("'/' - {e}")]))
    }

    /// What typed deserialization does not check: the schema URI, ranges, and (under the
    /// Snowplow URI) the absence of the extension's fields. The schema's own check runs on the
    /// parts of the model that can break those, serialized back: the job without its tasks and
    /// each task's extension fields. A task's other range is its return codes'.
    fn in_range(&mut self) -> bool {
        let extension = match self.schema.as_str() {
            SNOWPLOW_SCHEMA => false,
            FACTOTUM_SCHEMA => true,
            _ => return false,
        };
        let mut diags = Diagnostics::default();
        let tasks = std::mem::take(&mut self.data.tasks);
        let job = serde_json::to_value(&self.data);
        self.data.tasks = tasks;
        match job {
            Ok(job) => schema::check(&mut diags, &job, "/data", &schema::JOB, extension),
            Err(_) => return false,
        }
        for t in &self.data.tasks {
            let codes = &t.on_result;
            let ok = codes
                .terminate_job_with_success
                .iter()
                .chain(&codes.continue_job)
                .all(|&c| code_in_range(c.into()))
                && match &t.ext {
                    None => true,
                    Some(_) if !extension => false,
                    Some(ext) => match serde_json::to_value(ext) {
                        Ok(ext) => {
                            schema::check_extension(&mut diags, &ext, "", &schema::TASK);
                            diags.is_empty()
                        }
                        Err(_) => false,
                    },
                };
            if !ok {
                return false;
            }
        }
        diags.is_empty()
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
        Graph::check(&self.data.tasks, |t| &t.name, |t| &t.depends_on)?;
        Ok(())
    }
}
