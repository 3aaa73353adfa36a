//! The leadership lifecycle of a coordinator with etcd: follow until elected, lead until the
//! term ends, then follow again — without exiting. A term ends when a signal asks this
//! coordinator to stop (it resigns, so a standby takes over at once), when its leader lease
//! could not be renewed for most of its TTL (it steps down before etcd lets the lease expire,
//! so its agents move to the next leader at once), or when a fenced write fails (another
//! coordinator leads). No etcd fault ends the node: a campaign cut by a dead member, a lease
//! that cannot be granted, are tried again with backoff ([`leader::campaign`]).
//!
//! The life is a named state moved forward in one loop ([`Node::run`]): [`Role::Following`]
//! publishes where the leader is (for the follower's UNAVAILABLE answers and agents);
//! [`Role::Leading`] holds a [`Term`]: the fence, handed once to the store, and an engine
//! started with that store.

use std::time::Duration;

use etcd_client::Client;
use factotum_service::Lifecycle;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::engine::{Engine, EngineConfig};
use crate::etcd::EtcdStore;
use crate::fence::Fence;
use crate::leader::{self, Leadership};
use crate::seal::{Sealed, StoreKey};

/// Where this coordinator stands.
#[derive(Debug)]
pub enum Role {
    Following,
    Leading(Box<Term>),
}

/// One term of leadership.
#[derive(Debug)]
pub struct Term {
    pub fence: Fence,
    leadership: Leadership,
    engine: Engine,
    /// The engine's fenced-write signal.
    fenced: CancellationToken,
    /// Ends the engine and the lease's keep-alive when the term ends.
    life: Lifecycle,
}

/// Why a term ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TermEnd {
    /// Asked to stop: resign and return.
    Stop,
    LeaseExpired,
    Fenced,
    /// The recorded runs could not be loaded: resign, so another replica may try.
    RecoverFailed,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("the campaign for leadership failed: {0}")]
    Campaign(#[from] leader::LeaderError),
}

/// A coordinator in an election.
pub struct Node {
    pub store: EtcdStore,
    /// `--store-key`: the records holding a run's secrets are sealed with it.
    pub store_key: Option<StoreKey>,
    pub engine: EngineConfig,
    /// The address other replicas and clients should use for this one.
    pub advertise: String,
    pub lease_ttl: Duration,
    /// The engine while leading; `None` while following.
    pub engine_tx: watch::Sender<Option<Engine>>,
    /// The leader's address while following.
    pub leader_tx: watch::Sender<Option<String>>,
}

impl Node {
    /// Follows and leads in turn until `stop` fires (then resigns if leading).
    pub async fn run(self, life: &Lifecycle, stop: &CancellationToken) -> Result<(), NodeError> {
        let client = self.store.election_client().clone();
        let name = leader::election_name(self.store.prefix());
        let mut role = Role::Following;
        loop {
            role = match role {
                Role::Following => {
                    let _ = self.engine_tx.send(None);
                    match self.follow(&client, &name, life, stop).await {
                        Ok(Some(term)) => Role::Leading(Box::new(term)),
                        Ok(None) => return Ok(()),
                        Err(e) => return Err(e),
                    }
                }
                Role::Leading(term) => {
                    let end = self.lead(&term, stop).await;
                    let _ = self.engine_tx.send(None);
                    term.life.token.cancel();
                    if matches!(end, TermEnd::Stop | TermEnd::RecoverFailed) {
                        match leader::resign(&client, &term.leadership).await {
                            Ok(()) => tracing::info!("resigned leadership"),
                            Err(e) => {
                                tracing::warn!(error = %e, "could not resign; a standby takes over when the lease expires")
                            }
                        }
                    }
                    if end == TermEnd::Stop {
                        return Ok(());
                    }
                    Role::Following
                }
            };
        }
    }

    /// Campaigns, publishing the current leader meanwhile; on winning, starts a term.
    /// `None`: stopped before winning.
    async fn follow(
        &self,
        client: &Client,
        name: &str,
        life: &Lifecycle,
        stop: &CancellationToken,
    ) -> Result<Option<Term>, NodeError> {
        let following = stop.child_token();
        {
            let (client, name, leader_tx) =
                (client.clone(), name.to_string(), self.leader_tx.clone());
            let following = following.clone();
            life.spawn(async move {
                while !following.is_cancelled() {
                    let _ = leader_tx.send(leader::current(&client, &name).await);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                        _ = following.cancelled() => {}
                    }
                }
            });
        }
        tracing::info!(election = %name, "campaigning for leadership");
        // The term's life: its engine and the lease's keep-alive end with it, or with `stop`.
        let term_life = Lifecycle {
            token: stop.child_token(),
            tracker: life.tracker.clone(),
        };
        let won = leader::campaign(client, name, &self.advertise, self.lease_ttl, &term_life).await;
        following.cancel();
        let leadership = match won {
            Ok(l) => l,
            Err(leader::LeaderError::Stopped) => return Ok(None),
            Err(e) => {
                term_life.token.cancel();
                return Err(e.into());
            }
        };
        let _ = self.leader_tx.send(Some(self.advertise.clone()));
        let fence = Fence::new(leadership.key.clone(), leadership.rev);
        let fenced = CancellationToken::new();
        let config = EngineConfig {
            fenced: fenced.clone(),
            ..self.engine.clone()
        };
        let store = Sealed::new(self.store.fenced(fence.clone()), self.store_key.clone());
        let engine = Engine::start(config, store, term_life.clone());
        Ok(Some(Term {
            fence,
            leadership,
            engine,
            fenced,
            life: term_life,
        }))
    }

    /// Loads the recorded runs, serves as the leader, and says why the term ended.
    async fn lead(&self, term: &Term, stop: &CancellationToken) -> TermEnd {
        match term.engine.recover().await {
            Ok(taken) => tracing::info!(runs = taken, epoch = term.fence.epoch(), "leading"),
            Err(e) => {
                tracing::error!(error = %e, "cannot load the runs recorded in etcd: stepping down to follow");
                return TermEnd::RecoverFailed;
            }
        }
        let _ = self.engine_tx.send(Some(term.engine.clone()));
        tokio::select! {
            _ = stop.cancelled() => TermEnd::Stop,
            _ = term.leadership.lost.cancelled() => {
                tracing::error!("lost leadership (the leader lease could not be renewed): stepping down to follow; agent sessions closed");
                TermEnd::LeaseExpired
            }
            _ = term.fenced.cancelled() => {
                tracing::error!("another coordinator leads now (a fenced write failed): stepping down to follow");
                TermEnd::Fenced
            }
        }
    }
}
