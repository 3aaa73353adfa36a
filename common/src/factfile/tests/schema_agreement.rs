//! The field table in `schema` is the one description of a factfile: these tests hold the model
//! and the project's JSON Schema to it, and the reader's two paths to each other.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::super::schema::{Kind, Shape, JOB, ROOT};
use crate::factfile::{Factfile, FactfileError, FACTOTUM_SCHEMA, SNOWPLOW_SCHEMA};

/// A factfile with every field of the extension set.
fn everything() -> Value {
    json!({"schema": FACTOTUM_SCHEMA, "data": {"name": "j", "tasks": [{
        "name": "t", "executor": "shell", "command": "echo", "arguments": ["a"], "dependsOn": [],
        "onResult": {"terminateJobWithSuccess": [3], "continueJob": [0]},
        "timeout": 5, "continueOnFailure": true, "env": {"K": "v"}, "cwd": "/tmp",
        "onLost": "retry", "constraints": {"host": "h", "labels": {"disk": "ssd"}},
        "retry": {"attempts": 3, "delaySeconds": 1.5, "backoff": 2.0, "maxDelaySeconds": 60.0,
                  "onReturnCodes": [75]}}],
        "tags": {"env": "prod"}, "timeout": 600, "placement": "spread", "maxParallel": 4}})
}

/// Every key of `value` is a field of `shape`, and every field of `shape` is a key of `value`
/// (which sets them all), down through nested objects.
fn same_keys(shape: &Shape, value: &Value, at: &str, problems: &mut Vec<String>) {
    let obj = value.as_object().unwrap();
    for k in obj.keys() {
        if !shape.fields.iter().any(|f| f.key == k) {
            problems.push(format!("{at}/{k}: in the model, not in the table"));
        }
    }
    for f in shape.fields {
        let Some(v) = obj.get(f.key) else {
            problems.push(format!("{at}/{}: in the table, not in the model", f.key));
            continue;
        };
        match &f.kind {
            Kind::Object(s) => same_keys(s, v, &format!("{at}/{}", f.key), problems),
            Kind::Tasks(s) => {
                for (i, t) in v.as_array().unwrap().iter().enumerate() {
                    same_keys(s, t, &format!("{at}/{}/{i}", f.key), problems)
                }
            }
            _ => {}
        }
    }
}

#[test]
fn the_model_has_exactly_the_fields_of_the_table() {
    let text = everything().to_string();
    let ff = Factfile::read(&text).unwrap();
    let mut problems = vec![];
    same_keys(
        &ROOT,
        &serde_json::to_value(&ff).unwrap(),
        "",
        &mut problems,
    );
    assert!(problems.is_empty(), "{problems:#?}");
    // And the typed read lost nothing.
    assert_eq!(serde_json::to_value(&ff).unwrap(), everything());
}

/// What the project's JSON Schema says about one field, as far as the table states it.
fn agrees(kind: &Kind, schema: &Value, at: &str, problems: &mut Vec<String>) {
    let mut expect = |key: &str, want: Value| {
        if schema.get(key) != Some(&want) {
            problems.push(format!(
                "{at}: {key} is {:?} in the JSON Schema, {want} in the table",
                schema.get(key)
            ));
        }
    };
    match kind {
        Kind::Text | Kind::SchemaUri => expect("type", json!("string")),
        Kind::NonEmptyText => {
            expect("type", json!("string"));
            expect("minLength", json!(1));
        }
        Kind::Texts => {
            expect("type", json!("array"));
            expect("items", json!({"type": "string"}));
        }
        Kind::Codes => {
            expect("type", json!("array"));
            expect(
                "items",
                json!({"type": "integer", "minimum": 0, "maximum": crate::factfile::MAX_CODE}),
            );
        }
        Kind::Integer { min } => {
            expect("type", json!("integer"));
            expect("minimum", json!(min));
        }
        Kind::Number { min } => {
            expect("type", json!("number"));
            let got = schema.get("minimum").and_then(Value::as_f64);
            if got != Some(*min) {
                problems.push(format!("{at}: minimum {got:?}, {min} in the table"));
            }
        }
        Kind::Flag => expect("type", json!("boolean")),
        Kind::TextMap => {
            expect("type", json!("object"));
            expect("additionalProperties", json!({"type": "string"}));
        }
        Kind::OneOf(names) => expect("enum", json!(names)),
        Kind::Object(shape) => shape_agrees(shape, schema, at, problems),
        Kind::Tasks(shape) => {
            expect("type", json!("array"));
            shape_agrees(shape, &schema["items"], &format!("{at}/items"), problems);
        }
    }
}

fn shape_agrees(shape: &Shape, schema: &Value, at: &str, problems: &mut Vec<String>) {
    if schema.get("additionalProperties") != Some(&json!(false)) {
        problems.push(format!("{at}: additional properties are not refused"));
    }
    let props = schema["properties"].as_object().unwrap();
    let mut keys: Vec<&str> = props.keys().map(String::as_str).collect();
    let mut fields: Vec<&str> = shape.fields.iter().map(|f| f.key).collect();
    keys.sort();
    fields.sort();
    if keys != fields {
        problems.push(format!("{at}: properties {keys:?}, fields {fields:?}"));
    }
    let mut required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut table: Vec<&str> = shape
        .fields
        .iter()
        .filter(|f| f.required)
        .map(|f| f.key)
        .collect();
    required.sort();
    table.sort();
    if required != table {
        problems.push(format!("{at}: required {required:?}, table {table:?}"));
    }
    for f in shape.fields {
        if let Some(s) = props.get(f.key) {
            agrees(&f.kind, s, &format!("{at}/{}", f.key), problems);
        }
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn the_json_schema_says_what_the_table_says() {
    let path = repo().join("schemas/io.factotum/factfile/jsonschema/1-0-0");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut problems = vec![];
    shape_agrees(&JOB, &schema["properties"]["data"], "/data", &mut problems);
    assert!(problems.is_empty(), "{problems:#?}");
}

/// The factfiles at hand: this project's samples, and Factotum's when `../shared` is there.
fn samples() -> Vec<(PathBuf, String)> {
    let mut dirs = vec![repo().join("samples")];
    let shared = repo().join("../shared/factotum-samples");
    dirs.extend([shared.join("invalid"), shared]);
    let mut out = vec![];
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if let Ok(text) = std::fs::read_to_string(e.path()) {
                out.push((e.path(), text));
            }
        }
    }
    out
}

