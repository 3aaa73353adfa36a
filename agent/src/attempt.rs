//! Attempt supervision: starting a leased attempt (as the agent's child, or under a shim that
//! records it in its attempt directory), adopting one a previous agent process started, finding
//! after a restart what ended meanwhile, and stopping them. What the session needs to know comes
//! out of [`Attempts::next`] as [`AttemptEvent`]s, already shaped as protocol messages; each
//! attempt's go through its `outlet`, where output is throttled (`--max-stream-rate`).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use factotum_common::redact::Redactor;
use factotum_common::run::Outcome;
use factotum_common::run::{clamp_max_output, MAX_TAIL};
use factotum_common::tail::last_bytes;
use factotum_proto::{agent_message, attempt_result, AttemptResult, Lease, LeaseRef};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::executor::{execute, ExecEvent, ExecSpec};
use crate::logs::{LogBook, LogPaths};
use crate::metrics::metrics;
use crate::shim;
use crate::throttle::StreamRate;

mod durable;
mod legacy;
mod outlet;
pub mod recorded;
mod tasks;

use legacy::result_on_disk;
pub use legacy::{read_exit, read_tails, shim_alive};
use outlet::Outlet;

/// `(run, task, attempt)`.
pub type Key = (String, u32, u32);

/// What an attempt reports.
#[derive(Debug)]
pub enum AttemptEvent {
    /// A message for the coordinator while it runs (started, output).
    Message(agent_message::Msg),
    /// It ended, with its result.
    Done(Key, AttemptResult),
}

/// How attempts are run.
#[derive(Debug, Clone)]
pub struct Supervision {
    /// Time between TERM and KILL when an attempt is stopped.
    pub kill_grace: Duration,
    /// Where attempts are recorded (absolute), with the shim that records them.
    pub state_dir: Option<PathBuf>,
    pub shim_exe: Option<PathBuf>,
    /// Output each attempt streams, at most (see [`crate::throttle`]); `None`: every line.
    pub max_stream_rate: Option<StreamRate>,
    /// Where every attempt's full output is kept (`--log-dir`); `None`: nowhere.
    pub logs: Option<LogBook>,
}

/// The attempts running on this agent, each a task of its own with a cancel token.
#[derive(Debug)]
pub struct Attempts {
    how: Supervision,
    /// With a state dir (and no shim): where attempts are recorded, and what it held when
    /// opened (for [`Attempts::recover`]).
    journal: Option<recorded::Journal>,
    pending: Vec<recorded::Entry>,
    /// Attempts whose output went to `<state>/output` (no log kept): removed once forgotten.
    own_outputs: std::collections::HashSet<String>,
    running: HashMap<Key, (LeaseRef, CancellationToken)>,
    tasks: tasks::Tasks,
    /// Results of attempts whose task panicked, not handed on yet.
    panicked: Vec<AttemptEvent>,
    events_tx: mpsc::Sender<AttemptEvent>,
    events_rx: mpsc::Receiver<AttemptEvent>,
}

impl Attempts {
    pub fn new(how: Supervision) -> Attempts {
        let (events_tx, events_rx) = mpsc::channel(4096);
        let opened = match (&how.state_dir, &how.shim_exe) {
            (Some(state), None) => shim::create_private_dir(&state.join("output"))
                .and_then(|()| recorded::Journal::open(state))
                .inspect_err(|e| tracing::warn!(dir = %state.display(), error = %e, "cannot open the state directory's journal; tasks will not survive an agent restart"))
                .ok(),
            _ => None,
        };
        let (journal, pending) = opened.map_or((None, vec![]), |(j, p)| (Some(j), p));
        Attempts {
            how,
            journal,
            pending,
            own_outputs: Default::default(),
            running: HashMap::new(),
            tasks: Default::default(),
            panicked: vec![],
            events_tx,
            events_rx,
        }
    }

    pub fn len(&self) -> usize {
        self.running.len()
    }

