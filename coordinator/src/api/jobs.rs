//! The `Jobs` service (`factotum.jobs.v2`): each call is one request to the engine, its answer
//! converted by [`crate::wire::jobs`], its refusal by [`super::errors`].

use std::pin::Pin;
use std::sync::Arc;

use chrono::Utc;
use factotum_proto::jobs as pb;
use factotum_proto::jobs::jobs_server::Jobs;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::{Stream, StreamExt};
use tonic::{Code, Request, Response, Status};

use super::errors::{Reason, Refusal};
use super::forward::{answered, onward, outliving, Forwarder, Target, FORWARDED_CLIENT};
use super::Routing;
use crate::auth::{Auth, Principal, Scope};
use crate::spec::{prepare_within, InputLimits, Submission};
use crate::wire::jobs as wire;

/// The shortest webhook heartbeat a submission may ask for.
const MIN_HEARTBEAT: std::time::Duration = std::time::Duration::from_millis(100);

use super::paging::{page_token, run_query};
pub use super::paging::{DEFAULT_PAGE, MAX_PAGE};

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
    /// `--max-watches`: permits for open `WatchRun` streams, each held by its stream.
    watches: Arc<Semaphore>,
    max_watches: usize,
    /// `--max-factfile-size` and `--max-tasks`.
    input: InputLimits,
    /// Calls to a follower go to the leader.
    forward: Forwarder,
    /// Calls are served without credentials (a loopback listener, or `--insecure`).
    open: bool,
    /// `--tokens`: the credentials calls need.
    auth: Option<Arc<Auth>>,
}

/// The engine when this coordinator leads; otherwise the call is forwarded to the leader and
/// its answer returned from the enclosing method.
macro_rules! local_or_forward {
    ($api:ident, $request:ident, $method:ident, $scope:expr) => {{
        $api.admit(&$request, $scope)?;
        match $api.forward.target(&$api.role, &$request)? {
            Target::Local(engine) => engine,
            Target::Leader { mut client, addr } => {
                let cert = caller_cert(&$request);
                return answered(client.$method(onward($request, cert)).await, &addr);
            }
        }
    }};
}

impl JobsApi {
    pub fn new(role: Routing, limits: &super::ServeLimits, security: &super::Security) -> JobsApi {
        JobsApi {
            role,
            render_limits: limits.render,
            max_message: limits.max_message,
            submits: Arc::new(Semaphore::new(limits.max_pending_submits)),
            max_pending: limits.max_pending_submits,
            watches: Arc::new(Semaphore::new(limits.max_watches)),
            max_watches: limits.max_watches,
            input: limits.input,
            forward: Forwarder::new(limits.max_message, security.peer_tls.clone()),
            open: security.open,
            auth: security.auth.clone(),
        }
    }

    /// Who makes the call, if the port needs credentials, or why it may not be served:
    /// UNAUTHENTICATED without a known credential (a bearer token, or a client certificate
    /// listed in `--tokens`), PERMISSION_DENIED naming the scope it lacks.
    pub(crate) fn admit<T>(
        &self,
        request: &Request<T>,
        scope: Scope,
    ) -> Result<Option<Principal>, Status> {
        let unauthenticated = |why: String| {
            Refusal::new(Code::Unauthenticated, Reason::Unauthenticated, why).status()
        };
        let Some(auth) = &self.auth else {
            if self.open {
                return Ok(None);
            }
            return Err(unauthenticated(
                "no --tokens configured: this coordinator serves clients on a non-loopback \
                 address only with credentials (or with --insecure)"
                    .into(),
            ));
        };
        let tokens = auth.tokens();
        let token = bearer(request);
        let cert = caller_cert(request);
        let principal = match (&token, &cert) {
            (Some(t), _) => tokens.by_token(t),
            (None, Some(cn)) => tokens.by_cert(cn),
            (None, None) => None,
        };
        let Some(p) = principal else {
            return Err(unauthenticated(match (token, cert) {
                (Some(_), _) => "the token is not one this coordinator knows".into(),
                (None, Some(cn)) => {
                    format!("the client certificate '{cn}' is not listed in --tokens")
                }
                (None, None) => {
                    "a token is needed (metadata `authorization: Bearer <token>`)".into()
                }
            }));
        };
        if !p.may(scope) {
            return Err(Refusal::new(
                Code::PermissionDenied,
                Reason::Unauthenticated,
                format!(
                    "'{}' may not do this: it needs the '{}' scope",
                    p.name,
                    scope.as_str()
                ),
            )
            .meta("scope", scope.as_str())
            .status());
        }
        Ok(Some(p.clone()))
    }

