//! The API's error model: every refusal is a `google.rpc.Status` whose details hold an
//! `ErrorInfo` (domain `factotum`, a [`Reason`]) and, for a bad request, a `BadRequest` naming
//! the request field. Any gRPC client decodes them (grpc-go, grpcurl, Python's `grpc_status`).
//! Messages describe the request, never the CLI's flags: the CLI adds its own hints.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::model::EngineError;
use crate::spec::SpecError;

/// The `ErrorInfo.domain` of every Factotum error.
pub const DOMAIN: &str = "factotum";

/// Why a call was refused: `ErrorInfo.reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    InvalidFactfile,
    InvalidArgument,
    DuplicateRun,
    RunNotFound,
    AmbiguousRunId,
    RunActive,
    RunFinished,
    NothingToRerun,
    LimitExceeded,
    Draining,
    Unauthenticated,
    /// The leader's store (etcd) is unavailable: retry later.
    StoreUnavailable,
    /// No leader is known (a follower cannot forward): retry shortly.
    NoLeader,
    /// EnableWebhook for an endpoint that is not disabled.
    WebhookNotDisabled,
    /// GetTaskLog: no such attempt, or its agent has no log of it (never kept, or removed).
    LogNotFound,
    /// GetTaskLog: the agent holding the log is not connected.
    AgentGone,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidFactfile => "INVALID_FACTFILE",
            Reason::InvalidArgument => "INVALID_ARGUMENT",
            Reason::DuplicateRun => "DUPLICATE_RUN",
            Reason::RunNotFound => "RUN_NOT_FOUND",
            Reason::AmbiguousRunId => "AMBIGUOUS_RUN_ID",
            Reason::RunActive => "RUN_ACTIVE",
            Reason::RunFinished => "RUN_FINISHED",
            Reason::NothingToRerun => "NOTHING_TO_RERUN",
            Reason::LimitExceeded => "LIMIT_EXCEEDED",
            Reason::Draining => "DRAINING",
            Reason::Unauthenticated => "UNAUTHENTICATED",
            Reason::StoreUnavailable => "STORE_UNAVAILABLE",
            Reason::NoLeader => "NO_LEADER",
            Reason::WebhookNotDisabled => "WEBHOOK_NOT_DISABLED",
            Reason::LogNotFound => "LOG_NOT_FOUND",
            Reason::AgentGone => "AGENT_GONE",
        }
    }
}

/// A refusal: its code, reason, message, `ErrorInfo` metadata and the request field at fault.
#[derive(Debug)]
pub struct Refusal {
    code: Code,
    reason: Reason,
    message: String,
    metadata: HashMap<String, String>,
    field: Option<&'static str>,
}

impl Refusal {
    pub fn new(code: Code, reason: Reason, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            reason,
            message: message.into(),
            metadata: HashMap::new(),
            field: None,
        }
    }

    /// INVALID_ARGUMENT about one request field.
    pub fn bad(reason: Reason, field: &'static str, message: impl Into<String>) -> Refusal {
        Refusal::new(Code::InvalidArgument, reason, message).field(field)
    }

    pub fn field(mut self, field: &'static str) -> Refusal {
        self.field = Some(field);
        self
    }

    pub fn meta(mut self, key: &str, value: impl Into<String>) -> Refusal {
        self.metadata.insert(key.to_string(), value.into());
        self
    }

    pub fn status(self) -> Status {
        let mut details =
            ErrorDetails::with_error_info(self.reason.as_str(), DOMAIN, self.metadata);
        if let Some(field) = self.field {
            details.add_bad_request_violation(field, self.message.clone());
        }
        Status::with_error_details(self.code, self.message, details)
    }
}

impl From<Refusal> for Status {
    fn from(r: Refusal) -> Status {
        r.status()
    }
}

