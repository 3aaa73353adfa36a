//! Where run state lives: a key-value store behind one trait.
//!
//! Keys are etcd-shaped (`runs/<run>/…`, `outbox/<run>/<seq>`), writes come in batches that
//! commit together (an event's state change and its webhook outbox entries in one commit), so
//! the etcd implementation can map a batch to one fenced transaction.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

/// The largest batch committed at once: etcd's default limit of operations per transaction
/// (128), less the two a leader's etcd store adds to keep its writes in order.
pub const MAX_OPS_PER_COMMIT: usize = 126;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    Put {
        key: String,
        value: Vec<u8>,
    },
    Delete {
        key: String,
    },
    /// Every key under `prefix` (a finished run's records, when history is trimmed).
    DeletePrefix {
        prefix: String,
    },
}

impl StoreOp {
    /// The key written, or the prefix deleted.
    pub fn key(&self) -> &str {
        match self {
            StoreOp::Put { key, .. } | StoreOp::Delete { key } => key,
            StoreOp::DeletePrefix { prefix } => prefix,
        }
    }
}

/// Keys read per request when a prefix may hold many (recovery): one range stays well under
/// the client's receive limit.
pub const SCAN_PAGE: usize = 2_000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// A fenced write failed its compare: this coordinator is no longer the leader.
    #[error("this coordinator is no longer the leader")]
    Fenced,
}

pub trait Store: Clone + Send + Sync + 'static {
    /// Applies `ops` atomically, in order.
    fn commit(&self, ops: Vec<StoreOp>) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The fencing epoch its writes are conditional on, stamped on leases (0: not fenced, a
    /// single node).
    fn epoch(&self) -> u64 {
        0
    }
    /// False for a store that keeps nothing ([`NoStore`]): the engine builds no records for it
    /// (serialising every task's record only to drop it cost a big local run most of its memory).
    fn keeps(&self) -> bool {
        true
    }
    /// Every key (and value) under `prefix`, in key order.
    fn scan(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<Vec<(String, Vec<u8>)>, StoreError>> + Send;
    /// At most `limit` keys under `prefix` after the key `after` (from the first without one),
    /// in key order: a prefix read in pages.
    fn scan_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(String, Vec<u8>)>, StoreError>> + Send;
}

/// The same effect with each key written once: its last write (a store that refuses a
/// transaction naming a key twice, as etcd does, gets this).
pub fn last_write_per_key(ops: Vec<StoreOp>) -> Vec<StoreOp> {
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<StoreOp> = ops
        .into_iter()
        .rev()
        .filter(|op| seen.insert(op.key().to_string()))
        .collect();
    out.reverse();
    out
}

/// A store that keeps nothing: `factotum run`'s. A local run is never taken over, re-run or
/// listed from its records, so writing them would only hold every task's record (and every
/// webhook payload) in memory until the process ends — most of a 200,000-task run's memory.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoStore;

impl Store for NoStore {
    fn keeps(&self) -> bool {
        false
    }

    async fn commit(&self, _ops: Vec<StoreOp>) -> Result<(), StoreError> {
        Ok(())
    }

    async fn scan(&self, _prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(vec![])
    }

    async fn scan_page(
        &self,
        _prefix: &str,
        _after: Option<&str>,
        _limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(vec![])
    }
}

/// The single-node store: a map in memory. Used by a coordinator without etcd.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    map: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<String, Vec<u8>>) -> T) -> T {
        // A poisoned lock only means another thread panicked mid-write of plain data: keep going.
        let mut guard = self.map.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }
}

impl Store for MemoryStore {
    async fn commit(&self, ops: Vec<StoreOp>) -> Result<(), StoreError> {
        self.with(|m| {
            for op in ops {
                match op {
                    StoreOp::Put { key, value } => {
                        m.insert(key, value);
                    }
                    StoreOp::Delete { key } => {
                        m.remove(&key);
                    }
                    StoreOp::DeletePrefix { prefix } => {
                        m.retain(|k, _| !k.starts_with(&prefix));
                    }
                }
            }
        });
        Ok(())
    }

    async fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.scan_page(prefix, None, usize::MAX).await
    }

    async fn scan_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        use std::ops::Bound;
        let start = match after {
            Some(a) => Bound::Excluded(a.to_string()),
            None => Bound::Included(prefix.to_string()),
        };
        Ok(self.with(|m| {
            m.range((start, Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(prefix))
                .take(limit)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }))
    }
}

/// Key layout, in one place.
pub mod keys {
    pub fn run_spec(run: &str) -> String {
        format!("runs/{run}/spec")
    }
    pub fn run_factfile(run: &str) -> String {
        format!("runs/{run}/factfile")
    }
    /// The factfile a redacting run's payloads show (see `model::Redaction`).
    pub fn run_shown(run: &str) -> String {
        format!("runs/{run}/shown")
    }
    pub fn run_state(run: &str) -> String {
        format!("runs/{run}/state")
    }
    pub fn task(run: &str, task: u32) -> String {
        format!("runs/{run}/tasks/{task:08}")
    }
    /// The run a submission's idempotency key started (the key is hex-encoded: any text is safe).
    pub fn idempotency(key: &str) -> String {
        let hex: String = key.bytes().map(|b| format!("{b:02x}")).collect();
        format!("idempotency/{hex}")
    }
    /// The key text back from its hex form.
    pub fn unhex(hex: &str) -> Option<String> {
        let bytes: Option<Vec<u8>> = (0..hex.len())
            .step_by(2)
            .map(|i| {
                hex.get(i..i + 2)
                    .and_then(|b| u8::from_str_radix(b, 16).ok())
            })
            .collect();
        String::from_utf8(bytes?).ok()
    }
    pub fn outbox(run: &str, seq: u64) -> String {
        format!("outbox/{run}/{seq:012}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_commits_and_scans() {
        let s = MemoryStore::new();
        s.commit(vec![
            StoreOp::Put {
                key: keys::task("r1", 2),
                value: b"b".to_vec(),
            },
            StoreOp::Put {
                key: keys::task("r1", 10),
                value: b"c".to_vec(),
            },
            StoreOp::Put {
                key: keys::task("r2", 1),
                value: b"x".to_vec(),
            },
            StoreOp::Delete {
                key: keys::task("r1", 2),
            },
        ])
        .await
        .unwrap();
        let got = s.scan("runs/r1/").await.unwrap();
        assert_eq!(got, vec![(keys::task("r1", 10), b"c".to_vec())]);
    }
}
