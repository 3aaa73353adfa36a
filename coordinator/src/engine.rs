//! The engine: the single writer over every run.
//!
//! One task owns all run state. Everything that happens — a submission, an agent's message, a
//! cancel, a heartbeat tick — arrives as a command on one channel, becomes an event for the run's
//! pure state machine, and the actions that come back are carried out here: state and webhook
//! outbox committed to the store in one batch, leases sent to agents, payloads queued for
//! delivery, watchers told.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
pub use factotum_common::constraint::Placement;
use factotum_common::constraint::{Constraint, Identity};
use factotum_common::dag::{Plan, TaskId};
use factotum_common::run::{
    Action, Event, JobState, Outcome, RunOptions, RunState, Stream, TaskResult, TaskState, Update,
    UpdateKind,
};
use factotum_common::webhook::{payload, RunMeta};
use factotum_proto::{
    agent_message, attempt_result, coordinator_message, AgentMessage, CoordinatorMessage, Hello,
    LeaseRef,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::persist;
use crate::store::{keys, Store, StoreError, StoreOp, MAX_OPS_PER_COMMIT};
use crate::webhook::{Deliverer, Delivery, Undelivered};

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Webhook URLs every run reports to (in addition to each run's own).
    pub webhooks: Vec<String>,
    /// Send RUNNING → RUNNING task updates with the output so far at this interval.
    pub heartbeat_interval: Option<Duration>,
    /// Fencing epoch stamped on leases (0 for a single node).
    pub epoch: u64,
    /// An agent silent for this long is lost and its attempts fail (`None`: never).
    pub lost_after: Option<Duration>,
    /// How often agents are asked to send a heartbeat.
    pub agent_heartbeat: Duration,
    /// Finished runs kept for `status` and `runs`.
    pub keep_finished: usize,
    /// After loading runs from the store, how long agents have to re-attach the attempts
    /// recorded as running before those count as lost.
    pub failover_grace: Duration,
    /// Cancelled by the engine when a fenced write fails: it is no longer the leader and stops.
    pub fenced: CancellationToken,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            webhooks: vec![],
            heartbeat_interval: None,
            epoch: 0,
            lost_after: None,
            agent_heartbeat: Duration::from_secs(2),
            keep_finished: 1000,
            failover_grace: Duration::from_secs(30),
            fenced: CancellationToken::new(),
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
    /// Every one must hold for an agent to take the run's tasks.
    pub constraints: Vec<Constraint>,
    pub placement: Placement,
    /// Start even if a run of the same job (same `jobReference`) is still active.
    pub allow_concurrent: bool,
    /// A repeated submission with this key gets the run the first one started.
    pub idempotency_key: Option<String>,
    /// A fresh UUIDv4 string; the run's reference is its SHA-256.
    pub uuid: String,
    /// The run this one re-runs (`factotum rerun`).
    pub rerun_of: Option<String>,
}

/// A run as `status` shows it.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub run_id: String,
    pub job_name: String,
    pub job_reference: String,
    pub state: JobState,
    pub start_time: DateTime<Utc>,
    pub duration: Duration,
    /// Why ready tasks are not running.
    pub waiting_reason: Option<String>,
    pub tasks: Vec<TaskInfo>,
    pub tags: BTreeMap<String, String>,
    /// The run this one re-runs.
    pub rerun_of: Option<String>,
}

#[derive(Debug, Clone)]
pub struct TaskInfo {
    pub name: Arc<str>,
    pub state: TaskState,
    pub attempt: u32,
    pub agent: Option<String>,
    pub started: Option<DateTime<Utc>>,
    pub duration: Option<Duration>,
    pub return_code: Option<i32>,
    pub error_message: Option<String>,
}

/// An agent as `agents` shows it.
#[derive(Debug, Clone)]
pub struct AgentInfo {
    pub agent_id: String,
    pub hostname: String,
    pub ips: Vec<String>,
    pub labels: HashMap<String, String>,
    pub slots: u32,
    pub in_use: u32,
    pub last_heard: Duration,
    pub version: String,
    pub connected: bool,
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
    #[error("no run '{0}'")]
    NoSuchRun(String),
    #[error("a run of this job (same factfile and tags) is still active: {0}")]
    AlreadyActive(String),
    #[error("run {0} has not finished: cancel it or wait for it before re-running it")]
    StillActive(String),
    #[error("run {0} has no task that did not succeed: nothing to re-run")]
    NothingToRerun(String),
    #[error("run {run} cannot be re-run: {why}")]
    CannotRerun { run: String, why: String },
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
    pub job_reference: String,
    /// The run an idempotency key pointed at, rather than a new one.
    pub existing: bool,
    pub watch: mpsc::UnboundedReceiver<WatchEvent>,
}

type Reply<T> = oneshot::Sender<Result<T, EngineError>>;

enum Command {
    Submit {
        spec: Box<RunSpec>,
        reply: Reply<Submitted>,
    },
    Cancel {
        run_id: String,
        reason: String,
        reply: Reply<()>,
    },
    Rerun {
        run_id: String,
        from_failed: bool,
        reply: Reply<Submitted>,
    },
    Watch {
        run_id: String,
        reply: Reply<mpsc::UnboundedReceiver<WatchEvent>>,
    },
    GetRun {
        run_id: String,
        reply: Reply<RunInfo>,
    },
    ListRuns {
        reply: Reply<Vec<RunInfo>>,
    },
    ListAgents {
        reply: Reply<Vec<AgentInfo>>,
    },
    Recover {
        reply: Reply<usize>,
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
            finished: HashMap::new(),
            finished_order: VecDeque::new(),
            agents: HashMap::new(),
            conns: HashMap::new(),
            leases: HashMap::new(),
            unclaimed: HashMap::new(),
            idempotency: HashMap::new(),
            stalled: VecDeque::new(),
            pending_acks: Vec::new(),
            pending: Vec::new(),
            timers: BTreeSet::new(),
        };
        tokio::spawn(core.run(rx, shutdown));
        Engine { tx, deliverer }
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    /// Starts a run; returns once it is committed.
    pub async fn submit(&self, spec: RunSpec) -> Result<Submitted, EngineError> {
        self.ask(|reply| Command::Submit {
            spec: Box::new(spec),
            reply,
        })
        .await
    }

    /// Cancels a run: nothing more starts, running attempts are killed, the rest is skipped.
    pub async fn cancel(&self, run_id: &str, reason: &str) -> Result<(), EngineError> {
        self.ask(|reply| Command::Cancel {
            run_id: run_id.to_string(),
            reason: reason.to_string(),
            reply,
        })
        .await
    }

