//! Factotum Server's `/submit` inputs: `factfileArgs` read as `factotum run`'s flags, the job
//! id, and the factfile read only from under `--server-factfile-root`.
//!
//! The flags are a small parser of their own: the CLI's definitions live in the `factotum`
//! crate, which depends on this one. They are the same flags and spellings (a test in
//! `cli/tests/server_api.rs` submits each).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use factotum_common::constraint::{self, Constraint};
use factotum_common::tags::parse_tags;
use factotum_proto::jobs as pb;
use factotum_service::DurationRange;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

/// The largest factfile `/submit` reads (a larger one is refused before it is read whole;
/// `--max-factfile-size` applies below this as for any submission).
const MAX_READ: u64 = 64 << 20;

/// `factotum run`'s flags, as `factfileArgs` may give them (never read from the environment:
/// the coordinator's own `FACTOTUM_*` variables are not the caller's).
#[derive(Debug, Parser)]
#[command(
    name = "factotum run",
    no_binary_name = true,
    disable_help_flag = true,
    disable_version_flag = true
)]
pub struct RunFlags {
    #[arg(long)]
    pub start: Vec<String>,
    #[arg(long)]
    pub env: Option<String>,
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long)]
    pub no_redact: bool,
    /// Accepted and meaningless here (nothing is printed).
    #[arg(long)]
    pub no_colour: bool,
    #[arg(long)]
    pub webhook: Vec<String>,
    #[arg(long)]
    pub tag: Vec<String>,
    #[arg(long)]
    pub constraint: Vec<String>,
    #[arg(long, default_value_t = factotum_common::run::DEFAULT_MAX_OUTPUT)]
    pub max_stdouterr_size: usize,
    #[arg(long, value_parser = DurationRange::from(Duration::from_millis(100)).parser())]
    pub heartbeat_interval: Option<Duration>,
}

/// A query string's parameters (`a=1&b=x%20y`), percent-decoded; `+` is a space.
pub fn query(raw: Option<&str>) -> HashMap<String, String> {
    super::web::query_pairs(raw.unwrap_or_default())
}

/// The command line Factotum Server would have run, for its error messages.
pub fn command_line(path: &str, args: &[String]) -> String {
    let mut line = format!("factotum run {path}");
    for a in args {
        line.push(' ');
        line.push_str(a);
    }
    line
}

/// `factfileArgs` read as `run`'s flags; the error is clap's first line ("unexpected
/// argument '--x' found").
pub fn parse_flags(args: &[String]) -> Result<RunFlags, String> {
    RunFlags::try_parse_from(args).map_err(|e| {
        let text = e.to_string();
        let first = text.lines().next().unwrap_or_default();
        first.trim_start_matches("error: ").trim().to_string()
    })
}

/// The submission `flags` make of `factfile` (with the server job recorded beside the run).
/// Fields this API does not set keep their defaults (`needless_update` while there are none).
#[allow(clippy::needless_update)]
pub fn request(
    factfile: String,
    path: &str,
    flags: &RunFlags,
    job: pb::ServerJob,
) -> Result<pb::SubmitRunRequest, String> {
    let mut constraints = vec![];
    for raw in &flags.constraint {
        let kind = match constraint::parse(raw)? {
            Constraint::Host { value, .. } => pb::constraint::Kind::Host(value),
            Constraint::Label { key, value } => {
                pb::constraint::Kind::Label(pb::Label { key, value })
            }
        };
        constraints.push(pb::Constraint { kind: Some(kind) });
    }
    let max_output = factotum_common::run::clamp_max_output(flags.max_stdouterr_size);
    Ok(pb::SubmitRunRequest {
        factfile,
        factfile_name: path.to_string(),
        env_json: flags.env.clone().unwrap_or_default(),
        tags: tags(flags).into_iter().collect(),
        start: flags.start.clone(),
        webhooks: flags.webhook.clone(),
        constraints,
        placement: 0,
        max_output: u32::try_from(max_output).unwrap_or(u32::MAX),
        dry_run: flags.dry_run,
        // Only the server job id decides what is a duplicate, as in Factotum Server.
        allow_concurrent: true,
        idempotency_key: String::new(),
        heartbeat_interval: flags.heartbeat_interval.map(|d| prost_types::Duration {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
        }),
        no_redact: flags.no_redact,
        server_job: Some(job),
        ..Default::default()
    })
}

fn tags(flags: &RunFlags) -> std::collections::BTreeMap<String, String> {
    parse_tags(flags.tag.iter().map(String::as_str))
}

