//! The node's local configuration: the resources received from the control
//! plane, kept as sent, and the validated [`NodeConfig`] built from them.
//!
//! The resources are held encoded ([`Held`]): they are read again only to be
//! saved or listed, and the decoded protobuf messages would cost several
//! times their bytes (at 11,000 resources, about 9.7 MB of heap against
//! 1.3 MB).
//!
//! Every change goes through a [`Candidate`]: a Snapshot or Delta is merged
//! into a copy, the copy is validated as a whole, and only a valid candidate
//! replaces the current configuration with [`Store::commit`]. A refused
//! configuration therefore leaves the previous one live, revision included.
//!
//! Problems name the resource (`listener/web.port`) rather than the position
//! in the Snapshot or Delta that carried it: the error of a `Nack` ends up in
//! front of operators, who know their resources by name and never see the
//! messages the control plane built for this node.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint};
use switchyard::pb;
use switchyard::resource::{
    self, Endpoint, Kind, Listener, ListenerTarget, Ref, Resource, Route, Service, pb_revision,
};
use switchyard::validate::{Invalid, Violations};

pub use switchyard::node::NodeConfig;

/// Why a Snapshot or Delta was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A Delta that does not start at the current revision: the agent lost
    /// continuity and must ask for a Snapshot (`Resync`).
    #[error("delta from revision {from} does not apply at revision {have}")]
    Gap {
        /// The revision held.
        have: u64,
        /// The Delta's `from_revision`.
        from: u64,
    },
    /// The resulting configuration is invalid; the reason goes in the `Nack`.
    #[error("{0}")]
    Invalid(#[from] Invalid),
}

impl Error {
    /// Whether a Snapshot fixes it (a gap), as opposed to a refused configuration.
    pub fn is_gap(&self) -> bool {
        matches!(self, Error::Gap { .. })
    }
}

/// The resources a node holds, as received, and the configuration built
/// from them.
#[derive(Debug, Clone, Default)]
pub struct Store {
    revision: u64,
    resources: BTreeMap<Ref, Held>,
    config: Arc<NodeConfig>,
}

/// One resource as received: its revision and its message (the protobuf
/// message of its kind, `switchyard.v1.Service` for a service), encoded.
/// Shared, so that a candidate's copy of the map copies the map, not the
/// resources.
#[derive(Debug, Clone)]
struct Held {
    revision: u64,
    body: Arc<[u8]>,
}

impl Held {
    fn new(raw: &pb::Resource) -> Held {
        use pb::resource::Kind as K;
        let body = match &raw.kind {
            Some(K::Service(x)) => x.encode_to_vec(),
            Some(K::Endpoint(x)) => x.encode_to_vec(),
            Some(K::Route(x)) => x.encode_to_vec(),
            Some(K::Listener(x)) => x.encode_to_vec(),
            None => Vec::new(),
        };
        Held {
            revision: pb_revision(raw),
            body: body.into(),
        }
    }

    /// The `switchyard.v1.Snapshot` field that lists resources of `kind`.
    fn snapshot_field(kind: Kind) -> u32 {
        match kind {
            Kind::Service => 2,
            Kind::Endpoint => 3,
            Kind::Route => 4,
            Kind::Listener => 5,
        }
    }
}

/// A validated configuration, ready to replace the current one.
#[derive(Debug, Clone)]
pub struct Candidate {
    resources: BTreeMap<Ref, Held>,
    /// Shared: the driver takes it before it is committed.
    config: Arc<NodeConfig>,
}

impl Candidate {
    /// The revision it is current as of.
    pub fn revision(&self) -> u64 {
        self.config.revision
    }

    /// The configuration it would publish.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The configuration it would publish, shared (no copy).
    pub fn shared(&self) -> &Arc<NodeConfig> {
        &self.config
    }

    /// The whole of it as an encoded Snapshot, to persist before
    /// committing: written from the held bytes without decoding them.
    pub fn encoded_snapshot(&self) -> Vec<u8> {
        encode_snapshot(self.config.revision, &self.resources)
    }
}

impl Store {
    /// An empty store at revision 0.
    pub fn new() -> Store {
        Store::default()
    }

    /// The revision of the current configuration; 0 if none.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// How many resources it holds.
    pub fn len(&self) -> usize {
        self.resources.len()
    }

    /// Whether it holds no resource.
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    /// The current configuration.
    pub fn config(&self) -> Arc<NodeConfig> {
        self.config.clone()
    }

    /// Every resource held, with its revision (for `Hello.resources`).
    pub fn inventory(&self) -> Vec<pb::ResourceVersion> {
        self.resources
            .iter()
            .map(|(r, held)| pb::ResourceVersion {
                r#ref: Some(r.to_pb()),
                revision: held.revision,
            })
            .collect()
    }

