//! Attempt supervision: starting a leased attempt (as the agent's child, or under a shim that
//! records it in its attempt directory), adopting one a previous agent process started, finding
//! after a restart what ended meanwhile, and stopping them. What the session needs to know comes
//! out of [`Attempts::next`] as [`AttemptEvent`]s, already shaped as protocol messages; each
//! attempt's go through its `outlet`, where output is throttled (`--max-stream-rate`).

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use factotum_common::redact::{LineRedactor, Redactor};
use factotum_common::run::{clamp_max_output, MAX_TAIL};
use factotum_common::run::{Outcome, Stream};
use factotum_common::tail::{last_bytes, Tail};
use factotum_proto::{agent_message, attempt_result, AttemptResult, Lease, LeaseRef};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::executor::{execute, ExecEvent, ExecSpec};
use crate::frame::{self, Frame, Recorded};
use crate::kill::Escalation;
use crate::logs::{LogBook, LogPaths};
use crate::metrics::metrics;
use crate::shim;
use crate::throttle::StreamRate;

mod outlet;

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
    running: HashMap<Key, (LeaseRef, CancellationToken)>,
    tasks: JoinSet<()>,
    events_tx: mpsc::Sender<AttemptEvent>,
    events_rx: mpsc::Receiver<AttemptEvent>,
}

