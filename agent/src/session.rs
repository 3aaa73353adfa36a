//! The agent side of the session protocol: take leases, run them, report, honour cancels.
//!
//! Transport-agnostic: a [`Link`] is a pair of channels. The embedded runner connects them
//! straight to the engine; `factotum-agent` pumps them to and from a gRPC stream, and reconnects.
//! Attempts belong to the [`Agent`], not to a session: they keep running while the agent
//! reconnects, are re-attached in the next `Hello`, and results not yet acknowledged are sent again.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use factotum_common::run::{Outcome, Stream};
use factotum_proto::{
    agent_message, attempt_result, coordinator_message, AgentMessage, AttemptResult,
    CoordinatorMessage, Heartbeat, Hello, Lease, LeaseRef, Output, Started,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::executor::{execute, signal_group, ExecEvent, ExecSpec};
use crate::shim;

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
    /// Where attempts are recorded so they survive an agent restart (with `shim_exe`);
    /// `None`: tasks run as the agent's own children and die with it.
    pub state_dir: Option<PathBuf>,
    /// The executable that runs as the shim (`<exe> --shim <dir>`): `factotum-agent` itself.
    pub shim_exe: Option<PathBuf>,
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
}

type Key = (String, u32, u32);

/// What an attempt's task reports to the agent.
enum AttemptEvent {
    Message(agent_message::Msg),
    Done(Key, AttemptResult),
}

