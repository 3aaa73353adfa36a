//! How the etcd store writes: each of a leader's writes numbered in its term ([`Writes`]), and
//! how long a write may take before it is given up and retried ([`Patience`]).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use etcd_client::{Compare, CompareOp, DeleteOptions, TxnOp};

/// A leader's writes, numbered: each transaction also requires the term's write counter to
/// hold the number of the write before it, and sets it to its own. A write given up on (no
/// answer in time) and retried can then never be applied *after* a newer one — its compare
/// fails — and a retry of a write that did get through is recognised (the counter holds its
/// number) instead of applied twice.
#[derive(Debug)]
pub(super) struct Writes {
    /// `<prefix>/writes/<epoch, 20 digits>`: one per term, so they sort by term.
    pub(super) key: String,
    /// Names this writer in the counter's values: a second writer of the same term (which
    /// should never exist) finds the counter foreign and stops.
    writer: u64,
    /// Writes of this term applied so far.
    pub(super) done: u64,
}

impl Writes {
    pub(super) fn new(key: String) -> Writes {
        Writes {
            key,
            writer: rand::random(),
            done: 0,
        }
    }

    /// The counter's value after write `n`.
    pub(super) fn value(&self, n: u64) -> String {
        format!("{n} {:016x}", self.writer)
    }

    /// What the next write requires of the counter.
    pub(super) fn compare(&self) -> Compare {
        if self.done == 0 {
            Compare::version(self.key.as_str(), CompareOp::Equal, 0)
        } else {
            Compare::value(self.key.as_str(), CompareOp::Equal, self.value(self.done))
        }
    }

    /// What the next write adds: the counter's new value; the first write of a term also
    /// deletes the counters of earlier terms (the keys sorting before its own).
    pub(super) fn ops(&self, prefix: &str) -> Vec<TxnOp> {
        let mut ops = vec![TxnOp::put(
            self.key.as_str(),
            self.value(self.done + 1),
            None,
        )];
        if self.done == 0 {
            let older = DeleteOptions::new().with_range(self.key.as_str());
            ops.push(TxnOp::delete(format!("{prefix}/writes/"), Some(older)));
        }
        ops
    }

    /// Whether the counter as read shows the next write already applied (an earlier try of
    /// it got through).
    pub(super) fn applied(&self, counter: Option<&[u8]>) -> bool {
        counter == Some(self.value(self.done + 1).as_bytes())
    }
}

/// Any request's limit (the client's): one in flight when etcd's raft leader dies hangs until
/// then, and is retried on a live member.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// A write's limit while etcd answers quickly: half etcd's own election timeout (1 s by
/// default), so a write stuck on a dead raft leader holds dispatch at most this long past
/// etcd's re-election.
const QUICK: Duration = Duration::from_millis(500);
/// Writes in a row without an answer after which etcd is taken to be slow rather than between
/// leaders (a re-election takes one to two election timeouts: up to four quick limits).
const UNANSWERED_BEFORE_SLOW: u32 = 4;

/// How long a write may take before it is given up (and its batch retried, soon, on a live
/// member): [`QUICK`] while etcd answers writes well within it, so a write stuck on a raft
/// leader that died pauses dispatch about as long as etcd takes to elect another (a member
/// that knows it has no leader answers at once: requests ask for one); the full
/// [`REQUEST_TIMEOUT`] once writes are slow, or after several in a row got no answer, so a slow but
/// healthy etcd is not given up on again and again.
#[derive(Debug, Default)]
pub(super) struct Patience {
    /// The last answered write took more than half of [`QUICK`].
    slow: AtomicBool,
    /// Writes in a row that got no answer within their limit.
    unanswered: AtomicU32,
}

impl Patience {
    pub(super) fn limit(&self) -> Duration {
        let unanswered = self.unanswered.load(Ordering::Relaxed);
        if self.slow.load(Ordering::Relaxed) || unanswered >= UNANSWERED_BEFORE_SLOW {
            REQUEST_TIMEOUT
        } else {
            QUICK
        }
    }

    /// A write's time, `None` when it got no answer within the limit.
    pub(super) fn record(&self, took: Option<Duration>) {
        match took {
            Some(t) => {
                self.slow.store(t > QUICK / 2, Ordering::Relaxed);
                self.unanswered.store(0, Ordering::Relaxed);
            }
            None => {
                self.unanswered.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The write counter as the failed branch of a transaction read it.
pub(super) fn counter_read(resp: &etcd_client::TxnResponse) -> Option<Vec<u8>> {
    resp.op_responses().into_iter().find_map(|op| match op {
        etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_is_recognised_as_applied_only_by_its_own_number_and_writer() {
        let mut w = Writes::new("/f/writes/00000000000000000007".into());
        let first = w.value(1);
        assert!(
            w.applied(Some(first.as_bytes())),
            "an earlier try got through"
        );
        assert!(!w.applied(None), "nothing written yet");
        w.done = 1;
        assert!(
            !w.applied(Some(first.as_bytes())),
            "the counter is where we left it"
        );
        assert!(w.applied(Some(w.value(2).as_bytes())));
        let other = Writes::new(w.key.clone());
        assert!(
            !w.applied(Some(other.value(2).as_bytes())),
            "another writer's"
        );
        // The first write of a term clears the counters of earlier terms, not its own.
        assert_eq!(w.ops("/f").len(), 1);
        w.done = 0;
        assert_eq!(w.ops("/f").len(), 2);
    }

    #[test]
    fn writes_get_the_quick_limit_only_while_etcd_answers_quickly() {
        let p = Patience::default();
        assert_eq!(p.limit(), QUICK);
        p.record(Some(Duration::from_millis(20)));
        assert_eq!(p.limit(), QUICK);
        for _ in 1..UNANSWERED_BEFORE_SLOW {
            p.record(None); // no answer (etcd is between leaders): retried as quickly
            assert_eq!(p.limit(), QUICK);
        }
        p.record(None); // again and again: perhaps etcd is just slow
        assert_eq!(p.limit(), REQUEST_TIMEOUT);
        p.record(Some(Duration::from_millis(1500))); // answered, but slowly
        assert_eq!(p.limit(), REQUEST_TIMEOUT);
        p.record(Some(Duration::from_millis(30)));
        assert_eq!(p.limit(), QUICK);
    }
}
