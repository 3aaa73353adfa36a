//! `GetTaskLog` on the leader: an attempt's full log read from its agent (see
//! [`crate::engine::logs`]) and streamed to the caller, chunk by chunk. The first message
//! names the attempt and its agent; a log that cannot be read ends the stream with NOT_FOUND
//! (LOG_NOT_FOUND) or FAILED_PRECONDITION (AGENT_GONE) and a message saying why.

use std::collections::HashMap;
use std::pin::Pin;

use factotum_common::redact::{ByteRedactor, Piece, Redactor};

use factotum_proto::jobs as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Code, Status};

use super::errors::{Reason, Refusal};
use crate::engine::logs::LogError;
use crate::engine::Engine;

pub type LogStream = Pin<Box<dyn Stream<Item = Result<pb::TaskLogChunk, Status>> + Send>>;

/// The log `r` asks for, as a stream; the caller's going away stops the agent's reading.
pub async fn serve(engine: &Engine, r: pb::GetTaskLogRequest) -> Result<LogStream, Status> {
    if r.task.is_empty() {
        let why = "name the task whose log to read";
        return Err(Refusal::bad(Reason::InvalidArgument, "task", why).status());
    }
    // The log is raw on the agent; what leaves the coordinator is redacted like the task's
    // streamed output (the run's `--env` secrets and the task's own `env` values).
    let secrets = engine
        .task_secrets(&r.run_id, &r.task)
        .await
        .map_err(Status::from)?;
    let offsets = (r.stdout_offset, r.stderr_offset);
    let (at, mut reader) = engine
        .task_log(&r.run_id, &r.task, r.attempt, r.stream, offsets, r.follow)
        .await
        .map_err(status)?;
    // Two chunks queued here at most: the caller's pace is what the agent is granted.
    let (tx, rx) = mpsc::channel(2);
    let first = pb::TaskLogChunk {
        attempt: at.attempt,
        agent: at.agent.clone(),
        ..pb::TaskLogChunk::default()
    };
    let redactor = Redactor::new(&secrets);
    let mut streams: HashMap<i32, ByteRedactor> = HashMap::new();
    let chunk = move |stream: i32, p: Piece| pb::TaskLogChunk {
        stream,
        offset: p.start,
        data: p.data,
        attempt: at.attempt,
        agent: String::new(),
        end_offset: p.end,
    };
    tokio::spawn(async move {
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        while let Some(c) = reader.next().await {
            let pieces = match c {
                Ok(c) => {
                    let r =
                        (streams.entry(c.stream)).or_insert_with(|| ByteRedactor::new(&redactor));
                    let pieces = r.push(c.offset, &c.data);
                    pieces.into_iter().map(|p| Ok(chunk(c.stream, p))).collect()
                }
                Err(e) => vec![Err(status(e))],
            };
            for item in pieces {
                if tx.send(item).await.is_err() {
                    return; // the caller is gone: dropping the reader cancels the agent's side
                }
            }
        }
        // The end: what each stream still held back.
        for (stream, mut r) in streams {
            if let Some(p) = r.finish() {
                if tx.send(Ok(chunk(stream, p))).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// What a log that cannot be read says.
pub fn status(e: LogError) -> Status {
    match e {
        LogError::NotFound(why) => Refusal::new(Code::NotFound, Reason::LogNotFound, why).status(),
        LogError::AgentGone(why) => {
            Refusal::new(Code::FailedPrecondition, Reason::AgentGone, why).status()
        }
        LogError::Unavailable(why) => Status::unavailable(why),
        LogError::Engine(e) => e.into(),
    }
}
