//! The Factotum agent: runs leased tasks and reports on them.
//!
//! The modules, from the wire down (each imports only those below it):
//!
//! - [`daemon`]: the agent's life as a library, [`run`]`(config, endpoints, shutdown)`; the
//!   binary is flags ([`config`]) plus `run`. It performs what [`reconnect`]'s pure state
//!   machine decides and tells systemd ([`notify`]).
//! - [`session`]: the agent side of the session protocol over any transport (in-process
//!   channels for `factotum run`, a gRPC stream in the fleet): leases, cancels, acks, results.
//! - [`attempt`]: supervising attempts: spawn, adopt after a restart, recover results on disk.
//! - [`executor`] runs one command line (`sh -c`, own process group, streamed lines, bounded
//!   tails); [`shim`] is the per-task supervisor process that lets a task outlive the agent.
//! - [`throttle`]: how much of an attempt's output is streamed (`--max-stream-rate`), pure.
//! - [`logs`]: every attempt's full raw output on disk (`--log-dir`), its retention, and
//!   serving it to a coordinator on the session.
//! - [`kill`]: TERM, grace, KILL; [`frame`]: the shim's line framing; [`identity`].

pub mod attempt;
pub mod config;
pub mod daemon;
pub mod executor;
pub mod frame;
pub mod http;
pub mod identity;
pub mod kill;
pub mod logs;
pub mod metrics;
pub mod notify;
pub mod reconnect;
pub mod session;
pub mod shim;
pub mod simple;
pub mod throttle;

pub use config::{AgentArgs, Config, Endpoints};
pub use daemon::run;
pub use executor::{execute, ExecSpec};
pub use session::{run_session, Agent, AgentConfig, Link, SessionEnd};