    /// Where attempts started from now on keep their full output.
    pub fn set_logs(&mut self, logs: Option<LogBook>) {
        self.how.logs = logs;
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    pub fn contains(&self, key: &Key) -> bool {
        self.running.contains_key(key)
    }

    /// The leases of the attempts running, for a `Hello`.
    pub fn leases(&self) -> impl Iterator<Item = &LeaseRef> {
        self.running.values().map(|(r, _)| r)
    }

    /// Starts the leased attempt: recorded in its attempt directory with `--state-dir` (see
    /// [`recorded`]; under a shim process if one is configured), else as the agent's child.
    pub fn spawn(&mut self, lease: Lease, r: LeaseRef) {
        // A finished attempt's task keeps its memory until joined, and `next` joins only when
        // no event waits: a busy agent (a 200k-task dry run) would keep every one (~6 KB each).
        let failed = self.tasks.reap();
        self.panicked.extend(failed);
        let cancel = CancellationToken::new();
        self.running.insert(r.key(), (r.clone(), cancel.clone()));
        let log = (self.how.logs.as_ref()).and_then(|b| b.begin(&r.run_id, r.task, r.attempt));
        let grace = self.how.kill_grace;
        let rate = self.how.max_stream_rate;
        if let (Some(journal), Some(state), false) =
            (&self.journal, &self.how.state_dir, lease.dry_run)
        {
            let name = recorded::name(&r.run_id, r.task, r.attempt);
            let outputs = match &log {
                Some(l) => [l.stdout(), l.stderr()],
                None => {
                    self.own_outputs.insert(name.clone());
                    recorded::own_outputs(state, &name)
                }
            };
            match journal.lease(&name, &lease, &outputs) {
                Ok(()) => {
                    let argv = recorded::argv(&lease.command_line, state, &name);
                    // Its output is read from files: waiting for the session stalls nobody.
                    let outlet = Outlet::new(r.clone(), self.events_tx.clone(), rate, true);
                    let key = r.clone();
                    let run = durable::run(lease, r, (argv, outputs), grace, outlet, cancel);
                    self.tasks.spawn(&key, run);
                    metrics().set_running(self.running.len());
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot record the attempt in the journal; it will not survive an agent restart");
                }
            }
        }
        let shim = (!lease.dry_run && self.journal.is_none())
            .then(|| self.record(&lease, &r, log.as_ref()))
            .flatten()
            .zip(self.how.shim_exe.clone())
            .map(|(dir, exe)| (exe, dir));
        // Through a shim, the shim writes the log; else the executor does.
        let log = log.filter(|_| shim.is_none());
        let outlet = Outlet::new(r.clone(), self.events_tx.clone(), rate, false);
        let key = r.clone();
        self.tasks.spawn(
            &key,
            run_attempt(lease, r, grace, (shim, log), outlet, cancel),
        );
        metrics().set_running(self.running.len());
    }

    /// Stops one attempt (TERM, grace, KILL); its result comes as usual.
    pub fn cancel(&self, key: &Key) {
        if let Some((_, token)) = self.running.get(key) {
            token.cancel();
        }
    }

    /// Stops every attempt.
    pub fn cancel_all(&self) {
        for (_, token) in self.running.values() {
            token.cancel();
        }
    }

    /// The next event of any attempt; `None` once none is left to come (no attempt running
    /// and nothing queued). Cancel-safe.
    pub async fn next(&mut self) -> Option<AttemptEvent> {
        loop {
            if let Some(ev) = self.panicked.pop() {
                self.ended(&ev);
                return Some(ev);
            }
            if self.tasks.is_empty() {
                return self.events_rx.try_recv().ok().inspect(|ev| self.ended(ev));
            }
            tokio::select! {
                biased;
                Some(ev) = self.events_rx.recv() => {
                    self.ended(&ev);
                    return Some(ev);
                }
                Some(joined) = self.tasks.join_next() => self.panicked.extend(joined),
            }
        }
    }

    fn ended(&mut self, ev: &AttemptEvent) {
        if let AttemptEvent::Done(key, _) = ev {
            if let Some(logs) = &self.how.logs {
                logs.end(&key.0, key.1, key.2);
            }
            self.running.remove(key);
            metrics().set_running(self.running.len());
        }
    }

    /// The coordinator has the attempt's result: its directory can go.
    pub fn forget(&mut self, r: &LeaseRef) {
        let Some(state) = &self.how.state_dir else {
            return;
        };
        match &mut self.journal {
            Some(journal) => {
                let name = recorded::name(&r.run_id, r.task, r.attempt);
                journal.forget(&name);
                if self.own_outputs.remove(&name) {
                    for f in recorded::own_outputs(state, &name) {
                        let _ = fs::remove_file(f);
                    }
                }
                // An attempt an older agent's shim recorded.
                let dir = shim::attempt_dir(state, &r.run_id, r.task, r.attempt);
                if dir.exists() {
                    let _ = fs::remove_dir_all(dir);
                }
            }
            None => {
                let _ = fs::remove_dir_all(shim::attempt_dir(state, &r.run_id, r.task, r.attempt));
            }
        }
    }

    /// Records the lease in its attempt directory for a shim (and where its full log goes);
    /// `None` (run as the agent's own child) when there is no state dir or it cannot be written.
    fn record(&self, lease: &Lease, r: &LeaseRef, log: Option<&LogPaths>) -> Option<PathBuf> {
        let state = self.how.state_dir.as_ref()?;
        let dir = shim::attempt_dir(state, &r.run_id, r.task, r.attempt);
        let written = shim::create_private_dir(&dir)
            .and_then(|()| {
                shim::write_private(
                    &dir.join(shim::LEASE),
                    &prost::Message::encode_to_vec(lease),
                )
            })
            .and_then(|()| match log {
                Some(l) => {
                    let paths = format!("{}\n{}\n", l.stdout().display(), l.stderr().display());
                    shim::write_private(&dir.join(shim::LOG), paths.as_bytes())
                }
                None => Ok(()),
            });
        match written {
            Ok(()) => Some(dir),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot record the attempt; it will not survive an agent restart");
                None
            }
        }
    }

