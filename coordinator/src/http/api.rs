//! The web UI's JSON API (`/api/...`) over the client API ([`crate::api::JobsApi`], called
//! in-process): its authentication, scopes, limits and forwarding to the leader come with it.
//!
//! - `GET /api/runs?job=&state=&since=&page_size=&page_token=`: a page of runs, newest first.
//! - `GET /api/runs/{run}`: one run with its tasks (dependencies included).
//! - `GET /api/runs/{run}/events`: server-sent events from `WatchRun` (`id:` numbers them;
//!   `Last-Event-ID` resumes with a snapshot).
//! - `GET /api/runs/{run}/tasks/{task}/log?attempt=&follow=1&tail=`: the task's log as text (the
//!   full log its agent keeps, else the coordinator's tail; [`super::log`]); with `follow=1`,
//!   then what it writes until the attempt ends; `tail=N`: from the last N bytes of each stream.
//! - `POST /api/runs/{run}/cancel`, `POST /api/runs/{run}/rerun?from_failed=1`.
//! - `GET /api/agents`: the agents, the tasks each runs, and why waiting runs wait.
//!
//! Path segments are percent-decoded one by one (`%2F` in a task name is not a separator).
//! Refusals are `{"error": message, "reason": REASON}` with the gRPC code's HTTP status.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use factotum_proto::jobs as pb;
use factotum_proto::jobs::jobs_server::Jobs;
use serde_json::{json, Value};

use super::web::{
    context, csrf_refusal, decode, error, exposed, json_response, query, refused, run_json, time,
    Caller, Ctx,
};
use super::{log, sse, Port};

/// Active runs the agents page looks into for running tasks and waiting reasons.
const AGENTS_PAGE_RUNS: u32 = 200;

/// Request bodies are small JSON objects.
const MAX_BODY: usize = 16 * 1024;

pub fn routes() -> Router<Port> {
    Router::new()
        .route("/api/runs", get(list_runs))
        .route("/api/runs/{*rest}", get(run_get).post(run_post))
        .route("/api/agents", get(agents))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
}
/// `since`: an RFC 3339 time, or an age (`30m`, `24h`, `7d`) back from now.
fn since(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&chrono::Utc));
    }
    let unit = match s.chars().last()? {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86400,
        _ => return None,
    };
    let n: i64 = s[..s.len() - 1].parse().ok().filter(|n| *n >= 0)?;
    let back = chrono::Duration::try_seconds(n.checked_mul(unit)?)?;
    chrono::Utc::now().checked_sub_signed(back)
}

async fn list_runs(
    axum::extract::State(port): axum::extract::State<Port>,
    ctx: Ctx,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    if let Some(refusal) = exposed(&port, &context(ctx)) {
        return refusal;
    }
    let q = query(&uri);
    let mut req = pb::ListRunsRequest {
        job_name: q.get("job").cloned().unwrap_or_default(),
        page_token: q.get("page_token").cloned().unwrap_or_default(),
        ..Default::default()
    };
    if let Some(n) = q.get("page_size").filter(|n| !n.is_empty()) {
        match n.parse() {
            Ok(n) => req.page_size = n,
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_ARGUMENT",
                    "page_size is not a number",
                )
            }
        }
    }
    let states = q.get("state").map(|s| s.split(',')).into_iter().flatten();
    for s in states.map(str::trim).filter(|s| !s.is_empty()) {
        match pb::RunState::from_str_name(&format!("RUN_STATE_{}", s.to_uppercase())) {
            Some(st) if st != pb::RunState::Unspecified => req.states.push(st as i32),
            _ => {
                let why = format!(
                    "'{s}' is not a run state (WAITING, RUNNING, SUCCEEDED, FAILED, CANCELLED)"
                );
                return error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", why);
            }
        }
    }
    if let Some(s) = q.get("since").filter(|s| !s.is_empty()) {
        let Some(t) = since(s) else {
            let why = "since is an RFC 3339 time or an age such as 30m, 24h, 7d";
            return error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", why);
        };
        req.started_after = Some(crate::wire::jobs::timestamp(t));
    }
    match port.jobs.list_runs(Caller::of(&headers).call(req)).await {
        Ok(page) => {
            let page = page.into_inner();
            let runs: Vec<Value> = page.runs.iter().map(run_json).collect();
            json_response(
                StatusCode::OK,
                json!({"runs": runs, "next_page_token": page.next_page_token}),
            )
        }
        Err(status) => refused(&status),
    }
}

/// `{run}/...` of a path under `/api/runs/`, each segment percent-decoded.
fn segments(uri: &Uri) -> Vec<String> {
    let rest = uri.path().strip_prefix("/api/runs/").unwrap_or("");
    rest.split('/').map(decode).collect()
}

