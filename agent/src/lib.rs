//! Switchyard's node agent: keeps a node's configuration in step with the
//! control plane over the `AgentService.Sync` stream, validates each
//! configuration before it goes live, and keeps the last applied one on disk
//! so the node serves it even while every control plane is unreachable.

pub mod dns;
pub mod driver;
pub mod health;
pub mod local;
pub mod metrics;
pub mod persist;
pub mod registration;
pub mod state;
pub mod sync;

#[cfg(any(test, feature = "test-util"))]
pub mod testing;

pub use state::NodeConfig;
pub use sync::{Agent, Config, Stats};
