//! The runs owner: every active run with its state machine, watchers and placement memory, the
//! finished runs kept for `status` and late watchers, and idempotency keys.
//!
//! Its verbs *return* what should happen (store writes, webhook deliveries, watch events); the
//! interpreter in [`super::core`] performs them.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use factotum_common::constraint::{Constraint, Placement};
use factotum_common::dag::TaskId;
use factotum_common::run::{JobState, RunOptions, RunState, TaskState, Update, UpdateKind};
use factotum_common::webhook::{payload, RunMeta};

use super::watchers::Watchers;
use crate::model::{
    EngineError, RunInfo, RunPage, RunQuery, RunSpec, RunSummary, TaskChange, TaskInfo, Watch,
    WatchEvent,
};
use crate::persist;
use crate::store::{keys, StoreOp};
use crate::webhook::Delivery;

/// Finished runs whose history is kept for late watchers.
const FINISHED_WITH_HISTORY: usize = 50;

pub(super) struct Run {
    pub id: Arc<str>,
    pub state: RunState,
    pub meta: RunMeta,
    pub webhooks: Vec<Arc<str>>,
    pub max_output: u32,
    pub dry_run: bool,
    pub constraints: Vec<Constraint>,
    pub placement: Placement,
    watchers: Watchers,
    /// The agent that took the run's first task (sticky placement).
    pub sticky: Option<Arc<str>>,
    /// The agent of each task's current attempt.
    pub task_agent: HashMap<TaskId, Arc<str>>,
    pub waiting_reason: Option<String>,
    pub outbox_seq: u64,
    pub rerun_of: Option<String>,
}

/// What a run is built from: a new submission or a store's records.
pub(super) struct RunParts {
    pub id: Arc<str>,
    pub state: RunState,
    pub meta: RunMeta,
    pub webhooks: Vec<Arc<str>>,
    pub max_output: usize,
    pub dry_run: bool,
    pub constraints: Vec<Constraint>,
    pub placement: Placement,
    pub outbox_seq: u64,
    pub rerun_of: Option<String>,
    /// Bytes of output lines queued for one watcher, and kept for late ones.
    pub watch_buffer: usize,
}

impl Run {
    pub fn new(p: RunParts) -> Run {
        Run {
            id: p.id,
            state: p.state,
            meta: p.meta,
            webhooks: p.webhooks,
            max_output: u32::try_from(p.max_output).unwrap_or(u32::MAX),
            dry_run: p.dry_run,
            constraints: p.constraints,
            placement: p.placement,
            watchers: Watchers::new(p.watch_buffer),
            sticky: None,
            task_agent: HashMap::new(),
            waiting_reason: None,
            outbox_seq: p.outbox_seq,
            rerun_of: p.rerun_of,
        }
    }

    /// A watcher from now on, after what watchers have been told so far.
    pub fn watch(&mut self) -> Watch {
        self.watchers.watch()
    }

    /// A watch resumed after a break: a gap, the run as it is now, then what happens next.
    pub fn watch_resumed(&mut self, now: DateTime<Utc>) -> Watch {
        let snapshot = WatchEvent::Snapshot(Box::new(self.info(now)));
        self.watchers.watch_from(vec![WatchEvent::Gap, snapshot])
    }

    /// Tells every watcher, and remembers it for the ones to come.
    pub fn tell(&mut self, ev: WatchEvent) {
        self.watchers.tell(ev);
    }

