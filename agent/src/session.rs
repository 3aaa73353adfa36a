//! The agent side of the session protocol: take leases, report, honour cancels and acks.
//!
//! Transport-agnostic: a [`Link`] is a pair of channels. The embedded runner connects them
//! straight to the engine; `factotum-agent` pumps them to and from a gRPC stream, and reconnects
//! (see [`crate::daemon`]). Attempts belong to the [`Agent`], not to a session: they keep
//! running while the agent reconnects, are re-attached in the next `Hello`, and results not yet
//! acknowledged are sent again. Running them is [`crate::attempt`]'s.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use factotum_proto::{
    agent_message, coordinator_message, AgentMessage, AttemptResult, CoordinatorMessage, Heartbeat,
    Hello, Lease,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::attempt::{AttemptEvent, Attempts, Key, Supervision};
use crate::logs::{serve::Serving, LogBook};
use crate::throttle::StreamRate;

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
    /// Once draining, how long running tasks may go on before they are stopped.
    pub drain_grace: Duration,
    /// Where attempts are recorded so they survive an agent restart (see
    /// `attempt::recorded`); `None`: tasks run as the agent's own children and die with it.
    pub state_dir: Option<PathBuf>,
    /// With a state dir: run each task under this per-task shim instead (`<exe> --shim <dir>`,
    /// or `factotum-shim <dir>`), as earlier agents did; the agent's flags leave it `None`.
    pub shim_exe: Option<PathBuf>,
    /// Output each attempt streams, at most (`--max-stream-rate`); `None`: every line, waiting
    /// for the link if it must (`factotum run`, whose console is the stream).
    pub max_stream_rate: Option<StreamRate>,
}

/// The two directions of a session.
#[derive(Debug)]
pub struct Link {
    pub tx: mpsc::Sender<AgentMessage>,
    pub rx: mpsc::Receiver<CoordinatorMessage>,
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The coordinator closed the stream (or it broke).
    Closed,
    /// Our `stop` token fired.
    Stopped,
    /// The coordinator refused the session (another agent of the same name is connected).
    Refused,
}

/// The agent: its running attempts and its unacknowledged results, across sessions.
pub struct Agent {
    cfg: AgentConfig,
    /// The newest leader epoch seen: leases from older ones are refused.
    epoch: u64,
    attempts: Attempts,
    unacked: HashMap<Key, AttemptResult>,
    /// The current (or last) session got its `Welcome`: a coordinator took us on.
    welcomed: bool,
    /// Draining (no new leases) since it was asked; tasks still running then are stopped.
    drain_until: Option<tokio::time::Instant>,
    /// The tasks still running at `drain_until` have been told to stop.
    drain_stopped: bool,
    /// This process, to the coordinator: new for every agent process.
    instance_id: String,
    /// This agent's state directory, to the coordinator (empty without one).
    state_id: String,
    /// Why the last session was refused, if it was (logged once per streak of refusals).
    refused: Option<String>,
    /// Where full task logs are kept and served from (`None`: they are not).
    logs: Option<LogBook>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("agent_id", &self.cfg.agent_id)
            .field("running", &self.attempts.len())
            .field("unacked", &self.unacked.len())
            .finish()
    }
}

impl Agent {
    pub fn new(mut cfg: AgentConfig) -> Agent {
        // Attempt directories are named by absolute paths: a shim runs in its task's working
        // directory, and is recognised after a restart by the directory on its command line.
        if let Some(state) = &mut cfg.state_dir {
            if let Ok(abs) = std::path::absolute(&*state) {
                *state = abs;
            }
        }
        let attempts = Attempts::new(Supervision {
            kill_grace: cfg.kill_grace,
            state_dir: cfg.state_dir.clone(),
            shim_exe: cfg.shim_exe.clone(),
            max_stream_rate: cfg.max_stream_rate,
            logs: None,
        });
        let state_id = match &cfg.state_dir {
            Some(dir) => state_id(dir).unwrap_or_else(|e| {
                tracing::warn!(error = %e, dir = %dir.display(), "cannot keep this agent's id in its state directory");
                String::new()
            }),
            None => String::new(),
        };
        Agent {
            cfg,
            epoch: 0,
            attempts,
            unacked: HashMap::new(),
            welcomed: false,
            drain_until: None,
            drain_stopped: false,
            instance_id: random_id(),
            state_id,
            refused: None,
            logs: None,
        }
    }

    /// Keeps every attempt's full output in `logs` from now on, and serves it on request.
    pub fn set_logs(&mut self, logs: Option<LogBook>) {
        self.attempts.set_logs(logs.clone());
        self.logs = logs;
    }

    /// Attempts still running.
    pub fn running(&self) -> usize {
        self.attempts.len()
    }

