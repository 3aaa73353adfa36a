//! The interpreter's other half: writing a turn's batches to the store in as few transactions
//! as it allows, then acting on each once it is recorded (webhooks, messages to agents, a run's
//! end) — nothing is sent for a batch before its writes are durable. A store that is down
//! stalls the batches in order; a fenced write steps the engine down.

use super::commit::{ops_of, transactions, Batch};
use super::core::Core;
use super::history;
use crate::store::{Store, StoreError, StoreOp};

impl<S: Store> Core<S> {
    /// Records this turn's batches. While the store is down, batches queue in order behind
    /// the stalled ones (nothing is sent for them, and dispatch pauses) until it is back.
    pub(super) async fn flush(&mut self) {
        let Some(batches) = self.commits.take_turn() else {
            return;
        };
        if let Err(e @ StoreError::Unavailable(_)) = self.record(batches).await {
            tracing::error!(error = %e, "the store is unavailable: dispatch pauses until it is back");
        }
    }

    /// Retries the stalled batches; once they are recorded, dispatch resumes.
    pub(super) async fn retry_stalled(&mut self) {
        let batches = self.commits.take_stalled();
        if self.record(batches).await.is_ok() {
            tracing::info!("the store is back: dispatch resumes");
            self.dispatch_all();
        }
    }

    /// Writes the batches in as few transactions as possible, then acts on each in order. A
    /// fenced write means another coordinator leads: step down. Any other failure puts them
    /// (back) at the end of the stalled queue.
    async fn record(&mut self, batches: Vec<Batch>) -> Result<(), StoreError> {
        match self.write(ops_of(&batches)).await {
            Ok(()) => {
                for b in batches {
                    self.act(b).await;
                }
                Ok(())
            }
            Err(StoreError::Fenced) => {
                // Another coordinator leads now: act on nothing more.
                tracing::error!("a fenced write failed: this coordinator is no longer the leader");
                self.commits.abandon();
                self.cfg.fenced.cancel();
                Err(StoreError::Fenced)
            }
            Err(e) => {
                self.commits.stall(batches);
                Err(e)
            }
        }
    }

    async fn write(&self, ops: Vec<StoreOp>) -> Result<(), StoreError> {
        let metrics = &self.cfg.metrics;
        metrics.commit_batch_ops.observe(ops.len() as f64);
        for txn in transactions(ops) {
            let began = tokio::time::Instant::now();
            let written = self.store.commit(txn).await;
            metrics.store_latency.observe(began.elapsed().as_secs_f64());
            if written.is_err() {
                metrics.store_errors.inc();
            }
            written?;
        }
        Ok(())
    }

    /// What a recorded batch says to do: webhooks, messages to agents, a run's end.
    async fn act(&mut self, batch: Batch) {
        for d in batch.deliveries {
            self.deliverer.send(d);
        }
        for (agent, msg) in batch.sends {
            if let Some(tx) = self.agents.sender(&agent) {
                let _ = tx.send(msg).await;
            }
        }
        if let (Some(state), Some(id)) = (batch.ended, batch.run) {
            let now = self.cfg.clock.now();
            if let Some((job, s)) = self.runs.retire(&id, state, now) {
                let outcome = match (s.state, s.cancelled) {
                    (_, true) => "cancelled",
                    (factotum_common::run::JobState::Succeeded, _) => "succeeded",
                    _ => "failed",
                };
                let failed = s.first_failed.as_deref().unwrap_or("");
                tracing::info!(run = %id, %job, outcome, duration = ?s.duration, first_failed = failed, "run finished");
            }
            self.timers.set(&id, None);
            self.deliverer.close_run(&id);
            self.history.record(id, now);
            self.trim_history();
        }
    }

    /// Deletes from the store the finished runs past `history_max_runs` or
    /// `history_max_age` (recorded with the next turn's batches).
    pub(super) fn trim_history(&mut self) {
        let old = self.history.expired(self.cfg.clock.now());
        if old.is_empty() {
            return;
        }
        tracing::info!(
            runs = old.len(),
            "deleting finished runs past the history limits"
        );
        self.runs.forget(&old);
        self.deliverer.forget_runs(&old);
        let mut ops = history::deletes(&old);
        ops.extend(self.server.forget_runs(&old));
        self.commits.push(Batch {
            ops,
            ..Batch::default()
        });
    }
}