/// The diagnosing path on its own, as if the typed read had refused the text.
fn slow_path(text: &str) -> Result<Factfile, FactfileError> {
    let doc: Value = serde_json::from_str(text).map_err(|e| FactfileError::json(&e))?;
    Factfile::from_document(doc)
}

#[test]
fn the_typed_and_the_diagnosing_paths_read_every_sample_alike() {
    let samples = samples();
    assert!(samples.len() >= 6, "{samples:?}");
    for (path, text) in samples {
        assert_eq!(
            Factfile::read(&text),
            slow_path(&text),
            "{}",
            path.display()
        );
    }
    for variant in [
        everything(),
        json!({"schema": SNOWPLOW_SCHEMA, "data": {"name": "j", "tasks": []}}),
    ] {
        let text = variant.to_string();
        assert_eq!(Factfile::read(&text), slow_path(&text));
    }
}

#[test]
fn each_range_in_the_table_is_enforced_on_the_fast_path_too() {
    // Out of range but well typed: the typed read succeeds, the range check sends it on to the
    // diagnosing path, which names the field.
    for (pointer, bad, want) in [
        ("/data/timeout", json!(0), "'/data/timeout' - Minimum"),
        (
            "/data/maxParallel",
            json!(0),
            "'/data/maxParallel' - Minimum",
        ),
        (
            "/data/tasks/0/timeout",
            json!(0),
            "'/data/tasks/0/timeout' - Minimum",
        ),
        (
            "/data/tasks/0/cwd",
            json!(""),
            "'/data/tasks/0/cwd' - MinLength",
        ),
        (
            "/data/tasks/0/constraints/host",
            json!(""),
            "'/data/tasks/0/constraints/host' - MinLength",
        ),
        (
            "/data/tasks/0/retry/attempts",
            json!(0),
            "'/data/tasks/0/retry/attempts' - Minimum",
        ),
        (
            "/data/tasks/0/retry/delaySeconds",
            json!(-1),
            "'/data/tasks/0/retry/delaySeconds' - Minimum",
        ),
        (
            "/data/tasks/0/retry/backoff",
            json!(0.5),
            "'/data/tasks/0/retry/backoff' - Minimum",
        ),
        (
            "/data/tasks/0/retry/maxDelaySeconds",
            json!(-0.5),
            "'/data/tasks/0/retry/maxDelaySeconds' - Minimum",
        ),
        (
            "/data/tasks/0/retry/onReturnCodes/0",
            json!(40000),
            "'/data/tasks/0/retry/onReturnCodes/0' - Maximum",
        ),
        (
            "/data/tasks/0/onResult/continueJob/0",
            json!(40000),
            "'/data/tasks/0/onResult/continueJob/0' - Maximum",
        ),
    ] {
        let mut doc = everything();
        *doc.pointer_mut(pointer).unwrap() = bad;
        let e = Factfile::read(&doc.to_string()).unwrap_err().to_string();
        assert!(e.starts_with(want), "{pointer}: {e}");
    }
    // Under the Snowplow URI each extension field is refused, job-level ones included.
    for pointer in [
        "/data/tags",
        "/data/timeout",
        "/data/placement",
        "/data/maxParallel",
        "/data/tasks/0/env",
    ] {
        let mut doc = everything();
        doc["schema"] = json!(SNOWPLOW_SCHEMA);
        let field = pointer.rsplit('/').next().unwrap();
        let parent = &pointer[..pointer.len() - field.len() - 1];
        let keep = doc.pointer(pointer).unwrap().clone();
        let plain = json!({"schema": SNOWPLOW_SCHEMA, "data": {"name": "j", "tasks": [{
            "name": "t", "executor": "shell", "command": "echo", "arguments": [], "dependsOn": [],
            "onResult": {"terminateJobWithSuccess": [], "continueJob": [0]}}]}});
        let mut one = plain.clone();
        one.pointer_mut(parent).unwrap()[field] = keep;
        let e = Factfile::read(&one.to_string()).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("'{pointer}' - Additional properties are not allowed (this property is not part of the schema)")
        );
    }
}

#[test]
fn counts_past_u32_saturate_and_integers_past_i64_are_refused_as_before() {
    let mut doc = everything();
    doc["data"]["maxParallel"] = json!(1u64 << 40);
    doc["data"]["tasks"][0]["retry"]["attempts"] = json!(1u64 << 40);
    let ff = Factfile::read(&doc.to_string()).unwrap();
    assert_eq!(ff.data.max_parallel, Some(u32::MAX));
    assert_eq!(
        ff.data.tasks[0].ext().retry.as_ref().unwrap().attempts,
        u32::MAX
    );
    let mut doc = everything();
    doc["data"]["tasks"][0]["retry"]["attempts"] = json!(u64::MAX);
    assert_eq!(
        Factfile::read(&doc.to_string()).unwrap_err().to_string(),
        "'/data/tasks/0/retry/attempts' - Type of the value is wrong (The value must be integer) (task 't')"
    );
}
