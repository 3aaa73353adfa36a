//! Serving a coordinator's `LogRequest` on the session: the attempt's log files read in chunks
//! of at most [`CHUNK`] bytes, each sent only once the coordinator's credit allows it (so a
//! 1 GB log is never in memory here or there), and with `follow` read on until the attempt has
//! ended and everything it wrote was sent.

use std::collections::HashMap;
use std::io::SeekFrom;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use factotum_proto::{
    agent_message, AgentMessage, LogCancel, LogChunk, LogCredit, LogProblem, LogRequest, Stream,
};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{removal, LogBook, LogPaths};

/// The most data one `LogChunk` carries.
pub const CHUNK: usize = 64 << 10;
/// What a chunk counts against the credit, at least (the coordinator queues chunks, not
/// bytes: many tiny ones must not flood it); the coordinator grants back the same.
const MIN_COST: usize = 4 << 10;
/// How often a followed log is looked at for more.
const POLL: Duration = Duration::from_millis(100);

/// The log requests of one session: each served by a task of its own, all stopped when the
/// session ends (dropping this).
#[derive(Debug)]
pub struct Serving {
    logs: Option<LogBook>,
    open: HashMap<u64, (Arc<Semaphore>, CancellationToken)>,
    done_tx: mpsc::UnboundedSender<u64>,
    done_rx: mpsc::UnboundedReceiver<u64>,
    session: CancellationToken,
}

impl Serving {
    pub fn new(logs: Option<LogBook>) -> Serving {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Serving {
            logs,
            open: HashMap::new(),
            done_tx,
            done_rx,
            session: CancellationToken::new(),
        }
    }

    /// Starts serving `req`; chunks go to `tx`.
    pub fn request(&mut self, req: LogRequest, tx: mpsc::Sender<AgentMessage>) {
        self.reap();
        let credit = Arc::new(Semaphore::new(req.credit as usize));
        let cancel = self.session.child_token();
        let id = req.request_id;
        if let Some((_, old)) = self.open.insert(id, (Arc::clone(&credit), cancel.clone())) {
            old.cancel();
        }
        let logs = self.logs.clone();
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = serve(logs, req, &tx, credit) => {}
                () = cancel.cancelled() => {}
            }
            let _ = done.send(id);
        });
    }

    pub fn credit(&mut self, c: LogCredit) {
        if let Some((credit, _)) = self.open.get(&c.request_id) {
            credit.add_permits((c.bytes as usize).min(Semaphore::MAX_PERMITS / 2));
        }
    }

    pub fn cancel(&mut self, c: LogCancel) {
        if let Some((_, token)) = self.open.remove(&c.request_id) {
            token.cancel();
        }
    }

    /// Forgets the requests whose task has ended.
    fn reap(&mut self) {
        while let Ok(id) = self.done_rx.try_recv() {
            self.open.remove(&id);
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.session.cancel();
    }
}

/// One stream being sent.
struct Reading {
    stream: Stream,
    path: std::path::PathBuf,
    /// Where it starts: an offset, or negative from the end (resolved once the file is open).
    start: i64,
    file: Option<(tokio::fs::File, u64)>,
}

async fn serve(
    logs: Option<LogBook>,
    req: LogRequest,
    tx: &mpsc::Sender<AgentMessage>,
    credit: Arc<Semaphore>,
) {
    let id = req.request_id;
    let end = |problem: LogProblem, message: String| LogChunk {
        request_id: id,
        end: true,
        problem: problem as i32,
        message,
        ..LogChunk::default()
    };
    let Some(logs) = logs else {
        let why = "this agent keeps no full task logs (--log-dir off)".to_string();
        let _ = send(tx, end(LogProblem::Disabled, why)).await;
        return;
    };
    let r = req.lease.clone().unwrap_or_default();
    let Some(paths) = logs.paths(&r.run_id, r.task, r.attempt) else {
        let _ = send(
            tx,
            end(LogProblem::NotFound, "no log for this run id".into()),
        )
        .await;
        return;
    };
    if let Some(problem) = missing(&logs, &paths) {
        let _ = send(tx, problem.with_id(id)).await;
        return;
    }
    let wanted = Stream::try_from(req.stream).unwrap_or(Stream::Unspecified);
    let mut reading: Vec<Reading> = [
        (Stream::Stdout, paths.stdout(), req.stdout_offset),
        (Stream::Stderr, paths.stderr(), req.stderr_offset),
    ]
    .into_iter()
    .filter(|(s, _, _)| wanted == Stream::Unspecified || wanted == *s)
    .map(|(stream, path, start)| Reading {
        stream,
        path,
        start,
        file: None,
    })
    .collect();
    // A window smaller than a chunk would never let a whole chunk through.
    let chunk = CHUNK.min((req.credit as usize).max(1));
    let mut buf = vec![0u8; chunk];
    loop {
        // Whether it was live before this pass: a pass that finds nothing new after the end
        // has read everything.
        let live = req.follow && logs.is_live(&paths);
        let mut progressed = false;
        for rd in reading.iter_mut() {
            if rd.file.is_none() {
                rd.file = open_at(&rd.path, rd.start).await;
            }
            let Some((file, offset)) = rd.file.as_mut() else {
                continue;
            };
            let n = match file.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    let why = format!("reading the log failed: {e}");
                    let _ = send(tx, end(LogProblem::Unreadable, why)).await;
                    return;
                }
            };
            if n == 0 {
                continue;
            }
            // Waits for the coordinator's credit: the window bounds what is in flight.
            let cost = n.max(MIN_COST).min((req.credit as usize).max(1));
            let Ok(permit) = credit.acquire_many(cost as u32).await else {
                return;
            };
            permit.forget();
            let c = LogChunk {
                request_id: id,
                stream: rd.stream as i32,
                offset: *offset,
                data: buf[..n].to_vec(),
                ..LogChunk::default()
            };
            *offset += n as u64;
            progressed = true;
            if send(tx, c).await.is_err() {
                return;
            }
        }
        if progressed {
            continue;
        }
        if !live {
            let _ = send(tx, end(LogProblem::Unspecified, String::new())).await;
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Why the attempt's log cannot be read at all, if it cannot.
fn missing(logs: &LogBook, paths: &LogPaths) -> Option<Ended> {
    if paths.stdout().exists() || paths.stderr().exists() || logs.is_live(paths) {
        return None;
    }
    Some(match removal(paths, SystemTime::now()) {
        Some(why) => Ended(LogProblem::Removed, why),
        None => Ended(
            LogProblem::NotFound,
            "the agent has no log of this attempt".into(),
        ),
    })
}

struct Ended(LogProblem, String);

impl Ended {
    fn with_id(self, request_id: u64) -> LogChunk {
        LogChunk {
            request_id,
            end: true,
            problem: self.0 as i32,
            message: self.1,
            ..LogChunk::default()
        }
    }
}

/// The file opened at `start` (negative: that far from its end), and that offset.
async fn open_at(path: &std::path::Path, start: i64) -> Option<(tokio::fs::File, u64)> {
    let mut f = tokio::fs::File::open(path).await.ok()?;
    let len = f.metadata().await.ok()?.len();
    let at = if start < 0 {
        len.saturating_sub(start.unsigned_abs())
    } else {
        (start as u64).min(len)
    };
    f.seek(SeekFrom::Start(at)).await.ok()?;
    Some((f, at))
}

async fn send(tx: &mpsc::Sender<AgentMessage>, c: LogChunk) -> Result<(), ()> {
    tx.send(AgentMessage {
        msg: Some(agent_message::Msg::LogChunk(c)),
    })
    .await
    .map_err(|_| ())
}