impl Attempts {
    pub fn new(how: Supervision) -> Attempts {
        let (events_tx, events_rx) = mpsc::channel(4096);
        Attempts {
            how,
            running: HashMap::new(),
            tasks: JoinSet::new(),
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

    /// Starts the leased attempt.
    pub fn spawn(&mut self, lease: Lease, r: LeaseRef) {
        let cancel = CancellationToken::new();
        self.running.insert(r.key(), (r.clone(), cancel.clone()));
        let log = (self.how.logs.as_ref()).and_then(|b| b.begin(&r.run_id, r.task, r.attempt));
        let shim = self.record(&lease, &r, log.as_ref());
        // Through a shim, the shim writes the log; else the executor does.
        let log = log.filter(|_| shim.is_none());
        let outlet = Outlet::new(
            r.clone(),
            self.events_tx.clone(),
            self.how.max_stream_rate,
            false,
        );
        let grace = self.how.kill_grace;
        self.tasks
            .spawn(run_attempt(lease, r, grace, (shim, log), outlet, cancel));
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
            if self.tasks.is_empty() {
                return self.events_rx.try_recv().ok().inspect(|ev| self.ended(ev));
            }
            tokio::select! {
                biased;
                Some(ev) = self.events_rx.recv() => {
                    self.ended(&ev);
                    return Some(ev);
                }
                Some(_) = self.tasks.join_next() => {}
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
    pub fn forget(&self, r: &LeaseRef) {
        if let Some(state) = &self.how.state_dir {
            let _ = fs::remove_dir_all(shim::attempt_dir(state, &r.run_id, r.task, r.attempt));
        }
    }

    /// Records the lease in its attempt directory; `None` (run without a shim) when there is no
    /// state dir or it cannot be written.
    fn record(
        &self,
        lease: &Lease,
        r: &LeaseRef,
        log: Option<&LogPaths>,
    ) -> Option<(PathBuf, PathBuf)> {
        let (state, exe) = (self.how.state_dir.as_ref()?, self.how.shim_exe.as_ref()?);
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
            Ok(()) => Some((exe.clone(), dir)),
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
        let Ok(entries) = fs::read_dir(state.join("attempts")) else {
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
            let pid = fs::read_to_string(dir.join(shim::PID))
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok());
            if let Some(f) = result_on_disk(&dir, &r, max, &redact, pid, false) {
                tracing::info!(run = %r.run_id, task = r.task, attempt = r.attempt, "found an attempt that ended while away");
                ended.push(f);
            } else if let Some(pid) = pid {
                // `result_on_disk` is `None` only while the shim runs.
                tracing::info!(run = %r.run_id, task = r.task, attempt = r.attempt, pid, "adopting a task still running");
                let cancel = CancellationToken::new();
                self.running.insert(r.key(), (r.clone(), cancel.clone()));
                // Its shim still appends its log: followed until it ends.
                let log = (self.how.logs.as_ref())
                    .and_then(|b| Some((b, b.paths(&r.run_id, r.task, r.attempt)?)));
                if let Some((book, paths)) = log {
                    book.live(&paths);
                }
                let rate = self.how.max_stream_rate;
                let outlet = Outlet::new(r.clone(), self.events_tx.clone(), rate, true);
                let grace = self.how.kill_grace;
                let how = Adopted {
                    max_output: max,
                    redact,
                    pid,
                    kill_grace: grace,
                };
                self.tasks.spawn(adopt(dir, r, how, outlet, cancel));
            }
        }
        metrics().set_running(self.running.len());
        ended
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

/// How an adopted attempt is followed.
struct Adopted {
    max_output: usize,
    redact: Redactor,
    /// Its shim's.
    pid: i32,
    kill_grace: Duration,
}

/// Follows a task that a previous agent process started under a shim: new output lines from
/// its output file (redacted as the lease says), its end from its exit file; a cancel stops its
/// process group.
async fn adopt(
    dir: PathBuf,
    r: LeaseRef,
    how: Adopted,
    mut outlet: Outlet,
    cancel: CancellationToken,
) {
    use std::io::Seek;
    const POLL: Duration = Duration::from_millis(50);
    let Adopted {
        max_output,
        redact,
        pid,
        kill_grace,
    } = how;
    let output = dir.join(shim::OUTPUT);
    // Lines already written were seen (or lost) with the previous agent: follow from the end.
    let mut offset = fs::metadata(&output).map(|m| m.len()).unwrap_or(0);
    let mut stopping = Escalation::new(u32::try_from(pid).ok(), kill_grace);
    let mut redacting = [LineRedactor::new(), LineRedactor::new()];
    let mut passed = vec![];
    loop {
        if let Ok(mut f) = fs::File::open(&output) {
            if f.seek(std::io::SeekFrom::Start(offset)).is_ok() {
                let mut reader = BufReader::new(f);
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 && line.ends_with('\n') {
                    offset += line.len() as u64;
                    // Output lines only: the closing `X<code>` line is read from `exit`.
                    if let Some(Frame::Line {
                        stream,
                        text,
                        continued,
                    }) = frame::parse_frame(line.trim_end_matches('\n'))
                    {
                        let ends = !frame::may_continue(text);
                        redacting[usize::from(stream == Stream::Stderr)].push(
                            &redact,
                            text,
                            continued,
                            ends,
                            &mut passed,
                        );
                        if send_all(&mut outlet, stream, &mut passed).await.is_err() {
                            return;
                        }
                    }
                    line.clear();
                }
            }
        }
        let killed = stopping.stopping();
        if let Some(f) = result_on_disk(&dir, &r, max_output, &redact, Some(pid), killed) {
            for (i, stream) in [Stream::Stdout, Stream::Stderr].into_iter().enumerate() {
                redacting[i].finish(&redact, &mut passed);
                if send_all(&mut outlet, stream, &mut passed).await.is_err() {
                    return;
                }
            }
            outlet.done(f).await;
            return;
        }
        let now = tokio::time::Instant::now();
        if cancel.is_cancelled() {
            stopping.stop(now);
        }
        stopping.tick(now);
        tokio::time::sleep(POLL).await;
    }
}

/// Sends what redaction passed on (an empty end of a line cut where it ended is not sent).
async fn send_all(
    outlet: &mut Outlet,
    stream: Stream,
    passed: &mut Vec<(String, bool)>,
) -> Result<(), outlet::Closed> {
    for (text, continued) in passed.drain(..) {
        if !(continued && text.is_empty()) {
            outlet.output(stream, text, continued).await?;
        }
    }
    Ok(())
}

/// How an attempt run under a shim ended, from its directory: the recorded exit; or, the shim
/// gone without one, a kill (`killed`: we stopped it, and a signal counts as 1) or a supervisor
/// that died. `None` while the shim (`pid`) still runs.
fn result_on_disk(
    dir: &Path,
    r: &LeaseRef,
    max: usize,
    redact: &Redactor,
    pid: Option<i32>,
    killed: bool,
) -> Option<AttemptResult> {
    let (outcome, duration) = match read_exit(dir) {
        Some(done) => (attempt_result::Outcome::ExitCode(done.code), done.duration),
        None if pid.is_some_and(|p| shim_alive(p, dir)) => return None,
        None if killed => (attempt_result::Outcome::ExitCode(1), Duration::ZERO),
        None => (
            attempt_result::Outcome::SpawnError(
                "the task's supervisor ended without recording an exit code (was it killed?)"
                    .into(),
            ),
            Duration::ZERO,
        ),
    };
    let (out, err) = read_tails(dir, max, redact);
    Some(result_msg(r, outcome, out, err, duration))
}

/// Reads `<dir>/exit`, if the task has ended.
pub fn read_exit(dir: &Path) -> Option<Recorded> {
    frame::parse_exit(&fs::read_to_string(dir.join(shim::EXIT)).ok()?)
}

/// The last `max` characters of each stream in `<dir>/output`, redacted by `redact` (the file
/// itself keeps the task's raw output).
pub fn read_tails(dir: &Path, max: usize, redact: &Redactor) -> (String, String) {
    let mut tails = [Tail::new(max), Tail::new(max)];
    let mut redacting = [LineRedactor::new(), LineRedactor::new()];
    let mut passed = vec![];
    let mut keep = |i: usize, passed: &mut Vec<(String, bool)>| {
        for (text, continued) in passed.drain(..) {
            tails[i].push_piece(&text, continued);
        }
    };
    if let Ok(f) = fs::File::open(dir.join(shim::OUTPUT)) {
        for line in BufReader::new(f).lines().map_while(Result::ok) {
            if let Some(Frame::Line {
                stream,
                text,
                continued,
            }) = frame::parse_frame(&line)
            {
                let i = usize::from(stream == Stream::Stderr);
                let ends = !frame::may_continue(text);
                redacting[i].push(redact, text, continued, ends, &mut passed);
                keep(i, &mut passed);
            }
        }
    }
    for (i, r) in redacting.iter_mut().enumerate() {
        r.finish(redact, &mut passed);
        keep(i, &mut passed);
    }
    let [out, err] = tails;
    (out.as_str().to_string(), err.as_str().to_string())
}

/// Whether `pid` is a live shim for `dir` (not a zombie, not a recycled pid of something else:
/// its command line names the attempt directory). The agent names it by an absolute path; a
/// relative one (from an older agent) is taken against the shim's own working directory.
pub fn shim_alive(pid: i32, dir: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let zombie = stat
        .rsplit(')')
        .next()
        .is_some_and(|rest| rest.trim_start().starts_with('Z'));
    let cwd = fs::read_link(format!("/proc/{pid}/cwd")).ok();
    !zombie
        && cmdline.split(|b| *b == 0).any(|arg| {
            let arg = Path::new(std::ffi::OsStr::from_bytes(arg));
            arg == dir
                || (!arg.as_os_str().is_empty()
                    && arg.is_relative()
                    && cwd.as_ref().is_some_and(|cwd| cwd.join(arg) == dir))
        })
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
