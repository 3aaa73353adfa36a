//! The gRPC face of a coordinator: `Jobs` for clients ([`jobs`], its errors in [`errors`]),
//! `Agents` for agents, plus standard health and reflection (v1 and v1alpha). Every call is a
//! message to the engine; nothing here decides anything.

pub mod conn;
pub mod errors;
pub mod forward;
pub mod jobs;
pub mod logs;
pub mod paging;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use factotum_proto as pb;
use factotum_proto::agents_server::{Agents, AgentsServer};
use factotum_proto::jobs::jobs_server::JobsServer;
use factotum_service::tls::Reloadable;
use factotum_service::Lifecycle;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

pub use self::jobs::JobsApi;
use crate::engine::Engine;
use crate::spec::InputLimits;

use factotum_proto::LEADER_METADATA;
/// The gRPC health service name that is SERVING only on the leader.
pub const LEADER_HEALTH: &str = "factotum.v1.Leader";

/// Where calls go: the engine while this coordinator leads, and where the leader is while it
/// follows (published by [`crate::node`]).
#[derive(Debug, Clone)]
pub struct Routing {
    pub engine: watch::Receiver<Option<Engine>>,
    pub leader: watch::Receiver<Option<String>>,
}

impl Routing {
    /// A coordinator that leads from the start (no election: the memory store).
    pub fn leading(engine: Engine) -> Routing {
        Routing {
            engine: watch::channel(Some(engine)).1,
            leader: watch::channel(None).1,
        }
    }

    /// The engine, or UNAVAILABLE naming the leader for clients and agents to follow.
    pub fn engine(&self) -> Result<Engine, Status> {
        if let Some(e) = self.engine.borrow().as_ref() {
            return Ok(e.clone());
        }
        let leader = self.leader.borrow().clone();
        let message = match &leader {
            Some(addr) => format!("this coordinator is a follower; the leader is {addr}"),
            None => "this coordinator is a follower and no leader is elected yet; retry shortly"
                .to_string(),
        };
        let refusal =
            errors::Refusal::new(tonic::Code::Unavailable, errors::Reason::NoLeader, message);
        let mut status = match &leader {
            Some(addr) => refusal.meta("leader", addr.clone()),
            None => refusal,
        }
        .status();
        // Always present on a follower's answer (empty while no leader is known): clients and
        // agents retry such answers, and only those.
        if let Ok(value) = leader.unwrap_or_default().parse() {
            status.metadata_mut().insert(LEADER_METADATA, value);
        }
        Err(status)
    }
}

type CoordinatorStream = Pin<Box<dyn Stream<Item = Result<pb::CoordinatorMessage, Status>> + Send>>;

/// The `Agents` service: each session's stream is pumped into the engine.
#[derive(Debug, Clone)]
pub struct AgentsApi {
    role: Routing,
    life: Lifecycle,
    /// `--tls-client-ca`: a session needs a client certificate naming its agent.
    agent_certs: bool,
}

/// How long a new agent session may take to say Hello.
const HELLO_WITHIN: Duration = Duration::from_secs(30);

/// What is wrong with a Hello, if anything: every field an agent sends is bounded (a name is
/// at most 253 characters without control characters, at most 64 labels of 253 characters,
/// 64 addresses, 100,000 slots).
fn hello_problem(h: &pb::Hello) -> Option<String> {
    let text_ok = |s: &str| s.len() <= 253 && !s.chars().any(char::is_control);
    if h.agent_id.is_empty() || !text_ok(&h.agent_id) {
        return Some(
            "the agent's name must be 1 to 253 characters without control characters".into(),
        );
    }
    if !text_ok(&h.hostname) || !text_ok(&h.version) {
        return Some("the hostname and version are at most 253 characters".into());
    }
    if h.labels.len() > 64 || h.labels.iter().any(|(k, v)| !text_ok(k) || !text_ok(v)) {
        return Some("at most 64 labels, each key and value at most 253 characters".into());
    }
    if h.ips.len() > 64 || h.ips.iter().any(|ip| !text_ok(ip)) {
        return Some("at most 64 addresses".into());
    }
    if h.slots > 100_000 {
        return Some(format!("{} slots: at most 100000", h.slots));
    }
    None
}

