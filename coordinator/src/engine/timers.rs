//! The timers owner: each run's next deadline (a task or job timeout, a retry delay), earliest
//! first. The run state machine says when it wants to be called back; this only remembers.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};

#[derive(Default)]
pub(super) struct Timers {
    queue: BTreeSet<(DateTime<Utc>, Arc<str>)>,
    by_run: HashMap<Arc<str>, DateTime<Utc>>,
}

impl Timers {
    /// Sets (or clears) a run's next deadline.
    pub fn set(&mut self, run: &Arc<str>, next: Option<DateTime<Utc>>) {
        if self.by_run.get(run) == next.as_ref() {
            return;
        }
        if let Some(old) = self.by_run.remove(run) {
            self.queue.remove(&(old, Arc::clone(run)));
        }
        if let Some(at) = next {
            self.queue.insert((at, Arc::clone(run)));
            self.by_run.insert(Arc::clone(run), at);
        }
    }

    /// The earliest deadline of all.
    pub fn next(&self) -> Option<DateTime<Utc>> {
        self.queue.first().map(|(at, _)| *at)
    }

    /// The runs whose deadline is `now` or past, forgotten here (they are set again after
    /// they have seen the time).
    pub fn due(&mut self, now: DateTime<Utc>) -> Vec<Arc<str>> {
        let mut due = vec![];
        while let Some((at, id)) = self.queue.first().cloned() {
            if at > now {
                break;
            }
            self.queue.remove(&(at, Arc::clone(&id)));
            self.by_run.remove(&id);
            due.push(id);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    #[test]
    fn deadlines_fire_in_order_and_a_run_has_one() {
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let mut timers = Timers::default();
        timers.set(&a, Some(t(10)));
        timers.set(&b, Some(t(5)));
        timers.set(&a, Some(t(3))); // moved earlier: the old one is gone
        assert_eq!(timers.next(), Some(t(3)));
        assert_eq!(timers.due(t(4)), vec![a.clone()]);
        assert_eq!(timers.due(t(4)), Vec::<Arc<str>>::new());
        timers.set(&b, None);
        assert_eq!(timers.next(), None);
        assert!(timers.due(t(100)).is_empty());
    }
}
