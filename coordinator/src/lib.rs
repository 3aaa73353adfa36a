//! The Factotum coordinator: the engine that owns every run, its store, dispatch to agents, and
//! webhook delivery. `factotum run` embeds it with the memory store and one in-process agent.
//!
//! The rooms, from the bottom up (arrows point down only; see docs/ARCHITECTURE.md):
//! [`model`] (the vocabulary) and [`clock`]; [`placement`] (pure); [`spec`], [`persist`],
//! [`store`], [`wire`] (conversions), [`metrics`] and [`webhook`]; [`engine`] (one interpreter over small
//! owners); [`api`] (gRPC); [`node`] (leadership) and [`server`] (a process).

pub mod api;
pub mod auth;
pub mod clock;
pub mod engine;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod fence;
pub mod http;
#[cfg(feature = "etcd")]
pub mod leader;
pub mod metrics;
pub mod model;
#[cfg(feature = "etcd")]
pub mod node;
pub mod persist;
pub mod placement;
pub mod seal;
#[cfg(feature = "etcd")]
pub mod server;
pub mod spec;
pub mod store;
pub mod systemd;
pub mod webhook;
pub mod wire;

pub use clock::Clock;
pub use engine::{Engine, EngineConfig};
pub use fence::Fence;
pub use model::{
    AgentInfo, EngineError, Placement, RunInfo, RunPage, RunQuery, RunSpec, RunSummary, Submitted,
    TaskChange, TaskInfo, WatchEvent,
};
pub use spec::{prepare, SpecError, Submission};
pub use store::{MemoryStore, NoStore, Store, StoreError, StoreOp};
pub use webhook::{Deliverer, Undelivered};
