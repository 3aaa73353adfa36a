//! Full task logs, read from the agents that keep them. Not the interpreter's business: a log
//! read takes no turn of the engine's loop and writes nothing. [`LogHub`] knows each connected
//! agent's session (a weak sender: the interpreter still holds the only strong one, so a
//! forgotten agent's stream still ends), sends a `LogRequest` on it, and routes the agent's
//! `LogChunk`s back to the one reader, granting credit as the reader takes them: at most
//! [`WINDOW`] bytes of a log are in flight per reader, whatever its size.
//!
//! Which agent ran which attempt is recorded with each lease (`runs/<id>/attempts/<task>/<n>`,
//! [`attempt_record`]), kept until the history retention deletes the run: so a log is found
//! after the run ended and after a failover.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use factotum_proto::{
    coordinator_message, CoordinatorMessage, LeaseRef, LogCancel, LogChunk, LogCredit, LogProblem,
    LogRequest,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::store::{Store, StoreError, StoreOp};

/// Bytes of a log the agent may send ahead of the reader.
pub const WINDOW: u32 = 256 << 10;
/// What a chunk counts against the window, at least (so many tiny chunks cannot flood the
/// queue): the agent charges the same.
pub const MIN_COST: u32 = 4 << 10;
/// Chunks the window holds, at most, and the end.
const QUEUED: usize = (WINDOW / MIN_COST) as usize + 2;

/// Why a log cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// No such task or attempt, or the agent has no log of it (never kept, or removed).
    #[error("{0}")]
    NotFound(String),
    /// The agent that holds the log is not connected.
    #[error("{0}")]
    AgentGone(String),
    /// The agent could not read it, or its session ended while sending it.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Engine(#[from] crate::model::EngineError),
}

/// An attempt's record: which agent it was leased to (its log is there).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AttemptRecord {
    pub task: String,
    pub agent: String,
}

/// The write recording that `attempt` of `task` (its index in the plan, named `name`) of
/// `run` was leased to `agent`.
pub fn attempt_record(run: &str, task: u32, attempt: u32, name: &str, agent: &str) -> StoreOp {
    let rec = AttemptRecord {
        task: name.to_string(),
        agent: agent.to_string(),
    };
    StoreOp::Put {
        key: format!("runs/{run}/attempts/{task:08}/{attempt:08}"),
        value: serde_json::to_vec(&rec).unwrap_or_default(),
    }
}

/// Where an attempt's log is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub task: u32,
    pub attempt: u32,
    pub agent: String,
}

type ScanFuture = Pin<Box<dyn Future<Output = Result<Vec<(String, Vec<u8>)>, StoreError>> + Send>>;
type Scan = Arc<dyn Fn(String) -> ScanFuture + Send + Sync>;

/// The agents' sessions and the log reads in progress on them.
#[derive(Clone)]
pub struct LogHub {
    scan: Scan,
    state: Arc<Mutex<HubState>>,
}

impl std::fmt::Debug for LogHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogHub").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct HubState {
    /// Each agent's sessions, newest last (a refused second session stays until it is gone).
    sessions: HashMap<String, Vec<(u64, mpsc::WeakSender<CoordinatorMessage>)>>,
    /// Open reads: the session they were sent on, and where their chunks go.
    reads: HashMap<u64, (u64, mpsc::Sender<LogChunk>)>,
    next: u64,
}

