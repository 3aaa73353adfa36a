//! Running and adopting attempts recorded the [`recorded`](super::recorded) way: the task's
//! shell is the agent's child while the agent lives (its exit comes from `wait`), its output
//! is read from the files the kernel writes, and a restarted agent follows what it finds.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use factotum_common::redact::Redactor;
use factotum_common::run::clamp_max_output;
use factotum_proto::{attempt_result, Lease, LeaseRef};
use tokio_util::sync::CancellationToken;

use super::outlet::{Closed, Outlet};
use super::recorded::{self, backoff, Follower, Passed};
use super::result_msg;
use crate::frame::exit_code;
use crate::kill::Escalation;

/// Runs a leased attempt already in the journal: `/bin/sh` with `argv` (see
/// [`recorded::argv`]); its output goes to `outputs` (created if need be, mode 0600).
pub(super) async fn run(
    lease: Lease,
    r: LeaseRef,
    (argv, outputs): ([OsString; 4], [PathBuf; 2]),
    kill_grace: Duration,
    mut outlet: Outlet,
    cancel: CancellationToken,
) {
    let begun = Instant::now();
    let max = clamp_max_output(lease.max_output as usize);
    let redact = Redactor::new(&lease.redact);
    let cwd = (!lease.cwd.is_empty()).then(|| PathBuf::from(&lease.cwd));
    let spawned = open_outputs(&outputs).and_then(|(files, readers)| {
        let [out, err] = files;
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.args(argv)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .envs(&lease.env);
        if let Some(cwd) = &cwd {
            cmd.current_dir(cwd);
        }
        Ok((cmd.spawn()?, readers))
    });
    let (mut child, readers) = match spawned {
        Ok(s) => s,
        Err(e) => {
            let why = redact
                .redact(&crate::executor::spawn_error(&e, cwd.as_deref()))
                .into_owned();
            let outcome = attempt_result::Outcome::SpawnError(why);
            let f = result_msg(&r, outcome, String::new(), String::new(), begun.elapsed());
            outlet.done(f).await;
            return;
        }
    };
    let pid = child.id();
    // Timing points for the hop-latency benchmark, as the executor logs them (its target).
    tracing::debug!(target: "factotum_agent::executor", pid, "process spawned");
    if let Some(pid) = pid {
        if outlet.started(pid).await.is_err() {
            return; // nobody listens; the task goes on, recorded
        }
    }
    let mut follower = Follower::with(outputs, readers.map(Some), redact, max);
    let mut stopping = Escalation::new(pid, kill_grace);
    let mut passed = Passed::new();
    let mut wait = backoff(Duration::ZERO, true);
    let status = loop {
        let kill_at = stopping.kill_at();
        tokio::select! {
            s = child.wait() => break s,
            _ = cancel.cancelled(), if !stopping.stopping() => {
                stopping.stop(tokio::time::Instant::now());
            }
            _ = crate::executor::sleep_until(kill_at), if kill_at.is_some() => {
                stopping.tick(tokio::time::Instant::now());
            }
            _ = tokio::time::sleep(wait) => {
                let found = follower.read(&mut passed);
                if send(&mut outlet, &mut passed).await.is_err() {
                    return;
                }
                wait = backoff(wait, found);
            }
        }
    };
    tracing::debug!(target: "factotum_agent::executor", pid, "process exited");
    // What is left in the files (a bounded read at a time; a background process of the task may
    // still write: what it writes after this is in the files only).
    while follower.read(&mut passed) {
        if send(&mut outlet, &mut passed).await.is_err() {
            return;
        }
    }
    let (out, err) = follower.finish(&mut passed);
    if send(&mut outlet, &mut passed).await.is_err() {
        return;
    }
    stopping.finish();
    let outcome = match status {
        Ok(s) => attempt_result::Outcome::ExitCode(exit_code(s)),
        Err(e) => {
            attempt_result::Outcome::SpawnError(format!("waiting for the process failed: {e}"))
        }
    };
    outlet
        .done(result_msg(&r, outcome, out, err, begun.elapsed()))
        .await;
}

