//! A run's watchers and its history for late ones, with bounded memory: the engine never waits
//! for a watcher, and never queues more than `limit` bytes of output lines for one. A watcher
//! that falls behind skips lines and is told how many (`WatchEvent::Lagged`); transitions and
//! the run's end always reach it (their number is bounded by the run's tasks). The history
//! keeps every transition and the most recent `limit` bytes of output.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::model::{Watch, WatchEvent};

struct Watcher {
    tx: mpsc::UnboundedSender<WatchEvent>,
    /// Output bytes queued and not read yet (the receiver gives them back).
    queued: Arc<AtomicUsize>,
    /// Lines skipped since the watcher was last told.
    skipped: u64,
}

impl Watcher {
    /// Queues `ev` unless it is an output line over the budget; false once the receiver is gone.
    fn offer(&mut self, ev: &WatchEvent, limit: usize) -> bool {
        if let WatchEvent::Output { line, .. } = ev {
            if self.queued.load(Ordering::Relaxed) + line.len() > limit {
                self.skipped += lines_in(line);
                return true;
            }
        }
        if self.skipped > 0 {
            let lagged = WatchEvent::Lagged {
                skipped: std::mem::take(&mut self.skipped),
            };
            if self.tx.send(lagged).is_err() {
                return false;
            }
        }
        if let WatchEvent::Output { line, .. } = ev {
            self.queued.fetch_add(line.len(), Ordering::Relaxed);
        }
        self.tx.send(ev.clone()).is_ok()
    }
}

/// Lines in an output event: an agent passes on every whole line it read at once, joined by
/// `\n`, and a watcher is told how many lines it missed, not how many events.
fn lines_in(line: &str) -> u64 {
    1 + line.bytes().filter(|&b| b == b'\n').count() as u64
}

/// The watchers of one run, and what late ones are replayed.
pub(super) struct Watchers {
    limit: usize,
    watchers: Vec<Watcher>,
    /// Every event so far but output lines, with its sequence number.
    transitions: VecDeque<(u64, WatchEvent)>,
    /// The most recent output lines (at most `limit` bytes), with their sequence numbers.
    recent_output: VecDeque<(u64, WatchEvent)>,
    recent_bytes: usize,
    /// Output lines dropped from the history.
    forgotten: u64,
    seq: u64,
    /// Whether there is a history at all (see [`Watchers::without_history`]).
    keeps_history: bool,
}

impl Watchers {
    pub fn new(limit: usize) -> Watchers {
        Watchers {
            limit,
            watchers: vec![],
            transitions: VecDeque::new(),
            recent_output: VecDeque::new(),
            recent_bytes: 0,
            forgotten: 0,
            seq: 0,
            keeps_history: true,
        }
    }

    /// Watchers that all come with the submission (`factotum run`'s console): nothing is kept
    /// for late ones, so a run's memory does not grow with its transitions.
    pub fn without_history(limit: usize) -> Watchers {
        Watchers {
            keeps_history: false,
            ..Watchers::new(limit)
        }
    }

    /// A watcher from now on, after the history.
    pub fn watch(&mut self) -> Watch {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let mut w = Watcher {
            tx,
            queued: Arc::clone(&queued),
            skipped: self.forgotten,
        };
        for ev in self.history() {
            w.offer(&ev, self.limit);
        }
        self.watchers.push(w);
        Watch::new(rx, queued)
    }

    /// A watcher told `first`, then what happens from now on (no history).
    pub fn watch_from(&mut self, first: Vec<WatchEvent>) -> Watch {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let mut w = Watcher {
            tx,
            queued: Arc::clone(&queued),
            skipped: 0,
        };
        for ev in &first {
            w.offer(ev, usize::MAX);
        }
        self.watchers.push(w);
        Watch::new(rx, queued)
    }

    /// Tells every watcher, and remembers it for the ones to come.
    pub fn tell(&mut self, ev: WatchEvent) {
        let limit = self.limit;
        self.watchers.retain_mut(|w| w.offer(&ev, limit));
        self.seq += 1;
        if !self.keeps_history {
            return;
        }
        if let WatchEvent::Output { line, .. } = &ev {
            self.recent_bytes += line.len();
            self.recent_output.push_back((self.seq, ev));
            while self.recent_bytes > self.limit {
                let Some((_, WatchEvent::Output { line, .. })) = self.recent_output.pop_front()
                else {
                    break;
                };
                self.recent_bytes -= line.len();
                self.forgotten += lines_in(&line);
            }
        } else {
            self.transitions.push_back((self.seq, ev));
        }
    }

