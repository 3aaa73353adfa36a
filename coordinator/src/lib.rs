//! The Factotum coordinator: the engine that owns every run, its store, dispatch to agents, and
//! webhook delivery. `factotum run` embeds it with the memory store and one in-process agent.

pub mod api;
pub mod convert;
pub mod engine;
#[cfg(feature = "etcd")]
pub mod etcd;
#[cfg(feature = "etcd")]
pub mod leader;
pub mod persist;
pub mod spec;
pub mod store;
pub mod webhook;

pub use engine::{
    AgentInfo, Engine, EngineConfig, EngineError, Placement, RunInfo, RunSpec, RunSummary,
    Submitted, TaskChange, TaskInfo, WatchEvent,
};
pub use spec::{prepare, SpecError, Submission};
pub use store::{MemoryStore, Store, StoreError, StoreOp};
pub use webhook::{Deliverer, Undelivered};