async fn run_get(
    axum::extract::State(port): axum::extract::State<Port>,
    ctx: Ctx,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let caller = Caller::of(&headers);
    let ctx = context(ctx);
    if let Some(refusal) = exposed(&port, &ctx) {
        return refusal;
    }
    let shutdown = ctx.stop;
    match &segments(&uri)[..] {
        [run] if !run.is_empty() => {
            let req = caller.call(pb::GetRunRequest {
                run_id: run.clone(),
            });
            match port.jobs.get_run(req).await {
                Ok(r) => json_response(StatusCode::OK, run_json(r.get_ref())),
                Err(status) => refused(&status),
            }
        }
        [run, events] if events == "events" => {
            let last = headers.get("last-event-id").and_then(|v| v.to_str().ok());
            let last = last.and_then(|v| v.trim().parse::<u64>().ok());
            sse::events(port, shutdown, caller, run.clone(), last).await
        }
        [run, tasks, task, log] if tasks == "tasks" && log == "log" => {
            let q = query(&uri);
            let attempt = match q.get("attempt").filter(|a| !a.is_empty()) {
                None => None,
                Some(a) => match a.parse::<u32>() {
                    Ok(a) => Some(a),
                    Err(_) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "INVALID_ARGUMENT",
                            "attempt is not a number",
                        )
                    }
                },
            };
            let follow = q.get("follow").is_some_and(|f| f == "1" || f == "true");
            let tail = match q.get("tail").filter(|t| !t.is_empty()) {
                None => None,
                Some(t) => match t.parse::<u64>() {
                    Ok(t) => Some(t),
                    Err(_) => {
                        let why = "tail is a number of bytes";
                        return error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", why);
                    }
                },
            };
            let ask = log::Ask {
                run: run.clone(),
                task: task.clone(),
                attempt,
                follow,
                tail,
            };
            log::log(port, shutdown, caller, ask).await
        }
        _ => not_found(),
    }
}

fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "no such API path (see the coordinator's docs)",
    )
}

async fn run_post(
    axum::extract::State(port): axum::extract::State<Port>,
    ctx: Ctx,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let caller = Caller::of(&headers);
    if let Some(refusal) = exposed(&port, &context(ctx)) {
        return refusal;
    }
    if let Some(refusal) = csrf_refusal(&headers, &caller) {
        return refusal;
    }
    let segs = segments(&uri);
    let [run, verb] = &segs[..] else {
        return not_found();
    };
    match verb.as_str() {
        "cancel" => {
            // An optional JSON body: {"reason": "..."} (the router bounds bodies).
            let reason = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("reason")?.as_str().map(str::to_string))
                .unwrap_or_else(|| "from the web UI".into());
            let req = pb::CancelRunRequest {
                run_id: run.clone(),
                reason,
            };
            match port.jobs.cancel_run(caller.call(req)).await {
                Ok(_) => json_response(StatusCode::OK, json!({"cancelled": run})),
                Err(status) => refused(&status),
            }
        }
        "rerun" => {
            let q = query(&uri);
            let from_failed = q
                .get("from_failed")
                .is_some_and(|f| f == "1" || f == "true");
            let req = pb::RerunRunRequest {
                run_id: run.clone(),
                from_failed,
            };
            match port.jobs.rerun_run(caller.call(req)).await {
                Ok(r) => json_response(StatusCode::OK, json!({"run_id": r.get_ref().run_id})),
                Err(status) => refused(&status),
            }
        }
        _ => not_found(),
    }
}

/// The agents, each with the tasks it runs (from the active runs), and the waiting runs with
/// why they wait.
async fn agents(
    axum::extract::State(port): axum::extract::State<Port>,
    ctx: Ctx,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = exposed(&port, &context(ctx)) {
        return refusal;
    }
    let caller = Caller::of(&headers);
    let agents = match port
        .jobs
        .list_agents(caller.call(pb::ListAgentsRequest {}))
        .await
    {
        Ok(a) => a.into_inner().agents,
        Err(status) => return refused(&status),
    };
    let active = pb::ListRunsRequest {
        page_size: AGENTS_PAGE_RUNS,
        states: vec![pb::RunState::Waiting as i32, pb::RunState::Running as i32],
        ..Default::default()
    };
    let runs = match port.jobs.list_runs(caller.call(active)).await {
        Ok(r) => r.into_inner().runs,
        Err(status) => return refused(&status),
    };
    let mut running: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut waiting = vec![];
    for brief in runs {
        let req = caller.call(pb::GetRunRequest {
            run_id: brief.run_id.clone(),
        });
        let Ok(run) = port.jobs.get_run(req).await else {
            continue;
        };
        let run = run.into_inner();
        for t in &run.tasks {
            if t.state == pb::TaskState::Running as i32 && !t.agent.is_empty() {
                running.entry(t.agent.clone()).or_default().push(json!({
                    "run_id": run.run_id, "job_name": run.job_name, "task": t.name,
                    "attempt": t.attempt, "started": time(&t.started),
                }));
            }
        }
        if !run.waiting_reason.is_empty() {
            let ready = (run.tasks.iter())
                .filter(|t| t.state == pb::TaskState::Waiting as i32)
                .count();
            waiting.push(json!({
                "run_id": run.run_id, "job_name": run.job_name,
                "reason": run.waiting_reason, "waiting_tasks": ready,
            }));
        }
    }
    let agents: Vec<Value> = (agents.iter())
        .map(|a| {
            json!({
                "agent_id": a.agent_id, "hostname": a.hostname, "ips": a.ips,
                "labels": a.labels, "slots": a.slots, "in_use": a.in_use,
                "last_heard": time(&a.last_heard), "version": a.version,
                "connected": a.connected,
                "running": running.remove(&a.agent_id).unwrap_or_default(),
            })
        })
        .collect();
    json_response(
        StatusCode::OK,
        json!({"agents": agents, "waiting": waiting}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_decoded_one_by_one() {
        let uri: Uri = "/api/runs/abc/tasks/a%2Fb%20c/log?follow=1"
            .parse()
            .unwrap();
        assert_eq!(segments(&uri), ["abc", "tasks", "a/b c", "log"]);
        assert_eq!(query(&uri).get("follow").map(String::as_str), Some("1"));
    }

    #[test]
    fn since_takes_times_and_ages() {
        assert!(since("2026-01-01T00:00:00Z").is_some());
        assert!(since("24h").is_some());
        assert!(since("-1h").is_none());
        assert!(since("99999999999999999d").is_none());
        assert!(since("é").is_none());
    }
}
