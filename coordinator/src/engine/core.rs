//! The interpreter: the engine's one loop. Each command's arm is one call; each call applies
//! events to a run's state machine, asks the owners what should happen, and performs it —
//! store writes (group-committed, see [`super::commit`]), messages to agents, webhook
//! deliveries. Owners never call back in here.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use factotum_common::dag::TaskId;
use factotum_common::run::{Action, Event};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::agents::Agents;
use super::commit::{Batch, Commits};
use super::history::History;
use super::registry::{self, Runs};
use super::runs;
use super::server_jobs::ServerJobs;
use super::timers::Timers;
use super::watchers::Watchers;
use super::{recovery, Command, EngineConfig};
use crate::metrics::Sample;
use crate::model::{EngineError, RunSpec, ServerJob, Submitted};
use crate::placement::{self, Ask, Want};
use crate::store::Store;
use crate::webhook::Deliverer;
use crate::wire;

/// Commands handled before their store writes are committed together (group commit).
const GROUP: usize = 256;

/// How soon stalled batches are tried again. Short: a store that is down fails fast (a
/// member without a leader answers at once), and one that is back should resume dispatch at
/// once — after etcd re-elects its leader, within this of it.
const RETRY_STALLED: Duration = Duration::from_millis(150);
/// The most characters the webhook schemas allow in `factfile` (base64).
const MAX_FACTFILE_FIELD: usize = 1_000_000;

/// How often runs' own heartbeats are checked: they are due at most this late.
const RUN_BEAT_CHECK: Duration = Duration::from_millis(100);
/// How often the metrics' gauges are sampled from the engine's state.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

pub(super) struct Core<S: Store> {
    pub(super) cfg: EngineConfig,
    pub(super) store: S,
    pub(super) deliverer: Deliverer,
    pub(super) runs: Runs,
    pub(super) agents: Agents,
    pub(super) commits: Commits,
    pub(super) timers: Timers,
    pub(super) history: History,
    /// Factotum Server's drain setting and jobs (`server_jobs`, `server_turn`).
    pub(super) server: ServerJobs,
}

fn answer<T>(reply: super::Reply<T>, result: Result<T, EngineError>) {
    let _ = reply.send(result);
}

