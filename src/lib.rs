//! Switchyard's public API crate: the types generated from `proto/`, the
//! domain types both the control plane and the agent work with, and the
//! validation that turns one into the other.

pub mod codec;
#[cfg(feature = "daemon")]
pub mod daemon;
#[cfg(feature = "http")]
pub mod http;
pub mod label;
pub mod metrics;
pub mod node;
pub mod resource;
#[cfg(feature = "tls")]
pub mod tls;
pub mod validate;

/// Types and gRPC stubs generated from `proto/switchyard/v1`.
///
/// These stay at the edge: convert them into [`resource`] types with
/// `TryFrom`, which validates and names the offending field.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("switchyard.v1");

    /// The encoded file descriptor set, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("switchyard_descriptor");
}
