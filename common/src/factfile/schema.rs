//! Every factfile field once: its JSON name, what it may hold (type and range), whether it is
//! required, and whether only the extension's schema allows it. [`check`] walks a JSON value
//! against these tables and says, valico-style, everything that is wrong; the reader uses it both
//! on the document as written and, on its fast path, on the typed model serialized back, so the
//! rules and their messages exist only here.
//!
//! The tables are in checking order, which is the order problems are reported in (serialization
//! order is the model's, in [`super::model`]).

use serde_json::{Map, Value};

use super::diagnostics::{Diagnostics, Pointer};
use super::model::{OnLost, FACTOTUM_SCHEMA, MAX_CODE, SNOWPLOW_SCHEMA};
use crate::constraint::Placement;

/// The schema URIs a factfile may name.
pub(super) const SCHEMAS: [&str; 2] = [SNOWPLOW_SCHEMA, FACTOTUM_SCHEMA];

/// One field of an object.
pub(super) struct Field {
    pub key: &'static str,
    pub kind: Kind,
    pub required: bool,
    /// Allowed only under [`FACTOTUM_SCHEMA`]; under the Snowplow URI it is an unknown property.
    pub extension: bool,
}

/// What a field may hold.
pub(super) enum Kind {
    Text,
    /// One of [`SCHEMAS`].
    SchemaUri,
    /// A string of at least one character.
    NonEmptyText,
    /// An array of strings.
    Texts,
    /// An array of return codes, `0..=MAX_CODE`.
    Codes,
    /// An integer of at least `min`.
    Integer {
        min: u64,
    },
    /// A number of at least `min`.
    Number {
        min: f64,
    },
    Flag,
    /// An object whose values are strings.
    TextMap,
    /// One of these strings.
    OneOf(&'static [&'static str]),
    Object(&'static Shape),
    /// An array of tasks; under the extension, each task's problems name it.
    Tasks(&'static Shape),
}

/// The fields of an object. Unknown properties are refused.
pub(super) struct Shape {
    pub fields: &'static [Field],
    /// A missing required field ends this object's checks (as `retry`'s always have).
    pub stop_at_missing: bool,
}

const fn required(key: &'static str, kind: Kind) -> Field {
    Field {
        key,
        kind,
        required: true,
        extension: false,
    }
}

const fn optional(key: &'static str, kind: Kind) -> Field {
    Field {
        key,
        kind,
        required: false,
        extension: false,
    }
}

/// An optional field of the extension.
const fn extension(key: &'static str, kind: Kind) -> Field {
    Field {
        key,
        kind,
        required: false,
        extension: true,
    }
}

const fn shape(fields: &'static [Field]) -> Shape {
    Shape {
        fields,
        stop_at_missing: false,
    }
}

/// The document: `{"schema": …, "data": JOB}`. Which URI it names decides whether the
/// extension's fields are allowed.
pub(super) static ROOT: Shape = shape(&[
    required("schema", Kind::SchemaUri),
    required("data", Kind::Object(&JOB)),
]);

pub(super) static JOB: Shape = shape(&[
    required("name", Kind::Text),
    required("tasks", Kind::Tasks(&TASK)),
    extension("tags", Kind::TextMap),
    extension("timeout", Kind::Integer { min: 1 }),
    extension("placement", Kind::OneOf(&Placement::NAMES)),
    extension("maxParallel", Kind::Integer { min: 1 }),
]);

pub(super) static TASK: Shape = shape(&[
    required("name", Kind::Text),
    required("executor", Kind::Text),
    required("command", Kind::Text),
    required("arguments", Kind::Texts),
    required("dependsOn", Kind::Texts),
    required("onResult", Kind::Object(&ON_RESULT)),
    extension("timeout", Kind::Integer { min: 1 }),
    extension("continueOnFailure", Kind::Flag),
    extension("env", Kind::TextMap),
    extension("cwd", Kind::NonEmptyText),
    extension("onLost", Kind::OneOf(&OnLost::NAMES)),
    extension("constraints", Kind::Object(&CONSTRAINTS)),
    extension("retry", Kind::Object(&RETRY)),
]);

static ON_RESULT: Shape = shape(&[
    required("terminateJobWithSuccess", Kind::Codes),
    required("continueJob", Kind::Codes),
]);

static CONSTRAINTS: Shape = shape(&[
    optional("host", Kind::NonEmptyText),
    optional("labels", Kind::TextMap),
]);

static RETRY: Shape = Shape {
    fields: &[
        required("attempts", Kind::Integer { min: 1 }),
        optional("delaySeconds", Kind::Number { min: 0.0 }),
        optional("backoff", Kind::Number { min: 1.0 }),
        optional("maxDelaySeconds", Kind::Number { min: 0.0 }),
        optional("onReturnCodes", Kind::Codes),
    ],
    stop_at_missing: true,
};

/// Whether a return code is in the schema's range (the typed fast path asks this directly).
pub(super) fn code_in_range(code: i64) -> bool {
    (0..=MAX_CODE).contains(&code)
}

/// Checks `value` (at JSON pointer `path`) against an object shape; `extension` says whether the
/// extension's fields are allowed.
pub(super) fn check(
    diags: &mut Diagnostics,
    value: &Value,
    at: &str,
    shape: &Shape,
    extension: bool,
) {
    check_object(diags, value, &Pointer::At(at), shape, extension);
}

fn check_object(
    diags: &mut Diagnostics,
    value: &Value,
    path: &Pointer,
    shape: &Shape,
    extension: bool,
) {
    if let Some(obj) = object(diags, value, path) {
        check_fields(diags, obj, path, shape, extension);
    }
}

/// Checks the extension's fields present in `value`, and nothing else: for a task's extension
/// fields serialized on their own.
pub(super) fn check_extension(diags: &mut Diagnostics, value: &Value, at: &str, shape: &Shape) {
    let path = &Pointer::At(at);
    let Some(obj) = object(diags, value, path) else {
        return;
    };
    for f in shape.fields.iter().filter(|f| f.extension) {
        if let Some(v) = obj.get(f.key) {
            check_value(diags, v, &path.key(f.key), &f.kind, true);
        }
    }
}

fn check_fields(
    diags: &mut Diagnostics,
    obj: &Map<String, Value>,
    path: &Pointer,
    shape: &Shape,
    extension: bool,
) {
    refuse_unknown(diags, obj, path, shape, extension);
    check_known(diags, obj, path, shape, extension);
}

fn allowed(shape: &Shape, extension: bool) -> impl Iterator<Item = &Field> {
    shape
        .fields
        .iter()
        .filter(move |f| extension || !f.extension)
}

fn refuse_unknown(
    diags: &mut Diagnostics,
    obj: &Map<String, Value>,
    path: &Pointer,
    shape: &Shape,
    extension: bool,
) {
    for k in obj.keys() {
        if !allowed(shape, extension).any(|f| f.key == k) {
            diags.not_allowed(&path.key(k));
        }
    }
}

fn check_known(
    diags: &mut Diagnostics,
    obj: &Map<String, Value>,
    path: &Pointer,
    shape: &Shape,
    extension: bool,
) {
    let missing = || allowed(shape, extension).filter(|f| f.required && !obj.contains_key(f.key));
    if shape.stop_at_missing && missing().next().is_some() {
        for f in missing() {
            diags.required(&path.key(f.key));
        }
        return;
    }
    for f in allowed(shape, extension) {
        match obj.get(f.key) {
            Some(v) => check_value(diags, v, &path.key(f.key), &f.kind, extension),
            None if f.required => diags.required(&path.key(f.key)),
            None => {}
        }
    }
}

fn check_value(diags: &mut Diagnostics, v: &Value, path: &Pointer, kind: &Kind, extension: bool) {
    match kind {
        Kind::Text => {
            string(diags, v, path);
        }
        Kind::SchemaUri => {
            if let Some(uri) = string(diags, v, path).filter(|s| !SCHEMAS.contains(s)) {
                diags.unsupported_schema(path, uri, &SCHEMAS);
            }
        }
        Kind::NonEmptyText => {
            if string(diags, v, path).is_some_and(str::is_empty) {
                diags.empty(path);
            }
        }
        Kind::Texts => {
            for (i, item) in array(diags, v, path).into_iter().flatten().enumerate() {
                string(diags, item, &path.index(i));
            }
        }
        Kind::Codes => {
            for (i, item) in array(diags, v, path).into_iter().flatten().enumerate() {
                let p = path.index(i);
                match item.as_i64() {
                    Some(n) if code_in_range(n) => {}
                    Some(n) if n < 0 => diags.below(&p, 0),
                    Some(_) => diags.above(&p, MAX_CODE),
                    None => diags.wrong_type(&p, "integer"),
                }
            }
        }
        // An integer is an `i64` here, as the model reads it.
        Kind::Integer { min } => match v.as_i64() {
            Some(n) if n < *min as i64 => diags.below(path, min),
            Some(_) => {}
            None => diags.wrong_type(path, "integer"),
        },
        Kind::Number { min } => match v.as_f64() {
            Some(n) if n < *min => diags.below(path, min),
            Some(_) => {}
            None => diags.wrong_type(path, "number"),
        },
        Kind::Flag => {
            if !v.is_boolean() {
                diags.wrong_type(path, "boolean");
            }
        }
        Kind::TextMap => {
            for (k, item) in object(diags, v, path).into_iter().flatten() {
                string(diags, item, &path.key(k));
            }
        }
        Kind::OneOf(allowed) => {
            if string(diags, v, path).is_some_and(|s| !allowed.contains(&s)) {
                diags.not_one_of(path, allowed);
            }
        }
        Kind::Object(shape) => check_object(diags, v, path, shape, extension),
        Kind::Tasks(shape) => {
            for (i, task) in array(diags, v, path).into_iter().flatten().enumerate() {
                let p = path.index(i);
                let Some(obj) = object(diags, task, &p) else {
                    continue;
                };
                refuse_unknown(diags, obj, &p, shape, extension);
                let before = diags.len();
                check_known(diags, obj, &p, shape, extension);
                match obj.get("name").and_then(Value::as_str) {
                    Some(name) if extension && !name.is_empty() => diags.name_task(before, name),
                    _ => {}
                }
            }
        }
    }
}

fn object<'a>(
    diags: &mut Diagnostics,
    v: &'a Value,
    path: &Pointer,
) -> Option<&'a Map<String, Value>> {
    let o = v.as_object();
    if o.is_none() {
        diags.wrong_type(path, "object");
    }
    o
}

fn array<'a>(diags: &mut Diagnostics, v: &'a Value, path: &Pointer) -> Option<&'a Vec<Value>> {
    let a = v.as_array();
    if a.is_none() {
        diags.wrong_type(path, "array");
    }
    a
}

fn string<'a>(diags: &mut Diagnostics, v: &'a Value, path: &Pointer) -> Option<&'a str> {
    let s = v.as_str();
    if s.is_none() {
        diags.wrong_type(path, "string");
    }
    s
}
