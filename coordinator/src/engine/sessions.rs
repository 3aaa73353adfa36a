//! The interpreter's agent sessions: a `Hello` (who may take a name, what it re-attaches, what
//! it never received), who speaks for an attempt (only its holder), agents that leave or go
//! silent. The same interpreter as [`super::core`], in its own file: owners still only decide.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use factotum_common::dag::TaskId;
use factotum_common::run::{Event, Outcome, TaskResult};
use factotum_proto::{agent_message, AttemptResult, CoordinatorMessage, Hello, LeaseRef, Output};
use tokio::sync::mpsc;

use super::agents::{key_of, AttemptKey, Claim, Gone};
use super::commit::Batch;
use super::core::Core;
use crate::persist::HolderRecord;
use crate::store::Store;
use crate::wire;

impl<S: Store> Core<S> {
    /// Who the run's attempts were leased to, as recorded (nothing if it cannot be read: the
    /// attempts then wait for any agent to re-attach them, as before these records).
    pub(super) async fn holders(&self, run: &str) -> HashMap<TaskId, HolderRecord> {
        match self.store.scan(&format!("runs/{run}/holders/")).await {
            Ok(kvs) => HolderRecord::read_all(run, &kvs),
            Err(e) => {
                tracing::warn!(run, error = %e, "cannot read who the run's attempts were leased to");
                HashMap::new()
            }
        }
    }

    pub(super) async fn hello(
        &mut self,
        conn: u64,
        hello: Hello,
        tx: mpsc::Sender<CoordinatorMessage>,
    ) {
        let agent_id: Arc<str> = Arc::from(hello.agent_id.as_str());
        if let Some(host) = self.agents.clash(&hello) {
            let reason = format!(
                "agent name '{agent_id}' is already connected from host {host} (this session: host {})",
                hello.hostname
            );
            tracing::warn!(agent = %agent_id, "refused a session: {reason}");
            let refused = factotum_proto::Refused { reason };
            let msg = CoordinatorMessage {
                msg: Some(factotum_proto::coordinator_message::Msg::Refused(refused)),
            };
            let _ = tx.send(msg).await;
            return; // dropping `tx` ends the session; the live one is left alone
        }
        tracing::info!(agent = %agent_id, host = %hello.hostname, slots = hello.slots, "agent connected");
        let welcome = wire::welcome(
            self.store.epoch(),
            self.cfg.agent_heartbeat,
            self.cfg.lost_after,
        );
        let _ = tx.send(welcome).await;
        let claims: Vec<Claim> = hello.running.iter().map(|r| self.claim(r)).collect();
        let now = self.cfg.clock.instant();
        let welcomed = self.agents.hello(conn, hello, tx.clone(), &claims, now);
        for (run, task, _) in &welcomed.attached {
            if let Some(run) = self.runs.get_mut(run) {
                run.task_agent.insert(*task, Arc::clone(&agent_id));
            }
        }
        for r in welcomed.cancels {
            let _ = tx.send(wire::cancel(r)).await;
        }
        let reason = format!("agent {agent_id} restarted without the task");
        self.fail(welcomed.vanished, &reason);
        self.release_again(&agent_id, welcomed.releases);
        self.dispatch_all();
    }

