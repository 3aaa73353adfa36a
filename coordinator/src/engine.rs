//! The engine: the single writer over every run.
//!
//! One task owns all run state. Everything that happens — a submission, an agent's message, a
//! cancel, a heartbeat tick — arrives as a command on one channel, becomes an event for the run's
//! pure state machine, and the actions that come back are carried out here: state and webhook
//! outbox committed to the store in one batch, leases sent to agents, payloads queued for
//! delivery, watchers told.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use factotum_common::dag::{Plan, TaskId};
use factotum_common::format::timestamp;
use factotum_common::run::{
    Action, Event, JobState, Outcome, RunOptions, RunState, Stream, TaskResult, TaskState, Update,
    UpdateKind,
};
use factotum_common::webhook::{payload, RunMeta, TaskStateJson};
use factotum_proto::{
    agent_message, coordinator_message, finished, AgentMessage, CoordinatorMessage, Hello, LeaseRef,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::store::{keys, Store, StoreOp, MAX_OPS_PER_COMMIT};
use crate::webhook::{Deliverer, Delivery, Undelivered};

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Webhook URLs every run reports to (in addition to each run's own).
    pub webhooks: Vec<String>,
    /// Send RUNNING → RUNNING task updates with the output so far at this interval.
    pub heartbeat_interval: Option<Duration>,
    /// Time between TERM and KILL when an attempt is cancelled.
    pub kill_grace: Duration,
    /// Fencing epoch stamped on leases (0 for a single node).
    pub epoch: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            webhooks: vec![],
            heartbeat_interval: None,
            kill_grace: Duration::from_secs(10),
            epoch: 0,
        }
    }
}

/// A run to start.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// The templated compact factfile (for `jobReference` and the payloads' `factfile`).
    pub compact_factfile: String,
    pub plan: Arc<Plan>,
    pub tags: BTreeMap<String, String>,
    /// This run's own webhook URLs.
    pub webhooks: Vec<String>,
    /// Characters of output kept per stream.
    pub max_output: usize,
    /// Simulate every task with exit code 0.
    pub dry_run: bool,
    /// A fresh UUIDv4 string; the run's reference is its SHA-256.
    pub uuid: String,
}

/// What a watcher of a run sees, in order.
#[derive(Debug, Clone)]
pub enum WatchEvent {
    Job {
        previous: Option<JobState>,
        current: JobState,
    },
    Tasks(Vec<TaskChange>),
    Output {
        task: Arc<str>,
        stream: Stream,
        line: String,
    },
    Done(RunSummary),
}

/// A task transition with what is known about the task right after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskChange {
    pub name: Arc<str>,
    pub previous: TaskState,
    pub current: TaskState,
    pub started: Option<DateTime<Utc>>,
    pub duration: Option<Duration>,
    pub return_code: Option<i32>,
    pub error_message: Option<String>,
}

