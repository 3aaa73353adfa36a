//! The runs owner: every active run, the finished runs kept for `status`, listings and late
//! watchers (the newest whole, older ones as a listing line), idempotency keys, and run ids
//! given as prefixes.
//!
//! Its verbs *return* what should happen; the interpreter in [`super::core`] performs them.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use factotum_common::run::JobState;

use super::runs::Run;
use super::watchers::Watchers;
use crate::model::{EngineError, RunInfo, RunPage, RunQuery, RunSummary, Watch, WatchEvent};

/// Finished runs whose history is kept for late watchers.
const FINISHED_WITH_HISTORY: usize = 50;

/// The shortest run id prefix taken for a run id.
pub const MIN_PREFIX: usize = 6;

/// A finished run, kept for `status`, `runs` and late watchers.
pub(super) struct FinishedRun {
    pub info: RunInfo,
    pub summary: RunSummary,
    pub history: Option<VecDeque<WatchEvent>>,
    /// Output lines no longer in `history`.
    pub forgotten: u64,
    /// Its task lists were dropped (it is past the newest `keep_finished`): `GetRun` and a
    /// watch read it back from the store.
    pub trimmed: bool,
}

impl FinishedRun {
    /// Keeps only what a listing shows (the task lists and the history go).
    fn trim(&mut self) {
        self.info = self.info.brief();
        self.summary.tasks = vec![];
        self.history = None;
        self.trimmed = true;
    }
}

/// Every run this engine knows.
pub(super) struct Runs {
    pub active: HashMap<Arc<str>, Run>,
    finished: HashMap<Arc<str>, FinishedRun>,
    finished_order: VecDeque<Arc<str>>,
    /// Finished runs kept whole, and kept at all (listed, their tasks read from the store).
    keep_finished: usize,
    keep_listed: usize,
    /// Idempotency keys of submissions, and the runs they started.
    idempotency: HashMap<String, String>,
}

impl Runs {
    pub fn new(keep_finished: usize, keep_listed: usize) -> Runs {
        Runs {
            active: HashMap::new(),
            finished: HashMap::new(),
            finished_order: VecDeque::new(),
            keep_finished,
            keep_listed: keep_listed.max(keep_finished),
            idempotency: HashMap::new(),
        }
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut Run> {
        self.active.get_mut(id)
    }

    pub fn is_finished(&self, id: &str) -> bool {
        self.finished.contains_key(id)
    }

    /// Counts for the metrics: active runs, their ready and running tasks, and how long the
    /// task ready longest has waited at `now`.
    pub fn census(&self, now: DateTime<Utc>, s: &mut crate::metrics::Sample) {
        s.runs_active = self.active.len();
        let mut oldest: Option<DateTime<Utc>> = None;
        for state in self.active.values().map(|r| &r.state) {
            s.tasks_ready += state.ready().len();
            s.tasks_running += state.running();
            let ready_at = state
                .ready()
                .iter()
                .filter_map(|&t| state.task(t)?.ready_at);
            oldest = oldest.into_iter().chain(ready_at).min();
        }
        s.oldest_ready = oldest.map(|o| (now - o).to_std().unwrap_or_default());
    }

    /// A finished run that ended because it was cancelled.
    pub fn was_cancelled(&self, id: &str) -> bool {
        self.finished.get(id).is_some_and(|f| f.summary.cancelled)
    }

    /// A finished run whose task lists are only in the store.
    pub fn is_trimmed(&self, id: &str) -> bool {
        self.finished.get(id).is_some_and(|f| f.trimmed)
    }

    /// Runs with ready tasks: the ones placement should look at.
    pub fn with_ready(&self) -> Vec<Arc<str>> {
        self.active
            .iter()
            .filter(|(_, r)| !r.state.ready().is_empty())
            .map(|(k, _)| Arc::clone(k))
            .collect()
    }

    /// An active run of the same job (same `jobReference`).
    pub fn active_of_job(&self, job_reference: &str) -> Option<&Run> {
        self.active
            .values()
            .find(|r| r.meta.job_reference == job_reference)
    }

    /// The run a repeated idempotency key started, watched from now on.
    pub fn by_idempotency_key(&mut self, key: &str) -> Option<crate::model::Submitted> {
        let run_id = self.idempotency.get(key)?.clone();
        let (watch, job_reference) = match self.active.get_mut(run_id.as_str()) {
            Some(run) => (run.watch(), run.meta.job_reference.clone()),
            None => {
                let reference = self
                    .finished
                    .get(run_id.as_str())
                    .map(|f| f.info.job_reference.clone())
                    .unwrap_or_default();
                (Watch::ended(), reference)
            }
        };
        Some(crate::model::Submitted {
            run_id,
            job_reference,
            existing: true,
            watch,
        })
    }

    pub fn remember_key(&mut self, key: String, run: String) {
        self.idempotency.insert(key, run);
    }

    /// A watch of a run: its history then what happens next; or, `resumed` after a break, a
    /// gap and the run as it is now instead of the history.
    pub fn watch(
        &mut self,
        id: &str,
        resumed: bool,
        now: DateTime<Utc>,
    ) -> Result<Watch, EngineError> {
        if let Some(run) = self.active.get_mut(id) {
            return Ok(if resumed {
                run.watch_resumed(now)
            } else {
                run.watch()
            });
        }
        let f = self
            .finished
            .get(id)
            .ok_or_else(|| EngineError::NoSuchRun(id.to_string()))?;
        Ok(watch_finished(f, resumed))
    }

    pub fn info(&self, id: &str, now: DateTime<Utc>) -> Result<RunInfo, EngineError> {
        match (self.active.get(id), self.finished.get(id)) {
            (Some(run), _) => Ok(run.info(now)),
            (None, Some(f)) => Ok(f.info.clone()),
            _ => Err(EngineError::NoSuchRun(id.to_string())),
        }
    }

    /// The run an id names: the whole id, or a unique prefix of at least
    /// [`MIN_PREFIX`] hex characters.
    pub fn resolve(&self, id: &str) -> Result<Arc<str>, EngineError> {
        if let Some((k, _)) = self.active.get_key_value(id) {
            return Ok(Arc::clone(k));
        }
        if let Some((k, _)) = self.finished.get_key_value(id) {
            return Ok(Arc::clone(k));
        }
        let missing = || EngineError::NoSuchRun(id.to_string());
        if id.len() < MIN_PREFIX || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(missing());
        }
        let id = id.to_ascii_lowercase();
        let mut found: Vec<&Arc<str>> = self
            .active
            .keys()
            .chain(self.finished.keys())
            .filter(|k| k.starts_with(&id))
            .collect();
        match found.len() {
            0 => Err(missing()),
            1 => Ok(Arc::clone(found[0])),
            _ => {
                found.sort();
                Err(EngineError::AmbiguousRun {
                    prefix: id,
                    candidates: found.iter().take(5).map(|k| k.to_string()).collect(),
                })
            }
        }
    }

