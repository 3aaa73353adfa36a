//! `factotum logs RUN TASK`: an attempt's full output, read from the agent that ran it through
//! the coordinator (`GetTaskLog`), written as it comes — the task's stdout to ours, its stderr
//! to our stderr, raw bytes. Two streams to two streams, rather than interleaved: the bytes of
//! each are exactly the task's (`> out 2> err` gets both back), which an interleaving cannot
//! promise, and the agent keeps them apart anyway. A coordinator that changes mid-stream
//! (a failover) is asked again from where each stream had got to.

use std::cell::Cell;
use std::io::Write;
use std::rc::Rc;

use factotum_proto::jobs as pb;

use crate::cli::{LogStreams, LogsArgs};
use crate::connect::{reason_of, refused, with_client};
use crate::exit;
use crate::load::Failure;

pub fn logs(args: LogsArgs) -> u8 {
    let start = match args.tail {
        Some(n) => -(i64::try_from(n).unwrap_or(i64::MAX)),
        None => 0,
    };
    // Where each stream has got to, across a retry at another coordinator.
    let at = Rc::new(Cell::new((start, start)));
    let stream = match args.stream {
        LogStreams::Both => pb::Stream::Unspecified,
        LogStreams::Stdout => pb::Stream::Stdout,
        LogStreams::Stderr => pb::Stream::Stderr,
    };
    with_client(&args.remote, |mut client| {
        let at = Rc::clone(&at);
        let req = pb::GetTaskLogRequest {
            run_id: args.run.clone(),
            task: args.task.clone(),
            attempt: args.attempt,
            follow: args.follow,
            stream: stream as i32,
            stdout_offset: at.get().0,
            stderr_offset: at.get().1,
        };
        async move {
            let mut chunks = client
                .get_task_log(req)
                .await
                .map_err(failure)?
                .into_inner();
            while let Some(c) = chunks.message().await.map_err(failure)? {
                if c.data.is_empty() {
                    continue;
                }
                // Raw offsets: redacted data may be shorter or longer than what it stands for.
                let raw_end = match c.end_offset {
                    0 => c.offset + c.data.len() as u64,
                    end => end,
                };
                let end = i64::try_from(raw_end).unwrap_or(i64::MAX);
                let (out, err) = at.get();
                let written = if c.stream == pb::Stream::Stderr as i32 {
                    at.set((out, end));
                    std::io::stderr().lock().write_all(&c.data)
                } else {
                    at.set((end, err));
                    let mut o = std::io::stdout().lock();
                    o.write_all(&c.data).and_then(|()| o.flush())
                };
                if written.is_err() {
                    return Ok(exit::OK); // our reader is gone (`| head`): nothing more to do
                }
            }
            Ok(exit::OK)
        }
    })
}

/// A refusal in plain words: a missing log says why (LOG_NOT_FOUND, AGENT_GONE).
fn failure(s: tonic::Status) -> Failure {
    match reason_of(&s).as_deref() {
        Some("LOG_NOT_FOUND" | "AGENT_GONE") => Failure {
            code: exit::COORDINATOR,
            message: format!("Error: {}", s.message()),
            unavailable: None,
        },
        _ => refused(s),
    }
}