/// The agent: its running attempts and its unacknowledged results, across sessions.
pub struct Agent {
    cfg: AgentConfig,
    epoch: u64,
    running: HashMap<Key, (LeaseRef, CancellationToken)>,
    unacked: HashMap<Key, AttemptResult>,
    attempts: JoinSet<()>,
    events_tx: mpsc::Sender<AttemptEvent>,
    events_rx: mpsc::Receiver<AttemptEvent>,
    /// Draining (no new leases) since it was asked; tasks still running then are stopped.
    drain_until: Option<tokio::time::Instant>,
    /// The tasks still running at `drain_until` have been told to stop.
    drain_stopped: bool,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("agent_id", &self.cfg.agent_id)
            .field("running", &self.running.len())
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
        let (events_tx, events_rx) = mpsc::channel(4096);
        Agent {
            cfg,
            epoch: 0,
            running: HashMap::new(),
            unacked: HashMap::new(),
            attempts: JoinSet::new(),
            events_tx,
            events_rx,
            drain_until: None,
            drain_stopped: false,
        }
    }

    /// Attempts still running.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Results not yet acknowledged by a coordinator.
    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }

    /// Takes no new leases from now on (telling the coordinator at the next chance), and stops
    /// the tasks still running after the drain grace.
    pub fn start_draining(&mut self) {
        if self.drain_until.is_none() {
            tracing::info!(running = self.running.len(), "draining: no new leases");
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
        self.draining() && self.running.is_empty() && self.unacked.is_empty()
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
        let hello = Hello {
            agent_id: self.cfg.agent_id.clone(),
            hostname: self.cfg.hostname.clone(),
            ips: self.cfg.ips.clone(),
            labels: self.cfg.labels.clone(),
            slots: self.cfg.slots,
            version: factotum_common::VERSION.to_string(),
            running: self.running.values().map(|(r, _)| r.clone()).collect(),
            finished: self
                .unacked
                .values()
                .filter_map(|f| f.lease.clone())
                .collect(),
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
        loop {
            // The drain grace runs out with tasks still running: stop them, keep reporting.
            let grace_over = self
                .drain_until
                .filter(|_| !self.drain_stopped && !self.running.is_empty());
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
                        self.epoch = self.epoch.max(w.epoch);
                        if w.heartbeat_ms > 0 {
                            let d = Duration::from_millis(u64::from(w.heartbeat_ms));
                            beat = Some(tokio::time::interval_at(tokio::time::Instant::now() + d, d));
                        }
                    }
                    Some(coordinator_message::Msg::Lease(lease)) => self.lease(lease),
                    Some(coordinator_message::Msg::Cancel(c)) => {
                        if let Some((_, token)) = c.lease.and_then(|r| self.running.get(&r.key())) {
                            token.cancel();
                        }
                    }
                                        Some(coordinator_message::Msg::Ack(a)) => {
                        if let Some(r) = a.lease {
                            self.unacked.remove(&r.key());
                            if let Some(state) = &self.cfg.state_dir {
                                let _ = std::fs::remove_dir_all(shim::attempt_dir(state, &r.run_id, r.task, r.attempt));
                            }
                        }
                        if self.drained() {
                            return SessionEnd::Stopped; // everything reported
                        }
                    }
                    None => return SessionEnd::Closed,
                },
                Some(ev) = self.events_rx.recv() => {
                    let msg = match ev {
                        AttemptEvent::Message(m) => m,
                        AttemptEvent::Done(key, f) => {
                            self.running.remove(&key);
                            self.unacked.insert(key, f.clone());
                            agent_message::Msg::AttemptResult(f)
                        }
                    };
                    if send(&tx, msg).await.is_err() {
                        return SessionEnd::Closed;
                    }
                }
                Some(_) = self.attempts.join_next(), if !self.attempts.is_empty() => {}
                _ = tick(&mut beat) => {
                    let hb = Heartbeat { draining: self.draining() };
                    if send(&tx, agent_message::Msg::Heartbeat(hb)).await.is_err() {
                        return SessionEnd::Closed;
                    }
                }
                _ = stop.cancelled() => return SessionEnd::Stopped,
                _ = sleep_until(grace_over), if grace_over.is_some() => {
                    tracing::warn!(running = self.running.len(), "drain grace over: stopping the running tasks");
                    self.drain_stopped = true;
                    for (_, token) in self.running.values() {
                        token.cancel();
                    }
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
        while !self.running.is_empty() {
            tokio::select! {
                Some(ev) = self.events_rx.recv() => self.keep(ev),
                Some(_) = self.attempts.join_next(), if !self.attempts.is_empty() => {}
                _ = tokio::time::sleep_until(deadline) => return false,
            }
        }
        true
    }

    /// Stops every attempt (TERM, grace, KILL) and waits for their results, kept for the
    /// next session.
    pub async fn stop_all(&mut self) {
        for (_, token) in self.running.values() {
            token.cancel();
        }
        while !self.running.is_empty() {
            tokio::select! {
                Some(ev) = self.events_rx.recv() => self.keep(ev),
                done = self.attempts.join_next() => if done.is_none() { break },
            }
        }
        while let Ok(ev) = self.events_rx.try_recv() {
            self.keep(ev);
        }
    }

    fn keep(&mut self, ev: AttemptEvent) {
        if let AttemptEvent::Done(key, f) = ev {
            self.running.remove(&key);
            self.unacked.insert(key, f);
        }
    }

    fn lease(&mut self, lease: Lease) {
        let Some(r) = lease.lease.clone() else { return };
        let key = r.key();
        if r.epoch < self.epoch
            || self.running.contains_key(&key)
            || self.unacked.contains_key(&key)
        {
            return; // a lease from a deposed leader, or one we already have
        }
        let cancel = CancellationToken::new();
        self.running.insert(key, (r.clone(), cancel.clone()));
        let shim = self.prepare_shim(&lease, &r);
        self.attempts.spawn(run_attempt(
            lease,
            r,
            self.cfg.kill_grace,
            shim,
            self.events_tx.clone(),
            cancel,
        ));
    }

    /// Records the lease in its attempt directory; `None` (run without a shim) when there is no
    /// state dir or it cannot be written.
    fn prepare_shim(&self, lease: &Lease, r: &LeaseRef) -> Option<(PathBuf, PathBuf)> {
        let (state, exe) = (self.cfg.state_dir.as_ref()?, self.cfg.shim_exe.as_ref()?);
        let dir = shim::attempt_dir(state, &r.run_id, r.task, r.attempt);
        let written = std::fs::create_dir_all(&dir).and_then(|()| {
            std::fs::write(dir.join(shim::LEASE), prost::Message::encode_to_vec(lease))
        });
        match written {
            Ok(()) => Some((exe.clone(), dir)),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot record the attempt; it will not survive an agent restart");
                None
            }
        }
    }

    /// After a restart: reports what ended while the agent was away and adopts the tasks still
    /// running under their shims. Call before the first session.
    pub fn recover(&mut self) {
        let Some(state) = self.cfg.state_dir.clone() else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(state.join("attempts")) else {
            return;
        };
        for entry in entries.flatten() {
            let dir = entry.path();
            let lease = std::fs::read(dir.join(shim::LEASE))
                .ok()
                .and_then(|b| <Lease as prost::Message>::decode(b.as_slice()).ok());
            let Some((lease, r)) = lease.and_then(|l| l.lease.clone().map(|r| (l, r))) else {
                let _ = std::fs::remove_dir_all(&dir);
                continue;
            };
            let max = lease.max_output as usize;
            let pid = std::fs::read_to_string(dir.join(shim::PID))
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok());
            if let Some(f) = result_on_disk(&dir, &r, max, pid, false) {
                tracing::info!(run = %r.run_id, task = r.task, attempt = r.attempt, "found an attempt that ended while away");
                self.unacked.insert(r.key(), f);
            } else if let Some(pid) = pid {
                // `result_on_disk` is `None` only while the shim runs.
                tracing::info!(run = %r.run_id, task = r.task, attempt = r.attempt, pid, "adopting a task still running");
                let cancel = CancellationToken::new();
                self.running.insert(r.key(), (r.clone(), cancel.clone()));
                self.attempts.spawn(adopt(
                    dir,
                    r,
                    max,
                    pid,
                    self.cfg.kill_grace,
                    self.events_tx.clone(),
                    cancel,
                ));
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

async fn run_attempt(
    lease: Lease,
    r: LeaseRef,
    kill_grace: Duration,
    shim: Option<(PathBuf, PathBuf)>,
    events: mpsc::Sender<AttemptEvent>,
    cancel: CancellationToken,
) {
    let pid_file = shim.as_ref().map(|(_, dir)| dir.join(shim::PID));
    let spec = ExecSpec {
        command_line: lease.command_line,
        max_output: lease.max_output as usize,
        dry_run: lease.dry_run,
        kill_grace,
        shim,
        env: {
            let mut env: Vec<(String, String)> = lease.env.into_iter().collect();
            env.sort_unstable();
            env
        },
        cwd: (!lease.cwd.is_empty()).then(|| PathBuf::from(lease.cwd)),
    };
    let (ev_tx, mut ev_rx) = mpsc::channel::<ExecEvent>(256);
    let forward = {
        let events = events.clone();
        let r = r.clone();
        async move {
            while let Some(ev) = ev_rx.recv().await {
                let msg = match ev {
                    ExecEvent::Started { pid } => {
                        if let Some(f) = &pid_file {
                            let _ = std::fs::write(f, pid.to_string());
                        }
                        agent_message::Msg::Started(Started {
                            lease: Some(r.clone()),
                            pid,
                        })
                    }
                    ExecEvent::Line { stream, line } => output_msg(&r, stream, line),
                };
                if events.send(AttemptEvent::Message(msg)).await.is_err() {
                    return;
                }
            }
        }
    };
    let (result, ()) = tokio::join!(execute(&spec, ev_tx, cancel), forward);
    let outcome = match result.outcome {
        Outcome::Exited(code) => attempt_result::Outcome::ExitCode(code),
        Outcome::SpawnFailed(err) | Outcome::Lost(err) => attempt_result::Outcome::SpawnError(err),
    };
    let done = finished_msg(&r, outcome, result.stdout, result.stderr, result.duration);
    let _ = events.send(AttemptEvent::Done(r.key(), done)).await;
}

fn output_msg(r: &LeaseRef, stream: Stream, line: String) -> agent_message::Msg {
    agent_message::Msg::Output(Output {
        lease: Some(r.clone()),
        stream: match stream {
            Stream::Stdout => factotum_proto::Stream::Stdout as i32,
            Stream::Stderr => factotum_proto::Stream::Stderr as i32,
        },
        line,
    })
}

/// How an attempt run under a shim ended, from its directory: the recorded exit; or, the shim
/// gone without one, a kill (`killed`: we stopped it, and a signal counts as 1) or a supervisor
/// that died. `None` while the shim (`pid`) still runs.
fn result_on_disk(
    dir: &std::path::Path,
    r: &LeaseRef,
    max: usize,
    pid: Option<i32>,
    killed: bool,
) -> Option<AttemptResult> {
    let (outcome, duration) = match shim::read_exit(dir) {
        Some(done) => (attempt_result::Outcome::ExitCode(done.code), done.duration),
        None if pid.is_some_and(|p| shim::shim_alive(p, dir)) => return None,
        None if killed => (attempt_result::Outcome::ExitCode(1), Duration::ZERO),
        None => (
            attempt_result::Outcome::SpawnError(
                "the task's supervisor ended without recording an exit code (was it killed?)"
                    .into(),
            ),
            Duration::ZERO,
        ),
    };
    let (out, err) = shim::read_tails(dir, max);
    Some(finished_msg(r, outcome, out, err, duration))
}

fn finished_msg(
    r: &LeaseRef,
    outcome: attempt_result::Outcome,
    stdout: String,
    stderr: String,
    d: Duration,
) -> AttemptResult {
    AttemptResult {
        lease: Some(r.clone()),
        outcome: Some(outcome),
        stdout_tail: stdout,
        stderr_tail: stderr,
        duration_nanos: u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
    }
}

/// Follows a task that a previous agent process started under a shim: new output lines from
/// its output file, its end from its exit file; a cancel signals its process group.
async fn adopt(
    dir: PathBuf,
    r: LeaseRef,
    max_output: usize,
    pid: i32,
    kill_grace: Duration,
    events: mpsc::Sender<AttemptEvent>,
    cancel: CancellationToken,
) {
    use std::io::{BufRead, Seek};
    const POLL: Duration = Duration::from_millis(50);
    let output = dir.join(shim::OUTPUT);
    // Lines already written were seen (or lost) with the previous agent: follow from the end.
    let mut offset = std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0);
    let mut killing: Option<tokio::time::Instant> = None;
    let group = u32::try_from(pid).ok();
    loop {
        if let Ok(mut f) = std::fs::File::open(&output) {
            if f.seek(std::io::SeekFrom::Start(offset)).is_ok() {
                let mut reader = std::io::BufReader::new(f);
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 && line.ends_with('\n') {
                    offset += line.len() as u64;
                    // Output lines only: the closing `X<code>` line is read from `exit`.
                    if let Some(shim::Frame::Line(stream, text)) =
                        shim::parse_frame(line.trim_end_matches('\n'))
                    {
                        let msg = output_msg(&r, stream, text.to_string());
                        if events.send(AttemptEvent::Message(msg)).await.is_err() {
                            return;
                        }
                    }
                    line.clear();
                }
            }
        }
        if let Some(f) = result_on_disk(&dir, &r, max_output, Some(pid), killing.is_some()) {
            let _ = events.send(AttemptEvent::Done(r.key(), f)).await;
            return;
        }
        match killing {
            None if cancel.is_cancelled() => {
                signal_group(group, libc::SIGTERM);
                killing = Some(tokio::time::Instant::now());
            }
            Some(at) if at.elapsed() >= kill_grace => {
                signal_group(group, libc::SIGKILL);
                killing = Some(tokio::time::Instant::now() + Duration::from_secs(3600));
            }
            _ => {}
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
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
