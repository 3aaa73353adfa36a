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
//!
//! | module | holds |
//! |---|---|
//! | `model` | the types, serde's reading and writing of them |
//! | `schema` | each field's JSON name, type, range and schema, once; the check that walks them |
//! | `reading` | text → model: the typed fast path, the diagnosing slow path, the rules |
//! | `diagnostics` | [`FactfileError`] and every message text |
//! | `templating` | applying [`Vars`](crate::template::Vars) to the model |
//!
//! **Adding a task field** of the extension: (1) a line in `task_extension!` in `model`
//! (Rust name and type: the model, the reader's `TaskDoc` and the move between them);
//! (2) a row in `schema::TASK` (JSON name, [`Kind`](schema::Kind) with its range; its place
//! in the table is its place in error reports); (3) if it is templated, a line in `templating`.
//! Validation, its messages and the fast path's range check follow from (1) and (2); the tests
//! fail if the two disagree. Then use it (e.g. `dag::TaskPolicy`) and add it to the JSON Schema
//! under `schemas/`. A job field is the same with `Job` and `schema::JOB`.

mod diagnostics;
mod model;
mod reading;
mod schema;
mod templating;

pub use diagnostics::FactfileError;
pub use model::{
    Factfile, Job, OnLost, OnResult, Retry, Tags, Task, TaskConstraints, TaskExt, FACTOTUM_SCHEMA,
    MAX_CODE, SNOWPLOW_SCHEMA,
};

#[cfg(test)]
mod tests;