    /// Tells every watcher the run's end, and lets them go.
    pub fn end(&mut self, done: WatchEvent) {
        for mut w in self.watchers.drain(..) {
            w.offer(&done, usize::MAX);
        }
    }

    /// What a late watcher is replayed: transitions and the recent output, in order.
    pub fn history(&self) -> VecDeque<WatchEvent> {
        let (mut a, mut b) = (
            self.transitions.iter().peekable(),
            self.recent_output.iter().peekable(),
        );
        let mut out = VecDeque::with_capacity(self.transitions.len() + self.recent_output.len());
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some((sa, _)), Some((sb, _))) if sa < sb => a.next(),
                (Some(_), Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, Some(_)) => b.next(),
                (None, None) => break,
            };
            if let Some((_, ev)) = next {
                out.push_back(ev.clone());
            }
        }
        out
    }

    /// Lines already dropped from the history (a late watcher is told it missed them).
    pub fn forgotten(&self) -> u64 {
        self.forgotten
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use factotum_common::run::{JobState, Stream};

    fn line(n: usize) -> WatchEvent {
        WatchEvent::Output {
            task: Arc::from("t"),
            stream: Stream::Stdout,
            line: "x".repeat(n),
            continued: false,
        }
    }

    fn job() -> WatchEvent {
        WatchEvent::Job {
            previous: None,
            current: JobState::Running,
        }
    }

    fn drain(w: &mut Watch) -> Vec<WatchEvent> {
        let mut out = vec![];
        while let Ok(ev) = w.rx_try() {
            out.push(ev);
        }
        out
    }

    trait TryRecv {
        fn rx_try(&mut self) -> Result<WatchEvent, ()>;
    }

    impl TryRecv for Watch {
        fn rx_try(&mut self) -> Result<WatchEvent, ()> {
            let waker = std::task::Waker::noop();
            let mut cx = std::task::Context::from_waker(waker);
            match tokio_stream::Stream::poll_next(std::pin::Pin::new(self), &mut cx) {
                std::task::Poll::Ready(Some(ev)) => Ok(ev),
                _ => Err(()),
            }
        }
    }

    #[test]
    fn a_watcher_that_does_not_read_gets_at_most_the_limit_then_a_lagged_marker() {
        let mut ws = Watchers::new(100);
        let mut slow = ws.watch();
        ws.tell(job());
        for _ in 0..50 {
            ws.tell(line(10));
        }
        assert_eq!(
            slow.queued_output(),
            100,
            "10 lines of 10 bytes queued, no more"
        );
        ws.tell(job()); // a transition is never skipped: the marker comes first
        let got = drain(&mut slow);
        assert_eq!(got.len(), 1 + 10 + 1 + 1);
        assert!(
            matches!(got[11], WatchEvent::Lagged { skipped: 40 }),
            "{:?}",
            got[11]
        );
        assert!(matches!(got[12], WatchEvent::Job { .. }));
        assert_eq!(slow.queued_output(), 0, "read lines are given back");
        ws.tell(line(10));
        assert_eq!(drain(&mut slow).len(), 1, "caught up: lines flow again");
    }

    #[test]
    fn without_history_watchers_from_the_start_get_everything_and_nothing_is_kept() {
        let mut ws = Watchers::without_history(100);
        let mut first = ws.watch();
        ws.tell(job());
        ws.tell(line(10));
        ws.end(job());
        assert_eq!(drain(&mut first).len(), 3);
        assert!(ws.history().is_empty(), "nothing kept for late watchers");
    }

    #[test]
    fn the_end_always_arrives_and_history_keeps_transitions_and_recent_output() {
        let mut ws = Watchers::new(25);
        ws.tell(job());
        for _ in 0..10 {
            ws.tell(line(10));
        }
        assert_eq!(ws.forgotten(), 8);
        let mut late = ws.watch();
        let got = drain(&mut late);
        assert!(
            matches!(got[0], WatchEvent::Lagged { skipped: 8 }),
            "{got:?}"
        );
        assert!(matches!(got[1], WatchEvent::Job { .. }));
        assert_eq!(
            got.len(),
            4,
            "the marker, the transition, the two recent lines"
        );
        for _ in 0..10 {
            ws.tell(line(10));
        }
        ws.end(job());
        let got = drain(&mut late);
        assert!(
            matches!(got.last(), Some(WatchEvent::Job { .. })),
            "the end arrives: {got:?}"
        );
    }
}
