//! `--store-key`: the records of a run that hold its secrets — `runs/<id>/spec` (its `--env`
//! secrets), `runs/<id>/factfile` (the templated factfile, their values in it) and
//! `runs/<id>/shown` — sealed with XChaCha20-Poly1305 before they reach the store, and opened
//! when read back. The rest (states, task records with redacted tails, outbox payloads) stays
//! readable with etcdctl.
//!
//! A sealed value is [`MAGIC`], a random 24-byte nonce and the ciphertext (with its tag); the
//! record's key is the associated data, so a sealed record moved to another key does not open.
//! A value without the magic is read as it is (records written before the key was set).
//! [`Sealed`] wraps any [`Store`]; without a key it only warns, once, when a run with secrets
//! is stored unsealed.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::store::{Store, StoreError, StoreOp};

/// What a sealed value starts with (a NUL: no JSON, text or gzip record does).
pub const MAGIC: &[u8] = b"\0fts1";
const NONCE: usize = 24;

/// Why a key file cannot be used, or a record not opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("cannot read the store key {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the store key {0} must hold 32 random bytes in base64 (make one with `head -c32 /dev/urandom | base64`)")]
    Format(String),
    #[error(
        "a sealed record ({0}) cannot be opened: no --store-key, or not the key that sealed it"
    )]
    Open(String),
}

/// The key of `--store-key`.
#[derive(Clone)]
pub struct StoreKey(Arc<XChaCha20Poly1305>);

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreKey(..)")
    }
}

impl StoreKey {
    /// The key in `path`: 32 bytes, base64 (surrounding whitespace ignored).
    pub fn read(path: &Path) -> Result<StoreKey, SealError> {
        let text = std::fs::read_to_string(path).map_err(|source| SealError::Read {
            path: path.display().to_string(),
            source,
        })?;
        StoreKey::from_base64(text.trim())
            .ok_or_else(|| SealError::Format(path.display().to_string()))
    }

    pub fn from_base64(text: &str) -> Option<StoreKey> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()?;
        StoreKey::from_bytes(&bytes)
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<StoreKey> {
        let cipher = XChaCha20Poly1305::new_from_slice(bytes).ok()?;
        (bytes.len() == 32).then(|| StoreKey(Arc::new(cipher)))
    }

    /// `value` sealed for the record `key`.
    pub fn seal(&self, key: &str, value: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE] = rand::random();
        let payload = Payload {
            msg: value,
            aad: key.as_bytes(),
        };
        // Encryption fails only past the cipher's length limit (256 GiB): unreachable.
        let sealed = self
            .0
            .encrypt(XNonce::from_slice(&nonce), payload)
            .unwrap_or_default();
        let mut out = Vec::with_capacity(MAGIC.len() + NONCE + sealed.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// The record `key`'s value opened; a value that is not sealed comes back as it is.
    pub fn open(&self, key: &str, value: Vec<u8>) -> Result<Vec<u8>, SealError> {
        let Some(rest) = value.strip_prefix(MAGIC) else {
            return Ok(value);
        };
        let (nonce, sealed) = rest
            .split_at_checked(NONCE)
            .ok_or_else(|| SealError::Open(key.to_string()))?;
        let payload = Payload {
            msg: sealed,
            aad: key.as_bytes(),
        };
        self.0
            .decrypt(XNonce::from_slice(nonce), payload)
            .map_err(|_| SealError::Open(key.to_string()))
    }
}

/// Whether the record `key` is one that holds a run's secrets: `runs/<id>/spec`, `factfile`
/// or `shown`.
pub fn holds_secrets(key: &str) -> bool {
    let Some(rest) = key.strip_prefix("runs/") else {
        return false;
    };
    matches!(
        rest.split_once('/').map(|(_, r)| r),
        Some("spec" | "factfile" | "shown")
    )
}

/// A store whose secret-holding records are sealed with the key, if there is one.
#[derive(Clone)]
pub struct Sealed<S> {
    inner: S,
    key: Option<StoreKey>,
    /// The warning about a run with secrets stored unsealed was given.
    warned: Arc<AtomicBool>,
}

impl<S: Store> Sealed<S> {
    pub fn new(inner: S, key: Option<StoreKey>) -> Sealed<S> {
        Sealed {
            inner,
            key,
            warned: Arc::new(AtomicBool::new(false)),
        }
    }

    fn seal(&self, op: StoreOp) -> StoreOp {
        match (op, &self.key) {
            (StoreOp::Put { key, value }, Some(k)) if holds_secrets(&key) => {
                let value = k.seal(&key, &value);
                StoreOp::Put { key, value }
            }
            (op, None) => {
                // A run that redacts something has a `shown` factfile: it has secrets.
                if op.key().ends_with("/shown")
                    && matches!(op, StoreOp::Put { .. })
                    && !self.warned.swap(true, Ordering::Relaxed)
                {
                    tracing::warn!(
                        "a run with secrets (--env values, task env values) is stored unsealed: \
                         its factfile and spec records show them to anyone who can read the \
                         store; set --store-key to seal them (this is said once)"
                    );
                }
                op
            }
            (op, _) => op,
        }
    }

