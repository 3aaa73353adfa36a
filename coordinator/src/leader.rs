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

/// Grants a lease, keeps it alive in the background, and campaigns until this coordinator
/// leads (or `life`'s token fires; it also ends the keep-alive, and so the term). `value` is
/// the advertised address followers send clients to.
pub async fn campaign(
    client: &Client,
    name: &str,
    value: &str,
    ttl: Duration,
    life: &Lifecycle,
) -> Result<Leadership, LeaderError> {
    let stop = &life.token;
    let ttl_secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX).max(1);
    let lease = client.lease_client().grant(ttl_secs, None).await?.id();
    let lost = CancellationToken::new();
    life.spawn(keep_alive(
        client.clone(),
        lease,
        ttl,
        lost.clone(),
        stop.clone(),
    ));
    let mut election = client.election_client();
    let resp = tokio::select! {
        r = election.campaign(name, value, lease) => r?,
        _ = stop.cancelled() => return Err(LeaderError::Stopped),
        _ = lost.cancelled() => return Err(LeaderError::KeyGone),
    };
    let leader = resp.leader().ok_or(LeaderError::NoKey)?.clone();
    // Winning is only real if the key is still there with the revision we were given.
    let got = client.kv_client().get(leader.key(), None).await?;
    let rev = got.kvs().first().map(|kv| kv.create_revision());
    if rev != Some(leader.rev()) {
        return Err(LeaderError::KeyGone);
    }
    Ok(Leadership {
        key: leader.key().to_vec(),
        rev: leader.rev(),
        leader,
        lost,
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
    let resp = client.election_client().leader(name).await.ok()?;
    let kv = resp.kv()?;
    String::from_utf8(kv.value().to_vec()).ok()
}

async fn keep_alive(
    client: Client,
    lease: i64,
    ttl: Duration,
    lost: CancellationToken,
    stop: CancellationToken,
) {
    let every = (ttl / 3).max(Duration::from_millis(200));
    // The lease lives until `ttl` after the last successful renewal; past that, it is gone.
    let mut renewed = tokio::time::Instant::now();
    // The keep-alive stream breaks when etcd restarts: it is opened again as needed.
    let mut stream = None;
    loop {
        if stream.is_none() {
            stream = client.lease_client().keep_alive(lease).await.ok();
        }
        let ok = match stream.as_mut() {
            Some((keeper, responses)) => {
                keeper.keep_alive().await.is_ok()
                    && matches!(tokio::time::timeout(every, responses.message()).await, Ok(Ok(Some(r))) if r.ttl() > 0)
            }
            None => false,
        };
        if ok {
            renewed = tokio::time::Instant::now();
        } else {
            stream = None;
            if renewed.elapsed() >= ttl {
                tracing::error!(lease, "the leader lease expired");
                lost.cancel();
                return;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}