    /// After a restart: adopts the tasks still running under their shims and returns the
    /// results of those that ended while the agent was away. Call before the first session.
    pub fn recover(&mut self) -> Vec<AttemptResult> {
        let mut ended = vec![];
        let Some(state) = self.how.state_dir.clone() else {
            return ended;
        };
        // Which tasks still run: their processes name their attempt directories.
        let running = recorded::find_running(&state.join("attempts"));
        for e in std::mem::take(&mut self.pending) {
            self.recover_entry(&state, e, &running, &mut ended);
        }
        let Ok(entries) = fs::read_dir(state.join("attempts")) else {
            metrics().set_running(self.running.len());
            return ended;
        };
        for entry in entries.flatten() {
            let dir = entry.path();
            let lease = fs::read(dir.join(shim::LEASE))
                .ok()
                .and_then(|b| <Lease as prost::Message>::decode(b.as_slice()).ok());
            let Some((lease, r)) = lease.and_then(|l| l.lease.clone().map(|r| (l, r))) else {
                let _ = fs::remove_dir_all(&dir);
                continue;
            };
            let max = clamp_max_output(lease.max_output as usize);
            let redact = Redactor::new(&lease.redact);
            // An older agent's shim also left its pid.
            let pid = running.get(&dir).copied().or_else(|| {
                fs::read_to_string(dir.join(shim::PID))
                    .ok()
                    .and_then(|p| p.trim().parse::<i32>().ok())
            });
            if let Some(f) = result_on_disk(&dir, &r, max, &redact, pid, false) {
                tracing::info!(run = %r.run_id, task = r.task, attempt = r.attempt, "found an attempt that ended while away");
                ended.push(f);
            } else if let Some(pid) = pid {
                // `result_on_disk` is `None` only while the task's shell (or shim) runs.
                tracing::info!(run = %r.run_id, task = r.task, attempt = r.attempt, pid, "adopting a task still running");
                let cancel = CancellationToken::new();
                self.running.insert(r.key(), (r.clone(), cancel.clone()));
                // Its log is still being appended: followed until it ends.
                let log = (self.how.logs.as_ref())
                    .and_then(|b| Some((b, b.paths(&r.run_id, r.task, r.attempt)?)));
                if let Some((book, paths)) = log {
                    book.live(&paths);
                }
                let rate = self.how.max_stream_rate;
                let outlet = Outlet::new(r.clone(), self.events_tx.clone(), rate, true);
                let how = durable::Adopted {
                    max_output: max,
                    redact,
                    pid,
                    kill_grace: self.how.kill_grace,
                };
                let key = r.clone();
                self.tasks
                    .spawn(&key, legacy::adopt(dir, r, how, outlet, cancel));
            }
        }
        metrics().set_running(self.running.len());
        ended
    }

