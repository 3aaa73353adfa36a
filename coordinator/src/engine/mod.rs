//! The engine: the single writer over every run.
//!
//! One task owns all run state. Everything that happens — a submission, an agent's message, a
//! cancel, a heartbeat tick — arrives as a [`Command`] on one channel. The interpreter
//! ([`core`]) turns it into events for the runs' pure state machines and asks small owners what
//! should happen: [`runs`] (active and finished runs, watchers), [`agents`] (sessions, leases,
//! liveness), [`crate::placement`] (which agent takes which task), [`timers`] (deadlines),
//! [`commit`] (group commit), [`recovery`] (what the store holds). Only the interpreter
//! writes to the store, sends to agents, queues webhooks and spawns.

mod agents;
mod commit;
mod core;
mod history;
pub mod logs;
mod record;
mod recovery;
mod registry;
mod runs;
mod server_jobs;
mod server_turn;
mod sessions;
mod timers;
mod watchers;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use factotum_proto::{agent_message, AgentMessage, CoordinatorMessage, Hello};
use factotum_service::Lifecycle;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use self::commit::{transactions, MAX_TXN_BYTES};
use crate::clock::Clock;
use crate::metrics::Metrics;
pub use crate::model::{
    AgentInfo, EngineError, Placement, RunInfo, RunPage, RunQuery, RunSpec, RunSummary, ServerJob,
    ServerJobRun, ServerStatus, Submitted, TaskChange, TaskInfo, Watch, WatchEvent,
};
use crate::store::Store;
use crate::webhook::dead::DeadLetter;
use crate::webhook::{Deliverer, DeliveryConfig, EndpointReport, Undelivered};
pub use webhooks::Replayed;

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Webhook URLs every run reports to (in addition to each run's own).
    pub webhooks: Vec<String>,
    /// Send RUNNING → RUNNING task updates with the output so far at this interval.
    pub heartbeat_interval: Option<Duration>,
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
    /// Where the engine reads the time (tests follow Tokio's paused clock).
    pub clock: Clock,
    /// Bytes of output lines queued for one watcher (past it, lines are skipped and the
    /// watcher told how many), and kept per run for late watchers.
    pub watch_buffer: usize,
    /// Keep each run's transitions (and recent output) for watchers that come after its
    /// submission; `factotum run`, whose one watcher comes with it, keeps none.
    pub late_watchers: bool,
    /// Finished runs the store keeps, at most; the oldest are deleted.
    pub history_max_runs: usize,
    /// Finished runs are deleted from the store this long after they ended.
    pub history_max_age: Duration,
    /// Client calls waiting for the engine, at most (`--max-queued-calls`): past it a call is
    /// refused at once. Agents' messages wait for room instead (their streams are slowed).
    pub max_queued_calls: usize,
    /// Where the engine records what it does (outlives the engine: one per process).
    pub metrics: Arc<Metrics>,
    /// How webhooks are delivered: endpoints' secrets and filters, retries, dead letters.
    pub delivery: DeliveryConfig,
}

/// The default `watch_buffer`: 4 MiB of output per watcher.
pub const DEFAULT_WATCH_BUFFER: usize = 4 << 20;

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            webhooks: vec![],
            heartbeat_interval: None,
            lost_after: None,
            agent_heartbeat: Duration::from_secs(2),
            keep_finished: 1000,
            failover_grace: Duration::from_secs(30),
            fenced: CancellationToken::new(),
            clock: Clock::System,
            watch_buffer: DEFAULT_WATCH_BUFFER,
            late_watchers: true,
            history_max_runs: 10_000,
            history_max_age: Duration::from_secs(30 * 86_400),
            max_queued_calls: 1024,
            metrics: Arc::default(),
            delivery: DeliveryConfig::default(),
        }
    }
}

/// A handle to the engine; cheap to clone.
#[derive(Clone, Debug)]
pub struct Engine {
    tx: mpsc::Sender<Command>,
    deliverer: Deliverer,
    /// Full task logs, read from the agents (outside the interpreter's loop).
    logs: logs::LogHub,
    life: Lifecycle,
    max_queued: usize,
}

