//! One run: its state machine, watchers and placement memory, its records and webhook
//! deliveries (the registry of every run, active and finished, is [`super::registry`]).
//!
//! Its verbs *return* what should happen (store writes, webhook deliveries, watch events); the
//! interpreter in [`super::core`] performs them.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use factotum_common::constraint::{Constraint, Placement};
use factotum_common::dag::TaskId;
use factotum_common::run::{JobState, RunOptions, RunState, Update, UpdateKind};
use factotum_common::webhook::{payload_within, RunMeta, MAX_BODY};

use super::watchers::Watchers;
use crate::model::{RunInfo, RunSpec, RunSummary, TaskChange, TaskInfo, Watch, WatchEvent};
use crate::persist;
use crate::spec::redaction;
use crate::store::{keys, StoreOp};
use crate::webhook::endpoint::{Endpoints, EventKind};
use crate::webhook::{self, dead, Delivery};

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
    /// The last event's `ttm` (ms): the next is later, so `ttm` orders a run's events.
    pub last_ttm: i64,
    pub rerun_of: Option<String>,
    /// Who cancelled it, when an authenticated caller did.
    pub cancelled_by: Option<String>,
    /// Its webhook heartbeat (`--heartbeat-interval` on `submit`), and when it is next due.
    heartbeat: Option<Duration>,
    next_beat: Option<DateTime<Utc>>,
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
    pub last_ttm: i64,
    pub rerun_of: Option<String>,
    pub cancelled_by: Option<String>,
    /// Its watchers (and what is kept for late ones).
    pub watchers: Watchers,
    pub heartbeat: Option<Duration>,
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
            watchers: p.watchers,
            sticky: None,
            task_agent: HashMap::new(),
            waiting_reason: None,
            outbox_seq: p.outbox_seq,
            last_ttm: p.last_ttm,
            rerun_of: p.rerun_of,
            cancelled_by: p.cancelled_by,
            heartbeat: p.heartbeat,
            next_beat: None,
        }
    }

    /// Whether it sends webhook heartbeats of its own.
    pub fn has_heartbeat(&self) -> bool {
        self.heartbeat.is_some()
    }

    /// Whether its webhook heartbeat is due at `now` (the first one interval after it is
    /// first asked); when it is, the next is set one interval later.
    pub fn beat_due(&mut self, now: DateTime<Utc>) -> bool {
        let Some(every) = self
            .heartbeat
            .and_then(|d| chrono::Duration::from_std(d).ok())
        else {
            return false;
        };
        match self.next_beat {
            Some(at) if now >= at => {
                self.next_beat = Some(now + every);
                true
            }
            Some(_) => false,
            None => {
                self.next_beat = Some(now + every);
                false
            }
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

    /// Tells the watchers the run's end and lets them go; returns how many output lines the
    /// history no longer holds, and (`with_history`) what late watchers are replayed.
    pub fn end_watch(
        &mut self,
        done: WatchEvent,
        with_history: bool,
    ) -> (Option<VecDeque<WatchEvent>>, u64) {
        self.watchers.end(done);
        let history = with_history.then(|| self.watchers.history());
        (history, self.watchers.forgotten())
    }

    /// Store writes (none without `ops`: the store keeps nothing) and webhook deliveries for
    /// one update; watchers are told.
    pub fn record(
        &mut self,
        update: &Update,
        endpoints: &Endpoints,
        mut ops: Option<&mut Vec<StoreOp>>,
        out: &mut Vec<Delivery>,
    ) {
        match (&update.kind, ops.as_deref_mut()) {
            (UpdateKind::Job { .. }, _) | (_, None) => {} // the state record goes with every batch
            (UpdateKind::Tasks(ts), Some(ops)) => {
                for t in ts {
                    if t.is_heartbeat() {
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
        let kind = event_kind(update);
        let urls: Vec<(usize, &Arc<str>)> = (self.webhooks.iter().enumerate())
            .filter(|(_, url)| endpoints.filter(url).wants(kind))
            .collect();
        if urls.is_empty() {
            return;
        }
        let plan = Arc::clone(self.state.plan());
        let names = move |t: u32| plan.task(t).map(|t| t.name.to_string()).unwrap_or_default();
        let Some(body) = payload_within(&self.meta, update, &names, MAX_BODY) else {
            return;
        };
        let (body, refused) = match body {
            Ok(body) => (Arc::from(body), None),
            Err(size) => (
                Arc::from(""),
                Some(format!(
                    "the event is {size} bytes with every output tail empty, over the {MAX_BODY}-byte limit"
                )),
            ),
        };
        // `ttm`: the transition's time, made strictly increasing within the run.
        let ttm = update.at.timestamp_millis().max(self.last_ttm + 1);
        self.last_ttm = ttm;
        if update.is_heartbeat() {
            // Best effort: never stored, so a heartbeat takes no sequence number.
            let event_id: Arc<str> = Arc::from(webhook::heartbeat_id(&self.id, ttm));
            for (_, url) in urls {
                out.push(Delivery {
                    url: Arc::clone(url),
                    run_id: Arc::clone(&self.id),
                    seq: None,
                    event_id: Arc::clone(&event_id),
                    ttm,
                    retry_from: ttm,
                    body: Arc::clone(&body),
                    outbox_key: String::new(),
                    refused: None,
                });
            }
            return;
        }
        let seq = self.outbox_seq;
        self.outbox_seq += 1;
        let event_id: Arc<str> = Arc::from(webhook::event_id(&self.id, seq));
        for (i, url) in urls {
            let outbox_key = dead::outbox_key(&self.id, seq, i);
            if let (None, Some(ops)) = (&refused, ops.as_deref_mut()) {
                ops.push(StoreOp::Put {
                    key: outbox_key.clone(),
                    value: persist::pack_outbox(url, ttm, &body),
                });
            }
            out.push(Delivery {
                url: Arc::clone(url),
                run_id: Arc::clone(&self.id),
                seq: Some(seq),
                event_id: Arc::clone(&event_id),
                ttm,
                retry_from: ttm,
                body: Arc::clone(&body),
                outbox_key,
                refused: refused.clone(),
            });
        }
    }

    /// The run's state record, written with every batch (job state, outbox sequence, cancel).
    pub fn state_op(&self) -> StoreOp {
        let state = persist::StateRecord {
            state: self.state.job_state().as_str().into(),
            outbox_seq: self.outbox_seq,
            last_ttm: self.last_ttm,
            cancelled: self.state.cancelled().map(str::to_string),
            cancelled_by: self.cancelled_by.clone(),
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

    /// The run with every task.
    pub fn info(&self, now: DateTime<Utc>) -> RunInfo {
        let plan = self.state.plan();
        let tasks = (plan.order.iter())
            .filter_map(|&t| {
                let rec = self.state.task(t)?;
                let planned = plan.task(t)?;
                Some(TaskInfo {
                    name: Arc::clone(&planned.name),
                    state: rec.state,
                    attempt: rec.attempt,
                    agent: self.task_agent.get(&t).map(|a| a.to_string()),
                    started: rec.started,
                    duration: rec.duration,
                    return_code: rec.return_code,
                    error_message: rec.error_message.clone(),
                    deps: (planned.deps.iter())
                        .filter_map(|&d| Some(Arc::clone(&plan.task(d)?.name)))
                        .collect(),
                    stdout: rec.stdout.as_str().to_string(),
                    stderr: rec.stderr.as_str().to_string(),
                })
            })
            .collect();
        RunInfo {
            tasks,
            ..self.brief_info(now)
        }
    }

    /// The run as a listing shows it: no task list (`RunInfo::brief`, without building one).
    pub fn brief_info(&self, now: DateTime<Utc>) -> RunInfo {
        let plan = self.state.plan();
        RunInfo {
            run_id: self.id.to_string(),
            job_name: plan.job_name.clone(),
            job_reference: self.meta.job_reference.clone(),
            state: self.state.job_state(),
            start_time: self.state.started_at(),
            duration: (now - self.state.started_at()).to_std().unwrap_or_default(),
            waiting_reason: self.waiting_reason.clone(),
            tasks: vec![],
            tags: self.meta.tags.clone(),
            rerun_of: self.rerun_of.clone(),
            cancel_reason: self.cancel_reason().map(str::to_string),
            cancelled_by: self.cancelled_by.clone(),
            task_count: plan.order.len(),
            tasks_done: (plan.order.iter())
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

/// A new run from a submission, and (`records`: the store keeps them) the records that must
/// be committed before it is acknowledged (see [`submission_records`]).
pub(super) fn submitted(
    spec: RunSpec,
    now: DateTime<Utc>,
    engine_webhooks: &[String],
    watchers: Watchers,
    records: bool,
) -> (Run, Vec<StoreOp>) {
    let run_ref = factotum_common::reference::run_reference(&spec.uuid);
    let webhooks = webhooks(engine_webhooks, &spec.webhooks);
    let new_meta = if webhooks.is_empty() {
        RunMeta::unsent
    } else {
        RunMeta::new
    };
    let mut meta = new_meta(
        &spec.compact_factfile,
        &spec.plan.job_name,
        spec.tags.clone(),
        run_ref.clone(),
        now,
    );
    if !webhooks.is_empty() {
        redaction::show(&mut meta, spec.redaction.shown_factfile.as_deref());
    }
    let opts = RunOptions {
        max_output: spec.max_output,
        snapshots: !webhooks.is_empty(),
    };
    let id: Arc<str> = Arc::from(run_ref.as_str());
    let ops = match records {
        true => submission_records(&id, &spec, &meta.job_reference, now),
        false => vec![],
    };
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
        last_ttm: 0,
        rerun_of: spec.rerun_of,
        cancelled_by: None,
        watchers,
        heartbeat: spec.heartbeat,
    });
    (run, ops)
}

/// What a submission records before it is acknowledged: what was asked, the factfile (and the
/// copy webhooks show), the initial state, the idempotency key.
fn submission_records(
    id: &Arc<str>,
    spec: &RunSpec,
    job_reference: &str,
    now: DateTime<Utc>,
) -> Vec<StoreOp> {
    let record = persist::SpecRecord {
        job_name: spec.plan.job_name.clone(),
        job_reference: job_reference.to_string(),
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
        heartbeat_ms: spec
            .heartbeat
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        no_redact: spec.no_redact,
        redact: spec.redaction.secrets.clone(),
        parallel: spec.parallel,
    };
    let initial = persist::StateRecord {
        state: JobState::Waiting.as_str().into(),
        outbox_seq: 0,
        last_ttm: 0,
        cancelled: None,
        cancelled_by: None,
    };
    let mut ops = vec![
        StoreOp::Put {
            key: keys::run_spec(id),
            value: serde_json::to_vec(&record).unwrap_or_default(),
        },
        StoreOp::Put {
            key: keys::run_factfile(id),
            value: persist::pack_factfile(&spec.compact_factfile),
        },
        StoreOp::Put {
            key: keys::run_state(id),
            value: serde_json::to_vec(&initial).unwrap_or_default(),
        },
    ];
    let shown = spec.redaction.shown_factfile.as_ref();
    ops.extend(shown.map(|f| StoreOp::Put {
        key: keys::run_shown(id),
        value: persist::pack_factfile(f),
    }));
    ops.extend(spec.idempotency_key.as_ref().map(|k| StoreOp::Put {
        key: keys::idempotency(k),
        value: id.as_bytes().to_vec(),
    }));
    ops
}

/// The engine's webhooks, then the run's own.
pub(super) fn webhooks(engine: &[String], run: &[String]) -> Vec<Arc<str>> {
    engine
        .iter()
        .chain(run)
        .map(|u| Arc::from(u.as_str()))
        .collect()
}

/// What an update is, for endpoints' filters.
fn event_kind(update: &Update) -> EventKind {
    match &update.kind {
        UpdateKind::Job { current, .. } => EventKind::Job {
            terminal: current.is_terminal(),
        },
        UpdateKind::Tasks(ts) => EventKind::Tasks {
            terminal: ts.iter().any(|t| t.current.is_terminal()),
        },
    }
}
