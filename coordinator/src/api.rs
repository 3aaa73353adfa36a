//! The gRPC face of a coordinator: `Jobs` for clients, `Agents` for agents, plus standard
//! health and reflection. Every call is a message to the engine; nothing here decides anything.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use factotum_proto as pb;
use factotum_proto::agents_server::{Agents, AgentsServer};
use factotum_proto::jobs_server::{Jobs, JobsServer};
use factotum_service::Lifecycle;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::engine::Engine;
use crate::model::EngineError;
use crate::spec::{prepare_within, InputLimits, SpecError, Submission};
use crate::wire;

impl From<EngineError> for Status {
    fn from(e: EngineError) -> Status {
        match e {
            EngineError::Stopped => {
                Status::unavailable("the coordinator is shutting down; retry on another replica")
            }
            EngineError::NoSuchRun(id) => Status::not_found(format!(
                "no run '{id}' (see `factotum runs` for the runs this coordinator knows)"
            )),
            EngineError::AlreadyActive(run) => Status::already_exists(format!(
                "a run of this job (same factfile and tags) is still active: {run}; \
                 pass --allow-concurrent to start another anyway"
            )),
            e @ (EngineError::StillActive(_)
            | EngineError::NothingToRerun(_)
            | EngineError::CannotRerun { .. }) => Status::failed_precondition(e.to_string()),
            EngineError::Store(e) => Status::unavailable(format!("the store is unavailable: {e}")),
        }
    }
}

impl From<SpecError> for Status {
    fn from(e: SpecError) -> Status {
        let kind = match e {
            SpecError::InvalidFactfile(_) => "factfile",
            SpecError::BadArgument(_) => "argument",
        };
        Status::with_details(
            tonic::Code::InvalidArgument,
            e.to_string(),
            kind.as_bytes().to_vec().into(),
        )
    }
}

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
    fn engine(&self) -> Result<Engine, Status> {
        if let Some(e) = self.engine.borrow().as_ref() {
            return Ok(e.clone());
        }
        let leader = self.leader.borrow().clone();
        let mut status = Status::unavailable(match &leader {
            Some(addr) => format!("this coordinator is a follower; the leader is {addr}"),
            None => "this coordinator is a follower and no leader is elected yet; retry shortly"
                .to_string(),
        });
        // Always present on a follower's answer (empty while no leader is known): clients and
        // agents retry such answers, and only those.
        if let Ok(value) = leader.unwrap_or_default().parse() {
            status.metadata_mut().insert(LEADER_METADATA, value);
        }
        Err(status)
    }
}

/// The `Jobs` service.
#[derive(Debug, Clone)]
pub struct JobsApi {
    role: Routing,
    /// `--max-rendered-size` and `--max-rendered-total`, for every submission.
    render_limits: factotum_common::template::Limits,
    /// `--max-message-size`: a lease must fit in it.
    max_message: usize,
    /// `--max-pending-submits`: permits for submissions being prepared or committed.
    submits: Arc<Semaphore>,
    max_pending: usize,
    /// `--max-factfile-size` and `--max-tasks`.
    input: InputLimits,
}

