//! Runs one task attempt: `sh -c "<command line>"` in its own process group.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use factotum_common::redact::{LineRedactor, Redactor};
use factotum_common::run::{Outcome, Stream, TaskResult};
use factotum_common::tail::Tail;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::frame::{self, exit_code, Frame, Splitter};
use crate::kill::Escalation;
use crate::logs::{LogPaths, LogWriter};

/// How long to keep reading output after the task exited, for lines still in the pipes. A
/// background process that inherited the pipes can hold them open forever; we don't wait for it.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);

pub use crate::frame::MAX_LINE;

/// Bytes read from a task's pipe at once: every whole line in them travels as one event. 16 KiB
/// streams short lines as fast as a pipe's full 64 KiB did here (25 M lines in 0.3 s), with a
/// quarter of the memory per running task and stream.
const READ_BUFFER: usize = 16 * 1024;

/// What a pipe's reader starts with; it grows to [`READ_BUFFER`] once the task writes
/// something. Most tasks of a wide DAG write nothing, and 500 of them at once held 16 MiB of
/// read buffers the runner faulted in for nothing (5 % of its CPU on 500 independent tasks).
const FIRST_READ_BUFFER: usize = 256;

/// What to run.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    pub command_line: String,
    /// Characters kept per stream for the result.
    pub max_output: usize,
    /// Report success without running anything (`--dry-run`).
    pub dry_run: bool,
    /// Time between TERM and KILL when cancelled.
    pub kill_grace: Duration,
    /// Run through a shim (`<exe> --shim <attempt dir>`) that records the task in that
    /// directory, so it outlives the agent (see [`crate::shim`]).
    pub shim: Option<(PathBuf, PathBuf)>,
    /// Added to the task's environment, on top of the agent's own (later entries win).
    pub env: Vec<(String, String)>,
    /// The task's working directory; `None`: the agent's own.
    pub cwd: Option<PathBuf>,
    /// Replaced by `[redacted]` in every line reported and in the result's tails and spawn
    /// error (the lease's `redact`).
    pub redact: Redactor,
    /// Where the task's raw output is appended (its full log), when the agent keeps logs and
    /// runs the task itself (a shim writes its own).
    pub log: Option<LogPaths>,
}

/// Events an attempt reports while it runs.
#[derive(Debug)]
pub enum ExecEvent {
    Started {
        pid: u32,
    },
    /// Output: one or more whole lines joined by `\n` (read directly, every whole line one
    /// read brought comes at once), or a piece of a long line (`continued`: it goes on the line
    /// the stream's previous piece began).
    Line {
        stream: Stream,
        line: String,
        continued: bool,
    },
}