    /// Starts a new run of a finished run's factfile, variables and tags: all of its tasks, or
    /// with `from_failed` only those that did not succeed and their descendants.
    pub async fn rerun(&self, run_id: &str, from_failed: bool) -> Result<Submitted, EngineError> {
        self.ask(|reply| Command::Rerun {
            run_id: run_id.to_string(),
            from_failed,
            reply,
        })
        .await
    }

    /// What happens to a run from now on; a finished run's stream holds only its end.
    pub async fn watch(
        &self,
        run_id: &str,
    ) -> Result<mpsc::UnboundedReceiver<WatchEvent>, EngineError> {
        self.ask(|reply| Command::Watch {
            run_id: run_id.to_string(),
            reply,
        })
        .await
    }

    pub async fn get_run(&self, run_id: &str) -> Result<RunInfo, EngineError> {
        self.ask(|reply| Command::GetRun {
            run_id: run_id.to_string(),
            reply,
        })
        .await
    }

    /// Active runs, then finished ones, newest first.
    pub async fn list_runs(&self) -> Result<Vec<RunInfo>, EngineError> {
        self.ask(|reply| Command::ListRuns { reply }).await
    }

    /// Loads the store's active runs (after a restart or a failover) and queues their pending
    /// webhooks; returns how many runs it took over.
    pub async fn recover(&self) -> Result<usize, EngineError> {
        self.ask(|reply| Command::Recover { reply }).await
    }

    pub async fn list_agents(&self) -> Result<Vec<AgentInfo>, EngineError> {
        self.ask(|reply| Command::ListAgents { reply }).await
    }