impl LogHub {
    pub fn new<S: Store>(store: S) -> LogHub {
        let scan: Scan = Arc::new(move |prefix: String| {
            let store = store.clone();
            Box::pin(async move { store.scan(&prefix).await })
        });
        LogHub {
            scan,
            state: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An agent's session said Hello on `conn`.
    pub fn hello(&self, conn: u64, agent: &str, tx: &mpsc::Sender<CoordinatorMessage>) {
        let mut s = self.lock();
        let list = s.sessions.entry(agent.to_string()).or_default();
        list.retain(|(_, w)| w.strong_count() > 0);
        list.push((conn, tx.downgrade()));
    }

    /// The session on `conn` ended: its reads end too (their readers are told).
    pub fn gone(&self, conn: u64) {
        let mut s = self.lock();
        s.sessions.retain(|_, list| {
            list.retain(|(c, _)| *c != conn);
            !list.is_empty()
        });
        s.reads.retain(|_, (c, _)| *c != conn);
    }

    /// A chunk from the agent on `conn`: to its reader. One that does not fit (the agent
    /// ignored its credit) or whose reader is gone ends the read.
    pub fn chunk(&self, conn: u64, c: LogChunk) {
        let mut s = self.lock();
        let id = c.request_id;
        let Some((from, tx)) = s.reads.get(&id) else {
            return;
        };
        if *from != conn {
            return; // not the session it was asked on
        }
        let end = c.end;
        if tx.try_send(c).is_err() || end {
            s.reads.remove(&id);
        }
    }

    /// Where attempt `attempt` (0: the latest) of the task named `task` of `run` ran.
    pub async fn locate(&self, run: &str, task: &str, attempt: u32) -> Result<Located, LogError> {
        let prefix = format!("runs/{run}/attempts/");
        let kvs = (self.scan)(prefix.clone())
            .await
            .map_err(crate::model::EngineError::from)?;
        let mut best: Option<Located> = None;
        for (k, v) in kvs {
            let Some((t, n)) = k.strip_prefix(&prefix).and_then(|r| r.split_once('/')) else {
                continue;
            };
            let (Ok(t), Ok(n)) = (t.parse::<u32>(), n.parse::<u32>()) else {
                continue;
            };
            let Ok(rec) = serde_json::from_slice::<AttemptRecord>(&v) else {
                continue;
            };
            if rec.task != task || (attempt != 0 && n != attempt) {
                continue;
            }
            if best.as_ref().is_none_or(|b| n > b.attempt) {
                best = Some(Located {
                    task: t,
                    attempt: n,
                    agent: rec.agent,
                });
            }
        }
        best.ok_or_else(|| {
            LogError::NotFound(match attempt {
                // The task has started (the caller checked): leased before attempts were recorded.
                0 => format!("no record of which agent ran task '{task}' of run {run} (leased by an older coordinator): its log cannot be found"),
                n => format!("task '{task}' of run {run} has no attempt {n}"),
            })
        })
    }

    /// Asks the agent holding `at` for its log (see `LogRequest` for `stream` and the offsets).
    pub fn open(
        &self,
        run: &str,
        at: &Located,
        stream: i32,
        offsets: (i64, i64),
        follow: bool,
    ) -> Result<LogReader, LogError> {
        let (tx, rx) = mpsc::channel(QUEUED);
        let (id, agent_tx) = {
            let mut s = self.lock();
            let live = s.sessions.get(&at.agent).and_then(|list| {
                list.iter()
                    .rev()
                    .find_map(|(c, w)| Some((*c, w.upgrade()?)))
            });
            let Some((conn, agent_tx)) = live else {
                return Err(LogError::AgentGone(format!(
                    "the log of attempt {} is on agent {}, which is not connected (stopped, or gone): it cannot be read until the agent is back",
                    at.attempt, at.agent
                )));
            };
            s.next += 1;
            let id = s.next;
            s.reads.insert(id, (conn, tx));
            (id, agent_tx)
        };
        let req = LogRequest {
            request_id: id,
            lease: Some(LeaseRef {
                run_id: run.to_string(),
                task: at.task,
                attempt: at.attempt,
                epoch: 0,
            }),
            stream,
            stdout_offset: offsets.0,
            stderr_offset: offsets.1,
            follow,
            credit: WINDOW,
        };
        let msg = coordinator_message::Msg::LogRequest(req);
        if agent_tx
            .try_send(CoordinatorMessage { msg: Some(msg) })
            .is_err()
        {
            self.lock().reads.remove(&id);
            return Err(LogError::Unavailable(format!(
                "agent {} is too busy to send the log now; try again",
                at.agent
            )));
        }
        Ok(LogReader {
            id,
            rx,
            agent: agent_tx.downgrade(),
            hub: self.clone(),
            done: false,
        })
    }
}

/// One log being read: its chunks in order, then `None`.
pub struct LogReader {
    id: u64,
    rx: mpsc::Receiver<LogChunk>,
    agent: mpsc::WeakSender<CoordinatorMessage>,
    hub: LogHub,
    done: bool,
}

impl LogReader {
    /// The next piece of the log (`stream`, `offset`, `data`); `None` at its end; an error when
    /// the agent could not send it all.
    pub async fn next(&mut self) -> Option<Result<LogChunk, LogError>> {
        if self.done {
            return None;
        }
        let Some(c) = self.rx.recv().await else {
            self.done = true;
            return Some(Err(LogError::Unavailable(
                "the agent's session ended before the whole log was sent".into(),
            )));
        };
        if c.end {
            self.done = true;
            return match LogProblem::try_from(c.problem).unwrap_or(LogProblem::Unspecified) {
                LogProblem::Unspecified => None,
                LogProblem::NotFound | LogProblem::Removed | LogProblem::Disabled => {
                    Some(Err(LogError::NotFound(c.message)))
                }
                LogProblem::Unreadable => Some(Err(LogError::Unavailable(c.message))),
            };
        }
        // Taken: the agent may send as much again.
        let bytes = u32::try_from(c.data.len())
            .unwrap_or(u32::MAX)
            .max(MIN_COST);
        if let Some(tx) = self.agent.upgrade() {
            let credit = LogCredit {
                request_id: self.id,
                bytes,
            };
            let msg = coordinator_message::Msg::LogCredit(credit);
            let _ = tx.send(CoordinatorMessage { msg: Some(msg) }).await;
        }
        Some(Ok(c))
    }
}

impl Drop for LogReader {
    fn drop(&mut self) {
        self.hub.lock().reads.remove(&self.id);
        if !self.done {
            if let Some(tx) = self.agent.upgrade() {
                let cancel = LogCancel {
                    request_id: self.id,
                };
                let msg = coordinator_message::Msg::LogCancel(cancel);
                let _ = tx.try_send(CoordinatorMessage { msg: Some(msg) });
            }
        }
    }
}
