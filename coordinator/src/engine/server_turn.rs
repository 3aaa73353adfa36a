//! The interpreter's Factotum Server verbs: a server job's submission (its duplicate check and
//! record in the run's own transaction), run|drain (recorded before it is answered), the
//! queue's state, and a job's latest run. The same interpreter as [`super::core`], in its own
//! file; [`super::server_jobs`] decides.

use factotum_common::run::JobState;

use super::core::Core;
use super::recovery;
use super::server_jobs::{self, Ask, JobRecord, ServerJobs};
use crate::model::{EngineError, RunInfo, ServerJob, ServerJobRun, ServerStatus};
use crate::store::{Store, StoreOp};

impl<S: Store> Core<S> {
    pub(super) async fn server(&mut self, ask: Ask) {
        match ask {
            Ask::Submit { spec, job, reply } => {
                let _ = reply.send(self.submit_as(*spec, Some(&job)).await);
            }
            Ask::SetDraining { draining, reply } => {
                let _ = reply.send(self.set_draining(draining).await);
            }
            Ask::Status { reply } => {
                let _ = reply.send(Ok(self.server_status()));
            }
            Ask::Job { id, reply } => {
                let _ = reply.send(self.server_job(&id).await);
            }
        }
    }

    /// For a server job's new run `run_id`: its record, or the active run of the same job id
    /// that refuses it. Checked in the turn that commits the run, on the fenced leader, so two
    /// submissions (through any coordinators) cannot both pass.
    pub(super) fn server_record(
        &self,
        job: Option<&ServerJob>,
        run_id: &str,
    ) -> Result<Option<(StoreOp, JobRecord)>, EngineError> {
        let Some(job) = job else { return Ok(None) };
        if let Some(last) = self.server.run_of(&job.job_id) {
            if self.runs.active.contains_key(last.run_id.as_str()) {
                return Err(EngineError::ServerJobActive(last.run_id.clone()));
            }
        }
        Ok(Some(ServerJobs::record_op(job, run_id)))
    }

    /// Reads back the drain setting and the server jobs (a new leader, before it serves).
    pub(super) async fn load_server_state(&mut self) -> Result<(), EngineError> {
        let state = self.store.scan(server_jobs::STATE_KEY).await?;
        let state = (state.iter())
            .find(|(k, _)| k == server_jobs::STATE_KEY)
            .map(|(_, v)| v.as_slice());
        let jobs = self.store.scan(server_jobs::JOBS_PREFIX).await?;
        self.server = ServerJobs::default();
        self.server.load(state, &jobs);
        if self.server.draining {
            tracing::warn!("the coordinators are draining (POST /settings {{\"state\":\"run\"}} resumes): submissions are refused");
        }
        Ok(())
    }

    async fn set_draining(&mut self, draining: bool) -> Result<ServerStatus, EngineError> {
        self.store
            .commit(vec![ServerJobs::state_op(draining)])
            .await?;
        if self.server.draining != draining {
            let state = if draining { "drain" } else { "run" };
            tracing::info!(state, "server state set");
        }
        self.server.draining = draining;
        Ok(self.server_status())
    }

    fn server_status(&self) -> ServerStatus {
        let waiting = (self.runs.active.values())
            .filter(|r| r.state.job_state() == JobState::Waiting)
            .count();
        ServerStatus {
            draining: self.server.draining,
            waiting_runs: u32::try_from(waiting).unwrap_or(u32::MAX),
        }
    }

    /// A server job's latest run, or a run named by its id (or a prefix) with its job if it
    /// was submitted through `/submit`.
    async fn server_job(&mut self, id: &str) -> Result<ServerJobRun, EngineError> {
        let (run_id, job) = match self.server.run_of(id) {
            Some(r) => (r.run_id.clone(), r.job.clone()),
            None => {
                let run_id = self.runs.resolve(id)?.to_string();
                let job = (self.server.job_of_run(&run_id)).map(|r| r.job.clone());
                (run_id, job.unwrap_or_default())
            }
        };
        let run = self.run_info(&run_id).await?;
        Ok(ServerJobRun { job, run })
    }

    /// A run with its tasks, from memory or (trimmed from memory) from the store.
    async fn run_info(&self, id: &str) -> Result<RunInfo, EngineError> {
        if self.runs.is_trimmed(id) {
            return (recovery::load_finished(&self.store, id, &self.cfg).await).map(|f| f.info);
        }
        self.runs.info(id, self.cfg.clock.now())
    }
}