/// The end of a run.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub run_id: String,
    pub state: JobState,
    /// Every task with its final state, in display order.
    pub tasks: Vec<(Arc<str>, TaskState)>,
    pub duration: Duration,
    pub first_failed: Option<Arc<str>>,
    pub first_no_op: Option<Arc<str>>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the engine has stopped")]
    Stopped,
    #[error("no active run '{0}'")]
    NoSuchRun(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// A handle to the engine; cheap to clone.
#[derive(Clone, Debug)]
pub struct Engine {
    tx: mpsc::UnboundedSender<Command>,
    deliverer: Deliverer,
}

/// A submitted run: its id and the stream of what happens to it.
#[derive(Debug)]
pub struct Submitted {
    pub run_id: String,
    pub watch: mpsc::UnboundedReceiver<WatchEvent>,
}

enum Command {
    Submit {
        spec: Box<RunSpec>,
        reply: oneshot::Sender<Result<Submitted, EngineError>>,
    },
    Cancel {
        run_id: String,
        reason: String,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    AgentHello {
        conn: u64,
        hello: Hello,
        tx: mpsc::Sender<CoordinatorMessage>,
    },
    FromAgent {
        conn: u64,
        msg: agent_message::Msg,
    },
    AgentGone {
        conn: u64,
    },
}

impl Engine {
    /// Starts the engine task. It stops when `shutdown` fires.
    pub fn start<S: Store>(config: EngineConfig, store: S, shutdown: CancellationToken) -> Engine {
        let (tx, rx) = mpsc::unbounded_channel();
        let deliverer = Deliverer::new(store.clone(), shutdown.clone());
        let core = Core {
            cfg: config,
            store,
            deliverer: deliverer.clone(),
            runs: HashMap::new(),
            agents: HashMap::new(),
            leases: HashMap::new(),
        };
        tokio::spawn(core.run(rx, shutdown));
        Engine { tx, deliverer }
    }

    /// Starts a run; returns once it is committed.
    pub async fn submit(&self, spec: RunSpec) -> Result<Submitted, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Submit {
                spec: Box::new(spec),
                reply,
            })
            .map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    /// Cancels a run: nothing more starts, running attempts are killed, the rest is skipped.
    pub async fn cancel(&self, run_id: &str, reason: &str) -> Result<(), EngineError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Cancel {
                run_id: run_id.to_string(),
                reason: reason.to_string(),
                reply,
            })
            .map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    /// Connects an agent session: `from_agent` carries its messages in (the first must be
    /// `Hello`), `to_agent` takes the engine's messages out.
    pub fn attach_agent(
        &self,
        mut from_agent: mpsc::Receiver<AgentMessage>,
        to_agent: mpsc::Sender<CoordinatorMessage>,
    ) {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let conn = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let mut hello_seen = false;
            while let Some(msg) = from_agent.recv().await {
                let Some(msg) = msg.msg else { continue };
                let cmd = match msg {
                    agent_message::Msg::Hello(hello) if !hello_seen => {
                        hello_seen = true;
                        Command::AgentHello {
                            conn,
                            hello,
                            tx: to_agent.clone(),
                        }
                    }
                    _ if !hello_seen => {
                        tracing::warn!(conn, "agent spoke before Hello; closing its session");
                        break;
                    }
                    msg => Command::FromAgent { conn, msg },
                };
                if tx.send(cmd).is_err() {
                    return;
                }
            }
            let _ = tx.send(Command::AgentGone { conn });
        });
    }

    /// Waits (at most `timeout`) for queued webhooks; returns what is still undelivered.
    pub async fn flush_webhooks(&self, timeout: Duration) -> Vec<Undelivered> {
        self.deliverer.flush(timeout).await
    }
}

struct Run {
    id: Arc<str>,
    state: RunState,
    meta: RunMeta,
    webhooks: Vec<Arc<str>>,
    max_output: u32,
    dry_run: bool,
    watchers: Vec<mpsc::UnboundedSender<WatchEvent>>,
    /// The agent that took the run's first task (sticky placement).
    sticky: Option<u64>,
    outbox_seq: u64,
}

struct Agent {
    hello: Hello,
    tx: mpsc::Sender<CoordinatorMessage>,
    in_use: u32,
}

impl Agent {
    fn has_slot(&self) -> bool {
        self.hello.slots == 0 || self.in_use < self.hello.slots
    }
}

type AttemptKey = (Arc<str>, TaskId, u32);

struct Core<S: Store> {
    cfg: EngineConfig,
    store: S,
    deliverer: Deliverer,
    runs: HashMap<Arc<str>, Run>,
    agents: HashMap<u64, Agent>,
    /// Which agent holds each live attempt.
    leases: HashMap<AttemptKey, u64>,
}

