//! The gRPC face of a coordinator: `Jobs` for clients ([`jobs`], its errors in [`errors`]),
//! `Agents` for agents, plus standard health and reflection (v1 and v1alpha). Every call is a
//! message to the engine; nothing here decides anything.

pub mod errors;
pub mod forward;
pub mod jobs;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use factotum_proto as pb;
use factotum_proto::agents_server::{Agents, AgentsServer};
use factotum_proto::jobs::jobs_server::JobsServer;
use factotum_service::Lifecycle;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
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
}

#[tonic::async_trait]
impl Agents for AgentsApi {
    type AgentSessionStream = CoordinatorStream;

    async fn agent_session(
        &self,
        request: Request<tonic::Streaming<pb::AgentMessage>>,
    ) -> Result<Response<CoordinatorStream>, Status> {
        let mut inbound = request.into_inner();
        let (in_tx, in_rx) = mpsc::channel(1024);
        let (out_tx, out_rx) = mpsc::channel(1024);
        self.role.engine()?.attach_agent(in_rx, out_tx);
        let shutdown = self.life.token.clone();
        self.life.spawn(async move {
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
        Ok(Response::new(Box::pin(outbound)))
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
    /// `--max-factfile-size` and `--max-tasks`, for every submission.
    pub input: InputLimits,
    /// `--idle-timeout`: a connection whose peer sends nothing for this long is closed.
    pub idle_timeout: Duration,
}

/// Serves the coordinator's gRPC API on `listener` until `life`'s token fires.
pub async fn serve(
    role: Routing,
    listener: TcpListener,
    limits: ServeLimits,
    life: Lifecycle,
) -> Result<(), tonic::transport::Error> {
    let ServeLimits {
        render: render_limits,
        max_message,
        max_pending_submits,
        input,
        idle_timeout,
    } = limits;
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
    let jobs = JobsServer::new(JobsApi::new(
        role.clone(),
        render_limits,
        max_message,
        max_pending_submits,
        input,
    ))
    .max_decoding_message_size(max_message)
    .max_encoding_message_size(max_message);
    let shutdown = life.token.clone();
    let agents = AgentsServer::new(AgentsApi { role, life })
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    let mut builder = tonic::transport::Server::builder()
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
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(TCP_KEEPALIVE))
        .map(move |conn| conn.map(|stream| Silent::new(stream, idle_timeout)));
    router
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
}

/// Idle time before TCP keepalive probes start on an accepted connection.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// An accepted connection that fails its reads once the peer has sent nothing for `timeout`,
/// so hyper closes it.
struct Silent {
    stream: TcpStream,
    timeout: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl Silent {
    fn new(stream: TcpStream, timeout: Duration) -> Silent {
        Silent {
            stream,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

impl tonic::transport::server::Connected for Silent {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::Connected::connect_info(&self.stream)
    }
}

impl AsyncRead for Silent {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let next = tokio::time::Instant::now() + self.timeout;
                    self.deadline.as_mut().reset(next);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the peer sent nothing for --idle-timeout",
                ))),
                Poll::Pending => Poll::Pending,
            },
            ready => ready,
        }
    }
}

impl AsyncWrite for Silent {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Whether an address is loopback (the only kind served without `--insecure`).
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}
