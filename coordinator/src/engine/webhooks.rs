//! The interpreter's verbs about what leaves the coordinator: replaying a run's dead letters
//! (their bodies read back from the outbox), and a task's secrets for reading its log. The same
//! interpreter as [`super::core`], in its own file.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::core::Core;
use crate::model::EngineError;
use crate::persist;
use crate::store::Store;
use crate::webhook::{self, dead, Delivery};

/// What a replay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Replayed {
    /// Events queued again (each to one URL).
    pub replayed: u64,
    /// Dead letters with no body to send (too large when they happened), left as they are.
    pub skipped: u64,
}

impl<S: Store> Core<S> {
    /// A task's secrets: from the run's plan while it is active, else from its records.
    pub(super) async fn task_secrets(
        &mut self,
        run_id: &str,
        task: &str,
    ) -> Result<Vec<String>, EngineError> {
        let id = self.runs.resolve(run_id)?;
        if let Some(run) = self.runs.active.get(&id) {
            return Ok(super::recovery::task_secrets(run.state.plan(), task));
        }
        super::recovery::recorded_secrets(&self.store, &id, task).await
    }

    /// Queues a run's dead letters again, in order, with their original ids and `ttm`.
    pub(super) async fn replay(
        &mut self,
        run_id: &str,
        from: u64,
        url: Option<&str>,
    ) -> Result<Replayed, EngineError> {
        let id = self.runs.resolve(run_id)?;
        let letters = self.deliverer.dead_of(&id, 0, None);
        if let Some(url) = url {
            // The run's endpoints: those it is sending to, the coordinator's, and those its
            // dead letters were for. A replay never sends anywhere else.
            let mut known: BTreeSet<String> = self.cfg.webhooks.iter().cloned().collect();
            if let Some(run) = self.runs.active.get(&id) {
                known.extend(run.webhooks.iter().map(|u| u.to_string()));
            }
            known.extend(letters.iter().map(|(_, d)| d.url.clone()));
            if !known.contains(url) {
                return Err(EngineError::NotAnEndpoint {
                    run: id.to_string(),
                    url: url.to_string(),
                    endpoints: known.into_iter().collect(),
                });
            }
        }
        let letters: Vec<_> = (letters.into_iter())
            .filter(|(_, d)| d.seq >= from && url.is_none_or(|u| d.url == u))
            .collect();
        if letters.is_empty() {
            return Ok(Replayed::default());
        }
        let bodies: HashMap<String, Vec<u8>> = (self.store.scan(&format!("outbox/{id}/")).await?)
            .into_iter()
            .collect();
        let mut done = Replayed::default();
        let (mut keys, mut deliveries) = (vec![], vec![]);
        for (key, letter) in letters {
            let outbox_key = dead::outbox_key_of(&key);
            let Some((_, _, body)) = bodies
                .get(&outbox_key)
                .and_then(|b| persist::unpack_outbox(b))
            else {
                done.skipped += 1;
                continue;
            };
            keys.push(key);
            deliveries.push(Delivery {
                url: Arc::from(letter.url.as_str()),
                run_id: Arc::clone(&id),
                seq: Some(letter.seq),
                event_id: Arc::from(webhook::event_id(&id, letter.seq)),
                ttm: letter.ttm,
                // A replayed event's horizon counts from now, not from its transition.
                retry_from: chrono::Utc::now().timestamp_millis(),
                body: Arc::from(body.as_str()),
                outbox_key,
                refused: None,
            });
            done.replayed += 1;
        }
        tracing::info!(run = %id, from, url, replayed = done.replayed, skipped = done.skipped, "replaying dead-lettered webhook events");
        self.deliverer.replay(&keys, deliveries);
        if !self.runs.active.contains_key(&id) {
            self.deliverer.close_run(&id);
        }
        Ok(done)
    }
}
