//! Durable attempts without a supervisor process: how an agent with `--state-dir` runs a task.
//!
//! The agent spawns `sh -c` itself (one fork/exec, as without `--state-dir`), but
//! - the task's stdout and stderr are files, not pipes: its full log files when the agent keeps
//!   logs (`<log dir>/<run>/<task>.<attempt>.out` and `.err`), else `<state dir>/output/<name>.out`
//!   and `.err`. The kernel writes them; nothing of the agent stands between the task and its
//!   output, so the task neither blocks nor gets SIGPIPE when the agent dies;
//! - what the agent must find after a restart is one append-only file, `<state dir>/journal`
//!   ([`Journal`]): a record per lease (`L`, written before the spawn), per exit (`X`, appended
//!   by the task's own shell from an `EXIT` trap, or after a subshell when the command could
//!   defeat the trap: `exec`, or its own `trap`) and per acknowledged result (`F`). No file is
//!   created or removed per task: on ext4, creating and removing a few files per task cost more
//!   than the task (inode allocation skips recently freed inodes; see docs/BENCHMARKS.md);
//! - the shell's command line names `<state dir>/attempts/<name>` (its `$1`, cleared before the
//!   command runs; no such file exists), which is how a restarted agent finds which tasks still
//!   run ([`find_running`]).
//!
//! While the agent lives it is the shell's parent: the exit comes from `wait` (no polling on
//! the hop from one task to the next) and output is followed in the files with a backoff poll
//! ([`Follower`]). A restarted agent reads the journal: results of tasks that ended while it was
//! away, and tasks to follow as adopted ones.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use factotum_common::redact::{LineRedactor, Redactor};
use factotum_common::run::Stream;
use factotum_common::tail::Tail;

use crate::frame::{Splitter, MAX_LINE};

/// An attempt's name in the journal and on its shell's command line: `<run id in hex>-<task>-
/// <attempt>` (hex: a run id may hold anything, the journal's fields are split on spaces).
pub fn name(run: &str, task: u32, attempt: u32) -> String {
    format!("{}-{task}-{attempt}", hex(run.as_bytes()))
}

/// Where a task's output goes when the agent keeps no log.
pub fn own_outputs(state: &Path, name: &str) -> [PathBuf; 2] {
    let dir = state.join("output");
    [
        dir.join(format!("{name}.out")),
        dir.join(format!("{name}.err")),
    ]
}

/// The shell's `-c` script running `command` and appending its exit code to `journal` as
/// `X <name> <code>`; `$1` (the marker, see [`argv`]) is cleared so the command sees no
/// positional parameters, as under a plain `sh -c`.
pub fn script(command: &str, journal: &Path, name: &str) -> OsString {
    let journal = quote(journal.as_os_str().as_bytes());
    let cmd = quote(command.as_bytes());
    // Each record starts on a line of its own: one torn by a crash cannot swallow it.
    let record = |status: &str| {
        [
            format!("printf '\\nX {name} %d\\n' {status} >>").as_bytes(),
            &journal,
        ]
        .concat()
    };
    // `eval` parses the command text as `sh -c` would (a syntax error is status 2, recorded).
    // Under the trap, dash runs even the last command as a child (no exec of the shell), so
    // the trap outlives it; a command that may `exec` or set its own `EXIT` trap runs in a
    // subshell instead (one fork more) and the shell records after it.
    let script = if command.contains("exec") || command.contains("trap") {
        [
            b"set --; (eval ".as_slice(),
            &cmd,
            b"); s=$?; ",
            &record("$s"),
            b"; exit $s",
        ]
        .concat()
    } else {
        [
            b"set --; trap ".as_slice(),
            &quote(&record("$?")),
            b" EXIT; eval ",
            &cmd,
        ]
        .concat()
    };
    OsString::from_vec(script)
}

/// The shell's arguments after `/bin/sh`: `-c <script> /bin/sh <state>/attempts/<name>` (`$0`
/// is what a plain `sh -c` has, for its error messages).
pub fn argv(command: &str, state: &Path, name: &str) -> [OsString; 4] {
    [
        "-c".into(),
        script(command, &state.join(JOURNAL), name),
        "/bin/sh".into(),
        state.join("attempts").join(name).into_os_string(),
    ]
}

/// `s` single-quoted for the shell.
fn quote(s: &[u8]) -> Vec<u8> {
    let mut q = Vec::with_capacity(s.len() + 2);
    q.push(b'\'');
    for &b in s {
        if b == b'\'' {
            q.extend_from_slice(b"'\\''");
        } else {
            q.push(b);
        }
    }
    q.push(b'\'');
    q
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The processes still running an attempt under `attempts` (`<state dir>/attempts`): attempt
/// directory → pid. A task's shell (and an older agent's shim) names its attempt directory as
/// an argument; a zombie does not count. Read once when an agent starts, so no pid file is
/// written per task (and none can be missing for a task spawned just before a crash).
pub fn find_running(attempts: &Path) -> std::collections::HashMap<PathBuf, i32> {
    let mut found = std::collections::HashMap::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return found;
    };
    let prefix = attempts.as_os_str().as_bytes();
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let dir = cmdline.split(|b| *b == 0).find(|arg| {
            arg.len() > prefix.len() + 1 && arg.starts_with(prefix) && arg[prefix.len()] == b'/'
        });
        if let Some(dir) = dir {
            let dir = PathBuf::from(OsStr::from_bytes(dir));
            if super::shim_alive(pid, &dir) {
                found.insert(dir, pid);
            }
        }
    }
    found
}

/// The most read from one file before what was read is handed on (bounds what a follower
/// holds between two sends).
const READ_AT_ONCE: usize = 256 << 10;

