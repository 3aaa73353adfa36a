//! Leader election through etcd's election API, and the fencing token that comes with it.
//!
//! Each coordinator campaigns with its own lease, which it keeps alive itself, also while it
//! waits in the campaign. Winning gives the leader key and its create revision: every write of
//! the leader is a transaction conditional on that revision (the fence), and the revision is
//! also the epoch stamped on leases, so agents can ignore a deposed leader.

use std::time::Duration;

use etcd_client::{Client, LeaderKey, ResignOptions};
use factotum_service::Lifecycle;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("the campaign returned no leader key")]
    NoKey,
    #[error("the leader key vanished right after winning (the lease expired?)")]
    KeyGone,
    #[error("stopped")]
    Stopped,
}

/// Won leadership.
#[derive(Debug)]
pub struct Leadership {
    pub key: Vec<u8>,
    /// The leader key's create revision: the fence and the epoch.
    pub rev: i64,
    leader: LeaderKey,
    /// Cancelled when the lease can no longer be kept alive: leadership is gone.
    pub lost: CancellationToken,
}

/// The election's name (a key prefix) under the store prefix.
pub fn election_name(prefix: &str) -> String {
    format!("{}/leader", prefix.trim_end_matches('/'))
}

/// How long one etcd call of the election may take before it counts as failed (the election
/// client itself has no timeout: a campaign blocks until won).
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Grants a lease, keeps it alive in the background, and campaigns until this coordinator
/// leads (or `life`'s token fires; it also ends the keep-alive, and so the term). `value` is
/// the advertised address followers send clients to.
///
/// Nothing etcd does ends the campaign: a failed grant, a campaign cut by a member that died,
/// a lease that expired meanwhile — each is logged and tried again with [`Backoff`] (the client
/// balances over every endpoint, so a retry reaches a live member). Only `life`'s token ends it
/// early, with [`LeaderError::Stopped`].
pub async fn campaign(
    client: &Client,
    name: &str,
    value: &str,
    ttl: Duration,
    life: &Lifecycle,
) -> Result<Leadership, LeaderError> {
    let stop = &life.token;
    let ttl_secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX).max(1);
    let mut backoff = Backoff::default();
    // The lease campaigned with, and its `lost` token; kept across retries while it lives
    // (campaigning again with the same lease finds the same key).
    let mut held: Option<(i64, CancellationToken)> = None;
    loop {
        if stop.is_cancelled() {
            return Err(LeaderError::Stopped);
        }
        let (lease, lost) = match &held {
            Some((lease, lost)) if !lost.is_cancelled() => (*lease, lost.clone()),
            _ => {
                let mut leases = client.lease_client();
                let granted = tokio::select! {
                    r = tokio::time::timeout(CALL_TIMEOUT, leases.grant(ttl_secs, None)) => r,
                    _ = stop.cancelled() => return Err(LeaderError::Stopped),
                };
                match granted {
                    Ok(Ok(resp)) => {
                        let lost = CancellationToken::new();
                        life.spawn(keep_alive(
                            client.clone(),
                            resp.id(),
                            ttl,
                            lost.clone(),
                            stop.clone(),
                        ));
                        held = Some((resp.id(), lost.clone()));
                        (resp.id(), lost)
                    }
                    Ok(Err(e)) => {
                        let error = crate::etcd::describe(&e);
                        tracing::warn!(%error, "could not get a leader lease from etcd; trying again");
                        if !backoff.wait(stop).await {
                            return Err(LeaderError::Stopped);
                        }
                        continue;
                    }
                    Err(_) => {
                        tracing::warn!("etcd did not grant a leader lease in time; trying again");
                        if !backoff.wait(stop).await {
                            return Err(LeaderError::Stopped);
                        }
                        continue;
                    }
                }
            }
        };
        match campaign_once(client, name, value, lease, &lost, stop).await {
            Ok(won) => return Ok(won),
            Err(LeaderError::Stopped) => return Err(LeaderError::Stopped),
            Err(e) => {
                tracing::warn!(error = %e, "the campaign for leadership was interrupted; campaigning again");
                if !backoff.wait(stop).await {
                    return Err(LeaderError::Stopped);
                }
            }
        }
    }
}