impl<S: Store> Core<S> {
    pub fn new(cfg: EngineConfig, store: S, deliverer: Deliverer) -> Core<S> {
        Core {
            runs: Runs::new(cfg.keep_finished, cfg.history_max_runs),
            history: History::new(cfg.history_max_runs, cfg.history_max_age),
            cfg,
            store,
            deliverer,
            agents: Agents::default(),
            commits: Commits::default(),
            timers: Timers::default(),
            server: ServerJobs::default(),
        }
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<Command>, stop: CancellationToken) {
        let mut beat = self.cfg.heartbeat_interval.map(every);
        let fenced = self.cfg.fenced.clone();
        let clock = self.cfg.clock;
        let mut liveness = self
            .cfg
            .lost_after
            .map(|d| every((d / 4).max(Duration::from_millis(50))));
        // Finished runs past their age leave the store even when nothing else happens.
        let mut trim = Some(every(
            (self.cfg.history_max_age / 10).clamp(Duration::from_secs(1), Duration::from_secs(60)),
        ));
        // When stalled batches are next tried: a deadline kept across turns (a sleep started
        // anew each turn would never end while commands keep coming).
        let mut retry_at: Option<tokio::time::Instant> = None;
        let metrics = Arc::clone(&self.cfg.metrics);
        metrics.leader.set(1);
        metrics
            .epoch
            .set(i64::try_from(self.store.epoch()).unwrap_or(i64::MAX));
        let mut sample = Some(every(SAMPLE_EVERY));
        // Runs' own webhook heartbeats (`submit --heartbeat-interval`), checked this often.
        let mut run_beats = Some(every(RUN_BEAT_CHECK));
        loop {
            if !self.commits.is_stalled() {
                retry_at = None;
            } else if retry_at.is_none() {
                retry_at = Some(tokio::time::Instant::now() + RETRY_STALLED);
            }
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => {
                        // Group commit: handle what is already queued too; the batches are
                        // recorded together below.
                        self.handle(cmd).await;
                        for _ in 1..GROUP {
                            match rx.try_recv() {
                                Ok(cmd) => self.handle(cmd).await,
                                Err(_) => break,
                            }
                        }
                    }
                    None => break,
                },
                _ = tick(&mut beat) => self.heartbeat(),
                _ = tick(&mut liveness) => self.check_liveness(),
                _ = tick(&mut trim) => self.trim_history(),
                _ = tick(&mut sample) => self.sample(),
                _ = tick(&mut run_beats) => self.run_heartbeats(),
                _ = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)), if retry_at.is_some() => {
                    retry_at = None;
                    self.retry_stalled().await;
                }
                _ = clock.sleep_until(self.timers.next()) => self.fire_timers(),
                _ = stop.cancelled() => break,
                _ = fenced.cancelled() => break,
            }
            self.flush().await;
        }
        metrics.leader.set(0);
        metrics.clear_sample();
    }

    /// The engine's state for the metrics' gauges.
    fn sample(&self) {
        let mut s = Sample {
            stalled_batches: self.commits.stalled_len(),
            ..Sample::default()
        };
        self.runs.census(self.cfg.clock.now(), &mut s);
        self.agents.census(&mut s);
        self.cfg.metrics.sample(&s);
    }

    async fn handle(&mut self, cmd: Command) {
        let now = self.cfg.clock.now();
        match cmd {
            Command::Submit { spec, reply } => answer(reply, self.submit(*spec).await),
            Command::Cancel {
                run_id,
                reason,
                by,
                reply,
            } => match self.resolve(&run_id) {
                Ok(id) => answer(reply, self.cancel(&id, reason, by)),
                Err(e) => answer(reply, Err(e)),
            },
            Command::Rerun {
                run_id,
                from_failed,
                reply,
            } => match self.resolve(&run_id) {
                Ok(id) => answer(reply, self.rerun(&id, from_failed).await),
                Err(e) => answer(reply, Err(e)),
            },
            Command::Watch {
                run_id,
                resumed,
                reply,
            } => {
                let watch = match self.resolve(&run_id) {
                    Ok(id) if self.runs.is_trimmed(&id) => {
                        recovery::load_finished(&self.store, &id, &self.cfg)
                            .await
                            .map(|f| registry::watch_finished(&f, resumed))
                    }
                    Ok(id) => self.runs.watch(&id, resumed, now),
                    Err(e) => Err(e),
                };
                answer(reply, watch)
            }
            Command::GetRun { run_id, reply } => {
                let info = match self.resolve(&run_id) {
                    Ok(id) if self.runs.is_trimmed(&id) => {
                        recovery::load_finished(&self.store, &id, &self.cfg)
                            .await
                            .map(|f| f.info)
                    }
                    Ok(id) => self.runs.info(&id, now),
                    Err(e) => Err(e),
                };
                answer(reply, info)
            }
            Command::ListRuns { query, reply } => answer(reply, Ok(self.runs.page(&query, now))),
            Command::ListAgents { reply } => {
                answer(reply, Ok(self.agents.infos(self.cfg.clock.instant())))
            }
            Command::Recover { reply } => answer(reply, self.recover().await),
            Command::TaskSecrets {
                run_id,
                task,
                reply,
            } => answer(reply, self.task_secrets(&run_id, &task).await),
            Command::ReplayWebhooks {
                run_id,
                from,
                url,
                reply,
            } => answer(reply, self.replay(&run_id, from, url.as_deref()).await),
            Command::AgentHello { conn, hello, tx } => self.hello(conn, hello, tx).await,
            Command::FromAgent { conn, msg } => self.agent_said(conn, msg).await,
            Command::AgentGone { conn } => self.agent_gone(conn),
            Command::Server(ask) => self.server(ask).await,
        }
    }

    async fn submit(&mut self, spec: RunSpec) -> Result<Submitted, EngineError> {
        self.submit_as(spec, None).await
    }

    /// A submission, for a Factotum Server job (`job`) or not.
    pub(super) async fn submit_as(
        &mut self,
        spec: RunSpec,
        job: Option<&ServerJob>,
    ) -> Result<Submitted, EngineError> {
        if let Some(existing) = spec
            .idempotency_key
            .as_deref()
            .and_then(|k| self.runs.by_idempotency_key(k))
        {
            return Ok(existing);
        }
        if self.server.draining {
            return Err(EngineError::Draining);
        }
        let (allow_concurrent, key) = (spec.allow_concurrent, spec.idempotency_key.clone());
        let (mut run, mut ops) = runs::submitted(
            spec,
            self.cfg.clock.now(),
            &self.cfg.webhooks,
            match self.cfg.late_watchers {
                true => Watchers::new(self.cfg.watch_buffer),
                false => Watchers::without_history(self.cfg.watch_buffer),
            },
            self.store.keeps(),
        );
        // The schema's `factfile` is at most 1,000,000 characters, and every event carries it.
        let encoded = run.meta.factfile_base64.len();
        if !run.webhooks.is_empty() && encoded > MAX_FACTFILE_FIELD {
            return Err(EngineError::TooLargeForWebhooks(encoded));
        }
        if !allow_concurrent {
            if let Some(active) = self.runs.active_of_job(&run.meta.job_reference) {
                return Err(EngineError::AlreadyActive(active.id.to_string()));
            }
        }
        // A server job's duplicate check and record: in this turn and this transaction.
        let server_record = self.server_record(job, &run.id)?;
        ops.extend(server_record.as_ref().map(|(op, _)| op.clone()));
        // Acknowledged only once recorded: what was asked, the factfile, the initial state.
        self.store.commit(ops).await?;
        if let Some((_, record)) = server_record {
            self.server.remember(record);
        }
        let id = Arc::clone(&run.id);
        if let Some(key) = key {
            self.runs.remember_key(key, id.to_string());
        }
        let submitted = Submitted {
            run_id: id.to_string(),
            job_reference: run.meta.job_reference.clone(),
            existing: false,
            watch: run.watch(),
        };
        tracing::info!(
            run = %id,
            job = %run.meta.job_name,
            tasks = run.state.tasks().len(),
            "run submitted"
        );
        self.runs.active.insert(Arc::clone(&id), run);
        self.apply(&id, Event::Start);
        self.dispatch(&id);
        Ok(submitted)
    }

    /// The run an id or a unique id prefix names; an id the engine does not hold in memory is
    /// passed on as it is (a re-run reads the store, and anything else reports it missing).
    fn resolve(&self, run_id: &str) -> Result<String, EngineError> {
        match self.runs.resolve(run_id) {
            Ok(id) => Ok(id.to_string()),
            Err(EngineError::NoSuchRun(_)) => Ok(run_id.to_string()),
            Err(e) => Err(e),
        }
    }

    fn cancel(
        &mut self,
        run_id: &str,
        reason: String,
        by: Option<String>,
    ) -> Result<(), EngineError> {
        let id: Arc<str> = Arc::from(run_id);
        let Some(run) = self.runs.active.get_mut(&id) else {
            // Cancelling a cancelled run again is what was asked: done. Any other finished
            // run cannot be cancelled (FAILED_PRECONDITION), which the caller must hear.
            return match self.runs.is_finished(run_id) {
                true if self.runs.was_cancelled(run_id) => Ok(()),
                true => Err(EngineError::Finished(run_id.to_string())),
                false => Err(EngineError::NoSuchRun(run_id.to_string())),
            };
        };
        // The first cancel is the one the run keeps (a second changes nothing).
        if run.state.cancelled().is_none() {
            run.cancelled_by = by;
        }
        self.apply(&id, Event::Cancel { reason });
        Ok(())
    }

    async fn rerun(&mut self, old: &str, from_failed: bool) -> Result<Submitted, EngineError> {
        if self.runs.active.contains_key(old) {
            return Err(EngineError::StillActive(old.to_string()));
        }
        let spec = recovery::rerun_spec(&self.store, old, from_failed).await?;
        self.submit(spec).await
    }

    /// Takes over the active runs recorded in the store.
    async fn recover(&mut self) -> Result<usize, EngineError> {
        self.load_server_state().await?;
        let active = &self.runs.active;
        let found = recovery::load(&self.store, &self.cfg, |id| active.contains_key(id)).await?;
        let grace = self.cfg.clock.instant() + self.cfg.failover_grace;
        let taken = found.active.len();
        for run in found.active {
            let running = recovery::running_attempts(&run);
            let mut holders = match running.is_empty() {
                true => HashMap::new(),
                false => self.holders(&run.id).await,
            };
            for (task, attempt) in running {
                let holder = holders.remove(&task).filter(|h| h.attempt == attempt);
                self.agents
                    .expect((Arc::clone(&run.id), task, attempt), grace, holder);
            }
            // Deadlines are absolute times from the records: due ones fire at once.
            self.timers.set(&run.id, run.state.next_deadline());
            let mut run = run;
            run.state.ready_from(self.cfg.clock.now());
            self.runs.active.insert(Arc::clone(&run.id), run);
        }
        for (id, ended) in found.ended {
            self.history.record(id, ended);
        }
        self.runs.keep_all(found.finished);
        self.trim_history();
        for (key, run) in found.idempotency {
            self.runs.remember_key(key, run);
        }
        self.deliverer.restore(found.dead, found.disabled);
        let mut closed = HashSet::new();
        for d in found
            .outbox
            .into_iter()
            .filter(|d| !self.deliverer.is_dead(&d.outbox_key))
        {
            if !self.runs.active.contains_key(&d.run_id) {
                closed.insert(Arc::clone(&d.run_id));
            }
            self.deliverer.send(d);
        }
        for run in closed {
            self.deliverer.close_run(&run);
        }
        self.dispatch_all();
        Ok(taken)
    }

    /// The runs whose own webhook heartbeat is due send one.
    fn run_heartbeats(&mut self) {
        let now = self.cfg.clock.now();
        let due: Vec<Arc<str>> = (self.runs.active.iter_mut())
            .filter_map(|(id, run)| run.beat_due(now).then(|| Arc::clone(id)))
            .collect();
        for id in due {
            self.apply(&id, Event::Heartbeat);
        }
    }

    fn heartbeat(&mut self) {
        let ids: Vec<Arc<str>> = self.runs.active.keys().cloned().collect();
        for id in ids {
            self.apply(&id, Event::Heartbeat);
        }
    }

    /// Fires every timer that is due: the runs see the time, then ready tasks are placed.
    fn fire_timers(&mut self) {
        for id in self.timers.due(self.cfg.clock.now()) {
            self.apply(&id, Event::Tick);
            self.dispatch(&id);
        }
    }

    /// Applies one event to one run and carries out the actions.
    pub(super) fn apply(&mut self, id: &Arc<str>, event: Event) {
        let now = self.cfg.clock.now();
        let Some(run) = self.runs.get_mut(id) else {
            return;
        };
        let actions = run.state.apply(event, now);
        self.perform(id, actions, &[]);
    }

    /// Turns a run's actions into one batch: store writes and webhook events now, messages to
    /// agents once they are recorded. `placed` names the agent of each task being leased.
    fn perform(&mut self, id: &Arc<str>, actions: Vec<Action>, placed: &[(TaskId, Arc<str>)]) {
        let Some(run) = self.runs.active.get_mut(id) else {
            return;
        };
        let placed: HashMap<TaskId, &Arc<str>> = placed.iter().map(|(t, a)| (*t, a)).collect();
        let (epoch, keeps) = (self.store.epoch(), self.store.keeps());
        let metrics = Arc::clone(&self.cfg.metrics);
        let now = self.cfg.clock.now();
        let mut batch = Batch {
            run: Some(Arc::clone(id)),
            ..Batch::default()
        };
        // A batch of heartbeats alone writes nothing (no heartbeats in the store).
        let mut only_beats = true;
        for action in actions {
            only_beats &= matches!(&action, Action::Emit(u) if u.is_heartbeat());
            match action {
                Action::Emit(update) => {
                    metrics.observe(&run.state, &update);
                    let endpoints = self.deliverer.endpoints();
                    let ops = keeps.then_some(&mut batch.ops);
                    run.record(&update, endpoints, ops, &mut batch.deliveries)
                }
                Action::Dispatch { task, attempt } => {
                    let (Some(agent), Some(spec)) =
                        (placed.get(&task), run.state.plan().task(task))
                    else {
                        continue;
                    };
                    if let Some(ready) = run.state.task(task).and_then(|r| r.ready_at) {
                        let waited = (now - ready).to_std().unwrap_or_default();
                        metrics.task_start_latency.observe(waited.as_secs_f64());
                    }
                    let r = wire::lease_ref(id, task, attempt, epoch);
                    let lease = wire::lease(r, spec, run.max_output, run.dry_run);
                    self.agents.lease((Arc::clone(id), task, attempt), agent);
                    if keeps {
                        // Who holds it, for a new leader (see `HolderRecord`).
                        let holder = self.agents.holder_record(agent, attempt);
                        batch.ops.push(holder.put(id, task));
                        // Which agent ran each attempt, kept with the run: where its log is.
                        batch.ops.push(super::logs::attempt_record(
                            id, task, attempt, &spec.name, agent,
                        ));
                    }
                    run.task_agent.insert(task, Arc::clone(agent));
                    batch.sends.push((Arc::clone(agent), lease));
                }
                Action::Kill { task, attempt } => {
                    if let Some(agent) = self.agents.holder(&(Arc::clone(id), task, attempt)) {
                        let r = wire::lease_ref(id, task, attempt, epoch);
                        batch.sends.push((Arc::clone(agent), wire::cancel(r)));
                    }
                }
                Action::RunEnded(state) => batch.ended = Some(state),
            }
        }
        if keeps && !only_beats {
            batch.ops.push(run.state_op());
        }
        self.timers.set(id, run.state.next_deadline());
        self.commits.push(batch);
    }

    pub(super) fn dispatch_all(&mut self) {
        for id in self.runs.with_ready() {
            self.dispatch(&id);
        }
    }

    /// Leases the run's ready tasks (as many as its `maxParallel` allows) where placement puts
    /// them, and remembers why the others wait.
    pub(super) fn dispatch(&mut self, id: &Arc<str>) {
        if self.commits.is_stalled() {
            return; // no new leases while the store cannot record them
        }
        let Some(run) = self.runs.active.get_mut(id) else {
            return;
        };
        if run.state.ready().is_empty() {
            return;
        }
        let plan = Arc::clone(run.state.plan());
        let ask = Ask {
            placement: run.placement,
            constraints: &run.constraints,
            sticky: run.sticky.as_ref(),
            tasks: run
                .state
                .leasable()
                .iter()
                .map(|&t| {
                    let task = &plan.tasks[t as usize];
                    Want {
                        task: t,
                        name: &task.name,
                        constraints: &task.policy().constraints,
                    }
                })
                .collect(),
            held_back: run.state.ready().len() - run.state.leasable().len(),
            max_parallel: plan.max_parallel.unwrap_or_default(),
        };
        let placed = placement::place(&ask, &self.agents.candidates());
        if let Some(agent) = placed.new_sticky {
            run.sticky = Some(agent);
        }
        run.waiting_reason = placed.waiting;
        if placed.leases.is_empty() {
            return;
        }
        let tasks: Vec<TaskId> = placed.leases.iter().map(|(t, _)| *t).collect();
        let actions = run
            .state
            .apply(Event::Lease { tasks }, self.cfg.clock.now());
        self.perform(id, actions, &placed.leases);
    }
}

fn every(d: Duration) -> tokio::time::Interval {
    let mut i = tokio::time::interval_at(tokio::time::Instant::now() + d, d);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    i
}

async fn tick(beat: &mut Option<tokio::time::Interval>) {
    match beat {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}
