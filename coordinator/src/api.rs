//! The gRPC face of a coordinator: `Jobs` for clients, `Agents` for agents, plus standard
//! health and reflection. Every call is a message to the engine; nothing here decides anything.

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use factotum_proto as pb;
use factotum_proto::agents_server::{Agents, AgentsServer};
use factotum_proto::jobs_server::{Jobs, JobsServer};
use factotum_service::Lifecycle;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::engine::Engine;
use crate::model::EngineError;
use crate::spec::{prepare, SpecError, Submission};
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
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::RunEvent, Status>> + Send>>;
type CoordinatorStream = Pin<Box<dyn Stream<Item = Result<pb::CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Jobs for JobsApi {
    async fn submit_run(
        &self,
        request: Request<pb::SubmitRunRequest>,
    ) -> Result<Response<pb::SubmitRunResponse>, Status> {
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
        let spec = tokio::task::spawn_blocking(move || prepare(sub))
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

/// Serves the coordinator's gRPC API on `listener` until `life`'s token fires.
pub async fn serve(
    role: Routing,
    listener: TcpListener,
    render_limits: factotum_common::template::Limits,
    max_message: usize,
    life: Lifecycle,
) -> Result<(), tonic::transport::Error> {
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
    })
    .max_decoding_message_size(max_message)
    .max_encoding_message_size(max_message);
    let shutdown = life.token.clone();
    let agents = AgentsServer::new(AgentsApi { role, life })
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
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
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    router
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
}

/// Whether an address is loopback (the only kind served without `--insecure`).
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}