/// Factotum Server's job id: SHA-256 (lowercase hex) of the untemplated factfile as compact
/// JSON with sorted keys, then each tag's key and value, sorted by key. Text that is not JSON
/// is hashed as it is (its submission is refused anyway).
pub fn job_id(factfile: &str, flags: &RunFlags) -> String {
    let compact = match serde_json::from_str::<serde_json::Value>(factfile) {
        Ok(v) => serde_json::to_string(&sorted(v)).unwrap_or_default(),
        Err(_) => factfile.to_string(),
    };
    let mut hash = Sha256::new();
    hash.update(compact.as_bytes());
    for (k, v) in tags(flags) {
        hash.update(k.as_bytes());
        hash.update(v.as_bytes());
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The value with every object's keys in order (whatever order serde_json's maps keep).
fn sorted(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// `factfileArgs` as `/check` shows them and the store keeps them: `--env`'s value is
/// `[redacted]` unless `--no-redact` is among them (it may hold secrets).
pub fn shown_args(args: &[String]) -> Vec<String> {
    if args.iter().any(|a| a == "--no-redact") {
        return args.to_vec();
    }
    let mut out = Vec::with_capacity(args.len());
    let mut hide_next = false;
    for a in args {
        if hide_next {
            out.push("[redacted]".to_string());
            hide_next = false;
        } else if a == "--env" {
            out.push(a.clone());
            hide_next = true;
        } else if a.starts_with("--env=") {
            out.push("--env=[redacted]".to_string());
        } else {
            out.push(a.clone());
        }
    }
    out
}

/// Why a `factfilePath` is not read (logged; the caller hears only COMPAT's message).
#[derive(Debug, thiserror::Error)]
pub enum PathRefused {
    #[error("no --server-factfile-root is set: POST /submit reads no factfile (set it to the directory holding the factfiles the API may run)")]
    NoRoot,
    #[error("--server-factfile-root {0}: {1}")]
    BadRoot(PathBuf, std::io::Error),
    #[error("{0}: {1}")]
    Missing(String, std::io::Error),
    #[error("{path} resolves to {real}, outside --server-factfile-root {root}")]
    Outside {
        path: String,
        real: PathBuf,
        root: PathBuf,
    },
    #[error("{0} is not a file")]
    NotAFile(String),
    #[error("{0} is larger than {MAX_READ} bytes")]
    TooLarge(String),
}

/// The factfile at `asked` (absolute, or relative to `root`), read only if it resolves —
/// symbolic links followed — to a file under `root`.
pub async fn read_factfile(root: Option<&Path>, asked: &str) -> Result<String, PathRefused> {
    let root = root.ok_or(PathRefused::NoRoot)?;
    let root = tokio::fs::canonicalize(root)
        .await
        .map_err(|e| PathRefused::BadRoot(root.to_path_buf(), e))?;
    let real = tokio::fs::canonicalize(root.join(asked))
        .await
        .map_err(|e| PathRefused::Missing(asked.to_string(), e))?;
    if !real.starts_with(&root) {
        return Err(PathRefused::Outside {
            path: asked.to_string(),
            real,
            root,
        });
    }
    let file = tokio::fs::File::open(&real)
        .await
        .map_err(|e| PathRefused::Missing(asked.to_string(), e))?;
    let meta = (file.metadata().await).map_err(|e| PathRefused::Missing(asked.to_string(), e))?;
    if !meta.is_file() {
        return Err(PathRefused::NotAFile(asked.to_string()));
    }
    let mut bytes = Vec::new();
    (file.take(MAX_READ + 1).read_to_end(&mut bytes).await)
        .map_err(|e| PathRefused::Missing(asked.to_string(), e))?;
    if bytes.len() as u64 > MAX_READ {
        return Err(PathRefused::TooLarge(asked.to_string()));
    }
    // Not UTF-8: passed on lossily, and refused as a factfile by the submission.
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn run_flags_parse_and_an_unknown_one_is_named() {
        let f = parse_flags(&args(&["--start", "b", "--tag", "env,prod", "--dry-run"])).unwrap();
        assert_eq!(f.start, ["b"]);
        assert!(f.dry_run);
        let e = parse_flags(&args(&["--nope"])).unwrap_err();
        assert_eq!(e, "unexpected argument '--nope' found");
    }

    #[test]
    fn the_job_id_sorts_keys_and_tags_and_ignores_whitespace() {
        let none = parse_flags(&[]).unwrap();
        let a = job_id(r#"{"b": 1, "a": {"d": 2, "c": 3}}"#, &none);
        let b = job_id(r#"{"a":{"c":3,"d":2},"b":1}"#, &none);
        assert_eq!(a, b);
        let expected: String = Sha256::digest(br#"{"a":{"c":3,"d":2},"b":1}"#)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(a, expected);
        let t1 = parse_flags(&args(&["--tag", "z,1", "--tag", "a,2"])).unwrap();
        let t2 = parse_flags(&args(&["--tag", "a,2", "--tag", "z,1", "--env", "{}"])).unwrap();
        assert_eq!(job_id("{}", &t1), job_id("{}", &t2));
        let tagged: String = Sha256::digest(b"{}a2z1")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(job_id("{}", &t1), tagged);
    }

    #[test]
    fn query_strings_are_decoded() {
        let q = query(Some("id=ab%2Fc+d&pretty=1&flag"));
        assert_eq!(q["id"], "ab/c d");
        assert_eq!(q["pretty"], "1");
        assert_eq!(q["flag"], "");
        assert!(query(None).is_empty());
    }

    #[test]
    fn env_values_are_hidden_unless_no_redact() {
        let a = args(&["--env", "{\"k\":\"secret\"}", "--env={}", "--tag", "a,b"]);
        assert_eq!(
            shown_args(&a),
            ["--env", "[redacted]", "--env=[redacted]", "--tag", "a,b"]
        );
        let mut b = a.clone();
        b.push("--no-redact".into());
        assert_eq!(shown_args(&b), b);
    }
}