    /// The current configuration as an encoded Snapshot, to save.
    pub fn encoded_snapshot(&self) -> Vec<u8> {
        encode_snapshot(self.revision, &self.resources)
    }

    /// Builds the configuration a Snapshot describes (it replaces everything).
    pub fn prepare_snapshot(&self, snapshot: pb::Snapshot) -> Result<Candidate, Error> {
        use pb::resource::Kind as K;
        let pb::Snapshot {
            revision,
            services,
            endpoints,
            routes,
            listeners,
        } = snapshot;
        let mut v = Violations::new();
        let mut resources = BTreeMap::new();
        let mut config = NodeConfig {
            revision,
            ..NodeConfig::default()
        };
        let all = (services.into_iter().map(K::Service))
            .chain(endpoints.into_iter().map(K::Endpoint))
            .chain(routes.into_iter().map(K::Route))
            .chain(listeners.into_iter().map(K::Listener));
        for kind in all {
            let raw = pb::Resource {
                kind: Some(kind),
                ..Default::default()
            };
            let Some(r) = resource::pb_ref(&raw) else {
                continue;
            };
            if resources.contains_key(&r) {
                v.push(r.to_string(), "listed twice in the snapshot");
                continue;
            }
            if let Some(domain) = convert(&mut v, &r, &raw) {
                config.insert(domain);
            }
            resources.insert(r, Held::new(&raw));
        }
        check_node(&mut v, &config);
        v.finish(Candidate {
            resources,
            config: Arc::new(config),
        })
        .map_err(Error::from)
    }

    /// Builds the configuration a Delta leads to from the current one.
    ///
    /// Upserts replace whole resources, then removals drop theirs (a removal
    /// of something not held, or of an unknown kind, is ignored). Only the
    /// upserted resources are converted again; the rest were validated when
    /// they arrived. The node-level checks run on the whole result.
    pub fn prepare_delta(&self, delta: pb::Delta) -> Result<Candidate, Error> {
        if delta.from_revision != self.revision {
            return Err(Error::Gap {
                have: self.revision,
                from: delta.from_revision,
            });
        }
        let mut v = Violations::new();
        if delta.to_revision < delta.from_revision {
            v.push(
                "to_revision",
                format_args!(
                    "{} is below from_revision {}",
                    delta.to_revision, delta.from_revision
                ),
            );
        }
        let mut resources = self.resources.clone();
        let mut config = NodeConfig::clone(&self.config);
        config.revision = delta.to_revision;
        let mut seen = std::collections::BTreeSet::new();
        for (i, raw) in delta.upserts.into_iter().enumerate() {
            let Some(r) = resource::pb_ref(&raw) else {
                v.push(
                    format!("upserts[{i}]"),
                    "must hold a service, endpoint, route or listener",
                );
                continue;
            };
            if !seen.insert(r.clone()) {
                v.push(r.to_string(), "upserted twice in the delta");
                continue;
            }
            if let Some(domain) = convert(&mut v, &r, &raw) {
                // A rename is a removal plus an upsert, so the key is the same
                // in both maps.
                config.insert(domain);
            }
            resources.insert(r, Held::new(&raw));
        }
        for removal in &delta.removals {
            let Some(kind) = Kind::from_pb(removal.kind) else {
                continue;
            };
            let r = Ref::new(kind, removal.name.clone());
            resources.remove(&r);
            config.remove(&r);
        }
        check_node(&mut v, &config);
        v.finish(Candidate {
            resources,
            config: Arc::new(config),
        })
        .map_err(Error::from)
    }

    /// Makes `candidate` the current configuration and returns it.
    pub fn commit(&mut self, candidate: Candidate) -> Arc<NodeConfig> {
        self.revision = candidate.config.revision;
        self.resources = candidate.resources;
        self.config = candidate.config;
        self.config.clone()
    }

    /// Validates and applies a Snapshot.
    pub fn apply_snapshot(&mut self, snapshot: pb::Snapshot) -> Result<Arc<NodeConfig>, Error> {
        let candidate = self.prepare_snapshot(snapshot)?;
        Ok(self.commit(candidate))
    }

    /// Validates and applies a Delta.
    pub fn apply_delta(&mut self, delta: pb::Delta) -> Result<Arc<NodeConfig>, Error> {
        let candidate = self.prepare_delta(delta)?;
        Ok(self.commit(candidate))
    }
}

