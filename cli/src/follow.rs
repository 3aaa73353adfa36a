//! Following a run to its end (`watch`, `submit --wait`, `rerun --wait`), across the loss of
//! the coordinator serving the watch: the CLI watches again through any coordinator it was
//! given, asking to resume; the coordinator answers with a gap (output printed meanwhile is not
//! re-sent) and a snapshot of every task, from which the transitions missed are printed.
//!
//! While it follows, the progress line ([`crate::progress`]) is kept on a terminal, and while
//! none of the run's tasks runs the run is asked now and then why (`Run.waiting_reason`: the
//! watch stream does not carry it), printing the reason each time it changes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use factotum_common::run::{JobState, TaskState};
use factotum_coordinator::api::forward::resumable;
use factotum_coordinator::wire::jobs as wire;
use factotum_coordinator::{RunInfo, RunSummary, TaskChange, WatchEvent};
use factotum_proto::jobs as pb;

use crate::cli::Remote;
use crate::connect::{addresses, connect, refused, Client};
use crate::console::Console;
use crate::exit;
use crate::load::Failure;
use crate::progress::{self, Progress};

/// How long to keep trying to watch again after a watch broke.
const RESUME_FOR: Duration = Duration::from_secs(60);

/// How often a run none of whose tasks runs (and none changed for as long) is asked why it
/// waits: rarely enough that a run of many short tasks is not asked for its task list between
/// each two of them.
const ASK_WHY_EVERY: Duration = Duration::from_secs(2);

/// What the follower knows of the run besides its events: its tasks' states (the progress
/// line's, which also tell whether anything runs) and the waiting reason printed last.
struct Watcher {
    progress: Progress,
    reason: String,
    asked: Option<tokio::time::Instant>,
    /// When a task last changed state.
    changed: tokio::time::Instant,
}

impl Watcher {
    fn new() -> Watcher {
        Watcher {
            progress: Progress::for_stderr(),
            reason: String::new(),
            asked: None,
            changed: tokio::time::Instant::now(),
        }
    }

    fn changes(&mut self, changes: &[TaskChange]) {
        self.changed = tokio::time::Instant::now();
        self.progress.changes(changes);
    }

    /// Asks the run for its state and why it waits (at once, or when it is due: nothing runs,
    /// nothing changed and it was not asked for [`ASK_WHY_EVERY`]); prints a new reason.
    async fn ask(&mut self, client: &mut Client, run_id: &str, console: &Console, now: bool) {
        let idle = self.progress.running() == 0 && self.changed.elapsed() >= ASK_WHY_EVERY;
        let due = self.asked.is_none_or(|t| t.elapsed() >= ASK_WHY_EVERY);
        if !(now || (idle && due)) {
            return;
        }
        self.asked = Some(tokio::time::Instant::now());
        let Ok(run) = client
            .get_run(pb::GetRunRequest {
                run_id: run_id.to_string(),
            })
            .await
        else {
            return; // the watch says what is wrong, if anything is
        };
        let run = run.into_inner();
        self.progress.total(run.task_count as usize);
        let states: Vec<(&str, TaskState)> = run
            .tasks
            .iter()
            .filter_map(|t| Some((t.name.as_str(), wire::task_state_from_pb(t.state)?)))
            .collect();
        self.progress.tasks(states);
        if run.waiting_reason != self.reason {
            if !run.waiting_reason.is_empty() {
                console.waiting(&run.waiting_reason);
            }
            self.reason = run.waiting_reason;
        }
    }
}

/// The run's end as the console prints it; a cancelled run says who cancelled it and why
/// (asked of the coordinator: the end event does not carry it).
async fn ended(client: &mut Client, run_id: &str, console: &Console, summary: &RunSummary) {
    if !summary.cancelled {
        console.summary(summary);
        return;
    }
    let run = client
        .get_run(pb::GetRunRequest {
            run_id: run_id.to_string(),
        })
        .await
        .map(tonic::Response::into_inner)
        .unwrap_or_default();
    console.cancelled(summary, &run.cancelled_by, &run.cancel_reason);
}

