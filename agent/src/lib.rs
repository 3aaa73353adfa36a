//! The Factotum agent: runs leased tasks and reports on them.
//!
//! [`executor`] runs one command line (`sh -c`, own process group, streamed lines, bounded tails,
//! TERM then KILL on cancel). [`session`] speaks the agent side of the session protocol over any
//! transport that can carry `AgentMessage`s out and `CoordinatorMessage`s in: in-process channels
//! for `factotum run`, a gRPC stream in the fleet.

pub mod executor;
pub mod identity;
pub mod session;
pub mod shim;

pub use executor::{execute, ExecSpec};
pub use session::{run_session, Agent, AgentConfig, Link, SessionEnd};
