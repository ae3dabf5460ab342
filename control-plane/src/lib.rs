//! Switchyard's control plane: the revisioned store, the operator gRPC API,
//! the agent sync stream with its in-memory fan-out, and the server that
//! ties them together.

pub mod auth;
pub mod fanout;
pub mod grpc;
pub mod health;
pub mod limit;
pub mod metrics;
pub mod nodes;
pub mod registration;
pub mod server;
pub mod status;
pub mod store;
pub mod sync;

#[cfg(any(test, feature = "test-util"))]
pub mod testing;
