//! A run's server-sent events (`GET /api/runs/{run}/events`): a task pumping a `WatchRun`
//! stream into the response body; it stops when the client goes away, when the watch ends, or
//! when the coordinator shuts down.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use factotum_proto::jobs as pb;
use factotum_proto::jobs::jobs_server::Jobs;
use pb::run_event::Event;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use super::web::{self, Caller};
use super::Port;

/// How often an idle event stream sends a comment (proxies close silent connections).
const KEEPALIVE: Duration = Duration::from_secs(15);

pub(super) type Chunks = mpsc::Sender<Result<Bytes, Infallible>>;

pub(super) fn body(rx: mpsc::Receiver<Result<Bytes, Infallible>>) -> Body {
    Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// One event: its name, its data (JSON), and whether the stream ends after it.
fn event(ev: pb::RunEvent) -> Option<(&'static str, Value, bool)> {
    let tasks = |ts: &[pb::Task]| ts.iter().map(web::task_json).collect::<Vec<_>>();
    let state = |s: i32| {
        pb::RunState::try_from(s)
            .map(|s| s.as_str_name().trim_start_matches("RUN_STATE_"))
            .unwrap_or("UNSPECIFIED")
    };
    Some(match ev.event? {
        Event::Tasks(t) => {
            let changes: Vec<Value> = (t.changes.iter())
                .map(|c| {
                    json!({
                        "name": c.name, "previous": web::task_state(c.previous),
                        "state": web::task_state(c.current), "started": web::time(&c.started),
                        "duration": web::secs(&c.duration), "return_code": c.return_code,
                        "error_message": c.error_message,
                    })
                })
                .collect();
            ("tasks", json!({ "changes": changes }), false)
        }
        Event::Output(o) => {
            let stream = if o.stream == pb::Stream::Stderr as i32 {
                "stderr"
            } else {
                "stdout"
            };
            let data =
                json!({"task": o.task, "stream": stream, "line": o.line, "continued": o.continued});
            ("output", data, false)
        }
        Event::Job(j) => {
            let data = json!({"previous": state(j.previous), "state": state(j.current)});
            ("job", data, false)
        }
        Event::Lagged(l) => ("lagged", json!({ "skipped": l.skipped }), false),
        Event::Gap(_) => ("gap", json!({}), false),
        Event::Snapshot(s) => {
            let data = json!({"state": state(s.state), "tasks": tasks(&s.tasks)});
            ("snapshot", data, false)
        }
        Event::End(e) => {
            let data = json!({
                "state": state(e.state), "duration": web::secs(&e.duration),
                "tasks": tasks(&e.tasks), "first_failed": e.first_failed,
                "first_no_op": e.first_no_op,
            });
            ("end", data, true)
        }
    })
}

/// `GET /api/runs/{run}/events`: the run's `WatchRun` as server-sent events, numbered from
/// `last + 1`; with `last` (a `Last-Event-ID`), a resumed watch (a gap, then a snapshot).
pub async fn events(
    port: Port,
    shutdown: CancellationToken,
    caller: Caller,
    run: String,
    last: Option<u64>,
) -> Response {
    let req = pb::WatchRunRequest {
        run_id: run,
        resume: last.is_some(),
    };
    let mut stream = match port.jobs.watch_run(caller.call(req)).await {
        Ok(s) => s.into_inner(),
        Err(status) => return web::refused(&status),
    };
    let (tx, rx) = mpsc::channel(32);
    tokio::spawn(async move {
        let mut seq = last.unwrap_or(0);
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.tick().await;
        if !send(&tx, "retry: 2000\n\n".into()).await {
            return;
        }
        loop {
            let text = tokio::select! {
                ev = stream.next() => match ev {
                    None => return,
                    Some(Ok(ev)) => {
                        let Some((name, data, end)) = event(ev) else { continue };
                        seq += 1;
                        let sent = send(&tx, format!("id: {seq}\nevent: {name}\ndata: {data}\n\n")).await;
                        if end || !sent {
                            return;
                        }
                        continue;
                    }
                    Some(Err(status)) => {
                        seq += 1;
                        let reason = (tonic_types::StatusExt::get_error_details(&status).error_info())
                            .map(|i| i.reason.clone())
                            .unwrap_or_default();
                        let data = json!({"error": status.message(), "reason": reason});
                        let _ = send(&tx, format!("id: {seq}\nevent: failed\ndata: {data}\n\n")).await;
                        return;
                    }
                },
                _ = keepalive.tick() => ": keepalive\n\n".to_string(),
                _ = tx.closed() => return,
                _ = shutdown.cancelled() => return,
            };
            if !send(&tx, text).await {
                return;
            }
        }
    });
    let mut response = (StatusCode::OK, body(rx)).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

pub(super) async fn send(tx: &Chunks, text: String) -> bool {
    tx.send(Ok(Bytes::from(text))).await.is_ok()
}
