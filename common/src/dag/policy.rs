//! What one planned task needs at run time, and its policies from the extended factfile.

use std::sync::Arc;
use std::time::Duration;

use super::TaskId;
use crate::constraint::Constraint;
use crate::factfile::{OnLost, Task};

/// What one task of a plan needs at run time.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanTask {
    pub name: Arc<str>,
    /// The exact `sh -c` line.
    pub command_line: String,
    pub continue_job: Vec<i32>,
    pub terminate_job_with_success: Vec<i32>,
    pub deps: Vec<TaskId>,
    pub children: Vec<TaskId>,
    /// Boxed, and absent without policies: a 100,000-task plan pays 8 bytes a task for them.
    pub policy: Option<Box<TaskPolicy>>,
}

impl PlanTask {
    pub fn policy(&self) -> &TaskPolicy {
        static NONE: TaskPolicy = TaskPolicy {
            timeout: None,
            retry: None,
            continue_on_failure: false,
            retry_when_lost: false,
            env: Vec::new(),
            cwd: None,
            constraints: Vec::new(),
            redact: None,
        };
        self.policy.as_deref().unwrap_or(&NONE)
    }
}

/// A task's policies from the extended factfile (all off for a Snowplow factfile).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskPolicy {
    /// One attempt may run this long.
    pub timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
    /// Dependents run even if this task fails.
    pub continue_on_failure: bool,
    /// An attempt whose agent was lost is tried again (within the retry budget).
    pub retry_when_lost: bool,
    /// Added to the process environment.
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    /// On top of the run's constraints. Host addresses are resolved by the coordinator.
    pub constraints: Vec<Constraint>,
    /// What the agent replaces by `[redacted]` in the task's output: the run's `--env` secrets
    /// and this task's own `env` values (see [`crate::redact`]); `None`: nothing. Set by
    /// [`super::Plan::redacting`], never by the factfile.
    pub redact: Option<Arc<[String]>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    pub delay: Duration,
    pub backoff: f64,
    pub max_delay: Option<Duration>,
    /// Exit codes retried; `None`: any failure.
    pub on_return_codes: Option<Vec<i32>>,
}

impl RetryPolicy {
    /// The wait before attempt `next` (2 = the first retry): `delay * backoff^(next - 2)`,
    /// at most `max_delay`.
    pub fn delay_before(&self, next: u32) -> Duration {
        let factor = self.backoff.powi(next.saturating_sub(2).min(1000) as i32);
        let secs = self.delay.as_secs_f64() * factor;
        let capped = match self.max_delay {
            Some(m) => secs.min(m.as_secs_f64()),
            None => secs,
        };
        // A week at most: beyond that a number is a typo, and Duration must not overflow.
        Duration::from_secs_f64(capped.clamp(0.0, 7.0 * 86_400.0))
    }

    /// Whether this failure (an exit code, or `None` for one without: a spawn failure, a timeout)
    /// is one to retry.
    pub fn retries(&self, code: Option<i32>) -> bool {
        match (&self.on_return_codes, code) {
            (None, _) => true,
            (Some(codes), Some(c)) => codes.contains(&c),
            (Some(_), None) => false,
        }
    }
}

impl TaskPolicy {
    /// The task's policy; `None` for a task that has none (most, and every Snowplow one).
    pub(super) fn of(t: &Task) -> Option<Box<TaskPolicy>> {
        let t = t.ext.as_deref()?;
        let secs =
            |s: Option<f64>| Duration::from_secs_f64(s.unwrap_or(0.0).clamp(0.0, 7.0 * 86_400.0));
        let mut constraints = vec![];
        if let Some(c) = &t.constraints {
            if let Some(h) = &c.host {
                constraints.push(Constraint::Host {
                    value: h.clone(),
                    resolved: vec![],
                });
            }
            for (k, v) in c.labels.iter().flatten() {
                constraints.push(Constraint::Label {
                    key: k.clone(),
                    value: v.clone(),
                });
            }
        }
        Some(Box::new(TaskPolicy {
            timeout: t.timeout.map(Duration::from_secs),
            retry: t.retry.as_ref().map(|r| RetryPolicy {
                attempts: r.attempts.max(1),
                delay: secs(r.delay_seconds),
                backoff: r.backoff.unwrap_or(1.0).max(1.0),
                max_delay: r.max_delay_seconds.map(|m| secs(Some(m))),
                on_return_codes: r.on_return_codes.clone(),
            }),
            continue_on_failure: t.continue_on_failure.unwrap_or(false),
            retry_when_lost: t.on_lost == Some(OnLost::Retry),
            env: t
                .env
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            cwd: t.cwd.clone(),
            constraints,
            redact: None,
        }))
    }

    /// Attempts allowed for a failure of this kind: `retry.attempts`; a lost agent with
    /// `onLost: retry` and no `retry` block gets one more try.
    pub fn max_attempts(&self, lost: bool) -> u32 {
        match (&self.retry, lost && self.retry_when_lost) {
            (Some(r), _) => r.attempts,
            (None, true) => 2,
            (None, false) => 1,
        }
    }
}
