//! Attempts an older agent started under a per-task shim (`factotum-shim`), or that an agent
//! configured with a shim executable runs: their framed `output` file (see [`crate::frame`]) is
//! followed and read back here. A restarted agent still adopts them after an upgrade.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use factotum_common::redact::{LineRedactor, Redactor};
use factotum_common::run::Stream;
use factotum_common::tail::Tail;
use factotum_proto::{attempt_result, AttemptResult, LeaseRef};
use tokio_util::sync::CancellationToken;

use super::durable::Adopted;
use super::outlet::{self, Outlet};
use crate::frame::{self, Frame, Recorded};
use crate::kill::Escalation;
use crate::shim;

/// Follows a task that a previous agent process started under a shim: new output lines from
/// its output file (redacted as the lease says), its end from its exit file; a cancel stops its
/// process group.
pub(super) async fn adopt(
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

/// How an attempt run under a shim ended, from its directory: the recorded exit; or, the shim
/// gone without one, a kill (`killed`: we stopped it, and a signal counts as 1) or a supervisor
/// that died. `None` while the shim (`pid`) still runs.
pub(super) fn result_on_disk(
    dir: &Path,
    r: &LeaseRef,
    max: usize,
    redact: &Redactor,
    pid: Option<i32>,
    killed: bool,
) -> Option<AttemptResult> {
    let recorded = match read_exit(dir) {
        None if pid.is_some_and(|p| shim_alive(p, dir)) => return None,
        // It may have recorded its exit between the first look and its end.
        None => read_exit(dir),
        done => done,
    };
    let (outcome, duration) = match recorded {
        Some(done) => (attempt_result::Outcome::ExitCode(done.code), done.duration),
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
    Some(super::result_msg(r, outcome, out, err, duration))
}

/// Reads `<dir>/exit` (a shim's), if the task has ended.
pub fn read_exit(dir: &Path) -> Option<Recorded> {
    crate::frame::parse_exit(&fs::read_to_string(dir.join(shim::EXIT)).ok()?)
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
