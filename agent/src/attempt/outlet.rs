//! One attempt's messages on their way to the session: its start, its output through its
//! [`Throttle`] (`--max-stream-rate`), and its result after the notice of a gap still open.

use factotum_common::run::Stream;
use factotum_proto::{agent_message, AttemptResult, LeaseRef, Started};
use tokio::sync::mpsc::{self, error::TrySendError, Permit};

use super::AttemptEvent;
use crate::metrics::metrics;
use crate::throttle::{StreamRate, Throttle, Verdict};

/// The session is gone: nobody is listening any more.
#[derive(Debug)]
pub(super) struct Closed;

pub(super) struct Outlet {
    r: LeaseRef,
    events: mpsc::Sender<AttemptEvent>,
    throttle: Option<Throttle>,
    /// Output may wait for room in the queue to the session. A live attempt's may not: the
    /// executor reads the task's pipes in the loop that hands its lines over, so a wait would
    /// stall the task; a throttled one drops what finds no room instead (unthrottled, every
    /// line waits, as `factotum run` needs). An adopted attempt's output is read from the file
    /// its shim writes: a wait stalls nobody.
    may_wait: bool,
}

impl Outlet {
    pub(super) fn new(
        r: LeaseRef,
        events: mpsc::Sender<AttemptEvent>,
        rate: Option<StreamRate>,
        may_wait: bool,
    ) -> Outlet {
        let now = tokio::time::Instant::now().into_std();
        Outlet {
            r,
            events,
            throttle: rate.map(|rate| Throttle::new(rate, now)),
            may_wait,
        }
    }

    pub(super) async fn started(&self, pid: u32) -> Result<(), Closed> {
        let msg = agent_message::Msg::Started(Started {
            lease: Some(self.r.clone()),
            pid,
        });
        self.send(msg).await
    }

    /// A line, or a piece of one, of the task's output.
    pub(super) async fn output(
        &mut self,
        stream: Stream,
        line: String,
        continued: bool,
    ) -> Result<(), Closed> {
        let m = metrics();
        m.output(stream, line.len());
        let Some(throttle) = &mut self.throttle else {
            return self
                .send(output_msg(&self.r, stream, line, continued))
                .await;
        };
        let now = tokio::time::Instant::now().into_std();
        if self.may_wait {
            let verdict = throttle.offer(now, stream, line.len(), continued, 2);
            if let Verdict::Stream(notice) = verdict {
                if let Some(n) = notice {
                    let notice = output_msg(&self.r, Stream::Stderr, n.to_string(), false);
                    self.send(notice).await?;
                }
                self.send(output_msg(&self.r, stream, line, continued))
                    .await?;
            } else {
                m.output_not_streamed.inc_by(line.len() as u64);
            }
            return Ok(());
        }
        // Room is taken before deciding, so what is decided on is sent without a wait.
        let [first, second] = reserve(&self.events)?;
        let room = usize::from(first.is_some()) + usize::from(second.is_some());
        if let Verdict::Stream(notice) = throttle.offer(now, stream, line.len(), continued, room) {
            let mut permits = first.into_iter().chain(second);
            if let (Some(n), Some(p)) = (notice, permits.next()) {
                let notice = output_msg(&self.r, Stream::Stderr, n.to_string(), false);
                p.send(AttemptEvent::Message(notice));
            }
            match permits.next() {
                Some(p) => {
                    let msg = output_msg(&self.r, stream, line, continued);
                    p.send(AttemptEvent::Message(msg));
                }
                None => {
                    m.output_not_streamed.inc_by(line.len() as u64);
                }
            }
        } else {
            m.output_not_streamed.inc_by(line.len() as u64);
        }
        Ok(())
    }

    /// The attempt's end: the notice of a gap still open, then the result.
    pub(super) async fn done(mut self, result: AttemptResult) {
        if let Some(n) = self.throttle.as_mut().and_then(Throttle::finish) {
            let notice = output_msg(&self.r, Stream::Stderr, n.to_string(), false);
            if self.send(notice).await.is_err() {
                return;
            }
        }
        let _ = self
            .events
            .send(AttemptEvent::Done(self.r.key(), result))
            .await;
    }

    async fn send(&self, msg: agent_message::Msg) -> Result<(), Closed> {
        self.events
            .send(AttemptEvent::Message(msg))
            .await
            .map_err(|_| Closed)
    }
}

type Room<'a> = [Option<Permit<'a, AttemptEvent>>; 2];

/// Room for two messages (a notice and its piece), or one, or none, without waiting.
fn reserve(events: &mpsc::Sender<AttemptEvent>) -> Result<Room<'_>, Closed> {
    match events.try_reserve_many(2) {
        Ok(mut p) => Ok([p.next(), p.next()]),
        Err(TrySendError::Closed(())) => Err(Closed),
        Err(TrySendError::Full(())) => match events.try_reserve() {
            Ok(p) => Ok([Some(p), None]),
            Err(TrySendError::Closed(())) => Err(Closed),
            Err(TrySendError::Full(())) => Ok([None, None]),
        },
    }
}

fn output_msg(r: &LeaseRef, stream: Stream, line: String, continued: bool) -> agent_message::Msg {
    agent_message::Msg::Output(factotum_proto::Output {
        lease: Some(r.clone()),
        stream: match stream {
            Stream::Stdout => factotum_proto::Stream::Stdout as i32,
            Stream::Stderr => factotum_proto::Stream::Stderr as i32,
        },
        line,
        continued,
    })
}
