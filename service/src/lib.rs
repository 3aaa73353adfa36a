//! Plumbing the Factotum binaries share, so it is written once: flags read from a config file
//! beneath the command line ([`config`]), logging set-up ([`logging`]),
//! signals turned into one cancellation token and a tracker for every task spawned
//! ([`lifecycle`]), the one parser behind every duration flag and variable ([`duration`])
//! and every size flag ([`size`]), and TLS for the gRPC port and its clients ([`tls`]).
//!
//! It knows nothing of runs, agents or the protocol: the coordinator, the agent and the CLI all
//! import it, and it imports none of them.

pub mod config;
pub mod duration;
pub mod lifecycle;
pub mod logging;
pub mod size;
pub mod tls;

pub use duration::{parse_duration, DurationRange};
pub use lifecycle::Lifecycle;
pub use logging::LogFormat;