    /// Store writes and webhook deliveries for one update; watchers are told.
    pub fn record(&mut self, update: &Update, ops: &mut Vec<StoreOp>, out: &mut Vec<Delivery>) {
        match &update.kind {
            UpdateKind::Job { .. } => {} // the state record is written with every batch
            UpdateKind::Tasks(ts) => {
                for t in ts {
                    if t.previous == t.current && t.current == TaskState::Running {
                        continue; // heartbeats change nothing worth storing
                    }
                    if let (Some(rec), Some(spec)) =
                        (self.state.task(t.task), self.state.plan().task(t.task))
                    {
                        let doc = persist::TaskOut::new(&spec.name, rec);
                        ops.push(StoreOp::Put {
                            key: keys::task(&self.id, t.task),
                            value: serde_json::to_vec(&doc).unwrap_or_default(),
                        });
                    }
                }
            }
        }
        let ev = self.watch_event(update);
        self.tell(ev);
        if self.webhooks.is_empty() {
            return;
        }
        let plan = Arc::clone(self.state.plan());
        let names = move |t: u32| plan.task(t).map(|t| t.name.to_string()).unwrap_or_default();
        let Some(body) = payload(&self.meta, update, &names) else {
            return;
        };
        let body: Arc<str> = Arc::from(body);
        let seq = self.outbox_seq;
        self.outbox_seq += 1;
        for (i, url) in self.webhooks.iter().enumerate() {
            let outbox_key = format!("{}/{i}", keys::outbox(&self.id, seq));
            ops.push(StoreOp::Put {
                key: outbox_key.clone(),
                value: persist::pack_outbox(url, &body),
            });
            out.push(Delivery {
                url: Arc::clone(url),
                run_id: Arc::clone(&self.id),
                event_id: format!("{}-{seq}", self.id),
                body: Arc::clone(&body),
                outbox_key,
            });
        }
    }

    /// The run's state record, written with every batch (job state, outbox sequence, cancel).
    pub fn state_op(&self) -> StoreOp {
        let state = persist::StateRecord {
            state: self.state.job_state().as_str().into(),
            outbox_seq: self.outbox_seq,
            cancelled: self.state.cancelled().map(str::to_string),
        };
        StoreOp::Put {
            key: keys::run_state(&self.id),
            value: serde_json::to_vec(&state).unwrap_or_default(),
        }
    }

    fn watch_event(&self, update: &Update) -> WatchEvent {
        match &update.kind {
            UpdateKind::Job { previous, current } => WatchEvent::Job {
                previous: *previous,
                current: *current,
            },
            UpdateKind::Tasks(ts) => WatchEvent::Tasks(
                ts.iter()
                    .filter_map(|t| {
                        let rec = self.state.task(t.task)?;
                        Some(TaskChange {
                            name: Arc::clone(&self.state.plan().task(t.task)?.name),
                            previous: t.previous,
                            current: t.current,
                            started: rec.started,
                            duration: rec.duration,
                            return_code: rec.return_code,
                            error_message: rec.error_message.clone(),
                        })
                    })
                    .collect(),
            ),
        }
    }

    pub fn info(&self, now: DateTime<Utc>) -> RunInfo {
        let plan = self.state.plan();
        RunInfo {
            run_id: self.id.to_string(),
            job_name: plan.job_name.clone(),
            job_reference: self.meta.job_reference.clone(),
            state: self.state.job_state(),
            start_time: self.state.started_at(),
            duration: (now - self.state.started_at()).to_std().unwrap_or_default(),
            waiting_reason: self.waiting_reason.clone(),
            tasks: plan
                .order
                .iter()
                .filter_map(|&t| {
                    let rec = self.state.task(t)?;
                    Some(TaskInfo {
                        name: Arc::clone(&plan.task(t)?.name),
                        state: rec.state,
                        attempt: rec.attempt,
                        agent: self.task_agent.get(&t).map(|a| a.to_string()),
                        started: rec.started,
                        duration: rec.duration,
                        return_code: rec.return_code,
                        error_message: rec.error_message.clone(),
                    })
                })
                .collect(),
            tags: self.meta.tags.clone(),
            rerun_of: self.rerun_of.clone(),
            cancel_reason: self.cancel_reason().map(str::to_string),
            task_count: plan.order.len(),
            tasks_done: plan
                .order
                .iter()
                .filter(|&&t| self.state.task(t).is_some_and(|r| r.state.is_terminal()))
                .count(),
        }
    }

    /// Why the run was cancelled, if it was (a whole-job timeout stops it the same way, but
    /// is not a cancel).
    fn cancel_reason(&self) -> Option<&str> {
        self.state
            .cancelled()
            .filter(|r| *r != factotum_common::run::JOB_TIMED_OUT)
    }

