//! The Factotum wire protocol, `factotum.v1`, generated from `proto/factotum/v1/*.proto`.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/factotum.v1.rs"));
}

pub use v1::*;

/// gRPC metadata key in which a follower coordinator names the leader's address, in its
/// UNAVAILABLE answers to clients and agents.
pub const LEADER_METADATA: &str = "factotum-leader";

/// The encoded file descriptor set, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/factotum_descriptor.bin"));

impl LeaseRef {
    /// The key identifying this attempt: (run, task, attempt).
    pub fn key(&self) -> (String, u32, u32) {
        (self.run_id.clone(), self.task, self.attempt)
    }
}
