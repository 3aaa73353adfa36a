//! What `factotum run` prints, with Factotum 0.7's texts.

use std::io::IsTerminal;

use factotum_common::format::{console_time, human};
use factotum_common::run::{Stream, TaskState};
use factotum_coordinator::{RunSummary, TaskChange};

use crate::out::{self, errln};

/// Colour on or off for this process.
#[derive(Debug, Clone, Copy)]
pub struct Console {
    colour: bool,
    /// What goes to stdout goes to stderr instead (`submit --wait -o json`: stdout is for the
    /// final JSON document only).
    all_on_stderr: bool,
}

const RESET: &str = "\x1b[0m";
pub const CYAN: &str = "\x1b[36m";
pub const GREEN: &str = "\x1b[32m";
pub const RED: &str = "\x1b[31m";
pub const YELLOW: &str = "\x1b[33m";

impl Console {
    /// Colours only on a terminal, and not with `--no-colour`, `CLICOLOR=0` or `NO_COLOR`.
    pub fn new(no_colour: bool) -> Console {
        let env_off = std::env::var("CLICOLOR").is_ok_and(|v| v == "0")
            || std::env::var_os("NO_COLOR").is_some();
        Console {
            colour: !no_colour
                && !env_off
                && std::io::stdout().is_terminal()
                && std::io::stderr().is_terminal(),
            all_on_stderr: false,
        }
    }

    /// This console, printing everything on stderr.
    pub fn on_stderr(self) -> Console {
        Console {
            all_on_stderr: true,
            ..self
        }
    }

    /// Prints one of the lines `factotum run` prints on stdout.
    fn stdout(&self, args: std::fmt::Arguments) {
        if self.all_on_stderr {
            out::stderr(args)
        } else {
            out::stdout(args)
        }
    }

    pub fn paint(&self, colour: &str, text: &str) -> String {
        if self.colour {
            format!("{colour}{text}{RESET}")
        } else {
            text.to_string()
        }
    }

    pub fn task_changes(&self, changes: &[TaskChange]) {
        for c in changes {
            let name = self.paint(CYAN, &c.name);
            let line = match (c.previous, c.current) {
                (TaskState::Waiting, TaskState::Running) => {
                    let at = c.started.map(console_time).unwrap_or_default();
                    format!("Task '{name}' was started at {at}")
                }
                (TaskState::Running, TaskState::Succeeded | TaskState::SucceededNoOp) => {
                    let d = human(c.duration.unwrap_or_default());
                    format!(
                        "Task '{name}': {} after {d}",
                        self.paint(GREEN, "succeeded")
                    )
                }
                (TaskState::Running, TaskState::Failed) => {
                    let d = human(c.duration.unwrap_or_default());
                    let reason = c.error_message.as_deref().unwrap_or("unknown");
                    format!(
                        "Task '{name}': {} after {d}. Reason: {reason}",
                        self.paint(RED, "failed")
                    )
                }
                (TaskState::Running, TaskState::Waiting) => {
                    // A retry: the message says which attempt failed and when the next starts.
                    let d = human(c.duration.unwrap_or_default());
                    let reason = c.error_message.as_deref().unwrap_or("unknown");
                    format!(
                        "Task '{name}': {} after {d}, will retry. Reason: {reason}",
                        self.paint(YELLOW, "failed")
                    )
                }
                _ => continue,
            };
            errln!("{line}");
        }
    }

    /// Output as it comes: one or more lines joined by `\n` (an agent passes on every whole
    /// line it read at once), each printed as `[task] line`, all in one write.
    pub fn output(&self, task: &str, stream: Stream, line: &str) {
        let name = self.paint(CYAN, task);
        let mut text = String::new();
        let text = if line.contains('\n') {
            text.reserve(line.len() + (name.len() + 4) * (line.len() / 8 + 1));
            for l in line.split('\n') {
                text.push('[');
                text.push_str(&name);
                text.push_str("] ");
                text.push_str(l);
                text.push('\n');
            }
            format_args!("{text}")
        } else {
            format_args!("[{name}] {line}\n")
        };
        match stream {
            Stream::Stdout => self.stdout(text),
            Stream::Stderr => out::stderr(text),
        }
    }

    pub fn summary(&self, s: &RunSummary) {
        let ran = s.tasks.iter().filter(|(_, st)| st.ran()).count();
        let not_run: Vec<String> = s
            .tasks
            .iter()
            .filter(|(_, st)| *st == TaskState::Skipped)
            .map(|(n, _)| format!("'{n}'"))
            .collect();
        let line = format!("{ran}/{} tasks run in {}", s.tasks.len(), human(s.duration));
        self.stdout(format_args!("{line}\n"));
        if let Some(failed) = &s.first_failed {
            let line = if not_run.is_empty() {
                format!("Factotum job executed abnormally as a task ('{failed}') failed!")
            } else {
                format!(
                    "Factotum job executed abnormally as a task ('{failed}') failed - the following tasks were not run: {}!",
                    not_run.join(", ")
                )
            };
            self.stdout(format_args!("{}\n", self.paint(RED, &line)));
        } else if let Some(early) = &s.first_no_op {
            let line = format!(
                "Factotum job finished early as a task ('{early}') requested an early finish. The following tasks were not run: {}.",
                not_run.join(", ")
            );
            self.stdout(format_args!("{}\n", self.paint(GREEN, &line)));
        }
    }

