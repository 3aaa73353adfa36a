//! Group commit: what one turn of the engine's loop wants recorded, in as few store
//! transactions as etcd allows, and the queue of batches waiting while the store is down.
//!
//! Pure: [`transactions`] cuts operations into transactions, [`Commits`] holds the batches.
//! The interpreter writes them and acts on them once they are recorded (nothing is sent for a
//! batch before its writes are durable).

use std::collections::VecDeque;
use std::sync::Arc;

use factotum_common::run::JobState;
use factotum_proto::CoordinatorMessage;

use crate::store::{StoreOp, MAX_OPS_PER_COMMIT};
use crate::webhook::Delivery;

/// Bytes per store transaction, at most (etcd refuses requests over 1.5 MiB by default).
pub const MAX_TXN_BYTES: usize = 1024 * 1024;

/// One event's worth of store writes, and what to do once they are recorded.
#[derive(Debug, Default)]
pub(super) struct Batch {
    pub run: Option<Arc<str>>,
    pub ops: Vec<StoreOp>,
    pub deliveries: Vec<Delivery>,
    pub sends: Vec<(Arc<str>, CoordinatorMessage)>,
    /// The run ended: retire it once recorded.
    pub ended: Option<JobState>,
}

impl Batch {
    /// Webhook events first: should a batch ever span transactions (over 128 operations or
    /// 1 MiB) and a crash fall between them, an event is sent twice rather than never.
    pub fn outbox_first(&mut self) {
        self.ops.sort_by_key(
            |op| !matches!(op, StoreOp::Put { key, .. } if key.starts_with("outbox/")),
        );
    }
}

/// Cuts `ops` into transactions of at most 128 operations and about 1 MiB (etcd's limits),
/// keeping their order. An operation larger than the byte limit goes alone.
pub fn transactions(ops: Vec<StoreOp>) -> Vec<Vec<StoreOp>> {
    let mut out = vec![];
    let mut chunk = Vec::new();
    let mut bytes = 0;
    for op in ops {
        let size = match &op {
            StoreOp::Put { key, value } => key.len() + value.len(),
            StoreOp::Delete { key } | StoreOp::DeletePrefix { prefix: key } => key.len(),
        };
        if !chunk.is_empty() && (chunk.len() == MAX_OPS_PER_COMMIT || bytes + size > MAX_TXN_BYTES)
        {
            out.push(std::mem::take(&mut chunk));
            bytes = 0;
        }
        bytes += size;
        chunk.push(op);
    }
    if !chunk.is_empty() {
        out.push(chunk);
    }
    out
}

/// Batches of the turn in progress, batches stalled behind a store outage, and
/// acknowledgements waiting for the batch that records their results.
#[derive(Default)]
pub(super) struct Commits {
    pending: Vec<Batch>,
    stalled: VecDeque<Batch>,
    acks: Vec<(Arc<str>, CoordinatorMessage)>,
}

impl Commits {
    /// Queues a batch for the end of this turn; acknowledgements waiting so far go with it.
    pub fn push(&mut self, mut batch: Batch) {
        batch.sends.splice(0..0, std::mem::take(&mut self.acks));
        batch.outbox_first();
        self.pending.push(batch);
    }

    /// An acknowledgement to send once the next batch is recorded.
    pub fn ack_after_next(&mut self, agent: Arc<str>, msg: CoordinatorMessage) {
        self.acks.push((agent, msg));
    }

    /// While batches are stalled, nothing new is leased (it could not be recorded).
    pub fn is_stalled(&self) -> bool {
        !self.stalled.is_empty()
    }

    /// Batches waiting for the store to come back.
    pub fn stalled_len(&self) -> usize {
        self.stalled.len()
    }

    /// The turn's batches to record now, or `None` when they must queue behind stalled ones.
    pub fn take_turn(&mut self) -> Option<Vec<Batch>> {
        let batches = std::mem::take(&mut self.pending);
        if batches.is_empty() {
            return None;
        }
        if self.is_stalled() {
            self.stalled.extend(batches);
            return None;
        }
        Some(batches)
    }

    /// The stalled batches, to try again.
    pub fn take_stalled(&mut self) -> Vec<Batch> {
        self.stalled.drain(..).collect()
    }

    /// Batches that could not be recorded: they wait, in order, at the end of the queue.
    pub fn stall(&mut self, batches: Vec<Batch>) {
        self.stalled.extend(batches);
    }

    /// Another coordinator leads: nothing queued will ever be recorded by this one.
    pub fn abandon(&mut self) {
        self.stalled.clear();
        self.pending.clear();
        self.acks.clear();
    }
}

/// Every operation of the batches, in order.
pub(super) fn ops_of(batches: &[Batch]) -> Vec<StoreOp> {
    batches.iter().flat_map(|b| b.ops.iter().cloned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, bytes: usize) -> StoreOp {
        StoreOp::Put {
            key: key.into(),
            value: vec![b'x'; bytes],
        }
    }

    #[test]
    fn transactions_hold_at_most_max_ops_per_commit_operations_in_order() {
        // etcd takes 128 operations a transaction; the etcd store adds two of its own.
        assert_eq!(MAX_OPS_PER_COMMIT, 126);
        let ops: Vec<StoreOp> = (0..300).map(|i| put(&format!("k{i:03}"), 10)).collect();
        let txns = transactions(ops.clone());
        assert_eq!(
            txns.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![126, 126, 48]
        );
        assert_eq!(txns.concat(), ops);
    }

    #[test]
    fn transactions_hold_about_one_mebibyte() {
        let ops: Vec<StoreOp> = (0..5).map(|i| put(&format!("k{i}"), 400 * 1024)).collect();
        let txns = transactions(ops);
        assert_eq!(txns.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2, 1]);
        // One operation over the limit still goes (alone): etcd decides.
        let txns = transactions(vec![
            put("a", 10),
            put("big", 2 * MAX_TXN_BYTES),
            put("b", 10),
        ]);
        assert_eq!(txns.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 1, 1]);
        assert!(transactions(vec![]).is_empty());
    }

    #[test]
    fn a_batch_puts_its_webhook_events_first_and_carries_earlier_acks() {
        let mut commits = Commits::default();
        let ack = CoordinatorMessage::default();
        commits.ack_after_next(Arc::from("a"), ack.clone());
        commits.push(Batch {
            ops: vec![
                put("runs/r/state", 1),
                put("outbox/r/1/0", 1),
                put("runs/r/tasks/1", 1),
            ],
            sends: vec![(Arc::from("b"), ack.clone())],
            ..Batch::default()
        });
        let turn = commits.take_turn().unwrap();
        let keys: Vec<&str> = turn[0].ops.iter().map(StoreOp::key).collect();
        assert_eq!(keys, ["outbox/r/1/0", "runs/r/state", "runs/r/tasks/1"]);
        let to: Vec<&str> = turn[0].sends.iter().map(|(a, _)| &**a).collect();
        assert_eq!(to, ["a", "b"], "the ack waiting for a record goes first");
    }

    #[test]
    fn while_stalled_new_turns_queue_behind_in_order() {
        let mut commits = Commits::default();
        let batch = |k: &str| Batch {
            ops: vec![put(k, 1)],
            ..Batch::default()
        };
        commits.stall(vec![batch("1")]);
        assert!(commits.is_stalled());
        commits.push(batch("2"));
        assert!(commits.take_turn().is_none());
        let again = commits.take_stalled();
        assert_eq!(ops_of(&again), vec![put("1", 1), put("2", 1)]);
        assert!(!commits.is_stalled());
        commits.stall(again);
        commits.abandon();
        assert!(!commits.is_stalled());
    }
}
