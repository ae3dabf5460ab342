//! Switchyard's node configuration as Envoy's v3 xDS API: the translation
//! of a [`NodeConfig`](switchyard::node::NodeConfig) into Listeners, Routes,
//! Clusters and ClusterLoadAssignments ([`translate`]), and an Aggregated
//! Discovery Service that serves them, state of the world and delta
//! ([`server`]).
//!
//! Two flavors of the same configuration exist ([`Flavor`]): one for Envoy
//! (socket listeners, every load-balancing policy), and one for proxyless
//! gRPC clients, which support much less; what they get instead is the
//! closest behaviour they support (see [`Flavor::Proxyless`]).
//!
//! The agent serves it to the proxies of its node; the control plane can
//! serve the same to fleets with no agent.

#![forbid(unsafe_code)]

pub mod server;
pub mod translate;

pub use envoy_types::pb;
pub use translate::{Flavor, Resources, translate};

/// The type URLs of the four resource types served, in the order a client
/// must receive them so that nothing refers to a resource it does not have
/// yet (make before break): clusters, their endpoints, listeners, routes.
pub mod type_url {
    /// `Cluster` (CDS).
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    /// `ClusterLoadAssignment` (EDS).
    pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    /// `Listener` (LDS).
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    /// `RouteConfiguration` (RDS).
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    /// All four, in sending order.
    pub const ORDER: [&str; 4] = [CLUSTER, ENDPOINT, LISTENER, ROUTE];
}
