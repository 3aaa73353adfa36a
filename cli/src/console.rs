//! What `factotum run` prints, with Factotum 0.7's texts.

use std::io::IsTerminal;

use factotum_common::format::{console_time, human};
use factotum_common::run::{Stream, TaskState};
use factotum_coordinator::{RunSummary, TaskChange};

use crate::out::{self, errln, outln};

/// Colour on or off for this process.
#[derive(Debug, Clone, Copy)]
pub struct Console {
    colour: bool,
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

    pub fn output(&self, task: &str, stream: Stream, line: &str) {
        let text = format_args!("[{}] {line}\n", self.paint(CYAN, task));
        match stream {
            Stream::Stdout => out::stdout(text),
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
        outln!("{ran}/{} tasks run in {}", s.tasks.len(), human(s.duration));
        if let Some(failed) = &s.first_failed {
            let line = if not_run.is_empty() {
                format!("Factotum job executed abnormally as a task ('{failed}') failed!")
            } else {
                format!(
                    "Factotum job executed abnormally as a task ('{failed}') failed - the following tasks were not run: {}!",
                    not_run.join(", ")
                )
            };
            outln!("{}", self.paint(RED, &line));
        } else if let Some(early) = &s.first_no_op {
            outln!(
                "{}",
                self.paint(
                    GREEN,
                    &format!(
                        "Factotum job finished early as a task ('{early}') requested an early finish. The following tasks were not run: {}.",
                        not_run.join(", ")
                    )
                )
            );
        }
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
