//! Reading a factfile from disk with its variables: shared by run, validate and dot.

use std::collections::BTreeMap;
use std::path::Path;

use factotum_common::template::Vars;
use factotum_common::Factfile;
use serde_json::Value;

use crate::exit;

/// A failure with the exit code it deserves and the text to print.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn args(message: impl Into<String>) -> Failure {
        Failure {
            code: exit::BAD_ARGUMENTS,
            message: message.into(),
        }
    }
}

/// Parses `--env`: a JSON object (nested values and numbers allowed).
pub fn parse_env(env: Option<&str>) -> Result<Value, Failure> {
    let Some(text) = env else {
        return Ok(Value::Null);
    };
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(Failure::args(format!(
            "Error: the --env value must be a JSON object, like '{{\"name\": \"value\"}}', not {text}"
        ))),
        Err(e) => Err(Failure::args(format!("Error: the --env value is not valid JSON: {e}"))),
    }
}

/// Reads, templates and validates the factfile.
pub fn factfile(
    path: &Path,
    env: &Value,
    tags: &BTreeMap<String, String>,
) -> Result<Factfile, Failure> {
    let invalid = |why: String| Failure {
        code: exit::INVALID_FACTFILE,
        message: format!(
            "'{}' is not a valid factotum factfile: {why}",
            path.display()
        ),
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(format!("couldn't read the file ({e})")))?;
    let vars = Vars::new(env, tags).map_err(|e| Failure::args(format!("Error: {e}")))?;
    Factfile::parse(&text, &vars).map_err(|e| invalid(e.to_string()))
}