/// Whether the peer may speak for the agent its Hello names: with `--tls-client-ca`, only with a
/// certificate (not a CLI's) whose common name or a DNS name is that agent's name.
fn may_speak_for(peer: &conn::Peer, hello: &pb::Hello) -> Result<(), Status> {
    let Some(cert) = &peer.cert else {
        return Err(Status::unauthenticated(
            "an agent session needs a client certificate from the coordinator's --tls-client-ca \
             (give the agent --tls-cert and --tls-key)",
        ));
    };
    if cert.is_client() {
        return Err(Status::permission_denied(
            "a client (factotum:client) certificate cannot open an agent session",
        ));
    }
    if !cert.names(&hello.agent_id) {
        return Err(Status::permission_denied(format!(
            "the agent says it is '{}' but its certificate is for {}",
            hello.agent_id,
            cert.names.join(", ")
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl Agents for AgentsApi {
    type AgentSessionStream = CoordinatorStream;

    async fn agent_session(
        &self,
        request: Request<tonic::Streaming<pb::AgentMessage>>,
    ) -> Result<Response<CoordinatorStream>, Status> {
        let peer = request.extensions().get::<conn::Peer>().cloned();
        let mut inbound = request.into_inner();
        let engine = self.role.engine()?;
        let (in_tx, in_rx) = mpsc::channel(1024);
        let (out_tx, out_rx) = mpsc::channel(1024);
        // Why the session was refused before it reached the engine, if it was.
        let (refused_tx, refused_rx) = mpsc::channel::<Status>(1);
        let (shutdown, check) = (self.life.token.clone(), self.agent_certs);
        self.life.spawn(async move {
            // The session's first message names the agent: with --tls-client-ca, its
            // certificate must name it too (the agent sends it once the session is open).
            let first = match tokio::time::timeout(HELLO_WITHIN, inbound.message()).await {
                Ok(Ok(Some(m))) => m,
                _ => return,
            };
            if let Some(pb::agent_message::Msg::Hello(hello)) = &first.msg {
                if let Some(why) = hello_problem(hello) {
                    tracing::warn!("agent session refused: {why}");
                    let _ = refused_tx.send(Status::invalid_argument(why)).await;
                    return;
                }
            }
            if check {
                let verdict = match &first.msg {
                    Some(pb::agent_message::Msg::Hello(hello)) => {
                        may_speak_for(&peer.unwrap_or_default(), hello).inspect_err(|e| {
                            tracing::warn!(agent = %hello.agent_id, "agent session refused: {}", e.message());
                        })
                    }
                    _ => Err(Status::invalid_argument("an agent session starts with Hello")),
                };
                if let Err(status) = verdict {
                    let _ = refused_tx.send(status).await;
                    return;
                }
            }
            // Let go of the refusal: the session's stream ends with the engine's side alone.
            drop(refused_tx);
            if in_tx.send(first).await.is_err() {
                return;
            }
            engine.attach_agent(in_rx, out_tx);
            loop {
                tokio::select! {
                    msg = inbound.message() => match msg {
                        Ok(Some(m)) => if in_tx.send(m).await.is_err() { return },
                        _ => return,
                    },
                    _ = shutdown.cancelled() => return,
                }
            }
        });
        // The engine holds the only sender: the stream ends when the engine forgets the agent or stops.
        // A refused session ends with ALREADY_EXISTS and the engine's reason.
        let outbound = ReceiverStream::new(out_rx).map(|m| match m.msg {
            Some(pb::coordinator_message::Msg::Refused(r)) => Err(Status::already_exists(r.reason)),
            _ => Ok(m),
        });
        let refused = ReceiverStream::new(refused_rx).map(Err);
        Ok(Response::new(Box::pin(outbound.merge(refused))))
    }
}

/// Bounds on what clients can make one coordinator hold (flags of `server::Config`).
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// `--max-rendered-size` and `--max-rendered-total`, for every submission.
    pub render: factotum_common::template::Limits,
    /// `--max-message-size`.
    pub max_message: usize,
    /// `--max-pending-submits`: `SubmitRun`/`RerunRun` calls in progress at once.
    pub max_pending_submits: usize,
    /// `--max-watches`: `WatchRun` streams open at once.
    pub max_watches: usize,
    /// `--max-factfile-size` and `--max-tasks`, for every submission.
    pub input: InputLimits,
    /// `--idle-timeout`: a connection whose peer sends nothing for this long is closed.
    pub idle_timeout: Duration,
}

/// HTTP/2 streams (calls) one connection may have open at once; a client queues the rest.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 200;

/// How the port is secured (flags of `server::Config`).
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// `--tls-cert`/`--tls-key` (with `--tls-client-ca`): the port speaks TLS.
    pub tls: Option<Arc<Reloadable>>,
    /// Client calls are served without credentials: the listener is loopback, or `--insecure`
    /// (and no `--tokens`).
    pub open: bool,
    /// `--tokens`: the credentials client calls need.
    pub auth: Option<Arc<crate::auth::Auth>>,
    /// `--tls-client-ca`: an agent session needs a client certificate naming its agent.
    pub agent_certs: bool,
    /// How this coordinator reaches the leader it forwards to (`--tls-ca`, and its own
    /// certificate as a client one).
    pub peer_tls: Option<tonic::transport::ClientTlsConfig>,
}

/// Serves the coordinator's gRPC API on `listener` until `life`'s token fires.
pub async fn serve(
    role: Routing,
    listener: TcpListener,
    security: Security,
    limits: ServeLimits,
    jobs: JobsApi,
    life: Lifecycle,
) -> Result<(), tonic::transport::Error> {
    let (max_message, idle_timeout) = (limits.max_message, limits.idle_timeout);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<JobsServer<JobsApi>>().await;
    health.set_serving::<AgentsServer<AgentsApi>>().await;
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    // `factotum.v1.Leader` is SERVING only while this replica leads (for VIPs routing by health).
    {
        let (health, mut engine) = (health.clone(), role.engine.clone());
        let stop = life.token.clone();
        life.spawn(async move {
            loop {
                let status = if engine.borrow_and_update().is_some() {
                    tonic_health::ServingStatus::Serving
                } else {
                    tonic_health::ServingStatus::NotServing
                };
                health.set_service_status(LEADER_HEALTH, status).await;
                tokio::select! {
                    changed = engine.changed() => if changed.is_err() { return },
                    _ = stop.cancelled() => return,
                }
            }
        });
    }
    // Both reflection versions: grpcurl and current clients speak v1; Python's stock
    // reflection, older grpcurl, grpc_cli, Evans and Postman speak only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let (reflection_v1, reflection_v1alpha) =
        (reflection().build_v1(), reflection().build_v1alpha());
    // `--max-message-size`, both ways, on both services: a larger message is refused by name
    // (RESOURCE_EXHAUSTED / OUT_OF_RANGE), never silently truncated. Every message Factotum
    // itself sends stays well under it by construction (tails, leases and output pieces).
    let jobs = JobsServer::new(jobs)
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    let shutdown = life.token.clone();
    let (tls, life_for_accept) = (security.tls.clone(), life.clone());
    let agents = AgentsServer::new(AgentsApi {
        role,
        life,
        agent_certs: security.agent_certs,
    })
    .max_decoding_message_size(max_message)
    .max_encoding_message_size(max_message);
    let mut builder = tonic::transport::Server::builder()
        // A request is read whole before it is served (or refused): what a flood of calls on
        // one connection can make the coordinator hold is this many messages, at most.
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        // Pings at least twice per `--idle-timeout`: a live peer's answers keep it from `Silent`.
        .http2_keepalive_interval(Some(Duration::from_secs(10).min(idle_timeout / 2)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    let router = builder
        .add_service(health_service)
        .add_service(jobs)
        .add_service(agents);
    let router = match (reflection_v1, reflection_v1alpha) {
        (Ok(v1), Ok(v1alpha)) => router.add_service(v1).add_service(v1alpha),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "gRPC reflection is unavailable");
            router
        }
    };
    // No Nagle: leases and results are small messages that must not wait for a delayed ACK.
    // TCP keepalive finds peers that vanished without a FIN; `Silent` closes connections whose
    // peer sends nothing at all for `--idle-timeout` (a TCP connection that never speaks
    // HTTP/2 included: tonic 0.14 has no handshake or idle timeout of its own). A live
    // HTTP/2 peer is never silent that long: it answers the keepalive pings below.
    let incoming = conn::incoming(
        listener,
        idle_timeout,
        tls,
        conn::Port::Grpc,
        life_for_accept,
    );
    router
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
}

/// Whether an address is loopback (the only kind served without `--insecure`).
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_of_a_hello_is_bounded() {
        let ok = pb::Hello {
            agent_id: "etl-1".into(),
            slots: 4,
            ..Default::default()
        };
        assert_eq!(hello_problem(&ok), None);
        let long = pb::Hello {
            agent_id: "x".repeat(254),
            ..ok.clone()
        };
        assert!(hello_problem(&long).is_some());
        let forged = pb::Hello {
            agent_id: "a\nb".into(),
            ..ok.clone()
        };
        assert!(hello_problem(&forged).is_some());
        let mut labels = ok.clone();
        for i in 0..65 {
            labels.labels.insert(format!("k{i}"), "v".into());
        }
        assert!(hello_problem(&labels).is_some());
        let slots = pb::Hello {
            slots: 1_000_000,
            ..ok
        };
        assert!(hello_problem(&slots).is_some());
    }
}
