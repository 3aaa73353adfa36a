//! Recovery: what a new leader (or a restarted single node) loads from the store — active runs
//! to take over, finished runs to show, idempotency keys, webhooks not yet delivered — and the
//! rerun of a recorded run. Reads only: the interpreter installs what it returns.

use std::collections::HashMap;
use std::sync::Arc;

use factotum_common::constraint::Constraint;
use factotum_common::dag::{Plan, TaskId};
use factotum_common::run::{RunOptions, RunState, TaskState};
use factotum_common::webhook::RunMeta;

use super::registry::FinishedRun;
use super::runs::{webhooks, Run, RunParts};
use super::watchers::Watchers;
use crate::model::{EngineError, Redaction, RunSpec};
use crate::persist;
use crate::spec::redaction;
use crate::store::{keys, Store, SCAN_PAGE};
use crate::webhook::dead::{self, DeadLetter, Disabled};
use crate::webhook::{self, Delivery};

/// What the store holds for a new leader.
#[derive(Default)]
pub(super) struct Recovered {
    /// Runs still active, to take over.
    pub active: Vec<Run>,
    /// Runs that ended before: shown by `status` and `runs`.
    pub finished: Vec<(chrono::DateTime<chrono::Utc>, Arc<str>, FinishedRun)>,
    pub idempotency: Vec<(String, String)>,
    /// Webhook events not yet delivered, in order per run, with their original event ids.
    pub outbox: Vec<Delivery>,
    /// Webhook events given up on, by key, and endpoints disabled by a 410.
    pub dead: Vec<(String, DeadLetter)>,
    pub disabled: Vec<Disabled>,
    /// When each finished run ended (for the history's limits).
    pub ended: Vec<(Arc<str>, chrono::DateTime<chrono::Utc>)>,
}

/// Reads every run, key and outbox entry under the store (except runs already `known`).
pub(super) async fn load<S: Store>(
    store: &S,
    cfg: &super::EngineConfig,
    known: impl Fn(&str) -> bool,
) -> Result<Recovered, EngineError> {
    let mut out = Recovered::default();
    // In pages (a store with thousands of finished runs is more than one answer can carry),
    // one run at a time: keys come in order, so a run's keys are contiguous.
    let mut current: Option<(String, HashMap<String, Vec<u8>>)> = None;
    let mut after: Option<String> = None;
    loop {
        let page = store
            .scan_page("runs/", after.as_deref(), SCAN_PAGE)
            .await?;
        let last_page = page.len() < SCAN_PAGE;
        after = page.last().map(|(k, _)| k.clone());
        for (key, value) in page {
            let Some((id, rest)) = key.strip_prefix("runs/").and_then(|k| k.split_once('/')) else {
                continue;
            };
            if current.as_ref().is_some_and(|(c, _)| c != id) {
                if let Some((done, keys)) = current.take() {
                    take_over(&mut out, &done, keys, cfg, &known).await;
                }
            }
            current
                .get_or_insert_with(|| (id.to_string(), HashMap::new()))
                .1
                .insert(rest.to_string(), value);
        }
        if last_page {
            break;
        }
    }
    if let Some((done, keys)) = current.take() {
        take_over(&mut out, &done, keys, cfg, &known).await;
    }
    for (key, value) in store.scan("idempotency/").await? {
        if let (Some(k), Ok(run)) = (
            key.strip_prefix("idempotency/").and_then(keys::unhex),
            String::from_utf8(value),
        ) {
            out.idempotency.push((k, run));
        }
    }
    for (key, value) in store.scan("deadletter/").await? {
        if let Ok(d) = serde_json::from_slice(&value) {
            out.dead.push((key, d));
        }
    }
    for (_, value) in store.scan(dead::disabled_prefix()).await? {
        if let Ok(d) = serde_json::from_slice(&value) {
            out.disabled.push(d);
        }
    }
    // An entry written before `ttm` was recorded gets its horizon from now.
    let now_ms = chrono::Utc::now().timestamp_millis();
    for (key, value) in store.scan("outbox/").await? {
        let parts: Vec<&str> = key.splitn(4, '/').collect();
        let [_, run, seq, _] = parts.as_slice() else {
            continue;
        };
        let Some((url, ttm, body)) = persist::unpack_outbox(&value) else {
            continue;
        };
        let seq = seq.parse::<u64>().unwrap_or(0);
        out.outbox.push(Delivery {
            url: Arc::from(url.as_str()),
            run_id: Arc::from(*run),
            seq: Some(seq),
            event_id: Arc::from(webhook::event_id(run, seq)),
            ttm: if ttm == 0 { now_ms } else { ttm },
            retry_from: if ttm == 0 { now_ms } else { ttm },
            body: Arc::from(body.as_str()),
            outbox_key: key.clone(),
            refused: None,
        });
    }
    Ok(out)
}