    /// Results not yet acknowledged by a coordinator.
    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }

    /// Takes no new leases from now on (telling the coordinator at the next chance), and stops
    /// the tasks still running after the drain grace.
    pub fn start_draining(&mut self) {
        if self.drain_until.is_none() {
            tracing::info!(running = self.attempts.len(), "draining: no new leases");
            self.drain_until = Some(tokio::time::Instant::now() + self.cfg.drain_grace);
        }
    }

    /// When the drain grace ends, once draining.
    pub fn drain_until(&self) -> Option<tokio::time::Instant> {
        self.drain_until
    }

    fn draining(&self) -> bool {
        self.drain_until.is_some()
    }

    /// Draining and nothing left to run or report.
    fn drained(&self) -> bool {
        self.draining() && self.attempts.is_empty() && self.unacked.is_empty()
    }

    /// Whether the last session got as far as the coordinator's `Welcome`.
    pub fn welcomed(&self) -> bool {
        self.welcomed
    }

    /// Why the coordinator refused the last session, if it did.
    pub fn refused(&self) -> Option<&str> {
        self.refused.as_deref()
    }

    /// Runs one session until the link closes or `stop` fires, or, once `drain` has fired,
    /// until every attempt has ended and been reported. Attempts keep running when it returns.
    pub async fn session(
        &mut self,
        link: Link,
        stop: &CancellationToken,
        drain: &CancellationToken,
    ) -> SessionEnd {
        let Link { tx, mut rx } = link;
        self.welcomed = false;
        let hello = Hello {
            agent_id: self.cfg.agent_id.clone(),
            hostname: self.cfg.hostname.clone(),
            ips: self.cfg.ips.clone(),
            labels: self.cfg.labels.clone(),
            slots: self.cfg.slots,
            version: factotum_common::VERSION.to_string(),
            running: self.attempts.leases().cloned().collect(),
            finished: self
                .unacked
                .values()
                .filter_map(|f| f.lease.clone())
                .collect(),
            instance_id: self.instance_id.clone(),
            state_id: self.state_id.clone(),
        };
        if send(&tx, agent_message::Msg::Hello(hello)).await.is_err() {
            return SessionEnd::Closed;
        }
        for f in self.unacked.values() {
            if send(&tx, agent_message::Msg::AttemptResult(f.clone()))
                .await
                .is_err()
            {
                return SessionEnd::Closed;
            }
        }
        if self.drained() {
            let _ = send(
                &tx,
                agent_message::Msg::Heartbeat(Heartbeat { draining: true }),
            )
            .await;
            return SessionEnd::Stopped;
        }
        let mut beat: Option<tokio::time::Interval> = None;
        let mut told_draining = false;
        // Log requests of this session; dropping it stops them.
        let mut serving = Serving::new(self.logs.clone());
        loop {
            // The drain grace runs out with tasks still running: stop them, keep reporting.
            let grace_over = self
                .drain_until
                .filter(|_| !self.drain_stopped && !self.attempts.is_empty());
            if self.draining() && !told_draining {
                told_draining = send(
                    &tx,
                    agent_message::Msg::Heartbeat(Heartbeat { draining: true }),
                )
                .await
                .is_ok();
            }
            tokio::select! {
                msg = rx.recv() => match msg.and_then(|m| m.msg) {
                    Some(coordinator_message::Msg::Welcome(w)) => {
                        self.welcomed = true;
                        if self.refused.take().is_some() {
                            tracing::info!("the coordinator took the session: the name clash is over");
                        }
                        self.epoch = self.epoch.max(w.epoch);
                        if w.heartbeat_ms > 0 {
                            let d = Duration::from_millis(u64::from(w.heartbeat_ms));
                            beat = Some(tokio::time::interval_at(tokio::time::Instant::now() + d, d));
                        }
                    }
                    Some(coordinator_message::Msg::Lease(lease)) => self.lease(lease),
                    Some(coordinator_message::Msg::Cancel(c)) => {
                        if let Some(r) = c.lease {
                            self.attempts.cancel(&r.key());
                        }
                    }
                    Some(coordinator_message::Msg::Ack(a)) => {
                        if let Some(r) = a.lease {
                            self.unacked.remove(&r.key());
                            self.attempts.forget(&r);
                        }
                        if self.drained() {
                            return SessionEnd::Stopped; // everything reported
                        }
                    }
                    Some(coordinator_message::Msg::LogRequest(r)) => serving.request(r, tx.clone()),
                    Some(coordinator_message::Msg::LogCredit(c)) => serving.credit(c),
                    Some(coordinator_message::Msg::LogCancel(c)) => serving.cancel(c),
                    Some(coordinator_message::Msg::Refused(r)) => {
                        // Once per streak: the agent keeps trying (backing off) quietly.
                        if self.refused.is_none() {
                            tracing::error!(agent = %self.cfg.agent_id, "the coordinator refused this agent: {}; retrying with backoff", r.reason);
                        } else {
                            tracing::debug!(reason = %r.reason, "refused again");
                        }
                        self.refused = Some(r.reason);
                        return SessionEnd::Refused;
                    }
                    None => return SessionEnd::Closed,
                },
                Some(ev) = self.attempts.next() => {
                    let msg = match ev {
                        AttemptEvent::Message(m) => m,
                        AttemptEvent::Done(key, f) => {
                            self.unacked.insert(key, f.clone());
                            agent_message::Msg::AttemptResult(f)
                        }
                    };
                    if send(&tx, msg).await.is_err() {
                        return SessionEnd::Closed;
                    }
                }
                _ = tick(&mut beat) => {
                    let hb = Heartbeat { draining: self.draining() };
                    if send(&tx, agent_message::Msg::Heartbeat(hb)).await.is_err() {
                        return SessionEnd::Closed;
                    }
                }
                _ = stop.cancelled() => return SessionEnd::Stopped,
                _ = crate::executor::sleep_until(grace_over), if grace_over.is_some() => {
                    tracing::warn!(running = self.attempts.len(), "drain grace over: stopping the running tasks");
                    self.drain_stopped = true;
                    self.attempts.cancel_all();
                }
                _ = drain.cancelled(), if !self.draining() => {
                    self.start_draining();
                    told_draining = false;
                    if self.drained() {
                        let _ = send(&tx, agent_message::Msg::Heartbeat(Heartbeat { draining: true })).await;
                        return SessionEnd::Stopped;
                    }
                }
            }
        }
    }

    /// Waits, without a coordinator, until every attempt has ended or `limit` has passed;
    /// results are kept for the next session. Returns whether all ended.
    pub async fn wait_for_attempts(&mut self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.attempts.is_empty() {
            tokio::select! {
                ev = self.attempts.next() => match ev {
                    Some(ev) => self.keep(ev),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => return false,
            }
        }
        true
    }

    /// Stops every attempt (TERM, grace, KILL) and waits for their results, kept for the
    /// next session.
    pub async fn stop_all(&mut self) {
        self.attempts.cancel_all();
        while let Some(ev) = self.attempts.next().await {
            self.keep(ev);
        }
    }

    fn keep(&mut self, ev: AttemptEvent) {
        if let AttemptEvent::Done(key, f) = ev {
            self.unacked.insert(key, f);
        }
    }

    fn lease(&mut self, lease: Lease) {
        let Some(r) = lease.lease.clone() else { return };
        let key = r.key();
        if r.epoch < self.epoch || self.attempts.contains(&key) || self.unacked.contains_key(&key) {
            return; // a lease from a deposed leader, or one we already have
        }
        // The benchmark finds the first lease of a new leader by this line (its epoch).
        tracing::debug!(run = %r.run_id, task = r.task, attempt = r.attempt, epoch = r.epoch, "lease accepted");
        self.attempts.spawn(lease, r);
    }

    /// After a restart: reports what ended while the agent was away and adopts the tasks still
    /// running under their shims. Call before the first session.
    pub fn recover(&mut self) {
        for f in self.attempts.recover() {
            if let Some(r) = &f.lease {
                self.unacked.insert(r.key(), f);
            }
        }
    }
}