    /// The end of a run that was cancelled (a client's run, not `factotum run`'s: Factotum had
    /// no cancel): how much ran, who cancelled it and why, and what did not run.
    pub fn cancelled(&self, s: &RunSummary, by: &str, reason: &str) {
        let ran = s.tasks.iter().filter(|(_, st)| st.ran()).count();
        let line = format!("{ran}/{} tasks run in {}", s.tasks.len(), human(s.duration));
        self.stdout(format_args!("{line}\n"));
        self.stdout(format_args!(
            "{}\n",
            self.paint(YELLOW, &cancelled_line(s, by, reason))
        ));
    }

    /// Why the run's ready tasks are not running (a coordinator's placement says).
    pub fn waiting(&self, reason: &str) {
        errln!("{}", self.paint(YELLOW, &format!("Waiting: {reason}")));
    }

    pub fn warn(&self, text: &str) {
        errln!("{}", self.paint(YELLOW, &format!("Warn: {text}")));
    }

    /// This watcher fell behind the run's output and some lines were not sent to it.
    pub fn lagged(&self, skipped: u64) {
        self.warn(&format!(
            "{skipped} output line(s) skipped: this watcher fell behind (the coordinator's --watch-buffer)"
        ));
    }

    pub fn error(&self, text: &str) {
        errln!("{}", self.paint(RED, &format!("Error: {text}")));
    }
}

/// `Factotum job was cancelled by <who>: <why> - the following tasks were not run: 'a', 'b'.`
/// (`reason` as the coordinator keeps it: `job cancelled` or `job cancelled: <why>`).
fn cancelled_line(s: &RunSummary, by: &str, reason: &str) -> String {
    let mut line = "Factotum job was cancelled".to_string();
    if !by.is_empty() {
        line.push_str(&format!(" by {by}"));
    }
    let why = reason
        .strip_prefix("job cancelled")
        .unwrap_or(reason)
        .trim_start_matches(':')
        .trim();
    if !why.is_empty() {
        line.push_str(&format!(": {why}"));
    }
    let not_run: Vec<String> = s
        .tasks
        .iter()
        .filter(|(_, st)| *st == TaskState::Skipped)
        .map(|(n, _)| format!("'{n}'"))
        .collect();
    if !not_run.is_empty() {
        line.push_str(&format!(
            " - the following tasks were not run: {}",
            not_run.join(", ")
        ));
    }
    line + "."
}

/// The `--dry-run` table: TASK | COMMAND, one row per task.
pub fn command_table(rows: &[(String, String)]) -> String {
    let w1 = rows
        .iter()
        .map(|(t, _)| t.chars().count())
        .max()
        .unwrap_or(0)
        .max(4);
    let w2 = rows
        .iter()
        .map(|(_, c)| c.chars().count())
        .max()
        .unwrap_or(0)
        .max(7);
    let rule = format!("+{}+{}+\n", "-".repeat(w1 + 2), "-".repeat(w2 + 2));
    let row = |a: &str, b: &str| {
        format!(
            "| {a}{} | {b}{} |\n",
            " ".repeat(w1 - a.chars().count()),
            " ".repeat(w2 - b.chars().count())
        )
    };
    let mut out = rule.clone();
    out.push_str(&row("TASK", "COMMAND"));
    out.push_str(&rule);
    for (t, c) in rows {
        out.push_str(&row(t, c));
    }
    out.push_str(&rule);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use factotum_common::run::JobState;
    use std::sync::Arc;

    #[test]
    fn a_cancelled_run_says_who_why_and_what_did_not_run() {
        let s = RunSummary {
            run_id: "r".into(),
            state: JobState::Failed,
            tasks: vec![
                (Arc::from("a"), TaskState::Failed),
                (Arc::from("b"), TaskState::Skipped),
            ],
            duration: Default::default(),
            first_failed: Some(Arc::from("a")),
            first_no_op: None,
            cancelled: true,
        };
        assert_eq!(
            cancelled_line(&s, "alice", "job cancelled: maintenance"),
            "Factotum job was cancelled by alice: maintenance - the following tasks were not run: 'b'."
        );
        assert_eq!(
            cancelled_line(&s, "", "job cancelled"),
            "Factotum job was cancelled - the following tasks were not run: 'b'."
        );
    }
}