    /// Leases again, as the same attempts, what `agent` was leased but never received (the
    /// same agent process, or its state directory, has no trace of them): sent once the
    /// record naming its holder is written.
    fn release_again(&mut self, agent: &Arc<str>, attempts: Vec<AttemptKey>) {
        let epoch = self.store.epoch();
        let mut never_received = vec![];
        for key in attempts {
            let (id, task, attempt) = key.clone();
            let Some(run) = self.runs.active.get_mut(&id) else {
                continue;
            };
            let stopping = run.state.task(task).is_some_and(|t| t.stopping.is_some());
            let Some(spec) = run.state.plan().task(task).filter(|_| !stopping) else {
                never_received.push(key); // being stopped: it need not start at all
                continue;
            };
            tracing::info!(agent = %agent, run = %id, task = %spec.name, attempt,
                "the agent never received this attempt: leasing it again");
            let lease = wire::lease(
                wire::lease_ref(&id, task, attempt, epoch),
                spec,
                run.max_output,
                run.dry_run,
            );
            run.task_agent.insert(task, Arc::clone(agent));
            let holder = self.agents.holder_record(agent, attempt);
            self.commits.push(Batch {
                run: Some(Arc::clone(&id)),
                ops: vec![
                    holder.put(&id, task),
                    super::logs::attempt_record(&id, task, attempt, &spec.name, agent),
                ],
                sends: vec![(Arc::clone(agent), lease)],
                ..Batch::default()
            });
        }
        self.fail(
            never_received,
            &format!("agent {agent} never received the task"),
        );
    }

    /// What an attempt an agent says it runs is to the runs.
    fn claim(&self, r: &LeaseRef) -> Claim {
        let record = self
            .runs
            .active
            .get(r.run_id.as_str())
            .filter(|run| run.state.is_current(r.task, r.attempt))
            .and_then(|run| run.state.task(r.task));
        match record {
            Some(t) if t.stopping.is_some() => Claim::Stopping,
            Some(_) => Claim::Current,
            None => Claim::Stale,
        }
    }

    pub(super) async fn agent_said(&mut self, conn: u64, msg: agent_message::Msg) {
        let Some(agent) = self.agents.heard(conn, self.cfg.clock.instant()) else {
            return;
        };
        match msg {
            agent_message::Msg::Heartbeat(hb) => self.agents.set_draining(&agent, hb.draining),
            // Log chunks never come here: `Engine::attach_agent` routes them to their reader.
            agent_message::Msg::Hello(_) | agent_message::Msg::LogChunk(_) => {}
            agent_message::Msg::Started(s) => {
                // Nothing is done with a start yet; a non-holder's is still worth a warning.
                if let Some(r) = &s.lease {
                    self.speaks_for(&agent, r, "a start");
                }
            }
            agent_message::Msg::Output(o) => {
                if o.lease
                    .as_ref()
                    .is_some_and(|r| self.speaks_for(&agent, r, "output") == Speaks::Holder)
                {
                    self.output(o);
                }
            }
            agent_message::Msg::AttemptResult(r) => {
                let Some(lease) = &r.lease else { return };
                match self.speaks_for(&agent, lease, "a result") {
                    Speaks::Holder | Speaks::NobodyHolds => self.attempt_result(&agent, r).await,
                    // Not acknowledged: the sender does not hold it, so it must not forget it.
                    Speaks::NotHolder => {}
                }
            }
        }
    }

    /// Whether `agent` (heard on its current session) speaks for the attempt `r`: only the
    /// agent holding it may report on it. A message about an attempt nobody holds and that
    /// is not running (its run ended or moved on, or this coordinator never knew it) is
    /// harmless: a result of it is still acknowledged, so the agent can forget it.
    fn speaks_for(&self, agent: &Arc<str>, r: &LeaseRef, what: &str) -> Speaks {
        let key = key_of(r);
        match self.agents.holder(&key) {
            Some(holder) if holder == agent => Speaks::Holder,
            Some(holder) => {
                tracing::warn!(agent = %agent, holder = %holder, run = %r.run_id, task = r.task, attempt = r.attempt,
                    "ignored {what} from agent {agent} for an attempt held by agent {holder}");
                Speaks::NotHolder
            }
            None if self
                .runs
                .active
                .get(r.run_id.as_str())
                .is_some_and(|run| run.state.is_current(r.task, r.attempt)) =>
            {
                tracing::warn!(agent = %agent, run = %r.run_id, task = r.task, attempt = r.attempt,
                    "ignored {what} from agent {agent} for a running attempt it does not hold");
                Speaks::NotHolder
            }
            None => Speaks::NobodyHolds,
        }
    }

