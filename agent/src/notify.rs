//! systemd notifications (`Type=notify` units): READY once first connected, STATUS on each
//! connect or failure, STOPPING when asked to stop, WATCHDOG pings when the unit wants them.
//! Outside systemd every call is a no-op.

use std::time::Duration;

use factotum_service::Lifecycle;
use sd_notify::NotifyState;

fn notify(state: &[NotifyState]) {
    let _ = sd_notify::notify(false, state);
}

/// What systemd has been told.
#[derive(Debug, Default)]
pub struct Systemd {
    ready_sent: bool,
}

impl Systemd {
    /// Connected to `coordinator`: READY (the first time) and a status line.
    pub fn connected(&mut self, coordinator: &str) {
        if !self.ready_sent {
            notify(&[NotifyState::Ready]);
            self.ready_sent = true;
        }
        notify(&[NotifyState::Status(&format!("connected to {coordinator}"))]);
    }

    pub fn unreachable(&self, coordinator: &str, error: &str) {
        notify(&[NotifyState::Status(&format!(
            "cannot reach {coordinator}: {error}"
        ))]);
    }
}

/// STOPPING as soon as `shutdown` fires (a tracked task, ended with `life`).
pub fn stopping_on(life: &Lifecycle, shutdown: tokio_util::sync::CancellationToken) {
    let end = life.token.clone();
    life.spawn(async move {
        tokio::select! {
            _ = shutdown.cancelled() => notify(&[NotifyState::Stopping]),
            _ = end.cancelled() => {}
        }
    });
}

/// Pings the systemd watchdog at half its period, when the unit asks for it, until `life` ends.
pub fn watchdog(life: &Lifecycle) {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let every = Duration::from_micros(usec / 2);
    let end = life.token.clone();
    life.spawn(async move {
        loop {
            notify(&[NotifyState::Watchdog]);
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = end.cancelled() => return,
            }
        }
    });
}