    /// Connects an agent session: `from_agent` carries its messages in (the first must be
    /// `Hello`), `to_agent` takes the engine's messages out. The engine holds the only sender
    /// of `to_agent`: when it forgets the agent, the outgoing stream ends.
    pub fn attach_agent(
        &self,
        mut from_agent: mpsc::Receiver<AgentMessage>,
        to_agent: mpsc::Sender<CoordinatorMessage>,
    ) {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let conn = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let mut to_agent = Some(to_agent);
            while let Some(msg) = from_agent.recv().await {
                let Some(msg) = msg.msg else { continue };
                let cmd = match (msg, to_agent.take()) {
                    (agent_message::Msg::Hello(hello), Some(tx)) => {
                        Command::AgentHello { conn, hello, tx }
                    }
                    (_, Some(_)) => {
                        tracing::warn!(conn, "agent spoke before Hello; closing its session");
                        break;
                    }
                    (msg, None) => Command::FromAgent { conn, msg },
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
    constraints: Vec<Constraint>,
    placement: Placement,
    watchers: Vec<mpsc::UnboundedSender<WatchEvent>>,
    /// The agent that took the run's first task (sticky placement).
    sticky: Option<Arc<str>>,
    /// The agent of each task's current attempt.
    task_agent: HashMap<TaskId, Arc<str>>,
    waiting_reason: Option<String>,
    outbox_seq: u64,
    /// What watchers have been told, replayed to a watcher that comes late (bounded).
    history: VecDeque<WatchEvent>,
    /// The run's next timer, as registered in `Core::timers`.
    deadline: Option<DateTime<Utc>>,
    rerun_of: Option<String>,
}

/// Commands handled before their store writes are committed together (group commit).
const GROUP: usize = 256;
/// Bytes per store transaction, at most (etcd refuses requests over 1.5 MiB by default).
const MAX_TXN_BYTES: usize = 1024 * 1024;

/// Events of a run replayed to late watchers, at most.
const HISTORY: usize = 10_000;
/// Finished runs whose history is kept for late watchers.
const FINISHED_WITH_HISTORY: usize = 50;

impl Run {
    /// Tells every watcher, and remembers it for the ones to come.
    fn tell(&mut self, ev: WatchEvent) {
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(ev.clone());
        tell(&mut self.watchers, ev);
    }
}

/// A finished run, kept for `status`, `runs` and late watchers.
struct FinishedRun {
    info: RunInfo,
    summary: RunSummary,
    history: Option<VecDeque<WatchEvent>>,
}

struct Agent {
    id: Arc<str>,
    hello: Hello,
    identity: Identity,
    /// `None` while disconnected (its attempts may still be re-attached).
    tx: Option<mpsc::Sender<CoordinatorMessage>>,
    conn: Option<u64>,
    in_use: u32,
    last_heard: Instant,
    /// Shutting down: takes no new leases.
    draining: bool,
}

impl Agent {
    fn has_slot(&self) -> bool {
        self.tx.is_some()
            && !self.draining
            && (self.hello.slots == 0 || self.in_use < self.hello.slots)
    }
}

type AttemptKey = (Arc<str>, TaskId, u32);

/// One event's worth of store writes and of what to do once they are recorded.
struct Batch {
    run: Arc<str>,
    ops: Vec<StoreOp>,
    deliveries: Vec<Delivery>,
    sends: Vec<(Arc<str>, CoordinatorMessage)>,
    finished: Option<JobState>,
}

struct Core<S: Store> {
    cfg: EngineConfig,
    store: S,
    deliverer: Deliverer,
    runs: HashMap<Arc<str>, Run>,
    finished: HashMap<Arc<str>, FinishedRun>,
    finished_order: VecDeque<Arc<str>>,
    agents: HashMap<Arc<str>, Agent>,
    /// Which agent each live connection speaks for.
    conns: HashMap<u64, Arc<str>>,
    /// Which agent holds each live attempt.
    leases: HashMap<AttemptKey, Arc<str>>,
    /// Attempts recorded as running that no agent has re-attached yet, and until when it may.
    unclaimed: HashMap<AttemptKey, Instant>,
    /// Idempotency keys of submissions, and the runs they started.
    idempotency: HashMap<String, String>,
    /// Batches not yet recorded because the store is down, in order.
    stalled: VecDeque<Batch>,
    /// Acknowledgements of results, sent once the results are recorded.
    pending_acks: Vec<(Arc<str>, CoordinatorMessage)>,
    /// Batches of what the loop is handling now, recorded together when it is done (group
    /// commit: one store transaction for many commands).
    pending: Vec<Batch>,
    /// Each run's next timer (task or job timeout, retry delay), earliest first.
    timers: BTreeSet<(DateTime<Utc>, Arc<str>)>,
}

impl<S: Store> Core<S> {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>, shutdown: CancellationToken) {
        let mut beat = self.cfg.heartbeat_interval.map(every);
        let fenced = self.cfg.fenced.clone();
        let mut liveness = self
            .cfg
            .lost_after
            .map(|d| every((d / 4).max(Duration::from_millis(50))));
        loop {
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
                _ = tick(&mut beat) => {
                    let ids: Vec<Arc<str>> = self.runs.keys().cloned().collect();
                    for id in ids {
                        self.apply(&id, Event::Heartbeat).await;
                    }
                }
                _ = tick(&mut liveness) => self.check_liveness().await,
                _ = tokio::time::sleep(Duration::from_millis(500)), if !self.stalled.is_empty() => {
                    self.retry_stalled().await;
                }
                _ = sleep_until(self.timers.first().map(|(at, _)| *at)) => self.fire_timers().await,
                _ = shutdown.cancelled() => break,
                _ = fenced.cancelled() => break,
            }
            self.flush().await;
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
                    let err = if self.finished.contains_key(&id) {
                        Ok(())
                    } else {
                        Err(EngineError::NoSuchRun(run_id))
                    };
                    let _ = reply.send(err);
                    return;
                }
                self.apply(&id, Event::Cancel { reason }).await;
                let _ = reply.send(Ok(()));
            }
            Command::Rerun {
                run_id,
                from_failed,
                reply,
            } => {
                let r = self.rerun(&run_id, from_failed).await;
                let _ = reply.send(r);
            }
            Command::Watch { run_id, reply } => {
                let (tx, rx) = mpsc::unbounded_channel();
                let id: Arc<str> = Arc::from(run_id.as_str());
                let r = if let Some(run) = self.runs.get_mut(&id) {
                    for ev in &run.history {
                        let _ = tx.send(ev.clone());
                    }
                    run.watchers.push(tx);
                    Ok(rx)
                } else if let Some(f) = self.finished.get(&id) {
                    for ev in f.history.iter().flatten() {
                        let _ = tx.send(ev.clone());
                    }
                    let _ = tx.send(WatchEvent::Done(f.summary.clone()));
                    Ok(rx)
                } else {
                    Err(EngineError::NoSuchRun(run_id))
                };
                let _ = reply.send(r);
            }
            Command::GetRun { run_id, reply } => {
                let id: Arc<str> = Arc::from(run_id.as_str());
                let r = match (self.runs.get(&id), self.finished.get(&id)) {
                    (Some(run), _) => Ok(info(run)),
                    (None, Some(f)) => Ok(f.info.clone()),
                    _ => Err(EngineError::NoSuchRun(run_id)),
                };
                let _ = reply.send(r);
            }
            Command::ListRuns { reply } => {
                let mut active: Vec<RunInfo> = self.runs.values().map(info).collect();
                active.sort_by_key(|r| std::cmp::Reverse(r.start_time));
                active.extend(
                    self.finished_order
                        .iter()
                        .rev()
                        .filter_map(|id| self.finished.get(id))
                        .map(|f| f.info.clone()),
                );
                let _ = reply.send(Ok(active));
            }
            Command::ListAgents { reply } => {
                let mut list: Vec<AgentInfo> = self
                    .agents
                    .values()
                    .map(|a| AgentInfo {
                        agent_id: a.id.to_string(),
                        hostname: a.hello.hostname.clone(),
                        ips: a.hello.ips.clone(),
                        labels: a.hello.labels.clone(),
                        slots: a.hello.slots,
                        in_use: a.in_use,
                        last_heard: a.last_heard.elapsed(),
                        version: a.hello.version.clone(),
                        connected: a.tx.is_some(),
                    })
                    .collect();
                list.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
                let _ = reply.send(Ok(list));
            }
            Command::Recover { reply } => {
                let r = self.recover().await;
                let _ = reply.send(r);
            }
            Command::AgentHello { conn, hello, tx } => self.hello(conn, hello, tx).await,
            Command::FromAgent { conn, msg } => {
                let Some(agent_id) = self.conns.get(&conn).cloned() else {
                    return;
                };
                if let Some(agent) = self.agents.get_mut(&agent_id) {
                    agent.last_heard = Instant::now();
                }
                self.agent_message(&agent_id, msg).await;
            }
            Command::AgentGone { conn } => {
                let Some(agent_id) = self.conns.remove(&conn) else {
                    return;
                };
                let Some(agent) = self.agents.get_mut(&agent_id) else {
                    return;
                };
                if agent.conn != Some(conn) {
                    return; // an older connection of an agent that has reconnected since
                }
                agent.tx = None;
                agent.conn = None;
                let running = self.leases.values().filter(|a| **a == agent_id).count();
                if running == 0 {
                    tracing::info!(agent = %agent_id, "agent disconnected");
                    self.agents.remove(&agent_id);
                } else if self.cfg.lost_after.is_none() {
                    self.lose_agent(&agent_id).await;
                } else {
                    tracing::warn!(agent = %agent_id, attempts = running, "agent disconnected with attempts running; waiting for it to come back");
                }
                self.dispatch_all().await;
            }
        }
    }

    async fn hello(&mut self, conn: u64, hello: Hello, tx: mpsc::Sender<CoordinatorMessage>) {
        let agent_id: Arc<str> = Arc::from(hello.agent_id.as_str());
        tracing::info!(agent = %agent_id, host = %hello.hostname, slots = hello.slots, "agent connected");
        let welcome = CoordinatorMessage {
            msg: Some(coordinator_message::Msg::Welcome(factotum_proto::Welcome {
                epoch: self.cfg.epoch,
                heartbeat_ms: u32::try_from(self.cfg.agent_heartbeat.as_millis())
                    .unwrap_or(u32::MAX),
                lost_after_ms: self
                    .cfg
                    .lost_after
                    .map_or(0, |d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX)),
            })),
        };
        let _ = tx.send(welcome).await;
        if let Some(old) = self.agents.get(&agent_id).and_then(|a| a.conn) {
            self.conns.remove(&old); // the same agent on a new connection replaces the old one
        }
        let identity = Identity {
            hostname: hello.hostname.clone(),
            ips: hello.ips.iter().filter_map(|i| i.parse().ok()).collect(),
            labels: hello.labels.clone(),
        };
        // Re-attach what the agent still runs; tell it to stop what is no longer wanted (stale
        // attempts are forgotten; attempts being stopped stay attached until they report).
        let mut stale = vec![];
        for r in &hello.running {
            let run_id: Arc<str> = Arc::from(r.run_id.as_str());
            let record = self
                .runs
                .get(&run_id)
                .filter(|run| run.state.is_current(r.task, r.attempt))
                .and_then(|run| run.state.task(r.task));
            if let Some(t) = record {
                // Being stopped (timed out, or its run cancelled) while it was away, perhaps
                // by a leader that has since gone: tell the agent (again).
                if t.stopping.is_some() {
                    stale.push(r.clone());
                }
                self.unclaimed
                    .remove(&(Arc::clone(&run_id), r.task, r.attempt));
                self.leases.insert(
                    (Arc::clone(&run_id), r.task, r.attempt),
                    Arc::clone(&agent_id),
                );
                if let Some(run) = self.runs.get_mut(&run_id) {
                    run.task_agent.insert(r.task, Arc::clone(&agent_id));
                }
            } else {
                stale.push(r.clone());
            }
        }
        // Attempts of this agent that it no longer reports are gone.
        let mut vanished = vec![];
        for (key, holder) in &self.leases {
            if **holder == *agent_id
                && !hello
                    .running
                    .iter()
                    .chain(&hello.finished)
                    .any(|r| *r.run_id == *key.0 && r.task == key.1 && r.attempt == key.2)
            {
                vanished.push(key.clone());
            }
        }
        for r in stale {
            let _ = tx.send(cancel_msg(r)).await;
        }
        self.conns.insert(conn, Arc::clone(&agent_id));
        self.agents.insert(
            Arc::clone(&agent_id),
            Agent {
                id: Arc::clone(&agent_id),
                hello,
                identity,
                tx: Some(tx),
                conn: Some(conn),
                in_use: 0, // counted below, with the attempts it re-attached
                last_heard: Instant::now(),
                draining: false,
            },
        );
        self.fail_attempts(
            vanished,
            &format!("agent {agent_id} restarted without the task"),
        )
        .await;
        // Slots in use: every attempt it holds, running or with a result on its way.
        let held = self.leases.values().filter(|a| **a == agent_id).count();
        if let Some(agent) = self.agents.get_mut(&agent_id) {
            agent.in_use = u32::try_from(held).unwrap_or(u32::MAX);
        }
        self.dispatch_all().await;
    }

    /// Fails the attempts of agents silent for longer than `lost_after`.
    async fn check_liveness(&mut self) {
        let now = Instant::now();
        let expired: Vec<AttemptKey> = self
            .unclaimed
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &expired {
            self.unclaimed.remove(k);
        }
        if !expired.is_empty() {
            self.fail_attempts(
                expired,
                "agent lost: no agent re-attached the task after a coordinator failover",
            )
            .await;
        }
        let Some(limit) = self.cfg.lost_after else {
            return;
        };
        let silent: Vec<Arc<str>> = self
            .agents
            .values()
            .filter(|a| a.last_heard.elapsed() > limit)
            .map(|a| Arc::clone(&a.id))
            .collect();
        for id in silent {
            self.lose_agent(&id).await;
        }
    }

    async fn lose_agent(&mut self, agent_id: &Arc<str>) {
        let Some(agent) = self.agents.remove(agent_id) else {
            return;
        };
        if let Some(conn) = agent.conn {
            self.conns.remove(&conn);
        }
        tracing::warn!(agent = %agent_id, "agent lost");
        let lost_attempts: Vec<AttemptKey> = self
            .leases
            .iter()
            .filter(|(_, a)| *a == agent_id)
            .map(|(k, _)| k.clone())
            .collect();
        self.fail_attempts(lost_attempts, &format!("agent {agent_id} lost"))
            .await;
        self.dispatch_all().await;
    }

    /// Ends these attempts without a result: FAILED with `reason`, and the usual cascade.
    async fn fail_attempts(&mut self, attempts: Vec<AttemptKey>, reason: &str) {
        for (run, task, attempt) in attempts {
            self.leases.remove(&(Arc::clone(&run), task, attempt));
            let result = lost(reason.to_string());
            self.apply(
                &run,
                Event::AttemptEnded {
                    task,
                    attempt,
                    result,
                },
            )
            .await;
        }
    }

    /// Takes over the active runs recorded in the store.
    async fn recover(&mut self) -> Result<usize, EngineError> {
        let mut by_run: BTreeMap<String, HashMap<String, Vec<u8>>> = BTreeMap::new();
        for (key, value) in self.store.scan("runs/").await? {
            let Some((id, rest)) = key.strip_prefix("runs/").and_then(|k| k.split_once('/')) else {
                continue;
            };
            by_run
                .entry(id.to_string())
                .or_default()
                .insert(rest.to_string(), value);
        }
        let mut taken = 0;
        let mut finished = vec![];
        let grace = Instant::now() + self.cfg.failover_grace;
        for (id, keys) in by_run {
            let id: Arc<str> = Arc::from(id.as_str());
            if self.runs.contains_key(&id) {
                continue;
            }
            match self.restore_run(&id, keys).await {
                Ok(run) if run.state.job_state().is_terminal() => {
                    // Finished before the failover: kept for `status` and `runs`.
                    let summary = summarize(&run, run.state.job_state());
                    finished.push((
                        run.state.started_at(),
                        Arc::clone(&id),
                        FinishedRun {
                            info: info(&run),
                            summary,
                            history: None,
                        },
                    ));
                }
                Ok(run) => {
                    for (t, rec) in run.state.tasks().iter().enumerate() {
                        if rec.state == TaskState::Running {
                            self.unclaimed
                                .insert((Arc::clone(&id), t as TaskId, rec.attempt), grace);
                        }
                    }
                    self.runs.insert(Arc::clone(&id), run);
                    // Deadlines are absolute times from the records: due ones fire at once.
                    self.rearm(&id);
                    taken += 1;
                }
                Err(why) => tracing::error!(run = %id, "cannot take over the run: {why}"),
            }
        }
        finished.sort_by_key(|(start, ..)| *start);
        let skip = finished.len().saturating_sub(self.cfg.keep_finished);
        for (_, id, f) in finished.into_iter().skip(skip) {
            self.finished_order.push_back(Arc::clone(&id));
            self.finished.insert(id, f);
        }
        for (key, value) in self.store.scan("idempotency/").await? {
            if let (Some(k), Ok(run)) = (
                key.strip_prefix("idempotency/").and_then(keys::unhex),
                String::from_utf8(value),
            ) {
                self.idempotency.insert(k, run);
            }
        }
        // Webhooks not yet delivered, in order per run, with their original event ids.
        let mut closed = std::collections::HashSet::new();
        for (key, value) in self.store.scan("outbox/").await? {
            let parts: Vec<&str> = key.splitn(4, '/').collect();
            let [_, run, seq, _] = parts.as_slice() else {
                continue;
            };
            let Some((url, body)) = persist::unpack_outbox(&value) else {
                continue;
            };
            let run_id: Arc<str> = Arc::from(*run);
            self.deliverer.send(Delivery {
                url: Arc::from(url.as_str()),
                run_id: Arc::clone(&run_id),
                event_id: format!(
                    "{run}-{}",
                    seq.trim_start_matches('0').parse::<u64>().unwrap_or(0)
                ),
                body: Arc::from(body.as_str()),
                outbox_key: key.clone(),
            });
            if !self.runs.contains_key(&run_id) {
                closed.insert(run_id);
            }
        }
        for run in closed {
            self.deliverer.close_run(&run);
        }
        self.dispatch_all().await;
        Ok(taken)
    }

    /// One recorded run, rebuilt.
    async fn restore_run(
        &self,
        id: &Arc<str>,
        keys: HashMap<String, Vec<u8>>,
    ) -> Result<Run, String> {
        let rec = persist::Recorded::read(keys)?;
        let state = rec.state()?;
        let job = state.job_state().ok_or("unknown job state")?;
        let plan = Plan::subset(&rec.factfile, &rec.spec.tasks);
        // A finished run is kept for `status` and `runs` only: no host names to look up.
        let (plan, constraints) = if job.is_terminal() {
            (Arc::new(plan), rec.constraints())
        } else {
            resolved(plan, rec.constraints()).await?
        };
        let records = (0..plan.len() as u32).map(|t| rec.task(t)).collect();
        let persist::Recorded { spec, compact, .. } = rec;
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
        let meta = RunMeta::new(
            &compact,
            &spec.job_name,
            spec.tags.clone(),
            id.to_string(),
            spec.start_time,
        );
        Ok(Run {
            id: Arc::clone(id),
            state: RunState::restore(
                plan,
                spec.start_time,
                opts,
                job,
                state.cancelled.clone(),
                records,
            ),
            meta,
            webhooks,
            max_output: u32::try_from(spec.max_output).unwrap_or(u32::MAX),
            dry_run: spec.dry_run,
            constraints,
            placement: spec.placement,
            watchers: vec![],
            sticky: None,
            task_agent: HashMap::new(),
            waiting_reason: None,
            outbox_seq: state.outbox_seq,
            history: VecDeque::new(),
            deadline: None,
            rerun_of: spec.rerun_of.clone(),
        })
    }

    async fn submit(&mut self, spec: RunSpec) -> Result<Submitted, EngineError> {
        if let Some(run_id) = spec
            .idempotency_key
            .as_ref()
            .and_then(|k| self.idempotency.get(k))
        {
            let id: Arc<str> = Arc::from(run_id.as_str());
            let (tx, rx) = mpsc::unbounded_channel();
            let job_reference = match (self.runs.get_mut(&id), self.finished.get(&id)) {
                (Some(run), _) => {
                    run.watchers.push(tx);
                    run.meta.job_reference.clone()
                }
                (None, Some(f)) => f.info.job_reference.clone(),
                _ => String::new(),
            };
            return Ok(Submitted {
                run_id: run_id.clone(),
                job_reference,
                existing: true,
                watch: rx,
            });
        }
        let now = Utc::now();
        let run_ref = factotum_common::reference::run_reference(&spec.uuid);
        let meta = RunMeta::new(
            &spec.compact_factfile,
            &spec.plan.job_name,
            spec.tags.clone(),
            run_ref.clone(),
            now,
        );
        if !spec.allow_concurrent {
            if let Some(active) = self
                .runs
                .values()
                .find(|r| r.meta.job_reference == meta.job_reference)
            {
                return Err(EngineError::AlreadyActive(active.id.to_string()));
            }
        }
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
        // Acknowledged only once recorded: what was asked, the factfile, the initial state.
        let record = persist::SpecRecord {
            job_name: spec.plan.job_name.clone(),
            job_reference: meta.job_reference.clone(),
            start_time: now,
            tags: spec.tags.clone(),
            webhooks: spec.webhooks.clone(),
            constraints: spec
                .constraints
                .iter()
                .map(persist::ConstraintRecord::from_constraint)
                .collect(),
            placement: spec.placement,
            max_output: spec.max_output,
            dry_run: spec.dry_run,
            tasks: spec.plan.tasks.iter().map(|t| t.name.to_string()).collect(),
            rerun_of: spec.rerun_of.clone(),
        };
        let idem_op = spec.idempotency_key.as_ref().map(|k| StoreOp::Put {
            key: keys::idempotency(k),
            value: id.as_bytes().to_vec(),
        });
        let initial = persist::StateRecord {
            state: JobState::Waiting.as_str().into(),
            outbox_seq: 0,
            cancelled: None,
        };
        let mut ops = vec![
            StoreOp::Put {
                key: keys::run_spec(&id),
                value: serde_json::to_vec(&record).unwrap_or_default(),
            },
            StoreOp::Put {
                key: keys::run_factfile(&id),
                value: persist::pack_factfile(&spec.compact_factfile),
            },
            StoreOp::Put {
                key: keys::run_state(&id),
                value: serde_json::to_vec(&initial).unwrap_or_default(),
            },
        ];
        ops.extend(idem_op);
        self.store.commit(ops).await?;
        if let Some(key) = &spec.idempotency_key {
            self.idempotency.insert(key.clone(), id.to_string());
        }
        let (wtx, wrx) = mpsc::unbounded_channel();
        let job_reference = meta.job_reference.clone();
        let run = Run {
            id: Arc::clone(&id),
            state: RunState::new(Arc::clone(&spec.plan), now, opts),
            meta,
            webhooks,
            max_output: u32::try_from(spec.max_output).unwrap_or(u32::MAX),
            dry_run: spec.dry_run,
            constraints: spec.constraints,
            placement: spec.placement,
            watchers: vec![wtx],
            sticky: None,
            task_agent: HashMap::new(),
            waiting_reason: None,
            outbox_seq: 0,
            history: VecDeque::new(),
            deadline: None,
            rerun_of: spec.rerun_of,
        };
        self.runs.insert(Arc::clone(&id), run);
        self.apply(&id, Event::Start).await;
        self.dispatch(&id).await;
        Ok(Submitted {
            run_id: run_ref,
            job_reference,
            existing: false,
            watch: wrx,
        })
    }

    async fn agent_message(&mut self, agent_id: &Arc<str>, msg: agent_message::Msg) {
        match msg {
            agent_message::Msg::Heartbeat(hb) => {
                if let Some(agent) = self.agents.get_mut(agent_id) {
                    if hb.draining && !agent.draining {
                        tracing::info!(agent = %agent_id, "agent draining: no new leases");
                    }
                    agent.draining = hb.draining;
                }
            }
            agent_message::Msg::Hello(_) | agent_message::Msg::Started(_) => {}
            agent_message::Msg::Output(o) => {
                let Some(r) = o.lease else { return };
                let stream = crate::convert::stream_from_pb(o.stream);
                let id: Arc<str> = Arc::from(r.run_id.as_str());
                let Some(run) = self.runs.get_mut(&id) else {
                    return;
                };
                let Some(task) = run.state.plan().task(r.task) else {
                    return;
                };
                if !run.state.is_current(r.task, r.attempt) {
                    return;
                }
                let name = Arc::clone(&task.name);
                if self.cfg.heartbeat_interval.is_some() {
                    let ev = Event::Output {
                        task: r.task,
                        attempt: r.attempt,
                        stream,
                        line: o.line.clone(),
                    };
                    run.state.apply(ev, Utc::now());
                }
                run.tell(WatchEvent::Output {
                    task: name,
                    stream,
                    line: o.line,
                });
            }
            agent_message::Msg::AttemptResult(f) => {
                let Some(r) = f.lease else { return };
                let id: Arc<str> = Arc::from(r.run_id.as_str());
                let key = (Arc::clone(&id), r.task, r.attempt);
                if self.leases.get(&key) == Some(agent_id) {
                    self.leases.remove(&key);
                    if let Some(agent) = self.agents.get_mut(agent_id) {
                        agent.in_use = agent.in_use.saturating_sub(1);
                    }
                }
                // The agent may forget the result once it is recorded: acknowledge with the
                // batch that records it (at once for a run this coordinator does not know).
                let ack = CoordinatorMessage {
                    msg: Some(coordinator_message::Msg::Ack(factotum_proto::Ack {
                        lease: Some(r.clone()),
                    })),
                };
                if self.runs.contains_key(&id) {
                    self.pending_acks.push((Arc::clone(agent_id), ack));
                } else if let Some(tx) = self.agents.get(agent_id).and_then(|a| a.tx.clone()) {
                    let _ = tx.send(ack).await;
                }
                let outcome = match f.outcome {
                    Some(attempt_result::Outcome::ExitCode(c)) => Outcome::Exited(c),
                    Some(attempt_result::Outcome::SpawnError(e)) => Outcome::SpawnFailed(e),
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
                    Event::AttemptEnded {
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
        placed: Option<&HashMap<TaskId, Arc<str>>>,
    ) {
        let Some(run) = self.runs.get_mut(id) else {
            return;
        };
        let mut ops: Vec<StoreOp> = vec![];
        let mut deliveries: Vec<Delivery> = vec![];
        let mut sends: Vec<(Arc<str>, CoordinatorMessage)> = vec![];
        let mut finished: Option<JobState> = None;
        for action in actions {
            match action {
                Action::Emit(update) => {
                    record(run, &update, &mut ops, &mut deliveries);
                    let ev = watch_event(run, &update);
                    run.tell(ev);
                }
                Action::Dispatch { task, attempt } => {
                    let Some(agent) = placed.and_then(|p| p.get(&task)) else {
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
                        env: spec.policy().env.iter().cloned().collect(),
                        cwd: spec.policy().cwd.clone().unwrap_or_default(),
                    };
                    self.leases
                        .insert((Arc::clone(id), task, attempt), Arc::clone(agent));
                    run.task_agent.insert(task, Arc::clone(agent));
                    sends.push((
                        Arc::clone(agent),
                        CoordinatorMessage {
                            msg: Some(coordinator_message::Msg::Lease(lease)),
                        },
                    ));
                }
                Action::Kill { task, attempt } => {
                    if let Some(agent) = self.leases.get(&(Arc::clone(id), task, attempt)) {
                        let r = LeaseRef {
                            run_id: id.to_string(),
                            task,
                            attempt,
                            epoch: self.cfg.epoch,
                        };
                        sends.push((Arc::clone(agent), cancel_msg(r)));
                    }
                }
                Action::RunEnded(state) => finished = Some(state),
            }
        }
        // The run's state record goes with every batch (job state, outbox sequence, cancel).
        let state = persist::StateRecord {
            state: run.state.job_state().as_str().into(),
            outbox_seq: run.outbox_seq,
            cancelled: run.state.cancelled().map(str::to_string),
        };
        ops.push(StoreOp::Put {
            key: keys::run_state(id),
            value: serde_json::to_vec(&state).unwrap_or_default(),
        });
        // Webhook events first: should a batch ever span transactions (over 128 operations or
        // 1 MiB) and a crash fall between them, an event is sent twice rather than never.
        ops.sort_by_key(|op| !matches!(op, StoreOp::Put { key, .. } if key.starts_with("outbox/")));
        sends.splice(0..0, std::mem::take(&mut self.pending_acks));
        self.rearm(id);
        let batch = Batch {
            run: Arc::clone(id),
            ops,
            deliveries,
            sends,
            finished,
        };
        self.commit(batch);
    }

    /// Queues a batch, recorded with the others of this turn of the loop ([`Core::flush`]).
    fn commit(&mut self, batch: Batch) {
        self.pending.push(batch);
    }

    /// Writes in transactions of at most 128 operations and about 1 MiB (etcd's limits).
    async fn write_ops(&self, ops: Vec<StoreOp>) -> Result<(), StoreError> {
        let mut chunk = Vec::new();
        let mut bytes = 0;
        for op in ops {
            let size = match &op {
                StoreOp::Put { key, value } => key.len() + value.len(),
                StoreOp::Delete { key } => key.len(),
            };
            if !chunk.is_empty()
                && (chunk.len() == MAX_OPS_PER_COMMIT || bytes + size > MAX_TXN_BYTES)
            {
                self.store.commit(std::mem::take(&mut chunk)).await?;
                bytes = 0;
            }
            bytes += size;
            chunk.push(op);
        }
        if !chunk.is_empty() {
            self.store.commit(chunk).await?;
        }
        Ok(())
    }

    /// Records this turn's batches. While the store is down, batches queue in order behind
    /// the stalled ones (nothing is sent for them, and dispatch pauses) until it is back.
    async fn flush(&mut self) {
        let batches = std::mem::take(&mut self.pending);
        if batches.is_empty() {
            return;
        }
        if !self.stalled.is_empty() {
            self.stalled.extend(batches);
            return;
        }
        if let Err(e @ StoreError::Unavailable(_)) = self.record(batches).await {
            tracing::error!(error = %e, "the store is unavailable: dispatch pauses until it is back");
        }
    }

    /// Retries the stalled batches; once they are recorded, dispatch resumes.
    async fn retry_stalled(&mut self) {
        let batches: Vec<Batch> = self.stalled.drain(..).collect();
        if self.record(batches).await.is_ok() {
            tracing::info!("the store is back: dispatch resumes");
            self.dispatch_all().await;
        }
    }

    /// Writes the batches in as few transactions as possible, then acts on each in order. A
    /// fenced write means another coordinator leads: step down. Any other failure puts them
    /// (back) at the end of the stalled queue.
    async fn record(&mut self, batches: Vec<Batch>) -> Result<(), StoreError> {
        let ops: Vec<StoreOp> = batches.iter().flat_map(|b| b.ops.iter().cloned()).collect();
        match self.write_ops(ops).await {
            Ok(()) => {
                for b in batches {
                    self.act(b).await;
                }
                Ok(())
            }
            Err(StoreError::Fenced) => {
                self.step_down();
                Err(StoreError::Fenced)
            }
            Err(e) => {
                self.stalled.extend(batches);
                Err(e)
            }
        }
    }

    fn step_down(&mut self) {
        // Another coordinator leads now: act on nothing more.
        tracing::error!("a fenced write failed: this coordinator is no longer the leader");
        self.stalled.clear();
        self.cfg.fenced.cancel();
    }

    /// What a recorded batch says to do: webhooks, messages to agents, a run's end.
    async fn act(&mut self, batch: Batch) {
        let Batch {
            run: id,
            deliveries,
            sends,
            finished,
            ..
        } = batch;
        let id = &id;
        for d in deliveries {
            self.deliverer.send(d);
        }
        for (agent, msg) in sends {
            if let Some(tx) = self.agents.get(&agent).and_then(|a| a.tx.as_ref()) {
                let _ = tx.send(msg).await;
            }
        }
        if let Some(state) = finished {
            if let Some(mut run) = self.runs.remove(id) {
                let summary = summarize(&run, state);
                tell(&mut run.watchers, WatchEvent::Done(summary.clone()));
                self.deliverer.close_run(id);
                let history = Some(std::mem::take(&mut run.history));
                self.finished.insert(
                    Arc::clone(id),
                    FinishedRun {
                        info: info(&run),
                        summary,
                        history,
                    },
                );
                self.finished_order.push_back(Arc::clone(id));
                while self.finished_order.len() > self.cfg.keep_finished {
                    if let Some(old) = self.finished_order.pop_front() {
                        self.finished.remove(&old);
                    }
                }
                let n = self.finished_order.len();
                if n > FINISHED_WITH_HISTORY {
                    let old = &self.finished_order[n - FINISHED_WITH_HISTORY - 1];
                    if let Some(f) = self.finished.get_mut(old) {
                        f.history = None;
                    }
                }
            }
        }
    }

    /// Registers the run's next timer (or none) after its state changed.
    fn rearm(&mut self, id: &Arc<str>) {
        let Some(run) = self.runs.get_mut(id) else {
            return;
        };
        let next = run.state.next_deadline();
        if next == run.deadline {
            return;
        }
        if let Some(old) = run.deadline.take() {
            self.timers.remove(&(old, Arc::clone(id)));
        }
        if let Some(at) = next {
            self.timers.insert((at, Arc::clone(id)));
        }
        run.deadline = next;
    }

    /// Fires every timer that is due: the runs see the time, then ready tasks are placed.
    async fn fire_timers(&mut self) {
        let now = Utc::now();
        let mut due = vec![];
        while let Some((at, id)) = self.timers.first().cloned() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, Arc::clone(&id)));
            if let Some(run) = self.runs.get_mut(&id) {
                run.deadline = None;
            }
            due.push(id);
        }
        for id in due {
            self.apply(&id, Event::Tick).await;
            self.rearm(&id);
            self.dispatch(&id).await;
        }
    }

    /// A new run of a finished run's recorded factfile (already templated with its variables),
    /// tags, webhooks, constraints and options.
    async fn rerun(&mut self, old: &str, from_failed: bool) -> Result<Submitted, EngineError> {
        if self.runs.contains_key(old) {
            return Err(EngineError::StillActive(old.to_string()));
        }
        let prefix = format!("runs/{old}/");
        let keys: HashMap<String, Vec<u8>> = self
            .store
            .scan(&prefix)
            .await?
            .into_iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?.to_string(), v)))
            .collect();
        if keys.is_empty() {
            return Err(EngineError::NoSuchRun(old.to_string()));
        }
        let why = |w: String| EngineError::CannotRerun {
            run: old.to_string(),
            why: w,
        };
        let rec = persist::Recorded::read(keys).map_err(why)?;
        let names: Vec<String> = if from_failed {
            let old_plan = Plan::subset(&rec.factfile, &rec.spec.tasks);
            let states: Vec<TaskState> = (0..old_plan.len() as u32)
                .map(|t| rec.task(t).map(|r| r.state).unwrap_or_default())
                .collect();
            factotum_common::run::rerun_set(&old_plan, &states)
                .into_iter()
                .map(|t| old_plan.tasks[t as usize].name.to_string())
                .collect()
        } else {
            rec.spec.tasks.clone()
        };
        if names.is_empty() {
            return Err(EngineError::NothingToRerun(old.to_string()));
        }
        let (plan, constraints) = resolved(Plan::subset(&rec.factfile, &names), rec.constraints())
            .await
            .map_err(why)?;
        let persist::Recorded { spec, compact, .. } = rec;
        self.submit(RunSpec {
            compact_factfile: compact,
            plan,
            tags: spec.tags,
            webhooks: spec.webhooks,
            max_output: spec.max_output,
            dry_run: spec.dry_run,
            constraints,
            placement: spec.placement,
            allow_concurrent: false,
            idempotency_key: None,
            uuid: uuid::Uuid::new_v4().to_string(),
            rerun_of: Some(old.to_string()),
        })
        .await
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

    /// Leases the run's ready tasks (as many as its `maxParallel` allows) to eligible agents with
    /// free slots. Sticky placement keeps a run on the agent that took its first task while that
    /// agent is connected; a task with its own constraints goes wherever they and the run's hold
    /// (the sticky agent, if it qualifies).
    async fn dispatch(&mut self, id: &Arc<str>) {
        if !self.stalled.is_empty() {
            return; // no new leases while the store cannot record them
        }
        let Some(run) = self.runs.get_mut(id) else {
            return;
        };
        if run.state.ready().is_empty() {
            return;
        }
        let plan = Arc::clone(run.state.plan());
        let mut placed: HashMap<TaskId, Arc<str>> = HashMap::new();
        let eligible = |a: &Agent, own: &[Constraint]| {
            run.constraints
                .iter()
                .chain(own)
                .all(|c| c.matches(&a.identity))
        };
        // A sticky run follows its agent while that agent is connected and not draining.
        let mut sticky = run.sticky.clone().filter(|s| {
            run.placement == Placement::Sticky
                && self
                    .agents
                    .get(s)
                    .is_some_and(|a| a.tx.is_some() && !a.draining)
        });
        // Tasks without constraints of their own all have the same choices: once one finds no
        // agent, the others would not either.
        let mut plain_full = false;
        let mut unplaced: Option<TaskId> = None;
        for &task in run.state.leasable() {
            let own = &plan.tasks[task as usize].policy().constraints;
            if own.is_empty() && plain_full {
                unplaced.get_or_insert(task);
                continue;
            }
            let on_sticky = sticky.as_ref().filter(|s| {
                own.is_empty() || self.agents.get(*s).is_some_and(|a| eligible(a, own))
            });
            let choice = match on_sticky {
                Some(s) => self
                    .agents
                    .get(s)
                    .filter(|a| a.has_slot())
                    .map(|a| Arc::clone(&a.id)),
                None => self
                    .agents
                    .values()
                    .filter(|a| a.has_slot() && eligible(a, own))
                    .min_by(|a, b| (a.in_use, &a.id).cmp(&(b.in_use, &b.id)))
                    .map(|a| Arc::clone(&a.id)),
            };
            let Some(agent_id) = choice else {
                unplaced.get_or_insert(task);
                plain_full |= own.is_empty();
                continue;
            };
            if let Some(agent) = self.agents.get_mut(&agent_id) {
                agent.in_use += 1;
            }
            if run.placement == Placement::Sticky && sticky.is_none() && own.is_empty() {
                sticky = Some(Arc::clone(&agent_id));
                run.sticky = Some(Arc::clone(&agent_id));
            }
            placed.insert(task, agent_id);
        }
        run.waiting_reason = match unplaced {
            Some(task) => {
                let t = &plan.tasks[task as usize];
                let why = waiting_reason(
                    run,
                    &t.policy().constraints,
                    sticky.as_deref(),
                    &self.agents,
                );
                Some(if t.policy().constraints.is_empty() {
                    why
                } else {
                    format!("task '{}': {why}", t.name)
                })
            }
            None if run.state.leasable().len() < run.state.ready().len() => Some(format!(
                "{} task(s) ready, held back by the job's maxParallel of {}",
                run.state.ready().len() - run.state.leasable().len(),
                plan.max_parallel.unwrap_or_default()
            )),
            None => None,
        };
        if placed.is_empty() {
            return;
        }
        let tasks: Vec<TaskId> = placed.keys().copied().collect();
        let actions = run.state.apply(Event::Lease { tasks }, Utc::now());
        self.perform(id, actions, Some(&placed)).await;
    }
}