impl JobsApi {
    /// A permit for one `SubmitRun`/`RerunRun`, or RESOURCE_EXHAUSTED at once when
    /// `--max-pending-submits` are already in progress (never an unbounded queue).
    fn submit_permit(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.submits.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "too many submissions in progress (--max-pending-submits {}); retry shortly",
                self.max_pending
            ))
        })
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::RunEvent, Status>> + Send>>;
type CoordinatorStream = Pin<Box<dyn Stream<Item = Result<pb::CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Jobs for JobsApi {
    async fn submit_run(
        &self,
        request: Request<pb::SubmitRunRequest>,
    ) -> Result<Response<pb::SubmitRunResponse>, Status> {
        let _permit = self.submit_permit()?;
        let r = request.into_inner();
        let constraints = r
            .constraints
            .into_iter()
            .map(wire::constraint_from_pb)
            .collect::<Result<Vec<_>, _>>()
            .map_err(Status::invalid_argument)?;
        let sub = Submission {
            factfile: r.factfile,
            factfile_name: if r.factfile_name.is_empty() {
                "factfile".into()
            } else {
                r.factfile_name
            },
            env: Some(r.env_json).filter(|e| !e.is_empty()),
            tags: r.tags.into_iter().collect(),
            start: r.start,
            webhooks: r.webhooks,
            constraints,
            placement: r.placement.map(wire::placement_from_pb),
            allow_concurrent: r.allow_concurrent,
            idempotency_key: Some(r.idempotency_key).filter(|k| !k.is_empty()),
            max_output: if r.max_output == 0 {
                factotum_common::run::DEFAULT_MAX_OUTPUT
            } else {
                r.max_output as usize
            },
            dry_run: r.dry_run,
            render_limits: self.render_limits,
            max_message: self.max_message,
        };
        // Preparing resolves host names: keep that off the async workers.
        let input = self.input;
        let spec = tokio::task::spawn_blocking(move || prepare_within(sub, input))
            .await
            .map_err(|e| Status::internal(format!("preparing the run failed: {e}")))??;
        let submitted = self.role.engine()?.submit(spec).await?;
        Ok(Response::new(pb::SubmitRunResponse {
            run_id: submitted.run_id,
            job_reference: submitted.job_reference,
            existing: submitted.existing,
        }))
    }

    async fn rerun_run(
        &self,
        request: Request<pb::RerunRunRequest>,
    ) -> Result<Response<pb::SubmitRunResponse>, Status> {
        let _permit = self.submit_permit()?;
        let r = request.into_inner();
        let submitted = self.role.engine()?.rerun(&r.run_id, r.from_failed).await?;
        Ok(Response::new(pb::SubmitRunResponse {
            run_id: submitted.run_id,
            job_reference: submitted.job_reference,
            existing: false,
        }))
    }

    async fn get_run(
        &self,
        request: Request<pb::GetRunRequest>,
    ) -> Result<Response<pb::RunStatus>, Status> {
        let info = self
            .role
            .engine()?
            .get_run(&request.into_inner().run_id)
            .await?;
        Ok(Response::new(wire::run_status(&info)))
    }

    async fn list_runs(
        &self,
        _: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        let runs = self.role.engine()?.list_runs().await?;
        Ok(Response::new(pb::ListRunsResponse {
            runs: runs.iter().map(wire::run_status).collect(),
        }))
    }

    type WatchRunStream = EventStream;

    async fn watch_run(
        &self,
        request: Request<pb::WatchRunRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let rx = self
            .role
            .engine()?
            .watch(&request.into_inner().run_id)
            .await?;
        let stream = rx.map(|ev| Ok(wire::event_to_pb(ev)));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cancel_run(
        &self,
        request: Request<pb::CancelRunRequest>,
    ) -> Result<Response<pb::CancelRunResponse>, Status> {
        self.role
            .engine()?
            .cancel(&request.into_inner().run_id, "job cancelled")
            .await?;
        Ok(Response::new(pb::CancelRunResponse {}))
    }

    async fn list_agents(
        &self,
        _: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let agents = self.role.engine()?.list_agents().await?;
        Ok(Response::new(pb::ListAgentsResponse {
            agents: agents.iter().map(wire::agent_status).collect(),
        }))
    }
}

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
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1();
    // `--max-message-size`, both ways, on both services: a larger message is refused by name
    // (RESOURCE_EXHAUSTED / OUT_OF_RANGE), never silently truncated. Every message Factotum
    // itself sends stays well under it by construction (tails, leases and output pieces).
    let jobs = JobsServer::new(JobsApi {
        role: role.clone(),
        render_limits,
        max_message,
        submits: Arc::new(Semaphore::new(max_pending_submits)),
        max_pending: max_pending_submits,
        input,
    })
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
    let router = match reflection {
        Ok(r) => router.add_service(r),
        Err(e) => {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_submission_over_max_pending_submits_is_refused_at_once() {
        let api = JobsApi {
            role: Routing {
                engine: watch::channel(None).1,
                leader: watch::channel(None).1,
            },
            render_limits: factotum_common::template::Limits {
                field: 1 << 20,
                total: 1 << 26,
            },
            max_message: 16 << 20,
            submits: Arc::new(Semaphore::new(1)),
            max_pending: 1,
            input: InputLimits::default(),
        };
        let held = api.submit_permit().unwrap();
        let refused = api
            .submit_run(Request::new(pb::SubmitRunRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            refused.message(),
            "too many submissions in progress (--max-pending-submits 1); retry shortly"
        );
        let refused = api
            .rerun_run(Request::new(pb::RerunRunRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        drop(held);
        // The permit is back: the next call gets past the limit (to the follower's answer).
        let next = api
            .rerun_run(Request::new(pb::RerunRunRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(next.code(), tonic::Code::Unavailable);
    }
}