    /// One attempt the journal holds: its result if it ended, else adopted.
    fn recover_entry(
        &mut self,
        state: &Path,
        e: recorded::Entry,
        running: &HashMap<PathBuf, i32>,
        ended: &mut Vec<AttemptResult>,
    ) {
        let Some(r) = e.lease.lease.clone() else {
            return;
        };
        let redact = Redactor::new(&e.lease.redact);
        if e.outputs == recorded::own_outputs(state, &e.name) {
            self.own_outputs.insert(e.name.clone());
        }
        let marker = state.join("attempts").join(&e.name);
        let journal = state.join(recorded::JOURNAL);
        let Some(&pid) = running.get(&marker).filter(|_| e.exit.is_none()) else {
            // It may have recorded its exit since the journal was read.
            let exit = e.exit.or_else(|| recorded::find_exit(&journal, &e.name));
            tracing::info!(run = %r.run_id, task = r.task, attempt = r.attempt, "found an attempt that ended while away");
            ended.push(durable::ended(&e, &r, exit, false, &redact));
            return;
        };
        tracing::info!(run = %r.run_id, task = r.task, attempt = r.attempt, pid, "adopting a task still running");
        let cancel = CancellationToken::new();
        self.running.insert(r.key(), (r.clone(), cancel.clone()));
        if let Some(book) = &self.how.logs {
            if let Some(paths) = book.paths(&r.run_id, r.task, r.attempt) {
                book.live(&paths);
            }
        }
        let rate = self.how.max_stream_rate;
        let outlet = Outlet::new(r.clone(), self.events_tx.clone(), rate, true);
        let how = durable::Adopted {
            max_output: clamp_max_output(e.lease.max_output as usize),
            redact,
            pid,
            kill_grace: self.how.kill_grace,
        };
        let key = r.clone();
        let job = durable::adopt((journal, e, marker), r, how, outlet, cancel);
        self.tasks.spawn(&key, job);
    }
}

async fn run_attempt(
    lease: Lease,
    r: LeaseRef,
    kill_grace: Duration,
    (shim, log): (Option<(PathBuf, PathBuf)>, Option<LogPaths>),
    mut outlet: Outlet,
    cancel: CancellationToken,
) {
    let pid_file = shim.as_ref().map(|(_, dir)| dir.join(shim::PID));
    let spec = ExecSpec {
        command_line: lease.command_line,
        max_output: clamp_max_output(lease.max_output as usize),
        dry_run: lease.dry_run,
        kill_grace,
        shim,
        env: {
            let mut env: Vec<(String, String)> = lease.env.into_iter().collect();
            env.sort_unstable();
            env
        },
        cwd: (!lease.cwd.is_empty()).then(|| PathBuf::from(lease.cwd)),
        redact: Redactor::new(&lease.redact),
        log,
    };
    let (ev_tx, mut ev_rx) = mpsc::channel::<ExecEvent>(256);
    let forward = async {
        while let Some(ev) = ev_rx.recv().await {
            let sent = match ev {
                ExecEvent::Started { pid } => {
                    if let Some(f) = &pid_file {
                        let _ = shim::write_private(f, pid.to_string().as_bytes());
                    }
                    outlet.started(pid).await
                }
                ExecEvent::Line {
                    stream,
                    line,
                    continued,
                } => outlet.output(stream, line, continued).await,
            };
            if sent.is_err() {
                return;
            }
        }
    };
    let (result, ()) = tokio::join!(execute(&spec, ev_tx, cancel), forward);
    let outcome = match result.outcome {
        Outcome::Exited(code) => attempt_result::Outcome::ExitCode(code),
        Outcome::SpawnFailed(err) | Outcome::Lost(err) => attempt_result::Outcome::SpawnError(err),
    };
    let done = result_msg(&r, outcome, result.stdout, result.stderr, result.duration);
    outlet.done(done).await;
}

fn result_msg(
    r: &LeaseRef,
    outcome: attempt_result::Outcome,
    stdout: String,
    stderr: String,
    d: Duration,
) -> AttemptResult {
    // By construction a result fits any `--max-message-size` (at least 4 MiB): each tail at
    // most MAX_TAIL bytes, whatever the lease asked for (a coordinator may be older), and a
    // spawn error at most MAX_TAIL / 8 bytes (its start, where the reason is).
    let cut = |s: String| {
        if s.len() <= MAX_TAIL {
            s
        } else {
            last_bytes(&s, MAX_TAIL).to_string()
        }
    };
    let outcome = match outcome {
        attempt_result::Outcome::SpawnError(e) if e.len() > MAX_TAIL / 8 => {
            let mut end = MAX_TAIL / 8;
            while !e.is_char_boundary(end) {
                end -= 1;
            }
            attempt_result::Outcome::SpawnError(format!("{}…", &e[..end]))
        }
        other => other,
    };
    AttemptResult {
        lease: Some(r.clone()),
        outcome: Some(outcome),
        stdout_tail: cut(stdout),
        stderr_tail: cut(stderr),
        duration_nanos: u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
    }
}

#[cfg(test)]
mod tests;