/// A recorded plan and constraints with their host names resolved (off the async workers: name
/// lookups block).
async fn resolved(
    plan: Plan,
    constraints: Vec<Constraint>,
) -> Result<(Arc<Plan>, Vec<Constraint>), String> {
    tokio::task::spawn_blocking(move || {
        (
            Arc::new(crate::spec::resolve_plan(plan)),
            crate::spec::resolve_constraints(constraints),
        )
    })
    .await
    .map_err(|e| e.to_string())
}

/// Why a run's ready tasks wait, in words an operator can act on.
fn waiting_reason(
    run: &Run,
    own: &[Constraint],
    sticky: Option<&str>,
    agents: &HashMap<Arc<str>, Agent>,
) -> String {
    if let Some(s) = sticky.filter(|_| own.is_empty()) {
        return format!("waiting for a free slot on agent {s} (sticky placement)");
    }
    let all: Vec<&Constraint> = run.constraints.iter().chain(own).collect();
    let connected: Vec<&Agent> = agents.values().filter(|a| a.tx.is_some()).collect();
    if connected.is_empty() {
        return "no agent is connected".into();
    }
    let failing: Vec<String> = all
        .iter()
        .filter(|c| !connected.iter().any(|a| c.matches(&a.identity)))
        .map(|c| c.to_string())
        .collect();
    if !failing.is_empty() {
        return format!("no connected agent has {}", failing.join(", "));
    }
    if !connected
        .iter()
        .any(|a| all.iter().all(|c| c.matches(&a.identity)))
    {
        let all: Vec<String> = all.iter().map(|c| c.to_string()).collect();
        return format!("no connected agent has {} together", all.join(" and "));
    }
    "every eligible agent is busy".into()
}