/// Runs one session with a fresh [`Agent`] until the coordinator closes it or `shutdown` fires;
/// then every running attempt is stopped (TERM, grace, KILL) and reported if the link still
/// takes it. The embedded runner uses this.
pub async fn run_session(cfg: &AgentConfig, link: Link, shutdown: CancellationToken) -> SessionEnd {
    let mut agent = Agent::new(cfg.clone());
    let tx = link.tx.clone();
    let end = agent
        .session(link, &shutdown, &CancellationToken::new())
        .await;
    agent.stop_all().await;
    for f in agent.unacked.into_values() {
        let _ = send(&tx, agent_message::Msg::AttemptResult(f)).await;
    }
    end
}

/// A random 128-bit id, in hex.
fn random_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// This agent's id kept in `dir/agent-id`: read, or created once.
fn state_id(dir: &std::path::Path) -> std::io::Result<String> {
    let path = dir.join("agent-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(dir)?;
    let id = random_id();
    let tmp = dir.join("agent-id.tmp");
    std::fs::write(&tmp, format!("{id}\n"))?;
    std::fs::rename(&tmp, &path)?;
    Ok(id)
}

async fn send(tx: &mpsc::Sender<AgentMessage>, msg: agent_message::Msg) -> Result<(), ()> {
    tx.send(AgentMessage { msg: Some(msg) })
        .await
        .map_err(|_| ())
}

async fn tick(beat: &mut Option<tokio::time::Interval>) {
    match beat {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_id_is_created_once_and_kept_in_the_state_dir() {
        let base = std::env::temp_dir().join(format!("factotum-state-id-{}", random_id()));
        let (one, two) = (base.join("one"), base.join("two"));
        let first = state_id(&one).unwrap();
        assert_eq!(first.len(), 32);
        assert_eq!(state_id(&one).unwrap(), first, "read back, not made again");
        assert_ne!(state_id(&two).unwrap(), first);
        assert_ne!(random_id(), random_id());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
