//! Factotum Server's jobs and its run|drain state, as the engine keeps them.
//!
//! Factotum Server refuses a `/submit` while a job with the same id is active, but checks with
//! a read and then a write, across servers. Here the check and the run's records are one
//! engine turn on the single fenced leader: the job's record (`serverjobs/<jobId>` → the run
//! and the request) is written in the same store transaction as the run. Whether a job is
//! QUEUED, WORKING or DONE is never stored: it is the run's own state, so a coordinator's death
//! leaves nothing stuck. The drain setting is a store key too (`settings/server-state`), read
//! back by every new leader.
//!
//! This file is the owner (pure: it decides, the interpreter in `server_turn` writes) and the
//! [`Engine`] verbs.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Command, Engine, Reply};
use crate::model::{EngineError, RunSpec, ServerJob, ServerJobRun, ServerStatus, Submitted};
use crate::store::StoreOp;

/// Where the drain setting is kept.
pub const STATE_KEY: &str = "settings/server-state";
/// Where each server job's latest run is kept.
pub const JOBS_PREFIX: &str = "serverjobs/";

/// A job's record: the request and the run it started last.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct JobRecord {
    pub run_id: String,
    #[serde(flatten)]
    pub job: ServerJob,
}

/// The engine's server state: drain, and every job's latest run.
#[derive(Debug, Default)]
pub(super) struct ServerJobs {
    pub draining: bool,
    jobs: HashMap<String, JobRecord>,
}

impl ServerJobs {
    /// The run a job with this id has, if any (active or not).
    pub fn run_of(&self, job_id: &str) -> Option<&JobRecord> {
        self.jobs.get(job_id)
    }

    /// The job whose latest run is `run_id`.
    pub fn job_of_run(&self, run_id: &str) -> Option<&JobRecord> {
        self.jobs.values().find(|r| r.run_id == run_id)
    }

    /// The record written with a new run of `job`.
    pub fn record_op(job: &ServerJob, run_id: &str) -> (StoreOp, JobRecord) {
        let record = JobRecord {
            run_id: run_id.to_string(),
            job: job.clone(),
        };
        // Strings only: serializing cannot fail (an empty value would be skipped on reading).
        let value = serde_json::to_vec(&record).unwrap_or_default();
        let op = StoreOp::Put {
            key: format!("{JOBS_PREFIX}{}", job.job_id),
            value,
        };
        (op, record)
    }

    /// Forgets the jobs whose latest run was deleted from the store; returns the deletes of
    /// their records (a job is then unknown, as one never submitted: its run is gone).
    pub fn forget_runs(&mut self, runs: &[Arc<str>]) -> Vec<StoreOp> {
        let gone: Vec<String> = (self.jobs.iter())
            .filter(|(_, r)| runs.iter().any(|run| **run == *r.run_id))
            .map(|(id, _)| id.clone())
            .collect();
        (gone.into_iter())
            .map(|id| {
                self.jobs.remove(&id);
                StoreOp::Delete {
                    key: format!("{JOBS_PREFIX}{id}"),
                }
            })
            .collect()
    }

    pub fn remember(&mut self, record: JobRecord) {
        self.jobs.insert(record.job.job_id.clone(), record);
    }

    /// The drain setting as stored.
    pub fn state_op(draining: bool) -> StoreOp {
        let state = if draining { "drain" } else { "run" };
        StoreOp::Put {
            key: STATE_KEY.into(),
            value: state.as_bytes().to_vec(),
        }
    }

    /// Reads back what the store holds (a new leader): the drain setting and the jobs. A record
    /// that cannot be read is skipped with a warning (its job simply has no run).
    pub fn load(&mut self, state: Option<&[u8]>, jobs: &[(String, Vec<u8>)]) {
        self.draining = state == Some(b"drain".as_slice());
        for (key, value) in jobs {
            match serde_json::from_slice::<JobRecord>(value) {
                Ok(r) => self.remember(r),
                Err(e) => tracing::warn!(key, error = %e, "unreadable server job record skipped"),
            }
        }
    }
}

/// What the server API asks the engine.
pub(super) enum Ask {
    Submit {
        spec: Box<RunSpec>,
        job: ServerJob,
        reply: Reply<Submitted>,
    },
    SetDraining {
        draining: bool,
        reply: Reply<ServerStatus>,
    },
    Status {
        reply: Reply<ServerStatus>,
    },
    Job {
        id: String,
        reply: Reply<ServerJobRun>,
    },
}

impl Engine {
    /// Starts a run for a Factotum Server job: refused while a run of the same job id is
    /// active ([`EngineError::ServerJobActive`]) or while draining.
    pub async fn submit_server_job(
        &self,
        spec: RunSpec,
        job: ServerJob,
    ) -> Result<Submitted, EngineError> {
        let spec = Box::new(spec);
        self.ask(|reply| Command::Server(Ask::Submit { spec, job, reply }))
            .await
    }

    /// Sets run (`false`) or drain (`true`); returns once it is recorded.
    pub async fn set_draining(&self, draining: bool) -> Result<ServerStatus, EngineError> {
        self.ask(|reply| Command::Server(Ask::SetDraining { draining, reply }))
            .await
    }

    pub async fn server_status(&self) -> Result<ServerStatus, EngineError> {
        self.ask(|reply| Command::Server(Ask::Status { reply }))
            .await
    }

    /// The latest run of the server job `id`, or the run `id` names (a run id or prefix).
    pub async fn server_job(&self, id: &str) -> Result<ServerJobRun, EngineError> {
        let id = id.to_string();
        self.ask(|reply| Command::Server(Ask::Job { id, reply }))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str) -> ServerJob {
        ServerJob {
            job_id: id.into(),
            ..ServerJob::default()
        }
    }

    #[test]
    fn a_job_whose_latest_run_is_deleted_is_forgotten_with_its_record() {
        let mut jobs = ServerJobs::default();
        for (id, run) in [("j1", "r1"), ("j2", "r2")] {
            jobs.remember(ServerJobs::record_op(&job(id), run).1);
        }
        let ops = jobs.forget_runs(&[Arc::from("r1"), Arc::from("r9")]);
        assert_eq!(
            ops,
            vec![StoreOp::Delete {
                key: "serverjobs/j1".into()
            }]
        );
        assert!(jobs.run_of("j1").is_none());
        assert_eq!(jobs.run_of("j2").map(|r| r.run_id.as_str()), Some("r2"));
    }
}
