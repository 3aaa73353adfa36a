//! The engine in-process: the memory store (or a store that fails on purpose), scripted fake
//! agents over the same session channels `factotum run` uses, and Tokio's paused clock, so a
//! 15-second liveness rule takes no 15 seconds. What needs real processes (signals, etcd,
//! failover, namespaces) stays in the process tests.

mod support;

mod commit;
mod history;
mod liveness;
mod message_limits;
mod metrics;
mod placement;
mod queue_limits;
mod redaction;
mod sessions;
mod timers;
mod watchers;