impl From<EngineError> for Refusal {
    fn from(e: EngineError) -> Refusal {
        match e {
            EngineError::Stopped => Refusal::new(
                Code::Unavailable,
                Reason::Draining,
                "the coordinator is shutting down; retry on another replica",
            ),
            EngineError::Busy(limit) => Refusal::new(
                Code::ResourceExhausted,
                Reason::LimitExceeded,
                format!(
                    "the coordinator is busy: {limit} calls are already waiting \
                     (--max-queued-calls {limit}); retry shortly"
                ),
            )
            .meta("limit", "max_queued_calls"),
            EngineError::NoSuchRun(id) => Refusal::new(
                Code::NotFound,
                Reason::RunNotFound,
                format!("no run '{id}' (ListRuns shows the runs this coordinator knows)"),
            )
            .field("run_id"),
            EngineError::AmbiguousRun { prefix, candidates } => Refusal::bad(
                Reason::AmbiguousRunId,
                "run_id",
                format!(
                    "'{prefix}' is the start of more than one run id: {}{}",
                    candidates.join(", "),
                    if candidates.len() >= 5 { ", ..." } else { "" }
                ),
            )
            .meta("candidates", candidates.join(",")),
            EngineError::AlreadyActive(run) => Refusal::new(
                Code::AlreadyExists,
                Reason::DuplicateRun,
                format!(
                    "a run of this job (same factfile and tags) is still active: {run}; set \
                     allow_concurrent to start another anyway"
                ),
            )
            .meta("run_id", run),
            e @ EngineError::StillActive(_) => {
                Refusal::new(Code::FailedPrecondition, Reason::RunActive, e.to_string())
            }
            e @ (EngineError::NothingToRerun(_) | EngineError::CannotRerun { .. }) => Refusal::new(
                Code::FailedPrecondition,
                Reason::NothingToRerun,
                e.to_string(),
            ),
            EngineError::Finished(run) => Refusal::new(
                Code::FailedPrecondition,
                Reason::RunFinished,
                format!("run {run} has already finished: there is nothing to cancel"),
            ),
            e @ EngineError::NotAnEndpoint { .. } => {
                Refusal::bad(Reason::InvalidArgument, "url", e.to_string())
            }
            e @ EngineError::TooLargeForWebhooks(_) => {
                Refusal::bad(Reason::InvalidFactfile, "factfile", e.to_string())
            }
            e @ EngineError::NotDisabled(_) => Refusal::new(
                Code::FailedPrecondition,
                Reason::WebhookNotDisabled,
                e.to_string(),
            )
            .field("url"),
            EngineError::Store(e) => Refusal::new(
                Code::Unavailable,
                Reason::StoreUnavailable,
                format!("the store is unavailable: {e}"),
            ),
            e @ EngineError::Draining => {
                Refusal::new(Code::FailedPrecondition, Reason::Draining, e.to_string())
            }
            EngineError::ServerJobActive(run) => Refusal::new(
                Code::AlreadyExists,
                Reason::DuplicateRun,
                format!("a run of this server job is still active: {run}"),
            )
            .meta("run_id", run),
        }
    }
}

impl From<EngineError> for Status {
    fn from(e: EngineError) -> Status {
        Refusal::from(e).status()
    }
}

impl From<SpecError> for Status {
    fn from(e: SpecError) -> Status {
        let message = e.api_message();
        match e {
            SpecError::InvalidFactfile(_) => {
                Refusal::bad(Reason::InvalidFactfile, "factfile", message)
            }
            SpecError::BadArgument { field, .. } => {
                Refusal::bad(Reason::InvalidArgument, field, message)
            }
        }
        .status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_carries_a_standard_error_info_and_bad_request() {
        let bad_url: Status = crate::spec::check_webhook_url("ftp://x")
            .unwrap_err()
            .into();
        assert!(
            bad_url
                .message()
                .starts_with("the specified webhook URL \"ftp://x\" is invalid"),
            "the API spells what `run` keeps of Factotum's words: {}",
            bad_url.message()
        );
        let status: Status =
            SpecError::bad("env_json", "Error: the --env value is not valid JSON").into();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "env_json is not valid JSON");
        let details = status.get_error_details();
        let info = details.error_info().expect("an ErrorInfo");
        assert_eq!(
            (info.domain.as_str(), info.reason.as_str()),
            (DOMAIN, "INVALID_ARGUMENT")
        );
        let bad = details.bad_request().expect("a BadRequest");
        assert_eq!(bad.field_violations[0].field, "env_json");
        let dup: Status = EngineError::AlreadyActive("abc".into()).into();
        assert_eq!(dup.code(), Code::AlreadyExists);
        let info = dup.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.reason, "DUPLICATE_RUN");
        assert_eq!(info.metadata["run_id"], "abc");
    }
}