/// Runs the attempt to its end. Lines go to `events` as they come; `cancel` makes it TERM the
/// process group, then KILL it after `kill_grace`. Never panics: a spawn failure is a result.
pub async fn execute(
    spec: &ExecSpec,
    events: mpsc::Sender<ExecEvent>,
    cancel: CancellationToken,
) -> TaskResult {
    let begun = Instant::now();
    if spec.dry_run {
        return TaskResult {
            outcome: Outcome::Exited(0),
            stdout: String::new(),
            stderr: String::new(),
            duration: begun.elapsed(),
        };
    }
    let framed = spec.shim.is_some();
    let mut shim_code: Option<i32> = None;
    // A simple command runs without a shell (see crate::simple); should that spawn fail, the
    // shell runs it and says why, as it always did. Not with a working directory or a `PWD` of
    // the task's own: `sh` would set or check `PWD` there.
    let own_pwd = spec.env.iter().any(|(k, _)| k == "PWD");
    let direct = (spec.shim.is_none() && spec.cwd.is_none() && !own_pwd)
        .then(|| crate::simple::argv(&spec.command_line))
        .flatten();
    let spawned = match direct {
        Some(words) => command(spec, Some(&words)).spawn().or_else(|_| {
            crate::simple::forget(&words[0]);
            command(spec, None).spawn()
        }),
        None => command(spec, None).spawn(),
    };
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let why = spawn_error(&e, spec.cwd.as_deref());
            return TaskResult {
                outcome: Outcome::SpawnFailed(spec.redact.redact(&why).into_owned()),
                stdout: String::new(),
                stderr: String::new(),
                duration: begun.elapsed(),
            };
        }
    };
    let pid = child.id();
    // Timing points for the hop-latency benchmark (RUST_LOG=factotum_agent::executor=debug).
    tracing::debug!(pid, "process spawned");
    if let Some(pid) = pid {
        let _ = events.send(ExecEvent::Started { pid }).await;
    }
    // Both pipes are read right here (no reader tasks): one less hop per line and per task.
    let log = spec.log.as_ref().filter(|_| !framed);
    // Read directly, whole lines travel in batches (one event per read); a shim's frames are
    // parsed one line at a time.
    let mut pipes = [
        child.stdout.take().map(|p| {
            let log = log.map(|l| LogWriter::open(l.stdout()));
            Pipe::new(Box::new(p), Stream::Stdout, log, !framed)
        }),
        child.stderr.take().map(|p| {
            let log = log.map(|l| LogWriter::open(l.stderr()));
            Pipe::new(Box::new(p), Stream::Stderr, log, !framed)
        }),
    ];
    let mut stdout = Tail::new(spec.max_output);
    let mut stderr = Tail::new(spec.max_output);
    // Through a shim: the stream of the framed line whose first piece came last, while its
    // further pieces are still to come.
    let mut framed_stream: Option<Stream> = None;
    let mut status = None;
    let mut stopping = Escalation::new(pid, spec.kill_grace);
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    // Each stream's redaction: it may hold back the end of a line cut in pieces.
    let mut redacting = [LineRedactor::new(), LineRedactor::new()];
    let mut passed: Vec<(String, bool)> = vec![];
    // Until the process has exited and its pipes are closed (or, after the exit, a short drain
    // time has passed), forward lines and honour cancellation.
    loop {
        let open = pipes.iter().any(Option::is_some);
        if status.is_some() && !open {
            break;
        }
        let kill_at = stopping.kill_at();
        let [out, err] = &mut pipes;
        let piece = tokio::select! {
            s = child.wait(), if status.is_none() => {
                tracing::debug!(pid, "process exited");
                // It may have installed a program the tasks after it run (see crate::simple).
                crate::simple::task_ended();
                status = Some(s);
                drain_deadline = Some(tokio::time::Instant::now() + DRAIN_AFTER_EXIT);
                None
            }
            l = next_piece(out) => l,
            l = next_piece(err) => l,
            _ = cancel.cancelled(), if !stopping.stopping() && status.is_none() => {
                stopping.stop(tokio::time::Instant::now());
                None
            }
            _ = sleep_until(kill_at), if kill_at.is_some() && status.is_none() => {
                stopping.tick(tokio::time::Instant::now());
                None
            }
            _ = sleep_until(drain_deadline), if drain_deadline.is_some() => break,
        };
        // Through a shim, stdout carries framed events (see crate::shim); the further pieces of
        // a framed line cut again here belong to the stream its first piece named.
        let piece = match piece {
            Some(Piece { stream, piece: p }) if framed && stream == Stream::Stdout => {
                if p.continued {
                    let stream = framed_stream;
                    if p.ends {
                        framed_stream = None;
                    }
                    stream.map(|stream| Piece { stream, piece: p })
                } else {
                    framed_stream = None;
                    match frame::parse_frame(&p.text) {
                        Some(Frame::Line {
                            stream,
                            text,
                            continued,
                        }) => {
                            if !p.ends {
                                framed_stream = Some(stream);
                            }
                            let piece = frame::Piece {
                                text: text.to_string(),
                                continued,
                                ends: p.ends,
                            };
                            Some(Piece { stream, piece })
                        }
                        Some(Frame::Exit(recorded)) => {
                            shim_code = Some(recorded.code);
                            None
                        }
                        None => None,
                    }
                }
            }
            other => other,
        };
        if let Some(Piece { stream, piece: p }) = piece {
            // Through a shim, a piece as long as the shim cuts them may go on in the next one.
            let ends = p.ends && !(framed && frame::may_continue(&p.text));
            redacting[stream_index(stream)].push(
                &spec.redact,
                &p.text,
                p.continued,
                ends,
                &mut passed,
            );
            let tail = match stream {
                Stream::Stdout => &mut stdout,
                Stream::Stderr => &mut stderr,
            };
            pass_on(stream, &mut passed, tail, &events).await;
        }
        for p in pipes.iter_mut() {
            if p.as_ref().is_some_and(|p| p.closed) {
                *p = None;
            }
        }
    }
    for (stream, tail) in [(Stream::Stdout, &mut stdout), (Stream::Stderr, &mut stderr)] {
        redacting[stream_index(stream)].finish(&spec.redact, &mut passed);
        pass_on(stream, &mut passed, tail, &events).await;
    }
    // Leave nothing of the group behind once we were asked to stop.
    stopping.finish();
    let outcome = match shim_code {
        Some(code) => Outcome::Exited(code),
        None => from_status(status),
    };
    TaskResult {
        outcome,
        stdout: stdout.as_str().to_string(),
        stderr: stderr.as_str().to_string(),
        duration: begun.elapsed(),
    }
}

