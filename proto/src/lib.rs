//! The Factotum wire protocol: the agent protocol `factotum.v1`
//! (`proto/factotum/v1/agent.proto`, re-exported at the crate root) and the client API
//! `factotum.jobs.v2` (`proto/factotum/jobs/v2/jobs.proto`, as [`jobs`]).

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/factotum.v1.rs"));
}

/// The client API, `factotum.jobs.v2`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod jobs {
    include!(concat!(env!("OUT_DIR"), "/factotum.jobs.v2.rs"));
}

pub use v1::*;

/// gRPC metadata key in which a follower coordinator names the leader's address, in its
/// UNAVAILABLE answers to clients and agents.
pub const LEADER_METADATA: &str = "factotum-leader";

/// Where clients and agents look for a coordinator unless told otherwise.
pub const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:7400";

/// A follower's UNAVAILABLE answer: `Some(Some(address))` names the leader, `Some(None)` says
/// there is none yet (both worth retrying). `None` for any other answer, such as a leader whose
/// store is down.
pub fn leader_hint(status: &tonic::Status) -> Option<Option<String>> {
    if status.code() != tonic::Code::Unavailable {
        return None;
    }
    let value = status.metadata().get(LEADER_METADATA)?;
    Some(
        value
            .to_str()
            .ok()
            .filter(|s| !s.is_empty())
            .map(str::to_string),
    )
}

/// The encoded file descriptor set, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/factotum_descriptor.bin"));

impl LeaseRef {
    /// The key identifying this attempt: (run, task, attempt).
    pub fn key(&self) -> (String, u32, u32) {
        (self.run_id.clone(), self.task, self.attempt)
    }
}