/// Tells an agent to stop an attempt (TERM, then KILL after its own kill grace).
fn cancel_msg(r: LeaseRef) -> CoordinatorMessage {
    CoordinatorMessage {
        msg: Some(coordinator_message::Msg::Cancel(factotum_proto::Cancel {
            lease: Some(r),
        })),
    }
}

fn lost(reason: String) -> TaskResult {
    TaskResult {
        outcome: Outcome::Lost(reason),
        stdout: String::new(),
        stderr: String::new(),
        duration: Duration::ZERO,
    }
}

fn info(run: &Run) -> RunInfo {
    let plan = run.state.plan();
    RunInfo {
        run_id: run.id.to_string(),
        job_name: plan.job_name.clone(),
        job_reference: run.meta.job_reference.clone(),
        state: run.state.job_state(),
        start_time: run.state.started_at(),
        duration: (Utc::now() - run.state.started_at())
            .to_std()
            .unwrap_or_default(),
        waiting_reason: run.waiting_reason.clone(),
        tasks: plan
            .order
            .iter()
            .filter_map(|&t| {
                let rec = run.state.task(t)?;
                Some(TaskInfo {
                    name: Arc::clone(&plan.task(t)?.name),
                    state: rec.state,
                    attempt: rec.attempt,
                    agent: run.task_agent.get(&t).map(|a| a.to_string()),
                    started: rec.started,
                    duration: rec.duration,
                    return_code: rec.return_code,
                    error_message: rec.error_message.clone(),
                })
            })
            .collect(),
        tags: run.meta.tags.clone(),
        rerun_of: run.rerun_of.clone(),
    }
}

fn every(d: Duration) -> tokio::time::Interval {
    let mut i = tokio::time::interval_at(tokio::time::Instant::now() + d, d);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    i
}

/// Store writes and webhook payloads for one update.
fn record(run: &mut Run, update: &Update, ops: &mut Vec<StoreOp>, deliveries: &mut Vec<Delivery>) {
    match &update.kind {
        UpdateKind::Job { .. } => {} // the state record is written with every batch
        UpdateKind::Tasks(ts) => {
            for t in ts {
                if t.previous == t.current && t.current == TaskState::Running {
                    continue; // heartbeats change nothing worth storing
                }
                if let (Some(rec), Some(spec)) =
                    (run.state.task(t.task), run.state.plan().task(t.task))
                {
                    let doc = persist::TaskOut::new(&spec.name, rec);
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
            value: persist::pack_outbox(url, &body),
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

/// Sleeps until a wall-clock time (at once if it has passed); forever without one.
async fn sleep_until(at: Option<DateTime<Utc>>) {
    match at {
        Some(at) => tokio::time::sleep((at - Utc::now()).to_std().unwrap_or_default()).await,
        None => std::future::pending().await,
    }
}

async fn tick(beat: &mut Option<tokio::time::Interval>) {
    match beat {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}