/// The process for `spec`: its shim, the program and arguments of a simple command (`direct`),
/// or `sh -c` with the command line; output piped, in a process group of its own.
fn command(spec: &ExecSpec, direct: Option<&[String]>) -> Command {
    let mut cmd = match (&spec.shim, direct) {
        (Some((exe, dir)), _) => {
            // The shim runs in the task's directory (its `sh -c` inherits the directory and the
            // environment): its own paths must not depend on it.
            let mut c = match exe.parent() {
                Some(p) if !p.as_os_str().is_empty() => Command::new(absolute(exe)),
                _ => Command::new(exe), // a bare name: looked up in PATH
            };
            if !exe.ends_with("factotum-shim") {
                c.arg("--shim");
            }
            c.arg(absolute(dir));
            c
        }
        (None, Some([program, args @ ..])) => {
            // Found in PATH here, once a second (see crate::simple); not when the task brings
            // a PATH of its own.
            let found = (!spec.env.iter().any(|(k, _)| k == "PATH"))
                .then(|| crate::simple::locate(program))
                .flatten();
            let mut c = match found {
                Some(exe) => {
                    let mut c = Command::new(exe);
                    c.arg0(program);
                    c
                }
                None => Command::new(program),
            };
            c.args(args);
            if let Some(pwd) = crate::simple::pwd_to_set() {
                c.env("PWD", pwd);
            }
            c
        }
        (None, _) => {
            // An absolute path: no PATH search on every spawn.
            let mut c = Command::new("/bin/sh");
            c.arg("-c").arg(&spec.command_line);
            c
        }
    };
    cmd.stdin(dev_null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    cmd
}

/// A task's stdin: a copy of one `/dev/null` opened once (a `dup` instead of an `open` and its
/// path lookup per task).
fn dev_null() -> Stdio {
    static DEV_NULL: std::sync::OnceLock<Option<std::fs::File>> = std::sync::OnceLock::new();
    let null = DEV_NULL.get_or_init(|| std::fs::File::open("/dev/null").ok());
    match null.as_ref().map(std::fs::File::try_clone) {
        Some(Ok(f)) => Stdio::from(f),
        _ => Stdio::null(),
    }
}

fn stream_index(s: Stream) -> usize {
    match s {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

/// Hands on what redaction passed: into the stream's tail and to `events`.
async fn pass_on(
    stream: Stream,
    passed: &mut Vec<(String, bool)>,
    tail: &mut Tail,
    events: &mpsc::Sender<ExecEvent>,
) {
    for (line, continued) in passed.drain(..) {
        tail.push_piece(&line, continued);
        // A line that ended right where its last piece was cut leaves an empty end: nothing
        // more to show.
        if !(continued && line.is_empty()) {
            let _ = events
                .send(ExecEvent::Line {
                    stream,
                    line,
                    continued,
                })
                .await;
        }
    }
}

/// `path` made absolute against the agent's working directory (unchanged if it already is, or
/// if that directory is unknown).
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Why a spawn with `cwd` as the working directory failed: a failed `chdir` in the child comes
/// back as a bare OS error, so name the directory when it is the likely cause.
pub(crate) fn spawn_error(e: &std::io::Error, cwd: Option<&Path>) -> String {
    let Some(cwd) = cwd else {
        return e.to_string();
    };
    match std::fs::metadata(cwd) {
        Err(problem) => format!(
            "cannot use '{}' as the working directory: {problem}",
            cwd.display()
        ),
        Ok(m) if !m.is_dir() => format!(
            "cannot use '{}' as the working directory: {}",
            cwd.display(),
            std::io::Error::from_raw_os_error(libc::ENOTDIR)
        ),
        // A directory we may not enter, or a problem with the program itself.
        Ok(_) => format!("{e} (working directory '{}')", cwd.display()),
    }
}

fn from_status(status: Option<std::io::Result<std::process::ExitStatus>>) -> Outcome {
    match status {
        Some(Ok(s)) => Outcome::Exited(exit_code(s)),
        Some(Err(e)) => Outcome::SpawnFailed(format!("waiting for the process failed: {e}")),
        None => Outcome::SpawnFailed("the process vanished".into()),
    }
}

/// Sleeps until `at`; never ends without one (a `select!` branch with no deadline).
pub(crate) async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One output pipe, read line by line, a long line in pieces of at most [`MAX_LINE`] bytes.
struct Pipe {
    reader: BufReader<Box<dyn AsyncRead + Unpin + Send>>,
    stream: Stream,
    split: Splitter,
    closed: bool,
    /// Its reader has its full [`READ_BUFFER`].
    grown: bool,
    /// The stream's full log: every raw byte read, as it is read.
    log: Option<LogWriter>,
}

impl Pipe {
    fn new(
        pipe: Box<dyn AsyncRead + Unpin + Send>,
        stream: Stream,
        log: Option<LogWriter>,
        batch: bool,
    ) -> Pipe {
        Pipe {
            // Several whole lines per read (one event for all of them), once the task writes.
            reader: BufReader::with_capacity(FIRST_READ_BUFFER, pipe),
            stream,
            split: if batch {
                Splitter::batching(MAX_LINE)
            } else {
                Splitter::new(MAX_LINE)
            },
            closed: false,
            grown: false,
            log,
        }
    }
}

/// A line, or a piece of one, and its stream.
#[derive(Debug)]
struct Piece {
    stream: Stream,
    piece: frame::Piece,
}

/// The next line or piece of a pipe (`None` for a pipe that is gone: never ready).
async fn next_piece(pipe: &mut Option<Pipe>) -> Option<Piece> {
    let Some(p) = pipe.as_mut().filter(|p| !p.closed) else {
        return std::future::pending().await;
    };
    let stream = p.stream;
    loop {
        let available = p.reader.fill_buf().await.unwrap_or(&[]);
        if available.is_empty() {
            p.closed = true;
            if let Some(log) = &mut p.log {
                log.flush();
            }
            return p.split.finish().map(|piece| Piece { stream, piece });
        }
        let (n, piece) = p.split.feed(available);
        if let Some(log) = &mut p.log {
            log.push(&available[..n]);
        }
        p.reader.consume(n);
        // The next read may wait for the task: what it wrote so far goes to the file first.
        if p.reader.buffer().is_empty() {
            if let Some(log) = &mut p.log {
                log.flush();
            }
            if !p.grown {
                p.grown = true;
                // It writes: from now on, read as much as a read brings (nothing held is lost:
                // the buffer is empty). The stand-in is never read (a capacity of 0 panics).
                let stand_in = BufReader::with_capacity(1, Box::new(tokio::io::empty()) as _);
                let inner = std::mem::replace(&mut p.reader, stand_in).into_inner();
                p.reader = BufReader::with_capacity(READ_BUFFER, inner);
            }
        }
        if let Some(piece) = piece {
            return Some(Piece { stream, piece });
        }
    }
}

#[cfg(test)]
mod tests;