type Reply<T> = oneshot::Sender<Result<T, EngineError>>;

/// Everything the engine is asked, one variant per verb.
enum Command {
    Submit {
        spec: Box<RunSpec>,
        reply: Reply<Submitted>,
    },
    Cancel {
        run_id: String,
        reason: String,
        by: Option<String>,
        reply: Reply<()>,
    },
    Rerun {
        run_id: String,
        from_failed: bool,
        reply: Reply<Submitted>,
    },
    Watch {
        run_id: String,
        resumed: bool,
        reply: Reply<Watch>,
    },
    GetRun {
        run_id: String,
        reply: Reply<RunInfo>,
    },
    ListRuns {
        query: RunQuery,
        reply: Reply<RunPage>,
    },
    ListAgents {
        reply: Reply<Vec<AgentInfo>>,
    },
    TaskSecrets {
        run_id: String,
        task: String,
        reply: Reply<Vec<String>>,
    },
    ReplayWebhooks {
        run_id: String,
        from: u64,
        url: Option<String>,
        reply: Reply<Replayed>,
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
    /// Factotum Server's API (`server_jobs`).
    Server(server_jobs::Ask),
}

impl Engine {
    /// Starts the engine task (tracked by `life`). It stops when `life`'s token fires, or when
    /// a fenced write fails (`config.fenced`).
    pub fn start<S: Store>(config: EngineConfig, store: S, life: impl Into<Lifecycle>) -> Engine {
        let life = life.into();
        let max_queued = config.max_queued_calls.max(1);
        let (tx, rx) = mpsc::channel(max_queued);
        let deliverer = Deliverer::new(
            store.clone(),
            life.clone(),
            Arc::clone(&config.metrics),
            config.delivery.clone(),
        );
        let logs = logs::LogHub::new(store.clone());
        let core = core::Core::new(config, store, deliverer.clone());
        life.spawn(core.run(rx, life.token.clone()));
        Engine {
            tx,
            deliverer,
            logs,
            life,
            max_queued,
        }
    }

