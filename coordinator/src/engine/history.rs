//! The history owner: which finished runs the store still holds, oldest first, and which must
//! go — past `history_max_runs`, or ended longer than `history_max_age` ago — so the store
//! (etcd, with its quota) does not grow forever. It only decides; the interpreter deletes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::store::StoreOp;

pub(super) struct History {
    max_runs: usize,
    max_age: Duration,
    /// Finished runs in the store, by the time they ended (then in the order recorded).
    stored: BTreeSet<(DateTime<Utc>, u64, Arc<str>)>,
    recorded: u64,
}

impl History {
    pub fn new(max_runs: usize, max_age: Duration) -> History {
        History {
            max_runs,
            max_age,
            stored: BTreeSet::new(),
            recorded: 0,
        }
    }

    /// A finished run the store holds.
    pub fn record(&mut self, run: Arc<str>, ended: DateTime<Utc>) {
        self.recorded += 1;
        self.stored.insert((ended, self.recorded, run));
    }

    /// The runs to delete now (forgotten here): the oldest past `max_runs`, and those that
    /// ended before `now - max_age`.
    pub fn expired(&mut self, now: DateTime<Utc>) -> Vec<Arc<str>> {
        let cutoff =
            now - chrono::Duration::from_std(self.max_age).unwrap_or(chrono::Duration::MAX);
        let mut out = vec![];
        while let Some((ended, _, run)) = self.stored.first().cloned() {
            if self.stored.len() <= self.max_runs && ended >= cutoff {
                break;
            }
            self.stored.pop_first();
            out.push(run);
        }
        out
    }
}

/// Everything the store holds of a run: its records, any webhook not yet delivered and its
/// dead letters (a Server job whose latest run it was goes too: see `ServerJobs::forget_runs`).
pub(super) fn deletes(runs: &[Arc<str>]) -> Vec<StoreOp> {
    runs.iter()
        .flat_map(|r| {
            [
                StoreOp::DeletePrefix {
                    prefix: format!("runs/{r}/"),
                },
                StoreOp::DeletePrefix {
                    prefix: format!("outbox/{r}/"),
                },
                StoreOp::DeletePrefix {
                    prefix: format!("deadletter/{r}/"),
                },
            ]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    #[test]
    fn the_oldest_runs_go_past_the_count() {
        let mut h = History::new(2, Duration::from_secs(3600));
        for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
            h.record(Arc::from(id), t(i as i64));
        }
        assert_eq!(h.expired(t(10)), vec![Arc::from("a")]);
        assert!(h.expired(t(10)).is_empty());
    }

    #[test]
    fn runs_that_ended_at_the_same_time_go_in_the_order_they_ended() {
        let mut h = History::new(1, Duration::from_secs(3600));
        for id in ["z", "a"] {
            h.record(Arc::from(id), t(0));
        }
        assert_eq!(h.expired(t(0)), vec![Arc::from("z")]);
    }

    #[test]
    fn runs_older_than_the_age_go() {
        let mut h = History::new(100, Duration::from_secs(60));
        h.record(Arc::from("old"), t(0));
        h.record(Arc::from("new"), t(50));
        assert!(h.expired(t(59)).is_empty());
        assert_eq!(h.expired(t(61)), vec![Arc::from("old")]);
        assert_eq!(h.expired(t(111)), vec![Arc::from("new")]);
    }

    #[test]
    fn a_run_is_deleted_with_its_records_outbox_and_dead_letters() {
        let ops = deletes(&[Arc::from("r1")]);
        let keys: Vec<&str> = ops.iter().map(StoreOp::key).collect();
        assert_eq!(keys, ["runs/r1/", "outbox/r1/", "deadletter/r1/"]);
    }
}
