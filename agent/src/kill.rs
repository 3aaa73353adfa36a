//! Stopping a task: TERM to its process group, a grace period, then KILL — written once, for
//! the executor (a task it spawned), an adopted task (run by a shim of an earlier agent) and,
//! through their cancel tokens, the session's stop paths (a cancel, the drain grace, the
//! disconnect limit).

use std::time::Duration;

use tokio::time::Instant;

/// Where the stopping of one process group stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not asked to stop.
    Running,
    /// TERM sent; KILL due at `kill_at`.
    Terminated { kill_at: Instant },
    /// KILL sent.
    Killed,
}

/// TERM, `grace`, KILL for one process group (the task's pid is its group's id).
#[derive(Debug)]
pub struct Escalation {
    group: Option<u32>,
    grace: Duration,
    phase: Phase,
}

impl Escalation {
    pub fn new(group: Option<u32>, grace: Duration) -> Escalation {
        Escalation {
            group,
            grace,
            phase: Phase::Running,
        }
    }

    /// Starts stopping: TERM now (once).
    pub fn stop(&mut self, now: Instant) {
        if self.phase == Phase::Running {
            signal_group(self.group, libc::SIGTERM);
            self.phase = Phase::Terminated {
                kill_at: now + self.grace,
            };
        }
    }

    /// Whether it was asked to stop.
    pub fn stopping(&self) -> bool {
        self.phase != Phase::Running
    }

    /// When KILL is due, while it is.
    pub fn kill_at(&self) -> Option<Instant> {
        match self.phase {
            Phase::Terminated { kill_at } => Some(kill_at),
            _ => None,
        }
    }

    /// KILL once the grace is over.
    pub fn tick(&mut self, now: Instant) {
        if self.kill_at().is_some_and(|at| now >= at) {
            signal_group(self.group, libc::SIGKILL);
            self.phase = Phase::Killed;
        }
    }

    /// The task has ended: if we were stopping it, KILL what is left of its group.
    pub fn finish(&mut self) {
        if self.stopping() {
            signal_group(self.group, libc::SIGKILL);
            self.phase = Phase::Killed;
        }
    }
}

/// Signals a task's process group — never our own group, never pid 0 or 1.
pub fn signal_group(pid: Option<u32>, signal: i32) {
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

    #[test]
    fn term_then_kill_after_the_grace_and_never_twice() {
        let t0 = Instant::now();
        let mut e = Escalation::new(None, Duration::from_secs(2));
        e.tick(t0 + Duration::from_secs(60));
        assert!(!e.stopping(), "nothing happens before a stop");
        e.stop(t0);
        assert_eq!(e.kill_at(), Some(t0 + Duration::from_secs(2)));
        e.stop(t0 + Duration::from_secs(1));
        assert_eq!(
            e.kill_at(),
            Some(t0 + Duration::from_secs(2)),
            "a second stop does not restart the grace"
        );
        e.tick(t0 + Duration::from_secs(1));
        assert!(e.kill_at().is_some(), "still within the grace");
        e.tick(t0 + Duration::from_secs(2));
        assert_eq!(e.kill_at(), None, "killed");
        assert!(e.stopping());
    }

    #[test]
    fn our_own_group_and_init_are_never_signalled() {
        // Would kill the test runner if it got through.
        let ours = u32::try_from(nix::unistd::getpgrp().as_raw()).unwrap();
        signal_group(Some(ours), libc::SIGKILL);
        signal_group(Some(1), libc::SIGKILL);
        signal_group(Some(0), libc::SIGKILL);
    }
}
