//! The configuration one node serves: the domain resources the control plane
//! sent it, validated, by kind and name. The agent builds it; the data plane
//! (the built-in proxy, or a driver of an external one) serves it.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::resource::{Endpoint, Kind, Listener, Ref, Resource, Route, Service};

/// The configuration a node serves, validated and immutable once built.
///
/// The proxy reads it through an `Arc<NodeConfig>` swapped per revision, so
/// work in flight finishes on the configuration it started with.
#[derive(Debug, Clone, Default)]
pub struct NodeConfig {
    /// The revision this configuration is current as of; 0 when empty.
    pub revision: u64,
    /// Services, by name.
    pub services: BTreeMap<String, Service>,
    /// Endpoints, by name. Shared: the proxy's endpoint sets and the DNS
    /// answers hold the same endpoints rather than copies (at 10,000
    /// endpoints, a copy is about 4 MB).
    pub endpoints: BTreeMap<String, Arc<Endpoint>>,
    /// HTTP routes, by name.
    pub routes: BTreeMap<String, Route>,
    /// Listeners this node opens, by name.
    pub listeners: BTreeMap<String, Listener>,
}

impl NodeConfig {
    /// Whether it holds no resource at all.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
            && self.endpoints.is_empty()
            && self.routes.is_empty()
            && self.listeners.is_empty()
    }

    /// Adds `resource`, replacing one of the same kind and name.
    pub fn insert(&mut self, resource: Resource) {
        match resource {
            Resource::Service(s) => {
                self.services.insert(s.name.clone(), s);
            }
            Resource::Endpoint(e) => {
                self.endpoints.insert(e.name.clone(), Arc::new(e));
            }
            Resource::Route(r) => {
                self.routes.insert(r.name.clone(), r);
            }
            Resource::Listener(l) => {
                self.listeners.insert(l.name.clone(), l);
            }
        }
    }

    /// Removes the resource `r` names, if held.
    pub fn remove(&mut self, r: &Ref) {
        match r.kind {
            Kind::Service => self.services.remove(&r.name).map(drop),
            Kind::Endpoint => self.endpoints.remove(&r.name).map(drop),
            Kind::Route => self.routes.remove(&r.name).map(drop),
            Kind::Listener => self.listeners.remove(&r.name).map(drop),
        };
    }
}