    fn open(&self, kvs: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
        kvs.into_iter()
            .map(|(k, v)| {
                if !v.starts_with(MAGIC) {
                    return (k, v);
                }
                let opened = match &self.key {
                    Some(key) => key.open(&k, v),
                    None => Err(SealError::Open(k.clone())),
                };
                match opened {
                    Ok(v) => (k, v),
                    Err(e) => {
                        // Read as an unreadable record: the run is skipped with its reason.
                        tracing::warn!(error = %e, "cannot read a record");
                        (k, vec![])
                    }
                }
            })
            .collect()
    }
}

impl<S: Store> Store for Sealed<S> {
    async fn commit(&self, ops: Vec<StoreOp>) -> Result<(), StoreError> {
        let ops = ops.into_iter().map(|op| self.seal(op)).collect();
        self.inner.commit(ops).await
    }

    fn epoch(&self) -> u64 {
        self.inner.epoch()
    }

    async fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self.open(self.inner.scan(prefix).await?))
    }

    async fn scan_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self.open(self.inner.scan_page(prefix, after, limit).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn key() -> StoreKey {
        StoreKey::from_bytes(&[7; 32]).unwrap()
    }

    #[test]
    fn a_sealed_record_opens_with_its_key_and_its_name_only() {
        let k = key();
        let sealed = k.seal("runs/r/spec", b"{\"redact\":[\"s3cr3t-value\"]}");
        assert!(sealed.starts_with(MAGIC));
        assert!(!sealed.windows(12).any(|w| w == b"s3cr3t-value"));
        assert_ne!(
            sealed,
            k.seal("runs/r/spec", b"{\"redact\":[\"s3cr3t-value\"]}")
        );
        let opened = k.open("runs/r/spec", sealed.clone()).unwrap();
        assert_eq!(opened, b"{\"redact\":[\"s3cr3t-value\"]}");
        assert!(k.open("runs/other/spec", sealed.clone()).is_err());
        let other = StoreKey::from_bytes(&[8; 32]).unwrap();
        assert!(other.open("runs/r/spec", sealed.clone()).is_err());
        let mut tampered = sealed;
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(k.open("runs/r/spec", tampered).is_err());
        // An old, unsealed record reads as it is; a short sealed one is refused.
        assert_eq!(k.open("runs/r/spec", b"{}".to_vec()).unwrap(), b"{}");
        assert!(k.open("runs/r/spec", MAGIC.to_vec()).is_err());
    }

    #[test]
    fn keys_are_32_bytes_of_base64() {
        let text = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
        assert!(StoreKey::from_base64(&text).is_some());
        let short = base64::engine::general_purpose::STANDARD.encode([1u8; 16]);
        assert!(StoreKey::from_base64(&short).is_none());
        assert!(StoreKey::from_base64("not base64!").is_none());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, format!("{text}\n")).unwrap();
        assert!(StoreKey::read(&path).is_ok());
        std::fs::write(&path, "nope").unwrap();
        let err = StoreKey::read(&path).unwrap_err().to_string();
        assert!(err.contains("head -c32 /dev/urandom | base64"), "{err}");
    }

    #[tokio::test]
    async fn the_store_sees_sealed_secret_records_and_the_engine_plain_ones() {
        let inner = MemoryStore::new();
        let store = Sealed::new(inner.clone(), Some(key()));
        let put = |key: &str, value: &str| StoreOp::Put {
            key: key.into(),
            value: value.as_bytes().to_vec(),
        };
        store
            .commit(vec![
                put("runs/r/spec", "spec s3cr3t-value"),
                put("runs/r/factfile", "factfile s3cr3t-value"),
                put("runs/r/shown", "shown"),
                put("runs/r/state", "state"),
            ])
            .await
            .unwrap();
        let raw = inner.scan("runs/").await.unwrap();
        for (k, v) in &raw {
            assert_eq!(v.starts_with(MAGIC), k != "runs/r/state", "{k}");
        }
        let read = store.scan("runs/r/").await.unwrap();
        let values: Vec<&[u8]> = read.iter().map(|(_, v)| v.as_slice()).collect();
        let want: [&[u8]; 4] = [
            b"factfile s3cr3t-value",
            b"shown",
            b"spec s3cr3t-value",
            b"state",
        ];
        assert_eq!(values, want);
        // Without the key a sealed record reads as empty (unreadable), never as ciphertext.
        let keyless = Sealed::new(inner, None);
        let read = keyless.scan_page("runs/r/", None, 10).await.unwrap();
        assert!(read
            .iter()
            .filter(|(k, _)| k != "runs/r/state")
            .all(|(_, v)| v.is_empty()));
    }
}
