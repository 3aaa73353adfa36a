//! Runs one task attempt: `sh -c "<command line>"` in its own process group.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use factotum_common::run::{Outcome, Stream, TaskResult};
use factotum_common::tail::{last_chars, Tail};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::frame::{self, exit_code, strip_newline, Frame};
use crate::kill::Escalation;

/// How long to keep reading output after the task exited, for lines still in the pipes. A
/// background process that inherited the pipes can hold them open forever; we don't wait for it.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);

/// The most bytes of one output line held at once. A longer line (or output with no newline at
/// all) is passed on in pieces of at most this size, each reported as a line of its own, so what
/// a task prints never costs more than this per pipe. Pieces end on a character boundary; the
/// result's tails keep the line's bytes as written (no newline added between pieces).
pub const MAX_LINE: usize = 1 << 20;

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
}

/// Events an attempt reports while it runs.
#[derive(Debug)]
pub enum ExecEvent {
    Started { pid: u32 },
    Line { stream: Stream, line: String },
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
    // An absolute path: no PATH search on every spawn.
    let mut cmd = match &spec.shim {
        Some((exe, dir)) => {
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
        None => {
            let mut c = Command::new("/bin/sh");
            c.arg("-c").arg(&spec.command_line);
            c
        }
    };
    let framed = spec.shim.is_some();
    let mut shim_code: Option<i32> = None;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return TaskResult {
                outcome: Outcome::SpawnFailed(spawn_error(&e, spec.cwd.as_deref())),
                stdout: String::new(),
                stderr: String::new(),
                duration: begun.elapsed(),
            }
        }
    };
    let pid = child.id();
    // Timing points for the hop-latency benchmark (RUST_LOG=factotum_agent::executor=debug).
    tracing::debug!(pid, "process spawned");
    if let Some(pid) = pid {
        let _ = events.send(ExecEvent::Started { pid }).await;
    }
    // Both pipes are read right here (no reader tasks): one less hop per line and per task.
    let mut pipes = [
        child
            .stdout
            .take()
            .map(|p| Pipe::new(Box::new(p), Stream::Stdout)),
        child
            .stderr
            .take()
            .map(|p| Pipe::new(Box::new(p), Stream::Stderr)),
    ];
    let mut stdout = Tails::new(spec.max_output);
    let mut stderr = Tails::new(spec.max_output);
    // Through a shim: the stream of the framed line whose first piece came last, while its
    // further pieces are still to come.
    let mut framed_stream: Option<Stream> = None;
    let mut status = None;
    let mut stopping = Escalation::new(pid, spec.kill_grace);
    let mut drain_deadline: Option<tokio::time::Instant> = None;
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
        // a long framed line belong to the stream its first piece named.
        let piece = match piece {
            Some(p) if framed && p.stream == Stream::Stdout && p.continues => {
                let stream = framed_stream;
                if p.ends {
                    framed_stream = None;
                }
                stream.map(|stream| Piece { stream, ..p })
            }
            Some(p) if framed && p.stream == Stream::Stdout => {
                framed_stream = None;
                match frame::parse_frame(&p.text) {
                    Some(Frame::Line(stream, text)) => {
                        if !p.ends {
                            framed_stream = Some(stream);
                        }
                        Some(Piece {
                            stream,
                            text: text.to_string(),
                            ..p
                        })
                    }
                    Some(Frame::Exit(recorded)) => {
                        shim_code = Some(recorded.code);
                        None
                    }
                    None => None,
                }
            }
            other => other,
        };
        if let Some(p) = piece {
            match p.stream {
                Stream::Stdout => stdout.push(&p),
                Stream::Stderr => stderr.push(&p),
            }
            // A line that ended right where its last piece was cut leaves an empty end: nothing
            // more to show.
            if !(p.continues && p.text.is_empty()) {
                let (stream, line) = (p.stream, p.text);
                let _ = events.send(ExecEvent::Line { stream, line }).await;
            }
        }
        for p in pipes.iter_mut() {
            if p.as_ref().is_some_and(|p| p.closed) {
                *p = None;
            }
        }
    }
    // Leave nothing of the group behind once we were asked to stop.
    stopping.finish();
    let outcome = match shim_code {
        Some(code) => Outcome::Exited(code),
        None => from_status(status),
    };
    TaskResult {
        outcome,
        stdout: stdout.finish(),
        stderr: stderr.finish(),
        duration: begun.elapsed(),
    }
}

/// A stream's tail, fed piece by piece: a line cut in pieces is added to the tail whole, as
/// written, once it ends (only its last `max` characters are held meanwhile).
struct Tails {
    tail: Tail,
    /// The line being passed on in pieces, so far (its last `max` characters).
    partial: String,
    max: usize,
}

