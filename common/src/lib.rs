//! The pure core of Factotum: everything that decides *what* happens, nothing that does it.
//!
//! No IO and no clock reads live here: time is always an input. The local `factotum run` and the
//! fleet coordinator both drive [`run::RunState`], so every scheduling rule exists exactly once.

pub mod constraint;
pub mod dag;
pub mod dot;
pub mod factfile;
pub mod format;
pub mod graph;
pub mod redact;
pub mod reference;
pub mod run;
pub mod tags;
pub mod tail;
pub mod template;
pub mod webhook;

/// The version reported in webhook `applicationContext` and `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub use dag::{Plan, PlanError, TaskId};
pub use factfile::{Factfile, FactfileError, Task};
pub use run::{Action, Event, JobState, RunState, TaskState};