/// One campaign with `lease`, until won or failed.
async fn campaign_once(
    client: &Client,
    name: &str,
    value: &str,
    lease: i64,
    lost: &CancellationToken,
    stop: &CancellationToken,
) -> Result<Leadership, LeaderError> {
    let mut election = client.election_client();
    let resp = tokio::select! {
        r = election.campaign(name, value, lease) => r?,
        _ = stop.cancelled() => return Err(LeaderError::Stopped),
        _ = lost.cancelled() => return Err(LeaderError::KeyGone),
    };
    let leader = resp.leader().ok_or(LeaderError::NoKey)?.clone();
    // Winning is only real if the key is still there with the revision we were given.
    let got = tokio::time::timeout(CALL_TIMEOUT, client.kv_client().get(leader.key(), None))
        .await
        .map_err(|_| LeaderError::KeyGone)??;
    let rev = got.kvs().first().map(|kv| kv.create_revision());
    if rev != Some(leader.rev()) {
        return Err(LeaderError::KeyGone);
    }
    Ok(Leadership {
        key: leader.key().to_vec(),
        rev: leader.rev(),
        leader,
        lost: lost.clone(),
    })
}

/// Gives leadership up at once, so a standby takes over without waiting for the lease to expire.
pub async fn resign(client: &Client, leadership: &Leadership) -> Result<(), LeaderError> {
    client
        .election_client()
        .resign(Some(
            ResignOptions::new().with_leader(leadership.leader.clone()),
        ))
        .await?;
    Ok(())
}

/// The advertised address of the current leader, if there is one.
pub async fn current(client: &Client, name: &str) -> Option<String> {
    let resp = tokio::time::timeout(CALL_TIMEOUT, client.election_client().leader(name))
        .await
        .ok()?
        .ok()?;
    let kv = resp.kv()?;
    String::from_utf8(kv.value().to_vec()).ok()
}

/// How long before the lease would expire a leader that could not renew it gives leadership
/// up: a third of the TTL, at least 500 ms (and never more than the TTL).
pub fn step_down_after(ttl: Duration) -> Duration {
    ttl.saturating_sub((ttl / 3).max(Duration::from_millis(500)))
        .max(Duration::from_millis(100))
}

/// Renews `lease` every third of its TTL. Each renewal counts from the moment it was sent (the
/// lease lives at most `ttl` from then); a renewal that fails or takes too long is tried again
/// within 200 ms, on a new stream (the client picks a live member). When no renewal got
/// through for [`step_down_after`], `lost` fires: the term ends before etcd lets the lease
/// expire, so the old leader has let go before a standby can win.
async fn keep_alive(
    client: Client,
    lease: i64,
    ttl: Duration,
    lost: CancellationToken,
    stop: CancellationToken,
) {
    let every = (ttl / 3).max(Duration::from_millis(200));
    let retry = Duration::from_millis(200).min(every);
    let give_up = step_down_after(ttl);
    let mut renewed = tokio::time::Instant::now();
    // The keep-alive stream breaks when a member dies: it is opened again as needed.
    let mut stream = None;
    loop {
        let sent = tokio::time::Instant::now();
        // No single call may outlive the time left before stepping down.
        let budget = give_up
            .saturating_sub(renewed.elapsed())
            .clamp(Duration::from_millis(50), every);
        let attempt = async {
            if stream.is_none() {
                stream = client.lease_client().keep_alive(lease).await.ok();
            }
            match stream.as_mut() {
                Some((keeper, responses)) => {
                    keeper.keep_alive().await.is_ok()
                        && matches!(responses.message().await, Ok(Some(r)) if r.ttl() > 0)
                }
                None => false,
            }
        };
        let ok = tokio::select! {
            r = tokio::time::timeout(budget, attempt) => matches!(r, Ok(true)),
            _ = stop.cancelled() => return,
        };
        if ok {
            renewed = sent;
        } else {
            stream = None;
            if renewed.elapsed() >= give_up {
                tracing::error!(
                    lease,
                    unrenewed_ms = renewed.elapsed().as_millis() as u64,
                    ttl_ms = ttl.as_millis() as u64,
                    "the leader lease could not be renewed: giving leadership up before it expires"
                );
                lost.cancel();
                return;
            }
        }
        let pause = if ok { every } else { retry };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.cancelled() => return,
        }
    }
}
/// Retry pacing for etcd calls that must not fail the coordinator: 200 ms doubling to 5 s,
/// each wait jittered (50–100 %) so replicas do not retry in step.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: Self::FIRST }
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(5);

    /// The next wait (and doubles the one after).
    pub fn next_wait(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        base.mul_f64(rand::random_range(0.5..=1.0))
    }

    /// Waits the next delay; `false` when `stop` fired meanwhile.
    pub async fn wait(&mut self, stop: &CancellationToken) -> bool {
        let wait = self.next_wait();
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = stop.cancelled() => false,
        }
    }
}