    /// A page of the runs `query` admits, newest first (ties by id), without task lists.
    pub fn page(&self, query: &RunQuery, now: DateTime<Utc>) -> RunPage {
        let key = |r: &RunInfo| (std::cmp::Reverse(r.start_time), r.run_id.clone());
        let after = query
            .after
            .as_ref()
            .map(|(t, id)| (std::cmp::Reverse(*t), id.clone()));
        let mut runs: Vec<RunInfo> = self
            .active
            .values()
            .map(|r| r.brief_info(now))
            .chain(self.finished.values().map(|f| f.info.brief()))
            .filter(|r| query.admits(r))
            .filter(|r| after.as_ref().is_none_or(|a| key(r) > *a))
            .collect();
        runs.sort_by_key(key);
        let limit = query.limit.max(1);
        let next = (runs.len() > limit).then(|| {
            let last = &runs[limit - 1];
            (last.start_time, last.run_id.clone())
        });
        runs.truncate(limit);
        RunPage { runs, next }
    }

    /// Moves an ended run to the finished ones: watchers get its end; the oldest finished
    /// runs (and, past the newest few, their histories) are forgotten. Returns its job's name
    /// and summary.
    pub fn retire(
        &mut self,
        id: &Arc<str>,
        state: JobState,
        now: DateTime<Utc>,
    ) -> Option<(String, RunSummary)> {
        let mut run = self.active.remove(id)?;
        let summary = run.summarize(state, now);
        let ended = (run.meta.job_name.clone(), summary.clone());
        // Kept whole only when finished runs are (keep_finished > 0); else trimmed at once,
        // without first building the task list and history a trim would drop.
        let whole = self.keep_finished > 0;
        let (history, forgotten) = run.end_watch(WatchEvent::Done(summary.clone()), whole);
        let info = match whole {
            true => run.info(now),
            false => run.brief_info(now),
        };
        let finished = FinishedRun {
            info,
            summary,
            history,
            forgotten,
            trimmed: false,
        };
        self.keep(Arc::clone(id), finished);
        let n = self.finished_order.len();
        if n > FINISHED_WITH_HISTORY {
            let old = &self.finished_order[n - FINISHED_WITH_HISTORY - 1];
            if let Some(f) = self.finished.get_mut(old) {
                f.history = None;
            }
        }
        Some(ended)
    }

    /// Forgets finished runs (deleted from the store with the history's limits).
    pub fn forget(&mut self, ids: &[Arc<str>]) {
        for id in ids {
            self.finished.remove(id);
        }
        self.finished_order
            .retain(|id| self.finished.contains_key(id));
    }

