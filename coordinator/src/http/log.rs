//! A task's log (`GET /api/runs/{run}/tasks/{task}/log?attempt=&follow=1`) as text: the full
//! log its agent keeps (`GetTaskLog`: stdout and stderr as their chunks come, followed until the
//! attempt ends), or — when no agent can serve it (the agent is gone, keeps no logs, or the task
//! has not started) — what the coordinator holds: an ended attempt's output tail, or an active
//! task's lines from `WatchRun` (the recent ones its watch history keeps, then the new ones until
//! the task ends). `X-Factotum-Log` says which (`full` or `tail`), `X-Factotum-Attempt` whose.

use axum::body::Bytes;
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use factotum_proto::jobs as pb;
use factotum_proto::jobs::jobs_server::Jobs;
use pb::run_event::Event;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic_types::StatusExt;

use super::sse::{body, send, Chunks};
use super::web::{self, Caller};
use super::Port;

/// How long the first chunk of a full log may take before the answer starts without it.
const FIRST_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// What a log request asks for.
pub struct Ask {
    pub run: String,
    pub task: String,
    pub attempt: Option<u32>,
    pub follow: bool,
    /// Only the last this many bytes of each stream of a full log (then on, with `follow`).
    pub tail: Option<u64>,
}

pub async fn log(port: Port, stop: CancellationToken, caller: Caller, ask: Ask) -> Response {
    let req = pb::GetTaskLogRequest {
        run_id: ask.run.clone(),
        task: ask.task.clone(),
        attempt: ask.attempt.unwrap_or(0),
        follow: ask.follow,
        stdout_offset: ask.tail.map_or(0, |n| -(n.min(i64::MAX as u64) as i64)),
        stderr_offset: ask.tail.map_or(0, |n| -(n.min(i64::MAX as u64) as i64)),
        ..Default::default()
    };
    let mut chunks = match port.jobs.get_task_log(caller.call(req)).await {
        Ok(chunks) => chunks.into_inner(),
        Err(status) => return fallback(port, stop, caller, ask, status).await,
    };
    // The first chunk names the attempt; a refusal comes next, at once. A task that writes
    // nothing for a while must not hold the answer back.
    let deadline = tokio::time::Instant::now() + FIRST_WAIT;
    let mut attempt = ask.attempt;
    let first = loop {
        match tokio::time::timeout_at(deadline, chunks.next()).await {
            Ok(Some(Err(status))) => return fallback(port, stop, caller, ask, status).await,
            Ok(None) => return answer(mpsc::channel(1).1, "full", attempt),
            Ok(Some(Ok(chunk))) if chunk.data.is_empty() => attempt = Some(chunk.attempt),
            Ok(Some(Ok(chunk))) => break Some(chunk),
            Err(_) => break None,
        }
    };
    let (tx, rx) = mpsc::channel(8);
    let attempt = first.as_ref().map(|c| c.attempt).or(attempt);
    tokio::spawn(async move {
        let mut next = match first {
            Some(chunk) => Some(Ok(chunk)),
            None => chunks.next().await,
        };
        while let Some(Ok(chunk)) = next {
            if tx.send(Ok(Bytes::from(chunk.data))).await.is_err() {
                return;
            }
            next = tokio::select! {
                c = chunks.next() => c,
                _ = tx.closed() => return,
                _ = stop.cancelled() => return,
            };
        }
    });
    answer(rx, "full", attempt)
}

fn answer(
    rx: mpsc::Receiver<Result<Bytes, std::convert::Infallible>>,
    kind: &'static str,
    attempt: Option<u32>,
) -> Response {
    let mut response = web::text_stream(body(rx));
    let h = response.headers_mut();
    if let Some(v) = attempt.and_then(|a| HeaderValue::from_str(&a.to_string()).ok()) {
        h.insert("x-factotum-attempt", v);
    }
    h.insert("x-factotum-log", HeaderValue::from_static(kind));
    response
}

/// When no agent serves the full log: what the coordinator holds, if it is of the attempt asked
/// for; else the full log's refusal.
async fn fallback(
    port: Port,
    stop: CancellationToken,
    caller: Caller,
    ask: Ask,
    why: tonic::Status,
) -> Response {
    let reason = why
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone());
    let unserved = matches!(reason.as_deref(), Some("LOG_NOT_FOUND" | "AGENT_GONE"))
        || why.code() == tonic::Code::Unimplemented;
    if !unserved {
        return web::refused(&why);
    }
    let mut req = caller.call(pb::GetRunRequest {
        run_id: ask.run.clone(),
    });
    if let Ok(v) = web::encode(&ask.task).parse() {
        req.metadata_mut().insert(crate::api::jobs::OUTPUT_OF, v);
    }
    let got = match port.jobs.get_run(req).await {
        Ok(r) => r.into_inner(),
        Err(status) => return web::refused(&status),
    };
    let Some(t) = got.tasks.iter().find(|t| t.name == ask.task) else {
        let why = format!("run {} has no task '{}'", got.run_id, ask.task);
        return web::error(StatusCode::NOT_FOUND, "TASK_NOT_FOUND", why);
    };
    if ask.attempt.is_some_and(|a| a != t.attempt) {
        return web::refused(&why);
    }
    let (tx, rx) = mpsc::channel(64);
    if ask.follow && active(t.state) {
        let req = pb::WatchRunRequest {
            run_id: got.run_id.clone(),
            resume: false,
        };
        let watch = match port.jobs.watch_run(caller.call(req)).await {
            Ok(s) => s.into_inner(),
            Err(status) => return web::refused(&status),
        };
        tokio::spawn(follow_lines(watch, ask.task, tx, stop));
    } else {
        let mut head = String::new();
        for tail in [&t.stdout, &t.stderr] {
            if !tail.is_empty() {
                head.push_str(tail);
                if !tail.ends_with('\n') {
                    head.push('\n');
                }
            }
        }
        let _ = tx.try_send(Ok(Bytes::from(head)));
    }
    let mut response = answer(rx, "tail", Some(t.attempt).filter(|&a| a > 0));
    // Why the full log is not there, for the page to say (a header holds no line breaks).
    let note: String = (why.message().chars())
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    if let Ok(v) = HeaderValue::from_str(&web::encode(&note)) {
        response.headers_mut().insert("x-factotum-log-note", v);
    }
    response
}

fn active(state: i32) -> bool {
    matches!(
        pb::TaskState::try_from(state),
        Ok(pb::TaskState::Waiting | pb::TaskState::Running)
    )
}

/// `task`'s output lines from `watch` (its history, then what comes) until the task ends.
/// A piece of a line over the agent's line limit shows as a line of its own.
async fn follow_lines(
    mut watch: impl tokio_stream::Stream<Item = Result<pb::RunEvent, tonic::Status>> + Unpin,
    task: String,
    tx: Chunks,
    stop: CancellationToken,
) {
    loop {
        let ev = tokio::select! {
            ev = watch.next() => ev,
            _ = tx.closed() => return,
            _ = stop.cancelled() => return,
        };
        let Some(Ok(pb::RunEvent { event: Some(ev) })) = ev else {
            return;
        };
        let text = match ev {
            Event::Output(o) if o.task == task => o.line + "\n",
            Event::Lagged(l) => format!("[{} output lines of this run were not kept]\n", l.skipped),
            Event::Tasks(c)
                if c.changes
                    .iter()
                    .any(|c| c.name == task && !active(c.current)) =>
            {
                return
            }
            Event::End(_) => return,
            _ => continue,
        };
        if !send(&tx, text).await {
            return;
        }
    }
}
