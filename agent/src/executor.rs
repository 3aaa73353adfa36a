//! Runs one task attempt: `sh -c "<command line>"` in its own process group.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use factotum_common::run::{Outcome, Stream, TaskResult};
use factotum_common::tail::Tail;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long to keep reading output after the task exited, for lines still in the pipes. A
/// background process that inherited the pipes can hold them open forever; we don't wait for it.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);

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
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(&spec.command_line)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return TaskResult {
                outcome: Outcome::SpawnFailed(e.to_string()),
                stdout: String::new(),
                stderr: String::new(),
                duration: begun.elapsed(),
            }
        }
    };
    let pid = child.id();
    if let Some(pid) = pid {
        let _ = events.send(ExecEvent::Started { pid }).await;
    }
    let (line_tx, mut line_rx) = mpsc::channel::<(Stream, String)>(256);
    let readers = [
        child
            .stdout
            .take()
            .map(|s| tokio::spawn(read_lines(s, Stream::Stdout, line_tx.clone()))),
        child
            .stderr
            .take()
            .map(|s| tokio::spawn(read_lines(s, Stream::Stderr, line_tx.clone()))),
    ];
    drop(line_tx);
    let mut stdout = Tail::new(spec.max_output);
    let mut stderr = Tail::new(spec.max_output);
    let mut on_line = |stream: Stream, line: String| {
        match stream {
            Stream::Stdout => stdout.push_line(&line),
            Stream::Stderr => stderr.push_line(&line),
        }
        ExecEvent::Line { stream, line }
    };
    let mut status = None;
    let mut killing: Option<tokio::time::Instant> = None;
    let mut lines_open = true;
    // Phase 1: until the process exits, forward lines and honour cancellation.
    while status.is_none() {
        let kill_deadline = killing.map(|d| d + spec.kill_grace);
        tokio::select! {
            s = child.wait() => {
                status = Some(s);
            }
            l = line_rx.recv(), if lines_open => match l {
                Some((stream, line)) => { let _ = events.send(on_line(stream, line)).await; }
                None => lines_open = false,
            },
            _ = cancel.cancelled(), if killing.is_none() => {
                signal_group(pid, libc::SIGTERM);
                killing = Some(tokio::time::Instant::now());
            }
            _ = sleep_until(kill_deadline), if kill_deadline.is_some() => {
                signal_group(pid, libc::SIGKILL);
                killing = Some(tokio::time::Instant::now() + Duration::from_secs(3600));
            }
        }
    }
    // Phase 2: drain what is left in the pipes, for a bounded time.
    if lines_open {
        let deadline = tokio::time::Instant::now() + DRAIN_AFTER_EXIT;
        loop {
            tokio::select! {
                l = line_rx.recv() => match l {
                    Some((stream, line)) => { let _ = events.send(on_line(stream, line)).await; }
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
    }
    for r in readers.into_iter().flatten() {
        r.abort();
    }
    if killing.is_some() {
        // Leave nothing of the group behind once we were asked to stop.
        signal_group(pid, libc::SIGKILL);
    }
    let outcome = match status {
        Some(Ok(s)) => {
            Outcome::Exited(
                s.code()
                    .unwrap_or(if s.signal().is_some() { 1 } else { -1 }),
            )
        }
        Some(Err(e)) => Outcome::SpawnFailed(format!("waiting for the process failed: {e}")),
        None => Outcome::SpawnFailed("the process vanished".into()),
    };
    TaskResult {
        outcome,
        stdout: stdout.as_str().to_string(),
        stderr: stderr.as_str().to_string(),
        duration: begun.elapsed(),
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn read_lines(
    pipe: impl AsyncRead + Unpin,
    stream: Stream,
    tx: mpsc::Sender<(Stream, String)>,
) {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                    if buf.last() == Some(&b'\r') {
                        buf.pop();
                    }
                }
                let line = String::from_utf8_lossy(&buf).into_owned();
                if tx.send((stream, line)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Signals the task's process group — never our own group, never pid 0 or 1.
fn signal_group(pid: Option<u32>, signal: i32) {
    let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) else {
        return;
    };
    let ours = nix::unistd::getpgrp().as_raw();
    if pid <= 1 || pid == ours {
        return;
    }
    let Ok(sig) = nix::sys::signal::Signal::try_from(signal) else {
        return;
    };
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), sig);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(line: &str) -> ExecSpec {
        ExecSpec {
            command_line: line.into(),
            max_output: 10_000,
            dry_run: false,
            kill_grace: Duration::from_millis(300),
        }
    }

    async fn run(line: &str) -> (TaskResult, Vec<String>) {
        let (tx, mut rx) = mpsc::channel(1024);
        let res = execute(&spec(line), tx, CancellationToken::new()).await;
        let mut lines = vec![];
        while let Ok(e) = rx.try_recv() {
            if let ExecEvent::Line { stream, line } = e {
                lines.push(format!("{stream:?}:{line}"));
            }
        }
        (res, lines)
    }

    #[tokio::test]
    async fn streams_lines_and_keeps_tails() {
        let (res, lines) = run("echo one; echo two >&2; printf 'no newline'").await;
        assert_eq!(res.outcome, Outcome::Exited(0));
        assert_eq!(res.stdout, "one\nno newline");
        assert_eq!(res.stderr, "two");
        assert!(lines.contains(&"Stdout:one".to_string()));
        assert!(lines.contains(&"Stderr:two".to_string()));
    }

    #[tokio::test]
    async fn exit_codes_and_signals() {
        assert_eq!(run("exit 7").await.0.outcome, Outcome::Exited(7));
        assert_eq!(run("kill -9 $$").await.0.outcome, Outcome::Exited(1));
    }

    #[tokio::test]
    async fn quoted_arguments_expand_variables() {
        let line = factotum_common::template::command_line("echo", &["$((1+2)) \"q\"".into()]);
        assert_eq!(run(&line).await.0.stdout, "3 \"q\"");
    }

    #[tokio::test]
    async fn cancel_terms_then_kills_the_whole_group() {
        let dir = std::env::temp_dir().join(format!("factotum-exec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let marker = dir.join("child.pid");
        // The shell ignores TERM and has a child of its own: both must die.
        let line = format!(
            "trap '' TERM; sleep 30 & echo $! > {}; wait",
            marker.display()
        );
        let (tx, _rx) = mpsc::channel(16);
        let cancel = CancellationToken::new();
        let c2 = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            c2.cancel();
        });
        let res = execute(&spec(&line), tx, cancel).await;
        assert_eq!(res.outcome, Outcome::Exited(1));
        let child: i32 = std::fs::read_to_string(&marker)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), None).is_ok()
            && !std::fs::read_to_string(format!("/proc/{child}/stat"))
                .unwrap_or_default()
                .contains(") Z ");
        assert!(!alive, "grandchild {child} survived the cancel");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn dry_run_runs_nothing() {
        let mut s = spec("exit 9");
        s.dry_run = true;
        let (tx, _rx) = mpsc::channel(1);
        assert_eq!(
            execute(&s, tx, CancellationToken::new()).await.outcome,
            Outcome::Exited(0)
        );
    }
}