impl<S: Store> Core<S> {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>, shutdown: CancellationToken) {
        let mut beat = self.cfg.heartbeat_interval.map(|d| {
            let mut i = tokio::time::interval_at(tokio::time::Instant::now() + d, d);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd).await,
                    None => break,
                },
                _ = tick(&mut beat) => {
                    let ids: Vec<Arc<str>> = self.runs.keys().cloned().collect();
                    for id in ids {
                        self.apply(&id, Event::Heartbeat).await;
                    }
                }
                _ = shutdown.cancelled() => break,
            }
        }
    }

    async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Submit { spec, reply } => {
                let r = self.submit(*spec).await;
                let _ = reply.send(r);
            }
            Command::Cancel {
                run_id,
                reason,
                reply,
            } => {
                let id: Arc<str> = Arc::from(run_id.as_str());
                if !self.runs.contains_key(&id) {
                    let _ = reply.send(Err(EngineError::NoSuchRun(run_id)));
                    return;
                }
                self.apply(&id, Event::Cancel { reason }).await;
                let _ = reply.send(Ok(()));
            }
            Command::AgentHello { conn, hello, tx } => {
                tracing::info!(agent = %hello.agent_id, host = %hello.hostname, slots = hello.slots, "agent connected");
                let welcome = CoordinatorMessage {
                    msg: Some(coordinator_message::Msg::Welcome(factotum_proto::Welcome {
                        epoch: self.cfg.epoch,
                        heartbeat_ms: 0,
                        lost_after_ms: 0,
                    })),
                };
                let _ = tx.send(welcome).await;
                self.agents.insert(
                    conn,
                    Agent {
                        hello,
                        tx,
                        in_use: 0,
                    },
                );
                self.dispatch_all().await;
            }
            Command::FromAgent { conn, msg } => self.agent_message(conn, msg).await,
            Command::AgentGone { conn } => {
                let Some(agent) = self.agents.remove(&conn) else {
                    return;
                };
                let lost: Vec<AttemptKey> = self
                    .leases
                    .iter()
                    .filter(|(_, &c)| c == conn)
                    .map(|(k, _)| k.clone())
                    .collect();
                if lost.is_empty() {
                    tracing::info!(agent = %agent.hello.agent_id, "agent disconnected");
                } else {
                    tracing::warn!(agent = %agent.hello.agent_id, attempts = lost.len(), "agent lost with attempts running");
                }
                for (run, task, attempt) in lost {
                    self.leases.remove(&(run.clone(), task, attempt));
                    let result = TaskResult {
                        outcome: Outcome::Lost(format!("agent {} lost", agent.hello.agent_id)),
                        stdout: String::new(),
                        stderr: String::new(),
                        duration: Duration::ZERO,
                    };
                    self.apply(
                        &run,
                        Event::Finished {
                            task,
                            attempt,
                            result,
                        },
                    )
                    .await;
                }
                for run in self.runs.values_mut() {
                    if run.sticky == Some(conn) {
                        run.sticky = None;
                    }
                }
                self.dispatch_all().await;
            }
        }
    }

    async fn submit(&mut self, spec: RunSpec) -> Result<Submitted, EngineError> {
        let now = Utc::now();
        let run_ref = factotum_common::reference::run_reference(&spec.uuid);
        let meta = RunMeta::new(
            &spec.compact_factfile,
            &spec.plan.job_name,
            spec.tags.clone(),
            run_ref.clone(),
            now,
        );
        let webhooks: Vec<Arc<str>> = self
            .cfg
            .webhooks
            .iter()
            .chain(&spec.webhooks)
            .map(|u| Arc::from(u.as_str()))
            .collect();
        let opts = RunOptions {
            max_output: spec.max_output,
            snapshots: !webhooks.is_empty(),
        };
        let id: Arc<str> = Arc::from(run_ref.as_str());
        let spec_doc = serde_json::json!({
            "jobName": spec.plan.job_name,
            "jobReference": meta.job_reference,
            "factfile": meta.factfile_base64,
            "tags": spec.tags,
            "startTime": timestamp(now),
            "tasks": spec.plan.tasks.iter().map(|t| t.name.as_ref()).collect::<Vec<_>>(),
        });
        self.store
            .commit(vec![StoreOp::Put {
                key: keys::run_spec(&id),
                value: serde_json::to_vec(&spec_doc).unwrap_or_default(),
            }])
            .await?;
        let (wtx, wrx) = mpsc::unbounded_channel();
        let run = Run {
            id: Arc::clone(&id),
            state: RunState::new(Arc::clone(&spec.plan), now, opts),
            meta,
            webhooks,
            max_output: u32::try_from(spec.max_output).unwrap_or(u32::MAX),
            dry_run: spec.dry_run,
            watchers: vec![wtx],
            sticky: None,
            outbox_seq: 0,
        };
        self.runs.insert(Arc::clone(&id), run);
        self.apply(&id, Event::Start).await;
        self.dispatch(&id).await;
        Ok(Submitted {
            run_id: run_ref,
            watch: wrx,
        })
    }

    async fn agent_message(&mut self, conn: u64, msg: agent_message::Msg) {
        match msg {
            agent_message::Msg::Hello(_)
            | agent_message::Msg::Heartbeat(_)
            | agent_message::Msg::Started(_) => {}
            agent_message::Msg::Output(o) => {
                let Some(r) = o.lease else { return };
                let stream = if o.stream == factotum_proto::Stream::Stderr as i32 {
                    Stream::Stderr
                } else {
                    Stream::Stdout
                };
                let id: Arc<str> = Arc::from(r.run_id.as_str());
                let Some(run) = self.runs.get_mut(&id) else {
                    return;
                };
                let Some(task) = run.state.plan().task(r.task) else {
                    return;
                };
                if run.state.task(r.task).map(|t| t.attempt) != Some(r.attempt) {
                    return;
                }
                let name = Arc::clone(&task.name);
                if self.cfg.heartbeat_interval.is_some() {
                    let now = Utc::now();
                    let ev = Event::Output {
                        task: r.task,
                        attempt: r.attempt,
                        stream,
                        line: o.line.clone(),
                    };
                    run.state.apply(ev, now);
                }
                tell(
                    &mut run.watchers,
                    WatchEvent::Output {
                        task: name,
                        stream,
                        line: o.line,
                    },
                );
            }
            agent_message::Msg::Finished(f) => {
                let Some(r) = f.lease else { return };
                let id: Arc<str> = Arc::from(r.run_id.as_str());
                if self
                    .leases
                    .remove(&(Arc::clone(&id), r.task, r.attempt))
                    .is_some()
                {
                    if let Some(agent) = self.agents.get_mut(&conn) {
                        agent.in_use = agent.in_use.saturating_sub(1);
                    }
                }
                if let Some(agent) = self.agents.get(&conn) {
                    let ack = CoordinatorMessage {
                        msg: Some(coordinator_message::Msg::Ack(factotum_proto::Ack {
                            lease: Some(r.clone()),
                        })),
                    };
                    let _ = agent.tx.send(ack).await;
                }
                let outcome = match f.outcome {
                    Some(finished::Outcome::ExitCode(c)) => Outcome::Exited(c),
                    Some(finished::Outcome::SpawnError(e)) => Outcome::SpawnFailed(e),
                    None => Outcome::SpawnFailed("the agent reported no outcome".into()),
                };
                let result = TaskResult {
                    outcome,
                    stdout: f.stdout_tail,
                    stderr: f.stderr_tail,
                    duration: Duration::from_nanos(f.duration_nanos),
                };
                self.apply(
                    &id,
                    Event::Finished {
                        task: r.task,
                        attempt: r.attempt,
                        result,
                    },
                )
                .await;
                self.dispatch_all().await;
            }
        }
    }

    /// Applies one event to one run and carries out the actions.
    async fn apply(&mut self, id: &Arc<str>, event: Event) {
        let now = Utc::now();
        let Some(run) = self.runs.get_mut(id) else {
            return;
        };
        let actions = run.state.apply(event, now);
        self.perform(id, actions, None).await;
    }

    async fn perform(
        &mut self,
        id: &Arc<str>,
        actions: Vec<Action>,
        placed: Option<&HashMap<TaskId, u64>>,
    ) {
        let Some(run) = self.runs.get_mut(id) else {
            return;
        };
        let mut ops: Vec<StoreOp> = vec![];
        let mut deliveries: Vec<Delivery> = vec![];
        let mut sends: Vec<(u64, CoordinatorMessage)> = vec![];
        let mut finished: Option<JobState> = None;
        for action in actions {
            match action {
                Action::Emit(update) => {
                    record(run, &update, &mut ops, &mut deliveries);
                    let ev = watch_event(run, &update);
                    tell(&mut run.watchers, ev);
                }
                Action::Dispatch { task, attempt } => {
                    let Some(&conn) = placed.and_then(|p| p.get(&task)) else {
                        continue;
                    };
                    let Some(spec) = run.state.plan().task(task) else {
                        continue;
                    };
                    let lease = factotum_proto::Lease {
                        lease: Some(LeaseRef {
                            run_id: id.to_string(),
                            task,
                            attempt,
                            epoch: self.cfg.epoch,
                        }),
                        task_name: spec.name.to_string(),
                        command_line: spec.command_line.clone(),
                        max_output: run.max_output,
                        dry_run: run.dry_run,
                    };
                    self.leases.insert((Arc::clone(id), task, attempt), conn);
                    sends.push((
                        conn,
                        CoordinatorMessage {
                            msg: Some(coordinator_message::Msg::Lease(lease)),
                        },
                    ));
                }
                Action::Kill { task, attempt } => {
                    if let Some(&conn) = self.leases.get(&(Arc::clone(id), task, attempt)) {
                        let cancel = factotum_proto::Cancel {
                            lease: Some(LeaseRef {
                                run_id: id.to_string(),
                                task,
                                attempt,
                                epoch: self.cfg.epoch,
                            }),
                            grace_ms: u32::try_from(self.cfg.kill_grace.as_millis())
                                .unwrap_or(u32::MAX),
                        };
                        sends.push((
                            conn,
                            CoordinatorMessage {
                                msg: Some(coordinator_message::Msg::Cancel(cancel)),
                            },
                        ));
                    }
                }
                Action::Finished(state) => finished = Some(state),
            }
        }
        if let Some(state) = finished {
            ops.push(StoreOp::Put {
                key: keys::run_state(id),
                value: state.as_str().as_bytes().to_vec(),
            });
        }
        for chunk in chunks(ops) {
            if let Err(e) = self.store.commit(chunk).await {
                tracing::error!(run = %id, error = %e, "could not record the run's state");
            }
        }
        for d in deliveries {
            self.deliverer.send(d);
        }
        for (conn, msg) in sends {
            if let Some(agent) = self.agents.get(&conn) {
                let _ = agent.tx.send(msg).await;
            }
        }
        if let Some(state) = finished {
            if let Some(mut run) = self.runs.remove(id) {
                let summary = summarize(&run, state);
                tell(&mut run.watchers, WatchEvent::Done(summary));
                self.deliverer.close_run(id);
            }
        }
    }

    async fn dispatch_all(&mut self) {
        let ids: Vec<Arc<str>> = self
            .runs
            .iter()
            .filter(|(_, r)| !r.state.ready().is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        for id in ids {
            self.dispatch(&id).await;
        }
    }

    /// Leases the run's ready tasks to agents with free slots. Sticky: once a run has an agent,
    /// its tasks wait for that agent's slots while it is connected.
    async fn dispatch(&mut self, id: &Arc<str>) {
        let Some(run) = self.runs.get_mut(id) else {
            return;
        };
        if run.state.ready().is_empty() || self.agents.is_empty() {
            return;
        }
        let mut placed: HashMap<TaskId, u64> = HashMap::new();
        for &task in run.state.ready() {
            let conn = match run.sticky.filter(|c| self.agents.contains_key(c)) {
                Some(c) => c,
                None => match self
                    .agents
                    .iter()
                    .filter(|(_, a)| a.has_slot())
                    .min_by_key(|(c, a)| (a.in_use, **c))
                {
                    Some((&c, _)) => c,
                    None => break,
                },
            };
            let Some(agent) = self.agents.get_mut(&conn) else {
                break;
            };
            if !agent.has_slot() {
                break;
            }
            agent.in_use += 1;
            run.sticky = Some(conn);
            placed.insert(task, conn);
        }
        if placed.is_empty() {
            return;
        }
        let tasks: Vec<TaskId> = placed.keys().copied().collect();
        let actions = run.state.apply(Event::Lease { tasks }, Utc::now());
        self.perform(id, actions, Some(&placed)).await;
    }
}