/// An encoded `switchyard.v1.Snapshot` of `resources` at `revision`: the
/// same bytes as encoding the decoded Snapshot, since the map is in kind
/// order and each held body is its message's encoding.
fn encode_snapshot(revision: u64, resources: &BTreeMap<Ref, Held>) -> Vec<u8> {
    let size: usize = resources.values().map(|h| h.body.len() + 6).sum();
    let mut out = Vec::with_capacity(size + 11);
    if revision != 0 {
        encode_key(1, WireType::Varint, &mut out);
        encode_varint(revision, &mut out);
    }
    for (r, held) in resources {
        encode_key(
            Held::snapshot_field(r.kind),
            WireType::LengthDelimited,
            &mut out,
        );
        encode_varint(held.body.len() as u64, &mut out);
        out.extend_from_slice(&held.body);
    }
    out
}

/// Converts one resource, recording its problems under `kind/name`.
fn convert(v: &mut Violations, r: &Ref, raw: &pb::Resource) -> Option<Resource> {
    use pb::resource::Kind as K;
    let field = r.to_string();
    let result = match raw.kind.as_ref()? {
        K::Service(s) => Service::from_pb(s, &field).map(Resource::Service),
        K::Endpoint(e) => Endpoint::from_pb(e, &field).map(Resource::Endpoint),
        K::Route(x) => Route::from_pb(x, &field).map(Resource::Route),
        K::Listener(l) => Listener::from_pb(l, &field).map(Resource::Listener),
    };
    result.map_err(|e| v.extend(e)).ok()
}

/// The checks only a node can make: the control plane validates each
/// resource, but what one node ends up with (its listeners side by side, and
/// whether what they reach is in its view) is only known here.
fn check_node(v: &mut Violations, config: &NodeConfig) {
    for l in config.listeners.values() {
        let (field, missing) = match &l.target {
            ListenerTarget::Route(r) => ("route", (!config.routes.contains_key(r)).then_some(r)),
            ListenerTarget::Service(s) => {
                ("service", (!config.services.contains_key(s)).then_some(s))
            }
        };
        if let Some(name) = missing {
            v.push(
                format!("listener/{}.{field}", l.name),
                format_args!("{field} {name:?} is not in this node's configuration"),
            );
        }
    }
    for r in config.routes.values() {
        for (i, rule) in r.rules.iter().enumerate() {
            for (j, d) in rule.action.destinations.iter().enumerate() {
                if !config.services.contains_key(&d.service) {
                    v.push(
                        format!(
                            "route/{}.rules[{i}].action.destinations[{j}].service",
                            r.name
                        ),
                        format_args!(
                            "service {:?} is not in this node's configuration",
                            d.service
                        ),
                    );
                }
            }
        }
    }
    check_binds(v, config);
}

/// Two listeners of one node cannot bind overlapping sockets: the proxy
/// would fail to open the second one.
fn check_binds(v: &mut Violations, config: &NodeConfig) {
    let mut by_port: BTreeMap<u16, Vec<&Listener>> = BTreeMap::new();
    for l in config.listeners.values() {
        by_port.entry(l.port).or_default().push(l);
    }
    for listeners in by_port.values() {
        for (i, a) in listeners.iter().enumerate() {
            for b in &listeners[i + 1..] {
                if overlaps(a.address, b.address) {
                    v.push(format!("listener/{}.address", b.name), Bind { a, b });
                }
            }
        }
    }
}

struct Bind<'a> {
    a: &'a Listener,
    b: &'a Listener,
}

impl fmt::Display for Bind<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "listener {:?} binds {}, which overlaps listener {:?} on {}",
            self.b.name,
            SocketAddr::new(self.b.address, self.b.port),
            self.a.name,
            SocketAddr::new(self.a.address, self.a.port),
        )
    }
}

/// Whether two sockets on the same port would conflict.
///
/// Equal addresses do, and so does `::`, which (dual-stack, the Linux
/// default) takes the port on every IPv4 and IPv6 address; `0.0.0.0` takes it
/// on every IPv4 address only, so it does not conflict with, say, `::1`.
/// IPv4-mapped IPv6 addresses count as the IPv4 address they map.
pub fn overlaps(a: IpAddr, b: IpAddr) -> bool {
    let (a, b) = (a.to_canonical(), b.to_canonical());
    let any_v6 = |x: IpAddr| matches!(x, IpAddr::V6(v) if v.is_unspecified());
    let any_v4 = |x: IpAddr| matches!(x, IpAddr::V4(v) if v.is_unspecified());
    a == b || any_v6(a) || any_v6(b) || (any_v4(a) && b.is_ipv4()) || (any_v4(b) && a.is_ipv4())
}

#[cfg(test)]
mod tests;