    /// A client's call: queued if there is room, else refused at once ([`EngineError::Busy`]).
    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send(make(reply)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => EngineError::Busy(self.max_queued),
            mpsc::error::TrySendError::Closed(_) => EngineError::Stopped,
        })?;
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
        self.cancel_by(run_id, reason, None).await
    }

    /// [`Engine::cancel`], saying who asked (an authenticated caller: `RunInfo::cancelled_by`).
    pub async fn cancel_by(
        &self,
        run_id: &str,
        reason: &str,
        by: Option<&str>,
    ) -> Result<(), EngineError> {
        self.ask(|reply| Command::Cancel {
            run_id: run_id.to_string(),
            reason: reason.to_string(),
            by: by.map(str::to_string),
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

    /// What happens to a run from now on (after what happened so far); a finished run's
    /// stream holds what is kept of its history, then its end.
    pub async fn watch(&self, run_id: &str) -> Result<Watch, EngineError> {
        self.ask(|reply| Command::Watch {
            run_id: run_id.to_string(),
            resumed: false,
            reply,
        })
        .await
    }

    /// A watch resumed after a break (see [`WatchEvent::Snapshot`]): a gap, the run as it is
    /// now, then what happens next (a finished run: its end).
    pub async fn watch_resumed(&self, run_id: &str) -> Result<Watch, EngineError> {
        self.ask(|reply| Command::Watch {
            run_id: run_id.to_string(),
            resumed: true,
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
    /// A page of the runs `query` admits, newest first, without task lists.
    pub async fn list_runs(&self, query: RunQuery) -> Result<RunPage, EngineError> {
        self.ask(|reply| Command::ListRuns { query, reply }).await
    }

    /// Loads the store's active runs (after a restart or a failover) and queues their pending
    /// webhooks; returns how many runs it took over.
    pub async fn recover(&self) -> Result<usize, EngineError> {
        // Not a client's call: it waits for room rather than being refused.
        let (reply, rx) = oneshot::channel();
        (self.tx.send(Command::Recover { reply }).await).map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    pub async fn list_agents(&self) -> Result<Vec<AgentInfo>, EngineError> {
        self.ask(|reply| Command::ListAgents { reply }).await
    }

    /// Webhook endpoints and dead letters, as the deliverer holds them.
    pub fn list_webhooks(&self) -> (Vec<EndpointReport>, Vec<DeadLetter>) {
        self.deliverer.report()
    }

    /// What the agent redacts in a task's output (its log is redacted the same way when read).
    pub async fn task_secrets(&self, run_id: &str, task: &str) -> Result<Vec<String>, EngineError> {
        let (run_id, task) = (run_id.to_string(), task.to_string());
        self.ask(|reply| Command::TaskSecrets {
            run_id,
            task,
            reply,
        })
        .await
    }

    /// Sends a run's dead letters (from sequence `from`, to `url` only when given) again.
    pub async fn replay_webhooks(
        &self,
        run_id: &str,
        from: u64,
        url: Option<String>,
    ) -> Result<Replayed, EngineError> {
        let run_id = run_id.to_string();
        self.ask(|reply| Command::ReplayWebhooks {
            run_id,
            from,
            url,
            reply,
        })
        .await
    }

    /// Enables an endpoint a 410 disabled.
    pub fn enable_webhook(&self, url: &str) -> Result<(), EngineError> {
        match self.deliverer.enable(url) {
            true => Ok(()),
            false => Err(EngineError::NotDisabled(url.to_string())),
        }
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
        let logs = self.logs.clone();
        self.life.spawn(async move {
            let mut to_agent = Some(to_agent);
            while let Some(msg) = from_agent.recv().await {
                let Some(msg) = msg.msg else { continue };
                let cmd = match (msg, to_agent.take()) {
                    (agent_message::Msg::Hello(hello), Some(tx)) => {
                        logs.hello(conn, &hello.agent_id, &tx);
                        Command::AgentHello { conn, hello, tx }
                    }
                    // Log chunks go straight to their reader, never through the interpreter.
                    (agent_message::Msg::LogChunk(c), None) => {
                        logs.chunk(conn, c);
                        continue;
                    }
                    (_, Some(_)) => {
                        tracing::warn!(conn, "agent spoke before Hello; closing its session");
                        break;
                    }
                    (msg, None) => Command::FromAgent { conn, msg },
                };
                // Waiting for room slows this agent's stream (HTTP/2 flow control), and loses
                // nothing; the engine never waits on an agent's incoming stream, so no cycle.
                if tx.send(cmd).await.is_err() {
                    return;
                }
            }
            logs.gone(conn);
            let _ = tx.send(Command::AgentGone { conn }).await;
        });
    }

    /// Reads attempt `attempt` (0: the latest) of the task named `task` of `run_id` from the
    /// agent that ran it: where it is, then its chunks (see [`logs::LogHub::open`]).
    pub async fn task_log(
        &self,
        run_id: &str,
        task: &str,
        attempt: u32,
        stream: i32,
        offsets: (i64, i64),
        follow: bool,
    ) -> Result<(logs::Located, logs::LogReader), logs::LogError> {
        let run = self.get_run(run_id).await?;
        let Some(t) = run.tasks.iter().find(|t| &*t.name == task) else {
            return Err(logs::LogError::NotFound(format!(
                "run {} has no task named '{task}'",
                run.run_id
            )));
        };
        if t.attempt == 0 {
            return Err(logs::LogError::NotFound(format!(
                "task '{task}' of run {} has not started: it has no log yet",
                run.run_id
            )));
        }
        let at = self.logs.locate(&run.run_id, task, attempt).await?;
        let reader = self.logs.open(&run.run_id, &at, stream, offsets, follow)?;
        Ok((at, reader))
    }

    /// Waits (at most `timeout`) for queued webhooks; returns what is still undelivered.
    pub async fn flush_webhooks(&self, timeout: Duration) -> Vec<Undelivered> {
        self.deliverer.flush(timeout).await
    }
}