/// A task's record in the store (`runs/<run>/tasks/<task>`): its `taskStates` entry and attempt.
#[derive(serde::Serialize)]
struct StoredTask<'a> {
    attempt: u32,
    #[serde(flatten)]
    state: TaskStateJson<'a>,
}

/// Store writes and webhook payloads for one update.
fn record(run: &mut Run, update: &Update, ops: &mut Vec<StoreOp>, deliveries: &mut Vec<Delivery>) {
    match &update.kind {
        UpdateKind::Job { current, .. } => ops.push(StoreOp::Put {
            key: keys::run_state(&run.id),
            value: current.as_str().as_bytes().to_vec(),
        }),
        UpdateKind::Tasks(ts) => {
            for t in ts {
                if t.previous == t.current && t.current == TaskState::Running {
                    continue; // heartbeats change nothing worth storing
                }
                if let (Some(rec), Some(spec)) =
                    (run.state.task(t.task), run.state.plan().task(t.task))
                {
                    let doc = StoredTask {
                        attempt: rec.attempt,
                        state: TaskStateJson::from_record(&spec.name, rec),
                    };
                    ops.push(StoreOp::Put {
                        key: keys::task(&run.id, t.task),
                        value: serde_json::to_vec(&doc).unwrap_or_default(),
                    });
                }
            }
        }
    }
    if run.webhooks.is_empty() {
        return;
    }
    let plan = Arc::clone(run.state.plan());
    let names = move |t: u32| plan.task(t).map(|t| t.name.to_string()).unwrap_or_default();
    let Some(body) = payload(&run.meta, update, &names) else {
        return;
    };
    let body: Arc<str> = Arc::from(body);
    let seq = run.outbox_seq;
    run.outbox_seq += 1;
    for (i, url) in run.webhooks.iter().enumerate() {
        let outbox_key = format!("{}/{i}", keys::outbox(&run.id, seq));
        ops.push(StoreOp::Put {
            key: outbox_key.clone(),
            value: format!("{url}\n{body}").into_bytes(),
        });
        deliveries.push(Delivery {
            url: Arc::clone(url),
            run_id: Arc::clone(&run.id),
            event_id: format!("{}-{seq}", run.id),
            body: Arc::clone(&body),
            outbox_key,
        });
    }
}

