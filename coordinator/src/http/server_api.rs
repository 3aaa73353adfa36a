//! Factotum Server 0.3's HTTP API on the coordinator's HTTP port: `GET /` and `/help`,
//! `GET /status`, `POST /settings`, `POST /submit`, `GET /check?id=`, with its shapes,
//! messages and status codes (`../shared/COMPAT.md`). Each handler calls the client API
//! ([`crate::api::JobsApi`]) in-process with the caller's `Authorization` header, so it gets
//! the gRPC port's authentication and scopes, limits, and forwarding to the leader; the
//! duplicate check and the drain setting live in the engine (`engine::server_jobs`).

use std::collections::HashMap;
use std::sync::OnceLock;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use factotum_proto::jobs as pb;
use factotum_proto::jobs::jobs_server::Jobs;
use serde::{Deserialize, Serialize};
use tonic::Code;

use super::server_args::{self as args, PathRefused};
use super::Port;
use crate::auth::Scope;

/// The largest request body read.
const MAX_BODY: usize = 1 << 20;

/// `/help`'s answer, byte for byte Factotum Server's.
const HELP: &str = r#"{"/check":{"function":"Fetches the state of a job by the ID.","params":"pretty=1, id=[id string]"},"/help":{"function":"Returns this message!","params":"pretty=1"},"/settings":{"body":{"state":"run|drain"},"function":"Updates settings within the server.","params":"pretty=1"},"/status":{"function":"Returns general information about the server and host system.","params":"pretty=1"},"/submit":{"body":{"factfileArgs":"[ --start step-2 ]","factfilePath":"/com.acme-main/factfile","jobName":"com.acme-main"},"function":"Submits a job to the queue.","params":"pretty=1"}}"#;

/// When this process started serving the API (`/status`'s `startTime` and `upTime`).
static STARTED: OnceLock<DateTime<Utc>> = OnceLock::new();

/// The API's routes, merged into the HTTP port's router.
pub fn routes() -> Router<Port> {
    STARTED.get_or_init(Utc::now);
    Router::new()
        .route("/", get(help))
        .route("/help", get(help))
        .route("/status", get(status))
        .route("/settings", post(settings))
        .route("/submit", post(submit))
        .route("/check", get(check))
}

/// The query's parameters (axum's `Query` extractor is not built in).
struct Params(HashMap<String, String>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Params {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let RawQuery(raw) = RawQuery::from_request_parts(parts, state).await?;
        Ok(Params(args::query(raw.as_deref())))
    }
}