    /// Keeps a finished run (newest last): past the newest `keep_finished`, runs keep only what
    /// a listing shows; past `keep_listed`, they are forgotten.
    pub fn keep(&mut self, id: Arc<str>, f: FinishedRun) {
        self.finished_order.push_back(Arc::clone(&id));
        self.finished.insert(id, f);
        let n = self.finished_order.len();
        if n > self.keep_finished {
            let old = &self.finished_order[n - self.keep_finished - 1];
            if let Some(f) = self.finished.get_mut(old) {
                f.trim();
            }
        }
        while self.finished_order.len() > self.keep_listed {
            if let Some(old) = self.finished_order.pop_front() {
                self.finished.remove(&old);
            }
        }
    }

    /// Finished runs loaded from the store, oldest first; only the newest `keep_listed` stay.
    pub fn keep_all(&mut self, mut finished: Vec<(DateTime<Utc>, Arc<str>, FinishedRun)>) {
        finished.sort_by_key(|(start, ..)| *start);
        let skip = finished.len().saturating_sub(self.keep_listed);
        for (_, id, f) in finished.into_iter().skip(skip) {
            self.keep(id, f);
        }
    }
}

/// A watch of a finished run: what is kept of its history, then its end; or, `resumed` after a
/// break, a gap, the run as it ended, and its end.
pub(super) fn watch_finished(f: &FinishedRun, resumed: bool) -> Watch {
    let mut replay = Watchers::new(usize::MAX);
    if resumed {
        let snapshot = WatchEvent::Snapshot(Box::new(f.info.clone()));
        let watch = replay.watch_from(vec![WatchEvent::Gap, snapshot]);
        replay.end(WatchEvent::Done(f.summary.clone()));
        return watch;
    }
    // A finished run's history is already bounded: replay it whole, then its end.
    let watch = replay.watch();
    if f.forgotten > 0 {
        replay.tell(WatchEvent::Lagged {
            skipped: f.forgotten,
        });
    }
    for ev in f.history.iter().flatten() {
        replay.tell(ev.clone());
    }
    replay.end(WatchEvent::Done(f.summary.clone()));
    watch
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(id: &str) -> FinishedRun {
        let info = RunInfo {
            run_id: id.into(),
            job_name: "j".into(),
            job_reference: String::new(),
            state: JobState::Succeeded,
            start_time: Utc::now(),
            duration: std::time::Duration::ZERO,
            waiting_reason: None,
            tasks: vec![],
            tags: Default::default(),
            rerun_of: None,
            cancel_reason: None,
            cancelled_by: None,
            task_count: 0,
            tasks_done: 0,
        };
        FinishedRun {
            summary: RunSummary {
                run_id: id.into(),
                state: JobState::Succeeded,
                tasks: vec![],
                duration: std::time::Duration::ZERO,
                first_failed: None,
                first_no_op: None,
                cancelled: false,
            },
            info,
            history: None,
            forgotten: 0,
            trimmed: false,
        }
    }

    #[test]
    fn a_run_id_is_the_whole_id_or_a_unique_prefix_of_six_hex_characters() {
        let mut runs = Runs::new(10, 10);
        for id in ["abcdef01", "abcdef02", "abc999aa", "0123456789"] {
            runs.keep(Arc::from(id), finished(id));
        }
        assert_eq!(&*runs.resolve("abcdef01").unwrap(), "abcdef01");
        assert_eq!(&*runs.resolve("abc999").unwrap(), "abc999aa");
        assert_eq!(&*runs.resolve("ABC999").unwrap(), "abc999aa", "any case");
        assert!(
            matches!(runs.resolve("abc99"), Err(EngineError::NoSuchRun(_))),
            "too short"
        );
        assert!(
            matches!(runs.resolve("abcxyz"), Err(EngineError::NoSuchRun(_))),
            "not hex"
        );
        assert!(matches!(
            runs.resolve("fedcba"),
            Err(EngineError::NoSuchRun(_))
        ));
        match runs.resolve("abcdef") {
            Err(EngineError::AmbiguousRun { prefix, candidates }) => {
                assert_eq!(prefix, "abcdef");
                assert_eq!(candidates, ["abcdef01", "abcdef02"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn finished_runs_past_the_newest_keep_a_listing_line_then_go() {
        let mut runs = Runs::new(2, 3);
        for id in ["r1", "r2", "r3", "r4"] {
            runs.keep(Arc::from(id), finished(id));
        }
        assert!(!runs.is_finished("r1"), "past keep_listed: gone");
        assert!(runs.is_trimmed("r2"));
        assert!(!runs.is_trimmed("r3") && !runs.is_trimmed("r4"));
    }
}
