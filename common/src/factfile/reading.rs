//! Text to a valid [`Factfile`]: JSON syntax, then the schema ([`super::schema`]), then
//! templating ([`super::templating`]), then the rules a schema can't express (the `onResult`
//! lists and the task graph, [`crate::graph`]).

use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::diagnostics::{Diagnostics, FactfileError, Pointer};
use super::model::{Factfile, FACTOTUM_SCHEMA, SNOWPLOW_SCHEMA};
use super::schema::{self, code_in_range};
use crate::graph::Graph;
use crate::template::Vars;

/// The longest job or task name, in bytes: names are printed on console lines, in webhook
/// payloads and in every listing.
pub const MAX_NAME: usize = 1024;

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
    /// JSON value to say precisely what is wrong. A key written twice in one object is refused
    /// on both paths (serde's derived readers refuse a repeated field; the maps read with
    /// `model::unique`); the slow path names it.
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
        Self::from_document(document(text)?)
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
        // Measured first, then written into a buffer of that size: growing one by doubling
        // would hold up to three times a big factfile's text at once.
        struct Count(usize);
        impl std::io::Write for Count {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0 += buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut count = Count(0);
        if serde_json::to_writer(&mut count, self).is_err() {
            return String::new();
        }
        let mut out = Vec::with_capacity(count.0);
        match serde_json::to_writer(&mut out, self) {
            Ok(()) => String::from_utf8(out).unwrap_or_default(),
            Err(_) => String::new(),
        }
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
        self.check_texts()?;
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

    /// What the templated text must not hold: a control character in the job's or a task's
    /// name (they are printed on console lines, which they could forge), a NUL in anything handed to a process
    /// (its command, arguments, environment, working directory).
    fn check_texts(&self) -> Result<(), FactfileError> {
        let mut diags = Diagnostics::default();
        if let Some(c) = self.data.name.chars().find(|c| c.is_control()) {
            diags.control_character(&Pointer::At("/data/name"), c);
        }
        if self.data.name.len() > MAX_NAME {
            diags.too_long(&Pointer::At("/data/name"), self.data.name.len(), MAX_NAME);
        }
        let tasks = Pointer::At("/data/tasks");
        for (i, t) in self.data.tasks.iter().enumerate() {
            let at = tasks.index(i);
            let before = diags.len();
            if let Some(c) = t.name.chars().find(|c| c.is_control()) {
                diags.control_character(&at.key("name"), c);
            }
            if t.name.len() > MAX_NAME {
                diags.too_long(&at.key("name"), t.name.len(), MAX_NAME);
            }
            if t.command.contains('\0') {
                diags.nul(&at.key("command"));
            }
            let arguments = at.key("arguments");
            for (j, a) in t.arguments.iter().enumerate() {
                if a.contains('\0') {
                    diags.nul(&arguments.index(j));
                }
            }
            let ext = t.ext();
            let env = at.key("env");
            for (k, v) in ext.env.iter().flatten() {
                if k.contains('\0') || v.contains('\0') {
                    diags.nul(&env.key(k));
                }
            }
            if ext.cwd.as_ref().is_some_and(|c| c.contains('\0')) {
                diags.nul(&at.key("cwd"));
            }
            diags.name_task(before, &t.name);
        }
        if diags.is_empty() {
            Ok(())
        } else {
            Err(FactfileError::Schema(diags.0))
        }
    }
}

/// The document as a JSON value, like `serde_json::from_str`, except that a key written twice in
/// one object is an error naming it (serde_json keeps the last one, silently).
fn document(text: &str) -> Result<Value, FactfileError> {
    let mut duplicates = Diagnostics::default();
    let mut de = serde_json::Deserializer::from_str(text);
    let doc = Node {
        path: Pointer::At(""),
        duplicates: &mut duplicates,
    }
    .deserialize(&mut de)
    .and_then(|doc| de.end().map(|()| doc))
    .map_err(|e| FactfileError::json(&e))?;
    if duplicates.is_empty() {
        Ok(doc)
    } else {
        Err(FactfileError::Schema(duplicates.0))
    }
}

/// Reads one JSON value at `path`, noting every repeated key.
struct Node<'p, 'd> {
    path: Pointer<'p>,
    duplicates: &'d mut Diagnostics,
}

impl<'de> DeserializeSeed<'de> for Node<'_, '_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_, '_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            let item = Node {
                path: self.path.index(items.len()),
                duplicates: &mut *self.duplicates,
            };
            match seq.next_element_seed(item)? {
                Some(v) => items.push(v),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(Node {
                path: self.path.key(&key),
                duplicates: &mut *self.duplicates,
            })?;
            if object.contains_key(&key) {
                self.duplicates.duplicate_key(&self.path, &key);
            }
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}
