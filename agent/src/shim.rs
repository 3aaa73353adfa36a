//! The per-task supervisor ("shim") earlier agents used to let a task outlive them.
//!
//! An agent with `--state-dir` no longer starts one (its tasks' own shells record them, see
//! [`crate::attempt::recorded`]): a shim runs only for an [`crate::AgentConfig`] that names a
//! `shim_exe`, and a restarted agent still adopts tasks an older agent started this way. The
//! shim (`factotum-agent --shim <attempt dir>`, or `factotum-shim`) runs the command, appends every output line to `<dir>/output` (a long
//! line in pieces, so the shim never holds more than one piece of a line) and
//! writes the exit code to `<dir>/exit` when the task ends — whether or not the agent is still
//! there. A restarted agent finds the attempt directories, reports the recorded results and
//! adopts the tasks still running (re-attaching them to the coordinator), so a restart neither
//! loses nor duplicates a task.
//!
//! The agent starts the shim in the task's working directory and with the task's environment,
//! which its `sh -c` inherits as they are; so the attempt directory is always given as an
//! absolute path (a relative one would be taken against the task's directory).
//!
//! What the shim writes (the framing of `<dir>/output`, `<dir>/exit`) is [`crate::frame`]'s;
//! reading an attempt directory back is [`crate::attempt`]'s.

use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use factotum_common::run::Stream;

use crate::frame::{self, exit_code, Splitter};

/// Files of one attempt directory.
pub const LEASE: &str = "lease";
pub const OUTPUT: &str = "output";
pub const EXIT: &str = "exit";
pub const PID: &str = "pid";
/// The full log's two files (stdout, then stderr: one path a line), when the agent keeps logs.
pub const LOG: &str = "log";

/// The shim's main: runs `command_line` with `sh -c` in this process group and records it in
/// `dir`. Returns the process exit code for the shim itself.
pub fn run(dir: &Path, command_line: &str) -> i32 {
    // The raw bytes of each stream, appended to its full log as they are read (see
    // `crate::logs`).
    let logs: Vec<PathBuf> = fs::read_to_string(dir.join(LOG))
        .map(|t| t.lines().map(PathBuf::from).collect())
        .unwrap_or_default();
    // A TERM or INT sent to the task's process group must not stop the shim before it has
    // recorded the exit code: handle them (handlers, unlike an ignored disposition, are reset
    // for the task by exec).
    for sig in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ] {
        let _ =
            signal_hook::flag::register(sig, Arc::new(std::sync::atomic::AtomicBool::new(false)));
    }
    let begun = Instant::now();
    // One write per line (`writeln!` on a file can take two, the text and the newline).
    let record = |line: &str| {
        let _ = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(dir.join(OUTPUT))
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
    };
    let stdout = Mutex::new(std::io::stdout());
    let emit = |line: &str| {
        // Under the lock: the stdout and stderr readers must not interleave in the file either.
        let mut out = stdout.lock().unwrap_or_else(|p| p.into_inner());
        record(line);
        // The agent may be gone: its pipe then fails, and the file is what counts.
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    // Neither the environment nor the working directory is touched: the task gets the lease's,
    // which the agent gave the shim.
    let child = Command::new("/bin/sh")
        .arg("-c")
        .arg(command_line)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let (code, ok) = match child {
        Ok(mut child) => {
            let pipes = [
                child
                    .stdout
                    .take()
                    .map(|p| (Box::new(p) as Box<dyn Read + Send>, Stream::Stdout)),
                child
                    .stderr
                    .take()
                    .map(|p| (Box::new(p) as Box<dyn Read + Send>, Stream::Stderr)),
            ];
            std::thread::scope(|scope| {
                for (pipe, stream) in pipes.into_iter().flatten() {
                    let emit = &emit;
                    let log = logs.get(usize::from(stream == Stream::Stderr)).cloned();
                    scope.spawn(move || {
                        let mut log = log.map(crate::logs::LogWriter::open);
                        // A long line in pieces: what the shim holds of a line is bounded, and
                        // a framed piece fits in one of the agent's lines.
                        let mut reader = BufReader::new(pipe);
                        let mut split = Splitter::new(frame::SHIM_PIECE);
                        loop {
                            let piece = match reader.fill_buf() {
                                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                                Ok([]) | Err(_) => match split.finish() {
                                    Some(p) => p,
                                    None => break,
                                },
                                Ok(available) => {
                                    let (n, piece) = split.feed(available);
                                    if let Some(log) = &mut log {
                                        log.push(&available[..n]);
                                    }
                                    reader.consume(n);
                                    // The next read may wait: the file has all so far first.
                                    if reader.buffer().is_empty() {
                                        if let Some(log) = &mut log {
                                            log.flush();
                                        }
                                    }
                                    match piece {
                                        Some(p) => p,
                                        None => continue,
                                    }
                                }
                            };
                            // A line that ended where its last piece was cut: nothing more.
                            if !(piece.continued && piece.text.is_empty()) {
                                emit(&frame::line(stream, &piece.text, piece.continued));
                            }
                        }
                    });
                }
            });
            match child.wait() {
                Ok(s) => (exit_code(s), true),
                Err(_) => (-1, false),
            }
        }
        Err(e) => {
            emit(&frame::line(
                Stream::Stderr,
                &format!("Error executing process - {e}"),
                false,
            ));
            (-1, false)
        }
    };
    let exit = frame::exit(code, begun.elapsed());
    let tmp = dir.join(format!("{EXIT}.tmp"));
    let _ = write_private(&tmp, format!("{exit}\n").as_bytes())
        .and_then(|()| fs::rename(&tmp, dir.join(EXIT)));
    emit(&format!("X{exit}"));
    i32::from(!ok)
}

/// The shim's entry point: reads the lease in `dir` and runs it (see [`run`]).
pub fn main(dir: &Path) -> i32 {
    let lease = fs::read(dir.join(LEASE))
        .ok()
        .and_then(|b| <factotum_proto::Lease as prost::Message>::decode(b.as_slice()).ok());
    match lease {
        Some(lease) => run(dir, &lease.command_line),
        None => {
            eprintln!("factotum-shim: no readable lease in {}", dir.display());
            3
        }
    }
}

/// Writes `bytes` to a new (or emptied) file only its owner may read (mode 0600): what an
/// attempt directory holds is the task's raw output and its lease, secrets and all.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
}

/// Creates an attempt directory (and the directories above it) only its owner may enter.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// `<state dir>/attempts/<run>-<task>-<attempt>`.
pub fn attempt_dir(state_dir: &Path, run: &str, task: u32, attempt: u32) -> PathBuf {
    state_dir
        .join("attempts")
        .join(format!("{run}-{task}-{attempt}"))
}
