//! Switchyard's control plane: the revisioned store, the operator gRPC API
//! and the server that ties them together.

pub mod grpc;
pub mod server;
pub mod store;

#[cfg(any(test, feature = "test-util"))]
pub mod testing;