    pub fn summarize(&self, state: JobState, now: DateTime<Utc>) -> RunSummary {
        let plan = self.state.plan();
        let name = |t: Option<TaskId>| t.and_then(|t| plan.task(t)).map(|t| Arc::clone(&t.name));
        RunSummary {
            run_id: self.id.to_string(),
            state,
            tasks: plan
                .order
                .iter()
                .filter_map(|&t| Some((Arc::clone(&plan.task(t)?.name), self.state.task(t)?.state)))
                .collect(),
            duration: (now - self.state.started_at()).to_std().unwrap_or_default(),
            first_failed: name(self.state.first_failed()),
            first_no_op: name(self.state.first_no_op()),
            cancelled: self.cancel_reason().is_some(),
        }
    }
}

/// A new run from a submission, and the records that must be committed before it is
/// acknowledged (what was asked, the factfile, the initial state, the idempotency key).
pub(super) fn submitted(
    spec: RunSpec,
    now: DateTime<Utc>,
    engine_webhooks: &[String],
    watch_buffer: usize,
) -> (Run, Vec<StoreOp>) {
    let run_ref = factotum_common::reference::run_reference(&spec.uuid);
    let meta = RunMeta::new(
        &spec.compact_factfile,
        &spec.plan.job_name,
        spec.tags.clone(),
        run_ref.clone(),
        now,
    );
    let webhooks = webhooks(engine_webhooks, &spec.webhooks);
    let opts = RunOptions {
        max_output: spec.max_output,
        snapshots: !webhooks.is_empty(),
    };
    let id: Arc<str> = Arc::from(run_ref.as_str());
    let record = persist::SpecRecord {
        job_name: spec.plan.job_name.clone(),
        job_reference: meta.job_reference.clone(),
        start_time: now,
        tags: spec.tags.clone(),
        webhooks: spec.webhooks.clone(),
        constraints: spec
            .constraints
            .iter()
            .map(persist::ConstraintRecord::from_constraint)
            .collect(),
        placement: spec.placement,
        max_output: spec.max_output,
        dry_run: spec.dry_run,
        tasks: spec.plan.tasks.iter().map(|t| t.name.to_string()).collect(),
        rerun_of: spec.rerun_of.clone(),
    };
    let initial = persist::StateRecord {
        state: JobState::Waiting.as_str().into(),
        outbox_seq: 0,
        cancelled: None,
    };
    let mut ops = vec![
        StoreOp::Put {
            key: keys::run_spec(&id),
            value: serde_json::to_vec(&record).unwrap_or_default(),
        },
        StoreOp::Put {
            key: keys::run_factfile(&id),
            value: persist::pack_factfile(&spec.compact_factfile),
        },
        StoreOp::Put {
            key: keys::run_state(&id),
            value: serde_json::to_vec(&initial).unwrap_or_default(),
        },
    ];
    ops.extend(spec.idempotency_key.as_ref().map(|k| StoreOp::Put {
        key: keys::idempotency(k),
        value: id.as_bytes().to_vec(),
    }));
    let run = Run::new(RunParts {
        id,
        state: RunState::new(Arc::clone(&spec.plan), now, opts),
        meta,
        webhooks,
        max_output: spec.max_output,
        dry_run: spec.dry_run,
        constraints: spec.constraints,
        placement: spec.placement,
        outbox_seq: 0,
        rerun_of: spec.rerun_of,
        watch_buffer,
    });
    (run, ops)
}

/// The engine's webhooks, then the run's own.
pub(super) fn webhooks(engine: &[String], run: &[String]) -> Vec<Arc<str>> {
    engine
        .iter()
        .chain(run)
        .map(|u| Arc::from(u.as_str()))
        .collect()
}

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
            .map(|r| r.info(now).brief())
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
    /// runs (and, past the newest few, their histories) are forgotten.
    pub fn retire(&mut self, id: &Arc<str>, state: JobState, now: DateTime<Utc>) {
        let Some(mut run) = self.active.remove(id) else {
            return;
        };
        let summary = run.summarize(state, now);
        run.watchers.end(WatchEvent::Done(summary.clone()));
        let finished = FinishedRun {
            info: run.info(now),
            summary,
            history: Some(run.watchers.history()),
            forgotten: run.watchers.forgotten(),
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
                f.info = f.info.brief();
                f.summary.tasks = vec![];
                f.history = None;
                f.trimmed = true;
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
