//! The agent side of a session: take leases, run them, report, honour cancels.
//!
//! Transport-agnostic: a [`Link`] is a pair of channels. The embedded runner connects them
//! straight to the engine; the fleet's gRPC client pumps them to and from a stream.

use std::collections::HashMap;
use std::time::Duration;

use factotum_common::run::{Outcome, Stream};
use factotum_proto::{
    agent_message, coordinator_message, finished, AgentMessage, CoordinatorMessage, Finished,
    Hello, Lease, LeaseRef, Output, Started,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::executor::{execute, ExecEvent, ExecSpec};

/// Who this agent is and how it runs tasks.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub agent_id: String,
    pub hostname: String,
    pub ips: Vec<String>,
    pub labels: HashMap<String, String>,
    /// Tasks run at once (0 = no limit).
    pub slots: u32,
    /// Time between TERM and KILL when an attempt is cancelled or the agent stops.
    pub kill_grace: Duration,
}

/// The two directions of a session.
#[derive(Debug)]
pub struct Link {
    pub tx: mpsc::Sender<AgentMessage>,
    pub rx: mpsc::Receiver<CoordinatorMessage>,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the coordinator closed the session")]
    Closed,
}

type Key = (String, u32, u32);

/// Runs one session until the coordinator closes it or `shutdown` fires. Either way every
/// running attempt is stopped (TERM, grace, KILL) and reported before this returns.
pub async fn run_session(
    cfg: &AgentConfig,
    link: Link,
    shutdown: CancellationToken,
) -> Result<(), SessionError> {
    let Link { tx, mut rx } = link;
    let hello = Hello {
        agent_id: cfg.agent_id.clone(),
        hostname: cfg.hostname.clone(),
        ips: cfg.ips.clone(),
        labels: cfg.labels.clone(),
        slots: cfg.slots,
        version: factotum_common::VERSION.to_string(),
        running: vec![],
    };
    send(&tx, agent_message::Msg::Hello(hello)).await?;
    let mut epoch = 0u64;
    let mut running: HashMap<Key, CancellationToken> = HashMap::new();
    let mut attempts: JoinSet<Key> = JoinSet::new();
    let result = loop {
        tokio::select! {
            msg = rx.recv() => match msg.and_then(|m| m.msg) {
                Some(coordinator_message::Msg::Welcome(w)) => epoch = epoch.max(w.epoch),
                Some(coordinator_message::Msg::Lease(lease)) => {
                    let Some(r) = lease.lease.clone() else { continue };
                    if r.epoch < epoch || running.contains_key(&r.key()) {
                        continue; // a lease from a deposed leader, or a duplicate
                    }
                    let cancel = CancellationToken::new();
                    running.insert(r.key(), cancel.clone());
                    attempts.spawn(run_attempt(lease, r, cfg.kill_grace, tx.clone(), cancel));
                }
                Some(coordinator_message::Msg::Cancel(c)) => {
                    if let Some(token) = c.lease.and_then(|r| running.get(&r.key()).cloned()) {
                        token.cancel();
                    }
                }
                Some(coordinator_message::Msg::Ack(_)) => {}
                None => break Err(SessionError::Closed),
            },
            Some(done) = attempts.join_next(), if !attempts.is_empty() => {
                if let Ok(key) = done {
                    running.remove(&key);
                }
            }
            _ = shutdown.cancelled() => break Ok(()),
        }
    };
    for token in running.values() {
        token.cancel();
    }
    while attempts.join_next().await.is_some() {}
    result
}

async fn run_attempt(
    lease: Lease,
    r: LeaseRef,
    kill_grace: Duration,
    tx: mpsc::Sender<AgentMessage>,
    cancel: CancellationToken,
) -> Key {
    let spec = ExecSpec {
        command_line: lease.command_line,
        max_output: lease.max_output as usize,
        dry_run: lease.dry_run,
        kill_grace,
    };
    let (ev_tx, mut ev_rx) = mpsc::channel::<ExecEvent>(256);
    let forward = {
        let tx = tx.clone();
        let r = r.clone();
        async move {
            while let Some(ev) = ev_rx.recv().await {
                let msg = match ev {
                    ExecEvent::Started { pid } => agent_message::Msg::Started(Started {
                        lease: Some(r.clone()),
                        pid,
                    }),
                    ExecEvent::Line { stream, line } => agent_message::Msg::Output(Output {
                        lease: Some(r.clone()),
                        stream: match stream {
                            Stream::Stdout => factotum_proto::Stream::Stdout as i32,
                            Stream::Stderr => factotum_proto::Stream::Stderr as i32,
                        },
                        line,
                    }),
                };
                if tx.send(AgentMessage { msg: Some(msg) }).await.is_err() {
                    return;
                }
            }
        }
    };
    let (result, ()) = tokio::join!(execute(&spec, ev_tx, cancel), forward);
    let outcome = match result.outcome {
        Outcome::Exited(code) => finished::Outcome::ExitCode(code),
        Outcome::SpawnFailed(err) | Outcome::Lost(err) => finished::Outcome::SpawnError(err),
    };
    let done = Finished {
        lease: Some(r.clone()),
        outcome: Some(outcome),
        stdout_tail: result.stdout,
        stderr_tail: result.stderr,
        duration_nanos: u64::try_from(result.duration.as_nanos()).unwrap_or(u64::MAX),
    };
    let _ = send(&tx, agent_message::Msg::Finished(done)).await;
    r.key()
}

async fn send(
    tx: &mpsc::Sender<AgentMessage>,
    msg: agent_message::Msg,
) -> Result<(), SessionError> {
    tx.send(AgentMessage { msg: Some(msg) })
        .await
        .map_err(|_| SessionError::Closed)
}