    fn output(&mut self, o: Output) {
        let Some(r) = o.lease else { return };
        let now = self.cfg.clock.now();
        let Some(run) = self.runs.get_mut(&r.run_id) else {
            return;
        };
        let Some(task) = run.state.plan().task(r.task) else {
            return;
        };
        if !run.state.is_current(r.task, r.attempt) {
            return;
        }
        let name = Arc::clone(&task.name);
        let stream = wire::stream_from_pb(o.stream);
        // Only a heartbeat shows output before the result does: without one, the tails are
        // the result's.
        if self.cfg.heartbeat_interval.is_some() || run.has_heartbeat() {
            let ev = Event::Output {
                task: r.task,
                attempt: r.attempt,
                stream,
                line: o.line.clone(),
                continued: o.continued,
            };
            run.state.apply(ev, now);
        }
        run.tell(crate::model::WatchEvent::Output {
            task: name,
            stream,
            line: o.line,
            continued: o.continued,
        });
    }

    async fn attempt_result(&mut self, agent: &Arc<str>, result: AttemptResult) {
        let Some(r) = result.lease.clone() else {
            return;
        };
        let key = key_of(&r);
        self.agents.ended(agent, &key);
        // The agent may forget the result once it is recorded: acknowledge with the batch
        // that records it (at once for a run this coordinator does not know).
        let ack = wire::ack(r.clone());
        if self.runs.active.contains_key(&key.0) {
            self.commits.ack_after_next(Arc::clone(agent), ack);
        } else if let Some(tx) = self.agents.sender(agent) {
            let _ = tx.send(ack).await;
        }
        let event = Event::AttemptEnded {
            task: r.task,
            attempt: r.attempt,
            result: wire::result_from_pb(result),
        };
        self.apply(&key.0, event);
        self.dispatch_all();
    }

    pub(super) fn agent_gone(&mut self, conn: u64) {
        match self.agents.gone(conn, self.cfg.lost_after.is_some()) {
            Gone::Nothing => return,
            Gone::LoseNow(id) => self.lose(&id),
            Gone::Forgotten | Gone::Waiting => {}
        }
        self.dispatch_all();
    }

    /// Fails the attempts of agents silent for longer than `lost_after`, and those no agent
    /// re-attached within the failover grace.
    pub(super) fn check_liveness(&mut self) {
        let now = self.cfg.clock.instant();
        let (unclaimed, silent) = self.agents.expired(now, self.cfg.lost_after);
        if !unclaimed.is_empty() {
            self.fail(
                unclaimed,
                "agent lost: no agent re-attached the task after a coordinator failover",
            );
        }
        for id in silent {
            self.lose(&id);
        }
    }

    pub(super) fn lose(&mut self, agent: &Arc<str>) {
        self.cfg.metrics.agents_lost.inc();
        let attempts = self.agents.lose(agent);
        self.fail(attempts, &format!("agent {agent} lost"));
        self.dispatch_all();
    }

    /// Ends these attempts without a result: FAILED with `reason`, and the usual cascade.
    pub(super) fn fail(&mut self, attempts: Vec<AttemptKey>, reason: &str) {
        for key in attempts {
            self.agents.release(&key);
            let (run, task, attempt) = key;
            let result = TaskResult {
                outcome: Outcome::Lost(reason.to_string()),
                stdout: String::new(),
                stderr: String::new(),
                duration: Duration::ZERO,
            };
            self.apply(
                &run,
                Event::AttemptEnded {
                    task,
                    attempt,
                    result,
                },
            );
        }
    }
}

/// Whether an agent speaks for an attempt (see [`Core::speaks_for`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Speaks {
    /// It holds the attempt.
    Holder,
    /// Another agent holds it, or it runs and nobody has re-attached it yet: ignored.
    NotHolder,
    /// Nobody holds it and it is not running here (an old result): harmless.
    NobodyHolds,
}