fn failure(message: String) -> Failure {
    Failure {
        code: exit::COORDINATOR,
        message,
        unavailable: None,
    }
}

/// Each task's state as printed so far.
#[derive(Default)]
struct Seen(HashMap<Arc<str>, TaskState>);

impl Seen {
    fn note(&mut self, changes: &[TaskChange]) {
        for c in changes {
            self.0.insert(Arc::clone(&c.name), c.current);
        }
    }

    /// The transitions a snapshot shows were missed, as the console prints them: a task that
    /// started and ended meanwhile gets both lines.
    fn missed(&mut self, now: &RunInfo) -> Vec<TaskChange> {
        let mut out = Vec::new();
        for t in &now.tasks {
            let before = self.0.get(&t.name).copied().unwrap_or(TaskState::Waiting);
            if before == t.state {
                continue;
            }
            let change = |previous, current| TaskChange {
                name: Arc::clone(&t.name),
                previous,
                current,
                started: t.started,
                duration: t.duration,
                return_code: t.return_code,
                error_message: t.error_message.clone(),
            };
            let ran = matches!(
                t.state,
                TaskState::Succeeded | TaskState::SucceededNoOp | TaskState::Failed
            );
            if before == TaskState::Waiting && ran {
                out.push(change(TaskState::Waiting, TaskState::Running));
                out.push(change(TaskState::Running, t.state));
            } else {
                out.push(change(before, t.state));
            }
            self.0.insert(Arc::clone(&t.name), t.state);
        }
        out
    }
}

