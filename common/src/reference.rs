//! `jobReference` and `runReference`, as Factotum computes them.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// SHA-256 (lowercase hex) of the templated compact factfile followed by each tag key and value,
/// sorted by key, concatenated with no separator.
pub fn job_reference(compact_factfile: &str, tags: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    h.update(compact_factfile.as_bytes());
    for (k, v) in tags {
        h.update(k.as_bytes());
        h.update(v.as_bytes());
    }
    hex(&h.finalize())
}

/// SHA-256 (lowercase hex) of a fresh UUIDv4's text; the caller supplies the UUID (no randomness here).
pub fn run_reference(uuid: &str) -> String {
    hex(&Sha256::digest(uuid.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
