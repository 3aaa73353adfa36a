//! Reading a factfile from disk with its variables (validate and dot), and the exit code each
//! kind of refusal gets.

use std::collections::BTreeMap;
use std::path::Path;

use factotum_common::template::Limits;
use factotum_common::Factfile;
use factotum_coordinator::spec::{self, InputLimits, SpecError};
use serde_json::Value;

use crate::exit;

/// A failure with the exit code it deserves and the text to print.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
    /// A coordinator that could not serve the request now (a follower, or one shutting down),
    /// with the leader's address when it said: worth retrying, there or later.
    pub unavailable: Option<Option<String>>,
}

impl Failure {
    pub fn args(message: impl Into<String>) -> Failure {
        Failure {
            code: exit::BAD_ARGUMENTS,
            message: message.into(),
            unavailable: None,
        }
    }
}

impl From<SpecError> for Failure {
    fn from(e: SpecError) -> Failure {
        match e {
            SpecError::InvalidFactfile(message) => Failure {
                code: exit::INVALID_FACTFILE,
                message,
                unavailable: None,
            },
            SpecError::BadArgument { message, .. } => Failure::args(message),
        }
    }
}

/// Reads (within `input`), templates (within `limits`) and validates the factfile.
pub fn factfile(
    path: &Path,
    env: Option<&str>,
    tags: &BTreeMap<String, String>,
    limits: Limits,
    input: InputLimits,
) -> Result<Factfile, Failure> {
    let env: Value = spec::parse_env(env)?;
    let text = spec::read_factfile(path, input)?;
    let name = path.display().to_string();
    Ok(spec::parse_factfile(&text, &name, &env, tags, limits, input)?.0)
}