/// Follows a task's two output files: new bytes are cut into lines (a long one in pieces of at
/// most [`MAX_LINE`]), redacted as the lease says, kept in the result's tails and handed on.
pub struct Follower {
    streams: [Followed; 2],
    redact: Redactor,
    buf: Vec<u8>,
}

struct Followed {
    path: PathBuf,
    file: Option<fs::File>,
    /// Read up to here (`pread`: the offset of the file description, which the task may
    /// share, is never moved).
    offset: u64,
    split: Splitter,
    redacting: LineRedactor,
    tail: Tail,
}

/// What a follower hands on: a stream's line, or piece of one (`continued`).
pub type Passed = Vec<(Stream, String, bool)>;

impl Follower {
    /// From each file's start, or (`from_end`, for a task adopted after a restart: its earlier
    /// output was streamed by the agent before) from its current end.
    pub fn new(paths: [PathBuf; 2], redact: Redactor, max: usize, from_end: bool) -> Follower {
        let files = paths.clone().map(|p| fs::File::open(p).ok());
        let mut f = Follower::with(paths, files, redact, max);
        if from_end {
            for s in &mut f.streams {
                s.offset = s
                    .file
                    .as_ref()
                    .and_then(|f| f.metadata().ok())
                    .map_or(0, |m| m.len());
            }
        }
        f
    }

    /// Over files already open for reading (the agent's own descriptions of the files it gave
    /// the task: no second open per task).
    pub fn with(
        paths: [PathBuf; 2],
        files: [Option<fs::File>; 2],
        redact: Redactor,
        max: usize,
    ) -> Follower {
        let mut files = files.into_iter();
        let streams = paths.map(|path| Followed {
            path,
            file: files.next().flatten(),
            offset: 0,
            split: Splitter::new(MAX_LINE),
            redacting: LineRedactor::new(),
            tail: Tail::new(max),
        });
        Follower {
            streams,
            redact,
            buf: vec![],
        }
    }

    /// Reads what is new (at most [`READ_AT_ONCE`] a file); its lines go to `out`. Returns
    /// whether anything was read (then call again before waiting: there may be more).
    pub fn read(&mut self, out: &mut Passed) -> bool {
        let mut any = false;
        for (i, s) in self.streams.iter_mut().enumerate() {
            let stream = if i == 0 {
                Stream::Stdout
            } else {
                Stream::Stderr
            };
            if s.file.is_none() {
                s.file = fs::File::open(&s.path).ok();
            }
            let Some(f) = s.file.take() else { continue };
            // Most tasks print nothing: one `fstat`, no buffer.
            let grown = f.metadata().is_ok_and(|m| m.len() > s.offset);
            if grown && self.buf.is_empty() {
                self.buf.resize(64 << 10, 0);
            }
            let mut total = 0;
            while grown && total < READ_AT_ONCE {
                let n = match f.read_at(&mut self.buf, s.offset) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                total += n;
                s.offset += n as u64;
                let mut at = 0;
                while at < n {
                    let (used, piece) = s.split.feed(&self.buf[at..n]);
                    at += used;
                    if let Some(p) = piece {
                        pass(s, &self.redact, stream, &p.text, p.continued, p.ends, out);
                    }
                }
            }
            s.file = Some(f);
            any |= total > 0;
        }
        any
    }

    /// The task has ended and every byte was read ([`Follower::read`] until it found nothing):
    /// what is held of unfinished lines goes to `out`; returns the tails (stdout, stderr).
    pub fn finish(mut self, out: &mut Passed) -> (String, String) {
        for (i, s) in self.streams.iter_mut().enumerate() {
            let stream = if i == 0 {
                Stream::Stdout
            } else {
                Stream::Stderr
            };
            if let Some(p) = s.split.finish() {
                pass(s, &self.redact, stream, &p.text, p.continued, p.ends, out);
            }
            let mut passed = vec![];
            s.redacting.finish(&self.redact, &mut passed);
            keep(s, stream, passed, out);
        }
        let [o, e] = self.streams;
        (o.tail.as_str().to_string(), e.tail.as_str().to_string())
    }
}

fn pass(
    s: &mut Followed,
    redact: &Redactor,
    stream: Stream,
    text: &str,
    continued: bool,
    ends: bool,
    out: &mut Passed,
) {
    let mut passed = vec![];
    s.redacting.push(redact, text, continued, ends, &mut passed);
    keep(s, stream, passed, out);
}

/// Into the stream's tail, and on (an empty end of a line cut where it ended is not sent).
fn keep(s: &mut Followed, stream: Stream, passed: Vec<(String, bool)>, out: &mut Passed) {
    for (text, continued) in passed {
        s.tail.push_piece(&text, continued);
        if !(continued && text.is_empty()) {
            out.push((stream, text, continued));
        }
    }
}

/// The tails of a finished task's output files, redacted (read from their start).
pub fn read_tails(outputs: [PathBuf; 2], max: usize, redact: &Redactor) -> (String, String) {
    let mut f = Follower::new(outputs, redact.clone(), max, false);
    let mut passed = vec![];
    while f.read(&mut passed) {
        passed.clear();
    }
    f.finish(&mut passed)
}

/// Next wait of a follower after a look that found something (`found`) or nothing: 10 ms after
/// output, then doubling to 200 ms. Most tasks end before the first look (their end comes from
/// `wait`, not from here); a quiet one costs five looks a second; hundreds at once stay cheap.
pub fn backoff(wait: Duration, found: bool) -> Duration {
    const FIRST: Duration = Duration::from_millis(10);
    const MOST: Duration = Duration::from_millis(200);
    if found {
        FIRST
    } else {
        (wait * 2).clamp(FIRST, MOST)
    }
}

mod journal;
pub use journal::{find_exit, Entry, Journal, JOURNAL};

#[cfg(test)]
mod tests;