    /// A permit for one `SubmitRun`/`RerunRun`, or RESOURCE_EXHAUSTED at once when
    /// `--max-pending-submits` are already in progress (never an unbounded queue).
    fn submit_permit(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.submits.clone().try_acquire_owned().map_err(|_| {
            Refusal::new(
                Code::ResourceExhausted,
                Reason::LimitExceeded,
                format!(
                    "too many submissions in progress (--max-pending-submits {}); retry shortly",
                    self.max_pending
                ),
            )
            .meta("limit", "max_pending_submits")
            .status()
        })
    }

    /// `--max-pending-submits` (Factotum Server's `/status` calls it `maxQueueSize`).
    pub fn max_pending_submits(&self) -> usize {
        self.max_pending
    }

    /// A permit for one `WatchRun` stream, held until the stream is dropped; RESOURCE_EXHAUSTED
    /// when `--max-watches` are open (each may hold up to `--watch-buffer` of output).
    fn watch_permit(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.watches.clone().try_acquire_owned().map_err(|_| {
            Refusal::new(
                Code::ResourceExhausted,
                Reason::LimitExceeded,
                format!(
                    "too many open watches (--max-watches {}); retry later",
                    self.max_watches
                ),
            )
            .meta("limit", "max_watches")
            .status()
        })
    }
}

