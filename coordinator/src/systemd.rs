//! systemd notifications for the coordinator's `Type=notify` unit. Outside systemd, no-ops.

use factotum_service::Lifecycle;

use crate::api::Routing;

/// systemd (`Type=notify`): READY once this coordinator serves and leads or knows the leader,
/// a STATUS line at each change of role, STOPPING on shutdown. Outside systemd, no-ops.
pub fn notify(routing: &Routing, life: &Lifecycle) {
    use sd_notify::NotifyState;
    let (mut engine, mut leader) = (routing.engine.clone(), routing.leader.clone());
    let stop = life.token.clone();
    life.spawn(async move {
        let mut ready = false;
        loop {
            let status = match (
                engine.borrow_and_update().is_some(),
                leader.borrow_and_update().clone(),
            ) {
                (true, _) => Some("leading".to_string()),
                (false, Some(l)) => Some(format!("following {l}")),
                (false, None) => None,
            };
            if let Some(status) = status {
                if !ready {
                    let _ = sd_notify::notify(false, &[NotifyState::Ready]);
                    ready = true;
                }
                let _ = sd_notify::notify(false, &[NotifyState::Status(&status)]);
            }
            tokio::select! {
                changed = engine.changed() => if changed.is_err() { break },
                changed = leader.changed() => if changed.is_err() { break },
                _ = stop.cancelled() => break,
            }
        }
        let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
    });
}