impl Tails {
    fn new(max: usize) -> Tails {
        Tails {
            tail: Tail::new(max),
            partial: String::new(),
            max,
        }
    }

    fn push(&mut self, p: &Piece) {
        if p.ends && self.partial.is_empty() {
            self.tail.push_line(&p.text);
            return;
        }
        self.partial.push_str(&p.text);
        let keep = last_chars(&self.partial, self.max).len();
        self.partial.drain(..self.partial.len() - keep);
        if p.ends {
            self.tail.push_line(&self.partial);
            self.partial.clear();
        }
    }

    /// The tail, with a line still in pieces (its end never came) as far as it got.
    fn finish(mut self) -> String {
        if !self.partial.is_empty() {
            self.tail.push_line(&self.partial);
        }
        self.tail.as_str().to_string()
    }
}

/// `path` made absolute against the agent's working directory (unchanged if it already is, or
/// if that directory is unknown).
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Why a spawn with `cwd` as the working directory failed: a failed `chdir` in the child comes
/// back as a bare OS error, so name the directory when it is the likely cause.
fn spawn_error(e: &std::io::Error, cwd: Option<&Path>) -> String {
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

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One output pipe, read line by line, a long line in pieces of at most [`MAX_LINE`] bytes.
struct Pipe {
    reader: BufReader<Box<dyn AsyncRead + Unpin + Send>>,
    stream: Stream,
    /// Bytes of the line (or piece) being read; kept across polls, so a read cut short by
    /// `select!` loses nothing.
    buf: Vec<u8>,
    /// The next piece continues a line whose start was already passed on.
    continues: bool,
    closed: bool,
}

impl Pipe {
    fn new(pipe: Box<dyn AsyncRead + Unpin + Send>, stream: Stream) -> Pipe {
        Pipe {
            reader: BufReader::new(pipe),
            stream,
            buf: Vec::new(),
            continues: false,
            closed: false,
        }
    }

    /// What `buf` holds as a piece: up to its newline (`ends`), or cut at `MAX_LINE` on a
    /// character boundary (the bytes of a character cut in two wait for the next piece).
    fn take(&mut self, ends: bool) -> Piece {
        let mut bytes = if ends {
            std::mem::take(&mut self.buf)
        } else {
            let rest = self.buf.split_off(utf8_boundary(&self.buf));
            std::mem::replace(&mut self.buf, rest)
        };
        if ends {
            strip_newline(&mut bytes);
        }
        let continues = std::mem::replace(&mut self.continues, !ends);
        let text = String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        Piece {
            stream: self.stream,
            text,
            continues,
            ends,
        }
    }
}

/// A line, or a piece of one.
#[derive(Debug)]
struct Piece {
    stream: Stream,
    /// Without its newline.
    text: String,
    /// It continues the line the previous piece of its pipe started.
    continues: bool,
    /// The line ends with it.
    ends: bool,
}

/// How much of `bytes` ends on a character boundary: all of it, unless it ends inside a UTF-8
/// character (then up to that character's first byte).
fn utf8_boundary(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(3) {
        let b = bytes[bytes.len() - back];
        if b & 0xC0 == 0x80 {
            continue; // a continuation byte: the character started further back
        }
        let width = match b {
            0xF0.. => 4,
            0xE0.. => 3,
            0xC0.. => 2,
            _ => 1,
        };
        return if width > back {
            bytes.len() - back
        } else {
            bytes.len()
        };
    }
    bytes.len()
}

/// The next line or piece of a pipe (`None` for a pipe that is gone: never ready).
async fn next_piece(pipe: &mut Option<Pipe>) -> Option<Piece> {
    let Some(p) = pipe.as_mut().filter(|p| !p.closed) else {
        return std::future::pending().await;
    };
    loop {
        let available = p.reader.fill_buf().await.unwrap_or(&[]);
        if available.is_empty() {
            // The end: a last line without a newline, if any.
            p.closed = true;
            if p.buf.is_empty() {
                return None;
            }
            return Some(p.take(true));
        }
        let room = MAX_LINE - p.buf.len();
        let window = &available[..available.len().min(room)];
        if let Some(i) = window.iter().position(|&b| b == b'\n') {
            p.buf.extend_from_slice(&window[..=i]);
            p.reader.consume(i + 1);
            return Some(p.take(true));
        }
        let n = window.len();
        p.buf.extend_from_slice(window);
        p.reader.consume(n);
        if p.buf.len() >= MAX_LINE {
            return Some(p.take(false));
        }
    }
}

#[cfg(test)]
mod tests;