impl std::ops::Deref for Params {
    type Target = HashMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

fn pretty(q: &Params) -> bool {
    matches!(q.get("pretty").map(String::as_str), Some("1" | "true"))
}

/// A JSON answer, as Factotum Server sends it.
fn json<T: Serialize>(status: StatusCode, body: &T, pretty: bool) -> Response {
    let text = match pretty {
        true => serde_json::to_string_pretty(body),
        false => serde_json::to_string(body),
    };
    let text = text.unwrap_or_else(|_| r#"{"message":"cannot encode the answer"}"#.into());
    let ctype = "application/json; charset=UTF-8";
    (status, [(header::CONTENT_TYPE, ctype)], text).into_response()
}

#[derive(Serialize)]
struct Message {
    message: String,
}

fn message(status: StatusCode, text: impl Into<String>, pretty: bool) -> Response {
    let body = Message {
        message: text.into(),
    };
    json(status, &body, pretty)
}

/// A call to the client API carrying the caller's bearer token.
fn call<T>(headers: &HeaderMap, msg: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(msg);
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Some(value) = auth.and_then(|v| v.parse().ok()) {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// A refusal with no endpoint-specific meaning: 401/403 for credentials, else 503.
fn refused(status: &tonic::Status, pretty: bool) -> Response {
    let code = match status.code() {
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    message(code, status.message(), pretty)
}

/// The request body, or the answer refusing it: none, or over [`MAX_BODY`].
async fn body_of(body: Body, pretty: bool) -> Result<axum::body::Bytes, Response> {
    let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        let why = format!("Error: the request body is over {MAX_BODY} bytes");
        message(StatusCode::PAYLOAD_TOO_LARGE, why, pretty)
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(message(
            StatusCode::BAD_REQUEST,
            "Error: No body found in POST request",
            pretty,
        ));
    }
    Ok(bytes)
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8], pretty: bool) -> Result<T, Box<Response>> {
    serde_json::from_slice(bytes).map_err(|e| {
        let why = format!("Error decoding JSON string: {e}");
        Box::new(message(StatusCode::BAD_REQUEST, why, pretty))
    })
}

async fn help(State(port): State<Port>, headers: HeaderMap, q: Params) -> Response {
    if let Err(s) = port.jobs.admit(&call(&headers, ()), Scope::Read) {
        return refused(&s, pretty(&q));
    }
    if !pretty(&q) {
        let ctype = "application/json; charset=UTF-8";
        return (StatusCode::OK, [(header::CONTENT_TYPE, ctype)], HELP).into_response();
    }
    let value: serde_json::Value = serde_json::from_str(HELP).unwrap_or_default();
    json(StatusCode::OK, &value, true)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusBody {
    version: &'static str,
    server: ServerBody,
    dispatcher: Dispatcher,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ServerBody {
    start_time: String,
    up_time: String,
    state: &'static str,
}

#[derive(Serialize)]
struct Dispatcher {
    workers: Workers,
    jobs: Queue,
}

#[derive(Serialize, Default)]
struct Workers {
    total: u64,
    idle: u64,
    active: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Queue {
    max_queue_size: usize,
    in_queue: u32,
}

/// Factotum Server's `upTime`: "0 Days, 1 Hours, 2 Minutes, 3 Seconds".
fn up_time(secs: i64) -> String {
    let secs = secs.max(0);
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    format!("{d} Days, {h} Hours, {m} Minutes, {s} Seconds")
}

/// The connected agents' slots. An agent with unlimited slots (0) counts its running tasks as
/// both total and active: it is never idle, and never short of room.
fn workers(agents: &[pb::Agent]) -> Workers {
    let mut w = Workers::default();
    for a in agents.iter().filter(|a| a.connected) {
        let total = if a.slots == 0 { a.in_use } else { a.slots };
        w.total += u64::from(total);
        w.active += u64::from(a.in_use.min(total));
    }
    w.idle = w.total - w.active;
    w
}

async fn status(State(port): State<Port>, headers: HeaderMap, q: Params) -> Response {
    let p = pretty(&q);
    let queue = port
        .jobs
        .get_server_status(call(&headers, pb::GetServerStatusRequest {}));
    let queue = match queue.await {
        Ok(s) => s.into_inner(),
        Err(s) => return refused(&s, p),
    };
    let agents = port
        .jobs
        .list_agents(call(&headers, pb::ListAgentsRequest {}));
    let agents = match agents.await {
        Ok(a) => a.into_inner().agents,
        Err(s) => return refused(&s, p),
    };
    let started = *STARTED.get_or_init(Utc::now);
    let body = StatusBody {
        version: env!("CARGO_PKG_VERSION"),
        server: ServerBody {
            start_time: started.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            up_time: up_time((Utc::now() - started).num_seconds()),
            state: if queue.draining { "drain" } else { "run" },
        },
        dispatcher: Dispatcher {
            workers: workers(&agents),
            jobs: Queue {
                max_queue_size: port.jobs.max_pending_submits(),
                in_queue: queue.waiting_runs,
            },
        },
    };
    json(StatusCode::OK, &body, p)
}

#[derive(Deserialize)]
struct SettingsBody {
    state: Option<serde_json::Value>,
}

async fn settings(State(port): State<Port>, headers: HeaderMap, q: Params, body: Body) -> Response {
    let p = pretty(&q);
    if let Err(s) = port.jobs.admit(&call(&headers, ()), Scope::Admin) {
        return refused(&s, p);
    }
    let bytes = match body_of(body, p).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let asked: SettingsBody = match decode(&bytes, p) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let draining = match asked.state.as_ref().and_then(|s| s.as_str()) {
        Some("run") => false,
        Some("drain") => true,
        _ => {
            let why = "Validation Error: Invalid 'state', must be one of (run|drain)";
            return message(StatusCode::BAD_REQUEST, why, p);
        }
    };
    let set = pb::SetServerStateRequest { draining };
    match port.jobs.set_server_state(call(&headers, set)).await {
        Ok(s) => {
            let state = if s.into_inner().draining {
                "drain"
            } else {
                "run"
            };
            let said = format!("Update acknowledged: [state: {state}]");
            message(StatusCode::OK, said, p)
        }
        Err(s) => refused(&s, p),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SubmitBody {
    job_name: Option<String>,
    factfile_path: Option<String>,
    factfile_args: Option<Vec<String>>,
}

async fn submit(State(port): State<Port>, headers: HeaderMap, q: Params, body: Body) -> Response {
    let p = pretty(&q);
    let bad = |why: String| message(StatusCode::BAD_REQUEST, why, p);
    if let Err(s) = port.jobs.admit(&call(&headers, ()), Scope::Submit) {
        return refused(&s, p);
    }
    let bytes = match body_of(body, p).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let asked: SubmitBody = match decode(&bytes, p) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    // Draining is told before anything else is checked, as Factotum Server does; the engine
    // checks again when it takes the run. A caller who may submit but not read skips this.
    let queue = port
        .jobs
        .get_server_status(call(&headers, pb::GetServerStatusRequest {}));
    match queue.await {
        Ok(s) if s.get_ref().draining => {
            return bad("Server in [drain] state - cannot submit job".into())
        }
        Ok(_) => {}
        Err(s) if s.code() == Code::PermissionDenied => {}
        Err(s) => return refused(&s, p),
    }
    let (name, path) = (asked.job_name.unwrap_or_default(), asked.factfile_path);
    let path = path.unwrap_or_default();
    for (field, value) in [("jobName", &name), ("factfilePath", &path)] {
        if value.trim().is_empty() {
            let why =
                format!("Validation Error: No valid value found: field '{field}' cannot be empty");
            return bad(why);
        }
    }
    let factfile = match args::read_factfile(port.server_factfile_root.as_deref(), &path).await {
        Ok(text) => text,
        Err(why) => {
            match why {
                PathRefused::NoRoot | PathRefused::BadRoot(..) => {
                    tracing::warn!(%why, "POST /submit refused")
                }
                _ => tracing::info!(%why, "POST /submit refused"),
            }
            let why = format!(
                "Validation Error: Value does not exist on host for 'factfilePath':'{path}'"
            );
            return bad(why);
        }
    };
    let given = asked.factfile_args.unwrap_or_default();
    let failed = |detail: &str| {
        let line = args::command_line(&path, &given);
        bad(format!(
            "Validation Error: Failed to execute command: [{line}] - {detail}"
        ))
    };
    let flags = match args::parse_flags(&given) {
        Ok(f) => f,
        Err(why) => return failed(&why),
    };
    let job_id = args::job_id(&factfile, &flags);
    let job = pb::ServerJob {
        job_id: job_id.clone(),
        job_name: name,
        factfile_path: path.clone(),
        factfile_args: args::shown_args(&given),
    };
    let request = match args::request(factfile, &path, &flags, job) {
        Ok(r) => r,
        Err(why) => return failed(&format!("Error: {why}")),
    };
    match port.jobs.submit_run(call(&headers, request)).await {
        Ok(r) => {
            let run = r.into_inner().run_id;
            tracing::info!(job_id, %run, "server job submitted");
            message(
                StatusCode::OK,
                format!("SUBMITTING JOB REQ jobId:[{job_id}]"),
                p,
            )
        }
        Err(s) => match s.code() {
            Code::InvalidArgument => failed(s.message()),
            Code::AlreadyExists => bad("Job is already being processed".into()),
            Code::FailedPrecondition => bad("Server in [drain] state - cannot submit job".into()),
            Code::ResourceExhausted => bad("Queue is full, cannot add job".into()),
            _ => refused(&s, p),
        },
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CheckBody {
    state: &'static str,
    job_request: JobRequest,
    last_run_from: String,
    last_outcome: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JobRequest {
    job_id: String,
    job_name: String,
    factfile_path: String,
    factfile_args: Vec<String>,
}

/// Factotum Server's state and outcome of a run, from the run's own state (never stored).
fn states(run: &pb::Run) -> (&'static str, &'static str) {
    match pb::RunState::try_from(run.state) {
        Ok(pb::RunState::Running) => ("WORKING", "RUNNING"),
        Ok(pb::RunState::Succeeded) => ("DONE", "SUCCEEDED"),
        Ok(pb::RunState::Failed | pb::RunState::Cancelled) => ("DONE", "FAILED"),
        _ => ("QUEUED", "WAITING"),
    }
}

/// The agent of the run's first task: the one started first, else the first with an agent.
fn first_agent(run: &pb::Run) -> String {
    let ran = run.tasks.iter().filter(|t| !t.agent.is_empty());
    let started = ran
        .clone()
        .filter_map(|t| t.started.map(|s| ((s.seconds, s.nanos), t)));
    match started.min_by_key(|(at, _)| *at) {
        Some((_, t)) => t.agent.clone(),
        None => ran.map(|t| t.agent.clone()).next().unwrap_or_default(),
    }
}

async fn check(State(port): State<Port>, headers: HeaderMap, q: Params) -> Response {
    let p = pretty(&q);
    let Some(id) = q
        .get("id")
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
    else {
        let why = "Error: No 'id' found in URL query parameters";
        return message(StatusCode::BAD_REQUEST, why, p);
    };
    let asked = pb::GetServerJobRequest { id: id.clone() };
    let found = match port.jobs.get_server_job(call(&headers, asked)).await {
        Ok(f) => f.into_inner(),
        Err(s) if matches!(s.code(), Code::NotFound | Code::InvalidArgument) => {
            let why = format!("Error: No job entry found for id='{id}'");
            return message(StatusCode::BAD_REQUEST, why, p);
        }
        Err(s) => return refused(&s, p),
    };
    let (job, run) = (found.job.unwrap_or_default(), found.run.unwrap_or_default());
    let (state, outcome) = states(&run);
    let body = CheckBody {
        state,
        job_request: JobRequest {
            job_id: job.job_id,
            // A run not submitted through /submit: its own job name.
            job_name: if job.job_name.is_empty() {
                run.job_name.clone()
            } else {
                job.job_name
            },
            factfile_path: job.factfile_path,
            factfile_args: job.factfile_args,
        },
        last_run_from: first_agent(&run),
        last_outcome: outcome,
    };
    json(StatusCode::OK, &body, p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_time_is_days_hours_minutes_seconds() {
        assert_eq!(up_time(3723), "0 Days, 1 Hours, 2 Minutes, 3 Seconds");
        assert_eq!(
            up_time(2 * 86_400 + 59),
            "2 Days, 0 Hours, 0 Minutes, 59 Seconds"
        );
    }

    #[test]
    fn unlimited_agents_count_their_running_tasks() {
        let agent = |slots, in_use, connected| pb::Agent {
            slots,
            in_use,
            connected,
            ..Default::default()
        };
        let w = workers(&[agent(4, 1, true), agent(0, 3, true), agent(8, 8, false)]);
        assert_eq!((w.total, w.active, w.idle), (7, 4, 3));
    }
}