/// One recorded run: an active one to take over, or a finished one to show.
async fn take_over(
    out: &mut Recovered,
    id: &str,
    keys: HashMap<String, Vec<u8>>,
    cfg: &super::EngineConfig,
    known: &impl Fn(&str) -> bool,
) {
    if known(id) {
        return;
    }
    let id: Arc<str> = Arc::from(id);
    match restore_run(&id, keys, cfg).await {
        Ok(run) if run.state.job_state().is_terminal() => {
            // Finished before the failover: kept for `status` and `runs`, and in the history.
            let ended = ended_at(&run);
            out.ended.push((Arc::clone(&id), ended));
            out.finished
                .push((run.state.started_at(), id, finished(&run)));
        }
        Ok(run) => out.active.push(run),
        Err(why) => tracing::error!(run = %id, "cannot take over the run: {why}"),
    }
}

/// A finished run as it is kept: what `status` and a watch show of it.
fn finished(run: &Run) -> FinishedRun {
    let ended = ended_at(run);
    FinishedRun {
        info: run.info(ended),
        summary: run.summarize(run.state.job_state(), ended),
        history: None,
        forgotten: 0,
        trimmed: false,
    }
}

/// One run's records in the store, by their keys under `runs/<id>/`; NoSuchRun if it has none.
async fn run_records<S: Store>(
    store: &S,
    id: &str,
) -> Result<HashMap<String, Vec<u8>>, EngineError> {
    let prefix = format!("runs/{id}/");
    let keys: HashMap<String, Vec<u8>> = store
        .scan(&prefix)
        .await?
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?.to_string(), v)))
        .collect();
    if keys.is_empty() {
        return Err(EngineError::NoSuchRun(id.to_string()));
    }
    Ok(keys)
}

/// A finished run read back from the store (one kept in memory only as a listing's line).
pub(super) async fn load_finished<S: Store>(
    store: &S,
    id: &str,
    cfg: &super::EngineConfig,
) -> Result<FinishedRun, EngineError> {
    let keys = run_records(store, id).await?;
    let run = restore_run(&Arc::from(id), keys, cfg)
        .await
        .map_err(|_| EngineError::NoSuchRun(id.to_string()))?;
    Ok(finished(&run))
}

/// When a finished run ended, by its records: its last task's end, or its start.
fn ended_at(run: &Run) -> chrono::DateTime<chrono::Utc> {
    run.state
        .tasks()
        .iter()
        .filter_map(|t| Some(t.started? + chrono::Duration::from_std(t.duration?).ok()?))
        .max()
        .unwrap_or_else(|| run.state.started_at())
}

/// The attempts a restored run records as running: an agent must re-attach them.
pub(super) fn running_attempts(run: &Run) -> Vec<(TaskId, u32)> {
    run.state
        .tasks()
        .iter()
        .enumerate()
        .filter(|(_, rec)| rec.state == TaskState::Running)
        .map(|(t, rec)| (t as TaskId, rec.attempt))
        .collect()
}

/// One recorded run, rebuilt.
async fn restore_run(
    id: &Arc<str>,
    keys: HashMap<String, Vec<u8>>,
    cfg: &super::EngineConfig,
) -> Result<Run, String> {
    let rec = persist::Recorded::read(keys)?;
    let state = rec.state()?;
    let job = state.job_state().ok_or("unknown job state")?;
    let plan = redaction::replan(
        Plan::subset(&rec.factfile, &rec.spec.tasks).limited(rec.spec.parallel),
        rec.spec.no_redact,
        &rec.spec.redact,
    );
    // A finished run is kept for `status` and `runs` only: no host names to look up.
    let (plan, constraints) = if job.is_terminal() {
        (Arc::new(plan), rec.constraints())
    } else {
        resolved(plan, rec.constraints()).await?
    };
    let records = (0..plan.len() as u32).map(|t| rec.task(t)).collect();
    let persist::Recorded {
        spec,
        compact,
        shown,
        ..
    } = rec;
    let webhooks = webhooks(&cfg.webhooks, &spec.webhooks);
    let opts = RunOptions {
        max_output: spec.max_output,
        snapshots: !webhooks.is_empty(),
    };
    let new_meta = if webhooks.is_empty() {
        RunMeta::unsent
    } else {
        RunMeta::new
    };
    let mut meta = new_meta(
        &compact,
        &spec.job_name,
        spec.tags.clone(),
        id.to_string(),
        spec.start_time,
    );
    if !webhooks.is_empty() {
        redaction::show(&mut meta, shown.as_deref());
    }
    Ok(Run::new(RunParts {
        id: Arc::clone(id),
        state: RunState::restore(
            plan,
            spec.start_time,
            opts,
            job,
            state.cancelled.clone(),
            records,
        ),
        meta,
        webhooks,
        max_output: spec.max_output,
        dry_run: spec.dry_run,
        constraints,
        placement: spec.placement,
        outbox_seq: state.outbox_seq,
        last_ttm: state.last_ttm,
        rerun_of: spec.rerun_of.clone(),
        cancelled_by: state.cancelled_by.clone(),
        watchers: Watchers::new(cfg.watch_buffer),
        heartbeat: spec.heartbeat_ms.map(std::time::Duration::from_millis),
    }))
}

