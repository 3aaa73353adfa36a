//! One cancellation token for shutdown and one tracker for every task a service spawns, so
//! shutdown can wait for them (bounded) instead of leaving detached tasks behind.

use std::future::Future;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Shutdown (`token`) and everything spawned under it (`tracker`). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Lifecycle {
    pub token: CancellationToken,
    pub tracker: TaskTracker,
}

impl Lifecycle {
    pub fn new() -> Lifecycle {
        Lifecycle::default()
    }

    /// A lifecycle whose shutdown follows `token`.
    pub fn with_token(token: CancellationToken) -> Lifecycle {
        Lifecycle {
            token,
            tracker: TaskTracker::new(),
        }
    }

    /// Spawns a tracked task.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// A child: cancelled with this one, and cancellable alone; same tracker.
    pub fn child(&self) -> Lifecycle {
        Lifecycle {
            token: self.token.child_token(),
            tracker: self.tracker.clone(),
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Fires shutdown and waits at most `within` for the tracked tasks; false if some are
    /// still running then.
    pub async fn shut_down(&self, within: Duration) -> bool {
        self.token.cancel();
        self.tracker.close();
        tokio::time::timeout(within, self.tracker.wait())
            .await
            .is_ok()
    }
}

impl From<CancellationToken> for Lifecycle {
    /// A lifecycle that shuts down with `token`, tracking its tasks on its own.
    fn from(token: CancellationToken) -> Lifecycle {
        Lifecycle::with_token(token)
    }
}

/// Cancels `token` on the first SIGINT or SIGTERM (from a tracked task).
pub fn cancel_on_signal(lifecycle: &Lifecycle, token: CancellationToken) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let stop = lifecycle.token.clone();
    lifecycle.spawn(async move {
        tokio::select! {
            _ = term.recv() => token.cancel(),
            _ = int.recv() => token.cancel(),
            _ = stop.cancelled() => {}
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shut_down_waits_for_tracked_tasks_that_honour_the_token() {
        let life = Lifecycle::new();
        let token = life.token.clone();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = done.clone();
        life.spawn(async move {
            token.cancelled().await;
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        assert!(life.shut_down(Duration::from_secs(5)).await);
        assert!(done.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn shut_down_is_bounded_by_a_task_that_ignores_it() {
        let life = Lifecycle::new();
        life.spawn(std::future::pending::<()>());
        assert!(!life.shut_down(Duration::from_secs(1)).await);
    }
}