/// `events`, holding `permit` until the stream is dropped.
fn holding(events: EventStream, permit: OwnedSemaphorePermit) -> EventStream {
    Box::pin(events.map(move |ev| {
        let _held = &permit;
        ev
    }))
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::RunEvent, Status>> + Send>>;

/// The name of the client certificate a call is made with: the peer's own, or — only when the
/// peer is a coordinator forwarding the call — the one its caller presented to it. A header
/// naming a certificate from any other peer is ignored: only coordinators vouch for callers.
fn caller_cert<T>(request: &Request<T>) -> Option<String> {
    let peer = request
        .extensions()
        .get::<super::conn::Peer>()?
        .cert
        .as_ref()?;
    let forwarded = (request.metadata().get(FORWARDED_CLIENT)).and_then(|v| v.to_str().ok());
    match forwarded {
        Some(name) if peer.is_coordinator() => Some(name.to_string()),
        _ => peer.names.first().cloned(),
    }
}

/// The bearer token a call carries (`authorization: Bearer <token>`), if any.
fn bearer<T>(request: &Request<T>) -> Option<&str> {
    let value = request.metadata().get("authorization")?.to_str().ok()?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
}

/// The metadata naming the task whose output tails a `GetRun` answer carries.
pub const OUTPUT_OF: &str = "factotum-output-of";

/// The task a `GetRun` call asks the output tails of (`factotum-output-of`, percent-encoded).
fn output_of<T>(request: &Request<T>) -> String {
    let Some(value) = request.metadata().get(OUTPUT_OF) else {
        return String::new();
    };
    percent_encoding::percent_decode(value.as_bytes())
        .decode_utf8_lossy()
        .into_owned()
}

/// A watch made with `token` that ends (UNAUTHENTICATED) as soon as a re-read of `--tokens`
/// no longer lets the token read.
fn guarded(events: EventStream, auth: Option<Arc<Auth>>, token: Option<String>) -> EventStream {
    let (Some(auth), Some(token)) = (auth, token) else {
        return events;
    };
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let mut changes = auth.changes();
    tokio::spawn(async move {
        let mut events = events;
        loop {
            tokio::select! {
                ev = events.next() => match ev {
                    Some(ev) => if tx.send(ev).await.is_err() { return },
                    None => return,
                },
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let allowed = auth.tokens().by_token(&token).is_some_and(|p| p.may(Scope::Read));
                    if !allowed {
                        let why = "the token was removed from --tokens";
                        let status = Refusal::new(Code::Unauthenticated, Reason::Unauthenticated, why);
                        let _ = tx.send(Err(status.status())).await;
                        return;
                    }
                }
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl Jobs for JobsApi {
    async fn submit_run(
        &self,
        request: Request<pb::SubmitRunRequest>,
    ) -> Result<Response<pb::SubmitRunResponse>, Status> {
        let _permit = self.submit_permit()?;
        let engine = local_or_forward!(self, request, submit_run, Scope::Submit);
        let mut r = request.into_inner();
        let server_job = (r.server_job.take())
            .filter(|j| !j.job_id.is_empty())
            .map(wire::server_job_from_pb);
        let constraints = r
            .constraints
            .into_iter()
            .map(wire::constraint_from_pb)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Refusal::bad(Reason::InvalidArgument, "constraints", e).status())?;
        let heartbeat = match r.heartbeat_interval.as_ref().map(wire::from_duration) {
            Some(d) if d < MIN_HEARTBEAT => {
                let why = "heartbeat_interval must be at least 100ms (or unset: no heartbeat)";
                return Err(
                    Refusal::bad(Reason::InvalidArgument, "heartbeat_interval", why).status(),
                );
            }
            d => d,
        };
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
            placement: match pb::Placement::try_from(r.placement) {
                Ok(p) => wire::placement_from_pb(p as i32),
                Err(_) => {
                    let why = format!("{} is not a placement", r.placement);
                    return Err(Refusal::bad(Reason::InvalidArgument, "placement", why).status());
                }
            },
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
            heartbeat,
            no_redact: r.no_redact,
            parallel: (r.parallel > 0).then_some(r.parallel),
        };
        // Preparing resolves host names: keep that off the async workers.
        let input = self.input;
        let spec = tokio::task::spawn_blocking(move || prepare_within(sub, input))
            .await
            .map_err(|e| Status::internal(format!("preparing the run failed: {e}")))??;
        let submitted = match server_job {
            Some(job) => engine.submit_server_job(spec, job).await?,
            None => engine.submit(spec).await?,
        };
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
        let engine = local_or_forward!(self, request, rerun_run, Scope::Submit);
        let r = request.into_inner();
        let submitted = engine.rerun(&r.run_id, r.from_failed).await?;
        Ok(Response::new(pb::SubmitRunResponse {
            run_id: submitted.run_id,
            job_reference: submitted.job_reference,
            existing: false,
        }))
    }

    async fn get_run(
        &self,
        request: Request<pb::GetRunRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        let engine = local_or_forward!(self, request, get_run, Scope::Read);
        let output_of = output_of(&request);
        let info = engine.get_run(&request.into_inner().run_id).await?;
        Ok(Response::new(wire::run_with_output(&info, &output_of)))
    }

    async fn list_runs(
        &self,
        request: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        let engine = local_or_forward!(self, request, list_runs, Scope::Read);
        let query = run_query(request.into_inner())?;
        let page = engine.list_runs(query).await?;
        Ok(Response::new(pb::ListRunsResponse {
            runs: page.runs.iter().map(|r| wire::run(r, false)).collect(),
            next_page_token: page.next.as_ref().map(page_token).unwrap_or_default(),
        }))
    }

    type WatchRunStream = EventStream;
    type GetTaskLogStream = super::logs::LogStream;

    async fn get_task_log(
        &self,
        request: Request<pb::GetTaskLogRequest>,
    ) -> Result<Response<super::logs::LogStream>, Status> {
        self.admit(&request, Scope::Read)?;
        let engine = match self.forward.target(&self.role, &request)? {
            Target::Local(engine) => engine,
            Target::Leader { mut client, addr } => {
                let cert = caller_cert(&request);
                let answer = client.get_task_log(onward(request, cert)).await;
                let boxed = |s| Box::pin(s) as super::logs::LogStream;
                return answered(answer, &addr).map(|r| r.map(boxed));
            }
        };
        let stream = super::logs::serve(&engine, request.into_inner()).await?;
        Ok(Response::new(stream))
    }

    async fn watch_run(
        &self,
        request: Request<pb::WatchRunRequest>,
    ) -> Result<Response<EventStream>, Status> {
        self.admit(&request, Scope::Read)?;
        let permit = self.watch_permit()?;
        let token = bearer(&request).map(str::to_string);
        let engine = match self.forward.target(&self.role, &request)? {
            Target::Local(engine) => engine,
            Target::Leader { mut client, addr } => {
                let cert = caller_cert(&request);
                let request = onward(request, cert);
                let (metadata, run_id) =
                    (request.metadata().clone(), request.get_ref().run_id.clone());
                let answer = client.watch_run(request).await;
                let (role, forward) = (self.role.clone(), self.forward.clone());
                let auth = self.auth.clone();
                return answered(answer, &addr).map(|r| {
                    r.map(|events| {
                        let events = outliving(role, forward, metadata, run_id, Box::pin(events));
                        holding(guarded(events, auth, token), permit)
                    })
                });
            }
        };
        let r = request.into_inner();
        let rx = if r.resume {
            engine.watch_resumed(&r.run_id).await?
        } else {
            engine.watch(&r.run_id).await?
        };
        let stream = rx.map(|ev| Ok(wire::event(ev)));
        let events = guarded(Box::pin(stream), self.auth.clone(), token);
        Ok(Response::new(holding(events, permit)))
    }

    async fn cancel_run(
        &self,
        request: Request<pb::CancelRunRequest>,
    ) -> Result<Response<pb::CancelRunResponse>, Status> {
        // Who asks (a name only when clients authenticate), kept with the run.
        let by = self.admit(&request, Scope::Cancel)?.map(|p| p.name);
        let engine = local_or_forward!(self, request, cancel_run, Scope::Cancel);
        let r = request.into_inner();
        let reason = match r.reason.trim() {
            "" => "job cancelled".to_string(),
            why => format!("job cancelled: {why}"),
        };
        engine.cancel_by(&r.run_id, &reason, by.as_deref()).await?;
        Ok(Response::new(pb::CancelRunResponse {}))
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let engine = local_or_forward!(self, request, list_agents, Scope::Read);
        let agents = engine.list_agents().await?;
        let now = Utc::now();
        Ok(Response::new(pb::ListAgentsResponse {
            agents: agents.iter().map(|a| wire::agent(a, now)).collect(),
        }))
    }

    async fn list_webhooks(
        &self,
        request: Request<pb::ListWebhooksRequest>,
    ) -> Result<Response<pb::ListWebhooksResponse>, Status> {
        let engine = local_or_forward!(self, request, list_webhooks, Scope::Read);
        let (endpoints, dead) = engine.list_webhooks();
        Ok(Response::new(wire::webhooks(&endpoints, &dead)))
    }

    async fn replay_webhooks(
        &self,
        request: Request<pb::ReplayWebhooksRequest>,
    ) -> Result<Response<pb::ReplayWebhooksResponse>, Status> {
        let engine = local_or_forward!(self, request, replay_webhooks, Scope::Admin);
        let r = request.into_inner();
        let url = Some(r.url).filter(|u| !u.is_empty());
        let done = (engine.replay_webhooks(&r.run_id, r.from_sequence, url)).await?;
        Ok(Response::new(pb::ReplayWebhooksResponse {
            replayed: done.replayed,
            skipped: done.skipped,
        }))
    }

    async fn enable_webhook(
        &self,
        request: Request<pb::EnableWebhookRequest>,
    ) -> Result<Response<pb::EnableWebhookResponse>, Status> {
        let engine = local_or_forward!(self, request, enable_webhook, Scope::Admin);
        engine.enable_webhook(&request.into_inner().url)?;
        Ok(Response::new(pb::EnableWebhookResponse {}))
    }

    async fn get_server_status(
        &self,
        request: Request<pb::GetServerStatusRequest>,
    ) -> Result<Response<pb::ServerStatus>, Status> {
        let engine = local_or_forward!(self, request, get_server_status, Scope::Read);
        let status = engine.server_status().await?;
        Ok(Response::new(wire::server_status(status)))
    }

    async fn set_server_state(
        &self,
        request: Request<pb::SetServerStateRequest>,
    ) -> Result<Response<pb::ServerStatus>, Status> {
        let engine = local_or_forward!(self, request, set_server_state, Scope::Admin);
        let status = engine.set_draining(request.into_inner().draining).await?;
        Ok(Response::new(wire::server_status(status)))
    }

    async fn get_server_job(
        &self,
        request: Request<pb::GetServerJobRequest>,
    ) -> Result<Response<pb::ServerJobRun>, Status> {
        let engine = local_or_forward!(self, request, get_server_job, Scope::Read);
        let found = engine.server_job(&request.into_inner().id).await?;
        Ok(Response::new(pb::ServerJobRun {
            job: Some(wire::server_job(&found.job)),
            run: Some(wire::run(&found.run, true)),
        }))
    }
}

#[cfg(test)]
mod tests;