/// The task's two output files, opened to append (given to the task) and, as one more
/// description each, to read from (the agent's). Read and write in one open: the task gets a
/// duplicate of a descriptor opened `O_RDWR | O_APPEND`, which writes at the end whatever the
/// offset, and the agent reads with `pread`, which never moves it.
type Opened = ([Stdio; 2], [fs::File; 2]);

fn open_outputs(paths: &[PathBuf; 2]) -> std::io::Result<Opened> {
    let open = |p: &Path| {
        fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .mode(0o600)
            .open(p)
            .and_then(|f| Ok((Stdio::from(f.try_clone()?), f)))
    };
    let (out, out_r) = open(&paths[0])?;
    let (err, err_r) = open(&paths[1])?;
    Ok(([out, err], [out_r, err_r]))
}

/// How an adopted attempt is followed.
pub(super) struct Adopted {
    pub max_output: usize,
    pub redact: Redactor,
    /// Its shell's (or shim's).
    pub pid: i32,
    pub kill_grace: Duration,
}

/// Follows a task a previous agent process started (its journal entry): new output from its
/// files; its end once its shell is gone, with the exit code the journal got (none: killed by
/// us, 1, or by someone else while nobody watched); a cancel stops its process group.
pub(super) async fn adopt(
    (journal, entry, marker): (PathBuf, recorded::Entry, PathBuf),
    r: LeaseRef,
    how: Adopted,
    mut outlet: Outlet,
    cancel: CancellationToken,
) {
    let Adopted {
        max_output,
        redact,
        pid,
        kill_grace,
    } = how;
    // Output written before was streamed (or lost) with the previous agent: from the end.
    let mut follower = Follower::new(entry.outputs.clone(), redact.clone(), max_output, true);
    let mut stopping = Escalation::new(u32::try_from(pid).ok(), kill_grace);
    let mut passed = Passed::new();
    let mut wait = backoff(Duration::ZERO, true);
    loop {
        let found = follower.read(&mut passed);
        if send(&mut outlet, &mut passed).await.is_err() {
            return;
        }
        if !super::shim_alive(pid, &marker) {
            while follower.read(&mut passed) {
                if send(&mut outlet, &mut passed).await.is_err() {
                    return;
                }
            }
            let _ = follower.finish(&mut passed);
            if send(&mut outlet, &mut passed).await.is_err() {
                return;
            }
            let exit = recorded::find_exit(&journal, &entry.name);
            let killed = stopping.stopping();
            outlet.done(ended(&entry, &r, exit, killed, &redact)).await;
            return;
        }
        let now = tokio::time::Instant::now();
        if cancel.is_cancelled() {
            stopping.stop(now);
        }
        stopping.tick(now);
        wait = backoff(wait, found);
        tokio::time::sleep(wait).await;
    }
}

/// The result of a journal entry whose shell is gone: its recorded exit; or a kill (`killed`:
/// we stopped it, and a signal counts as 1); or, neither, a task killed while nobody watched.
pub(super) fn ended(
    e: &recorded::Entry,
    r: &LeaseRef,
    exit: Option<i32>,
    killed: bool,
    redact: &Redactor,
) -> factotum_proto::AttemptResult {
    let outcome = match exit {
        Some(code) => attempt_result::Outcome::ExitCode(code),
        None if killed => attempt_result::Outcome::ExitCode(1),
        None => attempt_result::Outcome::SpawnError(
            "the task ended without recording its exit code (was its shell killed while the \
             agent was away?)"
                .into(),
        ),
    };
    // How long it ran, at most: until its output was last written (else unknown).
    let last = e
        .outputs
        .iter()
        .filter_map(|p| fs::metadata(p).and_then(|m| m.modified()).ok())
        .max();
    let took = last
        .and_then(|l| l.duration_since(e.started).ok())
        .unwrap_or_default();
    let max = clamp_max_output(e.lease.max_output as usize);
    let (out, err) = recorded::read_tails(e.outputs.clone(), max, redact);
    result_msg(r, outcome, out, err, took)
}

async fn send(outlet: &mut Outlet, passed: &mut Passed) -> Result<(), Closed> {
    for (stream, text, continued) in passed.drain(..) {
        outlet.output(stream, text, continued).await?;
    }
    Ok(())
}