/// A new run of a finished run's recorded factfile (already templated with its variables),
/// tags, webhooks, constraints and options: all its tasks, or with `from_failed` those that
/// did not succeed and their descendants.
/// What the agent redacted in `task`'s output, from the run's records (a run no longer held
/// whole in memory): the run's `--env` secrets and the task's own `env` values.
pub(super) async fn recorded_secrets<S: Store>(
    store: &S,
    run: &str,
    task: &str,
) -> Result<Vec<String>, EngineError> {
    let keys = run_records(store, run).await?;
    let rec = persist::Recorded::read(keys).map_err(|why| EngineError::CannotRerun {
        run: run.to_string(),
        why,
    })?;
    let plan = redaction::replan(
        Plan::subset(&rec.factfile, &rec.spec.tasks),
        rec.spec.no_redact,
        &rec.spec.redact,
    );
    Ok(task_secrets(&plan, task))
}

/// A plan task's secrets (none when the run is not redacted).
pub(super) fn task_secrets(plan: &Plan, task: &str) -> Vec<String> {
    (plan.tasks.iter())
        .find(|t| &*t.name == task)
        .and_then(|t| t.policy().redact.clone())
        .map(|r| r.to_vec())
        .unwrap_or_default()
}

pub(super) async fn rerun_spec<S: Store>(
    store: &S,
    old: &str,
    from_failed: bool,
) -> Result<RunSpec, EngineError> {
    let keys = run_records(store, old).await?;
    let why = |w: String| EngineError::CannotRerun {
        run: old.to_string(),
        why: w,
    };
    let rec = persist::Recorded::read(keys).map_err(why)?;
    let names: Vec<String> = if from_failed {
        let old_plan = Plan::subset(&rec.factfile, &rec.spec.tasks);
        let states: Vec<TaskState> = (0..old_plan.len() as u32)
            .map(|t| rec.task(t).map(|r| r.state).unwrap_or_default())
            .collect();
        factotum_common::run::rerun_set(&old_plan, &states)
            .into_iter()
            .map(|t| old_plan.tasks[t as usize].name.to_string())
            .collect()
    } else {
        rec.spec.tasks.clone()
    };
    if names.is_empty() {
        return Err(EngineError::NothingToRerun(old.to_string()));
    }
    let plan = redaction::replan(
        Plan::subset(&rec.factfile, &names).limited(rec.spec.parallel),
        rec.spec.no_redact,
        &rec.spec.redact,
    );
    let (plan, constraints) = resolved(plan, rec.constraints()).await.map_err(why)?;
    let persist::Recorded {
        spec,
        compact,
        shown,
        ..
    } = rec;
    Ok(RunSpec {
        compact_factfile: compact,
        plan,
        tags: spec.tags,
        webhooks: spec.webhooks,
        max_output: spec.max_output,
        dry_run: spec.dry_run,
        constraints,
        placement: spec.placement,
        allow_concurrent: false,
        idempotency_key: None,
        uuid: uuid::Uuid::new_v4().to_string(),
        rerun_of: Some(old.to_string()),
        heartbeat: spec.heartbeat_ms.map(std::time::Duration::from_millis),
        no_redact: spec.no_redact,
        parallel: spec.parallel,
        redaction: Redaction {
            secrets: spec.redact,
            shown_factfile: shown,
        },
    })
}

/// A recorded plan and constraints with their host names resolved (off the async workers: name
/// lookups block).
async fn resolved(
    plan: Plan,
    constraints: Vec<Constraint>,
) -> Result<(Arc<Plan>, Vec<Constraint>), String> {
    tokio::task::spawn_blocking(move || {
        (
            Arc::new(crate::spec::resolve_plan(plan)),
            crate::spec::resolve_constraints(constraints),
        )
    })
    .await
    .map_err(|e| e.to_string())
}
