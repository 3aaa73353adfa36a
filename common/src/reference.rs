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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::factfile::Factfile;
    use crate::template::Vars;

    /// COMPAT.md's vectors, measured on Factotum 0.7.0 with its own `echo.factfile` (read from
    /// the shared reference data beside the repository, not copied into it).
    #[test]
    fn factotum_job_reference_vectors() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/factotum-samples/echo.factfile"
        );
        let text = std::fs::read_to_string(path)
            .expect("../shared/factotum-samples/echo.factfile must exist");
        let ff = Factfile::parse(
            &text,
            &Vars::new(&serde_json::Value::Null, &BTreeMap::new()).unwrap(),
        )
        .unwrap();
        assert_eq!(
            job_reference(&ff.compact_json(), &BTreeMap::new()),
            "c8abd9c2bb317fdec983bea8707bf01ae72b46d8d2e39317f31a442d360c068a"
        );
        let tags = crate::tags::parse_tags(["env,prod", "client,acme"]);
        assert_eq!(
            job_reference(&ff.compact_json(), &tags),
            "a5cdf01736c054d8ad5f38d750b4a529c5fb03e7ba34a5394314e50bbdd0e3ee"
        );
    }

    #[test]
    fn run_reference_is_sha256_hex_of_the_uuid() {
        let r = run_reference("3f2c0a7e-1d1b-4a55-9a4e-0c1b2d3e4f50");
        assert_eq!(r.len(), 64);
        assert!(r
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(r, run_reference("another"));
    }
}