/// A client on the first of `remote`'s coordinators that answers (a follower forwards), tried
/// again and again until `deadline`.
async fn reconnect(remote: &Remote, deadline: tokio::time::Instant) -> Result<Client, Failure> {
    let urls = addresses(remote)?;
    loop {
        for url in &urls {
            if let Ok(client) = connect(url, remote).await {
                return Ok(client);
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(failure(format!(
                "Error: lost the coordinator while following the run, and none of {} answered since",
                urls.join(", ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Prints a run's events like `factotum run` until it ends; SIGINT/SIGTERM cancel it (when
/// `cancel_on_signal`). A watch that breaks is resumed through any of `remote`'s coordinators.
/// Returns `run`'s exit code for the run's outcome.
pub async fn follow(
    client: &mut Client,
    remote: &Remote,
    run_id: &str,
    console: Console,
    cancel_on_signal: bool,
) -> Result<u8, Failure> {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut sigint, mut sigterm) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(i), Ok(t)) => (i, t),
        _ => return Err(failure("Error: cannot install signal handlers".into())),
    };
    let mut seen = Seen::default();
    let mut watcher = Watcher::new();
    watcher.ask(client, run_id, &console, true).await;
    let mut tick = tokio::time::interval(progress::TICK);
    let mut cancelled = false;
    let mut resume = false;
    // Until when a broken watch is tried again (from the moment it broke).
    let mut retry_until: Option<tokio::time::Instant> = None;
    'watch: loop {
        let answer = client
            .watch_run(pb::WatchRunRequest {
                run_id: run_id.to_string(),
                resume,
            })
            .await;
        let mut stream = match answer {
            Ok(s) => s.into_inner(),
            // No coordinator can serve the watch right now (between leaders): again, shortly.
            Err(status) if resumable(&status) => {
                let until =
                    *retry_until.get_or_insert_with(|| tokio::time::Instant::now() + RESUME_FOR);
                tokio::time::sleep(Duration::from_millis(300)).await;
                *client = reconnect(remote, until).await?;
                continue 'watch;
            }
            Err(status) => {
                return Err(Failure {
                    unavailable: None,
                    ..refused(status)
                })
            }
        };
        loop {
            let name = tokio::select! {
                msg = stream.message() => match msg {
                    Ok(Some(ev)) => {
                        retry_until = None;
                        match wire::event_from_pb(ev, run_id) {
                            Some(WatchEvent::Tasks(changes)) => {
                                seen.note(&changes);
                                watcher.changes(&changes);
                                console.task_changes(&changes);
                            }
                            Some(WatchEvent::Snapshot(now)) => {
                                watcher.progress.tasks(now.tasks.iter().map(|t| (&*t.name, t.state)));
                                console.task_changes(&seen.missed(&now));
                            }
                            Some(WatchEvent::Gap) => console.warn(
                                "the watch was resumed through another coordinator: output printed meanwhile is not shown",
                            ),
                            Some(WatchEvent::Output { task, stream, line, .. }) => console.output(&task, stream, &line),
                            Some(WatchEvent::Done(summary)) => {
                                watcher.progress.finish();
                                ended(client, run_id, &console, &summary).await;
                                return Ok(if summary.state == JobState::Succeeded { exit::OK } else { exit::TASK_FAILED });
                            }
                            Some(WatchEvent::Lagged { skipped }) => console.lagged(skipped),
                            Some(WatchEvent::Job { .. }) | None => {}
                        }
                        if !cancel_on_signal && crate::out::stdout_closed() {
                            return Ok(exit::OK); // watching only, and nobody reads: stop watching
                        }
                        continue;
                    }
                    // The coordinator went away before the run ended: watch again, elsewhere.
                    Ok(None) => None,
                    Err(status) if resumable(&status) => None,
                    Err(status) => return Err(Failure { unavailable: None, ..refused(status) }),
                },
                _ = tick.tick() => {
                    watcher.progress.tick();
                    watcher.ask(client, run_id, &console, false).await;
                    continue;
                }
                _ = sigint.recv() => Some("SIGINT"),
                _ = sigterm.recv() => Some("SIGTERM"),
            };
            let Some(name) = name else {
                resume = true;
                let until =
                    *retry_until.get_or_insert_with(|| tokio::time::Instant::now() + RESUME_FOR);
                *client = reconnect(remote, until).await?;
                continue 'watch;
            };
            if !cancel_on_signal {
                return Ok(exit::OK); // watching only: stop watching, leave the run alone
            }
            if !cancelled {
                cancelled = true;
                console.warn(&format!("received {name}: cancelling run {run_id}"));
                client
                    .cancel_run(pb::CancelRunRequest {
                        run_id: run_id.to_string(),
                        reason: format!("{name} received by the client following the run"),
                    })
                    .await
                    .map_err(|s| Failure {
                        unavailable: None,
                        ..refused(s)
                    })?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot as a coordinator sends it, read back as the CLI reads it.
    fn snapshot(tasks: &[(&str, TaskState)]) -> RunInfo {
        let tasks = tasks
            .iter()
            .map(|(name, state)| pb::Task {
                name: name.to_string(),
                state: wire::task_state(*state) as i32,
                ..Default::default()
            })
            .collect();
        let ev = pb::RunEvent {
            event: Some(pb::run_event::Event::Snapshot(pb::Snapshot {
                state: pb::RunState::Running as i32,
                tasks,
            })),
        };
        match wire::event_from_pb(ev, "r") {
            Some(WatchEvent::Snapshot(info)) => *info,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_snapshot_gives_the_transitions_missed_and_no_others() {
        let mut seen = Seen::default();
        seen.note(&[TaskChange {
            name: Arc::from("a"),
            previous: TaskState::Waiting,
            current: TaskState::Running,
            started: None,
            duration: None,
            return_code: None,
            error_message: None,
        }]);
        let now = snapshot(&[
            ("a", TaskState::Succeeded),
            ("b", TaskState::Succeeded),
            ("c", TaskState::Waiting),
        ]);
        let missed: Vec<(String, TaskState, TaskState)> = seen
            .missed(&now)
            .into_iter()
            .map(|c| (c.name.to_string(), c.previous, c.current))
            .collect();
        assert_eq!(
            missed,
            [
                ("a".into(), TaskState::Running, TaskState::Succeeded),
                ("b".into(), TaskState::Waiting, TaskState::Running),
                ("b".into(), TaskState::Running, TaskState::Succeeded),
            ]
        );
        assert!(seen.missed(&now).is_empty(), "nothing twice");
    }
}
