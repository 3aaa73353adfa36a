//! The live one-line progress summary of `run`, `submit --wait`, `rerun --wait` and `watch`:
//! tasks done, running and waiting, and the time since following began, redrawn in place on
//! stderr (`\r`, the line, no newline).
//!
//! Only when stderr is a terminal (and `TERM` is not `dumb`): on a pipe or in a file nothing of
//! it is written, so `factotum run`'s bytes stay Factotum's. It never touches stdout. Every
//! other line the CLI prints erases it first ([`crate::out`] does that), and it is redrawn on
//! the next change or tick, so it always sits below the output. It has no colour.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use factotum_common::run::TaskState;
use factotum_coordinator::TaskChange;

use crate::out;

/// How often the line is redrawn at most (a busy run changes many times a second).
const REDRAW_EVERY: Duration = Duration::from_millis(100);

/// How often a caller should [`Progress::tick`]: the elapsed time moves on.
pub const TICK: Duration = Duration::from_millis(500);

/// Each task's state as far as the progress line knows.
#[derive(Debug)]
pub struct Progress {
    on: bool,
    since: Instant,
    tasks: HashMap<Arc<str>, TaskState>,
    /// Tasks known to exist (a count can come before the names do).
    total: usize,
    drawn: Option<Instant>,
}

impl Progress {
    /// On only when stderr is a terminal that can move the cursor.
    pub fn for_stderr() -> Progress {
        let dumb = std::env::var("TERM").is_ok_and(|t| t == "dumb");
        Progress::new(std::io::stderr().is_terminal() && !dumb)
    }

    pub fn new(on: bool) -> Progress {
        Progress {
            on,
            since: Instant::now(),
            tasks: HashMap::new(),
            total: 0,
            drawn: None,
        }
    }

    /// The run's tasks and their states now (from a plan, a status or a snapshot).
    pub fn tasks<'a>(&mut self, tasks: impl IntoIterator<Item = (&'a str, TaskState)>) {
        for (name, state) in tasks {
            match self.tasks.get_mut(name) {
                Some(s) => *s = state,
                None => {
                    self.tasks.insert(Arc::from(name), state);
                }
            }
        }
        self.total = self.total.max(self.tasks.len());
        self.redraw(false);
    }

    /// The run has this many tasks (before their names are known).
    pub fn total(&mut self, n: usize) {
        self.total = self.total.max(n);
    }

    pub fn changes(&mut self, changes: &[TaskChange]) {
        self.tasks(changes.iter().map(|c| (&*c.name, c.current)));
    }

    /// Tasks running now.
    pub fn running(&self) -> usize {
        self.tasks
            .values()
            .filter(|&&s| s == TaskState::Running)
            .count()
    }

    /// Redraws the line (the elapsed time moved on).
    pub fn tick(&mut self) {
        self.redraw(true);
    }

    /// Erases the line for good (the run ended).
    pub fn finish(&mut self) {
        self.on = false;
        out::progress_clear();
    }

    fn redraw(&mut self, force: bool) {
        if !self.on {
            return;
        }
        let now = Instant::now();
        if !force && self.drawn.is_some_and(|t| now - t < REDRAW_EVERY) {
            return;
        }
        self.drawn = Some(now);
        out::progress(&self.line(now - self.since));
    }

    /// `3/10 tasks done, 2 running, 5 waiting (1m 4s)`.
    fn line(&self, elapsed: Duration) -> String {
        let done = self.tasks.values().filter(|s| s.is_terminal()).count();
        let running = self.running();
        let waiting = self.total.saturating_sub(done + running);
        format!(
            "{done}/{} tasks done, {running} running, {waiting} waiting ({})",
            self.total,
            clock(elapsed)
        )
    }
}

/// Whole seconds: `7s`, `2m 3s`, `1h 2m 3s`.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m {s}s"),
        (h, m, s) => format!("{h}h {m}m {s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_counts_done_running_and_waiting() {
        let mut p = Progress::new(false);
        p.total(5);
        p.tasks([
            ("a", TaskState::Succeeded),
            ("b", TaskState::Skipped),
            ("c", TaskState::Running),
            ("d", TaskState::Waiting),
        ]);
        assert_eq!(
            p.line(Duration::from_secs(64)),
            "2/5 tasks done, 1 running, 2 waiting (1m 4s)"
        );
        assert_eq!(clock(Duration::from_millis(7_900)), "7s");
        assert_eq!(clock(Duration::from_secs(3723)), "1h 2m 3s");
    }
}
