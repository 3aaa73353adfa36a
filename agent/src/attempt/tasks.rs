//! The attempts' tasks, joined as they end: one that panicked is reported as a failed attempt.
//!
//! Without this a panic in an attempt's task (a bug of ours, never the task's doing) left its
//! attempt running forever: the agent never sent a result, and the run never finished.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use factotum_proto::{attempt_result, LeaseRef};
use tokio::task::{Id, JoinError, JoinSet};

use super::{result_msg, AttemptEvent};

#[derive(Debug, Default)]
pub(super) struct Tasks {
    set: JoinSet<()>,
    /// Which attempt each task runs.
    leases: HashMap<Id, LeaseRef>,
}

impl Tasks {
    pub fn spawn(&mut self, r: &LeaseRef, attempt: impl Future<Output = ()> + Send + 'static) {
        let handle = self.set.spawn(attempt);
        self.leases.insert(handle.id(), r.clone());
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Joins the tasks that have ended, without waiting; the results of those that panicked.
    pub fn reap(&mut self) -> Vec<AttemptEvent> {
        let mut failed = vec![];
        while let Some(joined) = self.set.try_join_next_with_id() {
            failed.extend(self.joined(joined));
        }
        failed
    }

    /// Waits for a task to end (`None`: none is left); `Some(Some(..))` for one that panicked.
    pub async fn join_next(&mut self) -> Option<Option<AttemptEvent>> {
        let joined = self.set.join_next_with_id().await?;
        Some(self.joined(joined))
    }

    fn joined(&mut self, joined: Result<(Id, ()), JoinError>) -> Option<AttemptEvent> {
        let e = match joined {
            Ok((id, ())) => {
                self.leases.remove(&id);
                return None;
            }
            Err(e) => e,
        };
        let r = self.leases.remove(&e.id())?;
        if !e.is_panic() {
            return None; // aborted: only on shutdown, nothing left to report to
        }
        let why = match e.into_panic().downcast::<String>() {
            Ok(s) => *s,
            Err(p) => p
                .downcast::<&str>()
                .map_or_else(|_| "a panic".to_string(), |s| s.to_string()),
        };
        tracing::error!(run = %r.run_id, task = r.task, attempt = r.attempt, %why, "the attempt's task failed; reporting the attempt as failed");
        let outcome = attempt_result::Outcome::SpawnError(format!(
            "the agent failed while running this attempt ({why}); its process may still be running"
        ));
        let result = result_msg(&r, outcome, String::new(), String::new(), Duration::ZERO);
        Some(AttemptEvent::Done(r.key(), result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicked_attempt_is_a_failed_attempt_and_a_finished_one_is_nothing() {
        let r = |task| LeaseRef {
            run_id: "run".into(),
            task,
            attempt: 1,
            epoch: 0,
        };
        let mut tasks = Tasks::default();
        tasks.spawn(&r(0), async {});
        tasks.spawn(&r(1), async { panic!("boom") });
        let mut failed = vec![];
        while let Some(joined) = tasks.join_next().await {
            failed.extend(joined);
        }
        assert!(tasks.is_empty() && tasks.leases.is_empty());
        let [AttemptEvent::Done(key, result)] = failed.as_slice() else {
            panic!("one failed attempt: {failed:?}");
        };
        assert_eq!(*key, r(1).key());
        let Some(attempt_result::Outcome::SpawnError(why)) = &result.outcome else {
            panic!("{result:?}");
        };
        assert!(why.contains("boom"), "{why}");
    }
}
