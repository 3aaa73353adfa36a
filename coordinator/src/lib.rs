//! The Factotum coordinator: the engine that owns every run, its store, dispatch to agents, and
//! webhook delivery. `factotum run` embeds it with the memory store and one in-process agent.

pub mod engine;
pub mod store;
pub mod webhook;

pub use engine::{
    new_uuid, Engine, EngineConfig, EngineError, RunSpec, RunSummary, TaskChange, WatchEvent,
};
pub use store::{MemoryStore, Store, StoreError, StoreOp};
pub use webhook::{Deliverer, Undelivered};