fn watch_event(run: &Run, update: &Update) -> WatchEvent {
    match &update.kind {
        UpdateKind::Job { previous, current } => WatchEvent::Job {
            previous: *previous,
            current: *current,
        },
        UpdateKind::Tasks(ts) => WatchEvent::Tasks(
            ts.iter()
                .filter_map(|t| {
                    let rec = run.state.task(t.task)?;
                    Some(TaskChange {
                        name: Arc::clone(&run.state.plan().task(t.task)?.name),
                        previous: t.previous,
                        current: t.current,
                        started: rec.started,
                        duration: rec.duration,
                        return_code: rec.return_code,
                        error_message: rec.error_message.clone(),
                    })
                })
                .collect(),
        ),
    }
}

fn summarize(run: &Run, state: JobState) -> RunSummary {
    let plan = run.state.plan();
    let name = |t: Option<TaskId>| t.and_then(|t| plan.task(t)).map(|t| Arc::clone(&t.name));
    RunSummary {
        run_id: run.id.to_string(),
        state,
        tasks: plan
            .order
            .iter()
            .filter_map(|&t| Some((Arc::clone(&plan.task(t)?.name), run.state.task(t)?.state)))
            .collect(),
        duration: (Utc::now() - run.state.started_at())
            .to_std()
            .unwrap_or_default(),
        first_failed: name(run.state.first_failed()),
        first_no_op: name(run.state.first_no_op()),
    }
}

/// Sends to every watcher, forgetting the ones that went away.
fn tell(watchers: &mut Vec<mpsc::UnboundedSender<WatchEvent>>, ev: WatchEvent) {
    match watchers.len() {
        0 => {}
        1 => {
            if watchers[0].send(ev).is_err() {
                watchers.clear();
            }
        }
        _ => watchers.retain(|w| w.send(ev.clone()).is_ok()),
    }
}

fn chunks(mut ops: Vec<StoreOp>) -> Vec<Vec<StoreOp>> {
    let mut out = vec![];
    while ops.len() > MAX_OPS_PER_COMMIT {
        let rest = ops.split_off(MAX_OPS_PER_COMMIT);
        out.push(std::mem::replace(&mut ops, rest));
    }
    if !ops.is_empty() {
        out.push(ops);
    }
    out
}

async fn tick(beat: &mut Option<tokio::time::Interval>) {
    match beat {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// A fresh UUIDv4 string (a run's reference is its SHA-256).
pub fn new_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}
